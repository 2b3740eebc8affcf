"""The generic BRAT standoff reader (fedmedlora.corpora.brat)."""

import pytest

from fedmedlora.corpora.brat import BratError, parse_ann, read_brat
from fedmedlora.corpora.common import join_fragments


def test_parses_every_kind_of_line():
    text = "Severe pain in knee.\nNo fever."
    ann = (
        "T1\tSeverity 0 6\tSevere\nT2\tSign_symptom 7 11\tpain\nE1\tSign_symptom:T2 \n"
        "T3\tBiological_structure 15 19\tknee\nR1\tMODIFY Arg1:T3 Arg2:E1\t\n"
        "*\tOVERLAP E1 T1\nA1\tPOLARITY E1 NEG\nA2\tSpeculated E1\n#1\tAnnotatorNotes T1\tnote\nN1\tReference T1 x:1\n"
    )
    doc = parse_ann(ann, text, "x.ann")
    assert doc.textbounds["T2"].fragments == ((7, 11),)
    assert doc.events["E1"].trigger == "T2"
    assert doc.resolve("E1").id == "T2" and doc.resolve("T3").id == "T3" and doc.resolve("E9") is None
    assert doc.relations[0].arg1 == "T3" and doc.relations[0].arg2 == "E1"
    assert doc.equivs[0].ids == ("E1", "T1")
    assert doc.attributes[0].value == "NEG" and doc.attributes[1].value is None
    assert doc.notes == 1 and doc.mismatches == []


def test_discontinuous_fragments_and_mismatch_detection():
    text = "in-dwelling lines or ports"
    doc = parse_ann("T1\tDevice 0 11;21 26\tin-dwelling ports\nT2\tDevice 0 5\tWRONG\n", text, "x.ann")
    assert doc.textbounds["T1"].discontinuous and doc.textbounds["T1"].start == 0 and doc.textbounds["T1"].end == 26
    assert doc.mismatches == ["T2"]


def test_crlf_offsets_count_the_carriage_return(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"line one\r\nasthma\r\n")
    (tmp_path / "a.ann").write_bytes(b"T1\tCondition 10 16\tasthma\n")
    doc = read_brat(tmp_path / "a.txt")
    assert doc.mismatches == [] and doc.text[10:16] == "asthma"


@pytest.mark.parametrize(
    "line,msg",
    [
        ("T1\tCondition ten 16\tx", "bad offsets"),
        ("T1\tCondition 9 3\tx", "end before start"),
        ("R1\tHas_value T1 T2", "not 'Type Arg1:X Arg2:Y'"),
        ("E1\tSign_symptom:T9 ", "not a text-bound"),
        ("Q1\tWhat 1 2", "unknown annotation id"),
        ("T1", "expected '<id><TAB><annotation>'"),
    ],
)
def test_malformed_lines_name_file_and_line(line, msg):
    with pytest.raises(BratError, match=msg) as ei:
        parse_ann("T5\tCondition 0 1\ta\n" + line + "\n", "a" * 20, "bad.ann")
    if "not a text-bound" not in msg:
        assert "bad.ann:2" in str(ei.value)


def test_missing_file(tmp_path):
    with pytest.raises(BratError, match="no such file"):
        read_brat(tmp_path / "nope.txt")


def test_join_fragments_policy():
    text = "acute  \nhepatitis and other"
    assert join_fragments(text, [(0, 5), (8, 17)]) == (0, 17)  # whitespace gap -> covering span
    assert join_fragments(text, [(0, 5), (22, 27)]) is None  # words in the gap -> cannot keep
    assert join_fragments(text, [(0, 9), (5, 12)]) is None  # overlapping fragments


def test_span_running_into_the_line_break_is_trimmed_not_dropped():
    text = "prostate cancer\r\nnext"
    doc = parse_ann("T1\tCondition 0 16\tprostate cancer\n", text, "x.ann")
    assert doc.repaired == ["T1"] and doc.mismatches == []
    assert doc.textbounds["T1"].fragments == ((0, 15),)
