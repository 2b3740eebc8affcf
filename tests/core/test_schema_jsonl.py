import json

import pytest

from fedmedlora.jsonl import JsonlError, document_to_dict, read_documents, write_documents
from fedmedlora.schema import Document, Entity, LabelSet, Modifier, SchemaError, Sentence

TEXT = "No chest pain.\r\nAspirin 81 mg daily."


def make_doc() -> Document:
    s1 = Sentence(
        id="d1:0",
        start=0,
        end=14,
        text=TEXT[0:14],
        entities=(Entity("T1", "problem", 3, 13, "chest pain"),),
        modifiers=(Modifier("T2", "negation", 0, 2, "No", head="T1"),),
    )
    s2 = Sentence(
        id="d1:1",
        start=16,
        end=len(TEXT),
        text=TEXT[16:],
        entities=(Entity("T3", "drug", 0, 7, "Aspirin"),),
        modifiers=(
            Modifier("T4", "strength", 8, 13, "81 mg", head="T3"),
            Modifier("T5", "frequency", 14, 19, "daily", head="T3"),
        ),
    )
    return Document(
        id="d1",
        site="demo",
        split="train",
        text=TEXT,
        sentences=(s1, s2),
        label_set=LabelSet(frozenset({"problem", "drug"}), frozenset({"negation", "strength", "frequency"})),
        meta={"source": "handmade"},
    )


def test_roundtrip_is_exact(tmp_path):
    doc = make_doc()
    doc.validate()
    p = tmp_path / "x.jsonl"
    assert write_documents(p, [doc, doc]) == 2
    back = read_documents(p)
    assert back == [doc, doc]
    assert back[0].text == TEXT  # CRLF preserved
    assert back[0].meta == {"source": "handmade"}


def test_label_set_rejects_unknown_types():
    with pytest.raises(SchemaError, match="unknown entity type"):
        LabelSet(frozenset({"disease"}))
    assert LabelSet(frozenset({"drug"}), frozenset({"dosage", "negation"})).modifiers_for("drug") == (
        "dosage",
        "negation",
    )
    assert LabelSet(frozenset({"drug"}), frozenset({"bodyloc"})).modifiers_for("drug") == ()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["sentences"][0]["entities"][0].update(end=12), "entities\\[0\\]|text"),
        (
            lambda d: d["sentences"][0]["entities"][0].update(end="13"),
            r"sentences\[0\]\.entities\[0\]\.end: expected int",
        ),
        (lambda d: d["sentences"][0]["entities"][0].update(type="disease"), "unknown entity type"),
        (lambda d: d["sentences"][0]["modifiers"][0].update(head="T9"), "head"),
        (lambda d: d["sentences"][1]["modifiers"][0].update(type="bodyloc"), "cannot modify a 'drug'"),
        (lambda d: d.update(split="validation"), "split"),
        (lambda d: d["label_set"].update(modifiers=["negation"]), "not in the site's label set"),
        (lambda d: d.pop("text"), "text: missing"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, mutate, message):
    good = document_to_dict(make_doc())
    bad = json.loads(json.dumps(good))
    mutate(bad)
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(JsonlError, match=message) as info:
        read_documents(p)
    assert str(info.value).startswith(f"{p}:2:")


def test_invalid_json_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(JsonlError, match=r"bad.jsonl:1: not valid JSON"):
        read_documents(p)
    with pytest.raises(JsonlError, match="no such file"):
        read_documents(tmp_path / "missing.jsonl")
    p.write_bytes(b"\n" + b'{"id": "caf\xe9"}\n')  # Latin-1, not UTF-8
    with pytest.raises(JsonlError, match=r"bad.jsonl:2: not UTF-8 text"):
        read_documents(p)


def test_deploy_reads_round_records_through_the_same_reader(tmp_path):
    """The deploy watchdog's round log reader names file:line for bad JSON and for records without a round."""
    from fedmedlora.deploy import DeployError, completed_rounds

    assert completed_rounds(tmp_path) == []
    log = tmp_path / "rounds.jsonl"
    log.write_text('{"round": 0}\n\n{"round": 1, "sites": ["a"]}\n', encoding="utf-8")
    assert completed_rounds(tmp_path) == [0, 1]
    log.write_text('{"round": 0}\n{"round": \n', encoding="utf-8")
    with pytest.raises(DeployError, match=r"rounds.jsonl:2: not valid JSON"):
        completed_rounds(tmp_path)
    log.write_text('{"round": 0}\n{"sites": []}\n', encoding="utf-8")
    with pytest.raises(DeployError, match=r"rounds.jsonl:2: not a round record"):
        completed_rounds(tmp_path)


def test_re_heads_are_annotated_types_with_an_annotated_modifier():
    ls = LabelSet(entities=frozenset({"drug", "problem"}), modifiers=frozenset({"dosage"}))
    assert ls.is_re_head("drug")  # dosage is a drug modifier
    assert not ls.is_re_head("problem")  # annotated, but no problem modifier is
    assert not ls.is_re_head("test")  # not annotated at this site
    assert ls.has_relations and not LabelSet().has_relations
