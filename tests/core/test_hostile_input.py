"""Issue 15's remaining careless inputs, each a clear error naming its file (or a visible message), never a
traceback from inside a library and never silent: a non-UTF-8 YAML config, a corrupt ``stats.json``, an entity
given as ``{}`` or as a string, an empty ``train.jsonl``, a folder of notes with files extract does not read,
documents whose label set differs from the manifest's."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from fedmedlora.benchmark import BenchmarkError, check_benchmark, load_benchmark, open_benchmark
from fedmedlora.config import ConfigError, load_config
from fedmedlora.jsonl import JsonlError, read_documents, write_documents


@pytest.fixture()
def bench(tmp_path) -> Path:
    root = tmp_path / "bench"
    shutil.copytree(open_benchmark(load_config().data.benchmark).root, root)
    return root


def test_a_non_utf8_yaml_config_is_an_error_naming_the_file(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_bytes(b"name: caf\xe9\n")  # Latin-1
    with pytest.raises(ConfigError, match=r"run\.yaml: not UTF-8 text"):
        load_config(p)


def test_a_corrupt_stats_json_is_an_error_naming_the_file(bench):
    from fedmedlora.benchmark_stats import benchmark_stats

    (bench / "stats.json").write_text("{not json")
    with pytest.raises(BenchmarkError, match=r"stats\.json: not a statistics file"):
        benchmark_stats(load_benchmark(bench))


@pytest.mark.parametrize(
    ("entity", "message"), [({}, r"entities\[0\]\.id: missing"), ("drug", r"entities\[0\]: expected an object")]
)
def test_an_entity_given_as_an_empty_object_or_a_string_names_line_and_field(bench, tmp_path, entity, message):
    line = json.loads((bench / "phee" / "train.jsonl").read_text().splitlines()[0])
    line["sentences"][0]["entities"] = [entity]
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(line) + "\n")
    with pytest.raises(JsonlError, match=rf"bad\.jsonl:1: sentences\[0\]\.{message}"):
        read_documents(p)


def test_an_empty_train_file_is_an_error_naming_it(bench, tmp_path):
    from fedmedlora.recipes.local import run_setting

    (bench / "phee" / "train.jsonl").write_text("")
    cfg = load_config(overrides=[f"data.benchmark={bench}"])
    with pytest.raises(ValueError, match=r"no training examples in .*phee[/\\]train\.jsonl"):
        run_setting("single_site", cfg, tmp_path / "run", sites=["phee"], session=object())  # never loads a model
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_extract_takes_txt_in_any_case_and_says_what_it_skips(tmp_path, caplog):
    from fedmedlora.extract import read_notes

    (tmp_path / "a.txt").write_text("Patient denies chest pain.")
    (tmp_path / "b.TXT").write_text("No fever.")
    (tmp_path / "readme.md").write_text("# not a note")
    with caplog.at_level(logging.WARNING):
        notes = read_notes([tmp_path])
    assert [n for n, _ in notes] == ["a", "b"]
    assert "skipping 1 other file(s): readme.md" in caplog.text


def test_documents_whose_label_set_differs_from_the_manifest_are_listed(bench):
    from fedmedlora.schema import LabelSet

    manifest = json.loads((bench / "benchmark.json").read_text())
    manifest["sites"]["phee"]["label_set"] = LabelSet().to_dict()  # every type: wider than phee's documents say
    (bench / "benchmark.json").write_text(json.dumps(manifest))
    problems = check_benchmark(load_benchmark(bench))
    assert any("phee" in p and "the manifest says" in p for p in problems), problems


def test_train_fed_run_and_study_warn_of_a_leak_before_any_work(bench, capsys):
    from fedmedlora.cli import _warn_benchmark

    train = read_documents(bench / "phee" / "train.jsonl")
    test = read_documents(bench / "phee" / "test.jsonl")
    write_documents(bench / "phee" / "test.jsonl", [*test, replace(train[0], split="test")])
    _warn_benchmark(load_config(overrides=[f"data.benchmark={bench}"]))
    err = " ".join(capsys.readouterr().err.split())
    assert f"warning: phee: document {train[0].id!r} is in both train and test" in err


@pytest.mark.parametrize("where", ["run folder", "extract output"])
def test_an_unwritable_output_is_refused_before_any_work(tmp_path, monkeypatch, where):
    import os

    import fedmedlora.recipes.extract as extract_module
    import fedmedlora.runs as runs_module

    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root may write anywhere: pretend it may not
    if where == "run folder":
        with pytest.raises(runs_module.RunDirError, match="cannot write there"):
            runs_module.check_output_dir(tmp_path / "run", "train")
    else:
        with pytest.raises(ValueError, match="cannot write there"):
            extract_module.check_output_file(tmp_path / "p.jsonl")


def test_a_non_utf8_manifest_is_an_error_naming_the_file(bench):
    raw = (bench / "benchmark.json").read_bytes()
    (bench / "benchmark.json").write_bytes(raw.replace(b'"name"', b'"n\xe9me"', 1))  # a Latin-1 byte
    with pytest.raises(BenchmarkError, match=r"benchmark\.json: not UTF-8 text"):
        load_benchmark(bench)
