"""Benchmark loading refuses silent data problems; ``check_benchmark`` / ``data check`` list the rest."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from fedmedlora.benchmark import BenchmarkError, check_benchmark, default_benchmark_dir, load_benchmark
from fedmedlora.jsonl import read_documents, write_documents


@pytest.fixture
def bench(tmp_path):
    root = tmp_path / "b"
    shutil.copytree(default_benchmark_dir(), root)
    return root


def test_the_sample_is_consistent(bench):
    assert check_benchmark(load_benchmark(bench)) == []


def test_a_manifest_site_without_folder_is_an_error(bench):
    shutil.rmtree(bench / "chia")
    with pytest.raises(BenchmarkError, match="lists site 'chia' but"):
        load_benchmark(bench)


def test_bad_n_docs_is_an_error_naming_the_field(bench):
    mf = json.loads((bench / "benchmark.json").read_text())
    mf["sites"]["phee"]["n_docs"] = "many"
    (bench / "benchmark.json").write_text(json.dumps(mf))
    with pytest.raises(BenchmarkError, match=r"sites\.phee\.n_docs"):
        load_benchmark(bench)


def test_leaks_duplicates_and_misfiled_documents_are_found(bench):
    train = read_documents(bench / "phee" / "train.jsonl")
    test = read_documents(bench / "phee" / "test.jsonl")
    write_documents(bench / "phee" / "test.jsonl", [*test, replace(train[0], split="test")])  # train doc in test
    b = load_benchmark(bench)
    assert any("is in both train and test" in p for p in check_benchmark(b))
    write_documents(bench / "phee" / "dev.jsonl", [train[1]])  # says split=train, lives in dev.jsonl
    with pytest.raises(BenchmarkError, match=r"dev\.jsonl:1: .*split='train'"):
        b.load("phee", "dev")
    write_documents(bench / "phee" / "dev.jsonl", [replace(train[1], split="dev")] * 2)
    with pytest.raises(BenchmarkError, match="appears twice"):
        b.load("phee", "dev")
