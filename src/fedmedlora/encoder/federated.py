"""In-process FedAvg of the encoder baseline: one round over the sites, and the rounds of a federated setting.

Owns: ``RoundResult`` / ``federated_round`` (load the global state, train locally at every site with supervised
features, average with ``fedmedlora.aggregation.weighted_mean``, count the bytes with
``fedmedlora.aggregation.nbytes``) and ``federate`` (``EncoderSettings.rounds`` rounds of the NER and RE models,
full-model or LoRA + head messages).

In-process only: no Flower here. Must not import ``fedmedlora.federation``, ``fedmedlora.recipes`` or the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedmedlora.aggregation import nbytes, weighted_mean
from fedmedlora.encoder.bio import IGNORE_INDEX
from fedmedlora.encoder.features import Feature
from fedmedlora.encoder.model import get_state, set_state
from fedmedlora.encoder.settings import EncoderSettings
from fedmedlora.encoder.train import EncoderModels, train_model


@dataclass
class RoundResult:
    """One FedAvg round of one model: the new global state, what each site sent, weights and bytes."""

    global_state: dict[str, np.ndarray]
    site_states: dict[str, dict[str, np.ndarray]]
    weights: dict[str, float]
    logs: dict[str, dict[str, Any]]
    bytes_up: int
    bytes_down: int


def federated_round(
    model: Any,
    global_state: dict[str, np.ndarray],
    site_features: Mapping[str, Sequence[Feature]],
    *,
    learning_rate: float,
    local_epochs: float = 1.0,
    batch_size: int = 16,
    pad_id: int = 0,
    seed: int = 42,
    device: str = "cpu",
    **train_kw: Any,
) -> RoundResult:
    """One in-process FedAvg round: every site with supervised features loads ``global_state`` into ``model``,
    trains ``local_epochs`` and sends ``get_state(model)``; the server takes ``aggregation.weighted_mean`` with
    weights = number of training features. ``model`` ends holding the new global state. Sites without features
    sit the round out. Bytes count one download and one upload of the state per participating site.
    """
    states: dict[str, dict[str, np.ndarray]] = {}
    weights: dict[str, float] = {}
    logs: dict[str, dict[str, Any]] = {}
    up = down = 0
    for site, feats in site_features.items():
        if not any(any(x != IGNORE_INDEX for x in f.labels) for f in feats):
            continue
        set_state(model, global_state)
        down += nbytes(global_state)
        logs[site] = train_model(
            model,
            feats,
            epochs=local_epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            pad_id=pad_id,
            seed=seed,
            device=device,
            **train_kw,
        )
        states[site] = get_state(model)
        up += nbytes(states[site])
        weights[site] = float(len(feats))
    if states:
        names = list(states)
        new = weighted_mean([states[n] for n in names], [weights[n] for n in names], sites=names)
    else:
        new = global_state
    set_state(model, new)
    return RoundResult(new, states, weights, logs, up, down)


def federate(
    models: EncoderModels, feats: Mapping[str, Mapping[str, list[Feature]]], s: EncoderSettings, lora: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """In-process FedAvg over ``s.rounds`` rounds; NER and RE models are federated separately (a site without
    RE features does not take part in the RE average).

    ``feats`` is ``{site: {"ner": [...], "re": [...]}}``. Returns ``(rounds, communication)``: one record per
    round (per-model weights and site logs, bytes) and the byte accounting of the run.
    """
    lr = s.lora_learning_rate if lora else s.learning_rate
    rounds: list[dict[str, Any]] = []
    tasks = [("ner", models.ner)] + ([("re", models.re)] if models.re is not None else [])
    global_state = {name: get_state(m) for name, m in tasks}
    comm: dict[str, Any] = {"mode": "lora" if lora else "full", "rounds": []}
    for rnd in range(1, s.rounds + 1):
        rec: dict[str, Any] = {"round": rnd}
        up = down = 0
        for name, model in tasks:
            r = federated_round(
                model,
                global_state[name],
                {site: f.get(name, []) for site, f in feats.items()},
                learning_rate=lr,
                local_epochs=s.local_epochs,
                batch_size=s.batch_size,
                pad_id=models.view.pad_id,
                seed=s.seed + rnd,
                device=s.device,
                weight_decay=s.weight_decay,
                warmup_ratio=s.warmup_ratio,
                max_grad_norm=s.max_grad_norm,
            )
            global_state[name] = r.global_state
            up, down = up + r.bytes_up, down + r.bytes_down
            rec[name] = {"weights": r.weights, "log": r.logs}
        rec.update(bytes_up=up, bytes_down=down)
        comm["rounds"].append({"round": rnd, "bytes_up": up, "bytes_down": down, "bytes_total": up + down})
        rounds.append(rec)
    comm["bytes_per_round"] = comm["rounds"][0]["bytes_total"] if comm["rounds"] else 0
    comm["message_bytes"] = {name: nbytes(global_state[name]) for name, _ in tasks}
    return rounds, comm
