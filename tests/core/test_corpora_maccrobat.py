"""MACCROBAT reader on fixtures: events, MODIFY direction, attributes, OVERLAP (tests/fixtures/corpora/maccrobat)."""

from test_corpora_common import FIXTURES, sentence_view

from fedmedlora.corpora import read_maccrobat
from fedmedlora.corpora.mapping import LABEL_SETS


def load():
    docs, drops = read_maccrobat(FIXTURES / "maccrobat")
    return docs, sentence_view(docs)["00000001"], drops


def test_one_sentence_per_line_and_label_set_without_negation():
    docs, view, _ = load()
    assert len(docs) == 7 and len(view) == 5
    assert "negation" not in LABEL_SETS["maccrobat"].modifiers
    assert docs[0].label_set == LABEL_SETS["maccrobat"]


def test_modify_runs_modifier_to_head_and_overlap_gives_temporal():
    _, view, drops = load()
    assert view[0][1] == [("problem", "pain", ())]
    assert view[0][2] == [
        ("bodyloc", "left knee", "pain"),
        ("severity", "severe", "pain"),
        ("temporal", "3 March", "pain"),
    ]
    assert drops["equivalence OVERLAP: no time expression with a head in the same sentence"] == 1


def test_negation_is_an_attribute_not_a_modifier():
    _, view, drops = load()
    assert view[1] == ("She denied fever.", [("problem", "fever", ("negated",))], [])
    assert view[4][1] == [("problem", "chest pain", ("negated",))]
    assert drops["attribute TREND: no cue span, not in the schema"] == 1


def test_schema_validity_rules_and_drug_modifiers():
    _, view, drops = load()
    assert view[2][2] == [("labvalue", "9.1 g/dL", "hemoglobin")]  # bodyloc on a test is not valid: dropped
    assert drops["MODIFY Biological_structure→test: no schema modifier for this head type"] == 1
    assert view[3][2] == [("dosage", "400 mg", "ibuprofen"), ("duration", "5 days", "ibuprofen"),
                          ("frequency", "twice daily", "ibuprofen"), ("route", "orally", "ibuprofen")]  # fmt: skip
    assert drops["relation BEFORE: not a modifier relation"] == 1
