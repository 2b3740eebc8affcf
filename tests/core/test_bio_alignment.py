"""Pure span ↔ BIO alignment over hand-made token offsets (``fedmedlora.encoder.bio``)."""

from __future__ import annotations

import random

import pytest

from fedmedlora.encoder.bio import IGNORE_INDEX, BioScheme, spans_to_tags, tags_to_spans, token_windows
from fedmedlora.schema import ENTITY_TYPES, Span


def toks(text: str, pieces: list[str]) -> list[tuple[int, int]]:
    """Offsets of ``pieces`` found left to right in ``text`` (hand-made 'tokenizer')."""
    out, cur = [], 0
    for p in pieces:
        i = text.index(p, cur)
        out.append((i, i + len(p)))
        cur = i + len(p)
    return out


def test_scheme_labels_mask_and_codec():
    sch = BioScheme(ENTITY_TYPES)
    assert sch.labels == [
        "O",
        "B-problem",
        "I-problem",
        "B-treatment",
        "I-treatment",
        "B-test",
        "I-test",
        "B-drug",
        "I-drug",
    ]
    assert sch.allowed({"problem", "drug"}) == [True, True, True, False, False, False, False, True, True]
    assert sch.encode(["O", None, "I-drug"]) == [0, IGNORE_INDEX, 8]
    assert sch.decode([0, IGNORE_INDEX, 8]) == ["O", None, "I-drug"]
    with pytest.raises(ValueError, match="not in the scheme"):
        sch.allowed({"symptom"})
    with pytest.raises(ValueError, match="B-symptom"):
        sch.encode(["B-symptom"])


def test_multi_token_and_subword_entities_round_trip():
    text = "Started metformin for chest pain."
    offs = toks(text, ["Started", "met", "formin", "for", "chest", "pain", "."])
    gold = [Span(8, 17, "drug"), Span(22, 32, "problem")]
    tags, st = spans_to_tags(gold, offs, text=text)
    assert tags == ["O", "B-drug", "I-drug", "O", "B-problem", "I-problem", "O"]
    assert st.placed == 2 and st.not_token_aligned == 0
    assert tags_to_spans(tags, offs) == gold


def test_punctuation_adjacent_spans_stay_separate():
    text = "pain, fever."
    offs = toks(text, ["pain", ",", "fever", "."])
    gold = [Span(0, 4, "problem"), Span(6, 11, "problem")]
    tags, _ = spans_to_tags(gold, offs)
    assert tags == ["B-problem", "O", "B-problem", "O"]
    assert tags_to_spans(tags, offs) == gold
    # two adjacent spans of the same type with no O between stay two spans thanks to B-
    assert tags_to_spans(["B-problem", "B-problem"], [(0, 4), (4, 5)]) == [Span(0, 4, "problem"), Span(4, 5, "problem")]


def test_span_ending_mid_word_is_expanded_and_counted():
    text = "diabetic foot"
    offs = toks(text, ["diab", "et", "ic", "foot"])
    tags, st = spans_to_tags([Span(0, 5, "problem")], offs, text=text)  # "diabe" ends inside "et"
    assert tags == ["B-problem", "I-problem", "O", "O"]
    assert st.not_token_aligned == 1 and st.placed == 1
    assert st.examples == ["'diabe' -> 'diabet'"]
    assert tags_to_spans(tags, offs) == [Span(0, 6, "problem")]


def test_special_tokens_get_no_tag_and_close_spans():
    offs = [(0, 0), (0, 5), (6, 10), (0, 0), None]
    tags, _ = spans_to_tags([Span(0, 10, "problem")], offs)
    assert tags == [None, "B-problem", "I-problem", None, None]
    # a special (no-offset) token between two I- tags closes the span
    assert tags_to_spans(["B-problem", "I-problem", "I-problem"], [(0, 5), None, (6, 10)]) == [
        Span(0, 5, "problem"),
        Span(6, 10, "problem"),
    ]


def test_decoding_rules_for_ill_formed_sequences():
    offs = [(0, 2), (3, 5), (6, 8), (9, 11)]
    assert tags_to_spans(["I-drug", "I-drug", "O", "O"], offs) == [Span(0, 5, "drug")]  # I- without B- starts
    assert tags_to_spans(["B-drug", "I-test", "O", "I-test"], offs) == [
        Span(0, 2, "drug"),
        Span(3, 5, "test"),
        Span(9, 11, "test"),
    ]
    with pytest.raises(ValueError, match="2 tags for 4 tokens"):
        tags_to_spans(["O", "O"], offs)
    with pytest.raises(ValueError, match="not a BIO tag"):
        tags_to_spans(["X-drug", "O", "O", "O"], offs)


def test_overlapping_and_untokenised_spans_are_counted_not_silent():
    text = "breast cancer screening"
    offs = toks(text, ["breast", "cancer", "screening"])
    gold = [Span(0, 13, "problem"), Span(0, 23, "test"), Span(7, 13, "problem")]
    tags, st = spans_to_tags(gold, offs)
    # earlier + longer first: the 3-token test span wins, the two nested problems are dropped
    assert tags == ["B-test", "I-test", "I-test"]
    assert (st.spans, st.placed, st.dropped_overlap) == (3, 1, 2)
    tags, st = spans_to_tags([Span(0, 6, "problem")], offs[1:])  # window without the first token
    assert st.dropped_no_token == 1 and tags == ["O", "O"]


def test_crlf_and_whitespace_never_inside_a_token():
    text = "fever\r\n\tchills  noted"
    offs = toks(text, ["fever", "chills", "noted"])
    gold = [Span(0, 5, "problem"), Span(8, 14, "problem")]
    tags, st = spans_to_tags(gold, offs, text=text)
    assert tags == ["B-problem", "B-problem", "O"] and st.not_token_aligned == 0
    assert tags_to_spans(tags, offs) == gold
    # a span covering the CRLF decodes to exactly first-token start .. last-token end
    assert tags_to_spans(["B-problem", "I-problem", "O"], offs) == [Span(0, 14, "problem")]


def test_random_round_trip_of_token_aligned_spans():
    rng = random.Random(0)
    text = " ".join(f"w{i}" for i in range(60))
    offs = toks(text, [f"w{i}" for i in range(60)])
    for _ in range(200):
        spans, i = [], 0
        while i < len(offs):
            if rng.random() < 0.3:
                j = min(len(offs), i + rng.randint(1, 4))
                spans.append(Span(offs[i][0], offs[j - 1][1], rng.choice(ENTITY_TYPES)))
                i = j
            else:
                i += 1
        tags, st = spans_to_tags(spans, offs)
        assert st.placed == len(spans) and st.not_token_aligned == 0
        assert tags_to_spans(tags, offs) == sorted(spans)


def test_token_windows():
    assert token_windows(5, 10) == [range(5)]
    assert token_windows(10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert token_windows(0, 4) == [range(0)]
    assert token_windows(20, 6, center=(10, 12)) == [range(8, 14)]
    assert token_windows(20, 6, center=(0, 1)) == [range(0, 6)]
    assert token_windows(20, 6, center=(19, 20)) == [range(14, 20)]
    with pytest.raises(ValueError):
        token_windows(3, 0)
