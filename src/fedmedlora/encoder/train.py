"""Encoder models and their loops: loading the NER/RE pair, masked training, loss, tagging and prediction.

Owns: ``train_model`` (AdamW, linear warm-up then decay, masked loss), ``evaluate_loss``, ``predict_tags``
(masked argmax), ``EncoderModels`` / ``load_models`` (NER model, optional RE model, shared tokenizer) and
``predict_sentences`` (back to schema ``Sentence`` records, the same shape ``fedmedlora.extract.extract_sentences``
returns for the LLM, so the same metrics score both). Device choice is ``fedmedlora.lm.model.resolve_device``.

Imports torch (transformers and peft via ``encoder.model``). Must not import ``fedmedlora.federation``,
``fedmedlora.recipes`` or the CLI.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from fedmedlora.encoder.bio import IGNORE_INDEX, BioScheme, tags_to_spans
from fedmedlora.encoder.features import (
    NER_SCHEME,
    RE_SCHEME,
    Feature,
    TokenizerView,
    Unit,
    batches,
    collate,
    masked_logits,
    masked_loss,
    ner_features,
    re_features,
)
from fedmedlora.encoder.model import load_encoder
from fedmedlora.encoder.settings import EncoderSettings
from fedmedlora.lm.model import resolve_device
from fedmedlora.schema import Entity, Modifier, Sentence


def train_model(
    model: Any,
    features: Sequence[Feature],
    *,
    epochs: float,
    learning_rate: float,
    batch_size: int = 16,
    pad_id: int = 0,
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.1,
    max_grad_norm: float = 1.0,
    seed: int = 42,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train ``model`` in place on ``features`` with the masked loss (AdamW, linear warm-up then decay).

    ``epochs`` may be fractional (``ceil(epochs × batches)`` steps). A fresh optimiser is built per call, as the
    reference federated code does per round. Features with no supervised position are skipped.

    Returns:
        ``{"steps", "examples", "loss_first", "loss_last", "loss_mean", "seconds"}``.
    """
    t0 = time.perf_counter()
    feats = [f for f in features if any(x != IGNORE_INDEX for x in f.labels)]
    if not feats:
        return {"steps": 0, "examples": 0, "loss_first": None, "loss_last": None, "loss_mean": None, "seconds": 0.0}
    dev = resolve_device(device)
    model.to(dev)
    model.train()
    n_batches = math.ceil(len(feats) / batch_size)
    steps = max(1, math.ceil(epochs * n_batches))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    warm = int(warmup_ratio * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / (warm + 1) if s < warm else max(0.0, (steps - s) / max(1, steps - warm))
    )
    rng = random.Random(seed)
    losses: list[float] = []
    step = 0
    while step < steps:
        order = list(range(len(feats)))
        rng.shuffle(order)
        for batch in batches(feats, batch_size, order):
            if step >= steps:
                break
            b = collate(batch, pad_id, dev)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            loss = masked_loss(logits, b["labels"], b["allowed"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            step += 1
    return {
        "steps": steps,
        "examples": len(feats),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_mean": float(np.mean(losses)),
        "seconds": time.perf_counter() - t0,
    }


@torch.no_grad()
def evaluate_loss(
    model: Any, features: Sequence[Feature], *, batch_size: int = 32, pad_id: int = 0, device: str = "cpu"
) -> float:
    """Mean masked loss over ``features`` (eval mode, no gradient), weighted by supervised positions."""
    dev = resolve_device(device)
    model.to(dev)
    model.eval()
    total, n = 0.0, 0
    for k in range(0, len(features), batch_size):
        b = collate(features[k : k + batch_size], pad_id, dev)
        m = int((b["labels"] != IGNORE_INDEX).sum())
        if m == 0:
            continue
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        total += float(masked_loss(logits, b["labels"], b["allowed"])) * m
        n += m
    model.train()
    return total / n if n else float("nan")


@torch.no_grad()
def predict_tags(
    model: Any,
    features: Sequence[Feature],
    scheme: BioScheme,
    *,
    batch_size: int = 32,
    pad_id: int = 0,
    device: str = "cpu",
) -> list[list[str | None]]:
    """Masked argmax tag per position of each feature (``None`` at special/marker positions)."""
    dev = resolve_device(device)
    model.to(dev)
    model.eval()
    out: list[list[str | None]] = [[] for _ in features]
    order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))
    labels = scheme.labels
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        b = collate([features[i] for i in idx], pad_id, dev)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        pred = masked_logits(logits, b["allowed"]).argmax(-1).cpu().tolist()
        for r, i in enumerate(idx):
            f = features[i]
            out[i] = [
                labels[p] if o is not None else None for p, o in zip(pred[r][: len(f.offsets)], f.offsets, strict=True)
            ]
    model.train()
    return out


@dataclass
class EncoderModels:
    """The NER model, the RE model (``None`` when RE is not trained) and their shared tokenizer."""

    ner: Any
    re: Any | None
    tokenizer: Any

    def __post_init__(self) -> None:
        self.view = TokenizerView(self.tokenizer)


def load_models(settings: EncoderSettings, *, lora: bool | None = None) -> EncoderModels:
    """Load the NER model and (if ``"re"`` in ``settings.tasks``) the RE model with identical seeded inits."""
    use_lora = settings.use_lora if lora is None else lora
    lo = settings.lora if use_lora else None
    ner, tok = load_encoder(
        settings.model, NER_SCHEME.labels, lora=lo, freeze_embeddings=settings.freeze_embeddings, seed=settings.seed
    )
    re_model = None
    if "re" in settings.tasks:
        re_model, _ = load_encoder(
            settings.model, RE_SCHEME.labels, lora=lo, freeze_embeddings=settings.freeze_embeddings, seed=settings.seed
        )
    return EncoderModels(ner, re_model, tok)


def predict_sentences(
    models: EncoderModels,
    units: Sequence[Unit],
    *,
    heads: Literal["gold", "predicted"] = "gold",
    max_length: int = 128,
    batch_size: int = 32,
    device: str = "cpu",
) -> list[Sentence]:
    """Predict entities (and modifiers, when ``models.re`` is set) for each ``(sentence, label_set)``.

    Mirrors ``fedmedlora.extract.extract_sentences``: one predicted ``Sentence`` per input (same id and offsets);
    predicted entities get ids ``P<n>``; with ``heads="gold"`` modifiers point at the gold entity ids.
    Only the unit's label-set types can be predicted (masked decoding).
    """
    view = models.view
    feats = ner_features(units, view, max_length)
    tags = predict_tags(models.ner, feats, NER_SCHEME, batch_size=batch_size, pad_id=view.pad_id, device=device)
    spans: list[set] = [set() for _ in units]
    for f, t in zip(feats, tags, strict=True):
        spans[f.unit].update(tags_to_spans(t, f.offsets))
    pred_entities = [
        [Entity(f"P{k + 1}", s.type, s.start, s.end, sent.text[s.start : s.end]) for k, s in enumerate(sorted(sp))]
        for sp, (sent, _) in zip(spans, units, strict=True)
    ]
    pred_mods: list[list[Modifier]] = [[] for _ in units]
    if models.re is not None:
        head_lists = None if heads == "gold" else pred_entities
        rfeats = re_features(units, view, max_length, heads=head_lists)
        rtags = predict_tags(models.re, rfeats, RE_SCHEME, batch_size=batch_size, pad_id=view.pad_id, device=device)
        for f, t in zip(rfeats, rtags, strict=True):
            sent = units[f.unit][0]
            for s in sorted(set(tags_to_spans(t, f.offsets))):
                k = len(pred_mods[f.unit]) + 1
                pred_mods[f.unit].append(
                    Modifier(f"M{k}", s.type, s.start, s.end, sent.text[s.start : s.end], head=f.head.id)
                )
    return [
        Sentence(s.id, s.start, s.end, s.text, entities=tuple(pe), modifiers=tuple(pm))
        for (s, _), pe, pm in zip(units, pred_entities, pred_mods, strict=True)
    ]
