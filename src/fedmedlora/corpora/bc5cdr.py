"""BC5CDR (BioCreative V CDR, BioC XML) → ``schema.Document``.

Owns the BC5CDR quirks: document text = title + " " + abstract, rebuilt from the passage offsets
(``bioc.document_text``); composite mentions (keep the ``CompositeMention`` span, drop its ``IndividualMention``
parts); the one known offset quirk of the training set (PMID 15863244, "midline (MD) defects" stored 2 characters
early), repaired by searching the annotated text within ``REPAIR_WINDOW`` characters and counted as repaired.
One document per abstract, split = the official file (Training → train, Development → dev, Test → test).
Must not import torch, transformers, peft or flwr.
"""

from __future__ import annotations

from pathlib import Path

from fedmedlora.corpora.bioc import BioCDocument, document_text, read_bioc
from fedmedlora.corpora.common import CorpusError, Drops, RawEntity, build_document, join_fragments
from fedmedlora.corpora.mapping import BC5CDR_ENTITIES, LABEL_SETS
from fedmedlora.schema import Document

SITE = "bc5cdr"
SPLIT_FILES = {
    "train": "CDR_TrainingSet.BioC.xml",
    "dev": "CDR_DevelopmentSet.BioC.xml",
    "test": "CDR_TestSet.BioC.xml",
}
REPAIR_WINDOW = 5


def bc5cdr_dir(root: str | Path) -> Path:
    """The folder holding the three BioC XML files."""
    root = Path(root)
    for cand in (root / "CDR.Corpus.v010516", root / "bc5cdr" / "CDR.Corpus.v010516", root):
        if all((cand / f).is_file() for f in SPLIT_FILES.values()):
            return cand
    raise CorpusError(f"{root}: no BC5CDR BioC files (expected CDR.Corpus.v010516/CDR_*Set.BioC.xml)")


def _locate(text: str, offset: int, length: int, expected: str, drops: Drops, label: str) -> tuple[int, int] | None:
    """The span of one location, repairing a small offset shift; ``None`` when it cannot be found."""
    if text[offset : offset + length] == expected:
        return offset, offset + length
    for delta in sorted(range(-REPAIR_WINDOW, REPAIR_WINDOW + 1), key=abs):
        s = offset + delta
        if s >= 0 and text[s : s + len(expected)] == expected:
            drops[f"{label}: offset shifted by {delta} (repaired, kept)"] += 1
            return s, s + len(expected)
    return None


def convert_bc5cdr(bdoc: BioCDocument, split: str, drops: Drops, file: str = "") -> Document:
    """Map one BioC document onto the schema."""
    text = document_text(bdoc, file)
    anns = [a for p in bdoc.passages for a in p.annotations]
    composite = [a for a in anns if a.infons.get("CompositeRole") == "CompositeMention"]
    composite_spans = [(lo, lo + n) for a in composite for lo, n in a.locations]
    entities = []
    for a in anns:
        label = a.type or "<no type>"
        if label not in BC5CDR_ENTITIES:
            drops[f"{label}: label not mapped"] += 1
            continue
        role = a.infons.get("CompositeRole")
        if role == "IndividualMention":
            lo = min(o for o, _ in a.locations)
            hi = max(o + n for o, n in a.locations)
            if any(s <= lo and hi <= e for s, e in composite_spans):
                drops[f"{label}: IndividualMention of a composite (the CompositeMention is kept)"] += 1
                continue
        if len(a.locations) == 1:
            o, n = a.locations[0]
            span = _locate(text, o, n, a.text, drops, label)
            if span is None:
                drops[f"{label}: offsets do not match the text"] += 1
                continue
        else:
            frags = [(o, o + n) for o, n in a.locations]
            span = join_fragments(text, frags)
            if span is None:
                drops[f"{label}: discontinuous span"] += 1
                continue
        entities.append(RawEntity(f"A{a.id}", BC5CDR_ENTITIES[label], *span))
    for r in bdoc.relations:
        drops[f"relation {r.get('relation', '?')}: document-level, not in the schema"] += 1
    return build_document(
        doc_id=bdoc.id,
        site=SITE,
        split=split,
        text=text,
        entities=entities,
        modifiers=[],
        label_set=LABEL_SETS[SITE],
        meta={"source": SITE, "file": f"CDR.Corpus.v010516/{Path(file).name}", "pmid": bdoc.id},
        drops=drops,
        newlines=True,
        punctuation=True,
    )


def read_bc5cdr(root: str | Path, max_docs: int | None = None) -> tuple[list[Document], Drops]:
    """Read the official Training/Development/Test BioC files (at most ``max_docs`` documents per split)."""
    folder = bc5cdr_dir(root)
    drops: Drops = Drops()
    docs = []
    for split, name in SPLIT_FILES.items():
        bdocs = read_bioc(folder / name)
        if max_docs is not None:
            bdocs = bdocs[:max_docs]
        docs.extend(convert_bc5cdr(b, split, drops, file=str(folder / name)) for b in bdocs)
    return docs, drops
