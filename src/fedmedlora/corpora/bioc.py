"""A small BioC XML reader (stdlib ``xml.etree``), enough for BC5CDR-style collections.

Owns: ``BioCAnnotation``, ``BioCPassage``, ``BioCDocument``, ``read_bioc`` and ``document_text``. It knows nothing
about BC5CDR's labels. Must not import torch, transformers, peft or flwr.

BioC passage offsets are **document** offsets: passage *i* starts at ``passage.offset`` in the concatenated
document, and annotation ``location`` offsets are document offsets too. ``document_text`` rebuilds the document
text by placing each passage at its offset and filling any gap with spaces (BC5CDR: title, one space, abstract),
so that ``text[loc.offset : loc.offset + loc.length]`` is the annotated text. Overlapping passages raise
``BioCError``. The DTD named in the DOCTYPE is never fetched.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from fedmedlora.corpora.common import CorpusError


class BioCError(CorpusError):
    """Malformed BioC XML; the message names the file and the document id (or the XML line)."""


@dataclass(frozen=True)
class BioCAnnotation:
    id: str
    infons: dict[str, str]
    locations: tuple[tuple[int, int], ...]  # (offset, length), document offsets
    text: str

    @property
    def type(self) -> str:
        return self.infons.get("type", "")


@dataclass(frozen=True)
class BioCPassage:
    offset: int
    text: str
    infons: dict[str, str]
    annotations: tuple[BioCAnnotation, ...] = ()


@dataclass(frozen=True)
class BioCDocument:
    id: str
    passages: tuple[BioCPassage, ...]
    relations: tuple[dict[str, str], ...] = field(default=())


def _int(el: ET.Element, value: str | None, what: str, where: str) -> int:
    try:
        return int(value or "")
    except ValueError:
        raise BioCError(f"{where}: {what}: expected an integer, got {value!r}") from None


def _infons(el: ET.Element) -> dict[str, str]:
    return {i.get("key", ""): (i.text or "") for i in el.findall("infon")}


def read_bioc(path: str | Path) -> list[BioCDocument]:
    """Parse a BioC XML collection file into documents (in file order)."""
    path = Path(path)
    if not path.is_file():
        raise BioCError(f"{path}: no such file")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        line, col = e.position
        raise BioCError(f"{path}:{line}: not well-formed XML (column {col})") from None
    if root.tag != "collection":
        raise BioCError(f"{path}: root element is <{root.tag}>, expected <collection>")
    docs = []
    for n, d in enumerate(root.findall("document"), 1):
        doc_id = (d.findtext("id") or "").strip()
        where = f"{path}: document {doc_id or '#' + str(n)}"
        if not doc_id:
            raise BioCError(f"{where}: <id> is missing")
        passages = []
        for p in d.findall("passage"):
            off = _int(p, p.findtext("offset"), "passage offset", where)
            anns = []
            for a in p.findall("annotation"):
                aw = f"{where} annotation {a.get('id')}"
                locs = tuple(
                    (_int(loc, loc.get("offset"), "location offset", aw), _int(loc, loc.get("length"), "length", aw))
                    for loc in a.findall("location")
                )
                if not locs:
                    raise BioCError(f"{aw}: no <location>")
                anns.append(BioCAnnotation(a.get("id", ""), _infons(a), locs, a.findtext("text") or ""))
            passages.append(BioCPassage(off, p.findtext("text") or "", _infons(p), tuple(anns)))
        rels = tuple(_infons(r) | {"id": r.get("id", "")} for r in d.findall("relation"))
        docs.append(BioCDocument(doc_id, tuple(passages), rels))
    return docs


def document_text(doc: BioCDocument, source: str = "") -> str:
    """The document text with every passage at its offset (gaps filled with spaces)."""
    text = ""
    for p in sorted(doc.passages, key=lambda x: x.offset):
        if p.offset < len(text):
            raise BioCError(
                f"{source}: document {doc.id}: passage at offset {p.offset} overlaps the previous passage "
                f"(which ends at {len(text)})"
            )
        text += " " * (p.offset - len(text)) + p.text
    return text
