"""The coordinator's own look at adapters: validation loss and a small per-round F1, on its labelled set.

Owns ``ServerEvaluator``: the loss of any adapter on the coordinator-held validation set
(``<data>/_server/validation.jsonl``; Fed-MedLoRA+ "server" weights and every round record's ``val_loss``) and the
NER/RE F1 on ``federation.round_eval_sentences`` of its sentences (``val_<task>_<rule>_f1`` in the round record).
Which examples and sentences: ``fedmedlora.sampling``. Nothing here is ever sent to a site.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedmedlora.config import RunConfig
from fedmedlora.extract import extract_sentences
from fedmedlora.lm.session import Session
from fedmedlora.lm.train import TrainSettings, validation_loss
from fedmedlora.metrics import score_sentences
from fedmedlora.sampling import server_round_items, server_split_path, server_validation_examples


class ServerEvaluator:
    """Validation loss and round F1 of adapters on the coordinator's labelled set (empty when it has none)."""

    def __init__(self, cfg: RunConfig, data_dir: str | Path, session: Session) -> None:
        self.cfg = cfg
        self.session = session
        self.path = server_split_path(data_dir)
        self.val_examples = server_validation_examples(cfg, data_dir)
        self.round_items = server_round_items(cfg, data_dir)
        self._settings = TrainSettings.from_config(cfg)

    @property
    def has_loss(self) -> bool:
        return bool(self.val_examples)

    def val_loss(self, arrays: dict[str, np.ndarray]) -> float:
        """Mean answer-token loss of ``arrays`` on the coordinator's validation examples."""
        s = self.session
        return float(validation_loss(s.model, s.tokenizer, self.val_examples, self._settings, arrays))

    def scores(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """What a round record gets: ``val_loss`` / ``val_examples`` and, when enabled, the round F1."""
        out: dict[str, float] = {}
        if self.val_examples:
            out["val_loss"] = self.val_loss(arrays)
        if self.round_items:
            out.update(self.round_f1(arrays))
        return out

    def round_f1(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """Strict and lenient F1 per task of ``arrays`` on the round-evaluation sentences (RE with gold heads)."""
        cfg, items = self.cfg, self.round_items
        self.session.set_arrays(arrays)
        preds = extract_sentences(
            items, self.session.generate_fn(cfg), fmt=cfg.data.format, tasks=cfg.data.tasks, heads="gold"
        )
        ev = score_sentences(items, preds, cfg.data.tasks)
        out: dict[str, float] = {"val_sentences": float(len(items))}
        for task in cfg.data.tasks:
            if ev.n_instances.get(task):
                for rule in ("strict", "lenient"):
                    out[f"val_{task}_{rule}_f1"] = ev.get(task, rule).f1
        return out
