"""A generic reader for BRAT standoff annotation (``.txt`` + ``.ann``).

Owns: the parsed records (``TextBound``, ``Event``, ``Relation``, ``Equiv``, ``Attribute``, ``BratDocument``),
``read_brat``, and what the BRAT corpora's readers share: ``brat_spans`` (checked, joined spans by id),
``find_brat_dir`` and ``read_brat_folder``. It knows nothing about any corpus's label names: the per-corpus modules
map types.
Must not import torch, transformers, peft or flwr.

Details that matter:

* The text is read with ``newline=""`` so CRLF line ends stay two characters: BRAT offsets count the ``\\r``
  (Chia has 1,603 CRLF files).
* Discontinuous text-bound spans (``Condition 0 5;9 14``) keep all their fragments; BRAT stores their text as the
  fragments joined by a single space.
* A text-bound annotation whose stored text does not equal the text at its offsets is *not* an error here: it is
  listed in ``BratDocument.mismatches`` so the caller can drop and count it. One benign case is repaired: a
  single-fragment span whose text differs from the stored text only by trailing whitespace (Chia has 11 spans that
  end after the line's ``\r``) is trimmed to the stored text and listed in ``BratDocument.repaired``.
* A malformed line raises ``BratError`` naming ``file:line``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedmedlora.corpora.common import CorpusError, Drops, join_fragments
from fedmedlora.schema import Document


class BratError(CorpusError):
    """A malformed ``.ann`` line; the message starts with ``file:line:``."""


@dataclass(frozen=True)
class TextBound:
    """``T12<TAB>Type 10 20;25 30<TAB>text``."""

    id: str
    type: str
    fragments: tuple[tuple[int, int], ...]
    text: str

    @property
    def start(self) -> int:
        return min(s for s, _ in self.fragments)

    @property
    def end(self) -> int:
        return max(e for _, e in self.fragments)

    @property
    def discontinuous(self) -> bool:
        return len(self.fragments) > 1


@dataclass(frozen=True)
class Event:
    """``E3<TAB>Type:T5 Role:T7 ...``; ``trigger`` is the id of the trigger text-bound."""

    id: str
    type: str
    trigger: str
    args: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Relation:
    """``R1<TAB>Type Arg1:X Arg2:Y``."""

    id: str
    type: str
    arg1: str
    arg2: str


@dataclass(frozen=True)
class Equiv:
    """``*<TAB>Type X Y Z`` (a symmetric, transitive group)."""

    type: str
    ids: tuple[str, ...]


@dataclass(frozen=True)
class Attribute:
    """``A1<TAB>Type Target [Value]``; a binary attribute has ``value=None``."""

    id: str
    type: str
    target: str
    value: str | None


@dataclass
class BratDocument:
    """One parsed ``.txt``/``.ann`` pair."""

    name: str
    text: str
    textbounds: dict[str, TextBound] = field(default_factory=dict)
    events: dict[str, Event] = field(default_factory=dict)
    relations: list[Relation] = field(default_factory=list)
    equivs: list[Equiv] = field(default_factory=list)
    attributes: list[Attribute] = field(default_factory=list)
    notes: int = 0
    mismatches: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    def resolve(self, ann_id: str) -> TextBound | None:
        """The text-bound of a ``T`` id, or the trigger text-bound of an ``E`` id; ``None`` if unknown."""
        if ann_id in self.events:
            ann_id = self.events[ann_id].trigger
        return self.textbounds.get(ann_id)


def _parse_offsets(spec: str, where: str) -> tuple[tuple[int, int], ...]:
    frags = []
    for part in spec.split(";"):
        bits = part.split()
        if len(bits) != 2 or not all(b.isdigit() for b in bits):
            raise BratError(f"{where}: bad offsets {spec!r} (expected 'start end[;start end...]')")
        s, e = int(bits[0]), int(bits[1])
        if e < s:
            raise BratError(f"{where}: offsets {s} {e}: end before start")
        frags.append((s, e))
    return tuple(frags)


def parse_ann(ann: str, text: str, name: str) -> BratDocument:
    """Parse the content of a ``.ann`` file against its text. ``name`` is used in error messages."""
    doc = BratDocument(name=name, text=text)
    for lineno, raw in enumerate(ann.split("\n"), 1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        cols = line.split("\t")
        ident = cols[0]
        if len(cols) < 2 or not ident:
            raise BratError(f"{where}: expected '<id><TAB><annotation>', got {line[:60]!r}")
        body = cols[1]
        kind = ident[0]
        if kind == "T":
            if " " not in body:
                raise BratError(f"{where}: text-bound {ident} has no offsets")
            typ, spec = body.split(" ", 1)
            frags = _parse_offsets(spec, where)
            stored = cols[2] if len(cols) > 2 else ""
            if any(e > len(text) for _, e in frags):
                doc.mismatches.append(ident)
            elif (actual := " ".join(text[s:e] for s, e in frags)) != stored:
                if stored and actual.rstrip() == stored and len(frags) == 1:
                    # the span runs into the line break (Chia: 11 spans end after the line's "\r")
                    frags = ((frags[0][0], frags[0][0] + len(stored)),)
                    doc.repaired.append(ident)
                else:
                    doc.mismatches.append(ident)
            doc.textbounds[ident] = TextBound(ident, typ, frags, stored)
        elif kind == "E":
            parts = body.split()
            if not parts or ":" not in parts[0]:
                raise BratError(f"{where}: event {ident} has no 'Type:Trigger'")
            typ, trig = parts[0].split(":", 1)
            args = []
            for p in parts[1:]:
                if ":" not in p:
                    raise BratError(f"{where}: event {ident} argument {p!r} is not 'Role:Id'")
                role, target = p.split(":", 1)
                args.append((role, target))
            doc.events[ident] = Event(ident, typ, trig, tuple(args))
        elif kind == "R":
            parts = body.split()
            if len(parts) != 3 or not all(":" in p for p in parts[1:]):
                raise BratError(f"{where}: relation {ident} is not 'Type Arg1:X Arg2:Y'")
            a1, a2 = (p.split(":", 1) for p in parts[1:])
            if a1[0] != "Arg1" or a2[0] != "Arg2":
                # BRAT allows any role names; keep the order as written
                pass
            doc.relations.append(Relation(ident, parts[0], a1[1], a2[1]))
        elif kind == "*":
            parts = body.split()
            if len(parts) < 3:
                raise BratError(f"{where}: equivalence needs a type and at least two ids")
            doc.equivs.append(Equiv(parts[0], tuple(parts[1:])))
        elif kind in "AM":
            parts = body.split()
            if len(parts) not in (2, 3):
                raise BratError(f"{where}: attribute {ident} is not 'Type Target [Value]'")
            doc.attributes.append(Attribute(ident, parts[0], parts[1], parts[2] if len(parts) == 3 else None))
        elif kind == "#":
            doc.notes += 1
        elif kind == "N":
            continue  # normalisation links: not used
        else:
            raise BratError(f"{where}: unknown annotation id {ident!r}")
    # events must point at known text-bounds
    for ev in doc.events.values():
        if ev.trigger not in doc.textbounds:
            raise BratError(f"{name}: event {ev.id} trigger {ev.trigger} is not a text-bound annotation")
    return doc


def read_brat(txt_path: str | Path, ann_path: str | Path | None = None) -> BratDocument:
    """Read a BRAT document. ``ann_path`` defaults to ``txt_path`` with the suffix ``.ann``."""
    txt_path = Path(txt_path)
    ann_path = Path(ann_path) if ann_path is not None else txt_path.with_suffix(".ann")
    for p in (txt_path, ann_path):
        if not p.is_file():
            raise BratError(f"{p}: no such file")
    try:
        with txt_path.open(encoding="utf-8", newline="") as f:
            text = f.read()
        with ann_path.open(encoding="utf-8", newline="") as f:
            ann = f.read()
    except UnicodeDecodeError as e:
        raise BratError(f"{txt_path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    return parse_ann(ann, text, str(ann_path))


# ---- helpers shared by the BRAT corpora (Chia, MACCROBAT) ------------------------------------------------------


def brat_spans(brat: BratDocument, drops: Drops) -> dict[str, tuple[int, int]]:
    """The usable span of every brat text-bound, by id: offsets checked against the text and discontinuous
    fragments joined (``join_fragments``). Everything else is counted in ``drops``, never dropped silently."""
    bad = set(brat.mismatches)
    for r in brat.repaired:
        drops[f"{brat.textbounds[r].type}: span ran into the line break (trimmed, kept)"] += 1
    spans: dict[str, tuple[int, int]] = {}
    for tb in brat.textbounds.values():
        if tb.id in bad:
            drops[f"{tb.type}: offsets do not match the text"] += 1
            continue
        joined = join_fragments(brat.text, tb.fragments)
        if joined is None:
            drops[f"{tb.type}: discontinuous span"] += 1
            continue
        spans[tb.id] = joined
    return spans


def find_brat_dir(root: str | Path, subdirs: Sequence[str], pattern: str, expected: str) -> Path:
    """The first of ``root/<subdir>`` (then ``root`` itself) holding ``.ann`` files matching ``pattern``."""
    root = Path(root)
    for cand in (*(root / d for d in subdirs), root):
        if cand.is_dir() and any(cand.glob(pattern)):
            return cand
    raise CorpusError(f"{root}: no {expected}")


def read_brat_folder(
    folder: Path,
    pattern: str,
    convert: Callable[..., Document],
    file_prefix: str,
    max_docs: int | None = None,
    skip_empty: bool = False,
) -> tuple[list[Document], Drops]:
    """Read every ``.ann``/``.txt`` pair in ``folder`` (sorted by name; at most ``max_docs``) and convert it with
    ``convert(brat, doc_id, drops, file=...)``. With ``skip_empty``, files with no text are counted and skipped."""
    drops: Drops = Drops()
    docs: list[Document] = []
    for ann in sorted(folder.glob(pattern)):
        if max_docs is not None and len(docs) >= max_docs:
            break
        brat = read_brat(ann.with_suffix(".txt"), ann)
        if skip_empty and not brat.text.strip():
            drops["file: empty text"] += 1
            continue
        docs.append(convert(brat, ann.stem, drops, file=f"{file_prefix}{ann.name}"))
    return docs, drops
