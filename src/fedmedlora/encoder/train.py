"""Encoder baseline: featurisation, masked training, prediction and the four training settings.

Owns: ``EncoderSettings``; turning ``(Sentence, LabelSet)`` units into sub-word features for NER and for
entity-conditioned modifier tagging (RE); the label-masked token-classification loss; prediction back to schema
``Sentence`` records (the same shape ``fedmedlora.extract.extract_sentences`` returns for the LLM, so the same
metrics score both); and ``run_encoder_setting`` (single-site, centralized, federated full-model FedAvg,
federated LoRA FedAvg) with bytes per round.

Adapter module: imports torch, transformers (via ``encoder.model``) and peft. Must not import flwr or the CLI.

Design (details in ``docs/encoder.md``)
---------------------------------------
* NER: BIO over ``ENTITY_TYPES`` (9 labels). RE: a second model, BIO over ``MODIFIER_TYPES`` (33 labels), one
  input per head entity with the head wrapped in typed punctuation markers ``@ * problem * … @`` (marker tokens
  carry no character offsets, take no loss and are never decoded), so no new vocabulary is needed and LoRA stays
  adapter-only.
* Partial label sets: every feature carries a label mask (``BioScheme.allowed``). Logits of labels outside it are
  set to a large negative number before the softmax, in training *and* decoding. A token tagged ``O`` at a site
  that does not annotate ``drug`` therefore only says "not one of this site's types": the ``drug`` logits get no
  gradient from that site, and ``drug`` is never learned as ``O``. For RE the mask is the site's modifier types
  valid for the head's type.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from fedmedlora.encoder.bio import (
    IGNORE_INDEX,
    AlignStats,
    BioScheme,
    Offset,
    spans_to_tags,
    tags_to_spans,
    token_windows,
)
from fedmedlora.encoder.model import EncoderLora, count_parameters, get_state, load_encoder, set_state
from fedmedlora.schema import ENTITY_TYPES, MODIFIER_TYPES, Document, Entity, LabelSet, Modifier, Sentence

logger = logging.getLogger(__name__)

NER_SCHEME = BioScheme(ENTITY_TYPES)
RE_SCHEME = BioScheme(MODIFIER_TYPES)
SETTINGS: tuple[str, ...] = ("single_site", "centralized", "federated_full", "federated_lora")
_NEG = -1e4  # logit given to labels outside a feature's mask (finite: no NaN in fp16/bf16 either)

Unit = tuple[Sentence, LabelSet]


@dataclass(frozen=True)
class EncoderSettings:
    """Hyper-parameters of the encoder baseline (defaults sized for a CPU run on the bundled sample).

    Attributes:
        model: HF folder or id; ``None`` = bundled all-MiniLM-L6-v2.
        tasks: ``("ner",)`` or ``("ner", "re")``.
        max_length: sub-word positions per input including special and marker tokens; longer sentences are
            split into windows (NER, lossless) or cut to a window around the head (RE).
        batch_size, learning_rate, lora_learning_rate, weight_decay, warmup_ratio, max_grad_norm: optimiser.
        epochs: passes over the training data for single-site and centralized training.
        rounds, local_epochs: federated rounds and local passes per round (total passes = rounds × local_epochs).
        lora: LoRA shape for ``federated_lora`` (and for the other settings when ``use_lora`` is set).
        use_lora: train LoRA (+ head) instead of the full model in single-site / centralized too.
        freeze_embeddings: freeze the embedding layer in full fine-tuning (reference BERT baseline does).
        re_heads: RE heads at evaluation: ``"gold"`` (paper protocol) or ``"predicted"`` (end-to-end).
        max_train_sentences: per-site cap on training sentences (seeded subsample), for quick runs.
        max_eval_sentences: per-site cap on scored sentences (seeded subsample), for quick runs.
        eval_split: split of each evaluation site that is scored.
        seed: seeds the head/LoRA init, data order and subsampling.
        threads: ``torch.set_num_threads`` during a run (``None`` = leave as is).
        device: ``"cpu"``, ``"cuda"``, ... (``"auto"`` = CUDA if available).
    """

    model: str | None = None
    tasks: tuple[str, ...] = ("ner", "re")
    max_length: int = 128
    batch_size: int = 16
    learning_rate: float = 2e-4
    lora_learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    epochs: float = 8.0
    rounds: int = 4
    local_epochs: float = 2.0
    lora: EncoderLora = field(default_factory=EncoderLora)
    use_lora: bool = False
    freeze_embeddings: bool = False
    re_heads: Literal["gold", "predicted"] = "gold"
    max_train_sentences: int | None = None
    max_eval_sentences: int | None = None
    eval_split: str = "test"
    seed: int = 42
    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in ("ner", "re")]
        if bad or "ner" not in self.tasks:
            raise ValueError(f"EncoderSettings.tasks: must contain 'ner' and only 'ner'/'re', got {self.tasks!r}")
        if self.max_length < 16:
            raise ValueError(f"EncoderSettings.max_length: must be >= 16, got {self.max_length}")
        if self.re_heads not in ("gold", "predicted"):
            raise ValueError(f"EncoderSettings.re_heads: 'gold' or 'predicted', got {self.re_heads!r}")
        for name in ("batch_size", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"EncoderSettings.{name}: must be >= 1")
        for name in ("learning_rate", "lora_learning_rate", "epochs", "local_epochs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"EncoderSettings.{name}: must be > 0")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EncoderSettings:
        """Build from plain values (``lora`` may be a dict); unknown keys are an error naming the key."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"EncoderSettings: unknown field(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        if isinstance(d.get("lora"), Mapping):
            lo = dict(d["lora"])
            if lo.get("target_modules") is not None:
                lo["target_modules"] = tuple(lo["target_modules"])
            try:
                d["lora"] = EncoderLora(**lo)
            except TypeError as exc:
                raise ValueError(f"EncoderSettings.lora: {exc}") from None
        if "tasks" in d:
            d["tasks"] = tuple(d["tasks"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tasks"] = list(self.tasks)
        return out


# --------------------------------------------------------------------------------------------------------------
# Featurisation
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Feature:
    """One model input: sub-word ids, per-position label ids (``IGNORE_INDEX`` = no loss), label mask, offsets.

    ``offsets`` are sentence-relative character intervals, ``None`` for special and marker tokens. ``unit`` is the
    index of the ``(Sentence, LabelSet)`` it came from; ``head`` the RE head entity (``None`` for NER).
    """

    input_ids: list[int]
    labels: list[int]
    allowed: list[bool]
    offsets: list[Offset]
    unit: int
    head: Entity | None = None


class TokenizerView:
    """What featurisation needs from a fast tokenizer: content ids + offsets, special-token frame, markers."""

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("encoder featurisation needs a fast tokenizer (offset_mapping)")
        self.tok = tokenizer
        enc = tokenizer("a", add_special_tokens=True, return_special_tokens_mask=True)
        mask = list(enc["special_tokens_mask"])
        if 0 not in mask:
            raise ValueError("tokenizer: cannot locate content tokens between its special tokens")
        first = mask.index(0)
        last = len(mask) - 1 - mask[::-1].index(0)
        ids = list(enc["input_ids"])
        self.prefix = ids[:first]
        self.suffix = ids[last + 1 :]
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self._markers: dict[str, list[int]] = {}

    def content(self, text: str) -> tuple[list[int], list[Offset]]:
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        offs = [(int(a), int(b)) if b > a else None for a, b in enc["offset_mapping"]]
        return list(enc["input_ids"]), offs

    def marker(self, text: str) -> list[int]:
        if text not in self._markers:
            self._markers[text] = list(self.tok(text, add_special_tokens=False)["input_ids"])
        return self._markers[text]

    @property
    def frame(self) -> int:
        return len(self.prefix) + len(self.suffix)


def _frame(view: TokenizerView, ids: list[int], offs: list[Offset], tags: list[str | None]):
    p, s = len(view.prefix), len(view.suffix)
    return (view.prefix + ids + view.suffix, [None] * p + offs + [None] * s, [None] * p + tags + [None] * s)


def ner_features(
    units: Sequence[Unit], view: TokenizerView, max_length: int, *, stats: AlignStats | None = None
) -> list[Feature]:
    """NER features: one per window of each sentence whose label set annotates at least one entity type.

    Gold spans of types outside the label set cannot occur (schema validation), and the label mask excludes
    those types. ``stats`` receives the alignment counts (token-expanded / dropped gold spans).
    """
    budget = max_length - view.frame
    out: list[Feature] = []
    for u, (sent, ls) in enumerate(units):
        types = ls.sorted_entities()
        if not types:
            continue
        allowed = NER_SCHEME.allowed(types)
        ids, offs = view.content(sent.text)
        gold = [e.span for e in sent.entities if e.type in ls.entities]
        tags, st = spans_to_tags(gold, offs, text=sent.text)
        if stats is not None:
            stats += st
        for w in token_windows(len(ids), budget):
            if len(w) == 0:
                continue
            a, b = w.start, w.stop
            fi, fo, ft = _frame(view, ids[a:b], offs[a:b], tags[a:b])
            out.append(Feature(fi, NER_SCHEME.encode(ft), allowed, fo, u))
    return out


def _marker_texts(head_type: str) -> tuple[str, str]:
    return f"@ * {head_type} *", "@"


def re_features(
    units: Sequence[Unit],
    view: TokenizerView,
    max_length: int,
    *,
    heads: Sequence[Sequence[Entity]] | None = None,
    stats: AlignStats | None = None,
    skipped: Counter[str] | None = None,
) -> list[Feature]:
    """RE features: one per head entity whose type has at least one modifier type annotated by the site.

    Args:
        units: ``(sentence, label_set)`` pairs.
        view: the tokenizer view.
        max_length: positions per input (the window is centred on the head).
        heads: per unit, the head entities (default: the sentence's gold entities). Gold modifier labels are
            taken from ``sentence.modifiers_of(head.id)`` (none for predicted heads: labels are then all ``O``).
        stats: alignment counts of the gold modifier spans.
        skipped: counts heads that could not be featurised (``head_without_tokens``, ``modifier_outside_window``).
    """
    out: list[Feature] = []
    for u, (sent, ls) in enumerate(units):
        hs = sent.entities if heads is None else heads[u]
        cands = [h for h in hs if h.type in ls.entities and ls.modifiers_for(h.type)]
        if not cands:
            continue
        ids, offs = view.content(sent.text)
        for h in cands:
            mods = ls.modifiers_for(h.type)
            hidx = [i for i, o in enumerate(offs) if o is not None and o[0] < h.end and o[1] > h.start]
            if not hidx:
                if skipped is not None:
                    skipped["head_without_tokens"] += 1
                continue
            gold = [m.span for m in sent.modifiers_of(h.id) if m.type in mods] if heads is None else []
            tags, st = spans_to_tags(gold, offs, text=sent.text)
            if stats is not None:
                stats += st
            opener, closer = (view.marker(t) for t in _marker_texts(h.type))
            budget = max_length - view.frame - len(opener) - len(closer)
            i, j = hidx[0], hidx[-1] + 1
            w = token_windows(len(ids), budget, center=(i, j))[0]
            if skipped is not None:
                lost = sum(
                    1 for k in range(len(ids)) if (k < w.start or k >= w.stop) and (tags[k] or "O").startswith("B-")
                )
                skipped["modifier_outside_window"] += lost
            i, j = max(i, w.start), min(j, w.stop)
            seq_ids = ids[w.start : i] + opener + ids[i:j] + closer + ids[j : w.stop]
            seq_offs = offs[w.start : i] + [None] * len(opener) + offs[i:j] + [None] * len(closer) + offs[j : w.stop]
            seq_tags = tags[w.start : i] + [None] * len(opener) + tags[i:j] + [None] * len(closer) + tags[j : w.stop]
            fi, fo, ft = _frame(view, seq_ids, seq_offs, seq_tags)
            out.append(Feature(fi, RE_SCHEME.encode(ft), RE_SCHEME.allowed(mods), fo, u, head=h))
    return out


# --------------------------------------------------------------------------------------------------------------
# Training and prediction
# --------------------------------------------------------------------------------------------------------------


def _batches(features: Sequence[Feature], batch_size: int, order: Sequence[int]) -> Iterable[list[Feature]]:
    for k in range(0, len(order), batch_size):
        yield [features[i] for i in order[k : k + batch_size]]


def _collate(batch: Sequence[Feature], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    n = max(len(f.input_ids) for f in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    att = torch.zeros((len(batch), n), dtype=torch.long)
    lab = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
    for r, f in enumerate(batch):
        ids[r, : len(f.input_ids)] = torch.tensor(f.input_ids)
        att[r, : len(f.input_ids)] = 1
        lab[r, : len(f.labels)] = torch.tensor(f.labels)
    allowed = torch.tensor([f.allowed for f in batch], dtype=torch.bool)
    return {
        "input_ids": ids.to(device),
        "attention_mask": att.to(device),
        "labels": lab.to(device),
        "allowed": allowed.to(device),
    }


def masked_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Give labels outside each example's mask (``allowed``: batch × labels) a large negative logit."""
    return logits.masked_fill(~allowed[:, None, :], _NEG)


def masked_loss(logits: torch.Tensor, labels: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Token cross-entropy over the allowed labels only; ``IGNORE_INDEX`` positions take no loss."""
    lg = masked_logits(logits, allowed)
    return torch.nn.functional.cross_entropy(
        lg.reshape(-1, lg.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    dev = _device(device)
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
        for batch in _batches(feats, batch_size, order):
            if step >= steps:
                break
            b = _collate(batch, pad_id, dev)
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
    dev = _device(device)
    model.to(dev)
    model.eval()
    total, n = 0.0, 0
    for k in range(0, len(features), batch_size):
        b = _collate(features[k : k + batch_size], pad_id, dev)
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
    dev = _device(device)
    model.to(dev)
    model.eval()
    out: list[list[str | None]] = [[] for _ in features]
    order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))
    labels = scheme.labels
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        b = _collate([features[i] for i in idx], pad_id, dev)
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


# --------------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------------


def _units(docs: Iterable[Document]) -> list[Unit]:
    return [(s, d.label_set) for d in docs for s in d.sentences]


def _subsample(units: list[Unit], cap: int | None, seed: int) -> list[Unit]:
    if cap is None or len(units) <= cap:
        return units
    idx = sorted(random.Random(seed).sample(range(len(units)), cap))
    return [units[i] for i in idx]


def open_benchmark(benchmark: Any) -> Any:
    """A ``fedmedlora.benchmark.Benchmark``: an already loaded one, a folder, or ``None`` (the bundled sample)."""
    from fedmedlora.benchmark import default_benchmark_dir, load_benchmark

    if benchmark is not None and hasattr(benchmark, "load") and hasattr(benchmark, "sites"):
        return benchmark
    return load_benchmark(Path(benchmark) if benchmark is not None else default_benchmark_dir())


def _weighted_mean(updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float], sites: Sequence[str]):
    from fedmedlora.aggregation import weighted_mean

    return weighted_mean(updates, weights, sites=sites)


def nbytes(state: Mapping[str, np.ndarray]) -> int:
    """Bytes of a state message (sum of the arrays' buffers)."""
    return int(sum(np.asarray(v).nbytes for v in state.values()))


def _site_features(models: EncoderModels, units: list[Unit], s: EncoderSettings, stats: dict[str, Any]):
    ner_st, re_st, skipped = AlignStats(), AlignStats(), Counter()
    feats = {"ner": ner_features(units, models.view, s.max_length, stats=ner_st)}
    if models.re is not None:
        feats["re"] = re_features(units, models.view, s.max_length, stats=re_st, skipped=skipped)
    stats.update(
        {
            "sentences": len(units),
            "ner_features": len(feats["ner"]),
            "re_features": len(feats.get("re", [])),
            "ner_alignment": ner_st.to_dict(),
            "re_alignment": re_st.to_dict(),
            "re_skipped": dict(skipped),
        }
    )
    return feats


def _train_central(models: EncoderModels, feats: dict[str, list[Feature]], s: EncoderSettings, lora: bool) -> dict:
    lr = s.lora_learning_rate if lora else s.learning_rate
    log = {}
    for name, model in (("ner", models.ner), ("re", models.re)):
        if model is None or not feats.get(name):
            continue
        log[name] = train_model(
            model,
            feats[name],
            epochs=s.epochs,
            learning_rate=lr,
            batch_size=s.batch_size,
            pad_id=models.view.pad_id,
            weight_decay=s.weight_decay,
            warmup_ratio=s.warmup_ratio,
            max_grad_norm=s.max_grad_norm,
            seed=s.seed,
            device=s.device,
        )
    return log


def score_sentence(
    ev: Any,
    gold: Sentence,
    pred: Sentence,
    label_set: LabelSet,
    *,
    tasks: Sequence[str] = ("ner", "re"),
    heads: Literal["gold", "predicted"] = "gold",
    site: str = "",
) -> None:
    """Add one sentence to a ``fedmedlora.metrics.Evaluation`` exactly as the LLM path does
    (``fedmedlora.metrics.score_sentence``); ``site`` is accepted for call-site symmetry."""
    from fedmedlora.metrics import score_sentence as _score

    _score(ev, gold, pred, label_set, tasks, heads)


def _evaluate(
    models: EncoderModels,
    bench: Any,
    eval_sites: Sequence[str],
    s: EncoderSettings,
    out_dir: Path | None,
    tag: str,
) -> dict[str, Any]:
    """Predict each evaluation site's ``eval_split`` and score it with ``fedmedlora.metrics.Evaluation``.

    Same scoring call as the LLM path (``fedmedlora.experiments.evaluate_arrays``): RE with gold heads unless
    ``settings.re_heads == "predicted"``. Returns ``{site: {"metrics", "n_sentences", "seconds"}}``.
    """
    from fedmedlora.metrics import Evaluation

    results: dict[str, Any] = {}
    for site in eval_sites:
        t0 = time.perf_counter()
        docs = bench.load(site, s.eval_split)
        from fedmedlora.experiments import sample_eval

        units = sample_eval(_units(docs), s.max_eval_sentences, s.seed, site)  # same sample as the LLM rows
        pred = predict_sentences(models, units, heads=s.re_heads, max_length=s.max_length, device=s.device)
        ev = Evaluation()
        for (gold, ls), p in zip(units, pred, strict=True):
            score_sentence(ev, gold, p, ls, tasks=s.tasks, heads=s.re_heads, site=site)
        results[site] = {
            "metrics": ev.to_dict(),
            "n_sentences": len(units),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if out_dir is not None:
            _write_predictions(out_dir / "predictions" / tag / f"{site}.{s.eval_split}.jsonl", pred)
    return results


def _write_predictions(path: Path, pred: Sequence[Sentence]) -> None:
    """Predicted sentences, one JSON object per line (sentence id, entities, modifiers with head ids)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for p in pred:
            rec = {
                "sentence_id": p.id,
                "entities": [
                    {"id": e.id, "type": e.type, "start": e.start, "end": e.end, "text": e.text} for e in p.entities
                ],
                "modifiers": [
                    {"id": m.id, "type": m.type, "start": m.start, "end": m.end, "text": m.text, "head": m.head}
                    for m in p.modifiers
                ],
            }
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def run_encoder_setting(
    setting: str,
    benchmark: str | Path | None = None,
    sites: Sequence[str] | None = None,
    eval_sites: Sequence[str] | None = None,
    settings: EncoderSettings | Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train the encoder baseline in one setting and score it on each evaluation site.

    Args:
        setting: ``"single_site"`` (one model per training site, each scored on every evaluation site),
            ``"centralized"`` (pooled training data, each sentence keeping its own site's label mask),
            ``"federated_full"`` (in-process FedAvg of every trainable weight) or ``"federated_lora"`` (FedAvg
            of LoRA adapters + classifier heads). FedAvg weights = number of training features per site.
        benchmark: benchmark folder (``None`` = the bundled sample, ``fedmedlora.benchmark.default_benchmark_dir``).
        sites: training sites (default: the manifest's sites with role ``"train"``).
        eval_sites: scored sites (default: ``sites``).
        settings: ``EncoderSettings`` or a dict of its fields.
        out_dir: if given, ``result.json`` and the predictions are written there.

    Returns:
        Plain dict: ``{"setting", "settings", "sites", "eval_sites", "train": {...}, "eval": {model: {site:
        metrics}}, "communication": {...}, "parameters": {...}, "seconds"}``. For ``single_site`` the ``eval``
        keys are the training site names; otherwise the one key is the setting name.
    """
    if setting not in SETTINGS:
        raise ValueError(f"run_encoder_setting: setting {setting!r} is not one of {SETTINGS}")
    s = settings if isinstance(settings, EncoderSettings) else EncoderSettings.from_dict(settings or {})
    bench = open_benchmark(benchmark)
    sites = list(sites) if sites is not None else list(bench.train_sites)
    eval_sites = list(eval_sites) if eval_sites is not None else list(sites)
    for name in sites + eval_sites:
        if name not in bench.sites:
            raise ValueError(f"run_encoder_setting: site {name!r} is not in the benchmark (sites: {list(bench.sites)})")
    if not sites:
        raise ValueError("run_encoder_setting: no training sites")
    out = Path(out_dir) if out_dir is not None else None
    prev_threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    t0 = time.perf_counter()
    site_units = {site: _subsample(_units(bench.load(site, "train")), s.max_train_sentences, s.seed) for site in sites}
    result: dict[str, Any] = {
        "setting": setting,
        "settings": s.to_dict(),
        "benchmark": str(getattr(bench, "root", benchmark)),
        "sites": sites,
        "eval_sites": eval_sites,
        "train": {},
        "eval": {},
        "communication": {},
        "parameters": {},
    }
    try:
        if setting == "single_site":
            for site in sites:
                models = load_models(s)
                st: dict[str, Any] = {}
                feats = _site_features(models, site_units[site], s, st)
                st["log"] = _train_central(models, feats, s, s.use_lora)
                result["train"][site] = st
                result["eval"][site] = _evaluate(models, bench, eval_sites, s, out, f"single_site-{site}")
            result["parameters"] = _param_info(models)
        elif setting == "centralized":
            models = load_models(s)
            pooled = [u for site in sites for u in site_units[site]]
            st = {}
            feats = _site_features(models, pooled, s, st)
            st["log"] = _train_central(models, feats, s, s.use_lora)
            result["train"]["pooled"] = st
            result["eval"][setting] = _evaluate(models, bench, eval_sites, s, out, setting)
            result["parameters"] = _param_info(models)
        else:
            lora = setting == "federated_lora"
            models = load_models(s, lora=lora)
            result["train"], result["communication"] = _federate(models, site_units, s, lora)
            result["eval"][setting] = _evaluate(models, bench, eval_sites, s, out, setting)
            result["parameters"] = _param_info(models)
    finally:
        if s.threads:
            torch.set_num_threads(prev_threads)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return result


def _param_info(models: EncoderModels) -> dict[str, Any]:
    info = {}
    for name, m in (("ner", models.ner), ("re", models.re)):
        if m is not None:
            tr, tot = count_parameters(m)
            info[name] = {"trainable": tr, "total": tot, "message_bytes": nbytes(get_state(m))}
    return info


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
        new = _weighted_mean([states[n] for n in names], [weights[n] for n in names], names)
    else:
        new = global_state
    set_state(model, new)
    return RoundResult(new, states, weights, logs, up, down)


def _federate(
    models: EncoderModels, site_units: Mapping[str, list[Unit]], s: EncoderSettings, lora: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """In-process FedAvg over ``s.rounds`` rounds; NER and RE models are federated separately (a site without
    RE features does not take part in the RE average)."""
    lr = s.lora_learning_rate if lora else s.learning_rate
    feats: dict[str, dict[str, list[Feature]]] = {}
    train_info: dict[str, Any] = {"sites": {}, "rounds": []}
    for site, units in site_units.items():
        st: dict[str, Any] = {}
        feats[site] = _site_features(models, units, s, st)
        train_info["sites"][site] = st
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
        train_info["rounds"].append(rec)
    comm["bytes_per_round"] = comm["rounds"][0]["bytes_total"] if comm["rounds"] else 0
    comm["message_bytes"] = {name: nbytes(global_state[name]) for name, _ in tasks}
    return train_info, comm
