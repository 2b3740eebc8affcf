"""RoLoRA key selection and exactness, Fed-MedLoRA+'s data-chosen temperature and the weights' entropy, on
hand-made tensors and losses (pure core: no torch, no flwr)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmedlora.aggregation import (
    AggregationError,
    AggregationSettings,
    aggregation_weights,
    data_temperature,
    merge_into,
    nbytes,
    normalized_entropy,
    rolora_factor,
    shared_keys,
    weighted_mean,
    weights_for,
)

LAYERS = ("q_proj", "v_proj")
A = [f"base_model.model.layers.0.self_attn.{m}.lora_A.weight" for m in LAYERS]
B = [f"base_model.model.layers.0.self_attn.{m}.lora_B.weight" for m in LAYERS]
D_IN, D_OUT, R = 6, 5, 3


def _adapter(rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {a: rng.normal(size=(R, D_IN)).astype(np.float32) for a in A}
    out.update({b: rng.normal(size=(D_OUT, R)).astype(np.float32) for b in B})
    return out


def test_rolora_alternates_b_then_a() -> None:
    assert [rolora_factor(r) for r in (1, 2, 3, 4)] == ["B", "A", "B", "A"]
    keys = [*A, *B]
    assert shared_keys("rolora", keys, 1) == sorted(B)
    assert shared_keys("rolora", keys, 2) == sorted(A)
    assert shared_keys("rolora", keys, 7) == sorted(B)


@pytest.mark.parametrize("bad", [0, -1, None, 1.5, True])
def test_rolora_needs_a_round(bad: object) -> None:
    with pytest.raises(AggregationError, match="round"):
        shared_keys("rolora", [*A, *B], bad)  # type: ignore[arg-type]


def test_rolora_needs_both_factors() -> None:
    with pytest.raises(AggregationError, match="needs lora_A and lora_B"):
        shared_keys("rolora", A, 1)


@pytest.mark.parametrize("rnd", [1, 2])
def test_rolora_round_is_exact_for_the_product_and_leaves_the_frozen_factor_alone(rnd: int) -> None:
    rng = np.random.default_rng(rnd)
    glob = _adapter(rng)
    sizes = [120.0, 30.0, 50.0]
    trained = "B" if rnd == 1 else "A"
    upload = shared_keys("rolora", list(glob), rnd)
    sites = []
    for _ in sizes:  # every site starts from the global adapter and changes only the trained factor
        local = {k: v.copy() for k, v in glob.items()}
        for k in upload:
            local[k] = local[k] + rng.normal(size=local[k].shape).astype(np.float32)
        sites.append(local)
    w = aggregation_weights("rolora", sizes)
    np.testing.assert_allclose(w, np.asarray(sizes) / sum(sizes))
    mean = weighted_mean([{k: s[k] for k in upload} for s in sites], w)
    new = merge_into(glob, mean)
    for k in upload:  # the aggregate of the trained factor is the weighted mean
        expected = sum(wk * s[k].astype(np.float64) for wk, s in zip(w, sites, strict=True))
        np.testing.assert_allclose(new[k], expected, rtol=1e-5, atol=1e-6)
    for k in set(glob) - set(upload):  # the frozen factor is untouched
        np.testing.assert_array_equal(new[k], glob[k])
        assert trained not in k.split(".")[-2]
    for a, b in zip(A, B, strict=True):  # B̄A (or BĀ) is the weighted mean of the sites' products
        ideal = sum(wk * (s[b].astype(np.float64) @ s[a].astype(np.float64)) for wk, s in zip(w, sites, strict=True))
        np.testing.assert_allclose(new[b].astype(np.float64) @ new[a].astype(np.float64), ideal, rtol=1e-4, atol=1e-5)
    # the naive Fed-MedLoRA average of both factors is not exact when both move (the contrast that matters)
    both = [s for s in sites]
    for s in both:
        for k in glob:
            if k not in upload:
                s[k] = s[k] + rng.normal(size=s[k].shape).astype(np.float32)
    naive = weighted_mean(both, w)
    ideal = sum(wk * (s[B[0]].astype(np.float64) @ s[A[0]]) for wk, s in zip(w, both, strict=True))
    assert np.abs(naive[B[0]].astype(np.float64) @ naive[A[0]] - ideal).max() > 1e-2


def test_rolora_upload_is_about_half_of_fedmedlora() -> None:
    glob = _adapter(np.random.default_rng(0))
    full = nbytes({k: glob[k] for k in shared_keys("fedmedlora", glob)})
    for rnd in (1, 2):
        half = nbytes({k: glob[k] for k in shared_keys("rolora", glob, rnd)})
        assert 0.3 * full < half < 0.7 * full
    two_rounds = sum(nbytes({k: glob[k] for k in shared_keys("rolora", glob, r)}) for r in (1, 2))
    assert two_rounds == full


# ---- data-chosen temperature -----------------------------------------------------------------------------------


def test_losses_differing_by_0_16_are_near_uniform_at_t1_and_separated_by_the_range_rule() -> None:
    losses = [1.20, 1.28, 1.36]
    fixed = aggregation_weights("fedmedlora+", [1, 1, 1], losses)
    assert fixed.max() - fixed.min() < 0.06  # the paper's T = 1: almost uniform
    assert normalized_entropy(fixed) > 0.99
    ranged = aggregation_weights("fedmedlora+", [1, 1, 1], losses, 1.0, temperature_rule="range")
    assert ranged[0] / ranged[2] == pytest.approx(math.e)  # best / worst = exp(1 / temperature)
    assert ranged[0] > ranged[1] > ranged[2]
    assert normalized_entropy(ranged) < normalized_entropy(fixed) - 0.03
    sharper = aggregation_weights("fedmedlora+", [1, 1, 1], losses, 0.25, temperature_rule="range")
    assert sharper[0] == pytest.approx(1 / (1 + math.exp(-2) + math.exp(-4)))
    std = aggregation_weights("fedmedlora+", [1, 1, 1], losses, 1.0, temperature_rule="std")
    assert std[0] / std[2] == pytest.approx(math.exp(0.16 / np.std(losses)))


@pytest.mark.parametrize("rule", ["std", "range"])
def test_identical_losses_give_uniform_weights(rule: str) -> None:
    assert data_temperature([0.7, 0.7, 0.7], rule) == math.inf
    w = aggregation_weights("fedmedlora+", [1, 5, 9], [0.7, 0.7, 0.7], temperature_rule=rule)
    np.testing.assert_allclose(w, [1 / 3] * 3)
    assert normalized_entropy(w) == pytest.approx(1.0)


@pytest.mark.parametrize("rule", ["std", "range"])
def test_data_temperature_is_scale_and_shift_invariant(rule: str) -> None:
    losses = np.array([0.9, 1.3, 1.05, 2.0])
    base = aggregation_weights("fedmedlora+", [1] * 4, losses, 0.5, temperature_rule=rule)
    for scale, shift in ((10.0, 0.0), (0.01, 3.0), (1.0, -0.5)):
        moved = aggregation_weights("fedmedlora+", [1] * 4, losses * scale + shift, 0.5, temperature_rule=rule)
        np.testing.assert_allclose(moved, base, rtol=1e-9)
    fixed = aggregation_weights("fedmedlora+", [1] * 4, losses)
    assert not np.allclose(aggregation_weights("fedmedlora+", [1] * 4, losses * 10), fixed)


def test_data_temperature_combines_with_size_and_settings() -> None:
    s = AggregationSettings(rule="fedmedlora+", temperature_rule="range", combine_with_size=True)
    w = weights_for(s, [100, 300], [1.0, 1.16])
    loss_part = np.array([math.e, 1.0]) / (math.e + 1)
    expected = loss_part * np.array([0.25, 0.75])
    np.testing.assert_allclose(w, expected / expected.sum())
    assert data_temperature([1.0, 1.16], "fixed", 2.0) == 2.0
    assert data_temperature([1.0, 1.16], "range", 2.0) == pytest.approx(0.32)


@pytest.mark.parametrize("rule", ["std", "range"])
def test_a_temperature_floor_keeps_noise_from_separating_sites(rule: str) -> None:
    noise = [1.2000, 1.2004, 1.2007]  # three adapters whose losses differ by noise only
    unfloored = aggregation_weights("fedmedlora+", [1] * 3, noise, 0.5, temperature_rule=rule)
    assert unfloored[0] / unfloored[2] > 2.5  # scale invariance: noise is weighted like a real difference
    floored = aggregation_weights("fedmedlora+", [1] * 3, noise, 0.5, temperature_rule=rule, temperature_floor=0.05)
    assert floored.max() - floored.min() < 0.005 and normalized_entropy(floored) > 0.9999
    assert data_temperature(noise, rule, 0.5, 0.05) == 0.05
    # a real difference is still separated: the floor only bounds T from below
    real = [1.2, 1.5, 1.9]
    np.testing.assert_allclose(
        aggregation_weights("fedmedlora+", [1] * 3, real, 0.5, temperature_rule=rule, temperature_floor=0.05),
        aggregation_weights("fedmedlora+", [1] * 3, real, 0.5, temperature_rule=rule),
    )
    # the paper's fixed T ignores it; identical losses stay uniform
    assert data_temperature(noise, "fixed", 1.0, 0.05) == 1.0
    np.testing.assert_allclose(
        weights_for(
            AggregationSettings("fedmedlora+", temperature_rule=rule, temperature_floor=0.05), [1, 2], [0.7, 0.7]
        ),
        [0.5, 0.5],
    )


def test_bad_temperature_rules_rejected() -> None:
    with pytest.raises(AggregationError, match="temperature_rule"):
        AggregationSettings(rule="fedmedlora+", temperature_rule="auto")
    with pytest.raises(AggregationError, match="temperature_rule"):
        data_temperature([1.0, 2.0], "median")
    with pytest.raises(AggregationError, match="temperature must be > 0"):
        data_temperature([1.0, 2.0], "range", 0.0)
    with pytest.raises(AggregationError, match="floor"):
        data_temperature([1.0, 2.0], "range", 1.0, -0.1)
    with pytest.raises(AggregationError, match="temperature_floor"):
        AggregationSettings(rule="fedmedlora+", temperature_floor=math.inf)
    with pytest.raises(AggregationError, match="site b"):
        aggregation_weights("fedmedlora+", [1, 1], [1.0, float("nan")], temperature_rule="range", sites=["a", "b"])


def test_normalized_entropy() -> None:
    assert normalized_entropy([1, 1, 1, 1]) == pytest.approx(1.0)
    assert normalized_entropy([1, 0, 0]) == pytest.approx(0.0)
    assert normalized_entropy([5]) == 1.0
    h = normalized_entropy([0.7, 0.2, 0.1])
    assert 0 < h < 1
    assert h == pytest.approx(-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)) / math.log(3))
    with pytest.raises(AggregationError):
        normalized_entropy([0, 0])
