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

from fedmedlora.metrics import score_sentences
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
        draws = rng.integers(0, members.size, size=(n_resamples, members.size))
        for row in range(n_resamples):
            weights[row, members] += np.bincount(draws[row], minlength=members.size)
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
