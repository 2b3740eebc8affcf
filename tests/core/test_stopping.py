"""stopping: completeness and loop rules never fire before the parser's answer is final, and cut_at_stop agrees."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedmedlora.parsing import json_list_closed, parse_html, parse_json
from fedmedlora.stopping import (
    RepetitionRule,
    StopRule,
    answer_complete,
    cut_at_stop,
    html_sentence_reproduced,
)

SENT = "No chest pain, no [sic] fever."


@pytest.mark.parametrize(
    ("text", "closed"),
    [
        ("", False),
        ("[", False),
        ('[{"type": "problem", "text": "chest pain"}', False),
        ('[{"type": "problem", "text": "chest pain"}, ', False),
        ('[{"type": "problem", "text": "a]b"', False),  # "]" inside a string does not close the list
        ('[{"type": "problem", "text": "chest pain"}]', True),
        ("[]", True),
        ('```json\n[{"type": "problem", "text": "x"}]', True),
        ("Here you go: [] and more", True),
        ("[see below] [] ", False),  # the first "[" does not start a list: the parser may read a later one
    ],
)
def test_json_list_closed(text, closed):
    assert json_list_closed(text) is closed


def test_html_sentence_reproduced():
    assert html_sentence_reproduced('No <span class="problem">chest pain</span>, no [sic] fever.', SENT)
    assert not html_sentence_reproduced('No <span class="problem">chest pain, no [sic] fever.', SENT)  # open tag
    assert not html_sentence_reproduced('No <span class="problem">chest pain</span>, no', SENT)
    assert not html_sentence_reproduced("No chest pain, no [sic] fever.<spa", SENT)  # tag cut off
    assert html_sentence_reproduced("No chest pain, no [sic] fever.\n", SENT)


def test_a_new_section_completes_any_answer():
    assert answer_complete('<span class="problem">x\n### Input Text:', "html", SENT)
    assert answer_complete('[{"type": "problem", "text": "x"\n  ###', "json")
    assert not answer_complete("No chest", "html", None)  # no sentence, no completeness for HTML


JSON_ITEMS = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["problem", "drug"]), "text": st.sampled_from(["chest pain", "fever", "no", "x]"])}
    ),
    max_size=4,
)


@given(JSON_ITEMS, st.text(alphabet='[]{}", abc', max_size=12))
def test_once_complete_nothing_appended_changes_the_json_parse(items, tail):
    import json

    answer = json.dumps(items)
    rule = StopRule(fmt="json", repetition=None)
    for k in range(1, len(answer) + 1):
        if rule([], answer[:k]):
            assert parse_json(answer[:k], SENT, ["problem", "drug"]) == parse_json(
                answer[:k] + tail, SENT, ["problem", "drug"]
            )
            assert parse_json(answer[:k], SENT, ["problem", "drug"]) == parse_json(answer, SENT, ["problem", "drug"])
            break
    else:
        pytest.fail("a complete JSON list was never recognised")


def test_html_stop_keeps_the_parse():
    full = 'No <span class="problem">chest pain</span>, no [sic] <span class="problem">fever</span>.'
    cut = None
    for k in range(1, len(full) + 1):
        if html_sentence_reproduced(full[:k], SENT):
            cut = full[:k]
            break
    assert cut == full
    assert parse_html(cut, SENT, ["problem"]).spans == parse_html(full + "\n\n", SENT, ["problem"]).spans


def test_repetition_rule():
    rule = RepetitionRule(min_tokens=12, max_period=8, min_repeats=3)
    assert not rule([1, 2, 3] * 3)  # 9 tokens < min_tokens
    assert rule([9, 8] + [1, 2, 3] * 4)  # period 3, 12 tokens
    assert rule([7] * 12)
    assert not rule(list(range(40)))
    assert not rule([1, 2, 3, 4, 5, 6, 7, 8, 9] * 3)  # period 9 > max_period
    assert not rule([5, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 4])  # the loop was left


def test_cut_at_stop_matches_a_decoder_that_stops_early():
    pieces = ["[", '{"type": "problem", ', '"text": "fever"}', "]", " trailing", " text"]
    ids = list(range(len(pieces)))

    def decode(xs):
        return "".join(pieces[i] for i in xs)

    assert cut_at_stop(ids, decode, StopRule(fmt="json")) == [0, 1, 2, 3]
    assert cut_at_stop(ids, decode, StopRule(fmt=None, repetition=None)) == ids
    loop = [4, 5] * 20
    assert len(cut_at_stop(loop, lambda xs: "", StopRule(fmt=None))) == RepetitionRule().min_tokens


def test_for_prompt_reads_format_and_sentence_from_a_prompt():
    from fedmedlora.prompts import build_prompt
    from fedmedlora.schema import Entity, LabelSet, Sentence

    sent = Sentence("s", 0, len(SENT), SENT, (Entity("T1", "problem", 3, 13, "chest pain"),))
    ls = LabelSet(frozenset({"problem"}), frozenset({"negation"}))
    rule = StopRule.for_prompt(build_prompt(sent, ls, "re", "html", head="T1"))
    assert rule.fmt == "html" and rule.sentence == SENT  # the head markup is not part of the sentence
    assert StopRule.for_prompt("free text").fmt is None
