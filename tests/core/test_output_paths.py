"""Output paths are checked before any work: never into a file, a foreign folder or another kind of run."""

from __future__ import annotations

import json

import pytest

from fedmedlora.config import load_config
from fedmedlora.runs import RUN_FILE, RunDir, RunDirError, check_output_dir, federated_row_dir


def test_new_empty_and_same_kind_folders_are_fine(tmp_path):
    check_output_dir(tmp_path / "new" / "deeper")
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", "study")
    RunDir(tmp_path / "s", load_config(), command="study")
    check_output_dir(tmp_path / "s", "study")  # a study goes on where it stopped


def test_a_file_a_foreign_folder_and_another_kind_of_run_are_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        check_output_dir(tmp_path / "f")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own notes")
    with pytest.raises(RunDirError, match="not a fedmedlora run folder"):
        RunDir(mine, load_config(), command="federation")
    assert (mine / "config.yaml").read_text() == "my own notes" and not (mine / RUN_FILE).exists()
    RunDir(tmp_path / "t", load_config(), command="train")
    with pytest.raises(RunDirError, match="holds a 'train' run"):
        RunDir(tmp_path / "t", load_config(), command="federation")
    assert json.loads((tmp_path / "t" / RUN_FILE).read_text())["command"] == "train"


def test_extract_refuses_a_folder_as_out_before_loading_a_model(tmp_path, monkeypatch):
    import fedmedlora.recipes.extract as ex

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(ex.Session, "load", no_model)
    note = tmp_path / "a.txt"
    note.write_text("Patient denies chest pain.", encoding="utf-8")
    with pytest.raises(ValueError, match="is a folder"):
        ex.extract_notes(load_config(), [note], tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no notes found"):
        ex.extract_notes(load_config(), [tmp_path / "empty"], tmp_path / "p.jsonl")


def test_federated_row_folders_are_plain_names():
    names = ["Fed-MedLoRA", "Fed-MedLoRA+", "FedSA-LoRA", "FFA-LoRA", "RoLoRA", "Fed-MedLoRA + DP-SGD (ε=8)"]
    assert [federated_row_dir(n) for n in names] == [
        "fed-medlora", "fed-medlora-plus", "fedsa-lora", "ffa-lora", "rolora", "fed-medlora-plus-dp-sgd-eps-8"
    ]  # fmt: skip
