"""The BioC XML reader (fedmedlora.corpora.bioc)."""

import pytest

from fedmedlora.corpora.bioc import BioCError, document_text, read_bioc

XML = """<?xml version='1.0' encoding='UTF-8'?><!DOCTYPE collection SYSTEM 'BioC.dtd'>
<collection><source>x</source>
<document><id>123</id>
<passage><infon key="type">title</infon><offset>0</offset><text>Drug X toxicity.</text>
<annotation id='0'><infon key="type">Chemical</infon><location offset='0' length='6' /><text>Drug X</text></annotation>
</passage>
<passage><infon key="type">abstract</infon><offset>17</offset><text>Liver failure occurred.</text>
<annotation id='1'><infon key="type">Disease</infon><infon key="CompositeRole">IndividualMention</infon>
<location offset='17' length='5' /><location offset='23' length='7' /><text>Liver failure</text></annotation>
</passage>
<relation id="R0"><infon key="relation">CID</infon></relation>
</document></collection>
"""


def test_reads_passages_annotations_and_rebuilds_text(tmp_path):
    p = tmp_path / "c.xml"
    p.write_text(XML, encoding="utf-8")
    (doc,) = read_bioc(p)
    assert doc.id == "123" and len(doc.passages) == 2
    text = document_text(doc)
    assert text == "Drug X toxicity. Liver failure occurred."
    a0 = doc.passages[0].annotations[0]
    assert a0.type == "Chemical" and text[0:6] == a0.text
    a1 = doc.passages[1].annotations[0]
    assert a1.locations == ((17, 5), (23, 7)) and a1.infons["CompositeRole"] == "IndividualMention"
    assert doc.relations[0]["relation"] == "CID"


def test_gap_between_passages_is_filled_with_spaces(tmp_path):
    p = tmp_path / "c.xml"
    p.write_text(XML.replace("<offset>17</offset>", "<offset>19</offset>"), encoding="utf-8")
    assert document_text(read_bioc(p)[0]) == "Drug X toxicity.   Liver failure occurred."


def test_overlapping_passages_are_an_error(tmp_path):
    p = tmp_path / "c.xml"
    p.write_text(XML.replace("<offset>17</offset>", "<offset>3</offset>"), encoding="utf-8")
    with pytest.raises(BioCError, match="document 123: passage at offset 3 overlaps"):
        document_text(read_bioc(p)[0], str(p))


@pytest.mark.parametrize(
    "bad,msg",
    [
        ("<offset>0</offset>", "passage offset: expected an integer"),
        ("<id>123</id>", "<id> is missing"),
        ("</collection>", "not well-formed XML"),
    ],
)
def test_malformed_input_names_file_and_document(tmp_path, bad, msg):
    repl = {"<offset>0</offset>": "<offset>zero</offset>", "<id>123</id>": "<id></id>", "</collection>": "</coll>"}
    p = tmp_path / "c.xml"
    p.write_text(XML.replace(bad, repl[bad]), encoding="utf-8")
    with pytest.raises(BioCError, match=msg) as ei:
        read_bioc(p)
    assert str(p) in str(ei.value)
