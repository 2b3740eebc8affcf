"""The coordinator's watchdog (``deploy run --max-restarts / --stall-timeout``) against a scripted control plane.

Flower's control API (submit, status, stop) is replaced by a fake whose runs follow a script, and the run folder is
written as the ServerApp would write it, so each restart decision of ``supervise_run`` is checked without a
SuperLink (the real SuperLink resume path is covered by tests/e2e/test_deployment.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmedlora.deploy import watchdog
from fedmedlora.deploy.tools import DeployError
from fedmedlora.runs import ROUNDS_FILE, STATE_FILE


class FakeControl:
    """Each submitted run follows the next script: a list of (status, rounds recorded so far) per status poll."""

    def __init__(self, run_dir: Path, scripts: list[list[tuple[str, int]]], *, resume_point: bool = True) -> None:
        self.run_dir = run_dir
        self.scripts = scripts
        self.resume_point = resume_point
        self.submitted: list[dict] = []
        self.stopped: list[int] = []
        self.polls: dict[int, int] = {}

    def _record_rounds(self, n: int) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"round": r}) for r in range(n + 1)]
        (self.run_dir / ROUNDS_FILE).write_text("\n".join(lines) + "\n")
        if self.resume_point and n > 0:
            (self.run_dir / STATE_FILE).write_text(json.dumps({"round": n}))

    def submit_run(self, app_dir, connection, *, flwr_home, overrides=None) -> int:
        self.submitted.append(dict(overrides or {}))
        rid = 100 + len(self.submitted)
        self.polls[rid] = 0
        return rid

    def run_status(self, rid, connection, *, flwr_home) -> dict:
        script = self.scripts[rid - 101]
        k = min(self.polls[rid], len(script) - 1)
        self.polls[rid] += 1
        status, rounds = script[k]
        self._record_rounds(rounds)
        return {"run-id": rid, "status": status, "status-details": "scripted"}

    def stop_run(self, rid, connection, *, flwr_home) -> None:
        self.stopped.append(rid)

    def wait_for_run(self, rid, connection, *, flwr_home, timeout) -> dict:
        return {"run-id": rid, "status": "finished:stopped"}


@pytest.fixture
def control(monkeypatch, tmp_path: Path):
    def install(scripts, **kw) -> FakeControl:
        fake = FakeControl(tmp_path / "run", scripts, **kw)
        for name in ("submit_run", "run_status", "stop_run", "wait_for_run"):
            monkeypatch.setattr(watchdog, name, getattr(fake, name))
        return fake

    return install


def _supervise(tmp_path: Path, **kw) -> dict:
    args = {"flwr_home": tmp_path / "home", "run_dir": tmp_path / "run", "timeout": 60.0, "poll": 0.0}
    return watchdog.supervise_run(tmp_path / "app", "c", **{**args, **kw})


def test_a_failed_run_is_resubmitted_with_resume_and_finishes(control, tmp_path: Path) -> None:
    fake = control(
        [
            [("running", 1), ("finished:failed", 1)],  # the ServerApp dies after round 1
            [("running", 1), ("running", 2), ("finished:completed", 3)],  # the resumed run finishes
        ]
    )
    events: list[str] = []
    status = _supervise(tmp_path, max_restarts=2, on_event=events.append)
    assert status["status"] == "finished:completed"
    assert status["run-ids"] == [101, 102]
    assert fake.submitted == [{}, {"resume": True}]  # the first run is fresh, the restart resumes
    assert any("run 101 failed" in e for e in events)
    assert watchdog.completed_rounds(tmp_path / "run") == [0, 1, 2, 3]


def test_restarts_stop_at_max_restarts(control, tmp_path: Path) -> None:
    fake = control([[("finished:failed", 1)]] * 5)
    status = _supervise(tmp_path, max_restarts=2)
    assert status["status"] == "finished:failed"
    assert status["run-ids"] == [101, 102, 103]  # the first run and two restarts
    assert fake.submitted == [{}, {"resume": True}, {"resume": True}]


def test_no_restart_without_a_resume_point(control, tmp_path: Path) -> None:
    fake = control([[("finished:failed", 0)]] * 3, resume_point=False)
    status = _supervise(tmp_path, max_restarts=2)
    assert status["status"] == "finished:failed" and status["run-ids"] == [101]
    assert len(fake.submitted) == 1


def test_a_stalled_run_is_stopped_and_resumed(control, tmp_path: Path) -> None:
    fake = control(
        [
            [("running", 1)],  # never records another round
            [("finished:completed", 2)],
        ]
    )
    events: list[str] = []
    status = _supervise(tmp_path, max_restarts=1, stall_timeout=0.0, on_event=events.append)
    assert fake.stopped == [101]
    assert status["status"] == "finished:completed" and status["run-ids"] == [101, 102]
    assert fake.submitted[1] == {"resume": True}
    assert any("no new round" in e for e in events)


def test_a_first_submission_can_itself_resume(control, tmp_path: Path) -> None:
    fake = control([[("finished:completed", 2)]])
    _supervise(tmp_path, resume=True)
    assert fake.submitted == [{"resume": True}]


def test_the_overall_timeout_is_an_error_naming_the_run(control, tmp_path: Path) -> None:
    control([[("running", 1)]])
    with pytest.raises(DeployError, match="run 101 still running"):
        _supervise(tmp_path, timeout=0.0)


def test_a_malformed_round_record_is_an_error_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / ROUNDS_FILE).write_text('{"round": 0}\n{"nope": 1}\n')
    with pytest.raises(DeployError, match=r"rounds.jsonl:2: not a round record"):
        watchdog.completed_rounds(tmp_path)


def test_deploy_run_max_restarts_resubmits_with_resume_through_the_cli(control, tmp_path: Path) -> None:
    """`fedmedlora deploy run --max-restarts 1`: the failed run is resubmitted once, resuming, and the command
    exits 0 with the finished run; with --max-restarts 0 the same failure exits 1."""
    from typer.testing import CliRunner

    from fedmedlora.cli import app

    script = [[("running", 1), ("finished:failed", 1)], [("finished:completed", 2)]]
    home, run = str(tmp_path / "home"), str(tmp_path / "run")
    args = ["deploy", "run", "--connection", "c", "--run-dir", run, "--flwr-home", home]
    fake = control(script)
    result = CliRunner().invoke(app, [*args, "--max-restarts", "1"])
    assert result.exit_code == 0, result.output
    assert fake.submitted == [{}, {"resume": True}]
    assert "run 101 failed" in result.output and "submitted run 102 (resume)" in result.output

    (tmp_path / "run" / ROUNDS_FILE).unlink()
    fake = control(script)
    result = CliRunner().invoke(app, [*args, "--max-restarts", "0"])
    assert result.exit_code == 1, result.output
    assert fake.submitted == [{}]
