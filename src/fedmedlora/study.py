"""The study: every setting users compare, on one benchmark, in one command, into one comparison table.

Owns the orchestration of ``fedmedlora study``:

1. zero-shot (the base model through the same prompts);
2. single-site: one adapter per training site, each trained only on its own data;
3. centralized: one adapter on the pooled data of all training sites (the upper bound);
4. Fed-MedLoRA and Fed-MedLoRA+ (and optionally FedSA-LoRA / FFA-LoRA) through the real Flower apps;
5. the new low-resource site: each model evaluated directly, then the Fed-MedLoRA adapter adapted with the new site's
   few training documents (``adapt``) against training from the base model on the same documents (``local_only``);
6. optional encoder baseline rows (``fedmedlora.encoder``).

Compute is matched: a federated site does ``rounds × train.max_steps`` local steps (or ``rounds × train.epochs``);
a single-site model gets the same number of steps on its site; the centralized model gets the federation's total
(``rounds × steps × number of sites``, or ``rounds × epochs`` over the pooled data).

Writes ``<out>/study.md``, ``study.csv``, ``study.json``, ``plots/*.png`` and one run folder per model.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedmedlora.config import RunConfig
from fedmedlora.runs import RunDir

FED_METHODS = {"fedmedlora": "Fed-MedLoRA", "fedmedlora+": "Fed-MedLoRA+", "fedsa": "FedSA-LoRA", "ffa": "FFA-LoRA"}


def _scaled(cfg: RunConfig, factor: float) -> RunConfig:
    """``cfg`` with its training budget multiplied by ``factor`` (steps if set, else epochs)."""
    t = cfg.train
    if t.max_steps is not None:
        train = t.model_copy(update={"max_steps": max(1, round(t.max_steps * factor))})
    else:
        train = t.model_copy(update={"epochs": t.epochs * factor})
    return cfg.model_copy(update={"train": train})


def run_study(
    cfg: RunConfig,
    out: str | Path,
    *,
    fed_methods: Sequence[str] = ("fedmedlora", "fedmedlora+"),
    external: Sequence[str] | None = None,
    encoder: bool = False,
    encoder_settings: dict[str, Any] | None = None,
    skip: Sequence[str] = (),
    progress=print,
) -> dict[str, Any]:
    """Run the study and write its comparison table. Returns the table rows and per-model extras.

    Args:
        cfg: the base configuration (model, LoRA, training budget per round, federation rounds, evaluation caps).
        out: study folder.
        fed_methods: aggregation rules to run (keys of ``FED_METHODS``).
        external: extra evaluation-only sites of the benchmark (never trained on); default: the benchmark's
            ``external`` sites.
        encoder: add encoder-baseline rows (single-site, centralized, federated full / LoRA).
        encoder_settings: ``fedmedlora.encoder.train.EncoderSettings`` fields for those rows.
        skip: settings to leave out (``zero_shot``, ``single_site``, ``centralized``, ``new_site``).
    """
    from fedmedlora.experiments import Session, evaluate_arrays, open_benchmark, run_setting, write_eval
    from fedmedlora.federation.client_app import get_session
    from fedmedlora.federation.simulation import run_federation
    from fedmedlora.reports import (
        comparison_csv,
        comparison_markdown,
        comparison_rows,
        plot_rounds,
        unseen_site_markdown,
        unseen_site_rows,
    )

    t_start = time.perf_counter()
    out = Path(out)
    bench = open_benchmark(cfg)
    train_sites = list(cfg.federation.sites or bench.train_sites)
    new_site = bench.new_site
    external = list(external) if external is not None else list(bench.external_sites)
    for s in [*train_sites, *external]:
        if s not in bench.sites:
            raise ValueError(f"unknown site {s!r}; the benchmark has {sorted(bench.sites)}")
    bad = set(fed_methods) - set(FED_METHODS)
    if bad:
        raise ValueError(f"unknown federated method(s) {sorted(bad)}; choose from {sorted(FED_METHODS)}")
    if set(external) & set(train_sites):
        raise ValueError(f"external sites {sorted(set(external) & set(train_sites))} are also training sites")
    eval_sites = [*train_sites, *external, *([new_site] if new_site else [])]
    cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"sites": train_sites})})
    study = RunDir(out, cfg, command="study", train_sites=train_sites, external=external, new_site=new_site)
    rounds = cfg.federation.rounds

    # one loaded model for every setting (the federation's clients use the same process-wide session)
    session: Session = get_session(cfg)
    results: dict[str, dict[str, Any]] = {}
    extras: dict[str, dict[str, Any]] = {}
    fed_rounds: dict[str, list[dict[str, Any]]] = {}

    def local(name: str, setting: str, run_cfg: RunConfig, **kw: Any) -> None:
        what = {"eval_sites": list(kw.get("eval_sites") or []), "init_adapter": str(kw.get("init_adapter") or "")}
        if _reuse(out / name, run_cfg, name, results, extras, progress, what):
            return
        if (out / name).exists():
            shutil.rmtree(out / name)  # an incomplete or differently configured run: start it again
        progress(f"[study] {name}")
        t0 = time.perf_counter()
        run = run_setting(setting, run_cfg, out / name, session=session, command=f"study:{setting}", **kw)
        results[name] = run.read_json("eval/test.json")
        recs = run.read_jsonl("rounds.jsonl")
        extras[name] = {
            "train steps": sum(r.get("steps", 0) for r in recs),
            "minutes": round((time.perf_counter() - t0) / 60, 1),
        }
        run.write_json("study_row.json", {**extras[name], "_reuse_key": what})

    if "zero_shot" not in skip:
        local("zero-shot", "zero_shot", cfg, eval_sites=eval_sites)
    if "single_site" not in skip:
        for site in train_sites:
            local(f"single-site ({site})", "single_site", _scaled(cfg, rounds), sites=[site], eval_sites=eval_sites)
    if "centralized" not in skip:
        factor = rounds * len(train_sites) if cfg.train.max_steps is not None else rounds
        local("centralized", "centralized", _scaled(cfg, factor), sites=train_sites, eval_sites=eval_sites)

    fed_dirs: dict[str, Path] = {}
    for rule in fed_methods:
        name = FED_METHODS[rule]
        fcfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"strategy": rule})})
        fed_dir = out / name.lower().replace("+", "-plus")
        fed_dirs[rule] = fed_dir
        what = {"eval_sites": list(eval_sites), "init_adapter": ""}
        if _reuse(fed_dir, fcfg, name, results, extras, progress, what):
            fed_rounds[name] = RunDir(fed_dir).read_jsonl("rounds.jsonl")
            continue
        t0 = time.perf_counter()
        result, done_before = _resume_federation(fcfg, fed_dir, name, progress)
        if result is None:
            if fed_dir.exists():
                shutil.rmtree(fed_dir)  # a differently configured run: start it again
            progress(f"[study] {name}")
            result = run_federation(fcfg, fed_dir)
        run = RunDir(fed_dir)
        evals = evaluate_arrays(session, result.arrays, bench, eval_sites, fcfg)
        write_eval(run, "test", evals)
        results[name] = evals
        recs = [r for r in result.rounds if r.get("round", 0) > 0]  # every round, an interrupted call's too
        fed_rounds[name] = result.rounds
        per_round = [sum(r.get("bytes_up", {}).values()) + sum(r.get("bytes_down", {}).values()) for r in recs]
        extras[name] = {
            "train steps": (cfg.train.max_steps or 0) * rounds * len(train_sites) or "epochs",
            "MB per round (all sites, up+down)": round(max(per_round) / 1e6, 2) if per_round else 0,
            "minutes": round((time.perf_counter() - t0 + done_before) / 60, 1),
        }
        run.write_json("study_row.json", {**extras[name], "_reuse_key": what})

    if new_site and "new_site" not in skip:
        base_rule = "fedmedlora" if "fedmedlora" in fed_dirs else next(iter(fed_dirs), None)
        if base_rule is not None:
            local(
                f"{FED_METHODS[base_rule]} → adapted to {new_site}",
                "adapt",
                _scaled(cfg, rounds),
                sites=[new_site],
                eval_sites=[new_site],
                init_adapter=fed_dirs[base_rule] / "adapters" / "final",
            )
        local(
            f"{new_site} only (from base)", "local_only", _scaled(cfg, rounds), sites=[new_site], eval_sites=[new_site]
        )

    if encoder:
        from fedmedlora.encoder.study import encoder_rows

        progress("[study] encoder baseline")
        enc_results, enc_extras = encoder_rows(
            cfg, bench, train_sites, eval_sites, out / "encoder", settings=encoder_settings
        )
        results.update(enc_results)
        extras.update(enc_extras)

    groups: dict[str, list[str]] = {f"{s}": [s] for s in train_sites}
    groups["in-domain (all)"] = train_sites
    for s in external:
        groups[f"external: {s}"] = [s]
    if new_site:
        groups[f"new site: {new_site}"] = [new_site]
    rows = comparison_rows(results, groups)
    title = f"Study on {bench.name}: micro F1 (%)"
    md = comparison_markdown(rows, extras, title=title)
    md += (
        "\nstrict = exact span and type; lenient = overlapping span, same type. RE is scored with gold heads "
        "(the paper's protocol). In-domain (all) sums the counts of the training sites' test splits. "
        "Types a site does not annotate are never scored there.\n"
    )
    # the paper's generalisation claim: federated models against each single-site model on the sites it never saw
    unseen: dict[str, list[dict[str, Any]]] = {}
    for kind, prefix, compare in (
        ("LLM adapters", "", [*(FED_METHODS[r] for r in fed_methods), "centralized"]),
        ("encoder models", "encoder ", ["encoder federated-full", "encoder federated-lora", "encoder centralized"]),
    ):
        single = {f"{prefix}single-site ({s})": s for s in train_sites}
        unseen[kind] = unseen_site_rows(results, single, train_sites, compare)
        heading = f"Sites a single-site model did not train on ({kind}): micro F1 (%)"
        md += "\n" + unseen_site_markdown(unseen[kind], compare, title=heading)
    plots = plot_rounds(fed_rounds, out / "plots") if fed_rounds else []
    if plots:
        md += "\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots) + "\n"
    study.write_text("study.md", md)
    study.write_text("study.csv", comparison_csv(rows))
    study.write_json(
        "study.json",
        {
            "rows": [{"model": m, "group": g, **h} for m, g, h in rows],
            "extras": extras,
            "groups": groups,
            "unseen_sites": unseen,
        },
    )
    study.finish(minutes=round((time.perf_counter() - t_start) / 60, 1))
    return {"rows": rows, "extras": extras, "markdown": md}


def _resume_federation(cfg: RunConfig, fed_dir: Path, name: str, progress) -> tuple[Any, float]:
    """Continue an interrupted federation in ``fed_dir`` from its last checkpointed round.

    Returns the federation result and the seconds its earlier rounds took, or ``(None, 0.0)`` when there is no
    checkpoint or the run there was made with a different configuration (the caller starts it again).
    """
    from fedmedlora.federation.server_app import ResumeError, checkpointed_round
    from fedmedlora.federation.simulation import run_federation

    done = checkpointed_round(fed_dir)
    if done is None:
        return None, 0.0
    before = RunDir(fed_dir).read_jsonl("rounds.jsonl")
    seconds = sum(float(r.get("seconds", 0.0)) for r in before if 0 < r.get("round", 0) <= done)
    try:
        progress(f"[study] {name}: resuming the interrupted run in {fed_dir} after round {done}")
        return run_federation(cfg, fed_dir, resume=True), seconds
    except ResumeError as e:
        progress(f"[study] {name}: cannot resume ({e}); starting again")
        return None, 0.0


def _reuse(
    run_path: Path,
    run_cfg: RunConfig,
    name: str,
    results: dict[str, Any],
    extras: dict[str, Any],
    progress,
    what: dict[str, Any],
) -> bool:
    """Reuse a finished run of the same configuration, evaluation sites and starting adapter (an interrupted or
    extended study continues where it was)."""
    from fedmedlora.config import ConfigError, load_config

    needed = [run_path / "config.yaml", run_path / "eval" / "test.json", run_path / "study_row.json"]
    if not all(p.is_file() for p in needed):
        return False
    try:
        if load_config(run_path / "config.yaml") != run_cfg:
            return False
    except ConfigError:
        return False
    run = RunDir(run_path)
    row = run.read_json("study_row.json")
    if row.pop("_reuse_key", None) != what:
        return False
    results[name] = run.read_json("eval/test.json")
    extras[name] = row
    progress(f"[study] {name}: reusing the finished run in {run_path}")
    return True


def load_study(out: str | Path) -> dict[str, Any]:
    return json.loads((Path(out) / "study.json").read_text(encoding="utf-8"))
