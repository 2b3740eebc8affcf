"""The console pieces on their own: the progress display's lines and estimate, the library-noise filter, the
``--force`` rules of ``fedmedlora.runs``, ``-v`` and the error log that keeps no note text without it."""

from __future__ import annotations

import io
import json
import sys
import warnings

import pytest
from rich.console import Console

from fedmedlora import progress
from fedmedlora.config import load_config
from fedmedlora.runs import RUN_FILE, RunDir, RunDirError, check_output_dir, force_output_dir

NOTE = "Patient denies chest pain. Mother had breast cancer."


def _console() -> tuple[object, io.StringIO]:
    from fedmedlora.cli.console import RunConsole

    out = io.StringIO()
    return RunConsole(Console(file=io.StringIO()), Console(file=out, width=200), live=False, label="study"), out


def test_the_display_shows_row_phase_and_time_left_and_prints_one_line_per_row(monkeypatch):
    import fedmedlora.cli.console as console_module

    clock = iter([0.0, 0.0, 30.0, 30.0, 60.0, 60.0, 60.0, 70.0, 70.0, 70.0])
    monkeypatch.setattr(console_module.time, "monotonic", lambda: next(clock))
    sink, out = _console()
    with progress.reporting(sink, bars=False):
        assert not progress.bars()
        progress.plan(3)
        progress.row_started("Fed-MedLoRA")  # t=0
        progress.step(progress.ROUND, 1, 4)
        progress.step(progress.TRAINING, 2, 5)
        line = sink.render().plain
        assert "row 1/3" in line and "Fed-MedLoRA" in line and "round 2/4" in line and "training step 2/5" in line
        progress.step(progress.ROUND, 2, 4)  # a new round: the inner phases start again
        assert "training step" not in sink.render().plain
        progress.row_finished("Fed-MedLoRA", 0.4567, 60.0)
        progress.row_finished("zero-shot", None, 12.0)  # reused: never started here, so not in the estimate
        progress.row_started("centralized")  # t=60
        assert sink.time_left() == pytest.approx(50.0)  # t=70: a row takes 60 s; 10 s of this one are spent
    assert progress.current() is None and progress.bars()
    lines = out.getvalue().splitlines()
    assert lines == ["[1/3] Fed-MedLoRA: NER strict F1 0.457, 1 min 0 s", "[2/3] zero-shot: not scored, 12 s"]


def test_headline_f1_pools_the_sites_and_skips_the_overall_entry():
    from fedmedlora.metrics import Counts, Evaluation

    def site(tp: int, fp: int, fn: int) -> dict:
        ev = Evaluation()
        ev.counts[("ner", "strict", "micro")] = Counts(tp, fp, fn)
        return {"metrics": ev.to_dict()}

    results = {"a": site(3, 1, 0), "b": site(1, 1, 4), "overall": {"sites": ["a", "b"], "intervals": {}}}
    assert progress.headline_f1(results) == pytest.approx(Counts(4, 2, 4).f1)
    assert progress.headline_f1({"overall": {}}) is None


def test_library_deprecations_are_hidden_without_v_and_ours_never():
    from fedmedlora.cli.console import quiet_libraries

    def warned(verbose: bool) -> int:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with quiet_libraries(verbose):
                for module in ("transformers.modeling_utils", "peft.tuners", "fedmedlora.lm.train"):
                    warnings.warn_explicit("x is deprecated", FutureWarning, "f.py", 1, module=module)
        return len(seen)

    assert warned(False) == 1  # only fedmedlora's own
    assert warned(True) == 3
    import os

    with quiet_libraries(False):
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


def test_force_clears_another_kind_of_run_and_admits_a_foreign_folder_naming_what_it_replaces(tmp_path):
    run = RunDir(tmp_path / "t", load_config(), command="train")
    run.write_json("eval/test.json", {})
    (run.path / "mine.txt").write_text("kept")
    with pytest.raises(RunDirError, match="or --force"):
        check_output_dir(run.path, "federation")
    notes = force_output_dir(run.path, "federation")
    assert len(notes) == 1 and "cleared the earlier 'train' run" in notes[0] and "eval" in notes[0]
    assert sorted(p.name for p in run.path.iterdir()) == ["mine.txt"]
    check_output_dir(run.path, "federation")  # now allowed

    study = RunDir(tmp_path / "s", load_config(), command="study")
    assert force_output_dir(study.path, "study", keep_same_kind=True) == []  # a study goes on where it stopped
    assert (study.path / RUN_FILE).is_file()

    foreign = tmp_path / "f"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("my own notes")
    (note,) = force_output_dir(foreign, "train")
    assert "not a fedmedlora run folder" in note and "config.yaml" in note
    RunDir(foreign, load_config(), command="train")
    assert json.loads((foreign / RUN_FILE).read_text())["command"] == "train"

    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        force_output_dir(tmp_path / "file", "train")


@pytest.mark.parametrize("verbose", [False, True])
def test_the_error_log_keeps_no_note_text_unless_v(tmp_path, monkeypatch, capsys, verbose):
    import fedmedlora.recipes.extract as extract_module
    from fedmedlora.cli import main

    note = tmp_path / "a.txt"
    note.write_text(NOTE, encoding="utf-8")

    def boom(cfg, notes, out, **kwargs):
        try:
            raise KeyError(note.read_text(encoding="utf-8"))
        except KeyError as e:
            raise RuntimeError(f"could not handle text={note.read_text(encoding='utf-8')!r}") from e

    monkeypatch.setattr(extract_module, "extract_notes", boom)
    monkeypatch.setenv("FEDMEDLORA_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("FEDMEDLORA_DEBUG", raising=False)
    argv = ["fedmedlora", *(["-v"] if verbose else []), "extract", str(note), "--out", str(tmp_path / "p.jsonl")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    (log,) = (tmp_path / "logs").glob("*.log")
    logged, shown = log.read_text(), capsys.readouterr().err
    assert "RuntimeError" in logged and "KeyError" in logged and "in boom" in logged  # frames and types
    assert "failed unexpectedly: RuntimeError" in " ".join(shown.split())
    if verbose:  # the whole story, on the terminal too (still no locals)
        assert "chest pain" in logged and "Traceback (most recent call last)" in shown and "chest pain" in shown
    else:
        assert "chest pain" not in logged and "breast cancer" not in logged
        assert "chest pain" not in shown and "Traceback" not in shown


def test_an_unexpected_error_in_a_run_goes_to_the_run_folders_error_log(tmp_path, monkeypatch, capsys):
    import fedmedlora.recipes.local as local_module
    from fedmedlora.cli import main

    def boom(setting, cfg, out, **kwargs):
        RunDir(out, cfg, command="train")
        raise RuntimeError(f"could not handle text={NOTE!r}")

    monkeypatch.setattr(local_module, "run_setting", boom)
    monkeypatch.setenv("FEDMEDLORA_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("FEDMEDLORA_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["fedmedlora", "train", "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    log = tmp_path / "run" / "error.log"
    assert "error.log" in capsys.readouterr().err  # the one line says where the traceback went
    assert "RuntimeError" in log.read_text() and "chest pain" not in log.read_text()
    assert not (tmp_path / "logs").exists()


def test_the_estimate_uses_the_current_rows_own_progress(monkeypatch):
    import fedmedlora.cli.console as console_module

    now = [0.0]
    monkeypatch.setattr(console_module.time, "monotonic", lambda: now[0])
    sink, _ = _console()
    sink.plan(3)
    sink.row_started("a")
    assert sink.time_left() is None  # nothing to go by yet
    now[0] = 30.0
    sink.step(progress.ROUND, 1, 4)  # a quarter of the row in 30 s: 90 s more, and the 2 rows after it as long
    assert sink.time_left() == pytest.approx(90 + 2 * 120)
    sink.row_finished("a", None, 100.0)
    sink.row_started("b")
    now[0] = 40.0
    assert sink.time_left() == pytest.approx((100 - 10) + 100)  # no progress yet: the rows so far took 100 s
    sink.step(progress.TRAINING, 5, 10)  # half the training: a quarter of the row (training, then scoring)
    assert sink.time_left() == pytest.approx((10 / 0.25 - 10) + 100)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt, as expected
def test_a_ctrl_c_dropped_in_a_finaliser_still_stops_the_work_at_its_next_step():
    """The ~70 s of issue 15: Python drops an exception raised while a ``__del__`` runs ("Exception ignored in"),
    so a KeyboardInterrupt that lands there is lost; the CLI's handler also requests the stop, and the next step
    raises it."""
    import os
    import signal

    from fedmedlora.cli import _interrupt

    class Finalised:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs here, inside the finaliser
            for _ in range(1000):
                pass

    previous = signal.signal(signal.SIGINT, _interrupt)
    try:
        Finalised()  # collected at once: its KeyboardInterrupt is printed and dropped by Python
        with pytest.raises(KeyboardInterrupt):
            progress.step(progress.TRAINING, 1, 10)
        progress.step(progress.TRAINING, 2, 10)  # raised once: the work may unwind in peace
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_requested_stop_is_a_system_exit():
    import signal

    progress.request_stop(signal.SIGTERM)
    with pytest.raises(SystemExit) as info:
        progress.check_stop()
    assert info.value.code == 128 + signal.SIGTERM
