"""Tests for fedmedlora.partition: seeded document partitions (IID, Dirichlet label skew, size skew), the written
benchmark and its manifest, ``fedmedlora data split`` and ``data check`` on the result."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedmedlora.benchmark import check_benchmark, default_benchmark_dir, load_benchmark
from fedmedlora.partition import (
    PartitionError,
    PartitionSettings,
    partition_documents,
    quotas,
    split_benchmark,
    total_variation,
    type_mix,
)
from fedmedlora.schema import Document, Entity, LabelSet, Sentence

FULL = LabelSet(frozenset({"problem", "treatment", "test", "drug"}), frozenset())
TWO = LabelSet(frozenset({"problem", "drug"}), frozenset())


def _doc(i: int, site: str, split: str, types: list[str], label_set: LabelSet = FULL) -> Document:
    text = "w " * max(1, len(types))
    ents = tuple(Entity(f"T{j}", t, 2 * j, 2 * j + 1, "w") for j, t in enumerate(types))
    sent = Sentence(f"{site}-{i}:0", 0, len(text), text, ents)
    return Document(f"{site}-{i}", site, split, text, (sent,), label_set, {"source": site})


def _corpus(n_train: int = 600, seed: int = 0) -> list[Document]:
    """Documents dominated by one type each (plus some mixed and some empty), in 2 sites, all splits."""
    rng = random.Random(seed)
    docs = []
    for split, n in (("train", n_train), ("dev", n_train // 5), ("test", n_train // 5)):
        for i in range(n):
            main = rng.choice(["problem", "treatment", "test", "drug", "none"])
            types = [] if main == "none" else [main] * rng.randint(1, 4) + rng.sample(["problem", "drug"], 1)
            site = "a" if i % 2 else "b"
            docs.append(_doc(i, site, split, types))
    return docs


def _ids(parts: dict[str, list[Document]]) -> dict[str, list[tuple[str, str, str]]]:
    return {s: [(d.split, d.meta["source_site"], d.id) for d in docs] for s, docs in parts.items()}


def _mean_tv(parts: dict[str, list[Document]], pool: list[Document]) -> float:
    pooled = type_mix([d for d in pool if d.split == "train"])
    return float(
        np.mean([total_variation(type_mix([d for d in v if d.split == "train"]), pooled) for v in parts.values()])
    )


@pytest.mark.parametrize("alpha", [math.inf, 0.3])
def test_same_seed_same_split_other_seed_differs_and_file_order_does_not_matter(alpha: float) -> None:
    docs = _corpus()
    a = partition_documents(docs, PartitionSettings(5, alpha, seed=7))
    b = partition_documents(list(reversed(docs)), PartitionSettings(5, alpha, seed=7))
    c = partition_documents(docs, PartitionSettings(5, alpha, seed=8))
    assert _ids(a) == _ids(b)
    assert _ids(a) != _ids(c)


@pytest.mark.parametrize(
    ("alpha", "kwargs"),
    [(math.inf, {}), (0.1, {}), (1.0, {"size_skew": 0.6}), (math.inf, {"proportions": (3, 1, 1, 1)})],
)
def test_every_document_exactly_once_keeping_split_and_labels(alpha: float, kwargs: dict) -> None:
    docs = _corpus(200)
    parts = partition_documents(docs, PartitionSettings(4, alpha, seed=1, **kwargs))
    got = sorted((d.meta["source_site"], d.split, d.id) for v in parts.values() for d in v)
    assert got == sorted((d.site, d.split, d.id) for d in docs)
    originals = {(d.site, d.split, d.id): d for d in docs}
    for name, v in parts.items():
        assert all(d.site == name for d in v)
        for split in ("train", "dev", "test"):
            assert any(d.split == split for d in v), (name, split)  # every site keeps train, dev and test data
        for d in v:
            o = originals[(d.meta["source_site"], d.split, d.id)]
            assert d.label_set == o.label_set and d.sentences == o.sentences and d.text == o.text


def test_iid_sizes_are_exact_and_size_skew_gives_one_large_site() -> None:
    docs = _corpus(300)
    parts = partition_documents(docs, PartitionSettings(3, math.inf, seed=0))
    assert [sum(d.split == "train" for d in v) for v in parts.values()] == [100, 100, 100]
    parts = partition_documents(docs, PartitionSettings(4, math.inf, seed=0, size_skew=0.7))
    assert [sum(d.split == "train" for d in v) for v in parts.values()] == [210, 30, 30, 30]
    parts = partition_documents(docs, PartitionSettings(3, math.inf, seed=0, proportions=(1, 2, 3)))
    assert [sum(d.split == "train" for d in v) for v in parts.values()] == [50, 100, 150]
    assert [sum(d.split == "dev" for d in v) for v in parts.values()] == [10, 20, 30]
    assert quotas(10, np.array([0.25, 0.25, 0.5])) == [3, 2, 5]
    assert quotas(3, np.array([0.98, 0.01, 0.01]), min_each=1) == [1, 1, 1]


def test_huge_alpha_is_near_iid_and_small_alpha_skews_the_type_mix() -> None:
    docs = _corpus(2400)
    pooled = type_mix([d for d in docs if d.split == "train"])
    iid = partition_documents(docs, PartitionSettings(4, 1e9, seed=3))
    for v in iid.values():
        mix = type_mix([d for d in v if d.split == "train"])
        assert total_variation(mix, pooled) < 0.06, mix
    inf_tv = _mean_tv(partition_documents(docs, PartitionSettings(4, math.inf, seed=3)), docs)
    big_tv = _mean_tv(iid, docs)
    small_tv = np.mean([_mean_tv(partition_documents(docs, PartitionSettings(4, 0.1, seed=s)), docs) for s in range(3)])
    assert big_tv < 0.06 and inf_tv < 0.06
    assert small_tv > 3 * max(big_tv, inf_tv) and small_tv > 0.15


def test_clear_errors() -> None:
    docs = _corpus(20)
    with pytest.raises(PartitionError, match="cannot split 20 training documents into 21 sites"):
        partition_documents(docs, PartitionSettings(21))
    with pytest.raises(PartitionError, match=r"site site0[2-5] would get no training document"):
        partition_documents(docs, PartitionSettings(5, proportions=(100, 1, 1, 1, 1)))
    for kwargs, match in [
        ({"n_sites": 3, "alpha": 0.0}, "alpha=0.0 must be > 0"),
        ({"n_sites": 3, "alpha": -1.0}, "alpha=-1.0 must be > 0"),
        ({"n_sites": 3, "alpha": float("nan")}, "alpha=nan"),
        ({"n_sites": 0}, "sites=0 must be an integer"),
        ({"n_sites": 3, "proportions": (1, 2)}, "2 values for 3 sites"),
        ({"n_sites": 2, "proportions": (1, 0)}, "must all be finite numbers > 0"),
        ({"n_sites": 2, "size_skew": 1.0}, r"size_skew=1.0 must be in \(0, 1\)"),
        ({"n_sites": 2, "size_skew": 0.5, "proportions": (1, 1)}, "not both"),
        ({"n_sites": 1, "size_skew": 0.5}, "at least 2 sites"),
        ({"n_sites": 2, "prefix": "a/b"}, "prefix"),
    ]:
        with pytest.raises(PartitionError, match=match):
            PartitionSettings(**kwargs)
    clash = [_doc(0, "a", "train", ["drug"]), _doc(0, "a", "train", ["drug"])]
    clash[1] = Document(clash[1].id, "b", "train", clash[1].text, clash[1].sentences, FULL)
    with pytest.raises(PartitionError, match=r"site site01: document id 'a-0' \(train\) comes from both a and b"):
        partition_documents(clash, PartitionSettings(1))


def test_split_benchmark_writes_a_checked_benchmark_with_provenance(tmp_path: Path) -> None:
    src = load_benchmark(default_benchmark_dir())
    out = tmp_path / "split"
    manifest = split_benchmark(src, out, PartitionSettings(3, 0.5, seed=4))
    bench = load_benchmark(out)
    assert check_benchmark(bench) == []
    assert bench.train_sites == ["site01", "site02", "site03"]
    assert bench.new_site == src.new_site  # maccrobat copied unchanged
    assert (out / "maccrobat" / "train.jsonl").read_bytes() == (src.root / "maccrobat" / "train.jsonl").read_bytes()
    assert bench.load_server_validation() == src.load_server_validation()
    on_disk = json.loads((out / "benchmark.json").read_text())
    assert on_disk == manifest
    part = manifest["partition"]
    assert part["method"] == "dirichlet-type-mix" and part["alpha"] == 0.5 and part["seed"] == 4
    assert part["source_sites"] == src.train_sites and part["n_sites"] == 3
    n_src = {sp: sum(len(src.load(s, sp)) for s in src.train_sites) for sp in ("train", "dev", "test")}
    for sp, n in n_src.items():
        assert sum(manifest["sites"][s]["n_docs"][sp] for s in bench.train_sites) == n
    for s in bench.train_sites:
        info = manifest["sites"][s]
        counts = info["partition"]["source_sites"]
        assert sum(c["train"] for c in counts.values()) == info["n_docs"]["train"] == len(bench.load(s, "train"))
        sets = {json.dumps(d.label_set.to_dict()) for sp in ("train", "dev", "test") for d in bench.load(s, sp)}
        assert sets == {json.dumps(x) for x in info["label_sets"]}
        union = set().union(*(set(x["entities"]) for x in info["label_sets"]))
        assert set(info["label_set"]["entities"]) == union
    iid = split_benchmark(src, tmp_path / "iid", PartitionSettings(3, math.inf, seed=4))
    assert iid["partition"]["method"] == "iid" and iid["partition"]["alpha"] == "inf"
    with pytest.raises(PartitionError, match="already exists"):
        split_benchmark(src, out, PartitionSettings(3))
    with pytest.raises(PartitionError, match="role 'new_site'"):
        split_benchmark(src, tmp_path / "x", PartitionSettings(2), sites=["maccrobat"])


def test_data_check_rejects_a_label_set_not_listed(tmp_path: Path) -> None:
    out = tmp_path / "split"
    split_benchmark(default_benchmark_dir(), out, PartitionSettings(2, math.inf, seed=0))
    mf = json.loads((out / "benchmark.json").read_text())
    mf["sites"]["site01"]["label_sets"] = [mf["sites"]["site01"]["label_sets"][0]]
    (out / "benchmark.json").write_text(json.dumps(mf))
    problems = check_benchmark(load_benchmark(out))
    assert problems and all("site01" in p for p in problems)


def test_cli_data_split_and_check(tmp_path: Path) -> None:
    from fedmedlora.cli import app

    runner = CliRunner()

    def split(out: Path, *options: str):
        return runner.invoke(app, ["data", "split", str(default_benchmark_dir()), *options, "--out", str(out)])

    out = tmp_path / "cli"
    res = split(out, "--sites", "3", "--alpha", "0.2", "--seed", "5")
    assert res.exit_code == 0, res.output
    assert "site03:" in res.output and "every check passed" in res.output
    res = runner.invoke(app, ["data", "check", str(out)])
    assert res.exit_code == 0, res.output
    assert load_benchmark(out).new_site == "maccrobat"
    res = split(tmp_path / "only", "--sites", "2", "--drop-other-sites")
    assert res.exit_code == 0 and "left out (--drop-other-sites): maccrobat" in res.output, res.output
    only = load_benchmark(tmp_path / "only")
    assert only.new_site is None and sorted(only.sites) == ["site01", "site02"]
    assert not (tmp_path / "only" / "maccrobat").exists()
    assert json.loads((tmp_path / "only" / "benchmark.json").read_text())["partition"]["sites_left_out"] == [
        "maccrobat"
    ]
    res = split(tmp_path / "y", "--sites", "3", "--alpha", "-1")
    assert res.exit_code != 0 and "alpha=-1.0 must be > 0" in res.output
    res = split(tmp_path / "z", "--sites", "2", "--proportions", "1,x")
    assert res.exit_code != 0 and "--proportions" in res.output


def test_partition_imports_no_torch_or_flwr() -> None:
    code = "import sys, fedmedlora.partition; print(any(m in sys.modules for m in ('torch', 'flwr', 'transformers')))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def test_two_label_set_doc_helper_is_valid() -> None:
    d = _doc(0, "a", "train", ["drug", "problem"], TWO)
    d.validate()
