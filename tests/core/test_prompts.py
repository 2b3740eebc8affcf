"""Tests for fedmedlora.prompts: instruction texts, targets, RE instances, nesting/crossing, determinism."""

from __future__ import annotations

import json
import random

import pytest

from fedmedlora.parsing import parse
from fedmedlora.prompts import (
    FORMATS,
    OUTPUT_HEADER,
    allowed_types,
    build_examples,
    build_prompt,
    count_unrepresentable,
    render_html,
    render_json,
    split_representable,
    unrepresentable_spans,
)
from fedmedlora.schema import Document, Entity, LabelSet, Modifier, Sentence, Span

TEXT = "No chest pain, she takes aspirin 81 mg daily; chest pain again."
ALL = LabelSet(
    frozenset({"problem", "drug", "test", "treatment"}),
    frozenset({"negation", "bodyloc", "strength", "frequency"}),
)


def make_sentence() -> Sentence:
    ents = (
        Entity("T1", "problem", 3, 13, "chest pain"),
        Entity("T2", "drug", 25, 32, "aspirin"),
        Entity("T3", "problem", 46, 56, "chest pain"),
    )
    mods = (
        Modifier("M1", "negation", 0, 2, "No", "T1"),
        Modifier("M2", "bodyloc", 3, 8, "chest", "T1"),
        Modifier("M3", "strength", 33, 38, "81 mg", "T2"),
        Modifier("M4", "frequency", 39, 44, "daily", "T2"),
    )
    return Sentence("d1:0", 0, len(TEXT), TEXT, ents, mods)


def make_doc(label_set: LabelSet = ALL, site: str = "siteA") -> Document:
    s = make_sentence()
    ents = tuple(e for e in s.entities if e.type in label_set.entities)
    ids = {e.id for e in ents}
    mods = tuple(m for m in s.modifiers if m.head in ids and m.type in label_set.modifiers)
    s = Sentence(s.id, s.start, s.end, s.text, ents, mods)
    doc = Document("d1", site, "train", TEXT, (s,), label_set)
    doc.validate()
    return doc


def test_ner_html_example_exact_text() -> None:
    [ner] = build_examples(make_doc(), "html", tasks=("ner",))
    assert ner.task == "ner" and ner.head is None and ner.site == "siteA" and ner.sentence_id == "d1:0"
    assert ner.prompt.endswith("### Input Text:\n" + TEXT + "\n" + OUTPUT_HEADER)
    assert ner.target == (
        'No <span class="problem">chest pain</span>, she takes <span class="drug">aspirin</span> 81 mg daily; '
        '<span class="problem">chest pain</span> again.'
    )
    for header in ("### Task:\n", "### Entity Markup Guides:\n", "### Entity Definitions:\n", "### Input Text:\n"):
        assert header in ner.prompt
    assert "Medical Problem: The abnormal condition that happens physically or mentally to a patient." in ner.prompt
    assert "<eos>" not in ner.target.lower() and "</s>" not in ner.target


def test_prompt_lists_only_the_sites_types() -> None:
    ls = LabelSet(frozenset({"problem"}), frozenset({"negation"}))
    exs = build_examples(make_doc(ls), "html")
    ner = exs[0]
    assert 'class="problem"' in ner.prompt
    for t in ("drug", "test", "treatment"):
        assert f'class="{t}"' not in ner.prompt
    assert "Drug:" not in ner.prompt and "Test:" not in ner.prompt
    re_exs = [e for e in exs if e.task == "re"]
    assert [e.head for e in re_exs] == ["T1", "T3"]
    for e in re_exs:
        assert 'class="negation"' in e.prompt and 'class="bodyloc"' not in e.prompt


def test_re_modifier_guide_restricted_to_head_type() -> None:
    exs = build_examples(make_doc(), "html", tasks=("re",))
    by_head = {e.head: e for e in exs}
    drug = by_head["T2"].prompt
    assert 'class="strength"' in drug and 'class="frequency"' in drug and 'class="negation"' in drug
    assert 'class="bodyloc"' not in drug  # bodyloc cannot modify a drug
    prob = by_head["T1"].prompt
    assert 'class="bodyloc"' in prob and 'class="strength"' not in prob
    assert "### Input Entity Markup Guides:\n" in prob and "### Modifier Entity Markup Guide:\n" in prob


def test_re_instances_input_marks_one_head_and_target_has_only_its_modifiers() -> None:
    exs = build_examples(make_doc(), "html", tasks=("re",))
    assert [e.head for e in exs] == ["T1", "T2", "T3"]
    t1, t2, t3 = exs
    assert 'No <span class="problem">chest pain</span>, she takes aspirin' in t1.prompt
    assert t1.prompt.count("<span class=") == t1.prompt.count("Use <span class=") + 1
    assert t1.target == (
        '<span class="negation">No</span> <span class="bodyloc">chest</span> pain, she takes aspirin 81 mg daily; '
        "chest pain again."
    )
    assert t2.target == (
        'No chest pain, she takes aspirin <span class="strength">81 mg</span> <span class="frequency">daily</span>;'
        " chest pain again."
    )
    assert t3.target == TEXT  # negative instance: head without modifiers
    assert [e.n_spans for e in exs] == [2, 2, 0]
    assert [e.n_spans for e in build_examples(make_doc(), "json", tasks=("ner", "re"))] == [3, 2, 2, 0]
    assert '; <span class="problem">chest pain</span> again.' in t3.prompt


def test_json_targets() -> None:
    ner, t1, t2, t3 = build_examples(make_doc(), "json")
    assert json.loads(ner.target) == [
        {"type": "problem", "text": "chest pain"},
        {"type": "drug", "text": "aspirin"},
        {"type": "problem", "text": "chest pain"},
    ]
    assert json.loads(t1.target) == [{"type": "negation", "text": "No"}, {"type": "bodyloc", "text": "chest"}]
    assert json.loads(t3.target) == []
    assert '<span class="drug">aspirin</span>' in t2.prompt  # head marked the same way in both formats


def test_site_without_modifiers_gives_no_re_and_no_entities_gives_no_ner() -> None:
    ls = LabelSet(frozenset({"problem", "drug"}), frozenset())
    exs = build_examples(make_doc(ls), "html")
    assert [e.task for e in exs] == ["ner"]
    s = make_sentence()
    bare = Sentence(s.id, s.start, s.end, s.text)
    assert build_examples([bare], "html", label_set=LabelSet(frozenset(), frozenset())) == []


def test_head_type_without_annotated_modifiers_is_skipped() -> None:
    ls = LabelSet(frozenset({"problem", "drug"}), frozenset({"bodyloc"}))
    exs = build_examples(make_doc(ls), "html", tasks=("re",))
    assert [e.head for e in exs] == ["T1", "T3"]  # drug T2 has no annotated modifier type


def test_build_prompt_equals_training_prompt() -> None:
    doc = make_doc()
    s = doc.sentences[0]
    for fmt in FORMATS:
        exs = build_examples(doc, fmt)
        assert exs[0].prompt == build_prompt(s, doc.label_set, "ner", fmt)
        for e in exs[1:]:
            assert e.prompt == build_prompt(s, doc.label_set, "re", fmt, head=e.head)
            assert e.prompt == build_prompt(s, doc.label_set, "re", fmt, head=s.entity(e.head))


def test_deterministic_order_and_multi_doc() -> None:
    d1, d2 = make_doc(site="a"), make_doc(site="b")
    a = build_examples([d1, d2], "html")
    b = build_examples([d1, d2], "html")
    assert a == b
    assert [e.site for e in a] == ["a"] * 4 + ["b"] * 4
    assert [(e.task, e.head) for e in a[:4]] == [("ner", None), ("re", "T1"), ("re", "T2"), ("re", "T3")]


def test_errors_are_clear() -> None:
    s = make_sentence()
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        build_examples(make_doc(), "xml")
    with pytest.raises(ValueError, match="needs label_set"):
        build_examples([s], "html")
    with pytest.raises(ValueError, match="unknown task"):
        build_examples(make_doc(), "html", tasks=("ner", "qa"))
    with pytest.raises(ValueError, match="needs a head"):
        build_prompt(s, ALL, "re", "html")
    with pytest.raises(ValueError, match="no entity with id 'T9'"):
        build_prompt(s, ALL, "re", "html", head="T9")
    with pytest.raises(ValueError, match="no modifier"):
        build_prompt(s, LabelSet(frozenset({"problem"}), frozenset()), "re", "html", head="T1")


def test_nested_spans_render_as_nested_tags() -> None:
    spans = [Span(3, 13, "problem"), Span(3, 8, "bodyloc"), Span(0, 2, "negation")]
    assert render_html(TEXT[:14], spans) == (
        '<span class="negation">No</span> <span class="problem"><span class="bodyloc">chest</span> pain</span>,'
    )
    same_extent = [Span(3, 13, "problem"), Span(3, 13, "test")]
    assert render_html(TEXT[:13], same_extent) == (
        'No <span class="problem"><span class="test">chest pain</span></span>'
    )
    assert unrepresentable_spans(spans) == [] and unrepresentable_spans(same_extent) == []


def test_crossing_spans_keep_the_earliest_and_are_counted() -> None:
    spans = [Span(3, 13, "problem"), Span(9, 17, "test")]
    kept, skipped = split_representable(spans)
    assert kept == [Span(3, 13, "problem")] and skipped == [Span(9, 17, "test")]
    assert render_html(TEXT, spans) == render_html(TEXT, kept)
    assert unrepresentable_spans(spans, "json") == []
    assert [d["text"] for d in json.loads(render_json(TEXT, spans))] == ["chest pain", "pain, sh"]
    s = make_sentence()
    crossing = Sentence(
        s.id,
        s.start,
        s.end,
        s.text,
        (Entity("A", "problem", 3, 13, "chest pain"), Entity("B", "test", 9, 17, "pain, sh")),
    )
    assert count_unrepresentable([crossing], "html", label_set=ALL) == {"ner": 1, "re": 0}
    assert count_unrepresentable([crossing], "json", label_set=ALL) == {"ner": 0, "re": 0}


def test_allowed_types() -> None:
    assert allowed_types(ALL, "ner") == ("problem", "treatment", "test", "drug")
    assert allowed_types(ALL, "re", "drug") == ("frequency", "negation", "strength")
    with pytest.raises(ValueError):
        allowed_types(ALL, "re")


def _random_laminar(rng: random.Random, n: int) -> list[Span]:
    """Random properly nested spans (no crossing) over a text of length n, none with whitespace edges."""
    out: list[Span] = []

    def fill(lo: int, hi: int, depth: int) -> None:
        pos = lo
        while pos < hi - 1 and depth < 3:
            a = rng.randint(pos, hi - 1)
            b = rng.randint(a + 1, min(hi, a + 12))
            out.append(Span(a, b, rng.choice(["problem", "drug", "test", "treatment"])))
            if rng.random() < 0.5:
                fill(a, b, depth + 1)
            pos = b + rng.randint(0, 5)

    fill(0, n, 0)
    return out


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_render_then_parse_round_trip_on_random_spans(fmt: str) -> None:
    rng = random.Random(7)
    alphabet = "abcdefghij<>&'\"[]{}:;.,0123456789"  # no whitespace: parse trims span edges
    for _ in range(300):
        n = rng.randint(1, 60)
        text = "".join(rng.choice(alphabet) for _ in range(n))
        spans = set(_random_laminar(rng, n))
        out = FORMATS[fmt].render(text, spans)
        res = parse(out, text, "ner", fmt, ["problem", "drug", "test", "treatment"])
        if fmt == "html":
            assert res.spans == tuple(sorted(spans)), (text, out)
            assert res.n_failures == 0
        else:
            # JSON locates text by search, so repeated strings may map to an equal-text occurrence elsewhere;
            # the recovered spans always carry the same (type, text) multiset.
            got = sorted((s.type, text[s.start : s.end]) for s in res.spans)
            assert got == sorted((s.type, text[s.start : s.end]) for s in spans), (text, out)
