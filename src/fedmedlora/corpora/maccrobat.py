"""MACCROBAT2020 (clinical case reports, brat) → ``schema.Document``.

Owns the MACCROBAT quirks: head concepts are brat *events* (``E4 Sign_symptom:T7``) resolved to their trigger
text-bound; ``MODIFY`` relations run **Arg1 = modifier → Arg2 = head**; temporal expressions also attach through
``* OVERLAP`` groups; negation/uncertainty are ``POLARITY`` attributes without a cue span, kept as
``Entity.attributes`` (never as modifiers). The text has one sentence per line, so sentences are the lines (no
punctuation splitting). One document per case report; no official split (``fedmedlora.splits`` assigns
20 train / 20 dev / rest test). Must not import torch, transformers, peft or flwr.
"""

from __future__ import annotations

import bisect
from pathlib import Path

from fedmedlora.corpora.brat import BratDocument, brat_spans, find_brat_dir, read_brat_folder
from fedmedlora.corpora.common import (
    CorpusError,
    Drops,
    RawEntity,
    RawModifier,
    build_document,
)
from fedmedlora.corpora.mapping import (
    LABEL_SETS,
    MACCROBAT_ENTITIES,
    MACCROBAT_MODIFIERS,
    MACCROBAT_OVERLAP_TEMPORAL,
    MACCROBAT_POLARITY,
)
from fedmedlora.schema import Document

SITE = "maccrobat"


def maccrobat_dir(root: str | Path) -> Path:
    """The folder holding the ``.txt``/``.ann`` pairs."""
    return find_brat_dir(
        root,
        ("MACCROBAT2020", "maccrobat/MACCROBAT2020"),
        "*.ann",
        "MACCROBAT brat files (expected MACCROBAT2020/*.ann)",
    )


def convert_maccrobat(brat: BratDocument, doc_id: str, drops: Drops, file: str = "") -> Document:
    """Map one parsed MACCROBAT brat document onto the schema."""
    text = brat.text
    spans = brat_spans(brat, drops)  # kept (joined) spans of every text-bound

    def tid(ann_id: str) -> str | None:
        tb = brat.resolve(ann_id)
        return tb.id if tb is not None else None

    attrs: dict[str, set[str]] = {}
    for a in brat.attributes:
        t = tid(a.target)
        if a.type == "POLARITY" and t is not None and (a.value or "") in MACCROBAT_POLARITY:
            attrs.setdefault(t, set()).update(MACCROBAT_POLARITY[a.value or ""])
        else:
            drops[f"attribute {a.type}: no cue span, not in the schema"] += 1
    entities = []
    for tb in brat.textbounds.values():
        if tb.id in spans and tb.type in MACCROBAT_ENTITIES:
            entities.append(
                RawEntity(tb.id, MACCROBAT_ENTITIES[tb.type], *spans[tb.id], tuple(sorted(attrs.get(tb.id, ()))))
            )
    ent_type = {e.id: e.type for e in entities}
    modifiers: list[RawModifier] = []
    used: set[str] = set()

    def attach(mod_id: str, head_id: str, how: str) -> bool:
        """Attach text-bound ``mod_id`` to entity ``head_id`` if the mapping has a modifier type for them."""
        mod = brat.textbounds[mod_id]
        rule = MACCROBAT_MODIFIERS.get(mod.type)
        if rule is None:
            drops[f"{how} {mod.type}→head: modifier label not mapped"] += 1
            return False
        if head_id not in ent_type:
            drops[f"{how} {mod.type}→head: head is not a kept entity"] += 1
            return False
        mtype = rule.get(ent_type[head_id])
        if mtype is None:
            drops[f"{how} {mod.type}→{ent_type[head_id]}: no schema modifier for this head type"] += 1
            return False
        if mod_id not in spans:
            drops[f"{how} {mod.type}: modifier span was dropped"] += 1
            return False
        modifiers.append(RawModifier(f"{mod_id}>{head_id}", mtype, *spans[mod_id], head=head_id))
        used.add(mod_id)
        return True

    for r in brat.relations:
        if r.type != "MODIFY":
            drops[f"relation {r.type}: not a modifier relation"] += 1
            continue
        mod_id, head_id = tid(r.arg1), tid(r.arg2)  # Arg1 = modifier, Arg2 = head
        if mod_id is None or head_id is None:
            raise CorpusError(f"{brat.name}: relation {r.id}: argument {r.arg1} or {r.arg2} is not annotated")
        attach(mod_id, head_id, "MODIFY")
    lines = _line_index(text)
    for eq in brat.equivs:
        members = [t for t in (tid(x) for x in eq.ids) if t is not None]
        times = [t for t in members if brat.textbounds[t].type in MACCROBAT_OVERLAP_TEMPORAL]
        heads = [t for t in members if t in ent_type]
        pairs = [(m, h) for m in times for h in heads if m in spans and lines(spans[m][0]) == lines(spans[h][0])]
        for m, h in pairs:
            attach(m, h, "OVERLAP")
        if not pairs:
            drops[f"equivalence {eq.type}: no time expression with a head in the same sentence"] += 1
    for tb in brat.textbounds.values():
        if tb.type not in MACCROBAT_ENTITIES and tb.id not in used and tb.id in spans:
            drops[f"{tb.type}: label not mapped or not attached"] += 1
    return build_document(
        doc_id=doc_id,
        site=SITE,
        split="train",
        text=text,
        entities=entities,
        modifiers=modifiers,
        label_set=LABEL_SETS[SITE],
        meta={"source": SITE, "file": file or brat.name},
        drops=drops,
        newlines=True,
        punctuation=False,  # one sentence per line already
    )


def _line_index(text: str):
    """A function mapping a character offset to its line number."""
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    return lambda off: bisect.bisect_right(starts, off) - 1


def read_maccrobat(root: str | Path, max_docs: int | None = None) -> tuple[list[Document], Drops]:
    """Read every MACCROBAT file pair (sorted by name; at most ``max_docs``)."""
    return read_brat_folder(maccrobat_dir(root), "*.ann", convert_maccrobat, "MACCROBAT2020/", max_docs)
