"""The message contract between the coordinator and the sites: what may cross the wire, and its checks.

Owns: record and metric names, the config keys the server sends, ``ArrayRecord`` <-> named numpy arrays (``.npy``
bytes, never pickles), ``describe`` (what a message carries, for ``comm.jsonl``), and ``validate_train_reply``
(every site reply is checked against the contract before anything is aggregated).

What crosses the wire
---------------------
server → site (``train``):  ``"arrays"``  ArrayRecord   the global adapter (every LoRA tensor)
                            ``"config"``  ConfigRecord  server-round, rule, send-private, compression (scalars)
site → server (``train``):  ``"arrays"``  ArrayRecord   the tensors of the strategy's ``upload_keys`` — nothing else
                            ``"metrics"`` MetricRecord  num-train-tokens, num-examples, train-loss, train-steps
                                                        (+ site-val-loss for Fed-MedLoRA+ "site"; under
                                                        train.dp: dp-epsilon, and no train-loss)
                            a site whose privacy budget is spent sends no arrays, only dp-refused = 1 and
                            dp-epsilon (spent so far)
                            ``"info"``    ConfigRecord  {"site": short site name}  (optional)
server → site (``evaluate``): the global adapter; site → server: ``val-loss`` and ``num-examples``.
No text, token ids or pickles: any other record, tensor, key or a long string fails the round naming the site.

Packed arrays
-------------
An ``ArrayRecord`` written by ``to_record`` holds two ``Array`` s, not one per tensor: ``"fedmedlora.index"`` (UTF-8
JSON: name, little-endian numeric dtype, shape, byte offset of each tensor) and ``"fedmedlora.packed"`` (the raw
bytes of all tensors, concatenated). Flower stores and transfers every ``Array`` as its own object, one request
each over TLS: a SmolLM2 adapter of 240 tensors is 483 objects per message unpacked and 5 packed. ``from_record``
reads both layouts and checks the index (allowed dtypes, shapes, offsets within the buffer) before it reads a byte.
``FEDMEDLORA_UNPACKED_ARRAYS=1`` writes one ``Array`` per tensor again (Flower's own layout; for the transport
benchmark and for debugging with Flower tools).

May import flwr and numpy; must not import torch, transformers or peft.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict

from fedmedlora.aggregation import AggregationError, check_update, nbytes

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
INFO_KEY = "info"

#: Keys of the server's ``config`` record (scalars only).
ROUND = "server-round"
RULE = "rule"
SEND_PRIVATE = "send-private"
COMPRESSION = "compression"

NUM_TOKENS = "num-train-tokens"
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
TRAIN_STEPS = "train-steps"
SITE_VAL_LOSS = "site-val-loss"
VAL_LOSS = "val-loss"
DP_EPSILON = "dp-epsilon"
DP_REFUSED = "dp-refused"
#: Every metric name a site may send. Anything else is rejected.
ALLOWED_METRICS = frozenset(
    {NUM_TOKENS, NUM_EXAMPLES, TRAIN_LOSS, SITE_VAL_LOSS, VAL_LOSS, TRAIN_STEPS, DP_EPSILON, DP_REFUSED}
)
#: A site name in a reply: short identifier, not free text.
SITE_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
MAX_SITE_NAME = 64


class ReplyValidationError(RuntimeError):
    """A site reply broke the message contract; the message names the site/node and the offending item."""


def message_round(msg: Message) -> int | None:
    """The server round a message belongs to (``config["server-round"]``; ``None`` when it carries none)."""
    config = msg.content.config_records.get(CONFIG_KEY)
    rnd = config.get(ROUND) if config is not None else None
    return None if rnd is None else int(rnd)


def replace_contents(target: RecordDict, source: RecordDict) -> None:
    """Make ``target`` hold exactly ``source``'s records, in place (a node's ``context.state`` must stay the object
    the Flower runtime keeps and sends back)."""
    for key in list(target.keys()):
        del target[key]
    for key, record in source.items():
        target[key] = record


# ---- ArrayRecord <-> dict[str, ndarray] ----------------------------------------------------------------------


PACKED_KEY = "fedmedlora.packed"
INDEX_KEY = "fedmedlora.index"
#: dtypes a packed record may hold (numeric, fixed size; stored little-endian).
PACKED_DTYPES = frozenset(
    {"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "bool"}
)
UNPACKED_ENV = "FEDMEDLORA_UNPACKED_ARRAYS"


def _packing() -> bool:
    return os.environ.get(UNPACKED_ENV, "").strip().lower() not in ("1", "true", "yes")


def to_record(arrays: Mapping[str, np.ndarray], *, pack: bool | None = None) -> ArrayRecord:
    """Named numpy arrays → ``ArrayRecord``, never pickles.

    Packed (the default, see the module docstring): one index ``Array`` and one byte ``Array``. ``pack=False``
    (or ``FEDMEDLORA_UNPACKED_ARRAYS=1``): one ``.npy`` ``Array`` per tensor. An empty mapping is an empty record.
    """
    if not arrays:
        return ArrayRecord()
    if not (_packing() if pack is None else pack):
        return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    index, chunks, offset = [], [], 0
    for name, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype.name not in PACKED_DTYPES:
            raise ValueError(f"tensor {name}: dtype {arr.dtype} cannot be packed (allowed: {sorted(PACKED_DTYPES)})")
        raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
        index.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape), "offset": offset})
        chunks.append(raw)
        offset += len(raw)
    index_bytes = np.frombuffer(json.dumps(index, separators=(",", ":")).encode("utf-8"), dtype=np.uint8)
    packed = np.frombuffer(b"".join(chunks), dtype=np.uint8) if offset else np.zeros(0, dtype=np.uint8)
    return ArrayRecord(array_dict={INDEX_KEY: Array(index_bytes), PACKED_KEY: Array(packed)})


def is_packed(record: ArrayRecord) -> bool:
    return set(record.keys()) == {INDEX_KEY, PACKED_KEY}


def _read_index(record: ArrayRecord, who: str) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The checked index and the byte buffer of a packed record."""
    for key in (INDEX_KEY, PACKED_KEY):
        arr = record[key]
        if arr.stype != "numpy.ndarray" or arr.dtype != "uint8" or len(arr.shape) != 1:
            raise ReplyValidationError(f"{who}: packed record entry {key!r} is not a 1-d uint8 numpy array")
    buffer = record[PACKED_KEY].numpy()
    try:
        index = json.loads(record[INDEX_KEY].numpy().tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReplyValidationError(f"{who}: packed record index is not UTF-8 JSON ({err})") from None
    if not isinstance(index, list):
        raise ReplyValidationError(f"{who}: packed record index must be a list, got {type(index).__name__}")
    seen: set[str] = set()
    for i, entry in enumerate(index):
        if not isinstance(entry, dict) or set(entry) != {"name", "dtype", "shape", "offset"}:
            raise ReplyValidationError(f"{who}: packed record index entry {i} must have name, dtype, shape, offset")
        name, dtype, shape, offset = entry["name"], entry["dtype"], entry["shape"], entry["offset"]
        if not isinstance(name, str) or name in seen or name in (INDEX_KEY, PACKED_KEY):
            raise ReplyValidationError(f"{who}: packed record index entry {i}: bad or repeated name {name!r}")
        seen.add(name)
        if dtype not in PACKED_DTYPES:
            raise ReplyValidationError(f"{who}: tensor {name}: dtype {dtype!r} is not allowed in a packed record")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise ReplyValidationError(f"{who}: tensor {name}: shape {shape!r} is not a list of integers")
        if any(d < 0 for d in shape) or isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ReplyValidationError(f"{who}: tensor {name}: negative or non-integer shape/offset")
        size = math.prod(shape) * np.dtype(dtype).itemsize
        if offset + size > buffer.size:
            raise ReplyValidationError(
                f"{who}: tensor {name}: {size} bytes at offset {offset} run past the {buffer.size}-byte buffer"
            )
    return index, buffer


def from_record(record: ArrayRecord, who: str = "") -> dict[str, np.ndarray]:
    """``ArrayRecord`` → named numpy arrays, from either layout (packed, or one ``.npy`` ``Array`` per tensor with
    ``allow_pickle=False`` inside flwr's ``Array.numpy``). The arrays are writable copies.

    Raises:
        ReplyValidationError: naming ``who``: a non-numpy entry, or a packed index that is malformed, names a
            dtype outside ``PACKED_DTYPES`` or points outside the buffer.
    """
    out: dict[str, np.ndarray] = {}
    if is_packed(record):
        index, buffer = _read_index(record, who)
        for entry in index:
            dtype = np.dtype(entry["dtype"]).newbyteorder("<")
            count = math.prod(entry["shape"])
            flat = np.frombuffer(buffer, dtype=dtype, count=count, offset=entry["offset"])
            out[entry["name"]] = flat.reshape(entry["shape"]).astype(dtype.newbyteorder("="), copy=True)
        return out
    for key, arr in record.items():
        if arr.stype != "numpy.ndarray":
            raise ReplyValidationError(f"{who}: tensor {key} has serialisation type {arr.stype!r}, not numpy")
        out[key] = arr.numpy()
    return out


def describe(content: RecordDict) -> dict[str, Any]:
    """What a message carries, for ``comm.jsonl``: tensor names/shapes/dtypes/bytes, metric and config keys.

    ``bytes`` is the raw tensor payload (Σ nbytes); ``serialized_bytes`` adds the ``.npy`` headers.
    """
    tensors = []
    for rname, rec in content.array_records.items():
        if is_packed(rec):  # the index says it all: no tensor is decoded just to be described
            index, _ = _read_index(rec, f"record {rname!r}")
            for e in index:
                raw = math.prod(e["shape"]) * np.dtype(e["dtype"]).itemsize
                tensors.append(
                    {"record": rname, "name": e["name"], "shape": e["shape"], "dtype": e["dtype"], "bytes": raw}
                )
            continue
        for key, arr in rec.items():
            # Flower's legacy records hold an '_empty' placeholder with no dtype (the SecAgg+ fit instructions)
            raw = int(np.prod(arr.shape, dtype=np.int64)) * np.dtype(arr.dtype).itemsize if arr.dtype else 0
            tensors.append({"record": rname, "name": key, "shape": list(arr.shape), "dtype": arr.dtype, "bytes": raw})
    return {
        "tensors": tensors,
        "serialized_bytes": int(sum(len(arr.data) for rec in content.array_records.values() for arr in rec.values())),
        "n_tensors": len(tensors),
        "bytes": int(sum(t["bytes"] for t in tensors)),
        "metrics": {r: sorted(m.keys()) for r, m in content.metric_records.items()},
        "configs": {r: sorted(c.keys()) for r, c in content.config_records.items()},
    }


# ---- reply validation ----------------------------------------------------------------------------------------


@dataclass
class SiteReply:
    """A validated training reply."""

    node_id: int
    site: str
    arrays: dict[str, np.ndarray]
    metrics: dict[str, float]
    nbytes: int


def validate_train_reply(
    msg: Message,
    expected: Mapping[str, tuple[tuple[int, ...], str]],
    required_metrics: Iterable[str],
) -> SiteReply:
    """Check one reply against the message contract (see module docstring).

    Args:
        msg: The reply (must not carry an error).
        expected: Tensor name → (shape, dtype) the site must send, exactly.
        required_metrics: Metric names that must be present.

    Raises:
        ReplyValidationError: naming the node/site and the offending record, key, shape or value.
    """
    node = msg.metadata.src_node_id
    content = msg.content
    who = f"node {node}"
    site = str(node)
    info = content.config_records.get(INFO_KEY)
    if info is not None:
        raw = info.get("site")
        if set(info.keys()) != {"site"} or not isinstance(raw, str) or not SITE_NAME.match(raw):
            raise ReplyValidationError(
                f"{who}: record {INFO_KEY!r} may only hold 'site' = a short name (≤{MAX_SITE_NAME} chars "
                f"[A-Za-z0-9_.+-]); got keys {sorted(info.keys())}"
            )
        site = raw
        who = f"site {site} (node {node})"
    extra_records = (
        set(content.array_records) - {ARRAYS_KEY}
        | set(content.metric_records) - {METRICS_KEY}
        | set(content.config_records) - {INFO_KEY}
    )
    if extra_records:
        raise ReplyValidationError(f"{who}: unexpected records {sorted(extra_records)} in the reply")
    if (expected and ARRAYS_KEY not in content.array_records) or METRICS_KEY not in content.metric_records:
        raise ReplyValidationError(
            f"{who}: the reply needs an ArrayRecord {ARRAYS_KEY!r} and a MetricRecord {METRICS_KEY!r}"
        )
    arrays = from_record(content.array_records[ARRAYS_KEY], who) if ARRAYS_KEY in content.array_records else {}
    try:
        check_update(arrays, expected, who)
    except AggregationError as err:
        raise ReplyValidationError(str(err).replace(f"site {who}", who)) from None
    metrics_rec = content.metric_records[METRICS_KEY]
    unknown = sorted(set(metrics_rec.keys()) - ALLOWED_METRICS)
    if unknown:
        raise ReplyValidationError(f"{who}: unexpected metrics {unknown}; allowed: {sorted(ALLOWED_METRICS)}")
    metrics: dict[str, float] = {}
    for key, value in metrics_rec.items():
        if isinstance(value, list | bool) or not isinstance(value, int | float):
            raise ReplyValidationError(f"{who}: metric {key} must be one number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ReplyValidationError(f"{who}: metric {key} is {value!r}")
        metrics[key] = float(value)
    missing = sorted(set(required_metrics) - set(metrics))
    if missing:
        raise ReplyValidationError(f"{who}: missing metrics {missing}")
    return SiteReply(node, site, arrays, metrics, nbytes(arrays))
