"""PHEE reader on fixtures: nested Treatment arguments, combinations, cues (tests/fixtures/corpora/phee)."""

from test_corpora_common import FIXTURES, sentence_view

from fedmedlora.corpora import read_phee
from fedmedlora.corpora.common import CorpusError


def test_official_splits_and_one_document_per_sentence():
    docs, _ = read_phee(FIXTURES / "phee")
    assert [(d.id, d.split) for d in docs] == [
        ("11111111_1", "train"), ("22222222_2", "train"), ("33333333_1", "dev"), ("44444444_1", "test")
    ]  # fmt: skip
    assert all(len(d.sentences) == 1 for d in docs)
    assert docs[0].meta["pmid"] == "11111111" and docs[0].meta["file"] == "data/json/train.json"


def test_drug_modifiers_attach_to_every_drug_of_the_treatment():
    docs, _ = read_phee(FIXTURES / "phee")
    (_, ents, mods) = sentence_view(docs)["11111111_1"][0]
    assert ents == [("drug", "cytarabine", ()), ("drug", "methotrexate", ()), ("problem", "leukemia", ()),
                    ("problem", "rash", ())]  # fmt: skip
    assert mods == sorted(
        [(t, txt, drug) for t, txt in (("route", "intrathecal"), ("dosage", "10 mg"), ("frequency", "daily"))
         for drug in ("methotrexate", "cytarabine")] + [("severity", "Severe", "rash")]
    )  # fmt: skip


def test_event_cues_attach_to_the_effect_and_shared_ids_are_merged():
    docs, _ = read_phee(FIXTURES / "phee")
    (_, ents, mods) = sentence_view(docs)["22222222_2"][0]
    assert ents == [("drug", "Lithium", ()), ("problem", "renal failure", ()), ("problem", "tremor", ())]
    assert mods == [("negation", "not", "tremor"), ("uncertain", "may", "renal failure")]


def test_discontinuous_effect_is_dropped_with_its_cue_and_counted():
    docs, drops = read_phee(FIXTURES / "phee")
    (_, ents, mods) = sentence_view(docs)["33333333_1"][0]
    assert ents == [("drug", "amoxicillin", ())]
    assert mods == [("temporal", "3 weeks", "amoxicillin")]
    assert drops["Effect: discontinuous span"] == 1
    assert drops["Negated: event has no Effect to attach the cue to"] == 1


def test_max_docs_and_missing_folder(tmp_path):
    docs, _ = read_phee(FIXTURES / "phee", max_docs=1)
    assert len(docs) == 3
    try:
        read_phee(tmp_path)
    except CorpusError as e:
        assert "no PHEE JSON files" in str(e)
    else:
        raise AssertionError("expected CorpusError")


def test_bad_json_line_names_file_and_line(tmp_path):
    d = tmp_path / "data" / "json"
    d.mkdir(parents=True)
    for s in ("train", "dev", "test"):
        (d / f"{s}.json").write_text(
            "{}\n" if s != "dev" else '{"id": "1_1", "context": "x", "annotations": []}\n{oops\n'
        )
    import pytest

    with pytest.raises(CorpusError, match=r"train.json:1: missing field"):
        read_phee(tmp_path)
