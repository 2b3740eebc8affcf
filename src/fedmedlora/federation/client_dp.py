"""Client-level DP of the federation (``federation.dp``): the coordinator's noise and its accountant.

Owns ``ClientLevelDP``: the noise multiplier (given, or calibrated so that the run's rounds spend
``target_epsilon``), how many rounds ``max_epsilon`` affords, and ``release`` — clip every site's update again
(a site cannot opt out of its own clipping), take the weighted mean, add ``N(0, (σ · C · max_k w_k)²)``
(``fedmedlora.privacy``), compose one Gaussian release in Flower's ``RdpAccountant`` and say what was spent.

Accounting: one release per round, Flower's ``RdpAccountant`` with ``ADD_OR_REMOVE_ONE`` neighbouring (removing
a site = its clipped update contributes zero, the weights of the others are fixed and public) and
``NO_AMPLIFICATION``: this project samples sites deterministically from the seed (``fraction_train``), which is
not the secret Poisson sampling amplification assumes, so no amplification is claimed.

The noise comes from OS entropy unless ``federation.dp.reproducible_noise`` (then from the run seed, which every
site knows: no guarantee). May import flwr and numpy; must not import torch.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.serverapp import GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, SamplingMethod

from fedmedlora.aggregation import weighted_mean
from fedmedlora.config import ClientDPConfig
from fedmedlora.privacy import PrivacyError, add_gaussian_noise, clip_update, mean_noise_std


def _accountant(delta: float, sites: int) -> Any:
    from flwr.serverapp import RdpAccountant

    config = PrivacyConfig(
        target_delta=delta,
        population_size=max(1, sites),
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
    )
    return RdpAccountant(config)


def gaussian_rounds_epsilon(noise_multiplier: float, rounds: int, delta: float, sites: int = 1) -> float:
    """ε after ``rounds`` Gaussian releases with this noise multiplier (Flower's ``RdpAccountant``)."""
    if rounds <= 0:
        return 0.0
    acc = _accountant(delta, sites)
    acc.compose(GaussianPrivacyEvent(noise_multiplier, max(1, sites), max(1, sites)), rounds)
    return float(acc.get_epsilon(delta))


def calibrate_noise(target_epsilon: float, rounds: int, delta: float, sites: int = 1) -> float:
    """The smallest noise multiplier (to 0.1 % of it) whose ``rounds`` releases spend at most ``target_epsilon``."""
    low, high = 0.0, 1.0
    while gaussian_rounds_epsilon(high, rounds, delta, sites) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise PrivacyError(f"federation.dp.target_epsilon={target_epsilon}: unreachable for {rounds} rounds")
    while high - low > 1e-3 * high:
        mid = (low + high) / 2
        if mid > 0 and gaussian_rounds_epsilon(mid, rounds, delta, sites) <= target_epsilon:
            high = mid
        else:
            low = mid
    return high


class ClientLevelDP:
    """The coordinator's side of client-level DP for one run.

    Args:
        dp: the ``federation.dp`` section (must be enabled).
        rounds: the run's rounds (``target_epsilon`` is spread over them).
        sites: number of training sites (the population of the accountant; reporting only).
        seed: the run seed (used for the noise only with ``reproducible_noise``).
        done_rounds: rounds already released (resume): composed into the accountant at once.
    """

    def __init__(self, dp: ClientDPConfig, *, rounds: int, sites: int, seed: int = 0, done_rounds: int = 0) -> None:
        if not dp.enabled:
            raise PrivacyError("federation.dp: set noise_multiplier or target_epsilon")
        self.dp = dp
        self.sites = max(1, sites)
        self.noise_multiplier = (
            float(dp.noise_multiplier)
            if dp.noise_multiplier is not None
            else calibrate_noise(float(dp.target_epsilon), rounds, dp.delta, self.sites)  # type: ignore[arg-type]
        )
        self.seed = seed
        self.accountant = _accountant(dp.delta, self.sites)
        if done_rounds:
            self.accountant.compose(self._event(), done_rounds)

    def _event(self) -> GaussianPrivacyEvent:
        return GaussianPrivacyEvent(self.noise_multiplier, self.sites, self.sites)

    @property
    def epsilon(self) -> float:
        """ε spent so far (at ``dp.delta``)."""
        return float(self.accountant.get_epsilon(self.dp.delta)) if self.accountant.num_releases else 0.0

    def epsilon_after(self, rounds: int) -> float:
        return gaussian_rounds_epsilon(self.noise_multiplier, rounds, self.dp.delta, self.sites)

    def affordable_rounds(self, rounds: int) -> int:
        """How many of ``rounds`` releases fit in ``dp.max_epsilon`` (all when it is unset)."""
        if self.dp.max_epsilon is None:
            return rounds
        n = 0
        while n < rounds and self.epsilon_after(n + 1) <= self.dp.max_epsilon:
            n += 1
        return n

    def weights(self, size_weights: Sequence[float]) -> np.ndarray:
        """The aggregation weights under DP: the rule's size weights, or uniform (``dp.weights``)."""
        w = np.asarray(size_weights, dtype=np.float64)
        return np.full(len(w), 1.0 / len(w)) if self.dp.weights == "uniform" else w

    def release(
        self,
        updates: Sequence[Mapping[str, np.ndarray]],
        weights: Sequence[float],
        reference: Mapping[str, np.ndarray],
        sites: Sequence[str],
        round_: int,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The noised weighted mean of the clipped updates, and the round's privacy record.

        Args:
            updates: each site's uploaded tensors (same keys).
            weights: normalised weights, one per site.
            reference: the global adapter the sites started from (the updates are clipped around it).
            sites: site names (for error messages and the record).
            round_: the global round number (seeds the noise with ``reproducible_noise``).
        """
        clip = self.dp.clip_norm
        clipped, norms = [], []
        for update in updates:
            arrays, norm = clip_update(update, reference, clip)
            clipped.append(arrays)
            norms.append(norm)
        mean = weighted_mean(clipped, weights, sites=list(sites))
        noised, record = self.add_noise(mean, weights, round_)
        # a site whose update arrives above the bound was not clipping (or sent a larger one): flagged here
        record["over_clip"] = [s for s, n in zip(sites, norms, strict=True) if n > clip * (1 + 1e-3)]
        return noised, record

    def add_noise(
        self, mean: Mapping[str, np.ndarray], weights: Sequence[float], round_: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Noise an already aggregated mean (under SecAgg+ the coordinator cannot re-clip: the sites' own
        clipping is what bounds each update) and compose one release."""
        std = mean_noise_std(weights, self.dp.clip_norm, self.noise_multiplier)
        entropy = [self.seed, round_] if self.dp.reproducible_noise else secrets.randbits(128)
        noised = add_gaussian_noise(mean, std, np.random.default_rng(entropy))
        self.accountant.compose(self._event(), 1)
        record: dict[str, Any] = {
            "epsilon": self.epsilon,
            "delta": self.dp.delta,
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.dp.clip_norm,
            "noise_std": std,
            "weights": self.dp.weights,
        }
        if not math.isfinite(record["epsilon"]):
            raise PrivacyError(f"round {round_}: the accountant returned ε={record['epsilon']}")
        return noised, record


__all__ = ["ClientLevelDP", "calibrate_noise", "gaussian_rounds_epsilon"]
