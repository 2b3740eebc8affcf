"""Evaluation of any adapter on benchmark sites: extraction on each site's evaluation sample, scoring, run files.

Owns ``evaluate_arrays`` (the one scoring path of every LLM row: zero-shot, single-site, centralized, federated,
adapted) and ``write_eval`` (``eval/<name>.json|md`` and the raw generations ``eval/<name>_outputs.jsonl``). RE is
scored with gold heads (the paper's protocol: each head entity is marked in the input).

Every site also keeps its per-document micro counts (``documents``), so that two evaluations of the same documents
can be compared later (``fedmedlora.intervals.paired_comparison``) without running either model again, and 95%
document-level bootstrap intervals of micro P/R/F1 (``intervals``; all sites pooled, stratified by site, under
``fedmedlora.intervals.OVERALL``), seeded with ``cfg.seed``, ``cfg.eval.bootstrap_resamples`` resamples.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedmedlora.benchmark import Benchmark
from fedmedlora.config import RunConfig
from fedmedlora.extract import ExtractionStats, extract_sentences
from fedmedlora.intervals import DEFAULT_LEVEL, OVERALL, document_counts, group_intervals
from fedmedlora.lm.session import Session
from fedmedlora.metrics import score_sentences
from fedmedlora.reports import eval_markdown
from fedmedlora.runs import RunDir, eval_file, peak_rss_mb
from fedmedlora.sampling import EvalItem, eval_items
from fedmedlora.schema import Document


def evaluate_arrays(
    session: Session,
    arrays: dict[str, np.ndarray] | None,
    bench: Benchmark,
    sites: Sequence[str],
    cfg: RunConfig,
) -> dict[str, dict[str, Any]]:
    """Extract on each site's evaluation sentences with ``arrays`` loaded (None: the initial adapter) and score
    against gold.

    Returns:
        ``{site: {"metrics": Evaluation.to_dict(), "parse": ExtractionStats.to_dict(), "n_sentences", "seconds",
        "documents": {doc_id: {task: {rule: [tp, fp, fn]}}}, "intervals": {task: {rule: {"f1", "f1_low",
        "f1_high", "precision", ...}}}, "outputs": [{"prompt", "output"}, ...]}}`` plus ``OVERALL``:
        ``{"sites", "intervals", "bootstrap": {"resamples", "seed", "level", "unit", "strata"}}`` (the sites
        pooled). ``outputs``: every raw generation, for error analysis (``write_eval`` stores them apart from
        the tables). ``metrics.parse_failures`` holds the same per-task failure reasons as ``parse``.
        ``intervals`` is ``{}`` with ``eval.bootstrap_resamples=0`` or no document.
    """
    session.set_arrays(arrays)
    gen = session.generate_fn(cfg)
    out: dict[str, dict[str, Any]] = {}
    for site in sites:
        t0 = time.perf_counter()
        docs, items = eval_items(bench, site, cfg)
        stats = ExtractionStats()
        outputs: list[dict[str, str]] = []
        preds = extract_sentences(
            items, _recording(gen, outputs), fmt=cfg.data.format, tasks=cfg.data.tasks, heads="gold", stats=stats
        )
        ev = score_sentences(items, preds, cfg.data.tasks)
        for task, reasons in stats.by_task.items():
            ev.add_failures(task, reasons)
        out[site] = {
            "metrics": ev.to_dict(),
            "parse": stats.to_dict(),
            "n_sentences": len(items),
            "seconds": round(time.perf_counter() - t0, 2),
            "documents": document_counts(items, preds, _document_ids(docs, items), cfg.data.tasks),
            "outputs": outputs,
        }
    boot = {"n_resamples": cfg.eval.bootstrap_resamples, "seed": cfg.seed}
    for site in sites:
        out[site]["intervals"] = group_intervals(out, [site], **boot) or {}
    out[OVERALL] = {
        "sites": list(sites),
        "intervals": group_intervals(out, list(sites), **boot) or {},
        "bootstrap": {
            "resamples": cfg.eval.bootstrap_resamples,
            "seed": cfg.seed,
            "level": DEFAULT_LEVEL,
            "unit": "document",
            "strata": "site",
        },
    }
    return out


def _document_ids(docs: Sequence[Document], items: Sequence[EvalItem]) -> list[str]:
    """The document of each evaluation sentence (``items`` are sentences of ``docs``, a sample of them)."""
    by_object = {id(s): d.id for d in docs for s in d.sentences}
    by_id = {s.id: d.id for d in docs for s in d.sentences}
    return [by_object.get(id(s)) or by_id[s.id] for s, _ in items]


def _recording(gen: Callable[[list[str]], list[str]], into: list[dict[str, str]]) -> Callable[[list[str]], list[str]]:
    """``gen`` that also appends each ``{"prompt", "output"}`` pair to ``into``."""

    def fn(prompts: list[str]) -> list[str]:
        answers = gen(prompts)
        into.extend({"prompt": p, "output": a} for p, a in zip(prompts, answers, strict=True))
        return answers

    return fn


def write_eval(run: RunDir, name: str, results: dict[str, dict[str, Any]]) -> None:
    """``eval/<name>.json`` (scores and parse statistics per site), ``eval/<name>.md`` (tables) and
    ``eval/<name>_outputs.jsonl`` (one line per generation: site, prompt, raw output)."""
    tables = {site: {k: v for k, v in r.items() if k != "outputs"} for site, r in results.items()}
    run.write_json(eval_file(name), tables)
    run.write_text(eval_file(name, ".md"), eval_markdown(tables, title=name))
    lines = [
        json.dumps({"site": site, **o}, ensure_ascii=False) + "\n"
        for site, r in results.items()
        for o in r.get("outputs", [])
    ]
    run.write_text(eval_file(name, "_outputs.jsonl"), "".join(lines))


def evaluate_into(
    run: RunDir,
    session: Session,
    arrays: dict[str, np.ndarray] | None,
    bench: Benchmark,
    sites: Sequence[str],
    cfg: RunConfig,
) -> dict[str, dict[str, Any]]:
    """``evaluate_arrays``, written as the run's ``eval/test.*`` (``write_eval``); ``run.json`` gets the
    evaluation's seconds (``eval_seconds``) and the process's peak memory so far (``peak_rss_mb``). The one way
    every row (local, federated, ``fed run``) is scored into its run folder."""
    t0 = time.perf_counter()
    results = evaluate_arrays(session, arrays, bench, sites, cfg)
    write_eval(run, "test", results)
    run.note(eval_seconds=round(time.perf_counter() - t0, 2), peak_rss_mb=peak_rss_mb())
    return results
