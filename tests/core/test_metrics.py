"""Tests for fedmedlora.metrics: hand-computed scenarios per rule, relations, masking, accumulation."""

from __future__ import annotations

import json

import pytest

from fedmedlora.metrics import (
    MICRO,
    RULES,
    Counts,
    Evaluation,
    Relation,
    combine,
    count_relations,
    count_spans,
    mask_relations,
    pooled,
    relations_for_head,
    relations_from_sentence,
)
from fedmedlora.schema import Entity, LabelSet, Modifier, Sentence, Span

P = "problem"
D = "drug"
ALL = LabelSet(frozenset({"problem", "treatment", "test", "drug"}), frozenset({"negation", "bodyloc", "dosage"}))


def micro(gold, pred, rule) -> tuple[int, int, int]:
    c = count_spans(gold, pred, rule)[MICRO]
    return c.tp, c.fp, c.fn


# ---------------------------------------------------------------------------------------------------- Counts


def test_counts_scores_and_addition() -> None:
    c = Counts(3, 1, 2)
    assert c.precision == pytest.approx(0.75) and c.recall == pytest.approx(0.6)
    assert c.f1 == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert Counts().precision == Counts().recall == Counts().f1 == 0.0
    assert Counts(0, 0, 4).f1 == 0.0 and Counts(0, 3, 0).precision == 0.0
    a, b = Counts(1, 2, 3), Counts(4, 5, 6)
    s = a + b
    a2 = Counts(1, 2, 3)
    a2 += b
    assert s == a2 == Counts(5, 7, 9)
    assert a == Counts(1, 2, 3)  # + does not mutate
    assert c.support == 5 and c.to_dict()["f1"] == pytest.approx(c.f1)


# ---------------------------------------------------------------------------------------------------- NER scenarios


def test_perfect() -> None:
    g = [Span(0, 4, P), Span(10, 15, D)]
    for rule in RULES:
        assert micro(g, list(g), rule) == (2, 0, 0)


def test_miss_and_spurious() -> None:
    g = [Span(0, 4, P), Span(10, 15, D)]
    for rule in RULES:
        assert micro(g, [Span(0, 4, P)], rule) == (1, 0, 1)
        assert micro(g, [*g, Span(20, 25, P)], rule) == (2, 1, 0)


def test_wrong_type() -> None:
    g, p = [Span(0, 4, P)], [Span(0, 4, D)]
    assert micro(g, p, "strict") == (0, 1, 1)
    assert micro(g, p, "lenient") == (0, 1, 1)
    assert micro(g, p, "strict_untyped") == (1, 0, 0)
    assert micro(g, p, "lenient_untyped") == (1, 0, 0)
    per = count_spans(g, p, "strict")
    assert per[P] == Counts(0, 0, 1) and per[D] == Counts(0, 1, 0)


def test_partial_overlap() -> None:
    g, p = [Span(3, 13, P)], [Span(9, 20, P)]
    assert micro(g, p, "strict") == (0, 1, 1)
    assert micro(g, p, "lenient") == (1, 0, 0)
    # touching, not overlapping (half-open offsets)
    assert micro(g, [Span(13, 20, P)], "lenient") == (0, 1, 1)


def test_one_prediction_covering_two_golds() -> None:
    g, p = [Span(0, 4, P), Span(5, 9, P)], [Span(0, 9, P)]
    assert micro(g, p, "strict") == (0, 1, 2)
    c = count_spans(g, p, "lenient")[MICRO]
    assert (c.tp, c.fp, c.fn) == (1, 0, 1)
    assert c.precision == 1.0 and c.recall == 0.5


def test_two_predictions_inside_one_gold_match_once() -> None:
    g, p = [Span(0, 9, P)], [Span(0, 3, P), Span(5, 9, P)]
    assert micro(g, p, "lenient") == (1, 1, 0)


def test_exact_pairs_are_matched_before_greedy_overlap() -> None:
    # greedy alone would give (0,5) to the wide prediction and leave the exact one unmatched
    g = [Span(0, 5, P), Span(6, 10, P)]
    p = [Span(0, 10, P), Span(0, 5, P)]
    assert micro(g, p, "strict") == (1, 1, 1)
    assert micro(g, p, "lenient") == (2, 0, 0)


def test_nested_spans() -> None:
    g = [Span(0, 10, P), Span(0, 5, "test")]
    assert micro(g, [Span(0, 10, P)], "strict") == (1, 0, 1)
    assert micro(g, [Span(0, 10, P), Span(0, 5, "test")], "strict") == (2, 0, 0)
    # untyped: the inner prediction overlaps the outer gold, but exact pairs go first
    assert micro(g, [Span(0, 5, P)], "lenient_untyped") == (1, 0, 1)
    assert micro(g, [Span(0, 5, P)], "strict_untyped") == (1, 0, 1)


def test_untyped_same_extent_different_types_is_one_to_one() -> None:
    g = [Span(0, 4, P), Span(0, 4, "test")]
    assert micro(g, [Span(0, 4, D)], "strict_untyped") == (1, 0, 1)
    assert micro(g, [Span(0, 4, D), Span(0, 4, P)], "strict_untyped") == (2, 0, 0)


def test_empty_cases_and_duplicates() -> None:
    for rule in RULES:
        assert micro([], [], rule) == (0, 0, 0)
        assert micro([Span(0, 1, P)], [], rule) == (0, 0, 1)
        assert micro([], [Span(0, 1, P)], rule) == (0, 1, 0)
        assert micro([Span(0, 1, P)], [Span(0, 1, P), Span(0, 1, P)], rule) == (1, 0, 0)


def test_unknown_rule() -> None:
    with pytest.raises(ValueError, match="unknown rule"):
        count_spans([], [], "fuzzy")


# ---------------------------------------------------------------------------------------------------- relations


def _sentence() -> Sentence:
    text = "No chest pain ; aspirin 2 tabs"
    ents = (Entity("T1", P, 3, 13, "chest pain"), Entity("T2", D, 16, 23, "aspirin"))
    mods = (
        Modifier("M1", "negation", 0, 2, "No", "T1"),
        Modifier("M2", "bodyloc", 3, 8, "chest", "T1"),
        Modifier("M3", "dosage", 24, 30, "2 tabs", "T2"),
    )
    return Sentence("d:0", 0, len(text), text, ents, mods)


def test_relations_from_sentence() -> None:
    rels = relations_from_sentence(_sentence())
    assert rels == [
        Relation(Span(3, 13, P), Span(0, 2, "negation")),
        Relation(Span(3, 13, P), Span(3, 8, "bodyloc")),
        Relation(Span(16, 23, D), Span(24, 30, "dosage")),
    ]
    assert rels[0].type == "negation"


def test_relation_matching_rules() -> None:
    head = Span(3, 13, P)
    gold = relations_for_head(head, [Span(0, 2, "negation"), Span(3, 8, "bodyloc")])
    # exact
    assert count_relations(gold, list(gold), "strict")[MICRO] == Counts(2, 0, 0)
    # modifier boundary off by one: strict miss, lenient hit
    pred = relations_for_head(head, [Span(0, 2, "negation"), Span(3, 9, "bodyloc")])
    assert count_relations(gold, pred, "strict")[MICRO] == Counts(1, 1, 1)
    assert count_relations(gold, pred, "lenient")[MICRO] == Counts(2, 0, 0)
    # modifier type disagrees: typed miss, untyped hit
    pred = relations_for_head(head, [Span(0, 2, "uncertain"), Span(3, 8, "bodyloc")])
    assert count_relations(gold, pred, "strict")[MICRO] == Counts(1, 1, 1)
    assert count_relations(gold, pred, "strict_untyped")[MICRO] == Counts(2, 0, 0)
    per = count_relations(gold, pred, "strict")
    assert per["negation"] == Counts(0, 0, 1) and per["uncertain"] == Counts(0, 1, 0)
    # same modifier attached to a different head: no match under any rule
    other = relations_for_head(Span(16, 23, D), [Span(0, 2, "negation")])
    for rule in RULES:
        assert count_relations(gold[:1], other, rule)[MICRO] == Counts(0, 1, 1)
    # head overlapping but not exact: lenient only
    shifted = relations_for_head(Span(3, 8, P), [Span(0, 2, "negation")])
    assert count_relations(gold[:1], shifted, "strict")[MICRO] == Counts(0, 1, 1)
    assert count_relations(gold[:1], shifted, "lenient")[MICRO] == Counts(1, 0, 0)


# ---------------------------------------------------------------------------------------------------- masking


def test_ner_masking_drops_unannotated_types_on_both_sides() -> None:
    ls = LabelSet(frozenset({P}), frozenset())
    ev = Evaluation()
    ev.add_ner([Span(0, 4, P), Span(10, 15, D)], [Span(0, 4, P), Span(20, 25, D)], ls)
    assert ev.get("ner", "strict") == Counts(1, 0, 0)
    assert ev.get("ner", "strict_untyped") == Counts(1, 0, 0)
    assert ("ner", "strict", D) not in ev.counts
    assert ev.get("ner", "strict", P) == Counts(1, 0, 0)


def test_re_masking_uses_modifiers_for_head_type() -> None:
    ls = LabelSet(frozenset({P, D}), frozenset({"negation"}))
    head = Span(3, 13, P)
    gold = relations_for_head(head, [Span(0, 2, "negation"), Span(3, 8, "bodyloc")])
    pred = relations_for_head(head, [Span(0, 2, "negation"), Span(20, 22, "severity")])
    assert mask_relations(gold, ls) == gold[:1]
    ev = Evaluation()
    ev.add_re(gold, pred, ls)
    assert ev.get("re", "strict") == Counts(1, 0, 0)
    # a relation whose head type is not annotated is dropped too
    ev2 = Evaluation()
    ev2.add_re([], relations_for_head(Span(0, 3, "test"), [Span(5, 6, "negation")]), ls)
    assert ev2.get("re", "strict") == Counts(0, 0, 0)


def test_zero_support_types_get_rows() -> None:
    ev = Evaluation()
    ev.add_ner([], [], ALL)
    assert ev.get("ner", "strict", "test") == Counts() and ("ner", "strict", "test") in ev.counts


# ---------------------------------------------------------------------------------------------------- accumulation


def _two_evals() -> tuple[Evaluation, Evaluation]:
    a, b = Evaluation(), Evaluation()
    a.add_ner([Span(0, 4, P)], [Span(0, 4, P), Span(5, 6, D)], ALL)
    a.add_failures("ner", {"unknown_type": 2})
    b.add_ner([Span(0, 4, P), Span(6, 9, D)], [Span(0, 3, P)], ALL)
    b.add_re(relations_from_sentence(_sentence()), relations_from_sentence(_sentence())[:1], ALL)
    b.add_failures("re", {"text_mismatch": 1, "duplicate": 0})
    return a, b


def test_evaluation_sums_counts_and_add_equals_iadd() -> None:
    a, b = _two_evals()
    s = a + b
    a2, _ = _two_evals()
    a2 += b
    assert s == a2
    assert s.get("ner", "strict") == Counts(1, 2, 2)
    assert s.get("ner", "lenient") == Counts(2, 1, 1)
    assert s.get("ner", "strict", D) == Counts(0, 1, 1)
    assert s.get("re", "strict") == Counts(1, 0, 2)
    assert s.n_instances == {"ner": 2, "re": 1}
    assert s.failures == {("ner", "unknown_type"): 2, ("re", "text_mismatch"): 1}
    # scores come from summed counts, not averaged per sentence
    assert s.get("ner", "strict").f1 == pytest.approx(1 / 3)


def test_micro_equals_sum_of_types_for_typed_rules() -> None:
    a, b = _two_evals()
    s = a + b
    for task in ("ner", "re"):
        for rule in ("strict", "lenient"):
            types = [k[2] for k in s.counts if k[:2] == (task, rule) and k[2] != MICRO]
            assert sum((s.get(task, rule, t) for t in types), Counts()) == s.get(task, rule)


def test_serialisation_round_trips() -> None:
    a, b = _two_evals()
    s = a + b
    d = json.loads(json.dumps(s.to_dict()))
    assert Evaluation.from_dict(d) == s
    assert d["counts"]["ner"]["strict"][MICRO]["f1"] == pytest.approx(1 / 3)
    assert Evaluation.from_flat(s.to_flat()) == s
    # summing flat dicts key by key (what a Flower sum-aggregation does) equals merge
    fa, fb = a.to_flat(), b.to_flat()
    summed = {k: fa.get(k, 0) + fb.get(k, 0) for k in set(fa) | set(fb)}
    summed["eval_loss"] = 1.5  # foreign keys are ignored
    assert Evaluation.from_flat(summed) == s
    with pytest.raises(ValueError, match="malformed"):
        Evaluation.from_dict({"counts": {"ner": {"strict": {"micro": {"tp": 1}}}}})


def test_markdown_and_combine() -> None:
    a, b = _two_evals()
    both = combine({"siteA": a, "siteB": b})
    assert set(both) == {"siteA", "siteB", "all"} and both["all"] == a + b
    md = both["all"].to_markdown("all sites")
    lines = md.splitlines()
    assert lines[0] == "### all sites"
    assert "| ner | strict | micro | 0.3333 | 0.3333 | 0.3333 | 1 | 2 | 2 |" in lines
    assert lines.index("| ner | strict | micro | 0.3333 | 0.3333 | 0.3333 | 1 | 2 | 2 |") < lines.index(
        "| ner | strict | drug | 0.0000 | 0.0000 | 0.0000 | 0 | 1 | 1 |"
    )
    assert "| re | text_mismatch | 1 |" in md


def test_pooled_sums_the_serialised_metrics_of_the_chosen_sites() -> None:
    a, b = _two_evals()
    results = {"siteA": {"metrics": a.to_dict()}, "siteB": {"metrics": b.to_dict()}}
    assert pooled(results) == a + b  # default: every site
    assert pooled(results, ["siteB"]) == b
    assert pooled(results, []) == Evaluation()
