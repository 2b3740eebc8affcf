"""Settings of the encoder baseline: ``EncoderSettings`` and the names of the four training settings.

Owns: ``EncoderSettings`` (hyper-parameters, validation, ``from_dict`` / ``to_dict`` for configs and
``result.json``) and ``SETTINGS``. No training code: ``encoder.train`` and ``encoder.run`` consume these.

Imports torch only through ``encoder.model`` (``EncoderLora``). Must not import ``fedmedlora.federation``,
``fedmedlora.recipes`` or the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from fedmedlora.encoder.model import EncoderLora

SETTINGS: tuple[str, ...] = ("single_site", "centralized", "federated_full", "federated_lora")


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
        device: ``"cpu"``, ``"cuda"``, ... (``"auto"`` = CUDA, then Apple MPS, then CPU;
            ``fedmedlora.lm.model.resolve_device``).
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
