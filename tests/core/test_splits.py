"""Seeded document-level splits and cross-site de-duplication (fedmedlora.splits)."""

from collections import Counter
from dataclasses import replace

import pytest

from fedmedlora.schema import Document, LabelSet
from fedmedlora.splits import (
    assign_splits,
    chia_trial,
    count_split,
    group_split,
    remove_cross_site_duplicates,
)


def doc(i, site="chia", split="train", **meta):
    return Document(id=i, site=site, split=split, text="", sentences=(), label_set=LabelSet(), meta=meta)


def test_chia_trial_id():
    assert chia_trial("NCT00050349_exc") == chia_trial("NCT00050349_inc") == "NCT00050349"
    assert chia_trial("NCT1") == "NCT1"


def test_group_split_fractions_seed_and_order_independence():
    ids = [f"g{i:03d}" for i in range(100)]
    a = group_split(ids, (0.8, 0.1, 0.1), seed=1)
    assert Counter(a.values()) == {"train": 80, "dev": 10, "test": 10}
    assert group_split(list(reversed(ids)), (0.8, 0.1, 0.1), seed=1) == a  # input order does not matter
    assert group_split(ids, (0.8, 0.1, 0.1), seed=2) != a
    with pytest.raises(ValueError, match="fractions"):
        group_split(ids, (0.5, 0.1, 0.1), seed=1)


def test_chia_inc_and_exc_stay_together():
    docs = [doc(f"NCT{i:08d}_{s}") for i in range(50) for s in ("inc", "exc")]
    out = assign_splits("chia", docs, seed=13)
    by_trial = {}
    for d in out:
        by_trial.setdefault(chia_trial(d.id), set()).add(d.split)
    assert all(len(v) == 1 for v in by_trial.values())
    assert Counter(next(iter(v)) for v in by_trial.values()) == {"train": 40, "dev": 5, "test": 5}


def test_maccrobat_20_20_rest():
    out = assign_splits("maccrobat", [doc(str(i), "maccrobat") for i in range(200)], seed=13)
    assert Counter(d.split for d in out) == {"train": 20, "dev": 20, "test": 160}
    out2 = assign_splits("maccrobat", [doc(str(i), "maccrobat") for i in range(200)], seed=13)
    assert [d.split for d in out] == [d.split for d in out2]
    assert Counter(count_split(["a", "b"], 20, 20, 0).values()) == {"train": 2}


def test_official_splits_are_kept_and_unknown_site_rejected():
    docs = [doc("1", "phee", "dev"), doc("2", "phee", "test")]
    assert [d.split for d in assign_splits("phee", docs, seed=1)] == ["dev", "test"]
    with pytest.raises(ValueError, match="no split policy"):
        assign_splits("mimic", docs, seed=1)


def test_cross_site_duplicates_removed_from_phee():
    phee = [doc("111_1", "phee", pmid="111"), doc("111_2", "phee", pmid="111"), doc("222_1", "phee", pmid="222")]
    bc = [doc("111", "bc5cdr", pmid="111"), doc("333", "bc5cdr", pmid="333")]
    kept, shared = remove_cross_site_duplicates(phee, bc)
    assert [d.id for d in kept] == ["222_1"] and shared == ["111"]
    assert remove_cross_site_duplicates([replace(phee[2])], bc) == ([phee[2]], [])
