"""The ClientApp a hospital (site) runs: train the LoRA adapter on the site's own notes, send back tensors only.

Owns: the two message handlers (``train``: one round of local training; ``evaluate``: the loss of the received
global adapter on the site's dev split) and the per-site persistent state in ``context.state`` (FedSA-LoRA's
private ``lora_B``, AdamW state when ``train.keep_optimizer_state``, the int8 transport's error-feedback residual).
Which site a node serves and its data live in ``fedmedlora.federation.site``; the loaded model is the process-wide
``fedmedlora.lm.session`` cache (a simulation does not reload it for every site and round).

Reply: ``arrays`` (only the rule's upload tensors), ``metrics`` (numbers), ``info`` (``site`` name). No text, no
token ids, no pickles (the contract: ``fedmedlora.federation.messages``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmedlora.aggregation import is_lora_A, shared_keys
from fedmedlora.compression import Transport
from fedmedlora.config import RunConfig
from fedmedlora.federation.messages import (
    ARRAYS_KEY,
    COMPRESSION,
    CONFIG_KEY,
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
    to_record,
)
from fedmedlora.federation.site import cached_site_examples, site_of, site_seed
from fedmedlora.lm.session import get_session
from fedmedlora.lm.train import TrainSettings, validation_loss

log = logging.getLogger(__name__)

#: Records of a site's ``context.state``.
FEDSA_PRIVATE_KEY = "fedsa-private-b"
OPTIMIZER_KEY = "optimizer-state"
EF_STATE_KEY = "compression-error-feedback"

app = ClientApp()


def _set_lora_a_trainable(model: Any, trainable: bool) -> None:
    for name, param in model.named_parameters():
        if "lora_" in name and is_lora_A(name):
            param.requires_grad_(trainable)


def _state_arrays(state: RecordDict, key: str, who: str = "") -> dict[str, np.ndarray] | None:
    return from_record(state[key], who) if key in state.array_records else None


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local training at this site; see the module docstring for what is sent back."""
    cfg = RunConfig.from_flower_run_config(context.run_config)
    site, data_dir = site_of(context, cfg)
    config: ConfigRecord = msg.content[CONFIG_KEY]
    rnd = int(config[ROUND])
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

    _set_lora_a_trainable(session.model, rule != "ffa")  # FFA-LoRA: A frozen at the shared init
    try:
        result = session.train(examples, start, cfg, seed=settings.seed, optimizer_state=opt_state, progress=False)
    finally:
        _set_lora_a_trainable(session.model, True)

    arrays = {k: np.asarray(v) for k, v in result.arrays.items()}
    if rule == "fedsa":
        private_keys = [k for k in arrays if k not in shared_keys("fedsa", arrays)]
        state[FEDSA_PRIVATE_KEY] = to_record({k: arrays[k] for k in private_keys})
    if result.optimizer_state is not None:
        state[OPTIMIZER_KEY] = to_record({k: v.detach().cpu().numpy() for k, v in result.optimizer_state.items()})
    upload = sorted(arrays) if send_private else shared_keys(rule, arrays)
    residual = _state_arrays(state, EF_STATE_KEY, "error feedback")
    payload, new_residual = transport.send_up({k: arrays[k] for k in upload}, received, residual)
    if new_residual:
        state[EF_STATE_KEY] = to_record(new_residual)

    metrics: dict[str, int | float] = {
        NUM_TOKENS: int(result.num_train_tokens),
        NUM_EXAMPLES: int(result.num_examples),
        TRAIN_LOSS: float(result.train_loss),
        TRAIN_STEPS: int(result.steps),
    }
    if rule == "fedmedlora+" and cfg.federation.plus_loss_source == "site":
        dev = cached_site_examples(cfg, data_dir, site, "dev")
        metrics[SITE_VAL_LOSS] = float(validation_loss(session.model, session.tokenizer, dev, settings, arrays))
    log.info("site %s round %d: %d examples, loss %.4f", site, rnd, result.num_examples, result.train_loss)
    content = RecordDict(
        {
            ARRAYS_KEY: to_record(payload),
            METRICS_KEY: MetricRecord(metrics),
            INFO_KEY: ConfigRecord({"site": site}),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Federated evaluation: loss of the received global adapter on this site's dev split."""
    cfg = RunConfig.from_flower_run_config(context.run_config)
    site, data_dir = site_of(context, cfg)
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


__all__ = ["app"]
