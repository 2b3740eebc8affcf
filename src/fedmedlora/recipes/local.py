"""The non-federated settings: zero-shot, single-site, centralized, new-site adaptation and local-only training.

Owns ``run_setting``: train (or not) one adapter on one or more sites' training splits, save it, evaluate it on
every benchmark site, and write the run folder. The federated settings live in ``fedmedlora.federation``; both
train through ``fedmedlora.lm.session.Session`` and score through ``fedmedlora.recipes.evaluate``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from fedmedlora.benchmark import Benchmark, open_benchmark
from fedmedlora.config import RunConfig
from fedmedlora.lm.adapter_io import adapter_meta, load_adapter_arrays, save_adapter
from fedmedlora.lm.session import Session
from fedmedlora.recipes.evaluate import evaluate_into
from fedmedlora.runs import FINAL, ROUNDS_FILE, RUN_FILE, RunDir, check_output_dir, peak_rss_mb
from fedmedlora.sampling import site_examples

Setting = Literal["zero_shot", "single_site", "centralized", "adapt", "local_only"]


def run_setting(
    setting: Setting,
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    sites: Sequence[str] | None = None,
    eval_sites: Sequence[str] | None = None,
    init_adapter: str | Path | None = None,
    session: Session | None = None,
    command: str = "",
) -> RunDir:
    """Run one non-federated setting end to end and write its run folder.

    Args:
        setting: ``zero_shot`` (no training), ``single_site`` (train on ``sites[0]``), ``centralized`` (pool
            ``sites``), ``adapt`` (continue from ``init_adapter`` on ``sites``' training split — the new-site
            adaptation of a federated adapter), ``local_only`` (same data as ``adapt``, from the base model).
        sites: training sites; default: the benchmark's training sites (centralized/zero-shot) or its new site
            (adapt/local_only).
        eval_sites: sites whose ``eval.split`` is scored; default: every site of the benchmark.
        init_adapter: adapter folder to start from (``adapt``).
        session: reuse a loaded model (the study command runs many settings in one process).
    """

    bench = open_benchmark(cfg.data.benchmark)
    if sites is None:
        sites = [bench.new_site] if setting in ("adapt", "local_only") else list(bench.train_sites)
    sites = list(sites)
    if setting == "single_site" and len(sites) != 1:
        raise ValueError(f"single_site: give exactly one training site, got {sites}")
    if setting == "adapt" and init_adapter is None:
        raise ValueError("adapt: --init-adapter (a federated adapter folder) is required")
    eval_sites = list(eval_sites) if eval_sites is not None else list(bench.sites)
    for s in [*sites, *eval_sites]:
        if s not in bench.sites:
            raise ValueError(f"unknown site {s!r}; the benchmark has {sorted(bench.sites)}")
    if (Path(out_dir) / RUN_FILE).is_file():
        check_output_dir(out_dir, command)  # a run of another kind is named as such
        raise ValueError(
            f"{out_dir} already holds a run ({RUN_FILE}); choose a new --out folder (or --force to run it again)"
        )
    run = RunDir(out_dir, cfg, command=command, setting=setting, sites=sites, eval_sites=eval_sites)
    with run.recording_end():  # Ctrl-C / SIGTERM: "interrupted"; an error: "failed"; never left "running"
        _run_setting(run, setting, cfg, bench, sites, eval_sites, init_adapter, session)
    return run


def _run_setting(
    run: RunDir,
    setting: Setting,
    cfg: RunConfig,
    bench: Benchmark,
    sites: list[str],
    eval_sites: list[str],
    init_adapter: str | Path | None,
    session: Session | None,
) -> None:
    session = session or Session.load(cfg)
    arrays = None
    if init_adapter is not None:
        arrays = load_adapter_arrays(init_adapter)
    if setting != "zero_shot":
        examples = [ex for s in sites for ex in site_examples(bench, s, cfg)]
        if not examples:
            files = ", ".join(str(bench.path(s, "train")) for s in sites)
            raise ValueError(
                f"{setting}: no training examples in {files} (no documents, or none with an annotated sentence of "
                "the site's label set)"
            )
        t0 = time.perf_counter()
        result = session.train(examples, arrays, cfg)
        arrays = result.arrays
        run.append_jsonl(
            ROUNDS_FILE,
            {
                "round": 1,
                "setting": setting,
                "sites": sites,
                "num_examples": result.num_examples,
                "num_train_tokens": result.num_train_tokens,
                "train_loss": result.train_loss,
                "steps": result.steps,
                "seconds": round(time.perf_counter() - t0, 2),
                "peak_rss_mb": peak_rss_mb(),
                **({"privacy": result.privacy.as_dict()} if result.privacy is not None else {}),
            },
        )
        session.set_arrays(arrays)
        save_adapter(session.model, run.adapter_dir(FINAL), adapter_meta(cfg, setting=setting, sites=sites))
    evaluate_into(run, session, arrays, bench, eval_sites, cfg)
    run.finish()
