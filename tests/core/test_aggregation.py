"""Tests for fedmedlora.aggregation on hand-made tensors (no torch, no flwr)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from fedmedlora.aggregation import (
    AggregationError,
    AggregationSettings,
    aggregation_weights,
    is_lora_A,
    is_lora_B,
    loss_weights,
    merge_into,
    nbytes,
    shared_keys,
    size_weights,
    spec_of,
    weighted_mean,
    weights_for,
)

A = "base_model.model.layers.0.self_attn.q_proj.lora_A.weight"
B = "base_model.model.layers.0.self_attn.q_proj.lora_B.weight"


def _site(a: float, b: float) -> dict[str, np.ndarray]:
    return {
        A: np.full((2, 3), a, dtype=np.float32),
        B: np.array([[b], [2 * b], [3 * b]], dtype=np.float32),
    }


def test_weights_sum_to_one_and_zero_size_gets_zero() -> None:
    w = aggregation_weights("fedmedlora", [100, 0, 300])
    assert w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(w, [0.25, 0.0, 0.75])


def test_equal_sites_reduce_to_plain_mean() -> None:
    updates = [_site(1, 1), _site(2, 4), _site(6, 7)]
    out = weighted_mean(updates, aggregation_weights("fedmedlora", [5, 5, 5]))
    np.testing.assert_allclose(out[A], np.full((2, 3), 3.0))
    np.testing.assert_allclose(out[B], np.array([[4.0], [8.0], [12.0]]))


def test_exact_expected_arrays_three_sites() -> None:
    updates = [_site(1, 1), _site(2, 4), _site(6, 7)]
    w = aggregation_weights("fedmedlora", [1, 2, 1])  # 0.25, 0.5, 0.25
    out = weighted_mean(updates, w, sites=["chia", "phee", "bc5cdr"])
    # A: 0.25*1 + 0.5*2 + 0.25*6 = 2.75 ; B row0: 0.25*1 + 0.5*4 + 0.25*7 = 4.0
    np.testing.assert_array_equal(out[A], np.full((2, 3), 2.75, dtype=np.float32))
    np.testing.assert_array_equal(out[B], np.array([[4.0], [8.0], [12.0]], dtype=np.float32))
    assert out[A].dtype == np.float32 and out[B].dtype == np.float32
    assert set(out) == {A, B}


def test_output_keeps_input_dtype_and_accumulates_in_float64() -> None:
    ups = [{A: np.array([1e-4], dtype=np.float16)}, {A: np.array([3e-4], dtype=np.float16)}]
    out = weighted_mean(ups, [1, 1])
    assert out[A].dtype == np.float16
    np.testing.assert_allclose(out[A].astype(np.float64), [2e-4], rtol=1e-2)


def test_lower_validation_loss_gets_higher_weight() -> None:
    w = aggregation_weights("fedmedlora+", [10, 10, 10], losses=[0.5, 1.0, 2.0])
    assert w.sum() == pytest.approx(1.0)
    assert w[0] > w[1] > w[2]
    expected = np.exp([-0.5, -1.0, -2.0]) / np.exp([-0.5, -1.0, -2.0]).sum()
    np.testing.assert_allclose(w, expected)
    # The reference code's exp(1 - L) gives the same normalised weights.
    ref = np.exp(1 - np.array([0.5, 1.0, 2.0]))
    np.testing.assert_allclose(w, ref / ref.sum())


def test_plus_ignores_sizes_unless_combined() -> None:
    plain = aggregation_weights("fedmedlora+", [1, 1000], losses=[1.0, 1.0])
    np.testing.assert_allclose(plain, [0.5, 0.5])
    combined = aggregation_weights("fedmedlora+", [1, 3], losses=[1.0, 1.0], combine_with_size=True)
    np.testing.assert_allclose(combined, [0.25, 0.75])
    c2 = aggregation_weights("fedmedlora+", [1, 1], losses=[0.0, math.log(2)], combine_with_size=True)
    np.testing.assert_allclose(c2, [2 / 3, 1 / 3])


def test_temperature_to_infinity_gives_uniform_and_small_t_argmin() -> None:
    np.testing.assert_allclose(loss_weights([0.1, 5.0, 9.0], temperature=math.inf), [1 / 3] * 3)
    np.testing.assert_allclose(loss_weights([0.1, 5.0, 9.0], temperature=1e6), [1 / 3] * 3, rtol=1e-5)
    np.testing.assert_allclose(loss_weights([0.1, 5.0, 9.0], temperature=1e-3), [1, 0, 0], atol=1e-12)


def test_large_losses_do_not_underflow() -> None:
    w = loss_weights([1000.0, 1001.0])
    np.testing.assert_allclose(w, np.array([1, math.exp(-1)]) / (1 + math.exp(-1)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rule": "fedmedlora", "sizes": [0, 0]}, "positive weight"),
        ({"rule": "fedmedlora", "sizes": [1, -1]}, "negative"),
        ({"rule": "fedmedlora", "sizes": [1, float("nan")]}, "finite"),
        ({"rule": "fedmedlora+", "sizes": [1, 1]}, "validation loss"),
        ({"rule": "fedmedlora+", "sizes": [1, 1], "losses": [1.0, float("inf")]}, "finite"),
        ({"rule": "fedmedlora+", "sizes": [1, 1], "losses": [1.0], "temperature": 1.0}, "1 losses"),
        ({"rule": "fedmedlora+", "sizes": [1, 1], "losses": [1.0, 2.0], "temperature": 0.0}, "temperature"),
        ({"rule": "nope", "sizes": [1]}, "unknown aggregation rule"),
        ({"rule": "fedmedlora", "sizes": []}, "at least one"),
    ],
)
def test_bad_weights_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(AggregationError, match=match):
        aggregation_weights(**kwargs)


def test_negative_weight_names_site() -> None:
    with pytest.raises(AggregationError, match="site phee"):
        size_weights([1, -2], sites=["chia", "phee"])


def test_mismatching_shape_rejected_naming_site_and_key() -> None:
    bad = _site(1, 1)
    bad[B] = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(AggregationError, match=r"site phee: .*lora_B.weight has shape \(3, 2\), expected \(3, 1\)"):
        weighted_mean([_site(1, 1), bad], [1, 1], sites=["chia", "phee"])


def test_mismatching_dtype_keys_and_nan_rejected() -> None:
    bad = _site(1, 1)
    bad[A] = bad[A].astype(np.float64)
    with pytest.raises(AggregationError, match=r"site #1: .*dtype float64, expected float32"):
        weighted_mean([_site(1, 1), bad], [1, 1])
    extra = {**_site(1, 1), "model.embed_tokens.weight": np.zeros((2, 2), dtype=np.float32)}
    with pytest.raises(AggregationError, match=r"site bc5cdr: unexpected tensor set.*embed_tokens"):
        weighted_mean([_site(1, 1), extra], [1, 1], sites=["chia", "bc5cdr"])
    missing = {A: _site(1, 1)[A]}
    with pytest.raises(AggregationError, match="missing"):
        weighted_mean([_site(1, 1), missing], [1, 1])
    nan = _site(1, 1)
    nan[A][0, 0] = np.nan
    with pytest.raises(AggregationError, match="NaN"):
        weighted_mean([_site(1, 1), nan], [1, 1])
    ints = {A: np.zeros((2, 3), dtype=np.int64)}
    with pytest.raises(AggregationError, match="non-float"):
        weighted_mean([ints], [1])


def test_empty_and_count_mismatch_rejected() -> None:
    with pytest.raises(AggregationError, match="at least one update"):
        weighted_mean([], [])
    with pytest.raises(AggregationError, match="2 weights for 1 updates"):
        weighted_mean([_site(1, 1)], [1, 1])


def test_zero_weight_site_does_not_influence() -> None:
    out = weighted_mean([_site(1, 1), _site(100, 100)], [1, 0])
    np.testing.assert_array_equal(out[A], _site(1, 1)[A])


def test_key_selection_per_rule() -> None:
    keys = [B, A, "x.lora_embedding_A", "x.lora_embedding_B"]
    assert is_lora_A(A) and not is_lora_A(B) and is_lora_B(B) and not is_lora_B(A)
    assert not is_lora_A("model.lora_Alpha.weight")
    assert shared_keys("fedmedlora", keys) == sorted(keys)
    assert shared_keys("fedmedlora+", keys) == sorted(keys)
    assert shared_keys("fedsa", keys) == sorted([A, "x.lora_embedding_A"])
    assert shared_keys("ffa", keys) == sorted([B, "x.lora_embedding_B"])
    with pytest.raises(AggregationError, match="needs lora_A and lora_B"):
        shared_keys("fedsa", [A])


def test_fedsa_average_of_a_only_and_merge() -> None:
    g = _site(0, 0)
    ups = [{A: _site(1, 9)[A]}, {A: _site(3, 9)[A]}]
    avg = weighted_mean(ups, aggregation_weights("fedsa", [1, 1]))
    new = merge_into(g, avg)
    np.testing.assert_array_equal(new[A], np.full((2, 3), 2.0, dtype=np.float32))
    np.testing.assert_array_equal(new[B], g[B])  # B untouched on the server
    with pytest.raises(AggregationError, match="not in the global"):
        merge_into({B: g[B]}, avg)


def test_settings_validation_and_weights_for() -> None:
    s = AggregationSettings(rule="fedmedlora+", temperature=2.0)
    assert s.uses_loss
    np.testing.assert_allclose(weights_for(s, [1, 1], [0.0, 2.0]), np.array([1, math.exp(-1)]) / (1 + math.exp(-1)))
    with pytest.raises(AggregationError) as err:
        AggregationSettings(rule="x", size_key="chars", loss_source="cloud", temperature=-1)
    for word in ("rule", "size_key", "loss_source", "temperature"):
        assert word in str(err.value)


def test_nbytes() -> None:
    assert nbytes(_site(1, 1)) == (6 + 3) * 4


def test_core_import_loads_no_torch_or_flwr() -> None:
    code = (
        "import sys, fedmedlora.aggregation; "
        "bad=[m for m in ('torch','flwr','transformers','peft') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_weighted_mean_blames_the_malformed_first_update_given_the_expected_spec():
    good = {"w": np.ones((2, 2), np.float32)}
    odd = {"w": np.ones((3, 2), np.float32)}
    with pytest.raises(AggregationError, match="site a: w has shape"):
        weighted_mean([odd, good], [1, 1], sites=["a", "b"], expected=spec_of(good))


def test_huge_weights_do_not_overflow_to_an_all_zero_mean():
    updates = [{"w": np.ones(3, np.float32)}, {"w": np.full(3, 3.0, np.float32)}]
    out = weighted_mean(updates, [1e308, 1e308], sites=["a", "b"])
    np.testing.assert_allclose(out["w"], 2.0)


def test_robust_mean_median_and_trimmed_mean_per_coordinate() -> None:
    from fedmedlora.aggregation import robust_mean, trimmed_count

    rng = np.random.default_rng(0)
    ups = [{"a": rng.normal(size=(3, 2)).astype(np.float32)} for _ in range(5)]
    ups[4]["a"][0, 0] = 1e30  # one hostile coordinate
    stack = np.stack([u["a"].astype(np.float64) for u in ups])
    med = robust_mean(ups, "median")
    np.testing.assert_allclose(med["a"], np.median(stack, axis=0).astype(np.float32))
    assert med["a"].dtype == np.float32
    assert trimmed_count(5, 0.2) == 1 and trimmed_count(5, 0.0) == 0 and trimmed_count(4, 0.49) == 1
    tm = robust_mean(ups, "trimmed-mean", trim_fraction=0.2)
    np.testing.assert_allclose(tm["a"], np.sort(stack, axis=0)[1:4].mean(axis=0), rtol=1e-6)
    assert abs(float(tm["a"][0, 0])) < 10
    np.testing.assert_allclose(
        robust_mean(ups[:4], "trimmed-mean", trim_fraction=0.0)["a"], stack[:4].mean(axis=0), rtol=1e-6
    )


def test_robust_mean_checks_like_weighted_mean() -> None:
    from fedmedlora.aggregation import AggregationError, AggregationSettings, robust_mean

    good = {"a": np.ones((2, 2), np.float32)}
    bad = {"a": np.full((2, 2), np.nan, np.float32)}
    with pytest.raises(AggregationError, match="gamma"):
        robust_mean([good, good, bad], "median", sites=["alpha", "beta", "gamma"])
    with pytest.raises(AggregationError, match="median"):
        robust_mean([good], "mean")
    with pytest.raises(AggregationError, match="trim_fraction"):
        AggregationSettings(robust="trimmed-mean", trim_fraction=0.5)
