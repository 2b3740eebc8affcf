"""Federated LoRA strategies: one small class per aggregation rule, on Flower's ``FedAvg`` (Message API).

Owns: ``LoraStrategy`` (deterministic site sampling, the per-round config, reply validation through
``fedmedlora.federation.messages``, compressed transport through ``fedmedlora.compression.Transport``, and per-round
bookkeeping: sites, weights, losses, bytes and the tensor names of every message) and one subclass per rule, each
overriding only what differs:

``FedMedLoRA``      every LoRA tensor, size weights (the base behaviour).
``FedMedLoRAPlus``  ``site_weights``: softmax(−loss / T) of each site adapter's validation loss (coordinator-held
                    set, or each site's own dev loss), optionally times the size weight.
``FedSA``           ``upload_keys``: only ``lora_A`` travels up and is averaged; each site keeps its own ``lora_B``,
                    except in the last round, when every tensor is sent so the final global adapter is complete.
``FFA``             ``lora_A`` stays frozen at the shared initialisation (the sites freeze it); only ``lora_B`` is
                    trained, shared and averaged.
``RoLoRA``          ``upload_keys``: the rounds alternate the trained and shared factor (odd rounds ``lora_B``, even
                    rounds ``lora_A``; the sites freeze the other one from the round's ``rule`` and ``server-round``).

Adding a rule = adding a class here and its name to ``fedmedlora.aggregation.RULES``. The maths (weights,
weighted mean, which keys a rule shares) is the pure ``fedmedlora.aggregation``.

May import flwr and numpy; must not import torch, transformers or peft (the coordinator's validation loss for
Fed-MedLoRA+ is injected as a plain callable ``server_loss_fn(arrays) -> float``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedmedlora.aggregation import (
    AggregationError,
    AggregationSettings,
    data_temperature,
    merge_into,
    normalized_entropy,
    robust_mean,
    rolora_factor,
    shared_keys,
    size_weights,
    spec_of,
    trimmed_count,
    weighted_mean,
    weights_for,
)
from fedmedlora.compression import Transport
from fedmedlora.federation.client_dp import ClientLevelDP
from fedmedlora.federation.messages import (
    ARRAYS_KEY,
    COMPRESSION,
    CONFIG_KEY,
    DP_EPSILON,
    DP_REFUSED,
    INFO_KEY,
    METRICS_KEY,
    NUM_EXAMPLES,
    NUM_TOKENS,
    ROUND,
    RULE,
    SEND_PRIVATE,
    SITE_NAME,
    SITE_VAL_LOSS,
    TRAIN_LOSS,
    VAL_LOSS,
    ReplyValidationError,
    SiteReply,
    describe,
    from_record,
    to_record,
    validate_train_reply,
)
from fedmedlora.federation.secure_aggregation import SECURE, SecAggSettings, secure_weighted_mean
from fedmedlora.privacy import global_norm
from fedmedlora.screening import ScreeningSettings, cap_sizes, screen_losses, screen_norms

log = logging.getLogger(__name__)


class FederationError(RuntimeError):
    """A round cannot go on: too few sites connected, or too few valid replies (the message names them)."""


class PrivacyBudgetSpent(FederationError):
    """Every site that answered refused to train: its record-level privacy budget is spent."""


@dataclass
class RoundLog:
    """What happened in one round (written to ``rounds.jsonl`` by the ServerApp's round recorder)."""

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
    refused: dict[str, float] = field(default_factory=dict)
    privacy: dict[str, Any] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    screening: dict[str, str] = field(default_factory=dict)
    #: ``federation.robust`` in force: the rule and how many sites were trimmed per end (None: weighted mean)
    robust: dict[str, Any] | None = None
    #: normalised entropy of ``weights`` (1 = uniform, 0 = one site takes all; ``aggregation.normalized_entropy``)
    weights_entropy: float | None = None
    #: Fed-MedLoRA+: the temperature ``T`` used this round (None: infinite, uniform weights; ``temperature_rule``)
    temperature: float | None = None
    #: RoLoRA: the factor (``"A"`` or ``"B"``) trained and shared this round
    trained_factor: str | None = None


class LoraStrategy(FedAvg):
    """The federated LoRA round on Flower's Message API; subclasses are the aggregation rules.

    Overrides ``configure_train`` (deterministic seeded sampling, per-round config, compressed download) and
    ``aggregate_train`` (reply validation, ``site_weights``, the weighted mean of the ``upload_keys`` tensors).
    Federated evaluation is FedAvg's (weighted mean of the sites' ``val-loss`` by ``num-examples``).

    Args:
        settings: Aggregation rule and its options (``settings.rule`` must be this class's ``rule``).
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
        screening: What a reply may claim (``fedmedlora.screening``): size caps, update-norm and loss checks; a
            site failing one is excluded from the round and named.
        client_dp: Client-level DP (``fedmedlora.federation.client_dp``): re-clip each update, noise the mean.
        record_dp: The sites train with record-level DP-SGD: they report ``dp-epsilon`` and no train loss, and
            may refuse (``dp-refused``) when their budget is spent.
        secure: SecAgg+ (``fedmedlora.federation.secure_aggregation``): the train replies carry scalars only and
            the weighted mean update is unmasked from Flower's SecAgg+ stages; no site's adapter is seen.
    """

    #: The rule name (``fedmedlora.aggregation.RULES``) this class implements.
    rule: ClassVar[str] = ""

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
        screening: ScreeningSettings | None = None,
        client_dp: ClientLevelDP | None = None,
        record_dp: bool = False,
        secure: SecAggSettings | None = None,
    ) -> None:
        if settings.rule != self.rule:
            raise ValueError(f"{type(self).__name__} implements rule {self.rule!r}, settings say {settings.rule!r}")
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
        self.settings = settings
        self.num_rounds = num_rounds
        self.seed = seed
        self.server_loss_fn = server_loss_fn
        self.round_offset = round_offset
        self.node_wait_timeout_s = node_wait_timeout_s
        self.compression = compression
        self.transport = Transport(compression)
        self.screening = screening or ScreeningSettings()
        self.client_dp = client_dp
        self.record_dp = record_dp
        self.secure = secure
        self._grid: Grid | None = None
        self._secure_spec: dict[str, tuple[tuple[int, ...], str]] = {}
        self.site_names: dict[int, str] = {}  # node id -> site name, learned from earlier replies (failure logs)
        self.rounds: dict[int, RoundLog] = {}
        self.messages: list[dict[str, Any]] = []  # comm records not yet flushed by the round recorder
        self._global: dict[str, np.ndarray] = {}
        self._expected_up: dict[str, tuple[tuple[int, ...], str]] = {}
        self.last_temperature: float | None = None  # Fed-MedLoRA+: T of the latest site_weights call

    # -- what differs between rules ---------------------------------------------------------------------------
    def upload_keys(self, keys: Iterable[str], round_: int) -> list[str]:
        """Tensors a site sends back (and the server averages) in ``round_``: the rule's shared keys."""
        return shared_keys(self.rule, list(keys))

    def required_metrics(self) -> list[str]:
        """Metric names every training reply must carry."""
        return [self.weighted_by_key, DP_EPSILON] if self.record_dp else [self.weighted_by_key, TRAIN_LOSS]

    def site_weights(
        self, replies: Sequence[SiteReply], sizes: Sequence[float]
    ) -> tuple[np.ndarray, list[float] | None]:
        """Normalised aggregation weight of each (validated, site-sorted) reply, and the per-site validation
        losses they were computed from (``None``: size weights, the default)."""
        return size_weights(sizes, [r.site for r in replies]), None

    # -- helpers ---------------------------------------------------------------------------------------------
    def summary(self) -> None:
        super().summary()
        log.info("fedmedlora aggregation: %s", self.settings)

    def global_round(self, server_round: int) -> int:
        return self.round_offset + server_round

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
        payload, self._global = self.transport.send_down(from_record(arrays, "global adapter"))
        if self.transport.enabled:  # sites start from the rounded global; the server keeps it as the reference
            arrays = to_record(payload)
        upload = self.upload_keys(self._global, rnd)
        shared = shared_keys(self.rule, list(self._global), rnd)
        self._expected_up = self.transport.upload_spec({k: v for k, v in spec_of(self._global).items() if k in upload})
        if self.secure is not None:  # the tensors come through SecAgg+, the train replies carry none
            self._secure_spec, self._expected_up = self._expected_up, {}
            self._grid = grid
        node_ids = self.sample(self._wait_for_nodes(grid), server_round)
        self._learn_site_names(grid)
        cfg = ConfigRecord(dict(config))
        cfg[ROUND] = rnd
        cfg[RULE] = self.rule
        # more than the rule shares (FedSA's last round): the sites add their private tensors to the upload
        cfg[SEND_PRIVATE] = set(upload) != set(shared)
        cfg[COMPRESSION] = self.compression
        cfg[SECURE] = self.secure is not None
        record = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: cfg})
        info = describe(record)
        self.rounds[rnd] = RoundLog(
            round=rnd, rule=self.rule, sampled_node_ids=node_ids, started=time.time(), uploaded_keys=len(upload)
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
        rlog = self.rounds.setdefault(rnd, RoundLog(round=rnd, rule=self.rule))
        ok = self._valid_replies(rnd, replies, rlog)
        sites = [r.site for r in ok]
        sizes, rlog.screening = cap_sizes(sites, [r.metrics[self.weighted_by_key] for r in ok], self.screening)
        weights, losses = self.site_weights(ok, sizes)
        if self.client_dp is not None:
            weights = self.client_dp.weights(weights)
        secure_bytes: dict[int, int] = {}
        if self.secure is not None:
            keep, weights, mean, secure_bytes = self._secure_mean(rnd, ok, weights, rlog)
            ok = [ok[i] for i in keep]
            sites, sizes = [r.site for r in ok], [sizes[i] for i in keep]
            losses = [losses[i] for i in keep] if losses is not None else None
        elif self.client_dp is not None:
            upload = sorted(ok[0].arrays)
            mean, rlog.privacy["client"] = self.client_dp.release(
                [r.arrays for r in ok], weights, {k: self._global[k] for k in upload}, sites, rnd
            )
        else:
            spec = {k: v for k, v in spec_of(self._global).items() if k in ok[0].arrays}
            if self.settings.robust == "none":
                mean = weighted_mean([r.arrays for r in ok], weights, sites=sites, expected=spec)
            else:
                mean = robust_mean(
                    [r.arrays for r in ok],
                    self.settings.robust,
                    trim_fraction=self.settings.trim_fraction,
                    sites=sites,
                    expected=spec,
                )
                weights = [1.0 / len(ok)] * len(ok)  # what the robust rule gives each site on average
                rlog.robust = {
                    "rule": self.settings.robust,
                    "trimmed_per_end": trimmed_count(len(ok), self.settings.trim_fraction)
                    if self.settings.robust == "trimmed-mean"
                    else None,
                }
        new_global = merge_into(self._global, mean)
        if self.record_dp:
            rlog.privacy["sites"] = {r.site: r.metrics[DP_EPSILON] for r in ok}
        down = {m["node_id"]: m["bytes"] for m in self.messages if m["round"] == rnd and m["direction"] == "down"}
        rlog.sites = sites
        rlog.node_ids = [r.node_id for r in ok]
        rlog.weights = {s: float(w) for s, w in zip(sites, weights, strict=True)}
        rlog.weights_entropy = normalized_entropy(weights)
        rlog.sizes = {s: float(n) for s, n in zip(sites, sizes, strict=True)}
        if losses is not None:
            rlog.losses = {s: float(v) for s, v in zip(sites, losses, strict=True)}
            if self.last_temperature is not None and math.isfinite(self.last_temperature):
                rlog.temperature = self.last_temperature
            rlog.loss_source = self.settings.loss_source
        rlog.train_loss = {r.site: r.metrics[TRAIN_LOSS] for r in ok if TRAIN_LOSS in r.metrics}
        rlog.bytes_up = {r.site: r.nbytes + secure_bytes.get(r.node_id, 0) for r in ok}
        rlog.bytes_down = {r.site: int(down.get(r.node_id, 0)) for r in ok}
        rlog.aggregated = time.time()
        summary: dict[str, float | int] = {"num-sites": len(ok), self.weighted_by_key: float(sum(sizes))}
        if len(rlog.train_loss) == len(ok):
            summary[TRAIN_LOSS] = float(sum(w * r.metrics[TRAIN_LOSS] for w, r in zip(weights, ok, strict=True)))
        metrics = MetricRecord(summary)
        log.info("round %d: aggregated %s with weights %s", rnd, sites, np.round(weights, 4).tolist())
        return to_record(new_global), metrics

    def _secure_mean(
        self, rnd: int, ok: list[SiteReply], weights: np.ndarray, rlog: RoundLog
    ) -> tuple[list[int], np.ndarray, dict[str, np.ndarray], dict[int, int]]:
        """SecAgg+ of the sites' stashed updates: which replies made it, their renormalised weights, the new
        shared tensors (global + weighted mean update, noised under client DP) and the bytes each node sent."""
        assert self.secure is not None and self._grid is not None
        res = secure_weighted_mean(
            self._grid,
            {r.node_id: float(w) for r, w in zip(ok, weights, strict=True)},
            self._secure_spec,
            rnd,
            threshold=self.secure.threshold,
            clipping_range=self.secure.clipping_range,
            timeout=self.secure.timeout,
        )
        keep = [i for i, r in enumerate(ok) if r.node_id in set(res.survivors)]
        dropped = [r.site for r in ok if r.node_id not in set(res.survivors)]
        kept = np.asarray([weights[i] for i in keep], dtype=np.float64)
        kept = kept / kept.sum()
        delta = res.mean
        if self.client_dp is not None:
            delta, rlog.privacy["client"] = self.client_dp.add_noise(delta, kept, rnd)
        for site in dropped:
            rlog.failures.append(f"{site}: dropped out during SecAgg+ in round {rnd} (recovered from its shares)")
        rlog.privacy["secure_aggregation"] = {"sites": [ok[i].site for i in keep], "dropped": dropped}
        mean = {k: (self._global[k].astype(np.float64) + v).astype(self._global[k].dtype) for k, v in delta.items()}
        return keep, kept, mean, res.bytes_up

    def _valid_replies(self, rnd: int, replies: Iterable[Message], rlog: RoundLog) -> list[SiteReply]:
        """The round's replies that pass the message contract and the screening, decoded, sorted by site.

        A reply that breaks the contract (``validate_train_reply``), two replies claiming one site, an update-norm
        outlier or an implausible loss (``fedmedlora.screening``) exclude that site from the round, named with
        the reason in ``excluded`` and ``failures``; the round goes on with the others.

        Raises:
            PrivacyBudgetSpent: every site that answered refused to train.
            FederationError: fewer than ``min_train_nodes`` replies left (the message lists every failure).
        """
        ok: list[SiteReply] = []
        for msg in replies:
            nid = msg.metadata.src_node_id
            if msg.has_error():
                rlog.failures.append(f"{self._node_label(nid)}: {msg.error.reason}")
                log.warning("round %d: %s (node %d) failed: %s", rnd, self._node_label(nid), nid, msg.error.reason)
                continue
            info = describe(msg.content)
            try:
                if self._refused(msg):
                    reply = validate_train_reply(msg, {}, [DP_REFUSED, DP_EPSILON])
                    rlog.refused[reply.site] = reply.metrics[DP_EPSILON]
                    rlog.failures.append(
                        f"{reply.site}: refused to train, its privacy budget is spent (ε so far "
                        f"{reply.metrics[DP_EPSILON]:.3f})"
                    )
                    self.site_names[nid] = reply.site
                    log.warning("round %d: site %s refused to train (privacy budget spent)", rnd, reply.site)
                    continue
                reply = validate_train_reply(msg, self._expected_up, self.required_metrics())
                reply = replace(reply, arrays=self.transport.receive_up(reply.arrays, self._global))
            except (ReplyValidationError, AggregationError) as err:
                self._exclude(rnd, rlog, self._claimed_site(msg), str(err))
                continue
            self.messages.append(
                {"round": rnd, "direction": "up", "node_id": nid, "site": reply.site, "type": "train", **info}
            )
            ok.append(reply)
        # every sampled site without a valid reply is named (crashed nodes send nothing at all, and Flower reports
        # a stopped node's error as coming from node 1, so the error lines above cannot name them)
        answered = {r.node_id for r in ok} | {n for n, name in self.site_names.items() if name in rlog.refused}
        answered |= {n for n in rlog.sampled_node_ids if self._node_label(n) in rlog.excluded}
        for nid in rlog.sampled_node_ids:
            if nid not in answered:
                name = self.site_names.get(nid, f"node {nid}")
                rlog.failures.append(f"{name}: no valid reply in round {rnd} (offline, crashed or timed out)")
                log.warning("round %d: site %s (node %d) sent no valid reply", rnd, name, nid)
        claims: dict[str, int] = {}
        for r in ok:
            claims[r.site] = claims.get(r.site, 0) + 1
        for site, n in claims.items():
            if n > 1:
                self._exclude(rnd, rlog, site, f"{n} replies claim site {site} (nodes "
                              f"{sorted(r.node_id for r in ok if r.site == site)})")  # fmt: skip
        ok = [r for r in ok if claims[r.site] == 1]
        for r in ok:
            self.site_names[r.node_id] = r.site
        ok = self._screen(rnd, ok, rlog)
        if not ok and rlog.refused:
            raise PrivacyBudgetSpent(
                f"round {rnd}: every site that answered refused to train (privacy budget spent: "
                f"{sorted(rlog.refused)}); failures: {rlog.failures}"
            )
        if len(ok) < max(self.min_train_nodes, 1):
            raise FederationError(
                f"round {rnd}: {len(ok)} valid site replies, {self.min_train_nodes} required; failures: {rlog.failures}"
            )
        ok.sort(key=lambda r: r.site)
        return ok

    def _screen(self, rnd: int, ok: list[SiteReply], rlog: RoundLog) -> list[SiteReply]:
        """Drop update-norm outliers and implausible losses (``fedmedlora.screening``); SecAgg+ hides updates,
        so only the scalars are screened there."""
        sites = [r.site for r in ok]
        bad: dict[str, str] = {}
        if self.secure is None and ok:
            norms = [global_norm({k: r.arrays[k] - self._global[k] for k in r.arrays}) for r in ok]
            bad.update(screen_norms(sites, norms, self.screening))
        if SITE_VAL_LOSS in self.required_metrics():
            bad.update(screen_losses(sites, [r.metrics[SITE_VAL_LOSS] for r in ok]))
        for site, reason in bad.items():
            self._exclude(rnd, rlog, site, reason)
        return [r for r in ok if r.site not in bad]

    def _exclude(self, rnd: int, rlog: RoundLog, who: str, reason: str) -> None:
        rlog.excluded[who] = reason
        rlog.failures.append(f"{who}: excluded from round {rnd}: {reason}")
        log.warning("round %d: %s excluded: %s", rnd, who, reason)

    def _node_label(self, nid: int) -> str:
        return self.site_names.get(nid, f"node {nid}")

    def _claimed_site(self, msg: Message) -> str:
        """The name to give a reply that broke the contract: its own short site name if it has a valid one and
        this node answered under it before, else the name the node is known under, else ``node <id>``."""
        nid = msg.metadata.src_node_id
        info = msg.content.config_records.get(INFO_KEY)
        raw = info.get("site") if info is not None else None
        known = self.site_names.get(nid)
        if isinstance(raw, str) and SITE_NAME.match(raw) and (known is None or known == raw):
            self.site_names.setdefault(nid, raw)
            return raw
        return known or f"node {nid}"

    @staticmethod
    def _refused(msg: Message) -> bool:
        metrics = msg.content.metric_records.get(METRICS_KEY)
        return metrics is not None and bool(metrics.get(DP_REFUSED, 0))

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
                self.rounds.setdefault(rnd, RoundLog(round=rnd, rule=self.rule)).failures.append(
                    f"evaluate node {msg.metadata.src_node_id}: {msg.error.reason}"
                )
                continue
            reply = validate_train_reply(msg, {}, [VAL_LOSS, NUM_EXAMPLES])
            losses[reply.site] = reply.metrics[VAL_LOSS]
            sizes[reply.site] = reply.metrics[NUM_EXAMPLES]
        if not losses:
            return None
        total = sum(sizes.values())
        rlog = self.rounds.setdefault(rnd, RoundLog(round=rnd, rule=self.rule))
        rlog.site_val_loss = losses
        mean = sum(losses[s] * sizes[s] for s in losses) / total if total > 0 else float(np.mean(list(losses.values())))
        return MetricRecord({VAL_LOSS: float(mean), NUM_EXAMPLES: int(total)})


# ---- the rules -------------------------------------------------------------------------------------------------


class FedMedLoRA(LoraStrategy):
    """Fed-MedLoRA (paper; reference ``adaptor_avg``): every LoRA tensor, A and B averaged independently, with
    weights proportional to each site's training tokens (or examples, ``federation.weight_by``)."""

    rule = "fedmedlora"


class _LossWeights(LoraStrategy):
    """Fed-MedLoRA+'s weights, for every rule whose ``settings.uses_loss``: ``w_k ∝ exp(−L_k / T)``, ``L_k`` the
    validation loss of site ``k``'s adapter on the coordinator-held set (``loss_source="server"``, via
    ``server_loss_fn``, the global adapter with the site's uploaded tensors) or on the site's own dev split
    (``"site"``, reported as ``site-val-loss``); ``T`` from ``temperature_rule``; ``combine_with_size`` multiplies
    in the size weight. Size weights when the settings do not use the loss."""

    def __init__(self, settings: AggregationSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        if settings.uses_loss and settings.loss_source == "server" and self.server_loss_fn is None:
            raise ValueError(
                f"{type(self).__name__} weighted by loss with loss_source='server' needs server_loss_fn "
                "(coordinator validation set)"
            )

    def required_metrics(self) -> list[str]:
        extra = [SITE_VAL_LOSS] if self.settings.uses_loss and self.settings.loss_source == "site" else []
        return [*super().required_metrics(), *extra]

    def site_weights(
        self, replies: Sequence[SiteReply], sizes: Sequence[float]
    ) -> tuple[np.ndarray, list[float] | None]:
        if not self.settings.uses_loss:
            return super().site_weights(replies, sizes)
        if self.settings.loss_source == "site":
            losses = [r.metrics[SITE_VAL_LOSS] for r in replies]
        else:
            assert self.server_loss_fn is not None
            losses = [float(self.server_loss_fn(merge_into(self._global, r.arrays))) for r in replies]
        st = self.settings
        self.last_temperature = data_temperature(losses, st.temperature_rule, st.temperature, st.temperature_floor)
        return weights_for(self.settings, sizes, losses, [r.site for r in replies]), losses


class FedMedLoRAPlus(_LossWeights):
    """Fed-MedLoRA+ (reference ``adaptor_avg_by_loss``): every LoRA tensor, weighted by ``exp(−L_k / T)`` of each
    site adapter's validation loss (``_LossWeights``)."""

    rule = "fedmedlora+"


class FedSA(LoraStrategy):
    """FedSA-LoRA (Guo et al., ICLR 2025): only ``lora_A`` is shared and averaged (size weights); each site keeps
    its own ``lora_B`` in its state. In the last round every tensor travels, so the final global adapter has an
    averaged B too (the sites keep their own)."""

    rule = "fedsa"

    def upload_keys(self, keys: Iterable[str], round_: int) -> list[str]:
        if round_ == self.num_rounds:
            return sorted(keys)
        return super().upload_keys(keys, round_)


class FFA(LoraStrategy):
    """FFA-LoRA (Sun et al., ICLR 2024): ``lora_A`` frozen at the shared random initialisation (the sites freeze
    it when the round's ``rule`` says ``ffa``); only ``lora_B`` is trained, shared and averaged, so ``B̄A`` is the
    exact average of the sites' ``B_k A``. The key selection is ``aggregation.shared_keys("ffa", ...)``."""

    rule = "ffa"


class RoLoRA(_LossWeights):
    """RoLoRA (Chen et al., arXiv 2502.01755): alternating optimisation of the two LoRA factors. Odd rounds train
    and share ``lora_B`` with ``lora_A`` frozen, even rounds ``lora_A`` with ``lora_B`` frozen (the sites freeze
    the factor from the round's ``rule`` and ``server-round``, ``aggregation.rolora_factor``). Every site holds the
    same frozen factor, so the weighted mean of the trained one is exact for the product ``BA``; each upload is one
    factor (about half of Fed-MedLoRA's bytes). The global adapter is complete after every round. Size weights, or
    Fed-MedLoRA+'s loss weights with ``settings.loss_weighted`` (``_LossWeights``)."""

    rule = "rolora"

    def upload_keys(self, keys: Iterable[str], round_: int) -> list[str]:
        return shared_keys(self.rule, list(keys), round_)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = super().configure_train(server_round, arrays, config, grid)
        rnd = self.global_round(server_round)
        self.rounds[rnd].trained_factor = rolora_factor(rnd)
        return messages


#: Rule name → strategy class; exactly ``fedmedlora.aggregation.RULES``.
STRATEGIES: dict[str, type[LoraStrategy]] = {cls.rule: cls for cls in (FedMedLoRA, FedMedLoRAPlus, FedSA, FFA, RoLoRA)}


def make_strategy(settings: AggregationSettings, **kwargs: Any) -> LoraStrategy:
    """The strategy of ``settings.rule`` (keyword arguments: see ``LoraStrategy``)."""
    return STRATEGIES[settings.rule](settings, **kwargs)
