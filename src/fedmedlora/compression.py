"""Adapter transport compression: how LoRA tensors are packed for the wire between sites and the server.

Owns: the transport methods (``"none"`` float32, ``"fp16"``, ``"bf16"``, ``"int8"``), their encode/decode pair,
error feedback (the sender-side residual carried from one round to the next) and the payload size.
It works on plain ``dict[str, numpy.ndarray]`` so the Flower code can put payloads straight into an
``ArrayRecord`` and keep the error-feedback state in ``context.state``.

Must not import torch, transformers, peft or flwr (pure core: stdlib + numpy only).

Methods
-------
``none``  float32 as is (4 bytes/value). Exact for float32 input.
``fp16``  IEEE half (2 bytes/value); relative error ≤ 2⁻¹¹ in the normal range (|x| ≥ 6.1e-5), absolute
          error ≤ 2⁻²⁵ below it. A value beyond ±65504 is rejected (it would become inf).
``bf16``  the upper 16 bits of float32 with round-to-nearest-even, stored as ``uint16`` (numpy has no
          bfloat16); 2 bytes/value, float32's range, relative error ≤ 2⁻⁸.
``int8``  symmetric absmax quantisation ``q = round(x / s)``, ``s = max|x| / 127``, one float32 scale per
          tensor (``granularity="tensor"``, default) or per row of a ≥2-D tensor (``"row"``); the scales travel
          under ``"<key>::scale"``. Error per value ≤ ``s / 2``. 1 byte/value + 4 bytes per scale.

What is quantised: the delta, with error feedback
-------------------------------------------------
Quantise the *update* relative to a reference both ends already hold (the global adapter of the previous round)
rather than the adapter itself: deltas are small and centred, so the absmax scale is tight. Pass that reference
as ``reference=`` to both ``encode`` (which sends ``arrays − reference``) and ``decode`` (which returns
``decoded + reference``). With ``error_feedback=True`` (default) the sender keeps the quantisation residual
``e_t = (Δ_t + e_{t−1}) − decode(encode(Δ_t + e_{t−1}))`` in ``state`` and adds it to the next round's delta, so
the sum of the decoded updates over rounds tracks the sum of the true updates to within one round's
quantisation error (the error does not accumulate). ``state`` is a plain ``{key: float32 array}`` dict (empty for
``"none"``); the sender must keep one state per stream (per site for uploads).

Typical use (upload)::

    payload, state = encode(local_adapter, "int8", state, reference=global_prev)   # at the site
    site_adapter = decode(payload, "int8", reference=global_prev)                  # at the server

For the download, a delta needs every site to hold the previous global adapter; a site that skipped a round
would drift, so sending the global adapter itself as ``"fp16"``/``"bf16"`` (no reference, no state) is the
robust choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

Method = Literal["none", "fp16", "bf16", "int8"]
Granularity = Literal["tensor", "row"]

#: Transport methods accepted everywhere (config, CLI, Flower run config).
METHODS: tuple[str, ...] = ("none", "fp16", "bf16", "int8")
#: Suffix of the key under which an int8 tensor's scale(s) travel.
SCALE_SUFFIX = "::scale"
#: Bytes per transported value, without int8 scales.
BYTES_PER_VALUE: dict[str, int] = {"none": 4, "fp16": 2, "bf16": 2, "int8": 1}

_FP16_MAX = float(np.finfo(np.float16).max)
_PAYLOAD_DTYPE = {"none": np.dtype(np.float32), "fp16": np.dtype(np.float16), "bf16": np.dtype(np.uint16)}


class CompressionError(ValueError):
    """Arrays, a payload or a state that cannot be encoded/decoded; the message names the key and the problem."""


# ---- bf16 bit tricks -----------------------------------------------------------------------------------------


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (round-to-nearest-even) and return the 16-bit patterns as ``uint16``.

    The input must be finite (``encode`` checks it): uint32 arithmetic cannot overflow for finite values
    (``0xFF7FFFFF + 0x8000 < 2**32``) but NaN payloads would wrap around.
    """
    bits = np.asarray(x, dtype=np.float32, order="C").view(np.uint32)
    rounded = (bits >> 16) & np.uint32(1)
    rounded += np.uint32(0x7FFF)
    rounded += bits
    rounded >>= 16
    return rounded.astype(np.uint16)


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Expand ``uint16`` bfloat16 patterns to float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16, order="C").astype(np.uint32) << 16).view(np.float32)


# ---- checks --------------------------------------------------------------------------------------------------


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise CompressionError(f"unknown compression method {method!r}; expected one of {METHODS}")


def _check_arrays(arrays: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """Float arrays with string keys, no reserved suffix, finite values → float32 copies/views."""
    if not isinstance(arrays, Mapping):
        raise CompressionError(f"{what}: expected a dict of name → numpy array, got {type(arrays).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, arr in arrays.items():
        if not isinstance(key, str):
            raise CompressionError(f"{what}: key {key!r} is a {type(key).__name__}, not a string")
        if key.endswith(SCALE_SUFFIX):
            raise CompressionError(f"{what}: key {key!r} ends with the reserved suffix {SCALE_SUFFIX!r}")
        if not isinstance(arr, np.ndarray):
            raise CompressionError(f"{what}: {key} is a {type(arr).__name__}, not a numpy array")
        if arr.dtype.kind != "f":
            raise CompressionError(f"{what}: {key} has non-float dtype {arr.dtype.name}")
        if not np.all(np.isfinite(arr)):
            n_bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise CompressionError(f"{what}: {key} contains {n_bad} NaN/Inf value(s); refusing to encode it")
        out[key] = np.asarray(arr, dtype=np.float32)
    return out


def _check_same_layout(
    arrays: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray], what: str, *, subset_ok: bool = False
) -> None:
    missing = sorted(set(arrays) - set(other))
    extra = sorted(set(other) - set(arrays))
    if (missing and not subset_ok) or extra:
        raise CompressionError(
            f"{what}: key sets differ: missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'…' if len(extra) > 5 else ''}"
        )
    for key, arr in other.items():
        if tuple(arr.shape) != tuple(arrays[key].shape):
            raise CompressionError(f"{what}: {key} has shape {tuple(arr.shape)}, expected {tuple(arrays[key].shape)}")


# ---- encode / decode -----------------------------------------------------------------------------------------


def _quantise_int8(x: np.ndarray, granularity: Granularity) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric absmax int8 quantisation; returns ``(q int8 same shape, scale float32 (1,) or (rows,))``."""
    if granularity == "row" and x.ndim >= 2 and x.shape[0] > 0:
        rows = x.reshape(x.shape[0], -1)
        absmax = np.abs(rows).max(axis=1) if rows.shape[1] else np.zeros(rows.shape[0], np.float32)
        scale = (absmax / 127.0).astype(np.float32)
        safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.asarray(np.clip(np.rint(rows / safe[:, None]), -127, 127), dtype=np.int8).reshape(x.shape)
        return q, scale
    absmax = float(np.abs(x).max()) if x.size else 0.0
    scale = np.array([absmax / 127.0], dtype=np.float32)
    safe = scale[0] if scale[0] > 0 else np.float32(1.0)
    q = np.asarray(np.clip(np.rint(x / safe), -127, 127), dtype=np.int8)
    return q, scale


def _dequantise_int8(q: np.ndarray, scale: np.ndarray, key: str) -> np.ndarray:
    if scale.size == 1:
        return np.asarray(q.astype(np.float32) * scale.reshape(()), dtype=np.float32)
    if q.ndim < 2 or scale.shape != (q.shape[0],):
        raise CompressionError(
            f"payload: scale of {key} has shape {tuple(scale.shape)}; expected (1,) or one per row ({q.shape[0]},)"
            if q.ndim >= 1
            else f"payload: scale of scalar {key} has shape {tuple(scale.shape)}; expected (1,)"
        )
    return (q.reshape(q.shape[0], -1).astype(np.float32) * scale[:, None]).reshape(q.shape)


def _encode_plain(x: np.ndarray, method: str, key: str) -> np.ndarray:
    if method == "none":
        return np.array(x, dtype=np.float32, copy=True)
    if method == "fp16":
        big = np.abs(x) > _FP16_MAX
        if np.any(big):
            raise CompressionError(
                f"fp16: {key} has {int(big.sum())} value(s) beyond ±{_FP16_MAX:g} "
                f"(max |x| = {float(np.abs(x).max()):g}); use 'bf16' or 'int8'"
            )
        return x.astype(np.float16)
    bits = float32_to_bf16_bits(x)
    if np.any((bits & 0x7F80) == 0x7F80):
        raise CompressionError(f"bf16: {key} has values that round to ±inf in bfloat16; they are too large")
    return bits


def encode(
    arrays: Mapping[str, np.ndarray],
    method: Method | str,
    state: Mapping[str, np.ndarray] | None = None,
    *,
    reference: Mapping[str, np.ndarray] | None = None,
    error_feedback: bool = True,
    granularity: Granularity = "tensor",
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Pack named float arrays for transport.

    Args:
        arrays: Tensor name → float array (any float dtype; computed in float32).
        method: One of ``METHODS``.
        state: The sender's error-feedback residuals from the previous call (``{key: float32 array}``), or
            ``None``/``{}`` on the first round. Its keys must be a subset of ``arrays``' keys, shapes equal.
        reference: If given, ``arrays − reference`` is encoded (the delta from the last global adapter); pass the
            same reference to ``decode``. Same keys and shapes as ``arrays``.
        error_feedback: Add the residual from ``state`` before quantising and return the new residual. Ignored for
            ``"none"`` (lossless; the returned state is empty).
        granularity: ``"tensor"`` (one int8 scale per tensor) or ``"row"`` (one per row of a ≥2-D tensor).
            Only read for ``"int8"``.

    Returns:
        ``(payload, new_state)``. ``payload``: for ``none`` float32 arrays; ``fp16`` float16; ``bf16`` uint16 bit
        patterns; ``int8`` int8 arrays plus a float32 ``"<key>::scale"`` array each. ``new_state``: the
        residuals to pass to the next call (empty when there is nothing to carry).

    Raises:
        CompressionError: unknown method/granularity, a non-float, NaN or Inf value (naming the key), a key
            using the reserved suffix, mismatching keys/shapes between ``arrays``, ``reference`` and ``state``,
            or values out of the method's range.
    """
    _check_method(method)
    if granularity not in ("tensor", "row"):
        raise CompressionError(f"granularity must be 'tensor' or 'row', got {granularity!r}")
    values = _check_arrays(arrays, "encode")
    if reference is not None:
        ref = _check_arrays(reference, "encode reference")
        _check_same_layout(values, ref, "encode reference")
        values = {k: np.asarray(v - ref[k], dtype=np.float32) for k, v in values.items()}
    use_feedback = error_feedback and method != "none"
    if state and use_feedback:
        residual = _check_arrays(state, "encode state")
        _check_same_layout(values, residual, "encode state", subset_ok=True)
        values = {k: (np.asarray(v + residual[k], dtype=np.float32) if k in residual else v) for k, v in values.items()}

    payload: dict[str, np.ndarray] = {}
    new_state: dict[str, np.ndarray] = {}
    for key, x in values.items():
        if method == "int8":
            q, scale = _quantise_int8(x, granularity)
            payload[key] = q
            payload[key + SCALE_SUFFIX] = scale
            sent = _dequantise_int8(q, scale, key)
        else:
            packed = _encode_plain(x, method, key)
            payload[key] = packed
            sent = _decode_plain(packed, method)
        if use_feedback:
            new_state[key] = np.asarray(x - sent, dtype=np.float32)
    return payload, new_state


def _decode_plain(arr: np.ndarray, method: str) -> np.ndarray:
    if method == "bf16":
        return bf16_bits_to_float32(arr)
    return arr.astype(np.float32)


def decode(
    payload: Mapping[str, np.ndarray],
    method: Method | str,
    *,
    reference: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Unpack a payload made by ``encode`` into float32 arrays.

    Args:
        payload: What ``encode`` returned (possibly after a trip through Flower's ``ArrayRecord``).
        method: The method it was encoded with.
        reference: The reference given to ``encode`` (the result is ``decoded + reference``), or ``None``.

    Returns:
        Tensor name → float32 array (int8 scale keys are consumed, not returned).

    Raises:
        CompressionError: unknown method, a value of the wrong dtype for the method, an int8 tensor without
            its scale (or a scale without its tensor, or of the wrong shape), a non-finite scale or decoded value,
            or a reference whose keys/shapes differ from the payload's.
    """
    _check_method(method)
    if not isinstance(payload, Mapping):
        raise CompressionError(f"decode: expected a dict of name → numpy array, got {type(payload).__name__}")
    for key, arr in payload.items():
        if not isinstance(key, str) or not isinstance(arr, np.ndarray):
            raise CompressionError(f"decode: entry {key!r} is a {type(arr).__name__}, expected str → numpy array")
    out: dict[str, np.ndarray] = {}
    if method == "int8":
        scales = {k[: -len(SCALE_SUFFIX)]: v for k, v in payload.items() if k.endswith(SCALE_SUFFIX)}
        tensors = {k: v for k, v in payload.items() if not k.endswith(SCALE_SUFFIX)}
        orphan = sorted(set(scales) - set(tensors))
        if orphan:
            raise CompressionError(f"decode int8: scale without tensor for {orphan[:5]}")
        for key, q in tensors.items():
            if q.dtype != np.int8:
                raise CompressionError(f"decode int8: {key} has dtype {q.dtype.name}, expected int8")
            if key not in scales:
                raise CompressionError(f"decode int8: {key} has no scale entry {key + SCALE_SUFFIX!r}")
            scale = scales[key]
            if scale.dtype != np.float32 or scale.ndim != 1:
                raise CompressionError(
                    f"decode int8: {key + SCALE_SUFFIX} is {scale.dtype.name}{tuple(scale.shape)}, "
                    "expected a 1-D float32 array"
                )
            if not np.all(np.isfinite(scale)) or np.any(scale < 0):
                raise CompressionError(f"decode int8: {key + SCALE_SUFFIX} has negative, NaN or Inf scale(s)")
            out[key] = _dequantise_int8(q, scale, key)
    else:
        expected = _PAYLOAD_DTYPE[method]
        for key, arr in payload.items():
            if arr.dtype != expected:
                raise CompressionError(
                    f"decode {method}: {key} has dtype {arr.dtype.name}, expected {expected.name}"
                    + (" (bf16 travels as uint16 bit patterns)" if method == "bf16" else "")
                )
            out[key] = _decode_plain(arr, method)
            if method != "none" and not np.all(np.isfinite(out[key])):
                raise CompressionError(f"decode {method}: {key} decodes to NaN/Inf values")
    if method == "none":
        _check_arrays(out, "decode")
    if reference is not None:
        ref = _check_arrays(reference, "decode reference")
        _check_same_layout(out, ref, "decode reference")
        out = {k: np.asarray(v + ref[k], dtype=np.float32) for k, v in out.items()}
    return out


def download_method(method: Method | str) -> str:
    """How the global adapter travels down: int8 uploads pair with an fp16 download (no per-site reference)."""
    return "fp16" if method == "int8" else method


@dataclass(frozen=True)
class Transport:
    """Both ends of one federation's adapter transport, for one ``method`` (``federation.compression``).

    Down (server → sites): the global adapter in ``download_method(method)``, without error feedback; both ends
    work from the rounded arrays, so the server's reference equals what the sites start from. Up (site → server):
    ``method`` applied to the site's update; for int8, the delta from the received global adapter, with the
    site's error-feedback residual carried across rounds by the caller.
    """

    method: str = "none"

    def __post_init__(self) -> None:
        _check_method(self.method)

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def down(self) -> str:
        return download_method(self.method)

    # -- server side ---------------------------------------------------------------------------------------------
    def send_down(self, arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``(payload, as_received)``: the download payload and the float32 arrays the sites will decode from it."""
        if not self.enabled:
            return dict(arrays), dict(arrays)
        payload, _ = encode(arrays, self.down, error_feedback=False)
        return payload, decode(payload, self.down)

    def upload_spec(self, spec: Mapping[str, tuple[tuple[int, ...], str]]) -> dict[str, tuple[tuple[int, ...], str]]:
        """What an upload of tensors with float32 ``spec`` (name → (shape, dtype)) looks like on the wire."""
        if not self.enabled:
            return dict(spec)
        zeros = {k: np.zeros(shape, np.float32) for k, (shape, _) in spec.items()}
        payload, _ = encode(zeros, self.method, error_feedback=False)
        return {k: (tuple(v.shape), v.dtype.name) for k, v in payload.items()}

    def receive_up(self, payload: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A site's upload as float32 arrays; ``sent`` is the global adapter as the sites received it."""
        if not self.enabled:
            return dict(payload)
        ref = {k: sent[k] for k in payload if k in sent}
        return decode(payload, self.method, reference=ref)

    # -- site side -----------------------------------------------------------------------------------------------
    def receive_down(self, payload: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The global adapter from its download payload."""
        return decode(payload, self.down) if self.enabled else dict(payload)

    def send_up(
        self,
        arrays: Mapping[str, np.ndarray],
        received: Mapping[str, np.ndarray],
        residual: Mapping[str, np.ndarray] | None,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``(payload, new_residual)`` for a site's upload of ``arrays``: the delta from the ``received`` global
        adapter (where it has the key), with ``residual`` (the previous call's, or None) fed back. A residual
        whose key set differs from ``arrays`` (e.g. FedSA's last round uploads more) starts afresh."""
        if not self.enabled:
            return dict(arrays), {}
        ref = {k: received[k] for k in arrays if k in received}
        if residual is not None and set(residual) != set(arrays):
            residual = None
        return encode(arrays, self.method, residual, reference=ref if ref else None)


def estimate_nbytes(n_values: int, n_tensors: int, method: Method | str, *, n_scales: int | None = None) -> int:
    """Analytic payload size for ``n_values`` values in ``n_tensors`` tensors (no arrays needed).

    Args:
        n_values: Total number of values.
        n_tensors: Number of tensors (one int8 scale each unless ``n_scales`` is given).
        method: One of ``METHODS``.
        n_scales: Number of int8 scales (e.g. the total number of rows for ``granularity="row"``).
    """
    _check_method(method)
    size = n_values * BYTES_PER_VALUE[method]
    if method == "int8":
        size += 4 * (n_tensors if n_scales is None else n_scales)
    return int(size)


__all__ = [
    "BYTES_PER_VALUE",
    "METHODS",
    "SCALE_SUFFIX",
    "CompressionError",
    "Transport",
    "bf16_bits_to_float32",
    "decode",
    "download_method",
    "encode",
    "estimate_nbytes",
    "float32_to_bf16_bits",
]
