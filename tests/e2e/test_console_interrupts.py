"""The ``fedmedlora`` command as a person runs it, in a subprocess, with the tiny random model.

* Ctrl-C (SIGINT) and SIGTERM stop ``evaluate`` (generation) and ``train`` (training steps) at once or at the next
  step, even when the process was started with SIGINT ignored, as a job started with ``&`` from a script is, and
  when the interrupt lands in a finaliser and Python drops it (the ~70 s of issue 15: the run went on to its end;
  ``tests/core/test_console.py`` has the deterministic case), and ``run.json`` says ``interrupted``;
* the console shows no library progress bar and no deprecation warning without ``-v`` and prints one line per
  finished row; ``-v`` brings the bars and the warnings back;
* ``--force`` lets a run into a foreign folder or over a finished run of another kind, and says so.

No timing is asserted: the timeouts below are generous bounds that only keep a broken build from hanging.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinymodel import save_tiny_model, tiny_model_overrides

FEDMEDLORA = [sys.executable, "-c", "from fedmedlora.cli import main; main()"]
#: The one-time GGUF conversion, weight loading and per-generation bars (tqdm), and known deprecations.
LIBRARY_NOISE = ("Loading weights", "generate:", "it/s]", "FutureWarning", "DeprecationWarning")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("console") / "model")


def _tiny(model: Path, *extra: str) -> list[str]:
    sets = [*tiny_model_overrides(model), *extra]
    return [arg for s in sets for arg in ("-s", s)]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FEDMEDLORA_DEBUG", "PYTHONWARNINGS")}
    return {**env, "OMP_NUM_THREADS": "1", "FEDMEDLORA_LOG_DIR": str(tmp_path / "logs")}


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FEDMEDLORA, *args], env=_env(tmp_path), capture_output=True, text=True, timeout=600, check=False
    )


#: generation that would run for minutes (no early stop, long answers), and training that would
GENERATING = ["evaluate", "-s", "eval.early_stop=false", "-s", "eval.stop_on_repetition=false"]
GENERATING += ["-s", "eval.max_new_tokens=300", "-s", "eval.max_sentences=50"]
TRAINING = ["train", "--setting", "centralized", "-s", "train.max_steps=100000", "-s", "data.max_train_examples=8"]


@pytest.mark.parametrize(
    ("command", "signum", "error"),
    [
        (GENERATING, signal.SIGINT, "KeyboardInterrupt"),
        (TRAINING, signal.SIGINT, "KeyboardInterrupt"),
        (TRAINING, signal.SIGTERM, "SystemExit"),  # a scheduler's or `kill`'s stop
    ],
    ids=["evaluate-generating-sigint", "train-stepping-sigint", "train-stepping-sigterm"],
)
def test_a_signal_stops_the_run_and_marks_it_interrupted(model, tmp_path, command, signum, error):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [*FEDMEDLORA, *command, "--out", str(out), *_tiny(model)],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # what a shell does to a job started with `&` from a script: SIGINT ignored, inherited by the command
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / "run.json").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0]  # still working: the run is long enough to interrupt
        time.sleep(4)  # past loading the tiny model: into the generation / training loop
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=120)  # a generous bound: it stops at the next step, not at the end
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0, output
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted", run
    assert run["error"].startswith(error)
    assert "Traceback" not in output, output


def test_console_is_quiet_without_v_and_prints_the_row_line(model, tmp_path):
    args = ["evaluate", "--out", str(tmp_path / "q"), *_tiny(model, "eval.max_sentences=2", "eval.max_new_tokens=8")]
    quiet = _run(args, tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    shown = quiet.stdout + quiet.stderr
    for noise in LIBRARY_NOISE:
        assert noise not in shown, (noise, shown)
    row = [line for line in quiet.stdout.splitlines() if line.startswith("[1/1] evaluate:")]
    assert row and "NER strict F1" in row[0] and row[0].rstrip().endswith(" s"), quiet.stdout

    note = tmp_path / "a.txt"
    note.write_text("The patient denies chest pain.")
    extract = _run(["extract", str(note), "--out", str(tmp_path / "p.jsonl"), *args[3:]], tmp_path)
    assert extract.returncode == 0, extract.stderr
    assert not any(noise in extract.stdout + extract.stderr for noise in LIBRARY_NOISE), extract.stderr

    loud = _run(["-v", *args[:2], str(tmp_path / "v"), *args[3:]], tmp_path)
    assert loud.returncode == 0, loud.stderr
    assert "generate:" in loud.stderr  # fedmedlora's own tqdm bar is back
    assert "Warning" in loud.stderr  # and the libraries' warnings (transformers' is_gradient_checkpointing one)
    assert any(line.startswith("[1/1] evaluate:") for line in loud.stdout.splitlines())


def test_force_into_a_foreign_folder_and_over_another_kind_of_run(model, tmp_path):
    small = _tiny(model, "eval.max_sentences=1", "eval.max_new_tokens=4")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own file")
    refused = _run(["evaluate", "--out", str(mine), *small], tmp_path)
    assert refused.returncode == 2 and "--force" in refused.stderr, refused.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]

    forced = _run(["evaluate", "--out", str(mine), "--force", *small], tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "is not a fedmedlora run folder" in " ".join(forced.stderr.split())
    assert (mine / "notes.txt").read_text() == "my own file"  # only the run's own files were written
    assert json.loads((mine / "run.json").read_text())["status"] == "done"

    # a finished 'evaluate' run with a stale table in eval/: a 'train' run over it clears it, and says so
    (mine / "eval" / "stale.json").write_text("{}")
    again = _run(["train", "--setting", "zero_shot", "--out", str(mine), *small], tmp_path)
    assert again.returncode == 2 and "holds a 'evaluate' run" in " ".join(again.stderr.split())
    again = _run(["train", "--setting", "zero_shot", "--out", str(mine), "--force", *small], tmp_path)
    assert again.returncode == 0, again.stderr
    assert "cleared the earlier 'evaluate' run" in " ".join(again.stderr.split())
    assert not (mine / "eval" / "stale.json").exists() and (mine / "eval" / "test.json").is_file()
    assert json.loads((mine / "run.json").read_text())["command"] == "train"


@pytest.mark.parametrize(("error", "status"), [(KeyboardInterrupt, "interrupted"), (RuntimeError, "failed")])
def test_an_interrupted_or_failed_study_and_its_row_say_so(model, tmp_path, monkeypatch, error, status):
    import fedmedlora.recipes.study as study_module
    from fedmedlora.config import load_config
    from fedmedlora.lm.session import Session

    def stop(*args, **kwargs):
        raise error("stopped in the middle of training")

    monkeypatch.setattr(Session, "train", stop)
    cfg = load_config(
        overrides=[
            *tiny_model_overrides(model),
            "train.max_steps=1",
            "eval.max_sentences=1",
            "eval.max_new_tokens=4",
        ]
    )
    with pytest.raises(error):
        study_module.run_study(cfg, tmp_path / "s", fed_methods=(), skip=("zero_shot", "new_site"), progress=print)
    study = json.loads((tmp_path / "s" / "run.json").read_text())
    row = json.loads((tmp_path / "s" / "single-site (chia)" / "run.json").read_text())
    assert study["status"] == row["status"] == status, (study, row)
    assert "stopped in the middle of training" in row["error"]


def test_study_prints_one_line_per_row_and_no_library_chatter(model, tmp_path):
    args = ["study", "--out", str(tmp_path / "s"), "--method", "fedmedlora", "--no-encoder"]
    args += [f"--skip={s}" for s in ("single_site", "centralized", "new_site")]
    small = ["train.max_steps=1", "train.batch_size=2", "data.max_train_examples=4", "train.max_length=768"]
    small += ["eval.max_sentences=1", "eval.max_new_tokens=4", "federation.rounds=1"]
    run = _run([*args, *_tiny(model, *small)], tmp_path)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("[")]
    assert any(line.startswith("[1/2] zero-shot: NER strict F1 ") for line in rows), run.stdout
    assert any(line.startswith("[2/2] Fed-MedLoRA: NER strict F1 ") for line in rows), run.stdout
    shown = run.stdout + run.stderr
    for noise in (*LIBRARY_NOISE, "[ROUND", "INFO :"):  # Flower's per-round banner too
        assert noise not in shown, (noise, shown)
