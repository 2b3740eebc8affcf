"""Document-level bootstrap intervals and paired differences (fedmedlora.intervals), on hand-made counts."""

from __future__ import annotations

import numpy as np
import pytest

from fedmedlora.intervals import (
    OVERALL,
    bootstrap_interval,
    count_matrix,
    document_counts,
    evaluation_intervals,
    flat_intervals,
    group_intervals,
    paired_comparison,
    paired_difference,
    prf,
    resample_weights,
    site_results,
    verdict,
)
from fedmedlora.metrics import score_sentences
from fedmedlora.schema import Entity, LabelSet, Sentence


def test_prf_matches_hand_computed_values_and_zero_when_undefined():
    p, r, f = prf(np.array([3, 1, 2]))
    assert (p, r) == (0.75, 0.6) and f == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert prf(np.array([0, 0, 0])).tolist() == [0.0, 0.0, 0.0]
    assert prf(np.array([0, 2, 0])).tolist() == [0.0, 0.0, 0.0]


def test_resamples_are_seeded_stratified_and_keep_each_stratum_size():
    strata = [0, 0, 0, 1, 1]
    w = resample_weights(strata, 200, seed=5)
    assert w.shape == (200, 5)
    assert (w[:, :3].sum(axis=1) == 3).all() and (w[:, 3:].sum(axis=1) == 2).all()
    assert (w == resample_weights(strata, 200, seed=5)).all()
    assert not (w == resample_weights(strata, 200, seed=6)).all()


def test_interval_contains_the_estimate_and_collapses_on_identical_documents():
    same = np.array([[2, 1, 1]] * 10)
    ci = bootstrap_interval(same, n_resamples=100)
    assert ci["f1"].estimate == ci["f1"].low == ci["f1"].high == pytest.approx(2 / 3)
    rng = np.random.default_rng(0)
    varied = rng.integers(0, 5, size=(40, 3))
    ci = bootstrap_interval(varied, n_resamples=500, seed=1)
    for iv in ci.values():
        assert iv.low <= iv.estimate <= iv.high and iv.low < iv.high


def test_interval_agrees_with_scipy_bootstrap():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    counts = np.column_stack([rng.integers(0, 8, 60), rng.integers(0, 4, 60), rng.integers(0, 4, 60)])

    def micro_f1(idx, axis=-1):
        return prf(counts[np.asarray(idx, dtype=int)].sum(axis=-2))[..., 2]

    ref = scipy_stats.bootstrap(
        (np.arange(len(counts)),), micro_f1, n_resamples=4000, method="percentile", random_state=0, vectorized=False
    ).confidence_interval
    ours = bootstrap_interval(counts, n_resamples=4000, seed=0)["f1"]
    assert ours.low == pytest.approx(ref.low, abs=0.01)
    assert ours.high == pytest.approx(ref.high, abs=0.01)


def test_paired_difference_of_a_model_with_itself_is_exactly_zero():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 6, size=(30, 3))
    d = paired_difference(a, a, n_resamples=300)
    assert (d.estimate, d.low, d.high) == (0.0, 0.0, 0.0) and not d.excludes_zero


def test_paired_difference_finds_a_consistent_win_and_not_a_noisy_one():
    gold = 5
    better = np.array([[4, 1, gold - 4]] * 30)  # every document: 4 of 5 found
    worse = np.array([[2, 1, gold - 2]] * 30)
    win = paired_difference(better, worse, n_resamples=300)
    assert win.estimate > 0 and win.excludes_zero
    # half the documents favour each model: the difference is not significant
    mixed_a = np.array([[4, 0, 1]] * 15 + [[1, 0, 4]] * 15)
    mixed_b = np.array([[1, 0, 4]] * 15 + [[4, 0, 1]] * 15)
    tie = paired_difference(mixed_a, mixed_b, n_resamples=300)
    assert tie.estimate == 0.0 and not tie.excludes_zero


def test_paired_difference_refuses_different_documents():
    with pytest.raises(ValueError, match="same documents"):
        paired_difference(np.ones((3, 3)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="n_docs"):
        bootstrap_interval(np.zeros((0, 3)))


def _sentence(doc: str, k: int, text: str, ents: list[tuple[str, str]]) -> Sentence:
    entities = tuple(Entity(f"T{j}", t, text.index(s), text.index(s) + len(s), s) for j, (t, s) in enumerate(ents))
    return Sentence(f"{doc}:{k}", 0, len(text), text, entities)


def test_document_counts_sum_to_the_site_counts():
    ls = LabelSet()
    gold = [
        _sentence("d1", 0, "No fever, no cough.", [("problem", "fever"), ("problem", "cough")]),
        _sentence("d1", 1, "Started metformin daily.", [("drug", "metformin")]),
        _sentence("d2", 0, "CT was normal.", [("test", "CT")]),
    ]
    pred = [
        _sentence("d1", 0, "No fever, no cough.", [("problem", "fever")]),
        _sentence("d1", 1, "Started metformin daily.", [("drug", "metformin"), ("drug", "daily")]),
        _sentence("d2", 0, "CT was normal.", [("problem", "CT")]),
    ]
    items = [(s, ls) for s in gold]
    per_doc = document_counts(items, pred, ["d1", "d1", "d2"], ["ner"])
    assert per_doc["d1"]["ner"]["strict"] == [2, 1, 1] and per_doc["d2"]["ner"]["strict"] == [0, 1, 1]
    total = score_sentences(items, pred, ["ner"]).get("ner", "strict")
    summed = count_matrix(list(per_doc.values()), "ner", "strict").sum(axis=0).tolist()
    assert summed == [total.tp, total.fp, total.fn]


def test_evaluation_intervals_and_paired_comparison_of_site_results():
    a = {"s1": {"documents": {f"d{i}": {"ner": {"strict": [3, 0, 1], "lenient": [4, 0, 0]}} for i in range(12)}}}
    b = {"s1": {"documents": {f"d{i}": {"ner": {"strict": [1, 2, 3], "lenient": [2, 1, 2]}} for i in range(12)}}}
    ci = evaluation_intervals(a, ["s1"], n_resamples=100)
    assert set(ci) == {"ner"} and ci["ner"]["strict"]["f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert ci["ner"]["lenient"]["f1_low"] == ci["ner"]["lenient"]["f1_high"] == 1.0
    d = paired_comparison(a, b, ["s1"], "ner", n_resamples=100)
    assert d.excludes_zero and d.estimate > 0
    with pytest.raises(KeyError, match="per-document"):
        paired_comparison(a, {"s1": {}}, ["s1"], "ner")
    c = {"s1": {"documents": {"other": {"ner": {"strict": [1, 0, 0]}}}}}
    with pytest.raises(ValueError, match="different documents"):
        paired_comparison(a, c, ["s1"], "ner")


def test_resample_weights_are_the_per_resample_bincounts_of_the_seeded_draws():
    """The vectorised weights are exactly what drawing each stratum's documents resample by resample gives."""
    strata = [2, 0, 0, 1, 0, 2, 2, 2]
    w = resample_weights(strata, 50, seed=9)
    rng = np.random.default_rng(9)
    expected = np.zeros_like(w)
    for s in (0, 1, 2):
        members = np.flatnonzero(np.asarray(strata) == s)
        draws = rng.integers(0, members.size, size=(50, members.size))
        for row in range(50):
            expected[row, members] += np.bincount(draws[row], minlength=members.size)
    assert (w == expected).all()


def test_group_intervals_need_documents_on_every_site_and_some_resamples():
    docs = {f"d{i}": {"ner": {"strict": [i % 3, 1, 1], "lenient": [2, 0, 0]}} for i in range(8)}
    results = {"a": {"documents": docs}, "b": {"documents": docs}, "old": {"metrics": {}}, OVERALL: {}}
    assert group_intervals(results, ["a", "b"], n_resamples=50)["ner"]["strict"]["n_docs"] == 16
    assert group_intervals(results, ["a", "old"], n_resamples=50) is None
    assert group_intervals(results, ["a"], n_resamples=0) is None
    assert group_intervals({"a": {"documents": {}}}, ["a"], n_resamples=50) is None
    assert list(site_results(results)) == ["a", "b", "old"]
    assert verdict(None) is None
    flat = flat_intervals(evaluation_intervals(results, ["a"], n_resamples=50))
    assert {"ner_strict_f1_low", "ner_lenient_recall_high"} <= set(flat) and "ner_strict_n_docs_low" not in flat
