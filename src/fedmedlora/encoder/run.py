"""The four training settings of the encoder baseline, their scoring and what a run writes.

Owns: ``run_encoder_setting`` (single-site, centralized, federated full-model FedAvg, federated LoRA FedAvg, with
bytes per round), per-site featurisation with alignment statistics (``site_features``), centralized training
(``train_central``), evaluation with the LLM path's metrics (``score_sentence`` → ``fedmedlora.metrics``, on the
LLM rows' evaluation sample ``fedmedlora.sampling.sample_eval``) and the ``result.json`` / prediction files.
Benchmarks are opened with ``fedmedlora.benchmark.open_benchmark``; training sentences are capped with
``fedmedlora.sampling.seeded_sample``.

This module is also the encoder baseline's one-stop namespace: ``__all__`` re-exports the featurisation, training
and FedAvg names it is built from. Must not import ``fedmedlora.federation``, ``fedmedlora.recipes`` or the CLI.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from fedmedlora.aggregation import nbytes
from fedmedlora.benchmark import Benchmark, open_benchmark
from fedmedlora.encoder.bio import AlignStats
from fedmedlora.encoder.features import (
    NER_SCHEME,
    RE_SCHEME,
    Feature,
    TokenizerView,
    Unit,
    masked_loss,
    ner_features,
    re_features,
)
from fedmedlora.encoder.federated import RoundResult, federate, federated_round
from fedmedlora.encoder.model import count_parameters, get_state
from fedmedlora.encoder.settings import SETTINGS, EncoderSettings
from fedmedlora.encoder.train import EncoderModels, evaluate_loss, load_models, predict_sentences, train_model
from fedmedlora.metrics import Evaluation
from fedmedlora.metrics import score_sentence as _score
from fedmedlora.sampling import sample_eval, seeded_sample
from fedmedlora.schema import Document, LabelSet, Sentence

__all__ = [
    "NER_SCHEME",
    "RE_SCHEME",
    "SETTINGS",
    "AlignStats",
    "EncoderModels",
    "EncoderSettings",
    "Feature",
    "RoundResult",
    "TokenizerView",
    "evaluate_loss",
    "federated_round",
    "load_models",
    "masked_loss",
    "nbytes",
    "ner_features",
    "predict_sentences",
    "re_features",
    "run_encoder_setting",
    "score_sentence",
    "site_features",
    "train_central",
    "train_model",
]


def _units(docs: Iterable[Document]) -> list[Unit]:
    return [(s, d.label_set) for d in docs for s in d.sentences]


def site_features(
    models: EncoderModels, units: list[Unit], s: EncoderSettings, stats: dict[str, Any]
) -> dict[str, list[Feature]]:
    """NER (and, with an RE model, RE) features of one site's units; ``stats`` receives their counts and the
    alignment statistics (``sentences``, ``ner_features``, ``re_features``, ``*_alignment``, ``re_skipped``)."""
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


def train_central(models: EncoderModels, feats: dict[str, list[Feature]], s: EncoderSettings, lora: bool) -> dict:
    """Train each model on its features for ``s.epochs`` (LoRA learning rate when ``lora``); ``{task: log}``."""
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
    _score(ev, gold, pred, label_set, tasks, heads)


def evaluate(
    models: EncoderModels,
    bench: Benchmark,
    eval_sites: Sequence[str],
    s: EncoderSettings,
    out_dir: Path | None,
    tag: str,
) -> dict[str, Any]:
    """Predict each evaluation site's ``eval_split`` and score it with ``fedmedlora.metrics.Evaluation``.

    Same scoring call as the LLM path (``fedmedlora.recipes.evaluate.evaluate_arrays``): RE with gold heads unless
    ``settings.re_heads == "predicted"``. Returns ``{site: {"metrics", "n_sentences", "seconds"}}``.
    """
    results: dict[str, Any] = {}
    for site in eval_sites:
        t0 = time.perf_counter()
        docs = bench.load(site, s.eval_split)
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
            write_predictions(out_dir / "predictions" / tag / f"{site}.{s.eval_split}.jsonl", pred)
    return results


def write_predictions(path: Path, pred: Sequence[Sentence]) -> None:
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
    benchmark: Benchmark | str | Path | None = None,
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
        benchmark: a loaded ``Benchmark`` or a benchmark folder (``None`` = the bundled sample,
            ``fedmedlora.benchmark.default_benchmark_dir``); see ``fedmedlora.benchmark.open_benchmark``.
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
    site_units = {
        site: seeded_sample(_units(bench.load(site, "train")), s.max_train_sentences, s.seed) for site in sites
    }
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
                feats = site_features(models, site_units[site], s, st)
                st["log"] = train_central(models, feats, s, s.use_lora)
                result["train"][site] = st
                result["eval"][site] = evaluate(models, bench, eval_sites, s, out, f"single_site-{site}")
            result["parameters"] = _param_info(models)
        elif setting == "centralized":
            models = load_models(s)
            pooled = [u for site in sites for u in site_units[site]]
            st = {}
            feats = site_features(models, pooled, s, st)
            st["log"] = train_central(models, feats, s, s.use_lora)
            result["train"]["pooled"] = st
            result["eval"][setting] = evaluate(models, bench, eval_sites, s, out, setting)
            result["parameters"] = _param_info(models)
        else:
            lora = setting == "federated_lora"
            models = load_models(s, lora=lora)
            feats_by_site: dict[str, dict[str, list[Feature]]] = {}
            site_stats: dict[str, Any] = {}
            for site, units in site_units.items():
                site_stats[site] = {}
                feats_by_site[site] = site_features(models, units, s, site_stats[site])
            rounds, result["communication"] = federate(models, feats_by_site, s, lora)
            result["train"] = {"sites": site_stats, "rounds": rounds}
            result["eval"][setting] = evaluate(models, bench, eval_sites, s, out, setting)
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
