"""build_document (fedmedlora.corpora.common) and helpers shared by the test_corpora_* modules."""

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "corpora"


def sentence_view(docs):
    """{doc_id: [(sentence text, sorted entities, sorted modifiers as (type, text, head text))]}."""
    out = {}
    for d in docs:
        d.validate()
        rows = []
        for s in d.sentences:
            ents = {e.id: e for e in s.entities}
            rows.append(
                (
                    s.text,
                    sorted((e.type, e.text, e.attributes) for e in s.entities),
                    sorted((m.type, m.text, ents[m.head].text) for m in s.modifiers),
                )
            )
        out[d.id] = rows
    return out


# ---- build_document ----------------------------------------------------------------------------------------------
from collections import Counter  # noqa: E402

from fedmedlora.corpora.common import CorpusError, RawEntity, RawModifier, build_document  # noqa: E402
from fedmedlora.schema import LabelSet  # noqa: E402

LS = LabelSet(frozenset({"problem", "drug"}), frozenset({"severity", "dosage"}))


def build(text, ents, mods, drops=None, **kw):
    return build_document(
        doc_id="d", site="s", split="train", text=text, entities=ents, modifiers=mods, label_set=LS, meta={},
        drops=drops if drops is not None else Counter(), **kw,
    )  # fmt: skip


def test_offsets_become_sentence_relative():
    text = "Mild cough. Took aspirin 5 mg."
    doc = build(text, [RawEntity("T1", "problem", 5, 10), RawEntity("T2", "drug", 17, 24)],
                [RawModifier("M1", "severity", 0, 4, "T1"), RawModifier("M2", "dosage", 25, 29, "T2")])  # fmt: skip
    s0, s1 = doc.sentences
    assert (s0.id, s1.id) == ("d:0", "d:1")
    assert s1.entities[0].start == 5 and s1.entities[0].text == "aspirin"
    assert s1.modifiers[0].text == "5 mg" and s1.modifiers[0].head == "T2"


def test_drops_are_counted_by_reason():
    text = "Mild cough. Took aspirin."
    drops = Counter()
    doc = build(
        text,
        [RawEntity("T1", "problem", 5, 10), RawEntity("T9", "problem", 5, 10), RawEntity("T2", "drug", 17, 24),
         RawEntity("T3", "test", 0, 4)],
        [RawModifier("M1", "severity", 0, 4, "T9"),  # head is a duplicate of T1 -> remapped, kept
         RawModifier("M2", "severity", 0, 4, "T2"),  # severity cannot modify a drug
         RawModifier("M3", "dosage", 0, 4, "T1"),  # dosage cannot modify a problem
         RawModifier("M4", "dosage", 0, 4, "T2"),  # head in the other sentence
         RawModifier("M5", "severity", 0, 4, "T7")],  # unknown head
        drops,
    )  # fmt: skip
    assert [m.head for m in doc.sentences[0].modifiers] == ["T1"]
    assert drops == Counter({
        "entity problem: duplicate span (merged)": 1,
        "modifier severity: not valid for a drug head": 1,
        "modifier dosage: not valid for a problem head": 1,
        "modifier dosage: head is in another sentence": 1,
        "modifier severity: head entity was not kept": 1,
        "entity test: not in the site's label set": 1,
    })  # fmt: skip


def test_modifier_ids_are_made_unique():
    doc = build("Mild cough", [RawEntity("T1", "problem", 5, 10)], [RawModifier("T1", "severity", 0, 4, "T1")])
    assert doc.sentences[0].modifiers[0].id == "T1~2"


def test_span_outside_text_is_a_corpus_error():
    import pytest

    with pytest.raises(CorpusError, match="outside the text"):
        build("abc", [RawEntity("T1", "problem", 1, 9)], [])


def test_excluded_interval_removes_its_sentence():
    drops = Counter()
    doc = build("Bad one\nGood cough", [RawEntity("T1", "problem", 13, 18), RawEntity("T2", "problem", 0, 3)], [],
                drops, exclude=[(0, 3)], exclude_reason="excluded")  # fmt: skip
    assert [s.text for s in doc.sentences] == ["Good cough"] and doc.sentences[0].id == "d:0"
    assert drops == Counter({"entity problem: excluded": 1, "sentence: excluded": 1})
