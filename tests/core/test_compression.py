"""Tests for fedmedlora.compression on hand-made arrays (no torch, no flwr)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fedmedlora.aggregation import nbytes
from fedmedlora.compression import (
    METHODS,
    SCALE_SUFFIX,
    CompressionError,
    bf16_bits_to_float32,
    decode,
    encode,
    estimate_nbytes,
    float32_to_bf16_bits,
)

A = "base_model.model.layers.0.self_attn.q_proj.lora_A.weight"
B = "base_model.model.layers.0.self_attn.q_proj.lora_B.weight"


def _adapter(seed: int = 0, scale: float = 0.02) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        A: (rng.standard_normal((8, 64)) * scale).astype(np.float32),
        B: (rng.standard_normal((96, 8)) * scale).astype(np.float32),
    }


def test_none_round_trip_is_exact_and_state_empty() -> None:
    arrays = _adapter()
    payload, state = encode(arrays, "none")
    assert state == {}
    out = decode(payload, "none")
    assert set(out) == set(arrays)
    for k in arrays:
        assert out[k].dtype == np.float32
        np.testing.assert_array_equal(out[k], arrays[k])
    assert nbytes(payload) == 4 * (8 * 64 + 96 * 8)


def test_none_with_reference_is_exact() -> None:
    arrays, ref = _adapter(0), _adapter(1)
    payload, _ = encode(arrays, "none", reference=ref)
    out = decode(payload, "none", reference=ref)
    for k in arrays:
        np.testing.assert_allclose(out[k], arrays[k], rtol=0, atol=1e-7)


@pytest.mark.parametrize(("method", "dtype", "bound"), [("fp16", np.float16, 2.0**-11), ("bf16", np.uint16, 2.0**-8)])
def test_half_precision_relative_error_bounds(method: str, dtype: type, bound: float) -> None:
    rng = np.random.default_rng(3)
    # magnitudes in fp16's normal range, both signs
    x = (rng.uniform(1e-3, 100.0, size=(50, 40)) * rng.choice([-1, 1], size=(50, 40))).astype(np.float32)
    payload, _ = encode({"w": x}, method, error_feedback=False)
    assert payload["w"].dtype == dtype
    assert nbytes(payload) == 2 * x.size
    out = decode(payload, method)["w"]
    assert out.dtype == np.float32
    rel = np.abs(out - x) / np.abs(x)
    assert rel.max() <= bound
    assert rel.max() > 0  # really lossy: the bound is not vacuous


def test_bf16_round_to_nearest_even_hand_cases() -> None:
    one = np.float32(1.0)
    ulp = np.float32(2.0**-7)  # bf16 spacing at 1.0
    cases = np.array(
        [
            1.0,
            one + ulp / 2,  # tie → even (1.0)
            one + ulp + ulp / 2,  # tie → even (1 + 2 ulp)
            one + ulp / 2 + np.float32(2.0**-20),  # above the tie → up
            -3.0,
        ],
        dtype=np.float32,
    )
    got = bf16_bits_to_float32(float32_to_bf16_bits(cases))
    expected = np.array([1.0, 1.0, 1.0 + 2 * 2.0**-7, 1.0 + 2.0**-7, -3.0], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)
    assert float32_to_bf16_bits(np.array([1.0], np.float32))[0] == 0x3F80


def test_fp16_out_of_range_rejected() -> None:
    with pytest.raises(CompressionError, match=r"fp16: w has 1 value\(s\) beyond"):
        encode({"w": np.array([1.0, 1e6], np.float32)}, "fp16")
    # bf16 has float32's range
    payload, _ = encode({"w": np.array([1.0, 1e6], np.float32)}, "bf16")
    np.testing.assert_allclose(decode(payload, "bf16")["w"], [1.0, 1e6], rtol=2**-8)
    # ... but float32's largest values round up to inf in bf16
    with pytest.raises(CompressionError, match="bf16: w has values that round to ±inf"):
        encode({"w": np.array([3.4e38], np.float32)}, "bf16")


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_int8_error_bound_per_tensor_and_row(granularity: str) -> None:
    arrays = _adapter(5)
    arrays[B][3] *= 50  # one large row: per-row scales must help the others
    payload, _ = encode(arrays, "int8", error_feedback=False, granularity=granularity)
    out = decode(payload, "int8")
    assert set(out) == set(arrays)
    for k, x in arrays.items():
        q, scale = payload[k], payload[k + SCALE_SUFFIX]
        assert q.dtype == np.int8 and scale.dtype == np.float32
        if granularity == "tensor":
            assert scale.shape == (1,)
            np.testing.assert_allclose(scale[0], np.abs(x).max() / 127, rtol=1e-6)
            bound = np.full(x.shape, scale[0] / 2)
        else:
            assert scale.shape == (x.shape[0],)
            np.testing.assert_allclose(scale, np.abs(x).max(axis=1) / 127, rtol=1e-6)
            bound = np.broadcast_to((scale / 2)[:, None], x.shape)
        err = np.abs(out[k] - x)
        assert np.all(err <= bound * (1 + 1e-5) + 1e-12)
        assert err.max() > 0
    n_scales = 2 if granularity == "tensor" else 8 + 96
    n_values = sum(x.size for x in arrays.values())
    assert nbytes(payload) == n_values + 4 * n_scales
    assert estimate_nbytes(n_values, 2, "int8", n_scales=n_scales) == nbytes(payload)


def test_per_row_beats_per_tensor_on_uneven_rows() -> None:
    x = np.ones((4, 16), np.float32) * 0.01
    x[0] = 10.0
    x[1, 0] = 0.013
    errs = {}
    for g in ("tensor", "row"):
        p, _ = encode({"w": x}, "int8", error_feedback=False, granularity=g)
        errs[g] = float(np.abs(decode(p, "int8")["w"] - x).max())
    assert errs["row"] < errs["tensor"]


def test_int8_zero_scalar_and_empty_tensors() -> None:
    arrays = {
        "zeros": np.zeros((3, 4), np.float32),
        "scalar": np.array(-2.5, np.float32),
        "empty": np.zeros((0, 5), np.float32),
    }
    for g in ("tensor", "row"):
        payload, state = encode(arrays, "int8", granularity=g)
        out = decode(payload, "int8")
        np.testing.assert_array_equal(out["zeros"], arrays["zeros"])
        np.testing.assert_allclose(out["scalar"], -2.5, rtol=1e-6)
        assert out["scalar"].shape == () and out["empty"].shape == (0, 5)
        assert set(state) == set(arrays)


def _cumulative_error(method: str, error_feedback: bool, rounds: int = 20) -> tuple[float, float]:
    """Max |Σ true deltas − Σ decoded deltas| after ``rounds`` rounds, and the largest per-round half-step."""
    rng = np.random.default_rng(11)
    global_prev = _adapter(0)
    local = {k: v.copy() for k, v in global_prev.items()}
    state: dict[str, np.ndarray] = {}
    true_cum = {k: np.zeros_like(v, dtype=np.float64) for k, v in local.items()}
    sent_cum = {k: np.zeros_like(v, dtype=np.float64) for k, v in local.items()}
    half_step = 0.0
    for _ in range(rounds):
        # a biased small drift plus noise: without error feedback the small drift is rounded away
        local = {
            k: v + np.float32(2e-4) + (rng.standard_normal(v.shape) * 1e-3).astype(np.float32) for k, v in local.items()
        }
        local[A][0, 0] += 0.05  # one large value fixes the per-tensor scale
        payload, state = encode(local, method, state, reference=global_prev, error_feedback=error_feedback)
        if method == "int8":
            half_step = max(half_step, *(float(payload[k + SCALE_SUFFIX].max()) / 2 for k in local))
        received = decode(payload, method, reference=global_prev)
        for k in local:
            true_cum[k] += local[k].astype(np.float64) - global_prev[k]
            sent_cum[k] += received[k].astype(np.float64) - global_prev[k]
        global_prev = received  # the server's view becomes the next reference
        local = {k: v.copy() for k, v in received.items()}
    err = max(float(np.abs(true_cum[k] - sent_cum[k]).max()) for k in local)
    return err, half_step


def test_error_feedback_tracks_cumulative_sum_int8() -> None:
    err_fb, half_step = _cumulative_error("int8", error_feedback=True)
    err_plain, _ = _cumulative_error("int8", error_feedback=False)
    # with feedback the cumulative error is bounded by the last round's quantisation error (≤ half a step)
    assert err_fb <= half_step * (1 + 1e-4) + 1e-7
    # without it the bias accumulates over the rounds
    assert err_plain > 3 * err_fb


def test_error_feedback_state_round_trip_and_checks() -> None:
    arrays = _adapter()
    _, state = encode(arrays, "int8")
    assert set(state) == set(arrays)
    assert all(v.dtype == np.float32 and v.shape == arrays[k].shape for k, v in state.items())
    # no feedback → empty state; lossless → empty state
    assert encode(arrays, "int8", error_feedback=False)[1] == {}
    assert encode(arrays, "none", state)[1] == {}
    bad = {A: np.zeros((3, 3), np.float32)}
    with pytest.raises(CompressionError, match=r"encode state: .*lora_A.weight has shape \(3, 3\), expected \(8, 64\)"):
        encode(arrays, "int8", bad)
    with pytest.raises(CompressionError, match="encode state: key sets differ"):
        encode(arrays, "int8", {"other": np.zeros(1, np.float32)})


def test_nan_and_inf_rejected_with_key() -> None:
    for method in METHODS:
        with pytest.raises(CompressionError, match=r"encode: w contains 1 NaN/Inf"):
            encode({"w": np.array([1.0, np.nan], np.float32)}, method)
        with pytest.raises(CompressionError, match=r"encode: w contains 2 NaN/Inf"):
            encode({"w": np.array([np.inf, -np.inf], np.float32)}, method)
    with pytest.raises(CompressionError, match="encode reference: w contains"):
        encode({"w": np.ones(2, np.float32)}, "int8", reference={"w": np.array([0.0, np.nan], np.float32)})


def test_bad_inputs_give_clear_errors() -> None:
    arrays = _adapter()
    with pytest.raises(CompressionError, match="unknown compression method 'fp8'"):
        encode(arrays, "fp8")
    with pytest.raises(CompressionError, match="unknown compression method"):
        decode({}, "zip")
    with pytest.raises(CompressionError, match="granularity"):
        encode(arrays, "int8", granularity="block")
    with pytest.raises(CompressionError, match="non-float dtype int64"):
        encode({"w": np.arange(3)}, "fp16")
    with pytest.raises(CompressionError, match="not a numpy array"):
        encode({"w": [1.0, 2.0]}, "fp16")  # type: ignore[dict-item]
    with pytest.raises(CompressionError, match="reserved suffix"):
        encode({"w::scale": np.ones(2, np.float32)}, "none")
    with pytest.raises(CompressionError, match=r"encode reference: .*lora_B.weight has shape \(8, 96\)"):
        encode(arrays, "int8", reference={A: arrays[A], B: arrays[B].T.copy()})
    with pytest.raises(CompressionError, match=r"encode reference: key sets differ: missing \[.*lora_B"):
        encode(arrays, "int8", reference={A: arrays[A]})


def test_decode_rejects_malformed_payloads() -> None:
    arrays = _adapter()
    payload, _ = encode(arrays, "int8")
    no_scale = {k: v for k, v in payload.items() if k != A + SCALE_SUFFIX}
    with pytest.raises(CompressionError, match=r"lora_A.weight has no scale entry"):
        decode(no_scale, "int8")
    orphan = dict(payload)
    del orphan[B]
    with pytest.raises(CompressionError, match="scale without tensor"):
        decode(orphan, "int8")
    wrong_scale = dict(payload)
    wrong_scale[B + SCALE_SUFFIX] = np.ones(3, np.float32)
    with pytest.raises(CompressionError, match=r"scale of .*lora_B.weight has shape \(3,\)"):
        decode(wrong_scale, "int8")
    nan_scale = dict(payload)
    nan_scale[A + SCALE_SUFFIX] = np.array([np.nan], np.float32)
    with pytest.raises(CompressionError, match="NaN or Inf scale"):
        decode(nan_scale, "int8")
    with pytest.raises(CompressionError, match="expected int8"):
        decode({**payload, A: payload[A].astype(np.int16)}, "int8")
    fp16_payload, _ = encode(arrays, "fp16")
    with pytest.raises(CompressionError, match=r"decode bf16: .* has dtype float16, expected uint16"):
        decode(fp16_payload, "bf16")
    with pytest.raises(CompressionError, match=r"decode none: .* has dtype float16, expected float32"):
        decode(fp16_payload, "none")
    with pytest.raises(CompressionError, match="decode fp16: w decodes to NaN/Inf"):
        decode({"w": np.array([np.inf], np.float16)}, "fp16")
    with pytest.raises(CompressionError, match=r"decode reference: key sets differ"):
        decode(fp16_payload, "fp16", reference={A: arrays[A]})


def test_payload_sizes_by_method() -> None:
    arrays = _adapter()
    n = sum(x.size for x in arrays.values())
    sizes = {m: nbytes(encode(arrays, m)[0]) for m in METHODS}
    assert sizes == {"none": 4 * n, "fp16": 2 * n, "bf16": 2 * n, "int8": n + 4 * 2}
    assert {m: estimate_nbytes(n, 2, m) for m in METHODS} == sizes


def test_module_is_pure_numpy() -> None:
    code = (
        "import sys, fedmedlora.compression\n"
        "print(','.join(h for h in ('torch', 'transformers', 'peft', 'flwr') if h in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
