"""Screening the sites' replies before aggregation, so that one hostile or broken site cannot poison the round.

Owns the pure checks the coordinator applies to each round's *valid* replies (the message contract —
``fedmedlora.federation.messages`` — has already rejected wrong keys, shapes, dtypes, NaN/Inf and unknown
metrics):

* ``cap_sizes``: a self-reported size (training tokens or examples) is a claim the coordinator cannot verify; it is
  capped at ``max_size_factor`` × the round's median size (with at least ``MIN_SITES_FOR_MEDIAN`` sites) and at
  ``max_size``, so one site claiming 1e300 tokens does not take weight 1.0.
* ``screen_losses``: a Fed-MedLoRA+ site loss must be a cross-entropy: ``0 ≤ L ≤ MAX_LOSS``; a site reporting
  −1e300 is excluded rather than given weight 1.0.
* ``screen_norms``: the L2 norm of each site's update ``θ_k − θ`` (over the tensors it uploads) against
  ``max_update_norm`` (absolute) and ``norm_outlier_factor`` × the round's median norm (at least
  ``MIN_SITES_FOR_MEDIAN`` sites: with two, the median cannot tell the honest site from the other).

Every cap or exclusion comes back with the site's name and a reason, for ``rounds.jsonl``.

Must not import torch, transformers, peft or flwr (pure core: stdlib + numpy only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Fewest sites for which the round's median is a meaningful reference.
MIN_SITES_FOR_MEDIAN = 3
#: Largest plausible mean token cross-entropy (ln of a 10^43 vocabulary; real values are < 15).
MAX_LOSS = 100.0


@dataclass(frozen=True)
class ScreeningSettings:
    """What the coordinator tolerates in a round (``federation.max_size_factor`` etc.; None disables a check)."""

    max_size_factor: float | None = 10.0
    max_size: float = 1e12
    max_update_norm: float | None = None
    norm_outlier_factor: float | None = 10.0


def cap_sizes(
    sites: Sequence[str], sizes: Sequence[float], settings: ScreeningSettings
) -> tuple[list[float], dict[str, str]]:
    """Sizes with implausible claims capped, and a note per capped site."""
    out = [float(s) for s in sizes]
    notes: dict[str, str] = {}
    cap = settings.max_size
    if settings.max_size_factor is not None and len(out) >= MIN_SITES_FOR_MEDIAN:
        cap = min(cap, settings.max_size_factor * float(np.median(out)))
    for i, (site, size) in enumerate(zip(sites, out, strict=True)):
        if size > cap:
            notes[site] = f"reported size {size:.4g} capped at {cap:.4g} (max_size_factor × median / max_size)"
            out[i] = cap
    return out, notes


def screen_losses(sites: Sequence[str], losses: Sequence[float]) -> dict[str, str]:
    """Sites whose reported loss is not a plausible cross-entropy, with the reason."""
    return {
        site: f"reported loss {loss!r} outside [0, {MAX_LOSS}]"
        for site, loss in zip(sites, losses, strict=True)
        if not (math.isfinite(loss) and 0.0 <= loss <= MAX_LOSS)
    }


def screen_norms(sites: Sequence[str], norms: Sequence[float], settings: ScreeningSettings) -> dict[str, str]:
    """Sites whose update norm is above the absolute bound or far above the round's median, with the reason."""
    out: dict[str, str] = {}
    median = float(np.median(norms)) if len(norms) >= MIN_SITES_FOR_MEDIAN else None
    for site, norm in zip(sites, norms, strict=True):
        if not math.isfinite(norm):
            out[site] = f"update norm is {norm!r}"
        elif settings.max_update_norm is not None and norm > settings.max_update_norm:
            out[site] = f"update norm {norm:.4g} > max_update_norm={settings.max_update_norm}"
        elif (
            settings.norm_outlier_factor is not None
            and median is not None
            and median > 0
            and norm > settings.norm_outlier_factor * median
        ):
            out[site] = (
                f"update norm {norm:.4g} > norm_outlier_factor={settings.norm_outlier_factor} × the round's "
                f"median {median:.4g}"
            )
    return out


__all__ = ["MAX_LOSS", "MIN_SITES_FOR_MEDIAN", "ScreeningSettings", "cap_sizes", "screen_losses", "screen_norms"]
