"""A loaded model session: base model + LoRA wrapper + tokenizer + the shared initial adapter, and its cache.

Owns: ``Session`` (load once, then swap adapter arrays in and out to train, generate or save), the exact
merge/restore used for fast generation, and ``SessionCache``, the process-wide cache that lets a simulation, a
study or a ServerApp reuse one loaded model for every site, setting and round.

A session holds **no run configuration**: every call whose behaviour depends on one (generation, training) takes
the ``RunConfig`` explicitly. The cache key (``session_key``) is therefore exactly what decides what gets loaded:
the ``model`` section, the ``lora`` section and the seed (which draws the initial LoRA A). Two runs in one process
that differ in anything else (prompt format, tasks, training budget, evaluation settings) share the model and
cannot see each other's settings.

Zero-shot = the base model through the same prompts: LoRA B starts at zero, so the untrained adapter is an exact
no-op and "no adapter" needs no separate code path.

Layer: ``fedmedlora.lm`` (torch, transformers, peft); must not import flwr, federation or orchestration code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedmedlora.aggregation import is_lora_B
from fedmedlora.config import RunConfig
from fedmedlora.lm.adapter_io import get_adapter_arrays, set_adapter_arrays
from fedmedlora.lm.constrained import constraint_for
from fedmedlora.lm.generate import generate
from fedmedlora.lm.model import attach_lora, load_base_model
from fedmedlora.lm.train import PromptTarget, TrainResult, TrainSettings, train_local

GenerateFn = Callable[[list[str]], list[str]]
SessionKey = tuple[str, str, int]


def session_key(cfg: RunConfig) -> SessionKey:
    """Everything in a config that changes what a session loads: model section, LoRA section, seed."""
    return (cfg.model.model_dump_json(), cfg.lora.model_dump_json(), cfg.seed)


@dataclass
class Session:
    """A loaded base model with a LoRA adapter attached, its tokenizer, and the shared initial adapter arrays."""

    model: Any
    tokenizer: Any
    init_arrays: dict[str, np.ndarray]
    key: SessionKey

    @classmethod
    def load(cls, cfg: RunConfig) -> Session:
        """Load ``cfg.model`` and attach ``cfg.lora`` (initial A seeded by ``cfg.seed``)."""
        m = cfg.model
        base, tok = load_base_model(m.name, dtype=m.dtype, device=m.device, load_in_4bit=m.load_in_4bit)
        model = attach_lora(base, cfg.lora, seed=cfg.seed)
        return cls(model, tok, get_adapter_arrays(model), session_key(cfg))

    @property
    def peft_config(self) -> Any:
        """The PEFT ``LoraConfig`` describing this session's adapter arrays (for ``save_adapter``)."""
        return self.model.peft_config["default"]

    def set_arrays(self, arrays: dict[str, np.ndarray] | None) -> None:
        """Load adapter arrays into the model (``None``: the shared initial adapter)."""
        set_adapter_arrays(self.model, self.init_arrays if arrays is None else arrays)

    def generate_fn(self, cfg: RunConfig) -> GenerateFn:
        """Greedy generation with the adapter currently loaded, under ``cfg.eval`` and ``cfg.model``."""

        def fn(prompts: list[str]) -> list[str]:
            if not prompts:
                return []
            with self.merged(enabled=cfg.eval.merge_adapter and not cfg.model.load_in_4bit):
                return generate(
                    self.model,
                    self.tokenizer,
                    prompts,
                    max_new_tokens=cfg.eval.max_new_tokens,
                    batch_size=cfg.eval.batch_size,
                    use_chat_template=cfg.model.use_chat_template,
                    early_stop=cfg.eval.early_stop,
                    stop_on_repetition=cfg.eval.stop_on_repetition,
                    prefix_cache=cfg.eval.prefix_cache,
                    packed_weights=cfg.eval.packed_weights,
                    constraint=constraint_for(self.tokenizer) if self.uses_constraint(cfg) else None,
                )

        return fn

    def adapter_is_identity(self) -> bool:
        """Whether the loaded adapter changes nothing (every LoRA B is zero): the base model, i.e. zero-shot."""
        with torch.no_grad():
            return all(not bool(torch.count_nonzero(p)) for name, p in self.model.named_parameters() if is_lora_B(name))

    def uses_constraint(self, cfg: RunConfig) -> bool:
        """Whether generation under ``cfg`` is constrained: ``eval.constrained`` true, or ``"auto"`` with JSON
        answers and an adapter that changes nothing (zero-shot, where it measured a win; docs/settings.md)."""
        if cfg.eval.constrained == "auto":
            return cfg.data.format == "json" and self.adapter_is_identity()
        return bool(cfg.eval.constrained)

    @contextmanager
    def merged(self, enabled: bool = True) -> Iterator[None]:
        """Fold the LoRA update into the base weights for fast inference, then restore them bit for bit.

        An unmerged adapter costs extra small matmuls in every adapted layer (about 2x slower greedy decoding on a
        CPU). PEFT's ``unmerge_adapter`` subtracts the update again, which is not exact in floating point, so the
        adapted base weights are copied before merging and copied back afterwards: training never sees drift.
        """
        if not enabled or not hasattr(self.model, "merge_adapter"):
            yield
            return
        with torch.no_grad():
            saved = {
                name: p.detach().clone()
                for name, p in self.model.named_parameters()
                if name.endswith("base_layer.weight")
            }
            self.model.merge_adapter()
        try:
            yield
        finally:
            with torch.no_grad():
                self.model.unmerge_adapter()
                params = dict(self.model.named_parameters())
                for name, value in saved.items():
                    params[name].copy_(value)

    def train(
        self,
        examples: Sequence[PromptTarget],
        arrays: dict[str, np.ndarray] | None,
        cfg: RunConfig,
        *,
        seed: int | None = None,
        settings: TrainSettings | None = None,
        **kwargs: Any,
    ) -> TrainResult:
        """Train the adapter from ``arrays`` (None = the shared initial adapter) with ``cfg.train`` (seed:
        ``cfg.seed`` unless given), or with ``settings`` when the caller built them. ``kwargs`` go to
        ``train_local`` (``optimizer_state``, ``progress``, ``privacy_ledger``)."""
        return train_local(
            self.model,
            self.tokenizer,
            examples,
            settings if settings is not None else TrainSettings.from_config(cfg, seed=seed),
            adapter_arrays=self.init_arrays if arrays is None else arrays,
            **kwargs,
        )


class SessionCache:
    """Loaded sessions by ``session_key``: one model per (model, LoRA, seed) in a process.

    Every user loads its own adapter arrays before use (``Session.set_arrays``), so nothing leaks between the
    virtual sites of a simulation or the settings of a study.
    """

    def __init__(self) -> None:
        self._sessions: dict[SessionKey, Session] = {}

    def get(self, cfg: RunConfig) -> Session:
        key = session_key(cfg)
        if key not in self._sessions:
            self._sessions[key] = Session.load(cfg)
        return self._sessions[key]

    def clear(self) -> None:
        self._sessions.clear()

    def __len__(self) -> int:
        return len(self._sessions)


#: The process-wide cache (ClientApp, ServerApp, simulation, study and CLI share it).
SESSIONS = SessionCache()


def get_session(cfg: RunConfig) -> Session:
    """The cached ``Session`` for ``cfg`` (loaded on first use)."""
    return SESSIONS.get(cfg)
