"""``evaluate_arrays`` / ``write_eval`` with a fake model: per-document counts and intervals in the eval json and md.

The fake model answers every prompt of some documents with the gold answer and every other prompt with nothing,
so the per-document counts are known without running a model.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedmedlora.benchmark import open_benchmark
from fedmedlora.config import load_config
from fedmedlora.intervals import OVERALL, count_matrix
from fedmedlora.metrics import Evaluation
from fedmedlora.prompts import build_examples
from fedmedlora.recipes.evaluate import evaluate_arrays, write_eval
from fedmedlora.runs import RunDir, eval_file
from fedmedlora.sampling import eval_items

SITES = ["chia", "phee"]


class FakeSession:
    """The two ``Session`` methods ``evaluate_arrays`` uses; answers from a prompt -> answer table."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def set_arrays(self, arrays) -> None:
        pass

    def generate_fn(self, cfg):
        return lambda prompts: [self.answers.get(p, "") for p in prompts]


def _gold_for_half_the_documents(bench, cfg) -> tuple[dict[str, str], set[str]]:
    answers, good = {}, set()
    for site in SITES:
        docs, items = eval_items(bench, site, cfg)
        scored = sorted({s.id.rsplit(":", 1)[0] for s, _ in items})
        for d in docs:
            if d.id in scored[::2]:
                good.add(f"{site}/{d.id}")
                answers.update((ex.prompt, ex.target) for ex in build_examples(d, cfg.data.format, cfg.data.tasks))
    return answers, good


def test_eval_json_has_per_document_counts_and_intervals(tmp_path: Path) -> None:
    cfg = load_config(overrides=["eval.max_sentences=8", "eval.bootstrap_resamples=200", "seed=3"])
    bench = open_benchmark(cfg.data.benchmark)
    answers, good = _gold_for_half_the_documents(bench, cfg)
    results = evaluate_arrays(FakeSession(answers), None, bench, SITES, cfg)

    for site in SITES:
        r = results[site]
        docs = r["documents"]
        _, items = eval_items(bench, site, cfg)
        assert sorted(docs) == sorted({s.id.rsplit(":", 1)[0] for s, _ in items})
        ev = Evaluation.from_dict(r["metrics"])
        for task in ("ner", "re"):
            for rule in ("strict", "lenient"):
                c = ev.get(task, rule)
                summed = count_matrix(list(docs.values()), task, rule).sum(axis=0).tolist()
                assert summed == [c.tp, c.fp, c.fn], (site, task, rule)
        found_tp = missed_fn = 0
        for doc, counts in docs.items():
            tp, fp, fn = counts["ner"]["strict"]
            if f"{site}/{doc}" in good:
                assert fp == 0 and fn <= tp, doc  # answered with the gold spans (a crossing span may be left out)
                found_tp += tp
            else:
                assert tp == fp == 0, doc  # answered with nothing
                missed_fn += fn
        assert found_tp > 0 and missed_fn > 0  # both kinds of document hold gold entities
        ci = r["intervals"]["ner"]["strict"]
        assert ci["f1_low"] <= ci["f1"] <= ci["f1_high"] and ci["f1_low"] < ci["f1_high"]
        assert ci["f1"] == ev.get("ner", "strict").f1 and ci["n_docs"] == len(docs)
    overall = results[OVERALL]
    assert overall["sites"] == SITES and overall["bootstrap"]["resamples"] == 200 and overall["bootstrap"]["seed"] == 3
    pooled = Evaluation.from_dict(results["chia"]["metrics"]) + Evaluation.from_dict(results["phee"]["metrics"])
    assert overall["intervals"]["ner"]["strict"]["f1"] == pooled.get("ner", "strict").f1

    run = RunDir(tmp_path / "run")
    write_eval(run, "test", results)
    stored = json.loads((tmp_path / "run" / eval_file("test")).read_text())
    assert stored["chia"]["documents"] == results["chia"]["documents"] and OVERALL in stored
    md = (tmp_path / "run" / eval_file("test", ".md")).read_text()
    all_row = next(line for line in md.splitlines() if line.startswith("| all |"))
    low, high = overall["intervals"]["ner"]["strict"]["f1_low"], overall["intervals"]["ner"]["strict"]["f1_high"]
    assert f"[{100 * low:.1f}, {100 * high:.1f}]" in all_row
    assert "(200 resamples, seed 3;" in md


def test_no_resamples_keeps_the_documents_and_gives_no_intervals() -> None:
    cfg = load_config(overrides=["eval.max_sentences=4", "eval.bootstrap_resamples=0"])
    bench = open_benchmark(cfg.data.benchmark)
    results = evaluate_arrays(FakeSession({}), None, bench, ["chia"], cfg)
    assert results["chia"]["documents"] and results["chia"]["intervals"] == {}
    assert results[OVERALL]["intervals"] == {}
