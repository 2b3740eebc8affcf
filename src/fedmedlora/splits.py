"""Seeded, document-level train/dev/test splits and cross-site de-duplication.

Owns: ``assign_splits`` (the split policy of each site), ``group_split`` (a seeded split of groups by fractions),
``chia_trial`` and ``remove_cross_site_duplicates``. Must not import torch, transformers, peft or flwr.

Policy:

* **PHEE** and **BC5CDR** keep their official splits (PHEE train/dev/test files, BC5CDR Training/Development/Test).
* **Chia** has no official split: trials (NCT id) are split 80/10/10 with a seeded shuffle, so a trial's
  inclusion (``_inc``) and exclusion (``_exc``) criteria always land in the same split.
* **MACCROBAT** (the low-resource new site) has no official split: a seeded shuffle gives 20 train, 20 dev and the
  rest (160) test documents.
* **Cross-site duplicates**: 21 PubMed ids occur in both PHEE (sentences of the abstract) and BC5CDR (the whole
  abstract). They are removed from PHEE (PHEE is larger per abstract-token and keeps the official split otherwise),
  so no abstract is seen by two sites and no PHEE test sentence was trained on through BC5CDR.

The shuffle is ``random.Random(seed)`` over the *sorted* group ids, so the split depends only on the seed and the
set of ids (not on file-system order).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from fedmedlora.schema import SPLITS, Document

#: Sites whose readers already set the official split.
OFFICIAL_SPLIT_SITES: frozenset[str] = frozenset({"phee", "bc5cdr"})
CHIA_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
MACCROBAT_TRAIN, MACCROBAT_DEV = 20, 20


def chia_trial(doc_id: str) -> str:
    """``NCT00050349_exc`` → ``NCT00050349``."""
    return doc_id.rsplit("_", 1)[0] if doc_id.endswith(("_inc", "_exc")) else doc_id


def group_split(groups: Iterable[str], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """Assign each distinct group to train/dev/test by ``fractions`` (rounded; test takes the remainder)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    ids = sorted(set(groups))
    random.Random(seed).shuffle(ids)
    n_train = round(fractions[0] * len(ids))
    n_dev = round(fractions[1] * len(ids))
    return {g: ("train" if i < n_train else "dev" if i < n_train + n_dev else "test") for i, g in enumerate(ids)}


def count_split(groups: Iterable[str], n_train: int, n_dev: int, seed: int) -> dict[str, str]:
    """Assign ``n_train`` groups to train, ``n_dev`` to dev and the rest to test (seeded)."""
    ids = sorted(set(groups))
    if n_train < 0 or n_dev < 0:
        raise ValueError("n_train and n_dev must be >= 0")
    random.Random(seed).shuffle(ids)
    return {g: ("train" if i < n_train else "dev" if i < n_train + n_dev else "test") for i, g in enumerate(ids)}


def _apply(docs: Sequence[Document], key: Callable[[Document], str], table: dict[str, str]) -> list[Document]:
    return [replace(d, split=table[key(d)]) for d in docs]


def assign_splits(
    site: str,
    docs: Sequence[Document],
    seed: int,
    *,
    maccrobat_train: int = MACCROBAT_TRAIN,
    maccrobat_dev: int = MACCROBAT_DEV,
) -> list[Document]:
    """Return ``docs`` with ``split`` set by the site's policy (see the module docstring)."""
    if site in OFFICIAL_SPLIT_SITES:
        bad = [d.id for d in docs if d.split not in SPLITS]
        if bad:
            raise ValueError(f"{site}: documents without an official split: {bad[:5]}")
        return list(docs)
    if site == "chia":
        return _apply(
            docs, lambda d: chia_trial(d.id), group_split((chia_trial(d.id) for d in docs), CHIA_FRACTIONS, seed)
        )
    if site == "maccrobat":
        return _apply(docs, lambda d: d.id, count_split((d.id for d in docs), maccrobat_train, maccrobat_dev, seed))
    raise ValueError(f"no split policy for site {site!r}")


def pmid_of(doc: Document) -> str:
    """The PubMed id of a PHEE or BC5CDR document (``meta['pmid']``, else the id before ``_``)."""
    return str(doc.meta.get("pmid") or doc.id.split("_")[0])


def remove_cross_site_duplicates(
    phee: Sequence[Document], bc5cdr: Sequence[Document]
) -> tuple[list[Document], list[str]]:
    """Drop PHEE documents whose abstract (PMID) is also in BC5CDR. Returns (kept PHEE docs, sorted shared PMIDs)."""
    bc = {pmid_of(d) for d in bc5cdr}
    shared = sorted({pmid_of(d) for d in phee} & bc, key=lambda x: (len(x), x))
    kept = [d for d in phee if pmid_of(d) not in bc]
    return kept, shared
