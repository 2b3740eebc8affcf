"""Chia reader on hand-written fixtures that exercise each trap (tests/fixtures/corpora/chia)."""

from test_corpora_common import FIXTURES, sentence_view

from fedmedlora.corpora import read_chia
from fedmedlora.corpora.mapping import LABEL_SETS, chia_mood_type, chia_multiplier_type, chia_qualifier_type


def load():
    docs, drops = read_chia(FIXTURES / "chia")
    return {d.id: d for d in docs}, sentence_view(docs), drops


def test_documents_and_metadata():
    docs, _, drops = load()
    assert sorted(docs)[:2] == ["NCT00000001_exc", "NCT00000001_inc"]
    assert "NCT00000006_inc" not in docs and drops["file: empty text"] == 1
    d = docs["NCT00000001_inc"]
    assert d.site == "chia" and d.label_set == LABEL_SETS["chia"]
    assert d.meta == {"source": "chia", "file": "chia_without_scope/NCT00000001_inc.ann", "trial": "NCT00000001"}
    assert "\r\n" in d.text  # CRLF text kept unchanged


def test_crlf_offsets_relations_and_lexicon_filters():
    _, view, drops = load()
    inc = view["NCT00000001_inc"]
    assert inc[0] == (
        "Adults with suspected severe asthma",
        [("problem", "asthma", ())],
        [("severity", "severe", "asthma"), ("uncertain", "suspected", "asthma")],
    )
    assert inc[1][2] == [("labvalue", "> 7%", "HbA1c"), ("temporal", "within 3 months", "HbA1c")]
    # punctuation splits a criterion line; Has_value on a drug is a dosage
    assert inc[2] == (
        "Taking prednisone >20 mg/day.",
        [("drug", "prednisone", ())],
        [("dosage", ">20 mg/day", "prednisone")],
    )
    assert inc[3][2] == [("negation", "No", "stroke"), ("temporal", "history of", "stroke")]
    # "other" is not a severity/course qualifier
    exc = view["NCT00000001_exc"]
    assert exc[2][2] == []
    assert drops["relation Has_qualifier on problem: no schema modifier (filtered)"] == 1
    # Has_value on a Person (age) has no schema equivalent
    assert drops["relation Has_value: head is not a kept entity"] == 1


def test_error_span_removes_its_sentence_and_counts_everything():
    _, view, drops = load()
    texts = [s[0] for s in view["NCT00000001_inc"]]
    assert not any("informed consent" in t for t in texts)
    assert drops["sentence: in a sentence removed for a Chia error span"] == 1
    assert drops["entity problem: in a sentence removed for a Chia error span"] == 1
    assert drops["Informed_consent: error span (its sentence is removed)"] == 1


def test_discontinuous_and_bad_offset_spans():
    _, view, drops = load()
    # whitespace-only gap (across a line break): covering span kept, the two lines become one sentence
    assert view["NCT00000001_exc"][1] == ("acute  \nhepatitis", [("problem", "acute  \nhepatitis", ())], [])
    assert drops["Device: discontinuous span"] == 1
    assert drops["Condition: offsets do not match the text"] == 1


def test_lexicon_filters():
    assert chia_qualifier_type("Severe") == "severity"
    assert chia_qualifier_type("moderate to severe") == "severity"
    assert chia_qualifier_type("clinically  significant") == "severity"
    assert chia_qualifier_type("chronic") == "course"
    assert chia_qualifier_type("other") is None and chia_qualifier_type("severe renal") is None
    assert chia_mood_type("suspected") == "uncertain" and chia_mood_type("known") is None
    assert chia_multiplier_type("75 mg") == "dosage" and chia_multiplier_type("daily") is None
