"""Extraction + scoring glue with a fake generator (no model): gold answers score 1.0, garbage scores 0."""

import json

import pytest

from fedmedlora.extract import ExtractionStats, NotesError, extract_sentences, read_notes, to_brat, to_output_record
from fedmedlora.prompts import build_examples
from fedmedlora.schema import Document, Entity, LabelSet, Modifier, Sentence

TEXT = "No chest pain. Aspirin 81 mg daily."
LS = LabelSet(frozenset({"problem", "drug"}), frozenset({"negation", "strength", "frequency"}))


def gold_doc() -> Document:
    s1 = Sentence(
        "d:0",
        0,
        14,
        TEXT[:14],
        (Entity("T1", "problem", 3, 13, "chest pain"),),
        (Modifier("M1", "negation", 0, 2, "No", "T1"),),
    )
    s2 = Sentence(
        "d:1",
        15,
        len(TEXT),
        TEXT[15:],
        (Entity("T2", "drug", 0, 7, "Aspirin"),),
        (Modifier("M2", "strength", 8, 13, "81 mg", "T2"), Modifier("M3", "frequency", 14, 19, "daily", "T2")),
    )
    return Document("d", "demo", "test", TEXT, (s1, s2), LS)


def oracle(fmt: str):
    """A 'model' that answers every prompt with the gold target built for it."""
    answers = {ex.prompt: ex.target for ex in build_examples(gold_doc(), fmt)}
    return lambda prompts: [answers[p] for p in prompts]


def score(preds, items):
    from fedmedlora.metrics import score_sentences

    return score_sentences(items, preds, ("ner", "re"))


@pytest.mark.parametrize("fmt", ["html", "json"])
def test_oracle_answers_score_perfectly(fmt):
    items = [(s, LS) for s in gold_doc().sentences]
    stats = ExtractionStats()
    preds = extract_sentences(items, oracle(fmt), fmt=fmt, heads="gold", stats=stats)
    ev = score(preds, items)
    for task in ("ner", "re"):
        for rule in ("strict", "lenient"):
            assert ev.get(task, rule).f1 == 1.0, (task, rule)
    assert stats.to_dict()["prompts"] == {"ner": 2, "re": 2}
    assert sum(stats.failures.values()) == 0


def test_garbage_answers_score_zero_and_count_failures():
    items = [(s, LS) for s in gold_doc().sentences]
    stats = ExtractionStats()
    preds = extract_sentences(
        items, lambda ps: ["<span class='problem'>unicorn" for _ in ps], heads="gold", stats=stats
    )
    ev = score(preds, items)
    assert ev.get("ner", "strict").tp == 0 and ev.get("ner", "strict").fn == 2
    assert ev.get("re", "strict").fn == 3
    assert stats.to_dict()["parse_failure_rate"]["ner"] == 1.0


def test_predicted_heads_feed_relation_extraction_and_outputs():
    items = [(s, LS) for s in gold_doc().sentences]
    preds = extract_sentences(items, oracle("html"), heads="predicted")
    assert [e.text for s in preds for e in s.entities] == ["chest pain", "Aspirin"]
    assert [m.text for s in preds for m in s.modifiers] == ["No", "81 mg", "daily"]
    doc = Document("d", "demo", "test", TEXT, tuple(preds), LS)
    rec = to_output_record(doc)
    for e in rec["entities"] + rec["modifiers"]:
        assert TEXT[e["start"] : e["end"]] == e["text"]
    ann = to_brat(doc)
    assert "T1\tproblem 3 13\tchest pain" in ann and "has_negation Arg1:T1 Arg2:T2" in ann


def test_read_notes_errors_name_file_and_line(tmp_path):
    (tmp_path / "a.txt").write_text("Line one.\r\nLine two.", encoding="utf-8", newline="")
    (tmp_path / "b.jsonl").write_text(json.dumps({"id": "n1", "text": "Hi."}) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(NotesError, match=r"b.jsonl:2: not valid JSON"):
        read_notes([tmp_path])
    (tmp_path / "b.jsonl").write_text(json.dumps({"id": "n1", "text": "Hi."}) + "\n", encoding="utf-8")
    notes = read_notes([tmp_path])
    assert notes == [("a", "Line one.\r\nLine two."), ("n1", "Hi.")]
    with pytest.raises(NotesError, match="no such file"):
        read_notes([tmp_path / "missing.txt"])
    (tmp_path / "c.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(NotesError, match=r"c.jsonl:1: not UTF-8 text"):
        read_notes([tmp_path / "c.jsonl"])


def test_note_ids_must_be_unique_and_path_safe(tmp_path):
    from fedmedlora.extract import check_note_ids

    check_note_ids([("n1", "a"), ("n-2.txt", "b")], [tmp_path])
    with pytest.raises(NotesError, match="occurs twice"):
        check_note_ids([("n1", "a"), ("n1", "b")], [tmp_path])
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(NotesError, match="note id"):
            check_note_ids([(bad, "a")], [tmp_path])
