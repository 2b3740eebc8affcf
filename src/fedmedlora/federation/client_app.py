"""The ClientApp a hospital (site) runs: train the LoRA adapter on the site's own notes, send back tensors only.

Owns: which site and data folder a node serves (read from ``context.node_config`` — never from a path sent by
the server), the per-site persistent state in ``context.state`` (FedSA-LoRA's private ``lora_B``, AdamW state
when ``train.keep_optimizer_state``), the per-(site, round) training seed, and the module-level cache of the
loaded base model (so a simulation does not reload it for every site and round).

Node config (``flower-supernode --node-config "site='chia' data-dir='/data/fedmedlora'"``):
    ``site``       the site name; required in deployment.
    ``data-dir``   folder holding ``<site>/train.jsonl`` and ``<site>/dev.jsonl``; required (never defaulted, so
                   a misconfigured hospital node fails instead of training on other data).
    Fallback (Ray simulation, which only sets ``partition-id``): site = ``federation.sites[partition-id]`` and
    data = ``data.benchmark`` or the bundled sample.

Reply: ``arrays`` (only the rule's upload tensors), ``metrics`` (numbers), ``info`` (``site`` name). No text, no
token ids, no pickles. This module imports torch/peft lazily through ``fedmedlora.experiments`` / ``train``.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmedlora.aggregation import is_lora_A, shared_keys
from fedmedlora.compression import decode, encode
from fedmedlora.config import RunConfig
from fedmedlora.federation.strategy import (
    ARRAYS_KEY,
    CONFIG_KEY,
    INFO_KEY,
    METRICS_KEY,
    NUM_EXAMPLES,
    NUM_TOKENS,
    SITE_VAL_LOSS,
    TRAIN_LOSS,
    VAL_LOSS,
    download_method,
    from_record,
    to_record,
)

log = logging.getLogger(__name__)

FEDSA_PRIVATE_KEY = "fedsa-private-b"
OPTIMIZER_KEY = "optimizer-state"
EF_STATE_KEY = "compression-error-feedback"

app = ClientApp()

# (model name, dtype, device, 4-bit, lora settings, seed) -> experiments.Session; shared by all virtual sites of
# one process (each call loads its own adapter arrays before use, so nothing leaks between sites).
_SESSIONS: dict[tuple[Any, ...], Any] = {}
_EXAMPLES: dict[tuple[Any, ...], list[Any]] = {}


class SiteConfigError(ValueError):
    """The node does not say which site it serves, or the site's data folder is missing."""


# ---- shared helpers (also used by the ServerApp) -------------------------------------------------------------


def session_key(cfg: RunConfig) -> tuple[Any, ...]:
    lora = cfg.lora
    return (
        cfg.model.name,
        cfg.model.dtype,
        cfg.model.device,
        cfg.model.load_in_4bit,
        lora.r,
        lora.alpha,
        lora.dropout,
        tuple(lora.target_modules or ()),
        cfg.seed,
    )


def get_session(cfg: RunConfig) -> Any:
    """The cached ``fedmedlora.experiments.Session`` (base model + LoRA wrapper + tokenizer) for ``cfg``."""
    from fedmedlora.experiments import Session

    key = session_key(cfg)
    if key not in _SESSIONS:
        _SESSIONS[key] = Session.load(cfg)
    return _SESSIONS[key]


def clear_caches() -> None:
    """Drop cached models and examples (tests; freeing memory)."""
    _SESSIONS.clear()
    _EXAMPLES.clear()


def site_seed(seed: int, site: str, server_round: int) -> int:
    """Training seed of a site in a round: depends only on (run seed, site name, round), so resume reproduces."""
    return int(seed + 1000 * server_round + zlib.crc32(site.encode("utf-8")) % 1000)


class SiteFolder:
    """``<data-dir>/<site>/<split>.jsonl`` read with ``fedmedlora.jsonl`` (duck-types ``Benchmark.load``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def load(self, site: str, split: str) -> list[Any]:
        from fedmedlora.jsonl import read_documents

        path = self.root / site / f"{split}.jsonl"
        if not path.is_file():
            raise SiteConfigError(f"site {site}: no {split} split at {path} (check the node's data-dir)")
        return read_documents(path)


def default_data_dir() -> Path:
    from fedmedlora.benchmark import default_benchmark_dir

    return Path(default_benchmark_dir())


def site_of(context: Context, cfg: RunConfig) -> tuple[str, Path]:
    """The site this node serves and its data folder, from ``context.node_config`` only.

    Raises:
        SiteConfigError: no ``site`` and no usable ``partition-id`` fallback.
    """
    nc = context.node_config
    site = nc.get("site")
    simulated = site is None and "partition-id" in nc
    if simulated:
        sites = cfg.federation.sites
        pid = int(nc["partition-id"])
        if not sites or not 0 <= pid < len(sites):
            raise SiteConfigError(
                f"node {context.node_id}: node_config has partition-id={pid} but no 'site', and "
                f"federation.sites={sites} cannot map it; start the node with --node-config \"site='<name>'\""
            )
        site = sites[pid]
    if not isinstance(site, str) or not site:
        raise SiteConfigError(
            f"node {context.node_id}: node_config lacks 'site' (got keys {sorted(nc)}); start the SuperNode with "
            "--node-config \"site='<name>' data-dir='<folder>'\""
        )
    data_dir = nc.get("data-dir")
    if data_dir:
        return site, Path(str(data_dir))
    if simulated:  # Ray simulation on one machine: the run's benchmark (or the bundled sample)
        return site, Path(cfg.data.benchmark) if cfg.data.benchmark else default_data_dir()
    raise SiteConfigError(
        f"site {site} (node {context.node_id}): node_config lacks 'data-dir', the folder holding "
        f"{site}/train.jsonl; start the SuperNode with --node-config \"site='{site}' data-dir='<folder>'\""
    )


def site_examples(cfg: RunConfig, data_dir: Path, site: str, split: str) -> list[Any]:
    """The site's instruction examples (same selection and cap as the non-federated settings), cached."""
    from fedmedlora.experiments import site_examples as build

    key = (str(data_dir), site, split, cfg.data.format, tuple(cfg.data.tasks), cfg.data.max_train_examples, cfg.seed)
    if key not in _EXAMPLES:
        examples = build(SiteFolder(data_dir), site, cfg, split)  # type: ignore[arg-type]
        if not examples:
            raise SiteConfigError(f"site {site}: the {split} split at {data_dir / site} yields no examples")
        _EXAMPLES[key] = examples
    return _EXAMPLES[key]


def _set_lora_a_trainable(model: Any, trainable: bool) -> None:
    for name, param in model.named_parameters():
        if "lora_" in name and is_lora_A(name):
            param.requires_grad_(trainable)


def _pack_upload(
    arrays: dict[str, np.ndarray], received: dict[str, np.ndarray], compression: str, state: Any
) -> dict[str, np.ndarray]:
    """The upload payload: the adapter as is, or compressed (int8: the delta from the received global adapter,
    with this site's error-feedback residual carried in ``context.state`` across rounds)."""
    if compression == "none":
        return arrays
    ref = {k: received[k] for k in arrays if k in received}
    residual = from_record(state[EF_STATE_KEY], "error feedback") if EF_STATE_KEY in state.array_records else None
    if residual is not None and set(residual) != set(arrays):
        residual = None  # the uploaded key set changed (e.g. FedSA's last round): start a fresh residual
    payload, new_residual = encode(arrays, compression, residual, reference=ref if ref else None)
    if new_residual:
        state[EF_STATE_KEY] = to_record(new_residual)
    return payload


# ---- handlers ------------------------------------------------------------------------------------------------


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local training at this site; see the module docstring for what is sent back."""
    import torch

    from fedmedlora.experiments import train_settings
    from fedmedlora.train import train_local, validation_loss

    cfg = RunConfig.from_flower_run_config(context.run_config)
    site, data_dir = site_of(context, cfg)
    config: ConfigRecord = msg.content[CONFIG_KEY]
    rnd = int(config["server-round"])
    rule = str(config.get("rule", cfg.federation.strategy))
    send_private = bool(config.get("send-private", False))
    compression = str(config.get("compression", "none"))
    received = from_record(msg.content[ARRAYS_KEY], "server")
    if compression != "none":
        received = decode(received, download_method(compression))
    session = get_session(cfg)
    examples = site_examples(cfg, data_dir, site, "train")

    start = dict(received)
    state = context.state
    if rule == "fedsa" and FEDSA_PRIVATE_KEY in state.array_records:
        start.update(from_record(state[FEDSA_PRIVATE_KEY], f"site {site} state"))
    settings = train_settings(cfg, seed=site_seed(cfg.seed, site, rnd))
    opt_state = None
    if settings.keep_optimizer_state and OPTIMIZER_KEY in state.array_records:
        opt_state = {k: torch.from_numpy(v.copy()) for k, v in from_record(state[OPTIMIZER_KEY]).items()}

    _set_lora_a_trainable(session.model, rule != "ffa")  # FFA-LoRA: A frozen at the shared init
    try:
        result = train_local(
            session.model,
            session.tokenizer,
            examples,
            settings,
            adapter_arrays=start,
            optimizer_state=opt_state,
            progress=False,
        )
    finally:
        _set_lora_a_trainable(session.model, True)

    arrays = {k: np.asarray(v) for k, v in result.arrays.items()}
    if rule == "fedsa":
        private = [k for k in arrays if k not in shared_keys("fedsa", arrays)]
        state[FEDSA_PRIVATE_KEY] = to_record({k: arrays[k] for k in private})
    if result.optimizer_state is not None:
        state[OPTIMIZER_KEY] = to_record({k: v.detach().cpu().numpy() for k, v in result.optimizer_state.items()})
    upload = sorted(arrays) if send_private else shared_keys(rule, arrays)

    metrics: dict[str, int | float] = {
        NUM_TOKENS: int(result.num_train_tokens),
        NUM_EXAMPLES: int(result.num_examples),
        TRAIN_LOSS: float(result.train_loss),
        "train-steps": int(result.steps),
    }
    if rule == "fedmedlora+" and cfg.federation.plus_loss_source == "site":
        dev = site_examples(cfg, data_dir, site, "dev")
        metrics[SITE_VAL_LOSS] = float(validation_loss(session.model, session.tokenizer, dev, settings, arrays))
    log.info("site %s round %d: %d examples, loss %.4f", site, rnd, result.num_examples, result.train_loss)
    content = RecordDict(
        {
            ARRAYS_KEY: to_record(_pack_upload({k: arrays[k] for k in upload}, received, compression, state)),
            METRICS_KEY: MetricRecord(metrics),
            INFO_KEY: ConfigRecord({"site": site}),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Federated evaluation: loss of the received global adapter on this site's dev split."""
    from fedmedlora.experiments import train_settings
    from fedmedlora.train import validation_loss

    cfg = RunConfig.from_flower_run_config(context.run_config)
    site, data_dir = site_of(context, cfg)
    session = get_session(cfg)
    arrays = from_record(msg.content[ARRAYS_KEY], "server")
    if FEDSA_PRIVATE_KEY in context.state.array_records and cfg.federation.strategy == "fedsa":
        arrays.update(from_record(context.state[FEDSA_PRIVATE_KEY]))  # FedSA: evaluate the personalised adapter
    dev = site_examples(cfg, data_dir, site, "dev")
    loss = validation_loss(session.model, session.tokenizer, dev, train_settings(cfg, seed=cfg.seed), arrays)
    content = RecordDict(
        {
            METRICS_KEY: MetricRecord({VAL_LOSS: float(loss), NUM_EXAMPLES: len(dev)}),
            INFO_KEY: ConfigRecord({"site": site}),
        }
    )
    return Message(content, reply_to=msg)


__all__ = ["SiteConfigError", "app", "clear_caches", "get_session", "site_of", "site_seed"]
