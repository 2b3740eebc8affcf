"""Shared machinery of the corpus readers: document-offset annotations → a validated ``schema.Document``.

Owns: the reader-side records ``RawEntity`` / ``RawModifier`` (document offsets), ``Drops`` (a ``Counter`` of
dropped annotations by reason) and ``build_document``, which segments the text (``fedmedlora.segment``) so that no
annotated span is cut, moves every span to sentence-relative offsets and drops — *and counts* — whatever cannot be
represented (duplicates, a modifier whose head lies in another sentence, a modifier type that is not valid for its
head, a type outside the site's label set). Also the discontinuous-span policy ``join_fragments``.
Must not import torch, transformers, peft or flwr.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from fedmedlora.schema import VALID_MODIFIERS, Document, Entity, LabelSet, Modifier, Sentence
from fedmedlora.segment import split_sentences

#: Dropped annotations by reason, e.g. ``Drops({"entity Person: type not mapped": 1666})``.
Drops = Counter


class CorpusError(ValueError):
    """A corpus file is missing or malformed. The message names the file (and line where there is one)."""


@dataclass(frozen=True)
class RawEntity:
    """An entity in document offsets, before segmentation."""

    id: str
    type: str
    start: int
    end: int
    attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RawModifier:
    """A modifier span in document offsets attached to the entity ``head`` (a ``RawEntity.id``)."""

    id: str
    type: str
    start: int
    end: int
    head: str


def join_fragments(text: str, fragments: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """The covering span of a (possibly discontinuous) span, or ``None`` when it cannot be kept.

    A discontinuous span (BRAT ``0 5;9 14``) is kept as its covering span only when the gaps between the
    fragments are whitespace only (e.g. a line break inside a mention); otherwise the caller drops it and counts
    the drop (the schema has no discontinuous spans).
    """
    frags = sorted(fragments)
    for (_, e1), (s2, _) in itertools.pairwise(frags):
        if s2 < e1 or text[e1:s2].strip():
            return None
    return frags[0][0], frags[-1][1]


def build_document(
    *,
    doc_id: str,
    site: str,
    split: str,
    text: str,
    entities: Sequence[RawEntity],
    modifiers: Sequence[RawModifier],
    label_set: LabelSet,
    meta: dict,
    drops: Drops,
    newlines: bool = True,
    punctuation: bool = True,
    exclude: Sequence[tuple[int, int]] = (),
    exclude_reason: str = "",
) -> Document:
    """Segment ``text`` and attach the annotations, dropping and counting what cannot be represented.

    Args:
        doc_id, site, split, text, label_set, meta: the ``Document`` fields.
        entities, modifiers: annotations in document offsets; their text is taken from ``text``.
        drops: incremented with one count per dropped annotation, by reason.
        newlines, punctuation: segmentation rules (see ``fedmedlora.segment.split_sentences``).
        exclude: document intervals whose sentences are removed with everything in them (Chia error spans);
            each removed span is counted under ``exclude_reason``.
    """
    for a in (*entities, *modifiers):
        if not (0 <= a.start < a.end <= len(text)):
            raise CorpusError(f"{meta.get('file', doc_id)}: {a.id}: span [{a.start}, {a.end}) is outside the text")
    # 1. deduplicate entities with the same (type, start, end); remap modifier heads to the kept one
    keep: dict[tuple[str, int, int], RawEntity] = {}
    alias: dict[str, str] = {}
    for e in sorted(entities, key=lambda x: (x.start, x.end, x.type, x.id)):
        key = (e.type, e.start, e.end)
        if key in keep:
            k = keep[key]
            alias[e.id] = k.id
            if set(e.attributes) - set(k.attributes):
                keep[key] = RawEntity(
                    k.id, k.type, k.start, k.end, tuple(sorted(set(k.attributes) | set(e.attributes)))
                )
            drops[f"entity {e.type}: duplicate span (merged)"] += 1
        else:
            keep[key] = e
            alias[e.id] = e.id
    ents = list(keep.values())
    by_id = {e.id: e for e in ents}
    mods: list[RawModifier] = []
    seen_mod: set[tuple[str, int, int, str]] = set()
    used_ids = set(by_id)
    for m in modifiers:
        head = alias.get(m.head)
        if head is None:
            drops[f"modifier {m.type}: head entity was not kept"] += 1
            continue
        head_type = by_id[head].type
        if m.type not in VALID_MODIFIERS[head_type]:
            drops[f"modifier {m.type}: not valid for a {head_type} head"] += 1
            continue
        if m.type not in label_set.modifiers:
            drops[f"modifier {m.type}: not in the site's label set"] += 1
            continue
        key = (m.type, m.start, m.end, head)
        if key in seen_mod:
            drops[f"modifier {m.type}: duplicate (merged)"] += 1
            continue
        seen_mod.add(key)
        mid, n = m.id, 1
        while mid in used_ids:  # ids must be unique within the document
            n += 1
            mid = f"{m.id}~{n}"
        used_ids.add(mid)
        mods.append(RawModifier(mid, m.type, m.start, m.end, head))
    # 2. segment, never cutting an annotated span
    protected = [(a.start, a.end) for a in (*ents, *mods)]
    sents = split_sentences(text, protected, newlines=newlines, punctuation=punctuation)
    starts = [s for s, _ in sents]

    def sentence_of(start: int, end: int) -> int:
        # bisect by hand: the last sentence starting at or before `start`
        lo, hi = 0, len(starts)
        while lo < hi:
            mid = (lo + hi) // 2
            if starts[mid] <= start:
                lo = mid + 1
            else:
                hi = mid
        i = lo - 1
        if i < 0 or end > sents[i][1]:
            raise AssertionError(f"{doc_id}: span [{start}, {end}) is not inside one sentence")  # segment bug
        return i

    excluded: set[int] = set()
    for s, e in exclude:
        for i, (a, b) in enumerate(sents):
            if a < e and s < b:
                excluded.add(i)
    sent_ents: dict[int, list[Entity]] = defaultdict(list)
    sent_mods: dict[int, list[Modifier]] = defaultdict(list)
    ent_sent: dict[str, int] = {}
    for e in ents:
        i = sentence_of(e.start, e.end)
        if i in excluded:
            drops[f"entity {e.type}: {exclude_reason}"] += 1
            continue
        if e.type not in label_set.entities:
            drops[f"entity {e.type}: not in the site's label set"] += 1
            continue
        off = sents[i][0]
        sent_ents[i].append(Entity(e.id, e.type, e.start - off, e.end - off, text[e.start : e.end], e.attributes))
        ent_sent[e.id] = i
    for m in mods:
        i = sentence_of(m.start, m.end)
        if i in excluded:
            drops[f"modifier {m.type}: {exclude_reason}"] += 1
            continue
        if m.head not in ent_sent:
            drops[f"modifier {m.type}: head entity was not kept"] += 1
            continue
        if ent_sent[m.head] != i:
            drops[f"modifier {m.type}: head is in another sentence"] += 1
            continue
        off = sents[i][0]
        sent_mods[i].append(Modifier(m.id, m.type, m.start - off, m.end - off, text[m.start : m.end], m.head))
    sentences = []
    for i, (a, b) in enumerate(sents):
        if i in excluded:
            drops[f"sentence: {exclude_reason}"] += 1
            continue
        sentences.append(
            Sentence(
                id=f"{doc_id}:{len(sentences)}",
                start=a,
                end=b,
                text=text[a:b],
                entities=tuple(sorted(sent_ents[i], key=lambda x: (x.start, x.end, x.type, x.id))),
                modifiers=tuple(sorted(sent_mods[i], key=lambda x: (x.start, x.end, x.type, x.head, x.id))),
            )
        )
    doc = Document(
        id=doc_id, site=site, split=split, text=text, sentences=tuple(sentences), label_set=label_set, meta=meta
    )
    doc.validate()
    return doc
