"""The CLI boundary: an unexpected error prints one line, never locals or note text; the traceback goes to a log."""

from __future__ import annotations

import sys

import pytest

NOTE = "Patient denies chest pain. Mother had breast cancer."


def test_an_unexpected_error_in_extract_prints_no_note_text(tmp_path, monkeypatch, capsys):
    import fedmedlora.recipes.extract as extract_module
    from fedmedlora.cli import main

    note = tmp_path / "a.txt"
    note.write_text(NOTE, encoding="utf-8")

    def boom(cfg, notes, out, **kwargs):
        text = note.read_text(encoding="utf-8")  # a local holding the note, as the real code has
        raise RuntimeError(f"could not handle text={text!r}")

    monkeypatch.setattr(extract_module, "extract_notes", boom)
    monkeypatch.setenv("FEDMEDLORA_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("FEDMEDLORA_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["fedmedlora", "extract", str(note), "--out", str(tmp_path / "p.jsonl")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert "chest pain" not in shown and "breast cancer" not in shown
    assert "fedmedlora extract failed unexpectedly: RuntimeError" in " ".join(shown.split())
    (log,) = (tmp_path / "logs").glob("*-extract-*.log")
    assert "RuntimeError" in log.read_text()  # the full story is in the log, on the user's machine


def test_debug_reraises(tmp_path, monkeypatch):
    import fedmedlora.recipes.extract as extract_module
    from fedmedlora.cli import main

    note = tmp_path / "a.txt"
    note.write_text(NOTE, encoding="utf-8")
    monkeypatch.setattr(extract_module, "extract_notes", lambda *a, **k: 1 / 0)
    monkeypatch.setenv("FEDMEDLORA_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["fedmedlora", "extract", str(note), "--out", str(tmp_path / "p.jsonl")])
    with pytest.raises(ZeroDivisionError):
        main()


def test_an_adapter_of_another_base_model_is_refused(tmp_path, monkeypatch, capsys):
    import json

    import typer

    from fedmedlora.cli.common import with_adapter_prompting
    from fedmedlora.config import load_config

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}))
    (adapter / "fedmedlora.json").write_text(
        json.dumps({"format_version": 1, "meta": {"base_model": "/models/Llama-3.1-8B"}})
    )
    with pytest.raises(typer.Exit):
        with_adapter_prompting(load_config(), adapter)  # the default SmolLM2
    assert "trained on base model '/models/Llama-3.1-8B'" in " ".join(capsys.readouterr().err.split())
    cfg = with_adapter_prompting(load_config(overrides=["model.name=/models/Llama-3.1-8B"]), adapter)
    assert cfg.lora.r == 4
    monkeypatch.setenv("FEDMEDLORA_ALLOW_BASE_MISMATCH", "1")
    assert with_adapter_prompting(load_config(), adapter).lora.r == 4
