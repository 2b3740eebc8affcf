"""The packed ``ArrayRecord`` layout (``fedmedlora.federation.messages``): one index + one byte ``Array`` per
record instead of one Flower object per tensor, read back exactly, and checked before a byte is read."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedmedlora.federation.messages import (
    INDEX_KEY,
    PACKED_KEY,
    UNPACKED_ENV,
    ReplyValidationError,
    describe,
    from_record,
    is_packed,
    to_record,
)


def _adapter(n_layers: int = 30) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for i in range(n_layers):
        for p in ("q", "k", "v", "o"):
            out[f"layers.{i}.{p}.lora_A.weight"] = rng.standard_normal((8, 64), dtype=np.float32)
            out[f"layers.{i}.{p}.lora_B.weight"] = rng.standard_normal((64, 8), dtype=np.float32)
    return out


def test_round_trip_is_exact_for_every_allowed_dtype_and_shape() -> None:
    arrays = {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        "f16": np.linspace(-1, 1, 5, dtype=np.float16),
        "f64": np.array([np.pi]),
        "i8": np.array([[-128, 127]], dtype=np.int8),
        "u16": np.array([65535, 0], dtype=np.uint16),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "flag": np.array([True, False]),
    }
    record = to_record(arrays)
    assert is_packed(record) and set(record.keys()) == {INDEX_KEY, PACKED_KEY}
    back = from_record(record)
    assert list(back) == list(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k], v)
        assert back[k].flags.writeable, k


def test_a_240_tensor_adapter_is_six_flower_objects_packed_instead_of_482() -> None:
    arrays = _adapter()
    packed = get_all_nested_objects(RecordDict({"arrays": to_record(arrays)}))
    unpacked = get_all_nested_objects(RecordDict({"arrays": to_record(arrays, pack=False)}))
    assert len(arrays) == 240
    # record dict + array record + 2 (or 240) arrays, each with its chunk
    assert len(packed) == 6 and len(unpacked) == 482
    np.testing.assert_array_equal(
        from_record(to_record(arrays, pack=False))["layers.3.v.lora_B.weight"], arrays["layers.3.v.lora_B.weight"]
    )


def test_the_env_switch_writes_one_array_per_tensor(monkeypatch) -> None:
    monkeypatch.setenv(UNPACKED_ENV, "1")
    record = to_record({"a": np.ones(2, np.float32), "b": np.zeros(3, np.float32)})
    assert set(record.keys()) == {"a", "b"} and not is_packed(record)


def test_describe_lists_the_packed_tensors_for_comm_jsonl() -> None:
    arrays = {"x.lora_A": np.ones((2, 3), np.float32), "x.lora_B": np.ones((3, 2), np.float16)}
    info = describe(RecordDict({"arrays": to_record(arrays)}))
    assert [(t["name"], t["shape"], t["dtype"], t["bytes"]) for t in info["tensors"]] == [
        ("x.lora_A", [2, 3], "float32", 24),
        ("x.lora_B", [3, 2], "float16", 12),
    ]
    assert info["bytes"] == 36 and info["n_tensors"] == 2
    assert info["serialized_bytes"] >= 36


def test_unpackable_dtypes_are_refused_by_the_sender() -> None:
    with pytest.raises(ValueError, match="cannot be packed"):
        to_record({"o": np.array([object()], dtype=object)})


def _crafted(index, buffer: np.ndarray | None = None) -> ArrayRecord:
    raw = json.dumps(index).encode() if not isinstance(index, bytes) else index
    buf = np.zeros(16, np.uint8) if buffer is None else buffer
    return ArrayRecord(array_dict={INDEX_KEY: Array(np.frombuffer(raw, np.uint8)), PACKED_KEY: Array(buf)})


@pytest.mark.parametrize(
    ("index", "match"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        ({"name": "a"}, "must be a list"),
        ([{"name": "a", "dtype": "float32", "shape": [2]}], "must have name, dtype, shape, offset"),
        ([{"name": "a", "dtype": "object", "shape": [1], "offset": 0}], "not allowed"),
        ([{"name": "a", "dtype": "float32", "shape": [5], "offset": 0}], "run past"),
        ([{"name": "a", "dtype": "float32", "shape": [1], "offset": 14}], "run past"),
        ([{"name": "a", "dtype": "float32", "shape": [-1], "offset": 0}], "negative"),
        ([{"name": "a", "dtype": "float32", "shape": ["2"], "offset": 0}], "list of integers"),
        ([{"name": "a", "dtype": "float32", "shape": [1], "offset": True}], "non-integer"),
        ([{"name": "a", "dtype": "uint8", "shape": [1], "offset": 0}] * 2, "repeated"),
    ],
)
def test_a_crafted_index_is_refused_naming_the_sender(index, match: str) -> None:
    with pytest.raises(ReplyValidationError, match=match) as err:
        from_record(_crafted(index), "site beta (node 7)")
    assert "site beta (node 7)" in str(err.value)


def test_a_packed_entry_that_is_not_bytes_is_refused() -> None:
    record = ArrayRecord(
        array_dict={INDEX_KEY: Array(np.frombuffer(b"[]", np.uint8)), PACKED_KEY: Array(np.zeros(4, np.float32))}
    )
    with pytest.raises(ReplyValidationError, match="not a 1-d uint8"):
        from_record(record, "node 3")
