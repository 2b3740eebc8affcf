"""Differential privacy, the pure parts: the unit of privacy, the privacy ledger, update clipping and aggregate noise.

Owns:

* ``UNITS`` and ``record_ids``: which training examples belong to one protected record. An instruction example
  is a (sentence, task, head) prompt; one sentence yields an NER example and one RE example per head, and one
  note yields many sentences. Record-level DP protects a whole *record*, so every example of it is one unit:
  ``"document"`` (default; one note / case report / abstract, ``Example.sentence_id = "<doc id>:<index>"``),
  ``"sentence"``, or ``"example"`` (each prompt alone; weaker than it looks, say so when you use it).
* ``LedgerEntry`` / ``PrivacyLedger``: the plain-data history of DP-SGD releases a site has made (noise
  multiplier, sampling rate, steps), serialised as JSON; the accountant (``fedmedlora.lm.dp``) turns it into ε.
* ``global_norm``, ``clip_update``, ``mean_noise_std``, ``add_gaussian_noise``: client-level DP on plain numpy
  arrays. A site clips its update ``Δ_k = θ_k − θ`` (over every tensor it uploads) to L2 norm ``C``; the server
  clips again (a site cannot opt out), averages with weights ``w_k`` and adds ``N(0, (σ · C · max_k w_k)²)`` to
  every coordinate. Changing one site's update moves ``Σ_k w_k Δ_k`` by at most ``w_k · C`` in L2 when the
  weights are public and fixed for the round (they are: token counts and site names travel in the clear), so the
  release is a Gaussian mechanism with noise multiplier ``σ`` per round. Uniform weights give Flower's
  ``σ · C / m``; token weights put more noise on everyone when one site dominates.

Must not import torch, transformers, peft, flwr or opacus (pure core: stdlib + numpy only).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Units of privacy for record-level DP-SGD, strongest first.
UNITS: tuple[str, ...] = ("document", "sentence", "example")
#: Weightings allowed under client-level DP (``federation.dp.weights``).
CLIENT_DP_WEIGHTS: tuple[str, ...] = ("size", "uniform")


class PrivacyError(ValueError):
    """A privacy setting or input cannot be honoured (the message names the field, site or example)."""


class PrivacyBudgetExceeded(RuntimeError):
    """Training would spend more privacy than ``max_epsilon`` allows; nothing was trained."""

    def __init__(self, message: str, epsilon_spent: float, epsilon_after: float) -> None:
        super().__init__(message)
        self.epsilon_spent = epsilon_spent
        self.epsilon_after = epsilon_after


# ---- the unit of privacy -------------------------------------------------------------------------------------


def record_id(sentence_id: str, unit: str) -> str:
    """The record a sentence belongs to: its document (``"<doc id>:<index>"`` → ``"<doc id>"``) or itself."""
    if unit == "document":
        doc, sep, index = sentence_id.rpartition(":")
        return doc if sep and index.isdigit() else sentence_id
    if unit == "sentence":
        return sentence_id
    raise PrivacyError(f"unit={unit!r}: record ids exist for {UNITS[:2]} (unit 'example' needs none)")


def record_ids(examples: Sequence[Any], unit: str) -> list[int]:
    """Record index (0..R-1, in first-seen order) of every example under ``unit``.

    Raises:
        PrivacyError: ``unit`` is unknown, or an example lacks a string ``sentence_id`` (its index is named).
    """
    if unit not in UNITS:
        raise PrivacyError(f"train.dp.unit: {unit!r} is not one of {UNITS}")
    if unit == "example":
        return list(range(len(examples)))
    index: dict[str, int] = {}
    out = []
    for i, ex in enumerate(examples):
        sid = getattr(ex, "sentence_id", None)
        if not isinstance(sid, str) or not sid:
            raise PrivacyError(
                f"example {i}: record-level DP with unit={unit!r} needs its 'sentence_id' (got {sid!r}); use "
                "unit='example' for examples that carry none"
            )
        # records of different sites never merge (document ids are unique within a site only)
        out.append(index.setdefault(f"{getattr(ex, 'site', '')}\x00{record_id(sid, unit)}", len(index)))
    return out


# ---- the ledger ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerEntry:
    """One call of DP-SGD training: ``steps`` Poisson-sampled Gaussian releases with these parameters."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    round: int = 0
    run: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise PrivacyError(f"ledger entry: noise_multiplier must be > 0, got {self.noise_multiplier!r}")
        if not 0 < self.sample_rate <= 1:
            raise PrivacyError(f"ledger entry: sample_rate must be in (0, 1], got {self.sample_rate!r}")
        if self.steps < 0:
            raise PrivacyError(f"ledger entry: steps must be >= 0, got {self.steps!r}")


@dataclass
class PrivacyLedger:
    """Every DP-SGD release a site made, as plain data (JSON), so ε can be recomputed and audited anywhere."""

    entries: list[LedgerEntry] = field(default_factory=list)

    def with_entry(self, entry: LedgerEntry) -> PrivacyLedger:
        return PrivacyLedger([*self.entries, entry])

    def history(self) -> list[tuple[float, float, int]]:
        """``[(noise_multiplier, sample_rate, steps)]``, the form of Opacus's ``RDPAccountant.history``."""
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.entries]

    @property
    def steps(self) -> int:
        return sum(e.steps for e in self.entries)

    def to_json(self) -> str:
        return json.dumps({"entries": [asdict(e) for e in self.entries]}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "privacy ledger") -> PrivacyLedger:
        """Parse ``to_json`` output.

        Raises:
            PrivacyError: not JSON, or an entry has missing/unknown/invalid fields (the entry index is named).
        """
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise PrivacyError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("entries"), list):
            raise PrivacyError(f"{where}: expected an object with a list 'entries'")
        entries = []
        for i, item in enumerate(raw["entries"]):
            try:
                entries.append(LedgerEntry(**item))
            except (TypeError, PrivacyError) as e:
                raise PrivacyError(f"{where}: entry {i}: {e}") from None
        return cls(entries)


# ---- client-level DP on numpy arrays ------------------------------------------------------------------------------


def global_norm(arrays: Mapping[str, np.ndarray]) -> float:
    """L2 norm of all tensors together (float64 accumulation)."""
    return float(math.sqrt(sum(float(np.sum(np.square(np.asarray(v, dtype=np.float64)))) for v in arrays.values())))


def clip_update(
    arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], clip: float
) -> tuple[dict[str, np.ndarray], float]:
    """``reference + Δ · min(1, C / ‖Δ‖)`` for ``Δ = arrays − reference`` over the keys of ``arrays``.

    Returns:
        The clipped arrays (dtype of ``arrays``) and ``‖Δ‖`` before clipping.

    Raises:
        PrivacyError: ``clip`` is not positive, or ``reference`` lacks a key of ``arrays``.
    """
    if not (math.isfinite(clip) and clip > 0):
        raise PrivacyError(f"clip norm must be a positive number, got {clip!r}")
    missing = sorted(set(arrays) - set(reference))
    if missing:
        raise PrivacyError(f"clip_update: the reference adapter lacks {missing[:3]}")
    delta = {k: np.asarray(v, dtype=np.float64) - np.asarray(reference[k], dtype=np.float64) for k, v in arrays.items()}
    norm = global_norm(delta)
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    out = {
        k: (np.asarray(reference[k], dtype=np.float64) + factor * d).astype(np.asarray(arrays[k]).dtype)
        for k, d in delta.items()
    }
    return out, norm


def mean_noise_std(weights: Sequence[float], clip: float, noise_multiplier: float) -> float:
    """Std of the Gaussian noise added to ``Σ_k w_k Δ_k``: ``σ · C · max_k w_k`` (see the module docstring)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0 or np.any(w < 0) or not math.isclose(float(w.sum()), 1.0, rel_tol=1e-6):
        raise PrivacyError(f"weights must be non-negative and sum to 1, got {w.tolist()}")
    return float(noise_multiplier * clip * w.max())


def add_gaussian_noise(arrays: Mapping[str, np.ndarray], std: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each tensor plus i.i.d. ``N(0, std²)`` noise (float64 draw, cast back), keys in sorted order."""
    if std < 0 or not math.isfinite(std):
        raise PrivacyError(f"noise std must be >= 0, got {std!r}")
    out = {}
    for k in sorted(arrays):
        v = np.asarray(arrays[k])
        out[k] = (v.astype(np.float64) + rng.normal(0.0, std, size=v.shape)).astype(v.dtype) if std else v.copy()
    return out


__all__ = [
    "CLIENT_DP_WEIGHTS",
    "UNITS",
    "LedgerEntry",
    "PrivacyBudgetExceeded",
    "PrivacyError",
    "PrivacyLedger",
    "add_gaussian_noise",
    "clip_update",
    "global_norm",
    "mean_noise_std",
    "record_id",
    "record_ids",
]
