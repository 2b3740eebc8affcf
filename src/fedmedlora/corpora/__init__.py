"""Readers that turn the open corpora into ``schema.Document`` records.

Owns: one reader per corpus (``read_chia``, ``read_phee``, ``read_bc5cdr``, ``read_maccrobat``), the generic
formats (``brat``, ``bioc``), the label mapping (``mapping``) and the shared document builder (``common``).
Every reader has the signature ``read_x(root, max_docs=None) -> (list[Document], Drops)``: ``Drops`` is a
``collections.Counter`` of dropped annotations by reason, so nothing is lost silently. ``root`` may be the corpora
directory (``shared/datasets``) or the corpus folder itself.
Must not import torch, transformers, peft or flwr.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from fedmedlora.corpora.bc5cdr import read_bc5cdr
from fedmedlora.corpora.chia import read_chia
from fedmedlora.corpora.common import CorpusError, Drops
from fedmedlora.corpora.maccrobat import read_maccrobat
from fedmedlora.corpora.mapping import CORPUS_INFO, LABEL_SETS
from fedmedlora.corpora.phee import read_phee
from fedmedlora.schema import Document

Reader = Callable[..., tuple[list[Document], Drops]]

#: corpus name → reader; the name is also the site name and the folder under the corpora directory.
READERS: dict[str, Reader] = {
    "chia": read_chia,
    "phee": read_phee,
    "bc5cdr": read_bc5cdr,
    "maccrobat": read_maccrobat,
}


#: Environment variable naming the corpora folder (one subfolder per corpus).
CORPORA_ENV = "FEDMEDLORA_CORPORA"


def default_corpora_dir() -> Path | None:
    """Where the open corpora are: ``$FEDMEDLORA_CORPORA`` if set, else ``../shared/datasets`` beside the working
    directory or beside the repository this package is installed from; ``None`` when none of them exists."""
    env = os.environ.get(CORPORA_ENV)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[3]
    for cand in (Path.cwd().parent / "shared" / "datasets", repo.parent / "shared" / "datasets"):
        if cand.is_dir():
            return cand
    return None


def read_corpus(name: str, corpora_dir: str | Path, max_docs: int | None = None) -> tuple[list[Document], Drops]:
    """Read corpus ``name`` from ``corpora_dir/<name>``. Raises ``CorpusError`` for an unknown name or folder."""
    if name not in READERS:
        raise CorpusError(f"unknown corpus {name!r}; known: {sorted(READERS)}")
    folder = Path(corpora_dir) / name
    if not folder.is_dir():
        raise CorpusError(f"{folder}: corpus folder not found (expected {name}/ under {corpora_dir})")
    return READERS[name](folder, max_docs=max_docs)


__all__ = [
    "CORPORA_ENV",
    "CORPUS_INFO",
    "LABEL_SETS",
    "READERS",
    "CorpusError",
    "Drops",
    "default_corpora_dir",
    "read_bc5cdr",
    "read_chia",
    "read_corpus",
    "read_maccrobat",
    "read_phee",
]
