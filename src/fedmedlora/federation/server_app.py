"""The ServerApp the coordinator runs: initial adapter, rounds, Fed-MedLoRA+ scoring, logs, checkpoints, resume.

Owns: building the initial adapter once (every site starts from the same A, B = 0), the coordinator-held
validation set (``<data>/_server/validation.jsonl``: Fed-MedLoRA+ "server" weights and the global adapter's
validation loss), per-round records in the run folder, one PEFT checkpoint per round, and resume.

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

Resume restores the global adapter, the round counter and (because sampling and training seeds depend only on
(seed, round, site)) the same site selection and seeds. Per-site state held by the sites (FedSA's private B, AdamW
moments) lives in each node's ``context.state``; the in-process simulation persists it next to the run, a real
deployment keeps it only while the SuperNode lives.

May import flwr; torch/transformers are reached only through ``fedmedlora.experiments`` / ``train``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedmedlora.aggregation import AggregationSettings
from fedmedlora.config import RunConfig
from fedmedlora.federation.strategy import VAL_LOSS, FedMedLoRAStrategy, from_record, to_record
from fedmedlora.runs import RunDir

log = logging.getLogger(__name__)

STATE_FILE = "federation_state.json"
SERVER_SPLIT_DIR = "_server"
SERVER_SPLIT = "validation"

app = ServerApp()


def checkpointed_round(run_dir: str | Path) -> int | None:
    """The last round checkpointed in ``run_dir`` (``federation_state.json``), or ``None`` if there is none."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    return int(json.loads(path.read_text(encoding="utf-8"))["round"])


class ResumeError(RuntimeError):
    """The run folder cannot be resumed with this configuration."""


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
        loss_source=f.plus_loss_source,
        combine_with_size=f.combine_with_size,
    )


def server_validation_examples(cfg: RunConfig, data_dir: Path) -> list[Any]:
    """Instruction examples of the coordinator-held labelled set ([] if none), capped by ``eval.max_sentences``."""
    from fedmedlora.jsonl import read_documents
    from fedmedlora.prompts import build_examples

    path = data_dir / SERVER_SPLIT_DIR / f"{SERVER_SPLIT}.jsonl"
    if not path.is_file():
        return []
    examples = build_examples(read_documents(path), cfg.data.format, cfg.data.tasks)
    cap = cfg.federation.server_val_max_examples
    if cap is not None and len(examples) > cap:
        rng = random.Random(f"{cfg.seed}:_server:validation")
        keep = sorted(rng.sample(range(len(examples)), cap))
        examples = [examples[i] for i in keep]
    return examples


def server_round_scorer(cfg: RunConfig, data_dir: Path, session: Any) -> Callable[[dict], dict[str, float]] | None:
    """F1 of an adapter on ``federation.round_eval_sentences`` sentences of the coordinator's validation set (seeded
    sample), for the per-round record; ``None`` when disabled or when the coordinator holds no labelled set."""
    from fedmedlora.jsonl import read_documents

    n = cfg.federation.round_eval_sentences
    path = data_dir / SERVER_SPLIT_DIR / f"{SERVER_SPLIT}.jsonl"
    if n <= 0 or not path.is_file():
        return None
    items = [(s, d.label_set) for d in read_documents(path) for s in d.sentences]
    if len(items) > n:
        rng = random.Random(f"{cfg.seed}:_server:round-eval")
        items = [items[i] for i in sorted(rng.sample(range(len(items)), n))]

    def score(arrays: dict) -> dict[str, float]:
        from fedmedlora.extract import extract_sentences
        from fedmedlora.metrics import score_sentences

        session.set_arrays(arrays)
        preds = extract_sentences(
            items, session.generate_fn(cfg), fmt=cfg.data.format, tasks=cfg.data.tasks, heads="gold"
        )
        ev = score_sentences(items, preds, cfg.data.tasks)
        out: dict[str, float] = {"val_sentences": float(len(items))}
        for task in cfg.data.tasks:
            if ev.n_instances.get(task):
                for rule in ("strict", "lenient"):
                    out[f"val_{task}_{rule}_f1"] = ev.get(task, rule).f1
        return out

    return score


def _config_changes(saved_path: Path, cfg: RunConfig) -> list[str]:
    """Dotted fields that differ between the run's saved config and ``cfg`` (``federation.rounds`` excluded)."""
    from fedmedlora.config import _flatten, load_config

    if not saved_path.is_file():
        return []
    old = _flatten(load_config(saved_path).model_dump(mode="json"))
    new = _flatten(cfg.model_dump(mode="json"))
    return sorted(k for k in set(old) | set(new) if k != "federation.rounds" and old.get(k) != new.get(k))


def _truncate_logs(run: RunDir, last_round: int) -> None:
    """Drop records of rounds after the resume point (written before a crash, never checkpointed)."""
    import json

    for name in ("rounds.jsonl", "comm.jsonl"):
        kept = [r for r in run.read_jsonl(name) if int(r.get("round", 0)) <= last_round]
        run.write_text(name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))


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
    from fedmedlora.adapter_io import load_adapter_arrays, save_adapter
    from fedmedlora.experiments import train_settings
    from fedmedlora.federation.client_app import get_session
    from fedmedlora.train import validation_loss

    run_path = Path(run_dir)
    if not resume and (run_path / "rounds.jsonl").is_file():
        raise ResumeError(f"{run_path} already holds a federated run; resume it or choose a new folder")
    run = RunDir(run_path) if resume else RunDir(run_path, cfg, command="federation", setting=cfg.federation.strategy)
    settings = aggregation_settings(cfg)
    fed = cfg.federation
    if data_dir is None:
        from fedmedlora.federation.client_app import default_data_dir

        data_dir = cfg.data.benchmark or default_data_dir()
    val_examples = server_validation_examples(cfg, Path(data_dir))
    round_scorer = server_round_scorer(cfg, Path(data_dir), get_session(cfg))
    if settings.uses_loss and settings.loss_source == "server" and not val_examples:
        raise ValueError(
            f"Fed-MedLoRA+ with plus_loss_source='server' needs the coordinator's labelled validation set at "
            f"{Path(data_dir) / SERVER_SPLIT_DIR / (SERVER_SPLIT + '.jsonl')}; none found (or use "
            "federation.plus_loss_source=site)"
        )
    session = get_session(cfg)
    peft_config = session.model.peft_config["default"]
    val_settings = train_settings(cfg, seed=cfg.seed)

    def val_loss(arrays: dict[str, np.ndarray]) -> float:
        return float(validation_loss(session.model, session.tokenizer, val_examples, val_settings, arrays))

    offset = 0
    if resume:
        state_path = run_path / STATE_FILE
        if not state_path.is_file():
            raise ResumeError(f"cannot resume: {state_path} does not exist (no completed round in {run_path})")
        state = run.read_json(STATE_FILE)
        for key, now in (("rule", fed.strategy), ("seed", cfg.seed), ("weight_by", fed.weight_by)):
            if state.get(key) != now:
                raise ResumeError(f"cannot resume {run_path}: {key} was {state.get(key)!r}, config says {now!r}")
        changed = _config_changes(run_path / "config.yaml", cfg)
        if changed:
            raise ResumeError(
                f"cannot resume {run_path}: the configuration changed since the run started ({', '.join(changed)}); "
                "only federation.rounds may differ"
            )
        offset = int(state["round"])
        initial = load_adapter_arrays(run.adapter_dir(offset))
        _truncate_logs(run, offset)
        log.info("resuming %s after round %d", run_path, offset)
    else:
        initial = dict(session.init_arrays)
        record0: dict[str, Any] = {"round": 0, "rule": fed.strategy, "time": time.time()}
        if val_examples:
            record0["val_loss"] = val_loss(initial)
            record0["val_examples"] = len(val_examples)
        if round_scorer is not None:
            record0.update(round_scorer(initial))
        save_adapter(
            initial, run.adapter_dir(0), session.adapter_meta(round=0, rule=fed.strategy), peft_config=peft_config
        )
        run.append_jsonl("rounds.jsonl", record0)

    outcome = ServerOutcome(arrays=initial, start_round=offset, run_dir=run_path)
    remaining = fed.rounds - offset
    if remaining <= 0:
        log.info("nothing to do: %d of %d rounds already completed", offset, fed.rounds)
        if not (run.adapter_dir("final") / "adapter_model.safetensors").is_file():
            save_adapter(
                initial,
                run.adapter_dir("final"),
                session.adapter_meta(round=offset, rule=fed.strategy),
                peft_config=peft_config,
            )
        return outcome

    min_available = len(fed.sites) if fed.sites else fed.min_sites
    strategy = FedMedLoRAStrategy(
        settings,
        num_rounds=fed.rounds,
        fraction_train=fed.fraction_train,
        min_train_nodes=fed.min_sites,
        min_available_nodes=min_available,
        seed=cfg.seed,
        server_loss_fn=val_loss if settings.uses_loss and settings.loss_source == "server" else None,
        round_offset=offset,
        node_wait_timeout_s=fed.round_timeout_s,
        compression=fed.compression,
    )

    def after_round(server_round: int, arrays_record: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        rnd = offset + server_round
        arrays = from_record(arrays_record, "global adapter")
        rlog = strategy.rounds[rnd]
        record: dict[str, Any] = {"time": time.time(), **asdict(rlog)}
        record["size_key"] = settings.size_key
        if val_examples:
            record["val_loss"] = val_loss(arrays)
        if round_scorer is not None:
            record.update(round_scorer(arrays))
        site_of_node = dict(zip(rlog.node_ids, rlog.sites, strict=True))
        save_adapter(
            arrays,
            run.adapter_dir(rnd),
            session.adapter_meta(round=rnd, rule=fed.strategy, sites=rlog.sites),
            peft_config=peft_config,
        )
        mine = [m for m in strategy.messages if m["round"] == rnd]
        strategy.messages = [m for m in strategy.messages if m["round"] != rnd]
        for m in mine:
            m.setdefault("site", site_of_node.get(m["node_id"]))
            run.append_jsonl("comm.jsonl", m)
        record["seconds"] = round(time.time() - rlog.started, 3)
        run.append_jsonl("rounds.jsonl", record)
        run.write_json(
            STATE_FILE,
            {
                "round": rnd,
                "num_rounds": fed.rounds,
                "rule": fed.strategy,
                "seed": cfg.seed,
                "weight_by": fed.weight_by,
                "adapter": str(run.adapter_dir(rnd).relative_to(run_path)),
            },
        )
        outcome.rounds.append(record)
        return MetricRecord({VAL_LOSS: record["val_loss"]}) if "val_loss" in record else None

    result = strategy.start(
        grid=grid,
        initial_arrays=to_record(initial),
        num_rounds=remaining,
        timeout=fed.round_timeout_s,
        evaluate_fn=after_round,
    )
    outcome.arrays = from_record(result.arrays, "global adapter") if len(result.arrays) else initial
    save_adapter(
        outcome.arrays,
        run.adapter_dir("final"),
        session.adapter_meta(round=fed.rounds, rule=fed.strategy),
        peft_config=peft_config,
    )
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
