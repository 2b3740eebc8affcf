"""The ServerApp the coordinator runs: initial adapter, rounds, Fed-MedLoRA+ scoring, logs, checkpoints, resume.

Owns ``run_server`` (put together the strategy of ``federation.strategy``, the coordinator's evaluator, the round
recorder and — when resuming — the checkpoint, then run Flower's round loop) and the Flower entry point ``app``.
The pieces: ``strategies`` (one class per rule), ``server_eval`` (validation loss / round F1 on the coordinator's
labelled set), ``recorder`` (what each round writes), ``checkpoint`` (resume).

Run folder (``fedmedlora.runs.RunDir``)::

    rounds.jsonl              one record per round (round 0 = the initial adapter): sites, weights, sizes,
                              losses, train loss per site, global val loss, bytes up/down per site, wall time
    comm.jsonl                one record per message: round, direction, site, node, tensor names/shapes/bytes
    adapters/round_<N>/       the global adapter after round N (PEFT folder; round_0 = initial)
    adapters/final/           the last global adapter
    federation_state.json     resume point: last completed round + what must match to resume

Run config (Flower ``run_config`` = ``RunConfig.to_flower_run_config()`` plus these server-only keys):
    ``run-dir``          output folder (else ``$FEDMEDLORA_RUN_DIR``, else ``runs/<name>``)
    ``resume``           continue from ``federation_state.json`` in ``run-dir``
    ``server-data-dir``  folder holding ``_server/validation.jsonl`` (else ``data.benchmark``, else the sample)

Per-site state held by the sites (FedSA's private B, AdamW moments) lives in each node's ``context.state``; the
in-process simulation persists it next to the run, a real deployment keeps it only while the SuperNode lives.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmedlora.aggregation import AggregationSettings
from fedmedlora.config import RunConfig
from fedmedlora.federation.checkpoint import ResumeError, resume_point
from fedmedlora.federation.client_dp import ClientLevelDP
from fedmedlora.federation.liveness import RejoiningGrid
from fedmedlora.federation.messages import from_record, to_record
from fedmedlora.federation.recorder import RoundRecorder
from fedmedlora.federation.secure_aggregation import SecAggSettings
from fedmedlora.federation.server_eval import ServerEvaluator
from fedmedlora.federation.site import default_data_dir
from fedmedlora.federation.strategies import PrivacyBudgetSpent, make_strategy
from fedmedlora.lm.adapter_io import ADAPTER_WEIGHTS_FILE
from fedmedlora.lm.session import get_session
from fedmedlora.privacy import PrivacyError
from fedmedlora.runs import FINAL, ROUNDS_FILE, RunDir
from fedmedlora.screening import ScreeningSettings

log = logging.getLogger(__name__)

app = ServerApp()


@dataclass
class ServerOutcome:
    """What ``run_server`` returns."""

    arrays: dict[str, np.ndarray]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    start_round: int = 0
    run_dir: Path | None = None


def aggregation_settings(cfg: RunConfig) -> AggregationSettings:
    f = cfg.federation
    return AggregationSettings(
        rule=f.strategy,
        size_key=f.weight_by,
        temperature=f.temperature,
        temperature_rule=f.temperature_rule,
        temperature_floor=f.temperature_floor,
        loss_source=f.plus_loss_source,
        combine_with_size=f.combine_with_size,
        robust=f.robust,
        trim_fraction=f.trim_fraction,
        loss_weighted=f.strategy == "rolora" and f.rolora_weights == "loss",
    )


def run_server(
    grid: Grid,
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    data_dir: str | Path | None = None,
) -> ServerOutcome:
    """Run (or resume) the federation on ``grid`` and write everything to ``run_dir``.

    Args:
        grid: Flower Grid (Deployment/Simulation runtime, or the in-process driver).
        cfg: The resolved run configuration.
        run_dir: Output folder (created; ``config.yaml`` written if absent).
        resume: Continue from the last checkpoint in ``run_dir``.
        data_dir: Folder holding ``_server/validation.jsonl`` (server-side only; never sent to sites).

    Returns:
        The final global adapter and the round records written.

    Raises:
        ResumeError: ``resume`` without a checkpoint, or with a different rule/seed/rounds layout.
        ValueError: Fed-MedLoRA+ "server" without a coordinator validation set.
    """
    run_path = Path(run_dir)
    if not resume and (run_path / ROUNDS_FILE).is_file():
        raise ResumeError(f"{run_path} already holds a federated run; resume it or choose a new folder")
    run = RunDir(run_path) if resume else RunDir(run_path, cfg, command="federation", setting=cfg.federation.strategy)
    try:
        return _run_server(grid, cfg, run, run_path, resume=resume, data_dir=data_dir)
    except BaseException as e:  # interrupted (Ctrl-C, SIGTERM) or failed: run.json says so, never "running"
        status = "interrupted" if isinstance(e, KeyboardInterrupt | SystemExit) else "failed"
        run.finish(status, error=f"{type(e).__name__}: {e}"[:500])
        raise


def _run_server(
    grid: Grid, cfg: RunConfig, run: RunDir, run_path: Path, *, resume: bool, data_dir: str | Path | None
) -> ServerOutcome:
    settings = aggregation_settings(cfg)
    fed = cfg.federation
    session = get_session(cfg)
    evaluator = ServerEvaluator(cfg, data_dir if data_dir is not None else default_data_dir(cfg), session)
    if settings.uses_loss and settings.loss_source == "server" and not evaluator.has_loss:
        raise ValueError(
            f"Fed-MedLoRA+ with plus_loss_source='server' needs the coordinator's labelled validation set at "
            f"{evaluator.path}; none found (or use federation.plus_loss_source=site)"
        )

    point = resume_point(run, cfg) if resume else None
    offset = point.round if point is not None else 0
    initial = point.arrays if point is not None else dict(session.init_arrays)
    client_dp = last_round = None
    if fed.dp.enabled:
        n_sites = len(fed.sites) if fed.sites else fed.min_sites
        client_dp = ClientLevelDP(fed.dp, rounds=fed.rounds, sites=n_sites, seed=cfg.seed, done_rounds=offset)
        last_round = client_dp.affordable_rounds(fed.rounds)
        if last_round == 0:
            raise PrivacyError(
                f"federation.dp.max_epsilon={fed.dp.max_epsilon}: one round already spends "
                f"ε={client_dp.epsilon_after(1):.3f} (noise multiplier {client_dp.noise_multiplier:.3f})"
            )
        if last_round < fed.rounds:
            log.warning(
                "client-level DP: federation.dp.max_epsilon=%s affords %d of %d rounds; the run stops after round %d",
                fed.dp.max_epsilon,
                last_round,
                fed.rounds,
                last_round,
            )
    planned = last_round if last_round is not None else fed.rounds
    strategy = make_strategy(
        settings,
        num_rounds=planned,
        fraction_train=fed.fraction_train,
        min_train_nodes=fed.min_sites,
        min_available_nodes=len(fed.sites) if fed.sites else fed.min_sites,
        seed=cfg.seed,
        server_loss_fn=evaluator.val_loss if settings.uses_loss and settings.loss_source == "server" else None,
        round_offset=offset,
        node_wait_timeout_s=fed.round_timeout_s,
        compression=fed.compression,
        screening=ScreeningSettings(
            max_size_factor=fed.max_size_factor,
            max_update_norm=fed.max_update_norm,
            norm_outlier_factor=fed.norm_outlier_factor,
        ),
        client_dp=client_dp,
        record_dp=cfg.train.dp.enabled,
        secure=SecAggSettings(fed.secagg_threshold, fed.secagg_clipping_range, fed.round_timeout_s)
        if fed.secure_aggregation
        else None,
    )
    recorder = RoundRecorder(run, cfg, strategy, session, evaluator, offset)
    if point is None:  # round 0: the initial adapter every site starts from
        record0: dict[str, Any] = {"round": 0, "rule": fed.strategy, "time": time.time()}
        scores = evaluator.scores(initial)
        if evaluator.has_loss:
            record0["val_loss"] = scores.pop("val_loss")
            record0["val_examples"] = len(evaluator.val_examples)
        record0.update(scores)
        if client_dp is not None:
            record0["privacy"] = {
                "client": {
                    "noise_multiplier": client_dp.noise_multiplier,
                    "delta": fed.dp.delta,
                    "clip_norm": fed.dp.clip_norm,
                    "planned_rounds": planned,
                    "epsilon_planned": client_dp.epsilon_after(planned),
                }
            }
        recorder.save_adapter(initial, 0, round=0)
        run.append_jsonl(ROUNDS_FILE, record0)

    outcome = ServerOutcome(arrays=initial, start_round=offset, run_dir=run_path)
    remaining = planned - offset
    if remaining <= 0:
        log.info("nothing to do: %d of %d rounds already completed", offset, planned)
        if not (run.adapter_dir(FINAL) / ADAPTER_WEIGHTS_FILE).is_file():
            recorder.save_adapter(initial, FINAL, round=offset)
        return outcome

    rejoining = RejoiningGrid(grid, rejoin_wait_s=fed.rejoin_wait_s, describe=strategy._node_label)
    try:
        result = strategy.start(
            grid=rejoining,
            initial_arrays=to_record(initial),
            num_rounds=remaining,
            timeout=fed.round_timeout_s,
            evaluate_fn=recorder,
        )
    except PrivacyBudgetSpent as spent:  # every site refused: stop cleanly with the last released adapter
        done = recorder.records[-1]["round"] if recorder.records else offset
        outcome.rounds = recorder.records
        outcome.arrays = recorder.last_arrays if recorder.last_arrays is not None else initial
        recorder.save_adapter(outcome.arrays, FINAL, round=done)
        run.finish(status="stopped", reason=str(spent), rounds_completed=done)
        log.warning("%s", spent)
        return outcome
    outcome.rounds = recorder.records
    outcome.arrays = from_record(result.arrays, "global adapter") if len(result.arrays) else initial
    recorder.save_adapter(outcome.arrays, FINAL, round=planned)
    if planned < fed.rounds:
        reason = f"client-level privacy budget federation.dp.max_epsilon={fed.dp.max_epsilon} affords {planned} rounds"
        run.finish(status="stopped", reason=reason, rounds_completed=planned)
    else:
        run.finish(status="done", rounds_completed=fed.rounds)
    return outcome


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: resolve the config from ``context.run_config`` and run the federation."""
    rc = dict(context.run_config)
    if "num-server-rounds" in rc and "federation.rounds" not in rc:  # pyproject's Flower-style default
        rc["federation.rounds"] = int(rc["num-server-rounds"])
    cfg = RunConfig.from_flower_run_config(rc)
    run_dir = rc.get("run-dir") or os.environ.get("FEDMEDLORA_RUN_DIR") or str(Path("runs") / cfg.name)
    data_dir = rc.get("server-data-dir") or None
    run_server(grid, cfg, str(run_dir), resume=bool(rc.get("resume", False)), data_dir=data_dir)
