"""Uncertainty of micro P/R/F1: seeded document-level bootstrap intervals and paired differences.

Owns: per-document micro counts (``document_counts``: what an evaluation keeps of each document so that it can be
resampled), the percentile bootstrap interval of micro precision, recall and F1 (``bootstrap_interval``) and the
paired bootstrap of the difference between two models scored on the same documents (``paired_difference``).

Why documents: sentences of one note are not independent (same author, same patient, same template), so the unit
that is resampled is the document; the micro score of a resample sums the counts of the documents drawn. When the
documents come from several sites, each site is resampled on its own (stratified), because the sites are fixed
by the design, not drawn. A difference is called a win only when its interval excludes 0.

Pure core: stdlib + numpy. The interval is checked against ``scipy.stats.bootstrap`` in the tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedmedlora.metrics import pooled, score_sentences
from fedmedlora.schema import LabelSet, Sentence

#: The rules that get intervals (the paper's two).
CI_RULES: tuple[str, ...] = ("strict", "lenient")
CI_TASKS: tuple[str, ...] = ("ner", "re")
DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95

#: One document's micro counts: ``{task: {rule: [tp, fp, fn]}}``.
DocCounts = Mapping[str, Mapping[str, Sequence[int]]]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its (percentile bootstrap) interval, all as fractions in [0, 1] (or differences)."""

    estimate: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


def prf(counts: np.ndarray) -> np.ndarray:
    """``(..., 3)`` tp/fp/fn → ``(..., 3)`` precision/recall/F1 (0 where undefined, as ``metrics.Counts``)."""
    c = np.asarray(counts, dtype=np.float64)
    tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        r = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return np.stack([p, r, f], axis=-1)


def count_matrix(docs: Sequence[DocCounts], task: str, rule: str) -> np.ndarray:
    """``(n_docs, 3)`` integer tp/fp/fn of ``task``/``rule`` (zeros for a document without that task)."""
    rows = [list(d.get(task, {}).get(rule, (0, 0, 0))) for d in docs]
    return np.asarray(rows, dtype=np.int64).reshape(len(docs), 3)


def resample_weights(strata: Sequence[int], n_resamples: int, seed: int) -> np.ndarray:
    """``(n_resamples, n_docs)``: how often each document is drawn in each resample, stratum by stratum.

    ``strata[i]`` is the stratum (site) of document ``i``; each stratum is resampled with replacement to its own
    size. Seeded: the same documents and seed give the same resamples, so paired comparisons share them.
    """
    strata_arr = np.asarray(strata)
    n = strata_arr.size
    rng = np.random.default_rng(seed)
    weights = np.zeros((n_resamples, n), dtype=np.int64)
    for s in sorted(set(strata_arr.tolist())):
        members = np.flatnonzero(strata_arr == s)
        m = members.size
        draws = rng.integers(0, m, size=(n_resamples, m))
        # one bincount for every resample at once: resample ``row`` counts its draws in bins ``row * m ..``
        offsets = draws + (np.arange(n_resamples, dtype=np.int64) * m)[:, None]
        weights[:, members] += np.bincount(offsets.ravel(), minlength=n_resamples * m).reshape(n_resamples, m)
    return weights


def _interval(estimate: float, samples: np.ndarray, level: float) -> Interval:
    alpha = (1 - level) / 2
    low, high = np.quantile(samples, [alpha, 1 - alpha])
    return Interval(float(estimate), float(low), float(high))


def bootstrap_interval(
    counts: np.ndarray,
    strata: Sequence[int] | None = None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, Interval]:
    """Micro precision, recall and F1 of ``counts`` (``(n_docs, 3)``) with percentile bootstrap intervals.

    Raises:
        ValueError: no document, or a level outside (0, 1).
    """
    counts = np.asarray(counts, dtype=np.int64)
    _check(counts, level)
    strata = [0] * len(counts) if strata is None else list(strata)
    w = resample_weights(strata, n_resamples, seed)
    point = prf(counts.sum(axis=0))
    boot = prf(w @ counts)
    return {name: _interval(point[k], boot[:, k], level) for k, name in enumerate(("precision", "recall", "f1"))}


def paired_difference(
    counts_a: np.ndarray,
    counts_b: np.ndarray,
    strata: Sequence[int] | None = None,
    *,
    metric: str = "f1",
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> Interval:
    """``metric(a) − metric(b)`` on the same documents, with a paired bootstrap interval (both models are scored
    on each resample's documents).

    Raises:
        ValueError: the two count matrices do not cover the same documents (shapes differ), or no document.
    """
    a, b = np.asarray(counts_a, dtype=np.int64), np.asarray(counts_b, dtype=np.int64)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: {a.shape[0]} documents against {b.shape[0]}; pair the same documents")
    _check(a, level)
    k = ("precision", "recall", "f1").index(metric)
    strata = [0] * len(a) if strata is None else list(strata)
    w = resample_weights(strata, n_resamples, seed)
    point = prf(a.sum(axis=0))[k] - prf(b.sum(axis=0))[k]
    boot = prf(w @ a)[:, k] - prf(w @ b)[:, k]
    return _interval(point, boot, level)


def _check(counts: np.ndarray, level: float) -> None:
    if counts.ndim != 2 or counts.shape[1] != 3 or counts.shape[0] == 0:
        raise ValueError(f"need (n_docs >= 1, 3) tp/fp/fn counts, got shape {counts.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def document_counts(
    items: Sequence[tuple[Sentence, LabelSet]],
    preds: Sequence[Sentence],
    doc_ids: Sequence[str],
    tasks: Sequence[str],
) -> dict[str, dict[str, dict[str, list[int]]]]:
    """``{doc_id: {task: {rule: [tp, fp, fn]}}}`` of scored sentences grouped by their document (the units the
    bootstrap resamples); a task with no scored instance in a document is left out of that document."""
    groups: dict[str, list[int]] = {}
    for i, doc in enumerate(doc_ids):
        groups.setdefault(doc, []).append(i)
    out: dict[str, dict[str, dict[str, list[int]]]] = {}
    for doc, idx in groups.items():
        ev = score_sentences([items[i] for i in idx], [preds[i] for i in idx], tasks)
        out[doc] = {
            task: {rule: [ev.get(task, rule).tp, ev.get(task, rule).fp, ev.get(task, rule).fn] for rule in CI_RULES}
            for task in tasks
            if ev.n_instances.get(task)
        }
    return out


# ---- evaluations of sites -------------------------------------------------------------------------------------


def site_documents(
    results: Mapping[str, Mapping[str, Any]], sites: Sequence[str]
) -> tuple[list[str], list[DocCounts], list[int]]:
    """The documents of ``sites`` in an evaluation (``eval/<name>.json``: ``{site: {"documents": {id: counts}}}``):
    their keys (``site/doc``), counts and stratum (site index). Raises ``KeyError`` naming a site without them."""
    keys: list[str] = []
    docs: list[DocCounts] = []
    strata: list[int] = []
    for k, site in enumerate(sites):
        per_doc = results[site].get("documents")
        if per_doc is None:
            raise KeyError(f"site {site}: the evaluation has no per-document counts (made before intervals existed)")
        for doc_id in sorted(per_doc):
            keys.append(f"{site}/{doc_id}")
            docs.append(per_doc[doc_id])
            strata.append(k)
    return keys, docs, strata


def evaluation_intervals(
    results: Mapping[str, Mapping[str, Any]],
    sites: Sequence[str],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{task: {rule: {"f1": .., "f1_low": .., "f1_high": .., "precision": .., ...}}}`` of the documents of
    ``sites`` pooled (stratified by site); a task no document was scored on is left out."""
    _, docs, strata = site_documents(results, sites)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for task in CI_TASKS:
        for rule in CI_RULES:
            if not any(task in d for d in docs):
                continue
            ci = bootstrap_interval(
                count_matrix(docs, task, rule), strata, n_resamples=n_resamples, seed=seed, level=level
            )
            flat: dict[str, float] = {"n_docs": float(len(docs))}
            for name, iv in ci.items():
                flat[name], flat[f"{name}_low"], flat[f"{name}_high"] = iv.estimate, iv.low, iv.high
            out.setdefault(task, {})[rule] = flat
    return out


def paired_comparison(
    results_a: Mapping[str, Mapping[str, Any]],
    results_b: Mapping[str, Mapping[str, Any]],
    sites: Sequence[str],
    task: str,
    rule: str = "strict",
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> Interval:
    """F1 of model A minus model B on the documents of ``sites`` (both must have scored the same documents).

    Raises:
        KeyError: a site without per-document counts.
        ValueError: the two evaluations scored different documents.
    """
    keys_a, docs_a, strata = site_documents(results_a, sites)
    keys_b, docs_b, _ = site_documents(results_b, sites)
    if keys_a != keys_b:
        only = sorted(set(keys_a) ^ set(keys_b))[:3]
        raise ValueError(f"paired comparison on {list(sites)}: the two models scored different documents ({only})")
    return paired_difference(
        count_matrix(docs_a, task, rule),
        count_matrix(docs_b, task, rule),
        strata,
        n_resamples=n_resamples,
        seed=seed,
        level=level,
    )


# ---- what evaluations and studies report ----------------------------------------------------------------------

#: The key of an evaluation (``eval/<name>.json``) that holds the intervals of all its sites pooled; every other
#: key is a site.
OVERALL = "_overall"

#: The (task, rule) pairs a study compares, in the order its table lists them.
PAIRED_METRICS: tuple[tuple[str, str], ...] = (
    ("ner", "strict"),
    ("re", "strict"),
    ("ner", "lenient"),
    ("re", "lenient"),
)

WIN, LOSS, NOT_SIGNIFICANT = "win", "loss", "not significant"

#: Fewer documents than this get a paired difference and its interval but no verdict: a bootstrap of one
#: document is a point (its "interval" excludes 0 whenever the difference is not 0), and of two to four a handful
#: of values, which is no evidence either way.
MIN_VERDICT_DOCS = 5


def site_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """The per-site entries of an evaluation (without ``OVERALL``)."""
    return {k: v for k, v in results.items() if k != OVERALL}


def has_documents(results: Mapping[str, Mapping[str, Any]], sites: Sequence[str]) -> bool:
    """Whether every site of ``sites`` is in ``results`` with per-document counts (evaluations made before
    intervals existed, and the encoder rows, have none)."""
    return bool(sites) and all(isinstance(results.get(s, {}).get("documents"), Mapping) for s in sites)


def flat_intervals(ci: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, float]:
    """``evaluation_intervals`` output as ``{"<task>_<rule>_<metric>_low": .., "_high": ..}`` (the keys of a
    ``reports.headline`` row with ``_low`` / ``_high`` appended)."""
    out: dict[str, float] = {}
    for task, rules in ci.items():
        for rule, d in rules.items():
            for name in ("precision", "recall", "f1"):
                if f"{name}_low" in d:
                    out[f"{task}_{rule}_{name}_low"] = d[f"{name}_low"]
                    out[f"{task}_{rule}_{name}_high"] = d[f"{name}_high"]
    return out


def group_intervals(
    results: Mapping[str, Mapping[str, Any]],
    sites: Sequence[str],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, dict[str, dict[str, float]]] | None:
    """``evaluation_intervals`` of ``sites`` pooled, or None where there is nothing to resample (no resamples
    asked for, a site missing or without per-document counts, or no document)."""
    if n_resamples <= 0 or not has_documents(results, sites):
        return None
    if not any(results[s]["documents"] for s in sites):
        return None
    return evaluation_intervals(results, sites, n_resamples=n_resamples, seed=seed, level=level)


def verdict(iv: Interval | None) -> str | None:
    """``win`` / ``loss`` when the interval of A − B excludes 0, else ``not significant`` (None: no interval)."""
    if iv is None:
        return None
    if not iv.excludes_zero:
        return NOT_SIGNIFICANT
    return WIN if iv.estimate > 0 else LOSS


def _pooled_f1(results: Mapping[str, Mapping[str, Any]], sites: Sequence[str], task: str, rule: str) -> float | None:
    """Micro F1 of ``task``/``rule`` from the summed counts of ``sites`` (None: the task was not scored there)."""
    ev = pooled(results, sites)
    return ev.get(task, rule).f1 if ev.n_instances.get(task, 0) > 0 else None


def compare_models(
    results_a: Mapping[str, Mapping[str, Any]],
    results_b: Mapping[str, Mapping[str, Any]],
    sites: Sequence[str],
    *,
    metrics: Sequence[tuple[str, str]] = PAIRED_METRICS,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> list[dict[str, Any]]:
    """Model A against model B on the documents of ``sites`` (stratified by site), one dict per (task, rule)
    that either model was scored on: ``task``, ``rule``, ``difference`` (F1 of A − F1 of B, a fraction),
    ``low`` / ``high`` (its paired bootstrap interval), ``verdict`` (``verdict``), ``n_docs`` and ``note``.

    Without per-document counts on both sides (an old evaluation, an encoder row) or with no resamples, the
    difference comes from the summed counts and ``low`` / ``high`` / ``verdict`` are None; two evaluations of
    different documents get the same, with the reason in ``note``. Fewer than ``MIN_VERDICT_DOCS`` documents: the
    interval is kept, the verdict is None and ``note`` says why. [] when either model misses a site.
    """
    sites = list(sites)
    if not sites or not all(s in results_a and s in results_b for s in sites):
        return []
    paired = n_resamples > 0 and has_documents(results_a, sites) and has_documents(results_b, sites)
    note = "" if paired else ("no resamples" if n_resamples <= 0 else "no per-document counts")
    n_docs = 0
    if paired:
        keys_a, _, _ = site_documents(results_a, sites)
        keys_b, _, _ = site_documents(results_b, sites)
        n_docs = len(keys_a)
        if keys_a != keys_b:
            paired, note = False, "the two models scored different documents"
        elif not keys_a:
            paired, note = False, "no document"
    out: list[dict[str, Any]] = []
    for task, rule in metrics:
        f1_a, f1_b = _pooled_f1(results_a, sites, task, rule), _pooled_f1(results_b, sites, task, rule)
        if f1_a is None and f1_b is None:
            continue
        row: dict[str, Any] = {"task": task, "rule": rule, "n_docs": n_docs, "note": note}
        iv = None
        if paired:
            iv = paired_comparison(
                results_a, results_b, sites, task, rule, n_resamples=n_resamples, seed=seed, level=level
            )
        if iv is not None:
            row.update(difference=iv.estimate, low=iv.low, high=iv.high)
        else:
            diff = None if f1_a is None or f1_b is None else f1_a - f1_b
            row.update(difference=diff, low=None, high=None)
        row["verdict"] = verdict(iv)
        if iv is not None and n_docs < MIN_VERDICT_DOCS:
            row["verdict"] = None
            row["note"] = f"{n_docs} document(s): too few for a verdict (fewer than {MIN_VERDICT_DOCS})"
        out.append(row)
    return out


def row_intervals(
    models: Mapping[str, Mapping[str, Mapping[str, Any]]],
    groups: Mapping[str, Sequence[str]],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {group: flat_intervals}}`` of each model on each group of sites (the sites of a group it was
    scored on, pooled and stratified by site, as ``reports.comparison_rows`` pools their counts); a model or
    group without per-document counts on all those sites is left out."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model, results in models.items():
        for group, sites in groups.items():
            present = [s for s in sites if s in results]
            ci = group_intervals(results, present, n_resamples=n_resamples, seed=seed, level=level)
            if ci:
                out.setdefault(model, {})[group] = flat_intervals(ci)
    return out


def compare_evaluations(
    results_a: Mapping[str, Mapping[str, Any]],
    results_b: Mapping[str, Mapping[str, Any]],
    sites: Sequence[str] | None = None,
    *,
    label_a: str = "A",
    label_b: str = "B",
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> list[dict[str, Any]]:
    """Two evaluations (``eval/<name>.json``) compared on the same documents: each site on its own, then all of
    them pooled (stratified by site, when there is more than one). ``compare_models`` rows with ``comparison``
    (``"<label_a> vs <label_b>"``), ``a``, ``b``, ``sites`` and ``kind`` added, as in a study's paired table.

    ``sites``: the sites to compare (default: every site both evaluations scored, in A's order).

    Raises:
        ValueError: no site in common, or a requested site missing from either evaluation (named).
    """
    scored_a = [s for s in results_a if s != OVERALL]
    if sites is None:
        sites = [s for s in scored_a if s in results_b]
        if not sites:
            raise ValueError(
                f"the two evaluations have no site in common ({label_a}: {scored_a}; "
                f"{label_b}: {[s for s in results_b if s != OVERALL]})"
            )
    for s in sites:
        for label, results in ((label_a, results_a), (label_b, results_b)):
            if s not in results or s == OVERALL:
                raise ValueError(f"site {s!r}: not in the evaluation of {label}")
    groups = [[s] for s in sites] + ([list(sites)] if len(sites) > 1 else [])
    name = f"{label_a} vs {label_b}"
    rows: list[dict[str, Any]] = []
    for group in groups:
        kind = f"{name}, each site" if len(group) == 1 else f"{name}, sites pooled"
        spec = {"kind": kind, "comparison": name, "a": label_a, "b": label_b, "sites": group}
        for r in compare_models(results_a, results_b, group, n_resamples=n_resamples, seed=seed, level=level):
            rows.append({**spec, **r})
    return rows
