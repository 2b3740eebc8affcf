"""Tests for fedmedlora.reports: the unseen-site comparison (the paper's generalisation claim) on hand-made counts."""

from __future__ import annotations

from fedmedlora.metrics import Evaluation
from fedmedlora.reports import unseen_site_markdown, unseen_site_rows
from fedmedlora.schema import LabelSet, Span

P = "problem"
LS = LabelSet(frozenset({P}))
GOLD = [Span(0, 4, P), Span(10, 14, P)]


def result(hits: int) -> dict:
    """One site's evaluation with ``hits`` of the two gold problems found exactly and nothing else predicted."""
    ev = Evaluation()
    ev.add_ner(GOLD, GOLD[:hits], LS)
    return {"metrics": ev.to_dict()}


def test_each_single_site_model_is_compared_on_exactly_the_sites_it_did_not_train_on() -> None:
    models = {
        "single-site (a)": {"a": result(2), "b": result(0), "c": result(0)},
        "single-site (b)": {"a": result(1), "b": result(2), "c": result(1)},
        "fed": {"a": result(1), "b": result(1), "c": result(1)},
        "partial": {"b": result(2)},  # missing site c: left out where c is needed
    }
    single = {"single-site (a)": "a", "single-site (b)": "b"}
    rows = unseen_site_rows(models, single, ["a", "b", "c"], ["fed", "partial"])

    assert [(r["model"], r["unseen"]) for r in rows] == [
        ("single-site (a)", ["b", "c"]),
        ("single-site (b)", ["a", "c"]),
    ]
    a, b = rows
    # a-only finds 0 of 4 gold spans on b+c; fed finds 2 of 4 (micro over the pooled counts)
    assert a["scores"]["single-site (a)"]["ner_strict_f1"] == 0.0
    assert a["scores"]["fed"]["ner_strict_recall"] == 0.5
    assert a["scores"]["fed"]["ner_strict_precision"] == 1.0
    # b-only and fed both find 2 of 4 on a+c: a tie is not a win
    assert b["scores"]["single-site (b)"]["ner_strict_f1"] == b["scores"]["fed"]["ner_strict_f1"]
    assert "partial" not in a["scores"] and "partial" not in b["scores"]

    md = unseen_site_markdown(rows, ["fed", "partial"], title="unseen")
    assert "| single-site (a) | b, c | 0.0 / 0.0 | 66.7 / 66.7 |" in md
    assert "fed beats the single-site model on its unseen sites in 1 of 2 cases" in md
    assert "partial" not in md  # never scored on a full unseen set: no column, no verdict


def test_no_single_site_rows_gives_no_table() -> None:
    assert unseen_site_rows({"fed": {"a": result(1)}}, {}, ["a"], ["fed"]) == []
    assert unseen_site_markdown([], ["fed"]) == ""
