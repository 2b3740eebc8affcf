"""The federated LoRA strategy: Flower ``FedAvg`` with LoRA-aware, checked aggregation.

Owns: the message contract between the coordinator and the sites (record names, metric names, which tensors
travel in which direction), the validation of every site reply, deterministic site sampling, and per-round
bookkeeping (sites, weights, losses, bytes, tensor names of every message). The maths is delegated to the pure
``fedmedlora.aggregation``.

May import flwr and numpy; must not import torch, transformers or peft (the server-side validation loss for
Fed-MedLoRA+ is injected as a plain callable ``server_loss_fn(arrays) -> float``).

Message contract (what crosses the wire)
----------------------------------------
server → site (``train``):  ``"arrays"``  ArrayRecord   the global adapter (every LoRA tensor)
                            ``"config"``  ConfigRecord  server-round, rule, send-private (scalars only)
site → server (``train``):  ``"arrays"``  ArrayRecord   the tensors of ``upload_keys`` — nothing else
                            ``"metrics"`` MetricRecord  num-train-tokens, num-examples, train-loss
                                                        (+ site-val-loss for Fed-MedLoRA+ "site")
                            ``"info"``    ConfigRecord  {"site": short site name}  (optional)
No text, token ids or pickles: any other record, tensor, key or a long string fails the round naming the site.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedmedlora.aggregation import (
    AggregationError,
    AggregationSettings,
    check_update,
    merge_into,
    nbytes,
    shared_keys,
    spec_of,
    weighted_mean,
    weights_for,
)
from fedmedlora.compression import decode, encode

log = logging.getLogger(__name__)

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
INFO_KEY = "info"

NUM_TOKENS = "num-train-tokens"
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
SITE_VAL_LOSS = "site-val-loss"
VAL_LOSS = "val-loss"
#: Every metric name a site may send. Anything else is rejected.
ALLOWED_METRICS = frozenset({NUM_TOKENS, NUM_EXAMPLES, TRAIN_LOSS, SITE_VAL_LOSS, VAL_LOSS, "train-steps"})
#: A site name in a reply: short identifier, not free text.
SITE_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
MAX_SITE_NAME = 64


class ReplyValidationError(RuntimeError):
    """A site reply broke the message contract; the message names the site/node and the offending item."""


# ---- ArrayRecord <-> dict[str, ndarray] ----------------------------------------------------------------------


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays → ``ArrayRecord`` (numpy ``.npy`` bytes, never pickles)."""
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord, who: str = "") -> dict[str, np.ndarray]:
    """``ArrayRecord`` → named numpy arrays (``allow_pickle=False`` inside flwr's ``Array.numpy``)."""
    out: dict[str, np.ndarray] = {}
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
        for key, arr in rec.items():
            raw = int(np.prod(arr.shape, dtype=np.int64)) * np.dtype(arr.dtype).itemsize
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


class FederationError(RuntimeError):
    """A round cannot go on: too few sites connected, or too few valid replies (the message names them)."""


def download_method(compression: str) -> str:
    """How the global adapter travels down: int8 uploads pair with an fp16 download (no per-site reference)."""
    return "fp16" if compression == "int8" else compression


# ---- the strategy --------------------------------------------------------------------------------------------


@dataclass
class RoundLog:
    """What happened in one round (written to ``rounds.jsonl`` by the ServerApp)."""

    round: int
    rule: str
    sites: list[str] = field(default_factory=list)
    node_ids: list[int] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, float] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    loss_source: str | None = None
    train_loss: dict[str, float] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    site_val_loss: dict[str, float] = field(default_factory=dict)
    uploaded_keys: int = 0
    sampled_node_ids: list[int] = field(default_factory=list)
    started: float = 0.0
    aggregated: float = 0.0


class FedMedLoRAStrategy(FedAvg):
    """Fed-MedLoRA / Fed-MedLoRA+ / FedSA-LoRA / FFA-LoRA on Flower's Message API.

    Overrides ``configure_train`` (deterministic seeded sampling, per-round config) and ``aggregate_train``
    (reply validation, rule-specific weights and tensor selection via ``fedmedlora.aggregation``).
    Federated evaluation is FedAvg's (weighted mean of the sites' ``val-loss`` by ``num-examples``).

    Args:
        settings: Aggregation rule and its options.
        num_rounds: Total rounds of the run (FedSA's last round also averages the private B for the final
            global adapter; sites keep their own B).
        fraction_train: Fraction of connected sites sampled per round (at least ``min_train_nodes``).
        min_train_nodes: Minimum sites per round; a round with fewer valid replies fails.
        min_available_nodes: Sites that must be connected before a round starts.
        seed: Sampling seed; the sample of round ``r`` depends only on ``(seed, r)`` and the sorted node ids,
            so a resumed run samples the same sites.
        server_loss_fn: Fed-MedLoRA+ "server": adapter arrays → validation loss on the coordinator-held set.
        round_offset: Rounds already done (resume): round numbers are ``round_offset + server_round``.
        fraction_evaluate: Federated evaluation fraction (0 = none).
        node_wait_timeout_s: How long to wait for ``min_available_nodes`` before failing (None = forever).
        compression: Adapter transport (``fedmedlora.compression``): ``none``, ``fp16``, ``bf16`` or ``int8``
            (int8 uploads the delta from the sent global with the site's error feedback; downloads use fp16).
    """

    def __init__(
        self,
        settings: AggregationSettings,
        *,
        num_rounds: int,
        fraction_train: float = 1.0,
        min_train_nodes: int = 1,
        min_available_nodes: int = 1,
        seed: int = 0,
        server_loss_fn: Callable[[dict[str, np.ndarray]], float] | None = None,
        round_offset: int = 0,
        fraction_evaluate: float = 0.0,
        node_wait_timeout_s: float | None = None,
        compression: str = "none",
    ) -> None:
        if not 0 < fraction_train <= 1:
            raise ValueError(f"fraction_train must be in (0, 1], got {fraction_train}")
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=1,
            min_available_nodes=max(min_available_nodes, min_train_nodes),
            weighted_by_key=NUM_TOKENS if settings.size_key == "tokens" else NUM_EXAMPLES,
            arrayrecord_key=ARRAYS_KEY,
            configrecord_key=CONFIG_KEY,
        )
        if settings.uses_loss and settings.loss_source == "server" and server_loss_fn is None:
            raise ValueError("Fed-MedLoRA+ with loss_source='server' needs server_loss_fn (coordinator validation set)")
        self.settings = settings
        self.num_rounds = num_rounds
        self.seed = seed
        self.server_loss_fn = server_loss_fn
        self.round_offset = round_offset
        self.node_wait_timeout_s = node_wait_timeout_s
        self.compression = compression
        self.site_names: dict[int, str] = {}  # node id -> site name, learned from earlier replies (failure logs)
        self.rounds: dict[int, RoundLog] = {}
        self.messages: list[dict[str, Any]] = []  # comm records not yet flushed by the ServerApp
        self._global: dict[str, np.ndarray] = {}
        self._expected_up: dict[str, tuple[tuple[int, ...], str]] = {}
        self._send_private = False

    # -- helpers ---------------------------------------------------------------------------------------------
    def summary(self) -> None:
        super().summary()
        log.info("fedmedlora aggregation: %s", self.settings)

    def global_round(self, server_round: int) -> int:
        return self.round_offset + server_round

    def upload_keys(self, keys: Iterable[str], round_: int) -> list[str]:
        """Tensors a site sends back in ``round_``: the rule's shared keys (FedSA's last round: all)."""
        keys = list(keys)
        if self.settings.rule == "fedsa" and round_ == self.num_rounds:
            return sorted(keys)
        return shared_keys(self.settings.rule, keys)

    def required_metrics(self) -> list[str]:
        req = [self.weighted_by_key, TRAIN_LOSS]
        if self.settings.uses_loss and self.settings.loss_source == "site":
            req.append(SITE_VAL_LOSS)
        return req

    def sample(self, node_ids: Iterable[int], server_round: int) -> list[int]:
        """Deterministic sample for a round: ``max(int(n·fraction), min_train_nodes)`` of the sorted ids."""
        ids = sorted(node_ids)
        size = min(len(ids), max(int(len(ids) * self.fraction_train), self.min_train_nodes))
        rng = np.random.default_rng([self.seed, self.global_round(server_round)])
        # choose positions, not ids: node ids are up to 2**64 and numpy would turn them into (lossy) float64
        return sorted(ids[int(i)] for i in rng.choice(len(ids), size=size, replace=False))

    def _learn_site_names(self, grid: Grid) -> None:
        """Node id -> the name it was registered under (Deployment Engine), to name sites that never reply."""
        try:
            infos = list(grid.get_nodes())
        except Exception:
            return
        for info in infos:
            name = getattr(info, "name", "")
            if name:
                self.site_names.setdefault(int(info.node_id), str(name))

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        start = time.monotonic()
        while len(ids := list(grid.get_node_ids())) < self.min_available_nodes:
            waited = time.monotonic() - start
            if self.node_wait_timeout_s is not None and waited > self.node_wait_timeout_s:
                raise FederationError(
                    f"only {len(ids)} of the {self.min_available_nodes} required sites connected after {waited:.0f} s"
                )
            log.info("waiting for sites: %d connected, %d required", len(ids), self.min_available_nodes)
            time.sleep(1.0)
        return ids

    # -- training --------------------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample sites and send each the global adapter plus the round's config."""
        rnd = self.global_round(server_round)
        self._global = from_record(arrays, "global adapter")
        if self.compression != "none":
            # sites start from the rounded global; the server uses the same rounded arrays as the reference
            payload, _ = encode(self._global, download_method(self.compression), error_feedback=False)
            self._global = decode(payload, download_method(self.compression))
            arrays = to_record(payload)
        upload = self.upload_keys(self._global, rnd)
        self._expected_up = {k: v for k, v in spec_of(self._global).items() if k in upload}
        if self.compression != "none":
            zeros = {k: np.zeros(shape, np.float32) for k, (shape, _) in self._expected_up.items()}
            self._expected_up = spec_of(encode(zeros, self.compression, error_feedback=False)[0])
        self._send_private = self.settings.rule == "fedsa" and rnd == self.num_rounds
        node_ids = self.sample(self._wait_for_nodes(grid), server_round)
        self._learn_site_names(grid)
        cfg = ConfigRecord(dict(config))
        cfg["server-round"] = rnd
        cfg["rule"] = self.settings.rule
        cfg["send-private"] = self._send_private
        cfg["compression"] = self.compression
        record = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: cfg})
        info = describe(record)
        self.rounds[rnd] = RoundLog(
            round=rnd,
            rule=self.settings.rule,
            sampled_node_ids=node_ids,
            started=time.time(),
            uploaded_keys=len(upload),
        )
        for nid in node_ids:
            self.messages.append({"round": rnd, "direction": "down", "node_id": nid, "type": "train", **info})
        log.info(
            "round %d: sending the global adapter (%d tensors, %d B) to nodes %s",
            rnd,
            info["n_tensors"],
            info["bytes"],
            node_ids,
        )
        return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=nid) for nid in node_ids]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate every reply, weight the sites by the rule, average the shared tensors."""
        rnd = self.global_round(server_round)
        rlog = self.rounds.setdefault(rnd, RoundLog(round=rnd, rule=self.settings.rule))
        ok: list[SiteReply] = []
        for msg in replies:
            nid = msg.metadata.src_node_id
            if msg.has_error():
                rlog.failures.append(f"node {nid}: {msg.error.reason}")
                log.warning("round %d: node %d failed: %s", rnd, nid, msg.error.reason)
                continue
            info = describe(msg.content)
            reply = validate_train_reply(msg, self._expected_up, self.required_metrics())
            if self.compression != "none":
                ref = {k: self._global[k] for k in self._expected_up if k in self._global}
                reply = replace(reply, arrays=decode(reply.arrays, self.compression, reference=ref))
            self.messages.append(
                {"round": rnd, "direction": "up", "node_id": nid, "site": reply.site, "type": "train", **info}
            )
            ok.append(reply)
        # every sampled site without a valid reply is named (crashed nodes send nothing at all, and Flower reports
        # a stopped node's error as coming from node 1, so the error lines above cannot name them)
        answered = {r.node_id for r in ok}
        for nid in rlog.sampled_node_ids:
            if nid not in answered:
                name = self.site_names.get(nid, f"node {nid}")
                rlog.failures.append(f"{name}: no valid reply in round {rnd} (offline, crashed or timed out)")
                log.warning("round %d: site %s (node %d) sent no valid reply", rnd, name, nid)
        for r in ok:
            self.site_names[r.node_id] = r.site
        if len(ok) < max(self.min_train_nodes, 1):
            raise FederationError(
                f"round {rnd}: {len(ok)} valid site replies, {self.min_train_nodes} required; failures: {rlog.failures}"
            )
        ok.sort(key=lambda r: r.site)
        sites = [r.site for r in ok]
        if len(set(sites)) != len(sites):
            raise ReplyValidationError(f"round {rnd}: two replies claim the same site: {sites}")
        sizes = [r.metrics[self.weighted_by_key] for r in ok]
        losses: list[float] | None = None
        if self.settings.uses_loss:
            if self.settings.loss_source == "site":
                losses = [r.metrics[SITE_VAL_LOSS] for r in ok]
            else:
                assert self.server_loss_fn is not None
                losses = [float(self.server_loss_fn(merge_into(self._global, r.arrays))) for r in ok]
            rlog.loss_source = self.settings.loss_source
        weights = weights_for(self.settings, sizes, losses, sites)
        averaged = weighted_mean([r.arrays for r in ok], weights, sites=sites)
        new_global = merge_into(self._global, averaged)
        down = {m["node_id"]: m["bytes"] for m in self.messages if m["round"] == rnd and m["direction"] == "down"}
        rlog.sites = sites
        rlog.node_ids = [r.node_id for r in ok]
        rlog.weights = {s: float(w) for s, w in zip(sites, weights, strict=True)}
        rlog.sizes = {s: float(n) for s, n in zip(sites, sizes, strict=True)}
        rlog.losses = {s: float(v) for s, v in zip(sites, losses, strict=True)} if losses is not None else {}
        rlog.train_loss = {r.site: r.metrics[TRAIN_LOSS] for r in ok}
        rlog.bytes_up = {r.site: r.nbytes for r in ok}
        rlog.bytes_down = {r.site: int(down.get(r.node_id, 0)) for r in ok}
        rlog.aggregated = time.time()
        metrics = MetricRecord(
            {
                TRAIN_LOSS: float(sum(w * r.metrics[TRAIN_LOSS] for w, r in zip(weights, ok, strict=True))),
                "num-sites": len(ok),
                self.weighted_by_key: float(sum(sizes)),
            }
        )
        log.info("round %d: aggregated %s with weights %s", rnd, sites, np.round(weights, 4).tolist())
        return to_record(new_global), metrics

    # -- federated evaluation (off unless fraction_evaluate > 0) -----------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's evaluation messages, recorded in the communication log."""
        msgs = list(super().configure_evaluate(server_round, arrays, config, grid))
        rnd = self.global_round(server_round)
        for m in msgs:
            info = describe(m.content)
            self.messages.append(
                {"round": rnd, "direction": "down", "node_id": m.metadata.dst_node_id, "type": "evaluate", **info}
            )
        return msgs

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Mean of the sites' ``val-loss`` weighted by their ``num-examples`` (per-site values kept in the log)."""
        rnd = self.global_round(server_round)
        losses: dict[str, float] = {}
        sizes: dict[str, float] = {}
        for msg in replies:
            if msg.has_error():
                self.rounds.setdefault(rnd, RoundLog(round=rnd, rule=self.settings.rule)).failures.append(
                    f"evaluate node {msg.metadata.src_node_id}: {msg.error.reason}"
                )
                continue
            reply = validate_train_reply(msg, {}, [VAL_LOSS, NUM_EXAMPLES])
            losses[reply.site] = reply.metrics[VAL_LOSS]
            sizes[reply.site] = reply.metrics[NUM_EXAMPLES]
        if not losses:
            return None
        total = sum(sizes.values())
        rlog = self.rounds.setdefault(rnd, RoundLog(round=rnd, rule=self.settings.rule))
        rlog.site_val_loss = losses
        mean = sum(losses[s] * sizes[s] for s in losses) / total if total > 0 else float(np.mean(list(losses.values())))
        return MetricRecord({VAL_LOSS: float(mean), NUM_EXAMPLES: int(total)})
