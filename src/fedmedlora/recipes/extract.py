"""Extraction on new notes: NER, then RE on the predicted entities, with a trained adapter (or zero-shot).

Owns ``extract_notes`` (what ``fedmedlora extract`` runs): read the notes, split sentences, load the model and
the adapter, run ``fedmedlora.extract.extract_sentences`` and write JSONL (and BRAT standoff).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from fedmedlora.config import RunConfig
from fedmedlora.extract import (
    check_note_ids,
    extract_sentences,
    notes_to_documents,
    read_notes,
    to_brat,
    to_output_record,
)
from fedmedlora.lm.adapter_io import load_adapter_arrays
from fedmedlora.lm.session import Session
from fedmedlora.schema import ENTITY_TYPES, MODIFIER_TYPES, Document, LabelSet


def check_output_file(out: Path) -> None:
    """Refuse, before any model work, an output path that is a folder or cannot be written.

    Raises:
        ValueError: naming the path and what is wrong with it.
    """
    if out.is_dir():
        raise ValueError(f"--out {out}: is a folder; give a file name such as {out / 'predictions.jsonl'}")
    existing = next((q for q in [out.parent, *out.parent.parents] if q.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ValueError(f"--out {out}: cannot write there")


def extract_notes(
    cfg: RunConfig,
    paths: Sequence[Path],
    out: Path,
    *,
    adapter: Path | None = None,
    brat_dir: Path | None = None,
    entities: Sequence[str] | None = None,
    modifiers: Sequence[str] | None = None,
) -> int:
    """Run NER then RE (on the predicted entities) over notes; write JSONL (and BRAT). Returns the note count."""
    out = Path(out)
    check_output_file(out)
    if brat_dir is not None and brat_dir.exists() and not brat_dir.is_dir():
        raise ValueError(f"--brat {brat_dir}: is a file; it must be a folder")
    label_set = LabelSet(frozenset(entities or ENTITY_TYPES), frozenset(modifiers or MODIFIER_TYPES))
    notes = read_notes(paths)
    if not notes:
        raise ValueError(f"no notes found in {', '.join(str(p) for p in paths)} (nothing to extract; no model loaded)")
    check_note_ids(notes, paths)
    docs = notes_to_documents(notes, label_set)
    session = Session.load(cfg)
    session.set_arrays(load_adapter_arrays(adapter) if adapter is not None else None)
    items = [(s, d.label_set) for d in docs for s in d.sentences]
    preds = iter(extract_sentences(items, session.generate_fn(cfg), fmt=cfg.data.format, tasks=cfg.data.tasks))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for d in docs:
            pred_doc = Document(d.id, d.site, d.split, d.text, tuple(next(preds) for _ in d.sentences), d.label_set)
            f.write(json.dumps(to_output_record(pred_doc), ensure_ascii=False) + "\n")
            if brat_dir is not None:
                brat_dir.mkdir(parents=True, exist_ok=True)
                (brat_dir / f"{d.id}.txt").write_text(d.text, encoding="utf-8", newline="")
                (brat_dir / f"{d.id}.ann").write_text(to_brat(pred_doc), encoding="utf-8")
    return len(docs)
