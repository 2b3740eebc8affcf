"""What a site does with one message: train the LoRA adapter on its own notes, or score the global adapter.

Owns: the two handlers (``train``: one round of local training; ``evaluate``: the loss of the received global
adapter on the site's dev split) and the per-site persistent state in ``context.state`` (FedSA-LoRA's private
``lora_B``, AdamW state when ``train.keep_optimizer_state``, the int8 transport's error-feedback residual, the DP-SGD
privacy ledger under ``train.dp``; a node started with ``--node-config "privacy-ledger='<file>'"`` keeps that ledger
in the file instead, across runs and restarts, which is what a hospital should do).

They run either inside the ClientApp process (``fedmedlora.federation.client_app``, the default and the simulation)
or in a site's resident worker (``fedmedlora.federation.site_worker``), which keeps the model loaded between rounds.

Privacy: under ``train.dp`` a site trains with record-level DP-SGD, reports ``dp-epsilon`` instead of its training
loss, and refuses (``dp-refused``, no tensors) a round that would take it past ``train.dp.max_epsilon``. Under
``federation.dp`` it clips its update (delta from the received global, over the uploaded tensors) to
``federation.dp.clip_norm`` before sending.
Which site a node serves and its data live in ``fedmedlora.federation.site``; the loaded model is the process-wide
``fedmedlora.lm.session`` cache (a simulation or a resident worker does not reload it for every site and round).

Reply: ``arrays`` (only the rule's upload tensors), ``metrics`` (numbers), ``info`` (``site`` name). No text, no
token ids, no pickles (the contract: ``fedmedlora.federation.messages``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedmedlora.aggregation import is_lora_A, is_lora_B, rolora_factor, shared_keys, weighs_by_loss
from fedmedlora.compression import Transport
from fedmedlora.config import RunConfig
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
    SITE_VAL_LOSS,
    TRAIN_LOSS,
    TRAIN_STEPS,
    VAL_LOSS,
    from_record,
    message_round,
    to_record,
)
from fedmedlora.federation.secure_aggregation import SECURE, stash_update
from fedmedlora.federation.site import cached_site_examples, site_of, site_seed
from fedmedlora.federation.site_state import restore
from fedmedlora.lm.session import get_session
from fedmedlora.lm.train import TrainSettings, validation_loss
from fedmedlora.privacy import PrivacyBudgetExceeded, PrivacyLedger, clip_update

log = logging.getLogger(__name__)

#: Records of a site's ``context.state``.
FEDSA_PRIVATE_KEY = "fedsa-private-b"
OPTIMIZER_KEY = "optimizer-state"
EF_STATE_KEY = "compression-error-feedback"
DP_LEDGER_KEY = "dp-ledger"
#: Node config key: a file holding this site's privacy ledger across runs and restarts (JSON).
LEDGER_NODE_KEY = "privacy-ledger"


def _set_lora_a_trainable(model: Any, trainable: bool) -> None:
    for name, param in model.named_parameters():
        if "lora_" in name and is_lora_A(name):
            param.requires_grad_(trainable)


def _set_lora_b_trainable(model: Any, trainable: bool) -> None:
    for name, param in model.named_parameters():
        if "lora_" in name and is_lora_B(name):
            param.requires_grad_(trainable)


def frozen_factor(rule: str, rnd: int) -> str | None:
    """The LoRA factor a site keeps frozen in a round: ``"A"`` for FFA-LoRA (always) and for RoLoRA's odd rounds,
    ``"B"`` for RoLoRA's even rounds (``aggregation.rolora_factor``), None for the other rules."""
    if rule == "ffa":
        return "A"
    if rule == "rolora":
        return "A" if rolora_factor(rnd) == "B" else "B"
    return None


def _state_arrays(state: RecordDict, key: str, who: str = "") -> dict[str, np.ndarray] | None:
    return from_record(state[key], who) if key in state.array_records else None


def _ledger_file(context: Context) -> Path | None:
    raw = context.node_config.get(LEDGER_NODE_KEY)
    return Path(str(raw)) if raw else None


def load_ledger(context: Context, site: str) -> PrivacyLedger:
    """This site's DP-SGD ledger: the node's ``privacy-ledger`` file when configured (every run that trained on
    these records, surviving restarts), else this run's ``context.state``."""
    path = _ledger_file(context)
    if path is not None:
        return (
            PrivacyLedger.from_json(path.read_text(encoding="utf-8"), str(path)) if path.is_file() else PrivacyLedger()
        )
    return _ledger_in(context.state, site) or PrivacyLedger()


def _ledger_in(state: RecordDict, site: str) -> PrivacyLedger | None:
    record = state.config_records.get(DP_LEDGER_KEY)
    return PrivacyLedger.from_json(str(record["json"]), f"site {site} state") if record else None


def save_ledger(context: Context, ledger: PrivacyLedger, *, to_file: bool = True) -> None:
    """Write the ledger where ``load_ledger`` reads it (the file atomically, before the reply leaves)."""
    path = _ledger_file(context)
    if path is not None and to_file:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(ledger.to_json(), encoding="utf-8")
        tmp.replace(path)
    context.state[DP_LEDGER_KEY] = ConfigRecord({"json": ledger.to_json()})


def train(msg: Message, context: Context) -> Message:
    """One round of local training at this site; see the module docstring for what is sent back."""
    cfg = RunConfig.from_flower_run_config(context.run_config)
    site, data_dir = site_of(context, cfg)
    config: ConfigRecord = msg.content[CONFIG_KEY]
    rnd = int(config[ROUND])
    spent_before = load_ledger(context, site) if cfg.train.dp.enabled else None
    store = restore(context, cfg, site, rnd)  # the node's durable state (node config state-dir), if it keeps one
    if store is not None and spent_before is not None:
        # the privacy ledger never goes back with the state: a round re-run after a coordinator crash was
        # released the first time too, so the longest ledger seen (memory, newest save, restored) is kept
        newest = store.load_newest()
        known = [spent_before, load_ledger(context, site), *([_ledger_in(newest, site)] if newest else [])]
        save_ledger(context, max((led for led in known if led), key=lambda led: len(led.entries)), to_file=False)
    rule = str(config.get(RULE, cfg.federation.strategy))
    send_private = bool(config.get(SEND_PRIVATE, False))
    transport = Transport(str(config.get(COMPRESSION, "none")))
    received = transport.receive_down(from_record(msg.content[ARRAYS_KEY], "server"))
    session = get_session(cfg)
    examples = cached_site_examples(cfg, data_dir, site, "train")

    start = dict(received)
    state = context.state
    if rule == "fedsa" and (private := _state_arrays(state, FEDSA_PRIVATE_KEY, f"site {site} state")) is not None:
        start.update(private)
    settings = TrainSettings.from_config(cfg, seed=site_seed(cfg.seed, site, rnd))
    opt_state = None
    if settings.keep_optimizer_state and (saved := _state_arrays(state, OPTIMIZER_KEY)) is not None:
        opt_state = {k: torch.from_numpy(v.copy()) for k, v in saved.items()}

    ledger = None
    if cfg.train.dp.enabled:
        settings = settings.model_copy(update={"dp_calls": cfg.federation.rounds, "dp_round": rnd})
        ledger = load_ledger(context, site)

    frozen = frozen_factor(rule, rnd)  # FFA-LoRA: A frozen at the shared init; RoLoRA: the factor not trained
    _set_lora_a_trainable(session.model, frozen != "A")
    _set_lora_b_trainable(session.model, frozen != "B")
    try:
        result = session.train(
            examples, start, cfg, settings=settings, optimizer_state=opt_state, progress=False, privacy_ledger=ledger
        )
    except PrivacyBudgetExceeded as refusal:
        log.warning("%s", refusal)
        if store is not None:
            store.save(context.state, rnd)
        return _refusal(msg, site, refusal)
    finally:
        _set_lora_a_trainable(session.model, True)
        _set_lora_b_trainable(session.model, True)
    if result.privacy is not None:
        save_ledger(context, result.privacy.ledger)

    arrays = {k: np.asarray(v) for k, v in result.arrays.items()}
    if rule == "fedsa":
        private_keys = [k for k in arrays if k not in shared_keys("fedsa", arrays)]
        state[FEDSA_PRIVATE_KEY] = to_record({k: arrays[k] for k in private_keys})
    if result.optimizer_state is not None:
        state[OPTIMIZER_KEY] = to_record({k: v.detach().cpu().numpy() for k, v in result.optimizer_state.items()})
    upload = sorted(arrays) if send_private else shared_keys(rule, arrays, rnd)
    if cfg.federation.dp.enabled:  # client-level DP: bound this site's influence before anything leaves
        clipped, _norm = clip_update({k: arrays[k] for k in upload}, received, cfg.federation.dp.clip_norm)
        arrays.update(clipped)
    residual = _state_arrays(state, EF_STATE_KEY, "error feedback")
    secure = bool(config.get(SECURE, False))
    if secure:  # SecAgg+ follows: keep the update here, send scalars only (fedmedlora.federation.secure_aggregation)
        stash_update(state, {k: arrays[k] - received[k] for k in upload}, rnd)
        payload = {}
    else:
        payload, new_residual = transport.send_up({k: arrays[k] for k in upload}, received, residual)
        if new_residual:
            state[EF_STATE_KEY] = to_record(new_residual)

    metrics: dict[str, int | float] = {
        NUM_TOKENS: int(result.num_train_tokens),
        NUM_EXAMPLES: int(result.num_examples),
        TRAIN_STEPS: int(result.steps),
    }
    if result.privacy is not None:  # the training loss is a statistic of the records: not released under DP
        metrics[DP_EPSILON] = float(result.privacy.epsilon)
    else:
        metrics[TRAIN_LOSS] = float(result.train_loss)
    if weighs_by_loss(rule, cfg.federation.rolora_weights == "loss") and cfg.federation.plus_loss_source == "site":
        dev = cached_site_examples(cfg, data_dir, site, "dev")
        metrics[SITE_VAL_LOSS] = float(validation_loss(session.model, session.tokenizer, dev, settings, arrays))
    log.info("site %s round %d: %d examples, loss %.4f", site, rnd, result.num_examples, result.train_loss)
    if result.privacy is not None:
        log.info("site %s round %d: DP-SGD ε=%.3f (δ=%g)", site, rnd, result.privacy.epsilon, cfg.train.dp.delta)
    content = RecordDict({METRICS_KEY: MetricRecord(metrics), INFO_KEY: ConfigRecord({"site": site})})
    if not secure:
        content[ARRAYS_KEY] = to_record(payload)
    if store is not None:  # before the reply leaves: a crash after it cannot lose what the coordinator counted
        store.save(state, rnd)
    return Message(content, reply_to=msg)


def _refusal(msg: Message, site: str, refusal: PrivacyBudgetExceeded) -> Message:
    """The reply of a site whose budget is spent: no tensors, the refusal and the ε spent so far."""
    content = RecordDict(
        {
            METRICS_KEY: MetricRecord({DP_REFUSED: 1, DP_EPSILON: float(refusal.epsilon_spent)}),
            INFO_KEY: ConfigRecord({"site": site}),
        }
    )
    return Message(content, reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """Federated evaluation: loss of the received global adapter on this site's dev split."""
    cfg = RunConfig.from_flower_run_config(context.run_config)
    site, data_dir = site_of(context, cfg)
    rnd = message_round(msg)
    if rnd is not None:
        restore(context, cfg, site, rnd + 1)  # evaluation of round r follows its training: state ≤ r
    session = get_session(cfg)
    arrays = from_record(msg.content[ARRAYS_KEY], "server")
    if cfg.federation.strategy == "fedsa" and (private := _state_arrays(context.state, FEDSA_PRIVATE_KEY)):
        arrays.update(private)  # FedSA: evaluate the personalised adapter
    dev = cached_site_examples(cfg, data_dir, site, "dev")
    loss = validation_loss(session.model, session.tokenizer, dev, TrainSettings.from_config(cfg), arrays)
    content = RecordDict(
        {
            METRICS_KEY: MetricRecord({VAL_LOSS: float(loss), NUM_EXAMPLES: len(dev)}),
            INFO_KEY: ConfigRecord({"site": site}),
        }
    )
    return Message(content, reply_to=msg)


__all__ = ["evaluate", "load_ledger", "save_ledger", "train"]
