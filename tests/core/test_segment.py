"""Sentence segmentation: offsets, abbreviations, protected spans (fedmedlora.segment)."""

import pytest

from fedmedlora.segment import split_sentences


def texts(text, **kw):
    return [text[s:e] for s, e in split_sentences(text, **kw)]


def test_splits_on_punctuation_followed_by_capital_or_digit():
    t = "Fever resolved. Cough persisted! Was it viral? 3 days later it stopped."
    assert texts(t) == ["Fever resolved.", "Cough persisted!", "Was it viral?", "3 days later it stopped."]


def test_no_split_before_lowercase_or_inside_numbers():
    t = "Dose was 2.5 mg. daily use is advised. pH 7.4 was normal."
    assert texts(t) == [t]


@pytest.mark.parametrize(
    "t",
    [
        "Seen by Dr. Smith today.",
        "Aspirin vs. Placebo was compared.",
        "Anticoagulants, e.g. Warfarin, were stopped.",
        "Statins, i.e. Atorvastatin, were given.",
        "Take 5 mg. Twice a day was wrong.",
        "See Fig. 2 for details.",
        "Patient No. 4 improved.",
        "As shown by Smith et al. The effect was large.",
        "Written by J. Smith in 2001.",
    ],
)
def test_abbreviations_do_not_end_a_sentence(t):
    assert texts(t) == [t]


def test_newlines_end_sentences_and_crlf_offsets_are_kept():
    t = "First line  \r\nSecond line\r\n\r\nThird"
    spans = split_sentences(t)
    assert [t[s:e] for s, e in spans] == ["First line", "Second line", "Third"]
    assert spans[1] == (t.index("Second"), t.index("Second") + len("Second line"))


def test_newline_rule_can_be_disabled():
    assert texts("a\nb", newlines=False) == ["a\nb"]
    assert texts("One. Two.", punctuation=False) == ["One. Two."]


def test_protected_span_merges_sentences_it_would_cut():
    t = "Chest pain. Numbness followed. Then sleep."
    s = t.index("pain")
    e = t.index("Numbness") + len("Numbness")
    assert texts(t, protected=[(s, e)]) == ["Chest pain. Numbness followed.", "Then sleep."]


def test_protected_span_across_a_newline_and_into_trimmed_whitespace():
    t = "acute  \nhepatitis\nnext"
    assert texts(t, protected=[(0, t.index("hepatitis") + 9)]) == ["acute  \nhepatitis", "next"]
    t2 = "Pain \nNext"
    assert texts(t2, protected=[(0, 5)]) == ["Pain ", "Next"]  # a span ending in whitespace stays whole


def test_every_non_space_character_is_covered_once_and_spans_are_ordered():
    t = "A b. C d!  E f? G\n\nh i. J. K."
    spans = split_sentences(t, protected=[(2, 8)])
    covered = [i for s, e in spans for i in range(s, e)]
    assert covered == sorted(set(covered))
    assert all(i in covered for i, ch in enumerate(t) if not ch.isspace())


def test_protected_interval_outside_text_is_an_error():
    with pytest.raises(ValueError, match="outside the text"):
        split_sentences("abc", protected=[(1, 9)])


def test_empty_and_whitespace_text():
    assert split_sentences("") == []
    assert split_sentences(" \n ") == []


def test_deterministic():
    t = "Alpha beta. Gamma delta. Epsilon."
    assert split_sentences(t) == split_sentences(t)
