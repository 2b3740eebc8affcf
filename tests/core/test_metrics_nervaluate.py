"""Cross-check of fedmedlora.metrics against nervaluate (an independent implementation) on random span sets.

Mapping (nervaluate's ``end`` is inclusive, so we pass ``end - 1``):

* nervaluate ``strict``  (exact boundaries and type)        == our ``strict``          P/R/F1, overall and per type
* nervaluate ``exact``   (exact boundaries, any type)       == our ``strict_untyped``  P/R/F1
* nervaluate ``partial`` (any type; exact = 1, overlap = ½) : ``correct`` == our ``strict_untyped`` TP and
  ``correct + partial`` == our ``lenient_untyped`` TP, so its half-credit P/R follow from our counts.

nervaluate matches predictions in list order and lets an earlier *overlapping* prediction consume a gold span that
a later prediction matches exactly (it then counts the exact one as spurious). Our rule matches exact pairs first
(see ``fedmedlora.metrics``), so the predictions are handed to nervaluate with the exactly-matching ones first;
with that order both implementations define the same one-to-one matching. ``ent_type`` (closest-boundary
matching with type) has no counterpart here and is not compared.
"""

from __future__ import annotations

import random

import pytest

from fedmedlora.metrics import MICRO, Counts, count_spans
from fedmedlora.schema import Span

nervaluate = pytest.importorskip("nervaluate")

TYPES = ["problem", "drug", "test"]


def _random_doc(rng: random.Random) -> tuple[list[Span], list[Span]]:
    n = 60
    gold: set[Span] = set()
    for _ in range(rng.randint(0, 6)):
        a = rng.randint(0, n - 2)
        gold.add(Span(a, rng.randint(a + 1, min(n, a + 10)), rng.choice(TYPES)))
    pred: set[Span] = set()
    for g in gold:
        r = rng.random()
        if r < 0.4:
            pred.add(g)  # exact
        elif r < 0.55:
            pred.add(Span(g.start, g.end, rng.choice(TYPES)))  # maybe wrong type
        elif r < 0.8:
            a = max(0, g.start + rng.randint(-3, 3))
            pred.add(Span(a, max(a + 1, g.end + rng.randint(-3, 3)), g.type))  # shifted boundaries
        # else: missed
    for _ in range(rng.randint(0, 3)):  # spurious (may overlap gold by chance)
        a = rng.randint(0, n - 2)
        pred.add(Span(a, rng.randint(a + 1, min(n, a + 10)), rng.choice(TYPES)))
    return sorted(gold), sorted(pred)


def _nerv(spans: list[Span]) -> list[dict]:
    return [{"label": s.type, "start": s.start, "end": s.end - 1} for s in spans]


def _exact_first(gold: list[Span], pred: list[Span], typed: bool) -> list[Span]:
    key = (lambda s: (s.start, s.end, s.type)) if typed else (lambda s: (s.start, s.end))
    gold_keys = {key(g) for g in gold}
    return [p for p in pred if key(p) in gold_keys] + [p for p in pred if key(p) not in gold_keys]


def _assert_prf(ours: Counts, theirs, what: str) -> None:
    assert ours.precision == pytest.approx(theirs.precision, abs=1e-9), what
    assert ours.recall == pytest.approx(theirs.recall, abs=1e-9), what
    assert ours.f1 == pytest.approx(theirs.f1, abs=1e-9), what


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_strict_matches_nervaluate(seed: int) -> None:
    rng = random.Random(seed)
    docs = [_random_doc(rng) for _ in range(200)]
    ours: dict[str, Counts] = {}
    for g, p in docs:
        for t, c in count_spans(g, p, "strict").items():
            ours[t] = ours.get(t, Counts()) + c
    res = nervaluate.Evaluator(
        [_nerv(g) for g, _ in docs], [_nerv(_exact_first(g, p, True)) for g, p in docs], tags=TYPES, loader="dict"
    ).evaluate()
    strict = res["overall"]["strict"]
    assert strict.correct == ours[MICRO].tp and strict.actual == ours[MICRO].tp + ours[MICRO].fp
    assert strict.possible == ours[MICRO].tp + ours[MICRO].fn
    _assert_prf(ours[MICRO], strict, "overall strict")
    for t in TYPES:
        _assert_prf(ours[t], res["entities"][t]["strict"], f"strict {t}")


@pytest.mark.parametrize("seed", [3, 4])
def test_untyped_rules_match_nervaluate_exact_and_partial(seed: int) -> None:
    rng = random.Random(seed)
    docs = [_random_doc(rng) for _ in range(200)]
    su, lu = Counts(), Counts()
    for g, p in docs:
        su += count_spans(g, p, "strict_untyped")[MICRO]
        lu += count_spans(g, p, "lenient_untyped")[MICRO]
    res = nervaluate.Evaluator(
        [_nerv(g) for g, _ in docs], [_nerv(_exact_first(g, p, False)) for g, p in docs], tags=TYPES, loader="dict"
    ).evaluate()
    exact, partial = res["overall"]["exact"], res["overall"]["partial"]
    _assert_prf(su, exact, "exact")
    assert partial.correct == su.tp
    assert partial.correct + partial.partial == lu.tp
    assert partial.spurious == lu.fp and partial.missed == lu.fn
    n_pred, n_gold = lu.tp + lu.fp, lu.tp + lu.fn
    half = su.tp + 0.5 * (lu.tp - su.tp)
    assert partial.precision == pytest.approx(half / n_pred, abs=1e-9)
    assert partial.recall == pytest.approx(half / n_gold, abs=1e-9)
    assert lu.tp >= su.tp  # lenient never below strict


def test_random_sets_are_not_trivial() -> None:
    """Guard: the random documents exercise misses, spurious, wrong types and partial overlaps."""
    rng = random.Random(0)
    docs = [_random_doc(rng) for _ in range(200)]
    s, lenient = Counts(), Counts()
    for g, p in docs:
        s += count_spans(g, p, "strict")[MICRO]
        lenient += count_spans(g, p, "lenient")[MICRO]
    assert s.tp > 50 and s.fp > 50 and s.fn > 50 and lenient.tp > s.tp
