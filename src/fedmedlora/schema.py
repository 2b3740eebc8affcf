"""The clinical information-extraction data model.

Owns: entity and modifier type vocabularies, the records ``Document`` → ``Sentence`` → ``Entity`` /
``Modifier``, the per-document ``LabelSet`` (what a site actually annotates) and their validation.
Must not import torch, transformers, peft or flwr.

Offsets
-------
Every offset is a **half-open character interval ``[start, end)``**:

* ``Sentence.start/end`` index into ``Document.text``;
* ``Entity.start/end`` and ``Modifier.start/end`` index into ``Sentence.text`` (sentence-relative), so a sentence is
  a self-contained unit for prompting, parsing and scoring. The document offset of a span is
  ``sentence.start + span.start``.

``validate()`` checks ``text[start:end] == span.text`` for every span, which is what makes a round trip from a
corpus through JSONL and back provably lossless.

Scope
-----
* Discontinuous spans (BRAT ``0 5;9 14``) are **out of scope**: readers either keep the covering span when the
  gap is whitespace only, or drop the annotation and count it (see ``fedmedlora.corpora``).
* Relations are entity → modifier links (``Modifier.head`` is the id of the entity it modifies). A cue that
  modifies two entities appears as two ``Modifier`` records, one per head.
* Assertions that a corpus gives only as an attribute without a cue span (e.g. MACCROBAT ``POLARITY NEG``) are
  kept in ``Entity.attributes`` and are never turned into modifier spans.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

ENTITY_TYPES: tuple[str, ...] = ("problem", "treatment", "test", "drug")

#: The 16 modifier types of the annotation guideline (paper §2.1), in the paper's prompt order.
MODIFIER_TYPES: tuple[str, ...] = (
    "bodyloc",
    "condition",
    "course",
    "dosage",
    "duration",
    "form",
    "frequency",
    "labvalue",
    "negation",
    "reference_range",
    "route",
    "severity",
    "strength",
    "subject",
    "temporal",
    "uncertain",
)

#: Which modifier types may attach to which entity type (guideline Tables 2–5; 22 valid pairs).
VALID_MODIFIERS: dict[str, frozenset[str]] = {
    "problem": frozenset(
        {"severity", "condition", "uncertain", "subject", "bodyloc", "course", "temporal", "negation"}
    ),
    "treatment": frozenset({"temporal", "negation"}),
    "drug": frozenset({"strength", "dosage", "duration", "form", "frequency", "route", "temporal", "negation"}),
    "test": frozenset({"labvalue", "reference_range", "temporal", "negation"}),
}

SPLITS: tuple[str, ...] = ("train", "dev", "test")


class SchemaError(ValueError):
    """A record violates the schema. The message names the record and the field."""


@dataclass(frozen=True, order=True)
class Span:
    """A typed half-open character span ``[start, end)`` of a sentence, the unit that metrics compare.

    ``Span`` is hashable, so strict matching is a set intersection.
    """

    start: int
    end: int
    type: str

    def overlaps(self, other: Span) -> bool:
        return self.start < other.end and other.start < self.end


@dataclass(frozen=True)
class Entity:
    """A main clinical entity (problem, treatment, test or drug).

    Attributes:
        id: identifier unique within its document (e.g. the BRAT ``T12`` id).
        type: one of ``ENTITY_TYPES``.
        start: sentence-relative start offset (inclusive).
        end: sentence-relative end offset (exclusive).
        text: ``sentence.text[start:end]``, kept for readability and checked by ``validate``.
        attributes: assertion-like flags without a cue span, e.g. ``("negated",)`` from a MACCROBAT
            ``POLARITY NEG`` attribute. Never scored as modifiers.
    """

    id: str
    type: str
    start: int
    end: int
    text: str
    attributes: tuple[str, ...] = ()

    @property
    def span(self) -> Span:
        return Span(self.start, self.end, self.type)


@dataclass(frozen=True)
class Modifier:
    """A modifier span attached to one head entity (a relation ``head --has_<type>--> modifier``).

    Attributes:
        id: identifier unique within its document.
        type: one of ``MODIFIER_TYPES``.
        start: sentence-relative start offset (inclusive).
        end: sentence-relative end offset (exclusive).
        text: ``sentence.text[start:end]``.
        head: ``Entity.id`` of the entity it modifies, in the same sentence.
    """

    id: str
    type: str
    start: int
    end: int
    text: str
    head: str

    @property
    def span(self) -> Span:
        return Span(self.start, self.end, self.type)


@dataclass(frozen=True)
class LabelSet:
    """The part of the schema a site annotates. Types outside it are never trained or scored as negatives.

    Attributes:
        entities: entity types the site annotates.
        modifiers: modifier types the site annotates (only meaningful for heads of an annotated type).
    """

    entities: frozenset[str] = frozenset(ENTITY_TYPES)
    modifiers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        bad = set(self.entities) - set(ENTITY_TYPES)
        if bad:
            raise SchemaError(f"label_set.entities: unknown entity type(s) {sorted(bad)}; allowed {ENTITY_TYPES}")
        bad = set(self.modifiers) - set(MODIFIER_TYPES)
        if bad:
            raise SchemaError(f"label_set.modifiers: unknown modifier type(s) {sorted(bad)}")

    def modifiers_for(self, entity_type: str) -> tuple[str, ...]:
        """Modifier types this site annotates for heads of ``entity_type``, in schema order."""
        allowed = VALID_MODIFIERS.get(entity_type, frozenset())
        return tuple(m for m in MODIFIER_TYPES if m in self.modifiers and m in allowed)

    def is_re_head(self, entity_type: str) -> bool:
        """Whether an entity of ``entity_type`` gets an RE prompt here: the site annotates the type and at least
        one modifier type valid for it."""
        return entity_type in self.entities and bool(self.modifiers_for(entity_type))

    @property
    def has_relations(self) -> bool:
        return any(self.modifiers_for(e) for e in self.entities)

    def sorted_entities(self) -> tuple[str, ...]:
        return tuple(e for e in ENTITY_TYPES if e in self.entities)

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "entities": list(self.sorted_entities()),
            "modifiers": [m for m in MODIFIER_TYPES if m in self.modifiers],
        }

    @classmethod
    def from_dict(cls, d: dict) -> LabelSet:
        return cls(entities=frozenset(d.get("entities", ())), modifiers=frozenset(d.get("modifiers", ())))

    def union(self, other: LabelSet) -> LabelSet:
        return LabelSet(self.entities | other.entities, self.modifiers | other.modifiers)


@dataclass(frozen=True)
class Sentence:
    """One sentence of a document with its annotations (sentence-relative offsets).

    Attributes:
        id: ``"<doc_id>:<index>"``.
        start: offset of the sentence in ``Document.text``.
        end: exclusive end offset in ``Document.text``.
        text: ``document.text[start:end]``.
        entities: main entities, sorted by (start, end).
        modifiers: modifiers, each pointing at an entity of this sentence.
    """

    id: str
    start: int
    end: int
    text: str
    entities: tuple[Entity, ...] = ()
    modifiers: tuple[Modifier, ...] = ()

    def modifiers_of(self, entity_id: str) -> tuple[Modifier, ...]:
        return tuple(m for m in self.modifiers if m.head == entity_id)

    def entity(self, entity_id: str) -> Entity:
        for e in self.entities:
            if e.id == entity_id:
                return e
        raise KeyError(entity_id)


@dataclass(frozen=True)
class Document:
    """An annotated document of one site.

    Attributes:
        id: document id, unique within its site (e.g. PMID or NCT id).
        site: name of the site (hospital) that holds it.
        split: ``train``, ``dev`` or ``test``.
        text: the original text, unchanged (CRLF and all).
        sentences: sentences covering the annotated text, in order, non-overlapping.
        label_set: the types this site annotates (see ``LabelSet``).
        meta: plain metadata (source corpus, licence, original file name, ...).
    """

    id: str
    site: str
    split: str
    text: str
    sentences: tuple[Sentence, ...]
    label_set: LabelSet
    meta: dict = field(default_factory=dict, compare=False)

    def validate(self) -> None:
        """Raise ``SchemaError`` naming the first field that violates the schema."""
        where = f"document {self.id!r}"
        if self.split not in SPLITS:
            raise SchemaError(f"{where}: split: {self.split!r} is not one of {SPLITS}")
        prev_end = 0
        for s in self.sentences:
            sw = f"{where} sentence {s.id!r}"
            if not (0 <= s.start <= s.end <= len(self.text)):
                raise SchemaError(f"{sw}: start/end: [{s.start}, {s.end}) outside the text (len {len(self.text)})")
            if s.start < prev_end:
                raise SchemaError(f"{sw}: start: sentences overlap or are out of order")
            prev_end = s.end
            if self.text[s.start : s.end] != s.text:
                raise SchemaError(f"{sw}: text: does not equal document text[{s.start}:{s.end}]")
            ids = set()
            for e in s.entities:
                _check_span(sw, "entity", e.id, e.type, e.start, e.end, e.text, s.text, ENTITY_TYPES)
                if e.type not in self.label_set.entities:
                    raise SchemaError(f"{sw} entity {e.id!r}: type: {e.type!r} is not in the site's label set")
                ids.add(e.id)
            for m in s.modifiers:
                _check_span(sw, "modifier", m.id, m.type, m.start, m.end, m.text, s.text, MODIFIER_TYPES)
                if m.head not in ids:
                    raise SchemaError(f"{sw} modifier {m.id!r}: head: {m.head!r} is not an entity of the sentence")
                head_type = s.entity(m.head).type
                if m.type not in VALID_MODIFIERS[head_type]:
                    raise SchemaError(f"{sw} modifier {m.id!r}: type: {m.type!r} cannot modify a {head_type!r} entity")
                if m.type not in self.label_set.modifiers:
                    raise SchemaError(f"{sw} modifier {m.id!r}: type: {m.type!r} is not in the site's label set")

    def iter_spans(self) -> Iterator[tuple[Sentence, Entity | Modifier]]:
        for s in self.sentences:
            for e in s.entities:
                yield s, e
            for m in s.modifiers:
                yield s, m


def _check_span(
    where: str, kind: str, sid: str, typ: str, start: int, end: int, text: str, sent_text: str, allowed
) -> None:
    w = f"{where} {kind} {sid!r}"
    if typ not in allowed:
        raise SchemaError(f"{w}: type: unknown {kind} type {typ!r}")
    if not (0 <= start < end <= len(sent_text)):
        raise SchemaError(f"{w}: start/end: [{start}, {end}) is empty or outside the sentence (len {len(sent_text)})")
    if sent_text[start:end] != text:
        raise SchemaError(f"{w}: text: {text!r} != sentence text[{start}:{end}] {sent_text[start:end]!r}")


def iter_sentences(docs: Iterable[Document]) -> Iterator[tuple[Document, Sentence]]:
    for d in docs:
        for s in d.sentences:
            yield d, s
