"""Extraction: sentences → prompts → batched greedy generation → parsed spans → schema records.

Owns the inference pipeline shared by ``fedmedlora extract`` (raw notes) and ``fedmedlora evaluate`` (benchmark
splits), and the note readers/writers for extraction (plain text, JSONL, BRAT standoff). The model is any
``generate_fn(prompts) -> answers``; running a loaded model over notes is ``fedmedlora.recipes.extract``.
Pure core: no torch, no model.

Relation extraction follows the paper: one RE prompt per head entity with that entity marked in the input. Heads are
either the gold entities (``heads="gold"``, the paper's RE evaluation protocol: RE scored independently of NER) or
the entities predicted by the NER pass (``heads="predicted"``, end-to-end extraction on new notes).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fedmedlora.jsonl import iter_json_lines
from fedmedlora.parsing import parse
from fedmedlora.prompts import allowed_types, build_prompt
from fedmedlora.schema import Document, Entity, LabelSet, Modifier, Sentence
from fedmedlora.segment import split_sentences

GenerateFn = Callable[[list[str]], list[str]]

logger = logging.getLogger(__name__)


@dataclass
class ExtractionStats:
    """Parse statistics over an extraction run (never raises on bad model output; counts instead)."""

    n_prompts: Counter[str] = field(default_factory=Counter)  # per task
    n_failed_outputs: Counter[str] = field(default_factory=Counter)  # outputs with >=1 parse failure, per task
    failures: Counter[str] = field(default_factory=Counter)  # failure reasons, summed
    by_task: dict[str, Counter[str]] = field(default_factory=dict)  # failure reasons per task

    def add(self, task: str, n_failures: int, reasons: dict[str, int]) -> None:
        self.n_prompts[task] += 1
        if n_failures:
            self.n_failed_outputs[task] += 1
        self.failures.update(reasons)
        self.by_task.setdefault(task, Counter()).update(reasons)

    def to_dict(self) -> dict:
        return {
            "prompts": dict(self.n_prompts),
            "outputs_with_parse_failures": dict(self.n_failed_outputs),
            "parse_failure_rate": {
                t: (self.n_failed_outputs[t] / n if n else 0.0) for t, n in sorted(self.n_prompts.items())
            },
            "failure_reasons": dict(self.failures.most_common()),
        }

    def merge(self, other: ExtractionStats) -> None:
        self.n_prompts.update(other.n_prompts)
        self.n_failed_outputs.update(other.n_failed_outputs)
        self.failures.update(other.failures)
        for task, reasons in other.by_task.items():
            self.by_task.setdefault(task, Counter()).update(reasons)


def extract_sentences(
    items: Sequence[tuple[Sentence, LabelSet]],
    generate_fn: GenerateFn,
    *,
    fmt: str = "html",
    tasks: Sequence[str] = ("ner", "re"),
    heads: Literal["gold", "predicted"] = "predicted",
    stats: ExtractionStats | None = None,
) -> list[Sentence]:
    """Predict entities and modifiers for each sentence under its site's label set.

    Args:
        items: ``(sentence, label_set)`` pairs; the sentence's own annotations are used only as RE heads when
            ``heads="gold"``.
        generate_fn: maps a list of prompts to a list of generated answers (same order).
        fmt: output format name (``prompts.FORMATS``); must be the one the adapter was trained with.
        tasks: which tasks to run.
        heads: where RE heads come from (see module docstring).
        stats: parse statistics are added here.

    Returns:
        One predicted ``Sentence`` per input, same ids and offsets, with predicted ``entities``/``modifiers``.
        Predicted entity ids are ``P<n>``; with gold heads, modifiers point at the gold entity ids.
    """
    stats = stats if stats is not None else ExtractionStats()
    pred_entities: list[list[Entity]] = [[] for _ in items]
    if "ner" in tasks:
        idx = [i for i, (_, ls) in enumerate(items) if ls.sorted_entities()]
        outputs = generate_fn([build_prompt(items[i][0], items[i][1], "ner", fmt) for i in idx])
        for i, out in zip(idx, outputs, strict=True):
            sent, ls = items[i]
            res = parse(out, sent.text, "ner", fmt, allowed_types(ls, "ner"))
            stats.add("ner", res.n_failures, res.failures)
            pred_entities[i] = [
                Entity(f"P{k + 1}", s.type, s.start, s.end, sent.text[s.start : s.end])
                for k, s in enumerate(sorted(set(res.spans)))
            ]
    pred_modifiers: list[list[Modifier]] = [[] for _ in items]
    if "re" in tasks:
        jobs: list[tuple[int, Entity]] = []
        for i, (sent, ls) in enumerate(items):
            head_list = sent.entities if heads == "gold" else pred_entities[i]
            jobs.extend((i, h) for h in head_list if ls.is_re_head(h.type))
        prompts = []
        for i, h in jobs:
            sent, ls = items[i]
            # build_prompt needs the head as an Entity; predicted heads are not in sent.entities, pass the object
            prompts.append(build_prompt(sent, ls, "re", fmt, head=h))
        outputs = generate_fn(prompts) if prompts else []
        counters: Counter[int] = Counter()
        for (i, h), out in zip(jobs, outputs, strict=True):
            sent, ls = items[i]
            res = parse(out, sent.text, "re", fmt, allowed_types(ls, "re", h.type), head=h.span)
            stats.add("re", res.n_failures, res.failures)
            for s in sorted(set(res.spans)):
                counters[i] += 1
                pred_modifiers[i].append(
                    Modifier(f"M{counters[i]}", s.type, s.start, s.end, sent.text[s.start : s.end], head=h.id)
                )
    out_sents = []
    for i, (sent, _) in enumerate(items):
        ents = tuple(pred_entities[i]) if heads == "predicted" or "ner" in tasks else ()
        out_sents.append(
            Sentence(sent.id, sent.start, sent.end, sent.text, entities=ents, modifiers=tuple(pred_modifiers[i]))
        )
    return out_sents


# ---- notes in, annotations out -------------------------------------------------------------------------------


class NotesError(ValueError):
    """An input note file is unusable; the message names the file (and line)."""


def read_notes(paths: Sequence[Path]) -> list[tuple[str, str]]:
    """Read notes as ``(note_id, text)``: ``.txt`` files (one note each, id = file stem) or ``.jsonl`` files with
    ``{"id": ..., "text": ...}`` per line. Text is read with ``newline=""`` so offsets match the file's characters."""
    notes: list[tuple[str, str]] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files = sorted(x for x in p.iterdir() if x.is_file())
            taken = [x for x in files if x.suffix.lower() in (".txt", ".jsonl")]
            skipped = [x.name for x in files if x not in taken and not x.name.startswith(".")]
            if skipped:  # said, not silent: the user pointed at the folder, not at these files
                logger.warning(
                    "%s: reading %d .txt/.jsonl file(s), skipping %d other file(s): %s",
                    p,
                    len(taken),
                    len(skipped),
                    ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""),
                )
            notes.extend(read_notes(taken))
            continue
        if not p.is_file():
            raise NotesError(f"{p}: no such file")
        if p.suffix.lower() == ".jsonl":
            for n, obj in iter_json_lines(p, NotesError):
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise NotesError(f"{p}:{n}: text: expected an object with a string 'text' field")
                notes.append((str(obj.get("id", f"{p.stem}-{n}")), obj["text"]))
        else:
            try:
                with p.open(encoding="utf-8", newline="") as f:  # keep CR so offsets match the file
                    notes.append((p.stem, f.read()))
            except UnicodeDecodeError as e:
                raise NotesError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return notes


_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


def check_note_ids(notes: Sequence[tuple[str, str]], paths: Sequence[Path]) -> None:
    """Note ids become output ids and BRAT file names: they must be unique and path-safe (checked before any model
    is loaded, so a bad input never leaves half-written output)."""
    seen: set[str] = set()
    for note_id, _ in notes:
        if not _SAFE_ID.match(note_id):
            raise NotesError(f"note id {note_id!r} (from {', '.join(map(str, paths))}): use letters, digits, . _ + -")
        if note_id in seen:
            raise NotesError(f"note id {note_id!r} occurs twice in {', '.join(map(str, paths))}; ids must be unique")
        seen.add(note_id)


def to_output_record(doc: Document) -> dict:
    """A predicted document as one JSONL record with document-level character offsets."""
    ents, mods = [], []
    for s in doc.sentences:
        for e in s.entities:
            ents.append(
                {
                    "id": f"{s.id}:{e.id}",
                    "type": e.type,
                    "start": s.start + e.start,
                    "end": s.start + e.end,
                    "text": e.text,
                }
            )
        for m in s.modifiers:
            mods.append(
                {
                    "type": m.type,
                    "start": s.start + m.start,
                    "end": s.start + m.end,
                    "text": m.text,
                    "head": f"{s.id}:{m.head}",
                }
            )
    return {"id": doc.id, "entities": ents, "modifiers": mods}


def to_brat(doc: Document) -> str:
    """BRAT standoff (.ann) for a predicted document: T lines for entities and modifiers, R lines ``has_<type>``."""
    lines, tid, rid, ids = [], 0, 0, {}
    for s in doc.sentences:
        for e in s.entities:
            tid += 1
            ids[(s.id, e.id)] = f"T{tid}"
            lines.append(f"T{tid}\t{e.type} {s.start + e.start} {s.start + e.end}\t{e.text}")
        for m in s.modifiers:
            tid += 1
            lines.append(f"T{tid}\t{m.type} {s.start + m.start} {s.start + m.end}\t{m.text}")
            rid += 1
            lines.append(f"R{rid}\thas_{m.type} Arg1:{ids[(s.id, m.head)]} Arg2:T{tid}\t")
    return "\n".join(lines) + ("\n" if lines else "")


def notes_to_documents(notes: Sequence[tuple[str, str]], label_set: LabelSet, site: str = "notes") -> list[Document]:
    """Segment raw notes into sentences (offsets preserved) as unannotated documents."""

    docs = []
    for note_id, text in notes:
        sents = tuple(Sentence(f"{note_id}:{i}", a, b, text[a:b]) for i, (a, b) in enumerate(split_sentences(text)))
        docs.append(Document(note_id, site, "test", text, sents, label_set, meta={"source": "notes"}))
    return docs
