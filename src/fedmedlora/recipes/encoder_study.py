"""Encoder-baseline rows for ``fedmedlora study``: single-site, centralized, federated (full FedAvg / LoRA).

The same benchmark, splits, label-set masking and metrics as the LLM rows (``fedmedlora.metrics.score_sentence``);
each row also reports the bytes one federated round moves (upload + download, all sites).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedmedlora.config import RunConfig
from fedmedlora.encoder.run import run_encoder_setting
from fedmedlora.encoder.settings import EncoderSettings


def encoder_rows(
    cfg: RunConfig,
    bench: Any,
    train_sites: Sequence[str],
    eval_sites: Sequence[str],
    out: Path,
    settings: Mapping[str, Any] | None = None,
    federated: Sequence[str] = ("federated_full", "federated_lora"),
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Run the encoder settings and return ``(results, extras)`` keyed by row name, in the study's format.

    Args:
        cfg: the study config (its seed and evaluation cap are reused).
        bench: the study's benchmark.
        train_sites: federated / pooled training sites.
        eval_sites: sites to score (the encoder is scored on the same sentences as the LLM rows).
        out: folder for the encoder runs' ``result.json`` files.
        settings: ``EncoderSettings`` fields overriding the defaults (e.g. ``{"epochs": 3}``).
        federated: which federated variants to run.
    """
    base = {"seed": cfg.seed, "max_eval_sentences": cfg.eval.max_sentences, "eval_split": cfg.eval.split}
    base.update(settings or {})
    results: dict[str, dict[str, Any]] = {}
    extras: dict[str, dict[str, Any]] = {}
    for setting in ("single_site", "centralized", *federated):
        res = _cached(out / setting, setting, base, bench.root, train_sites, eval_sites) or run_encoder_setting(
            setting, bench.root, train_sites, eval_sites, base, out / setting
        )
        comm = res.get("communication", {})
        for model, per_site in res["eval"].items():
            name = f"encoder {setting.replace('_', '-')}" + (f" ({model})" if setting == "single_site" else "")
            results[name] = {
                site: {"metrics": r["metrics"], "n_sentences": r.get("n_sentences", 0)} for site, r in per_site.items()
            }
            # one run trains every single-site model: each row gets its share of the wall time
            share = len(res["eval"]) if setting == "single_site" else 1
            extra: dict[str, Any] = {"minutes": round(res.get("seconds", 0) / 60 / share, 1)}
            if setting.startswith("federated"):
                extra["MB per round (all sites, up+down)"] = round(comm.get("bytes_per_round", 0) / 1e6, 2)
            extras[name] = extra
    return results, extras


def _cached(
    folder: Path,
    setting: str,
    settings: Mapping[str, Any],
    benchmark: Path,
    sites: Sequence[str],
    eval_sites: Sequence[str],
) -> dict[str, Any] | None:
    """A finished encoder run in ``folder`` with the same setting, settings, benchmark and sites, else None."""
    path = folder / "result.json"
    if not path.is_file():
        return None
    res = json.loads(path.read_text(encoding="utf-8"))
    want = EncoderSettings.from_dict(dict(settings))
    try:
        same = (
            res.get("setting") == setting
            and EncoderSettings.from_dict(res.get("settings", {})) == want
            and Path(str(res.get("benchmark"))).resolve() == Path(benchmark).resolve()
            and list(res.get("sites", [])) == list(sites)
            and list(res.get("eval_sites", [])) == list(eval_sites)
        )
    except (TypeError, ValueError):
        return None
    return res if same else None
