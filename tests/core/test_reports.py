"""Tests for fedmedlora.reports on hand-made counts: the unseen-site comparison (the paper's generalisation claim),
intervals, paired comparisons and the mean ± sd over seeds."""

from __future__ import annotations

import pytest

from fedmedlora.intervals import OVERALL, compare_models, evaluation_intervals, row_intervals
from fedmedlora.metrics import Counts, Evaluation
from fedmedlora.reports import (
    COLUMNS,
    comparison_csv,
    comparison_rows,
    eval_markdown,
    interval_markdown,
    paired_csv,
    paired_markdown,
    seed_summary,
    study_markdown,
    unseen_site_markdown,
    unseen_site_rows,
)
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
    assert "fed has the higher point estimate than the single-site model on its unseen sites in 1 of 2 cases" in md
    assert "partial" not in md  # never scored on a full unseen set: no column, no verdict


def test_no_single_site_rows_gives_no_table() -> None:
    assert unseen_site_rows({"fed": {"a": result(1)}}, {}, ["a"], ["fed"]) == []
    assert unseen_site_markdown([], ["fed"]) == ""


# ---- intervals and paired comparisons (fedmedlora.intervals + reports), on hand-made per-document counts ----


def site(docs: dict[str, tuple[int, int, int]], re: dict[str, tuple[int, int, int]] | None = None) -> dict:
    """One site's evaluation made of per-document NER (and RE) counts, with ``metrics`` their sums (what
    ``evaluate_arrays`` stores: both views of the same counts)."""
    ev = Evaluation()
    documents: dict = {}
    for task, per_doc in (("ner", docs), ("re", re or {})):
        for doc, (tp, fp, fn) in per_doc.items():
            for rule in ("strict", "lenient"):
                ev.counts.setdefault((task, rule, "micro"), Counts())
                ev.counts[(task, rule, "micro")] += Counts(tp, fp, fn)
                documents.setdefault(doc, {}).setdefault(task, {})[rule] = [tp, fp, fn]
            ev.n_instances[task] = ev.n_instances.get(task, 0) + 1
    return {"metrics": ev.to_dict(), "documents": documents, "n_sentences": len(docs)}


def old(result: dict) -> dict:
    """The same evaluation as an eval json made before per-document counts existed."""
    return {k: v for k, v in result.items() if k != "documents"}


GOOD = {f"d{i}": (4, 0, 1) for i in range(20)}  # 4 of 5 found in every document: F1 8/9
BAD = {f"d{i}": (1, 0, 4) for i in range(20)}  # 1 of 5: F1 1/3
MIXED_A = {f"d{i}": (4, 0, 1) if i < 10 else (1, 0, 4) for i in range(20)}
MIXED_B = {f"d{i}": (1, 0, 4) if i < 10 else (4, 0, 1) for i in range(20)}


def test_paired_verdict_is_a_win_only_when_the_interval_excludes_zero() -> None:
    a = {"s1": site(GOOD), "s2": site(MIXED_A)}
    b = {"s1": site(BAD), "s2": site(MIXED_B)}
    win = compare_models(a, b, ["s1"], n_resamples=300, seed=1)
    assert [(r["task"], r["rule"]) for r in win] == [("ner", "strict"), ("ner", "lenient")]  # RE never scored
    assert win[0]["verdict"] == "win" and win[0]["low"] > 0 and win[0]["difference"] == pytest.approx(8 / 9 - 1 / 3)
    assert compare_models(b, a, ["s1"], n_resamples=300, seed=1)[0]["verdict"] == "loss"
    tie = compare_models(a, b, ["s2"], n_resamples=300, seed=1)[0]
    assert tie["difference"] == 0.0 and tie["low"] < 0 < tie["high"] and tie["verdict"] == "not significant"
    # both sites pooled (stratified): the clear win on s1 carries the pair
    assert compare_models(a, b, ["s1", "s2"], n_resamples=300, seed=1)[0]["verdict"] == "win"

    rows = [
        {"kind": "fed vs single", "comparison": "fed vs single", "a": "fed", "b": "single", "sites": s, **r}
        for s in (["s1"], ["s2"])
        for r in compare_models(a, b, s, n_resamples=300, seed=1)
    ]
    md = paired_markdown(rows, title="paired")
    assert "| comparison (A vs B) | sites | task / rule | difference A − B (pp) | 95% interval | verdict |" in md
    s1_line = next(x for x in md.splitlines() if x.startswith("| fed vs single | s1 | NER strict"))
    assert s1_line.endswith("| +55.6 | " + f"[{100 * win[0]['low']:+.1f}, {100 * win[0]['high']:+.1f}] | win |")
    assert "| fed vs single | s2 | NER strict | +0.0 | [" in md and md.count("not significant |") == 2
    assert "- fed vs single (NER strict F1): 1 win(s), 0 loss(es), 1 not significant, of 2." in md
    assert "study_paired" not in md
    assert "win" in paired_csv(rows).splitlines()[1]


def test_old_evaluations_and_encoder_rows_get_no_interval_and_no_verdict() -> None:
    a = {"s1": site(GOOD)}
    b_old = {"s1": old(site(BAD))}
    rows = compare_models(a, b_old, ["s1"], n_resamples=100)
    assert (
        rows[0]["difference"] == pytest.approx(8 / 9 - 1 / 3) and rows[0]["low"] is None and rows[0]["verdict"] is None
    )
    assert rows[0]["note"] == "no per-document counts"
    md = paired_markdown([{"comparison": "a vs b", "a": "a", "b": "b", "sites": ["s1"], **rows[0]}])
    assert "| a vs b | s1 | NER strict | +55.6 | – | – (no per-document counts) |" in md
    assert compare_models(a, b_old, ["s1", "missing"]) == []  # B was never scored on a site: no comparison

    models = {"llm": a, "encoder single-site (s1)": b_old}
    groups = {"s1": ["s1"]}
    cis = row_intervals(models, groups, n_resamples=100)
    assert set(cis) == {"llm"}
    rows_ = comparison_rows(models, groups)
    md = interval_markdown(rows_, cis)
    assert "| encoder single-site (s1) | 33.3 [" not in md
    assert "| encoder single-site (s1) | – | – | – | – |" in md
    llm_line = next(x for x in md.splitlines() if x.startswith("| llm |"))
    assert llm_line.startswith("| llm | 88.9 [88.9, 88.9] | 88.9 [88.9, 88.9] | – | – |")


def test_study_markdown_has_intervals_paired_table_and_seed_summary() -> None:
    models = {"fed": {"s1": site(GOOD)}, "single-site (s1)": {"s1": site(BAD)}}
    groups = {"s1": ["s1"]}
    paired = [
        {"kind": "k", "comparison": "fed vs single-site (s1)", "a": "fed", "b": "single-site (s1)", "sites": ["s1"]} | r
        for r in compare_models(models["fed"], models["single-site (s1)"], ["s1"], n_resamples=200)
    ]
    cis = row_intervals(models, groups, n_resamples=200)
    rows, md = study_markdown(
        models, groups, {}, {}, {}, [], "t", intervals=cis, paired=paired, bootstrap={"resamples": 200, "seed": 0}
    )
    assert "## Micro F1 (%) with 95% intervals" in md and "| fed | 88.9 [88.9, 88.9] |" in md
    assert "## Paired comparisons on the same documents: F1 difference" in md
    assert "| fed vs single-site (s1) | s1 | NER strict | +55.6 | [+55.6, +55.6] | win |" in md
    assert "(200 resamples, seed 0;" in md
    assert "Across" not in md  # one seed: no seed table
    header = comparison_csv(rows, cis).splitlines()[0].split(",")
    assert header[:6] == ["model", "group", *COLUMNS] and "ner_strict_f1_low" in header
    assert comparison_csv(rows).splitlines()[0] == "model,group," + ",".join(COLUMNS)  # as before intervals

    second = {"fed": {"s1": site({f"d{i}": (3, 0, 2) for i in range(20)})}}  # seed 2: fed only (F1 3/4)
    summary = seed_summary({1: models, 2: second}, groups)
    fed = next(r for r in summary if r["model"] == "fed")
    assert fed["seeds"] == [1, 2] and fed["ner_strict_f1_mean"] == pytest.approx((8 / 9 + 3 / 4) / 2)
    assert fed["ner_strict_f1_sd"] == pytest.approx((8 / 9 - 3 / 4) / 2**0.5) and fed["re_strict_f1_mean"] is None
    single = next(r for r in summary if r["model"] == "single-site (s1)")
    assert single["n_seeds"] == 1 and single["ner_strict_f1_sd"] is None
    _, md = study_markdown(models, groups, {}, {}, {}, [], "t", seeds={"seeds": [1, 2], "rows": summary})
    assert "## Across 2 seeds: micro F1 (%), mean ± sd" in md
    assert "| fed | 81.9 ± 9.8 | 81.9 ± 9.8 | – | – | 2 |" in md
    assert "| single-site (s1) | 33.3 | 33.3 | – | – | 1 |" in md
    csv_head = comparison_csv(rows, None, summary).splitlines()
    assert "ner_strict_f1_mean" in csv_head[0] and "n_seeds" in csv_head[0]


def test_eval_markdown_shows_intervals_and_reads_old_evaluations() -> None:
    s1, s2 = site(GOOD), site(MIXED_A)
    results = {"s1": s1, "s2": s2}
    for name in ("s1", "s2"):
        results[name]["intervals"] = evaluation_intervals(results, [name], n_resamples=200)
    results[OVERALL] = {
        "sites": ["s1", "s2"],
        "intervals": evaluation_intervals(results, ["s1", "s2"], n_resamples=200),
        "bootstrap": {"resamples": 200, "seed": 0, "level": 0.95},
    }
    md = eval_markdown(results, title="t")
    line = {x.split(" | ")[0]: x for x in md.splitlines() if x.startswith("| s") or x.startswith("| all")}
    assert line["| s1"].startswith("| s1 | 20 | 100.0 [100.0, 100.0] | 80.0 [80.0, 80.0] | 88.9 [88.9, 88.9] |")
    all_f1 = results[OVERALL]["intervals"]["ner"]["strict"]
    assert f"| all | 40 | 100.0 [100.0, 100.0] | 65.0 [{100 * all_f1['recall_low']:.1f}," in line["| all"]
    assert "(200 resamples, seed 0; all sites: stratified by site)" in md
    assert "_overall" not in md
    # an eval json from before intervals: the same table with bare numbers
    md_old = eval_markdown({"s1": old(site(GOOD)), "s2": old(site(MIXED_A))}, title="t")
    assert "| s1 | 20 | 100.0 | 80.0 | 88.9 | 88.9 | – | – |" in md_old and "[" not in md_old.split("###")[0]
