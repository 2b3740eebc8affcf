"""The error kinds of the report's error browser, on hand-made spans (``fedmedlora.span_errors``)."""

from __future__ import annotations

from fedmedlora.schema import Entity, Modifier, Sentence, Span
from fedmedlora.span_errors import (
    BOUNDARY,
    FALSE_POSITIVE,
    MATCH,
    MISS,
    TYPE,
    classify_sentence,
    classify_spans,
    count_kinds,
)


def kinds(outcomes):
    return [(o.kind, o.gold, o.pred) for o in outcomes]


def test_each_kind_on_hand_made_spans() -> None:
    fever, cough, pain, aspirin, ct = (
        Span(0, 5, "problem"),
        Span(10, 15, "problem"),
        Span(20, 30, "problem"),
        Span(40, 47, "drug"),
        Span(50, 52, "test"),
    )
    pred = [
        Span(0, 5, "problem"),  # exact
        Span(10, 15, "test"),  # same boundaries, other type
        Span(22, 30, "problem"),  # overlapping, same type
        Span(60, 64, "drug"),  # nothing there
    ]
    out = classify_spans([fever, cough, pain, aspirin, ct], pred)
    assert kinds(out) == [
        (MATCH, fever, pred[0]),
        (TYPE, cough, pred[1]),
        (BOUNDARY, pain, pred[2]),
        (MISS, aspirin, None),
        (MISS, ct, None),
        (FALSE_POSITIVE, None, pred[3]),
    ]
    assert count_kinds(out) == {MATCH: 1, MISS: 2, FALSE_POSITIVE: 1, BOUNDARY: 1, TYPE: 1}


def test_overlap_with_another_type_and_boundaries_is_a_type_error() -> None:
    out = classify_spans([Span(0, 10, "problem")], [Span(5, 12, "test")])
    assert kinds(out) == [(TYPE, Span(0, 10, "problem"), Span(5, 12, "test"))]


def test_exact_match_wins_over_an_earlier_overlap_and_each_gold_pairs_once() -> None:
    gold = [Span(0, 10, "problem")]
    # the boundary candidate comes first in position, but the exact prediction takes the gold span
    pred = [Span(0, 4, "problem"), Span(0, 10, "problem")]
    out = classify_spans(gold, pred)
    assert kinds(out) == [(FALSE_POSITIVE, None, Span(0, 4, "problem")), (MATCH, gold[0], Span(0, 10, "problem"))]


def test_a_prediction_takes_the_gold_span_it_overlaps_most() -> None:
    a, b = Span(0, 6, "problem"), Span(7, 20, "problem")
    out = classify_spans([a, b], [Span(4, 18, "problem")])
    assert kinds(out) == [(MISS, a, None), (BOUNDARY, b, Span(4, 18, "problem"))]


def test_duplicates_count_once_and_empty_sides() -> None:
    s = Span(1, 3, "drug")
    assert kinds(classify_spans([s, s], [s, s])) == [(MATCH, s, s)]
    assert classify_spans([], []) == []
    assert kinds(classify_spans([], [s])) == [(FALSE_POSITIVE, None, s)]


def test_modifiers_are_compared_head_by_head() -> None:
    text = "no fever, mild cough"
    fever = Entity("T1", "problem", 3, 8, "fever")
    cough = Entity("T2", "problem", 15, 20, "cough")
    gold = Sentence(
        "d:0",
        0,
        len(text),
        text,
        entities=(fever, cough),
        modifiers=(Modifier("M1", "negation", 0, 2, "no", "T1"), Modifier("M2", "severity", 10, 14, "mild", "T2")),
    )
    # the right negation cue, but attached to the wrong head: a miss for T1 and a false positive for T2
    pred = Sentence(
        "d:0",
        0,
        len(text),
        text,
        entities=(Entity("P1", "problem", 3, 8, "fever"),),
        modifiers=(Modifier("M1", "negation", 0, 2, "no", "T2"), Modifier("M2", "severity", 10, 14, "mild", "T2")),
    )
    ents, mods = classify_sentence(gold, pred)
    assert kinds(ents) == [(MATCH, fever.span, fever.span), (MISS, cough.span, None)]
    assert [(o.kind, o.head) for o in mods] == [(FALSE_POSITIVE, "T2"), (MISS, "T1"), (MATCH, "T2")]
