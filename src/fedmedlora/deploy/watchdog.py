"""The coordinator's run watchdog: submit a run, watch its progress, resubmit it (resuming) while it fails.

Owns: reading the round records a run has written (``completed_rounds``), whether a run folder holds the
ServerApp's resume point (``can_resume``), and ``supervise_run`` (restart on ``finished:failed`` or on a stall,
up to a number of restarts and an overall timeout).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fedmedlora.deploy.control import FINISHED, run_status, stop_run, submit_run, wait_for_run
from fedmedlora.deploy.tools import DeployError
from fedmedlora.jsonl import iter_json_lines
from fedmedlora.runs import ROUNDS_FILE, STATE_FILE


def completed_rounds(run_dir: str | Path) -> list[int]:
    """Round numbers recorded in ``<run_dir>/rounds.jsonl`` (round 0 = the initial adapter), in file order."""
    path = Path(run_dir) / ROUNDS_FILE
    if not path.is_file():
        return []
    rounds = []
    for i, record in iter_json_lines(path, DeployError):
        try:
            rounds.append(int(record["round"]))
        except (KeyError, TypeError, ValueError):
            raise DeployError(f"{path}:{i}: not a round record") from None
    return rounds


def can_resume(run_dir: str | Path) -> bool:
    """The ServerApp's resume point (``federation_state.json``) exists in ``run_dir``."""
    return (Path(run_dir) / STATE_FILE).is_file()


def supervise_run(
    app_dir: str | Path,
    connection: str,
    *,
    flwr_home: str | Path,
    run_dir: str | Path,
    timeout: float,
    max_restarts: int = 2,
    resume: bool = False,
    stall_timeout: float | None = None,
    poll: float = 5.0,
    on_event: Any = None,
) -> dict[str, Any]:
    """Coordinator watchdog: submit the run and resubmit it with ``resume=true`` while it fails.

    A run is restarted when it ends ``finished:failed`` (ServerApp crash, lost SuperLink, a site outage longer
    than the round/node-wait timeouts) and ``run_dir`` holds a resume point, or when ``stall_timeout`` seconds
    pass without a new round record (it is then stopped with ``flwr stop`` first). Gives up after
    ``max_restarts`` restarts or ``timeout`` seconds in all. ``resume=True`` makes the first submission a
    resume too (after a coordinator crash).

    Returns:
        The final status dict of the last run, with ``run-ids`` (all submitted runs) added.
    """

    def note(msg: str) -> None:
        if on_event is not None:
            on_event(msg)

    deadline = time.monotonic() + timeout
    run_ids: list[int] = []
    overrides: dict[str, Any] = {"resume": True} if resume else {}
    while True:
        rid = submit_run(app_dir, connection, flwr_home=flwr_home, overrides=overrides)
        run_ids.append(rid)
        note(f"submitted run {rid}" + (" (resume)" if overrides else ""))
        last_rounds, last_change = completed_rounds(run_dir), time.monotonic()
        while True:
            st = run_status(rid, connection, flwr_home=flwr_home)
            if str(st.get("status", "")).startswith(FINISHED):
                break
            now = time.monotonic()
            rounds = completed_rounds(run_dir)
            if rounds != last_rounds:
                last_rounds, last_change = rounds, now
            if stall_timeout is not None and now - last_change > stall_timeout:
                note(f"run {rid}: no new round for {stall_timeout:.0f} s; stopping it")
                stop_run(rid, connection, flwr_home=flwr_home)
                st = wait_for_run(rid, connection, flwr_home=flwr_home, timeout=120)
                st = {**st, "status": "finished:failed", "status-details": "stalled (stopped by the watchdog)"}
                break
            if now > deadline:
                raise DeployError(f"run {rid} still {st.get('status')} when the watchdog's {timeout:.0f} s ran out")
            time.sleep(poll)
        st["run-ids"] = run_ids
        if st.get("status") != "finished:failed":
            return st
        note(f"run {rid} failed: {st.get('status-details')}")
        if len(run_ids) > max_restarts or not can_resume(run_dir) or time.monotonic() > deadline:
            return st
        overrides = {"resume": True}
