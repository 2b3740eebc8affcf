"""Tests for fedmedlora.parsing: golden cases per failure reason, exact alignment, JSON search, fuzzing."""

from __future__ import annotations

import random

import pytest

from fedmedlora.parsing import ParseResult, parse, scan_html
from fedmedlora.schema import Span

S = "No chest pain , no palpitations ."
NER = ("problem", "treatment", "test", "drug")


def html(out: str, sentence: str = S, types=NER) -> ParseResult:
    return parse(out, sentence, "ner", "html", types)


def js(out: str, sentence: str = S, types=NER) -> ParseResult:
    return parse(out, sentence, "ner", "json", types)


CHEST = Span(3, 13, "problem")
PALP = Span(19, 31, "problem")


# ---------------------------------------------------------------------------------------------------- HTML


def test_html_well_formed() -> None:
    r = html('No <span class="problem">chest pain</span> , no <span class="problem">palpitations</span> .')
    assert r == ParseResult((CHEST, PALP), 0, {})


@pytest.mark.parametrize(
    "tag",
    [
        '<span class="problem">',
        "<span class='problem'>",
        "<span class=problem>",
        '<SPAN CLASS="Problem">',
        '<span  id="x" class = "problem" >',
        '< span class="problem">',
    ],
)
def test_html_tag_variants(tag: str) -> None:
    r = html(f"No {tag}chest pain</span > , no palpitations .")
    assert r.spans == (CHEST,) and r.n_failures == 0


def test_html_empty_and_plain_outputs() -> None:
    assert html("") == ParseResult((), 0, {})
    assert html(S) == ParseResult((), 0, {})


def test_html_unknown_type_is_dropped_and_counted() -> None:
    r = html('No <span class="disease">chest pain</span> , no <span class="problem">palpitations</span> .')
    assert r.spans == (PALP,) and r.failures == {"unknown_type": 1}
    # a type the site does not annotate is unknown too
    r = html('No <span class="drug">chest pain</span> , no palpitations .', types=("problem",))
    assert r.spans == () and r.failures == {"unknown_type": 1}


def test_html_nested_spans() -> None:
    r = parse(
        'No <span class="problem"><span class="bodyloc">chest</span> pain</span> , no palpitations .',
        S,
        "re",
        "html",
        ("problem", "bodyloc"),
    )
    assert r.spans == (Span(3, 8, "bodyloc"), CHEST) and r.n_failures == 0


def test_html_stray_close_and_unclosed() -> None:
    r = html('No </span><span class="problem">chest pain</span> , no <span class="problem">palpitations .')
    assert r.spans == (CHEST,)
    assert r.failures == {"stray_close": 1, "unclosed_tag": 1} and r.n_failures == 2


def test_html_truncated_inside_tag_keeps_earlier_spans() -> None:
    for cut in ("<", "<spa", '<span class="prob', "</spa"):
        r = html('No <span class="problem">chest pain</span> , no ' + cut)
        assert r.spans == (CHEST,), cut
        assert r.failures == {"truncated": 1}, cut
    r = html('No <span class="problem">chest pain</span> , no <span class="problem">palpi')
    assert r.spans == (CHEST,) and r.failures == {"unclosed_tag": 1}


def test_sentence_ending_in_lt_is_not_truncation() -> None:
    sent = "glucose <"
    r = html('<span class="test">glucose</span> <', sentence=sent)
    assert r.spans == (Span(0, 7, "test"),) and r.n_failures == 0


def test_html_text_mismatch_inside_span() -> None:
    r = html('No <span class="problem">chest pains</span> , no <span class="problem">palpitations</span> .')
    assert r.spans == (PALP,) and r.failures == {"text_mismatch": 1}
    # a span whose text is not contiguous in the sentence (a word dropped inside it)
    r = html('No <span class="problem">chest , no palpitations</span> .')
    assert r.spans == () and r.failures == {"text_mismatch": 1}


def test_html_edits_outside_spans_shift_offsets_exactly() -> None:
    # the model drops "No " and re-spaces the comma: spans still map to their original offsets
    r = html('<span class="problem">chest pain</span>, no <span class="problem">palpitations</span>.')
    assert r.spans == (CHEST, PALP) and r.n_failures == 0


def test_html_whitespace_at_span_edges_is_trimmed() -> None:
    r = html('No<span class="problem"> chest pain </span>, no palpitations .')
    assert r.spans == (CHEST,) and r.n_failures == 0


def test_html_repeated_mentions_map_to_their_own_occurrence() -> None:
    sent = "pain in the arm and pain in the leg ."
    r = html('pain in the arm and <span class="problem">pain</span> in the leg .', sentence=sent)
    assert r.spans == (Span(20, 24, "problem"),)


def test_html_empty_span_and_no_class() -> None:
    r = html('No <span class="problem"></span>chest pain , no <span>palpitations</span> .')
    assert r.spans == () and r.failures == {"empty_span": 1, "no_class": 1}


def test_html_generation_running_into_next_section_is_cut() -> None:
    r = html('No <span class="problem">chest pain</span> , no palpitations .\n### Input Text:\n<span class="problem">x')
    assert r.spans == (CHEST,) and r.n_failures == 0


def test_html_no_fuzzy_character_set_matching() -> None:
    # The reference code's character-set Jaccard would accept "god" for "dog" and "on" for "no"; we do not.
    r = html('<span class="problem">god</span> bite', sentence="dog bite")
    assert r.spans == () and r.failures == {"text_mismatch": 1}


def test_html_duplicate_span_kept_once() -> None:
    r = html('No <span class="problem"><span class="problem">chest pain</span></span> , no palpitations .')
    assert r.spans == (CHEST,) and r.failures == {"duplicate": 1}


def test_scan_html_positions() -> None:
    text, spans, fails = scan_html('a<span class="x">bc</span>d')
    assert text == "abcd" and spans == [(1, 3, "x")] and not fails


# ---------------------------------------------------------------------------------------------------- JSON


def test_json_well_formed_and_out_of_order() -> None:
    good = '[{"type": "problem", "text": "chest pain"}, {"type": "problem", "text": "palpitations"}]'
    assert js(good) == ParseResult((CHEST, PALP), 0, {})
    # the reference code loses "palpitations" here (authors_code.md §9.3); we find both
    rev = '[{"type": "problem", "text": "palpitations"}, {"type": "problem", "text": "chest pain"}]'
    assert js(rev) == ParseResult((CHEST, PALP), 0, {})


def test_json_code_fence_prose_and_trailing_garbage() -> None:
    out = 'Sure! [see below]\n```json\n[{"type": "problem", "text": "chest pain"}]\n``` and more ] text ['
    assert js(out) == ParseResult((CHEST,), 0, {})


def test_json_repeated_mentions_use_successive_occurrences() -> None:
    sent = "pain in the arm and pain in the leg ."
    out = "[" + ", ".join(['{"type": "problem", "text": "pain"}'] * 3) + "]"
    r = js(out, sentence=sent)
    assert r.spans == (Span(0, 4, "problem"), Span(20, 24, "problem"))
    assert r.failures == {"not_found": 1}


def test_json_cursor_then_wrap_around() -> None:
    sent = "a b a c"
    out = '[{"type": "test", "text": "c"}, {"type": "test", "text": "a"}, {"type": "test", "text": "a"}]'
    r = js(out, sentence=sent)
    assert r.spans == (Span(0, 1, "test"), Span(4, 5, "test"), Span(6, 7, "test")) and r.n_failures == 0


def test_json_ignores_letter_case_only_when_the_exact_text_is_absent() -> None:
    sent = "Aspirin was stopped; aspirin allergy noted ."
    r = js('[{"type": "drug", "text": "ASPIRIN"}, {"type": "drug", "text": "aspirin"}]', sentence=sent)
    # "aspirin" exists exactly (offset 21): it takes that one; "ASPIRIN" exists only case-folded and takes offset 0
    assert r.spans == (Span(0, 7, "drug"), Span(21, 28, "drug")) and r.n_failures == 0
    r = js('[{"type": "problem", "text": "Chest Pain"}]')
    assert r == ParseResult((CHEST,), 0, {})
    assert js('[{"type": "problem", "text": "chest  pain"}]').failures == {"not_found": 1}  # no other leniency
    head = Span(21, 28, "drug")
    r = parse('[{"type": "negation", "text": "STOPPED"}]', sent, "re", "json", ["negation"], head=head)
    assert r.spans == (Span(12, 19, "negation"),) and r.n_failures == 0


def test_json_same_extent_different_types() -> None:
    out = '[{"type": "problem", "text": "chest pain"}, {"type": "test", "text": "chest pain"}]'
    r = js(out)
    assert r.spans == (CHEST, Span(3, 13, "test")) and r.n_failures == 0


def test_json_truncated_keeps_complete_items() -> None:
    out = '[{"type": "problem", "text": "chest pain"}, {"type": "problem", "text": "palpi'
    assert js(out) == ParseResult((CHEST,), 1, {"truncated": 1})
    assert js('[{"type": "problem", "text": "chest pain"},') == ParseResult((CHEST,), 1, {"truncated": 1})


def test_json_failures() -> None:
    assert js("no list here").failures == {"invalid_json": 1}
    assert js("[{type: problem}]").failures == {"invalid_json": 1}
    r = js('[{"type": "problem"}, "chest pain", {"type": "problem", "text": "chest pain"}]')
    assert r.spans == (CHEST,) and r.failures == {"invalid_item": 2}
    r = js('[{"type": "symptom", "text": "chest pain"}, {"type": "problem", "text": "heart attack"}]')
    assert r.spans == () and r.failures == {"not_found": 1, "unknown_type": 1}
    assert js('[{"type": "problem", "text": "  "}]').failures == {"empty_span": 1}
    assert js("[]") == ParseResult((), 0, {})


def test_json_accepts_reference_entity_key() -> None:
    assert js('[{"entity": "problem", "text": "chest pain"}]').spans == (CHEST,)


def test_parse_config_errors_raise() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        parse("", S, "ner", "xml", NER)
    with pytest.raises(ValueError, match="unknown task"):
        parse("", S, "qa", "html", NER)


# ---------------------------------------------------------------------------------------------------- fuzzing

PIECES = [
    "<span",
    " class=",
    '"problem"',
    "'drug'",
    "test",
    ">",
    "</span>",
    "<",
    "/",
    "span",
    "chest pain",
    " ",
    ",",
    "no",
    "[",
    "]",
    "{",
    "}",
    '"type"',
    ":",
    '"text"',
    '"',
    "```json",
    "\n###",
    "\\",
    "é",
    "\x00",
    "palpitations",
    "<span class='problem'>",
    '{"type": "problem", "text": "chest pain"}',
    "[[[[[[",
    "]]]",
]


def _check(r: ParseResult, sentence: str, types) -> None:
    assert isinstance(r, ParseResult)
    assert r.n_failures == sum(r.failures.values()) and all(v > 0 for v in r.failures.values())
    assert len(set(r.spans)) == len(r.spans)
    for sp in r.spans:
        assert 0 <= sp.start < sp.end <= len(sentence) and sp.type in types


@pytest.mark.parametrize("fmt", ["html", "json"])
def test_fuzz_never_raises_seeded(fmt: str) -> None:
    rng = random.Random(1234)
    for _ in range(1500):
        out = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 25)))
        if rng.random() < 0.2:
            out = "".join(chr(rng.randint(0, 0x2FF)) for _ in range(rng.randint(0, 40)))
        sentence = rng.choice([S, "", "<", "a < b > c", "chest pain chest pain"])
        _check(parse(out, sentence, "ner", fmt, NER), sentence, NER)


def test_fuzz_never_raises_hypothesis() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(
        out=st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=5)), max_size=30).map("".join),
        sentence=st.text(max_size=40),
        fmt=st.sampled_from(["html", "json"]),
    )
    def run(out: str, sentence: str, fmt: str) -> None:
        _check(parse(out, sentence, "ner", fmt, NER), sentence, NER)

    run()


def test_deep_nesting_does_not_blow_up() -> None:
    deep = "[" * 100_000
    r = js(deep)
    assert r.spans == () and r.n_failures >= 1
    r = html('<span class="problem">' * 5000 + "chest pain" + "</span>" * 5000)
    assert r.spans == (CHEST,) and r.failures == {"duplicate": 4999}


def test_json_re_with_head_takes_occurrence_nearest_to_head() -> None:
    sent = "no fever today ; cough , no wheeze"
    head = Span(28, 34, "problem")  # "wheeze"
    out = '[{"type": "negation", "text": "no"}]'
    assert parse(out, sent, "re", "json", ["negation"]).spans == (Span(0, 2, "negation"),)  # cursor: first "no"
    r = parse(out, sent, "re", "json", ["negation"], head=head)
    assert r.spans == (Span(25, 27, "negation"),) and r.n_failures == 0
    # each occurrence used once; then not_found
    r = parse(
        '[{"type": "negation", "text": "no"}, {"type": "negation", "text": "no"}, {"type": "negation", "text": "no"}]',
        sent,
        "re",
        "json",
        ["negation"],
        head=head,
    )
    assert r.spans == (Span(0, 2, "negation"), Span(25, 27, "negation")) and r.failures == {"not_found": 1}
    # HTML ignores head (positions are explicit)
    r = parse(
        '<span class="negation">no</span> fever today ; cough , no wheeze', sent, "re", "html", ["negation"], head=head
    )
    assert r.spans == (Span(0, 2, "negation"),)
