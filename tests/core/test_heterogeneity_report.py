"""scripts/heterogeneity_report.py on hand-made evaluations: the pooled pseudo-site of a partition (documents and
counts kept, a document in two sites refused) and the comparison of one rule on two partitions of the same test
documents (paired by document)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fedmedlora.intervals import document_counts
from fedmedlora.metrics import Evaluation, score_sentences
from fedmedlora.schema import Entity, LabelSet, Sentence

ROOT = Path(__file__).resolve().parents[2]
TEXT = "No fever, no cough, started metformin."
GOLD = [("problem", "fever"), ("problem", "cough"), ("drug", "metformin")]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("heterogeneity_report", ROOT / "scripts" / "heterogeneity_report.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sentence(doc: str, ents: list[tuple[str, str]]) -> Sentence:
    spans = tuple(Entity(f"T{j}", t, TEXT.index(s), TEXT.index(s) + len(s), s) for j, (t, s) in enumerate(ents))
    return Sentence(f"{doc}:0", 0, len(TEXT), TEXT, spans)


def _site(docs: list[str], found: int) -> dict:
    """A site's evaluation: every document finds the first ``found`` gold entities and nothing else."""
    items = [(_sentence(d, GOLD), LabelSet()) for d in docs]
    preds = [_sentence(d, GOLD[:found]) for d in docs]
    return {
        "metrics": score_sentences(items, preds, ["ner"]).to_dict(),
        "documents": document_counts(items, preds, docs, ["ner"]),
    }


DOCS = [f"d{i:02d}" for i in range(20)]


def test_pooled_keeps_every_document_and_sums_the_metrics(report):
    results = {"s1": _site(DOCS[:12], 3), "s2": _site(DOCS[12:], 1), "maccrobat": _site(["m0"], 0)}
    pooled = report._pooled(results, ["s1", "s2"])["in-domain"]
    assert sorted(pooled["documents"]) == DOCS  # the unseen site is not pooled
    ev = Evaluation.from_dict(pooled["metrics"])
    both = Evaluation.from_dict(results["s1"]["metrics"]) + Evaluation.from_dict(results["s2"]["metrics"])
    assert ev.to_dict() == both.to_dict()
    with pytest.raises(ValueError, match=r"'d03'.*two sites"):
        report._pooled({"s1": _site(DOCS[:5], 3), "s2": _site(DOCS[3:8], 3)}, ["s1", "s2"])


def _part(n: int, alpha: str, split: list[list[str]], found: list[int]) -> dict:
    sites = [f"site{i + 1:02d}" for i in range(len(split))]
    results = {s: _site(docs, f) for s, docs, f in zip(sites, split, found, strict=True)}
    return {"n": n, "alpha": alpha, "sites": sites, "rows": {"Fed-MedLoRA": {"results": results, "folder": None}}}


def test_across_pairs_the_same_documents_split_differently(report):
    # the same 20 test documents: 10 sites of 2 documents (finding everything) against 3 sites (finding one of 3)
    ten = _part(10, "0.1", [DOCS[i : i + 2] for i in range(0, 20, 2)], [3] * 10)
    three = _part(3, "0.1", [DOCS[:7], DOCS[7:14], DOCS[14:]], [1, 1, 1])
    md = report.across([ten, three])
    strict = next(line for line in md.splitlines() if "NER strict" in line)
    assert strict.startswith("| Fed-MedLoRA, 10 sites, α=0.1 vs 3 sites, α=0.1 | in-domain, all test documents |")
    assert strict.endswith("| win |")
    assert "10 vs 3 sites, α=0.1 (NER strict F1): 1 win(s), 0 loss(es), 0 not significant, of 1." in md
    # a partition of different documents cannot be paired: no interval, and the reason
    other = _part(3, "0.1", [[f"x{i}" for i in range(20)]], [1])
    md = report.across([ten, other])
    strict = next(line for line in md.splitlines() if "NER strict" in line)
    assert "| – |" in strict and "different documents" in strict
    # nothing to pair: nothing printed
    assert report.across([ten]) == ""


def test_rows_are_named_from_their_folders(report, tmp_path):
    for folder in ("fed-medlora", "fed-medlora-plus", "fedsa-lora", "ffa-lora", "rolora", "centralized",
                   "single-site (site01)", "plots"):  # fmt: skip
        (tmp_path / folder / "eval").mkdir(parents=True)
        if folder != "plots":
            (tmp_path / folder / "eval" / "test.json").write_text("{}")
    assert sorted(report._rows(tmp_path)) == sorted(
        ["Fed-MedLoRA", "Fed-MedLoRA+", "FedSA-LoRA", "FFA-LoRA", "RoLoRA", "centralized", "single-site (site01)"]
    )
    assert "Fed-MedLoRA+ (T = 1)" in report._rows(tmp_path, "fixedT")
    assert "Fed-MedLoRA+ (× size)" in report._rows(tmp_path, "size")
