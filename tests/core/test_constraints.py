"""constraints.JsonAnswerState: accepts exactly the JSON answers the parser maps without any failure."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from fedmedlora.constraints import count_occurrences, count_words, start_state
from fedmedlora.parsing import parse_json

SENT = 'No "chest" pain, no pain; aspirin 81 mg.'
TYPES = ("problem", "negation", "drug")


def test_valid_answers_are_accepted_and_parse_cleanly():
    items = [
        {"type": "negation", "text": "No"},
        {"type": "problem", "text": '"chest" pain'},
        {"type": "problem", "text": "pain"},
        {"type": "drug", "text": "aspirin"},
    ]
    answer = json.dumps(items, ensure_ascii=False)
    state = start_state(SENT, TYPES).feed(answer)
    assert state is not None and state.done and state.finish() == answer
    res = parse_json(answer, SENT, TYPES)
    assert res.n_failures == 0 and len(res.spans) == 4
    assert start_state(SENT, TYPES).feed("[]").done


def test_invalid_answers_are_rejected_at_the_first_bad_character():
    s = start_state(SENT, TYPES)
    assert s.feed(" [") is None  # layout is fixed
    assert s.feed('[{"type": "test"') is None  # type not allowed
    assert s.feed('[{"type": "pro') is not None  # a prefix of an allowed type
    assert s.feed('[{"type": "problem", "text": "headache') is None  # not in the sentence
    assert s.feed('[{"type": "problem", "text": " pain') is None  # leading whitespace would be stripped
    assert s.feed('[{"type": "problem", "text": ""') is None  # empty span
    assert s.feed('[{"type": "drug", "text": "aspir"') is None  # would cut the word "aspirin"
    assert s.feed('[{"type": "drug", "text": "spirin') is None  # starts inside a word
    assert s.feed('[{"type": "problem", "text": "\\u0041') is None  # \\u escapes are not part of the language
    two = '[{"type": "problem", "text": "pain"}, {"type": "problem", "text": "pain"}'
    assert s.feed(two) is not None  # "pain" occurs twice
    assert s.feed(two + ', {"type": "problem", "text": "pain"') is None  # ... but not three times
    assert s.feed(two + ', {"type": "negation", "text": "pain"') is not None  # another type may take it
    assert s.feed("[]]") is None


def test_finish_closes_the_list_after_the_last_complete_item():
    s = start_state(SENT, TYPES)
    assert s.finish() == "[]"
    assert s.feed("[").finish() == "[]"
    part = s.feed('[{"type": "drug", "text": "aspirin"}, {"type": "prob')
    assert part.finish() == '[{"type": "drug", "text": "aspirin"}]'
    assert s.feed('[{"type": "drug", "text": "aspirin"}').finish() == '[{"type": "drug", "text": "aspirin"}]'


def test_occurrence_counts():
    assert count_occurrences("aa", "aaa") == 2
    assert count_words("pain", SENT) == 2 and count_words("ain", SENT) == 0


CHARS = st.sampled_from(list('[]{}", :\\abcdeginoprstuyNfm8'))


@settings(max_examples=300, deadline=None)
@given(st.lists(CHARS, max_size=80), st.sampled_from(['No "chest" pain.', "a b a", "aspirin, aspirin"]))
def test_every_accepted_prefix_finishes_into_a_clean_parse(chars, sentence):
    """Walk random characters through the automaton, skipping those it rejects: whatever prefix results, its
    finished answer parses with zero failures and every span is the sentence's own text."""
    state = start_state(sentence, TYPES)
    for ch in chars:
        nxt = state.feed(ch)
        if nxt is not None:
            state = nxt
    answer = state.finish()
    res = parse_json(answer, sentence, TYPES)
    assert res.n_failures == 0, (answer, res.failures)
    texts = [it["text"].strip() for it in json.loads(answer)]
    assert sorted(sentence[s.start : s.end] for s in res.spans) == sorted(texts)
