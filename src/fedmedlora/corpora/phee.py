"""PHEE (pharmacovigilance event extraction, JSON lines) → ``schema.Document``.

Owns the PHEE quirks: the JSON files (not the brat "clean" copy) because their nested ``Treatment{Drug, Dosage,
Route, ...}`` structure says which dosage belongs to which drug; mentions made of several pieces (discontinuous);
argument ids shared between events; event attributes with cue spans. One document per PHEE sentence (id e.g.
``10907391_3``; ``meta["pmid"]`` is the abstract), split = the official file (train/dev/test).
Must not import torch, transformers, peft or flwr.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from fedmedlora.corpora.common import CorpusError, Drops, RawEntity, RawModifier, build_document, join_fragments
from fedmedlora.corpora.mapping import LABEL_SETS, PHEE_DRUG_MODIFIERS, PHEE_EFFECT_CUES, PHEE_ENTITIES
from fedmedlora.jsonl import iter_json_lines
from fedmedlora.schema import Document

SITE = "phee"
SPLIT_FILES = {"train": "train.json", "dev": "dev.json", "test": "test.json"}


def phee_dir(root: str | Path) -> Path:
    """The folder holding ``train.json``/``dev.json``/``test.json``."""
    root = Path(root)
    for cand in (root / "data" / "json", root / "phee" / "data" / "json", root / "json", root):
        if all((cand / f).is_file() for f in SPLIT_FILES.values()):
            return cand
    raise CorpusError(f"{root}: no PHEE JSON files (expected data/json/{{train,dev,test}}.json)")


class _Mention:
    __slots__ = ("id", "span")

    def __init__(self, ident: str, span: tuple[int, int]) -> None:
        self.id, self.span = ident, span


def _mentions(arg: Any, label: str, text: str, where: str, drops: Drops) -> list[_Mention]:
    """The mentions of an argument object ``{"text": [[...]], "start": [[...]], "entity_id": [...]}``."""
    if not isinstance(arg, dict) or not all(k in arg for k in ("text", "start", "entity_id")):
        raise CorpusError(f"{where}: {label}: expected an object with text/start/entity_id")
    out = []
    for pieces, starts, ident in zip(arg["text"], arg["start"], arg["entity_id"], strict=True):
        frags = [(int(s), int(s) + len(t)) for t, s in zip(pieces, starts, strict=True)]
        if any(text[s:e] != t for (s, e), t in zip(frags, pieces, strict=True)):
            drops[f"{label}: offsets do not match the text"] += 1
            continue
        span = join_fragments(text, frags)
        if span is None:
            drops[f"{label}: discontinuous span"] += 1
            continue
        out.append(_Mention(str(ident), span))
    return out


def convert_phee(obj: dict, split: str, drops: Drops, file: str = "", line: int = 0) -> Document:
    """Map one PHEE JSON record onto the schema."""
    where = f"{file}:{line}"
    try:
        doc_id, text = str(obj["id"]), obj["context"]
        events = [ev for ann in obj["annotations"] for ev in ann["events"]]
    except (KeyError, TypeError) as e:
        raise CorpusError(f"{where}: missing field {e}") from None
    entities: dict[str, RawEntity] = {}
    modifiers: list[RawModifier] = []

    def add_entity(m: _Mention, etype: str) -> None:
        if m.id not in entities:
            entities[m.id] = RawEntity(m.id, etype, *m.span)

    for ev in events:
        effects = _mentions(ev["Effect"], "Effect", text, where, drops) if "Effect" in ev else []
        for m in effects:
            add_entity(m, PHEE_ENTITIES[("Effect", "")])
        subject = ev.get("Subject") or {}
        if "Disorder" in subject:
            for m in _mentions(subject["Disorder"], "Subject.Disorder", text, where, drops):
                add_entity(m, PHEE_ENTITIES[("Subject", "Disorder")])
        treat = ev.get("Treatment") or {}
        drugs = _mentions(treat["Drug"], "Treatment.Drug", text, where, drops) if "Drug" in treat else []
        for m in drugs:
            add_entity(m, PHEE_ENTITIES[("Treatment", "Drug")])
        if "Disorder" in treat:
            for m in _mentions(treat["Disorder"], "Treatment.Disorder", text, where, drops):
                add_entity(m, PHEE_ENTITIES[("Treatment", "Disorder")])
        treat_spans = [m.span for m in _mentions(treat, "Treatment", text, where, Drops())] if treat else []
        for sub, mtype in PHEE_DRUG_MODIFIERS.items():
            if sub not in treat:
                continue
            for mod in _mentions(treat[sub], f"Treatment.{sub}", text, where, drops):
                inside = [d for d in drugs if any(a <= d.span[0] and d.span[1] <= b for a, b in treat_spans)]
                if not inside and drugs:
                    inside = [min(drugs, key=lambda d: (_distance(d.span, mod.span), d.span))]
                if not inside:
                    drops[f"Treatment.{sub}: its Treatment has no drug"] += 1
                for d in inside:
                    modifiers.append(RawModifier(f"{mod.id}>{d.id}", mtype, *mod.span, head=d.id))
        for attr, mtype in PHEE_EFFECT_CUES.items():
            if attr not in ev:
                continue
            for cue in _mentions(ev[attr], attr, text, where, drops):
                if not effects:
                    drops[f"{attr}: event has no Effect to attach the cue to"] += 1
                for eff in effects:
                    modifiers.append(RawModifier(f"{cue.id}>{eff.id}", mtype, *cue.span, head=eff.id))
    return build_document(
        doc_id=doc_id,
        site=SITE,
        split=split,
        text=text,
        entities=list(entities.values()),
        modifiers=modifiers,
        label_set=LABEL_SETS[SITE],
        meta={"source": SITE, "file": file, "line": line, "pmid": doc_id.split("_")[0]},
        drops=drops,
        newlines=True,
        punctuation=False,  # a PHEE record is one sentence
    )


def _distance(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, b[0] - a[1], a[0] - b[1])


def read_phee(root: str | Path, max_docs: int | None = None) -> tuple[list[Document], Drops]:
    """Read the official PHEE train/dev/test files (at most ``max_docs`` records per split)."""
    folder = phee_dir(root)
    drops: Drops = Drops()
    docs = []
    for split, name in SPLIT_FILES.items():
        lines = iter_json_lines(folder / name, CorpusError)
        for lineno, obj in itertools.islice(lines, max_docs):  # max_docs None: every line
            docs.append(convert_phee(obj, split, drops, file=f"data/json/{name}", line=lineno))
    return docs, drops
