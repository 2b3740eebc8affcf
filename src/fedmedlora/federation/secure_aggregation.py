"""Secure aggregation (``federation.secure_aggregation``): SecAgg+ on Flower's implementation, for the linear rules.

A round under SecAgg+ has two parts:

1. **train** (this project's message, no tensors back): every sampled site trains as usual, keeps its update
   ``Δ_k = θ_k − θ`` (the tensors its rule shares) in its own state, and replies with scalars only — the size
   weight (``num-train-tokens``), and for Fed-MedLoRA+ with ``plus_loss_source=site`` the loss of its adapter
   on its own dev split. The coordinator turns the scalars into normalised weights ``w_k``.
2. **SecAgg+** (Flower's ``SecAggPlusWorkflow`` on the server, ``secaggplus_mod`` at the sites): each site is
   told its weight, uploads ``w_k·Δ_k`` quantised and masked with pairwise and private masks; the coordinator
   unmasks only the sum and gets ``Σ_k w_k Δ_k / Σ_k w_k`` over the sites that finished. A site dropping out
   after the key exchange is recovered from its neighbours' shares (``secagg_threshold``).

What the coordinator learns: one weight scalar per site per round (tokens; the dev loss for the private
Fed-MedLoRA+) and the weighted mean update; never one site's adapter. The quantisation maps
``[−clipping_range, clipping_range]`` onto 2**22 levels with stochastic rounding (unbiased; step
``2·clipping_range / 2**22``, 3.8e-6 at the default 8): a site whose ``|w_k·Δ_k|`` exceeds the range fails the
round instead of being clipped silently (Flower's quantiser would clip).

Owns: ``SECURE`` (the config key of part 1), ``stash_update`` / the site's ``secure_aggregation_mod`` (answers
the SecAgg+ stages from the stashed update) and ``secure_weighted_mean`` (the server's SecAgg+ run).

May import flwr and numpy; must not import torch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE

from fedmedlora.federation.messages import from_record, to_record

log = logging.getLogger(__name__)

#: Config key of the train message: "keep the update, send scalars only; SecAgg+ follows".
SECURE = "secure-aggregation"
#: Per-site fit config of the SecAgg+ stage: the site's weight (integer, out of ``WEIGHT_SCALE``) and round.
WEIGHT = "secagg-weight"
ROUND = "secagg-round"
#: A weight ``w_k`` travels as ``round(w_k · WEIGHT_SCALE)`` = SecAgg+'s ``num_examples``, ``max_weight`` = scale.
WEIGHT_SCALE = 1_000_000
#: The site's state record holding the stashed update of the current round.
STASH_KEY = "secagg-update"
STASH_META = "secagg-update-meta"


@dataclass(frozen=True)
class SecAggSettings:
    """The coordinator's SecAgg+ parameters (``federation.secagg_*``)."""

    threshold: float = 0.67
    clipping_range: float = 8.0
    timeout: float | None = None


class SecureAggregationError(RuntimeError):
    """SecAgg+ could not finish a round (too few sites left, a site's update outside the range, ...)."""


# ---- the site -----------------------------------------------------------------------------------------------


def stash_update(state: RecordDict, delta: Mapping[str, np.ndarray], round_: int) -> None:
    """Keep this round's update in the site's state until the SecAgg+ stage asks for it."""
    state[STASH_KEY] = to_record({k: np.asarray(v, dtype=np.float32) for k, v in delta.items()})
    state[STASH_META] = ConfigRecord({"round": int(round_)})


def _masked_upload(msg: Message, context: Context) -> Message:
    """SecAgg+'s inner call: the stashed update as a legacy ``FitRes`` (the mod masks it and drops the plain)."""
    fitins = msg.content.config_records.get("fitins.config")
    if fitins is None or WEIGHT not in fitins:
        raise SecureAggregationError("SecAgg+ stage without this site's weight (fitins.config)")
    state = context.state
    meta = state.config_records.get(STASH_META)
    if STASH_KEY not in state.array_records or meta is None or int(meta["round"]) != int(fitins[ROUND]):
        raise SecureAggregationError(f"SecAgg+ round {fitins[ROUND]}: this site holds no update of that round")
    delta = from_record(state.array_records[STASH_KEY], "stashed update")
    weight = int(fitins[WEIGHT])
    ratio = weight / WEIGHT_SCALE
    secagg = state.config_records.get(RECORD_KEY_STATE, ConfigRecord({}))
    limit = float(cast(float, secagg.get("clipping_range", 8.0)))
    peak = max((float(np.max(np.abs(v))) for v in delta.values()), default=0.0) * ratio
    if peak > limit:
        raise SecureAggregationError(
            f"SecAgg+: weight × update reaches {peak:.4g} > federation.secagg_clipping_range={limit}; raise it "
            "(or clip the update, federation.dp.clip_norm) instead of losing values silently"
        )
    keys = sorted(delta)
    fitres = FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters([delta[k] for k in keys]), weight, {})
    from flwr.compat.common import recorddict_compat as compat

    del state[STASH_KEY]  # one upload per round
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


def secure_aggregation_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """The site's mod: SecAgg+ stages go to Flower's ``secaggplus_mod`` (answered from the stashed update),
    every other message to the app's own handler."""
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    from flwr.client.mod import secaggplus_mod

    return secaggplus_mod(msg, context, _masked_upload)


# ---- the coordinator --------------------------------------------------------------------------------------------


class _CountingGrid:
    """A grid that counts the bytes each node sends back during SecAgg+ (masked vectors travel as bytes)."""

    def __init__(self, grid: Any) -> None:
        self._grid = grid
        self.bytes_up: dict[int, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for m in replies:
            if m.has_error():
                continue
            size = sum(len(a.data) for rec in m.content.array_records.values() for a in rec.values())
            for rec in m.content.config_records.values():
                for value in rec.values():
                    items = value if isinstance(value, list) else [value]
                    size += sum(len(v) for v in items if isinstance(v, bytes))
            nid = m.metadata.src_node_id
            self.bytes_up[nid] = self.bytes_up.get(nid, 0) + size
        return replies


def _bridge_strategy(grid: Any, weights: Mapping[int, int], round_: int) -> Any:
    """A legacy ``Strategy`` for the workflow: sends each node its weight, keeps the unmasked aggregate."""
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.strategy import Strategy

    class Bridge(Strategy):
        def __init__(self) -> None:
            self.result: list[np.ndarray] | None = None
            self.survivors: list[int] = []

        def initialize_parameters(self, client_manager: Any) -> Parameters | None:
            return None

        def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[Any]:
            run_id = int(getattr(getattr(grid, "run", None), "run_id", 0) or 0)
            empty = Parameters(tensors=[], tensor_type="numpy.ndarray")
            return [
                (GridClientProxy(nid, grid, run_id), FitIns(empty, {WEIGHT: int(w), ROUND: int(round_)}))
                for nid, w in weights.items()
            ]

        def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[Any, dict]:
            if results:
                self.result = parameters_to_ndarrays(results[0][1].parameters)
                self.survivors = sorted(proxy.node_id for proxy, _ in results)
            return None, {}

        def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[Any]:
            return []

        def aggregate_evaluate(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[Any, dict]:
            return None, {}

        def evaluate(self, server_round: int, parameters: Parameters) -> Any:
            return None

    return Bridge()


@dataclass
class SecureResult:
    """The unmasked weighted mean update, who contributed to it and what they uploaded."""

    mean: dict[str, np.ndarray]
    survivors: list[int]
    bytes_up: dict[int, int] = field(default_factory=dict)


def secure_weighted_mean(
    grid: Any,
    weights: Mapping[int, float],
    spec: Mapping[str, tuple[tuple[int, ...], str]],
    round_: int,
    *,
    threshold: float = 0.67,
    clipping_range: float = 8.0,
    timeout: float | None = None,
) -> SecureResult:
    """Run SecAgg+ over the nodes in ``weights`` (normalised weight per node id) and return the weighted mean of
    their stashed updates, tensor names and shapes from ``spec`` (sorted order, as the sites send them).

    Raises:
        SecureAggregationError: fewer than 2 nodes, a stage that could not finish, or an aggregate whose shapes
            do not match ``spec``.
    """
    from flwr.app import Context as AppContext
    from flwr.server import LegacyContext
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey
    from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

    if len(weights) < 2:
        raise SecureAggregationError(f"round {round_}: SecAgg+ needs at least 2 sites, got {len(weights)}")
    counting = _CountingGrid(grid)
    scaled = {nid: max(1, round(w * WEIGHT_SCALE)) for nid, w in weights.items()}
    bridge = _bridge_strategy(counting, scaled, round_)
    base = AppContext(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(base, strategy=bridge)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: int(round_)})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    workflow = SecAggPlusWorkflow(
        num_shares=1.0,  # every sampled site shares with every other (a handful of hospitals)
        reconstruction_threshold=float(threshold),
        max_weight=float(WEIGHT_SCALE),
        clipping_range=float(clipping_range),
        timeout=timeout,
    )
    state = WorkflowState()
    stages = (
        ("setup", workflow.setup_stage),
        ("share keys", workflow.share_keys_stage),
        ("collect masked vectors", workflow.collect_masked_vectors_stage),
        ("unmask", workflow.unmask_stage),
    )
    for name, stage in stages:
        if not stage(counting, context, state):
            reasons = "; ".join(str(f) for f in state.failures) or "too few sites left for the threshold"
            raise SecureAggregationError(f"round {round_}: SecAgg+ stopped at the {name} stage ({reasons})")
    if bridge.result is None:
        raise SecureAggregationError(f"round {round_}: SecAgg+ returned no aggregate")
    keys = sorted(spec)
    if len(bridge.result) != len(keys):
        raise SecureAggregationError(
            f"round {round_}: aggregate has {len(bridge.result)} tensors, expected {len(keys)}"
        )
    mean = {}
    for key, arr in zip(keys, bridge.result, strict=True):
        shape, dtype = spec[key]
        if tuple(arr.shape) != tuple(shape):
            raise SecureAggregationError(f"round {round_}: aggregate {key} has shape {arr.shape}, expected {shape}")
        mean[key] = np.asarray(arr, dtype=dtype)
    return SecureResult(mean, bridge.survivors, counting.bytes_up)


__all__ = [
    "SECURE",
    "SecAggSettings",
    "SecureAggregationError",
    "SecureResult",
    "secure_aggregation_mod",
    "secure_weighted_mean",
    "stash_update",
]
