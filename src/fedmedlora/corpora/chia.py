"""Chia (clinical-trial eligibility criteria, brat) → ``schema.Document``.

Owns the Chia quirks: the ``chia_without_scope`` folder layout (``NCT<id>_inc`` / ``_exc`` pairs), CRLF offsets
(handled by ``brat.read_brat``), the error spans that remove their sentence, the Arg1 = head / Arg2 = modifier
relation direction and the lexicon filters of ``mapping``. One document per file; the split is assigned later by
``fedmedlora.splits`` (by NCT id, inc and exc together). Must not import torch, transformers, peft or flwr.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedmedlora.corpora.brat import BratDocument, brat_spans, find_brat_dir, read_brat_folder
from fedmedlora.corpora.common import (
    Drops,
    RawEntity,
    RawModifier,
    build_document,
)
from fedmedlora.corpora.mapping import CHIA_ENTITIES, CHIA_ERROR_TYPES, CHIA_MODIFIERS, LABEL_SETS
from fedmedlora.schema import Document

SITE = "chia"


def chia_dir(root: str | Path) -> Path:
    """The folder holding the ``.txt``/``.ann`` pairs (accepts the corpus folder or the data folder itself)."""
    return find_brat_dir(
        root,
        ("chia_without_scope", "chia/chia_without_scope"),
        "NCT*.ann",
        "Chia brat files (expected chia_without_scope/NCT*_inc.ann)",
    )


def convert_chia(brat: BratDocument, doc_id: str, drops: Drops, file: str = "") -> Document:
    """Map one parsed Chia brat document onto the schema."""
    text = brat.text
    spans = brat_spans(brat, drops)  # kept (joined) spans of every text-bound
    errors = [spans[t.id] for t in brat.textbounds.values() if t.type in CHIA_ERROR_TYPES and t.id in spans]
    entities = []
    for tb in brat.textbounds.values():
        if tb.id in spans and tb.type in CHIA_ENTITIES:
            s, e = spans[tb.id]
            entities.append(RawEntity(tb.id, CHIA_ENTITIES[tb.type], s, e))
    ent_type = {e.id: e.type for e in entities}
    modifiers = []
    used_as_modifier: set[str] = set()
    for r in brat.relations:
        if r.type not in CHIA_MODIFIERS:
            drops[f"relation {r.type}: not a modifier relation"] += 1
            continue
        label, by_head = CHIA_MODIFIERS[r.type]
        head, mod = brat.textbounds.get(r.arg1), brat.textbounds.get(r.arg2)
        if head is None or mod is None:
            drops[f"relation {r.type}: argument is not a text-bound"] += 1
            continue
        if mod.type != label:
            drops[f"relation {r.type}: modifier is a {mod.type}, not a {label}"] += 1
            continue
        if head.id not in ent_type:
            drops[f"relation {r.type}: head is not a kept entity"] += 1
            continue
        if mod.id not in spans:
            drops[f"relation {r.type}: modifier span was dropped"] += 1
            continue
        rule: str | Callable[[str], str | None] | None = by_head.get(ent_type[head.id])
        mtype = rule(mod.text) if callable(rule) else rule
        if mtype is None:
            drops[f"relation {r.type} on {ent_type[head.id]}: no schema modifier (filtered)"] += 1
            continue
        s, e = spans[mod.id]
        modifiers.append(RawModifier(f"{mod.id}>{head.id}", mtype, s, e, head.id))
        used_as_modifier.add(mod.id)
    for tb in brat.textbounds.values():
        if tb.type in CHIA_ERROR_TYPES:
            drops[f"{tb.type}: error span (its sentence is removed)"] += 1
        elif tb.type not in CHIA_ENTITIES and tb.id not in used_as_modifier and tb.id in spans:
            drops[f"{tb.type}: label not mapped"] += 1
    for eq in brat.equivs:
        drops[f"equivalence {eq.type}: not in the schema"] += 1
    return build_document(
        doc_id=doc_id,
        site=SITE,
        split="train",
        text=text,
        entities=entities,
        modifiers=modifiers,
        label_set=LABEL_SETS[SITE],
        meta={"source": SITE, "file": file or brat.name, "trial": doc_id.split("_")[0]},
        drops=drops,
        newlines=True,
        punctuation=True,
        exclude=errors,
        exclude_reason="in a sentence removed for a Chia error span",
    )


def read_chia(root: str | Path, max_docs: int | None = None) -> tuple[list[Document], Drops]:
    """Read every Chia file pair (sorted by name; at most ``max_docs``). Returns documents and drop counts.

    Documents have ``split="train"`` until ``fedmedlora.splits.assign_splits`` sets the real split.
    """
    return read_brat_folder(chia_dir(root), "NCT*.ann", convert_chia, "chia_without_scope/", max_docs, skip_empty=True)
