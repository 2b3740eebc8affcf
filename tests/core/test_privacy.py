"""fedmedlora.privacy: units of privacy, the ledger, update clipping and the noise of a weighted mean."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from fedmedlora.privacy import (
    LedgerEntry,
    PrivacyError,
    PrivacyLedger,
    add_gaussian_noise,
    clip_update,
    global_norm,
    mean_noise_std,
    record_id,
    record_ids,
)


@dataclass
class Ex:
    sentence_id: str
    site: str = "a"


def test_record_of_a_sentence():
    assert record_id("NCT0001:3", "document") == "NCT0001"
    assert record_id("doc:with:colons:12", "document") == "doc:with:colons"
    assert record_id("no-index", "document") == "no-index"
    assert record_id("NCT0001:3", "sentence") == "NCT0001:3"


def test_record_ids_group_by_unit_and_never_merge_sites():
    exs = [Ex("d1:0"), Ex("d1:0"), Ex("d1:1"), Ex("d2:0"), Ex("d1:0", site="b")]
    assert record_ids(exs, "document") == [0, 0, 0, 1, 2]
    assert record_ids(exs, "sentence") == [0, 0, 1, 2, 3]
    assert record_ids(exs, "example") == [0, 1, 2, 3, 4]
    with pytest.raises(PrivacyError, match="example 1"):
        record_ids([Ex("d1:0"), Ex("")], "document")
    with pytest.raises(PrivacyError, match="not one of"):
        record_ids(exs, "patient")


def test_ledger_round_trip_and_bad_input():
    ledger = PrivacyLedger([LedgerEntry(1.0, 0.1, 10, round=1, run="r"), LedgerEntry(0.8, 0.2, 5, round=2)])
    again = PrivacyLedger.from_json(ledger.to_json())
    assert again == ledger and again.steps == 15
    assert again.history() == [(1.0, 0.1, 10), (0.8, 0.2, 5)]
    with pytest.raises(PrivacyError, match=r"ledger\.json: not valid JSON"):
        PrivacyLedger.from_json("{", "ledger.json")
    with pytest.raises(PrivacyError, match=r"entry 0: .*sample_rate"):
        PrivacyLedger.from_json('{"entries": [{"noise_multiplier": 1, "sample_rate": 2, "steps": 1}]}')
    with pytest.raises(PrivacyError, match="entry 0"):
        PrivacyLedger.from_json('{"entries": [{"noise_multiplier": 1, "sample_rate": 0.5}]}')


def test_clip_update_bounds_the_delta_and_keeps_small_ones():
    ref = {"a": np.zeros((2, 2), np.float32), "b": np.ones(3, np.float32)}
    big = {"a": np.full((2, 2), 3.0, np.float32), "b": np.ones(3, np.float32) + 4.0}
    clipped, norm = clip_update(big, ref, 1.0)
    assert norm == pytest.approx(math.sqrt(4 * 9 + 3 * 16))
    delta = {k: clipped[k] - ref[k] for k in clipped}
    assert global_norm(delta) == pytest.approx(1.0, rel=1e-5)
    # the direction is kept
    assert np.allclose(delta["a"] / delta["b"][0], 3 / 4)
    small = {"a": ref["a"] + 0.01, "b": ref["b"]}
    same, _ = clip_update(small, ref, 1.0)
    assert all(np.allclose(same[k], small[k]) for k in small)
    assert clipped["a"].dtype == np.float32
    with pytest.raises(PrivacyError, match="lacks"):
        clip_update({"c": np.zeros(1)}, ref, 1.0)
    with pytest.raises(PrivacyError, match="positive"):
        clip_update(big, ref, 0.0)


def test_noise_of_a_weighted_mean():
    assert mean_noise_std([0.25, 0.25, 0.5], 2.0, 1.5) == pytest.approx(1.5)
    assert mean_noise_std([1 / 3] * 3, 1.0, 1.0) == pytest.approx(1 / 3)  # Flower's σ·C/m
    with pytest.raises(PrivacyError):
        mean_noise_std([0.5, 0.6], 1.0, 1.0)
    arrays = {"x": np.zeros(20000, np.float32)}
    noised = add_gaussian_noise(arrays, 0.3, np.random.default_rng(0))
    assert noised["x"].std() == pytest.approx(0.3, rel=0.03) and abs(noised["x"].mean()) < 0.01
    assert np.array_equal(add_gaussian_noise(arrays, 0.0, np.random.default_rng(0))["x"], arrays["x"])
