"""prepare_benchmark / load_benchmark / stats (fedmedlora.benchmark), on the fixtures and the bundled sample."""

import json

import pytest
from test_corpora_common import FIXTURES

from fedmedlora.benchmark import MANIFEST, BenchmarkError, default_benchmark_dir, load_benchmark
from fedmedlora.benchmark_stats import benchmark_stats
from fedmedlora.jsonl import read_documents
from fedmedlora.prepare import prepare_benchmark
from fedmedlora.schema import SPLITS


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    stats = prepare_benchmark(FIXTURES, out, seed=3)
    return out, stats


def test_layout_manifest_and_roles(built):
    out, _ = built
    for site in ("chia", "phee", "bc5cdr", "maccrobat"):
        for split in SPLITS:
            assert (out / site / f"{split}.jsonl").is_file()
    for f in ("stats.md", "stats.json", "ATTRIBUTION.md", MANIFEST):
        assert (out / f).is_file()
    b = load_benchmark(out)
    assert b.train_sites == ["chia", "phee", "bc5cdr"] and b.new_site == "maccrobat"
    assert b.seed == 3 and "negation" not in b.label_set("maccrobat").modifiers
    assert b.sites["bc5cdr"].licence.startswith("US Government Work")
    mf = json.loads((out / MANIFEST).read_text())
    assert mf["removed_duplicates"] == {"phee": ["11111111"]}
    assert sum(mf["sites"]["maccrobat"]["n_docs"].values()) == 7


def test_documents_round_trip_and_cross_site_dedup(built):
    out, _ = built
    b = load_benchmark(out)
    phee_ids = {d.id for sp in SPLITS for d in b.load("phee", sp)}
    server_ids = {d.id for d in b.load_server_validation()}
    assert "11111111_1" not in phee_ids | server_ids  # shared PMID with BC5CDR removed from PHEE
    for site in b.sites:
        for sp in SPLITS:
            for d in b.load(site, sp):
                assert d.site == site and d.split == sp
                d.validate()


def test_server_validation_is_disjoint_from_site_dev(built):
    out, stats = built
    b = load_benchmark(out)
    server = b.load_server_validation()
    assert server and all(d.split == "dev" and d.site in b.train_sites for d in server)
    for d in server:
        assert d.id not in {x.id for x in b.load(d.site, "dev")}
    assert stats.server["documents"] == len(server)


def test_stats_counts_and_markdown(built):
    out, stats = built
    assert (
        stats.rows["maccrobat"]["train"]["documents"]
        + stats.rows["maccrobat"]["dev"]["documents"]
        + stats.rows["maccrobat"]["test"]["documents"]
        == 7
    )
    total = stats.total("bc5cdr")
    # the only bc5cdr dev document went to the server validation set
    assert stats.server["sites"] == {"phee": 1, "bc5cdr": 1}
    assert total["documents"] == 2 and total["entities"]["drug"] == 5 and total["entities"]["problem"] == 4
    md = stats.to_markdown()
    assert "| bc5cdr | all | 2 |" in md and "—" in md
    assert "Dropped annotations" in md
    again = benchmark_stats(load_benchmark(out))
    assert again.to_json()["sites"] == stats.to_json()["sites"]


def test_prepare_is_deterministic(tmp_path, built):
    out, _ = built
    prepare_benchmark(FIXTURES, tmp_path, seed=3)
    for p in out.rglob("*"):
        if p.is_file():
            assert (tmp_path / p.relative_to(out)).read_bytes() == p.read_bytes(), p


def test_sample_mode_and_max_docs(tmp_path):
    stats = prepare_benchmark(FIXTURES, tmp_path, seed=3, sample=True, max_docs=2, sites=["chia", "maccrobat"])
    assert set(stats.rows) == {"chia", "maccrobat"}
    mf = json.loads((tmp_path / MANIFEST).read_text())
    assert mf["sample"] is True and mf["name"].endswith("-sample")
    assert sum(mf["sites"]["maccrobat"]["n_docs"].values()) <= 2
    assert "converted subset" in (tmp_path / "ATTRIBUTION.md").read_text()


def test_errors_name_the_file(tmp_path):
    with pytest.raises(BenchmarkError, match="no benchmark manifest"):
        load_benchmark(tmp_path)
    (tmp_path / MANIFEST).write_text('{"sites": {"x": {"role": "boss"}}}')
    with pytest.raises(BenchmarkError, match=r"sites.x.role"):
        load_benchmark(tmp_path)
    with pytest.raises(BenchmarkError, match="unknown site"):
        prepare_benchmark(FIXTURES, tmp_path, sites=["mimic"])
    from fedmedlora.corpora import CorpusError

    with pytest.raises(CorpusError, match="corpus folder not found"):
        prepare_benchmark(tmp_path, tmp_path / "o", sites=["chia"])


def test_bundled_sample_loads_and_is_small():
    root = default_benchmark_dir()
    b = load_benchmark()
    assert b.root == root and b.train_sites == ["chia", "phee", "bc5cdr"] and b.new_site == "maccrobat"
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 1_500_000
    assert (root / "ATTRIBUTION.md").read_text().count("|") > 10
    for site in b.sites:
        n = sum(len(d.sentences) for sp in SPLITS for d in b.load(site, sp))
        assert 250 <= n <= 700, (site, n)
    assert len(b.load("maccrobat", "train")) == 20
    assert read_documents(root / "_server" / "validation.jsonl")


def test_cli_data_prepare_and_stats(tmp_path):
    from typer.testing import CliRunner

    from fedmedlora.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["data", "prepare", "--corpora", str(FIXTURES), "--out", str(tmp_path), "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert "maccrobat" in r.output and "Dropped annotations" in r.output
    r = runner.invoke(app, ["data", "stats", str(tmp_path), "--markdown"])
    assert r.exit_code == 0 and "| chia | all |" in r.output and "Dropped" not in r.output
    r = runner.invoke(app, ["data", "prepare", "--corpora", str(FIXTURES)])
    assert r.exit_code == 2 and "--out is required" in r.output
    r = runner.invoke(app, ["data", "stats", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no benchmark manifest" in r.output


def test_re_examples_without_modifiers_are_thinned_for_training_only():
    """data.re_empty_keep drops a seeded share of RE examples whose answer is empty; nothing else changes."""
    from fedmedlora.benchmark import open_benchmark
    from fedmedlora.config import load_config
    from fedmedlora.sampling import site_examples

    def examples(keep: float, split: str = "train"):
        cfg = load_config(None, ["data.format=json", f"data.re_empty_keep={keep}"])
        return site_examples(open_benchmark(cfg.data.benchmark), "phee", cfg, split)

    every, none, half = examples(1.0), examples(0.0), examples(0.5)
    empty = [e for e in every if e.task == "re" and e.n_spans == 0]
    assert empty and all(e.target == "[]" for e in empty)
    assert none == [e for e in every if not (e.task == "re" and e.n_spans == 0)]
    kept = [e for e in half if e.task == "re" and e.n_spans == 0]
    assert 0.3 * len(empty) < len(kept) < 0.7 * len(empty)
    assert half == examples(0.5)  # seeded
    assert [e for e in half if e not in kept] == none
    assert examples(0.0, "dev") == examples(1.0, "dev")  # validation losses see every example
