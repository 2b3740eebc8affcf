"""BC5CDR reader on fixtures: passages, composite mentions, offset repair (tests/fixtures/corpora/bc5cdr)."""

from test_corpora_common import FIXTURES, sentence_view

from fedmedlora.corpora import read_bc5cdr
from fedmedlora.corpora.mapping import LABEL_SETS


def test_document_text_splits_and_label_set():
    docs, _ = read_bc5cdr(FIXTURES / "bc5cdr")
    assert [(d.id, d.split) for d in docs] == [("11111111", "train"), ("55555555", "dev"), ("66666666", "test")]
    d = docs[0]
    assert d.text.startswith("Naloxone reverses ocular and visual toxicity of clonidine. Dr. Smith")
    assert d.label_set == LABEL_SETS["bc5cdr"] and not d.label_set.modifiers
    assert d.meta["file"] == "CDR.Corpus.v010516/CDR_TrainingSet.BioC.xml"


def test_composite_kept_individual_mentions_dropped():
    docs, drops = read_bc5cdr(FIXTURES / "bc5cdr")
    title = sentence_view(docs)["11111111"][0]
    assert title[1] == [
        ("drug", "Naloxone", ()),
        ("drug", "clonidine", ()),
        ("problem", "ocular and visual toxicity", ()),
    ]
    assert drops["Disease: IndividualMention of a composite (the CompositeMention is kept)"] == 2


def test_abbreviations_offset_repair_and_protected_sentence_merge():
    docs, drops = read_bc5cdr(FIXTURES / "bc5cdr")
    view = sentence_view(docs)["11111111"]
    assert view[1] == ("Dr. Smith et al. gave 5 mg. of naloxone to rats.", [("drug", "naloxone", ())], [])
    assert (
        drops["Chemical: offset shifted by -2 (repaired, kept)"]
        + drops["Chemical: offset shifted by 2 (repaired, kept)"]
        == 1
    )
    # an annotation across ". " keeps the two sentences together
    assert view[2][0] == "Chest pain. Numbness followed in 2 rats."
    assert drops["Chemical: offsets do not match the text"] == 1
    assert drops["relation CID: document-level, not in the schema"] == 3
