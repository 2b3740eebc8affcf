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

Writes ``<out>/study.md``, ``study.csv``, ``study.json``, ``study_paired.csv``, ``plots/*.png`` and one run folder
per model. Every LLM row keeps per-document counts in its evaluation, so the study reports 95% document-level
bootstrap intervals (``fedmedlora.intervals``) beside its scores and a paired comparison of the rows that the
paper's claims rest on (federated against single-site on the sites they never saw, Fed-MedLoRA+ against
Fed-MedLoRA, federated against centralized, adapted against from-base on the new site), scored on the same
documents. With ``seeds > 1`` every trained row runs again with seed ``seed + k`` under ``<out>/seed-<seed+k>/``
(a study of its own) and the study adds the mean ± sd over seeds of each row's scores.

At its end the study writes ``report.html``, the whole study on one page (``fedmedlora.html_report``).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from fedmedlora import progress as progress_events
from fedmedlora.benchmark import open_benchmark
from fedmedlora.config import ConfigError, RunConfig, load_config
from fedmedlora.federation.checkpoint import ResumeError, checkpointed_round
from fedmedlora.federation.simulation import FederationResult, run_federation
from fedmedlora.html_report import ReportError, write_report
from fedmedlora.intervals import DEFAULT_LEVEL, compare_models, row_intervals
from fedmedlora.lm.session import get_session
from fedmedlora.recipes.encoder_study import encoder_rows
from fedmedlora.recipes.evaluate import evaluate_into
from fedmedlora.recipes.local import Setting, run_setting
from fedmedlora.reports import (
    comparison_csv,
    comparison_rows,
    paired_csv,
    plot_privacy,
    plot_rounds,
    seed_summary,
    study_markdown,
    unseen_site_rows,
)
from fedmedlora.runs import (
    CONFIG_FILE,
    FINAL,
    ROUNDS_FILE,
    SEED_DIR,
    STUDY_CSV,
    STUDY_ENCODER_DIR,
    STUDY_JSON,
    STUDY_MD,
    STUDY_PAIRED_CSV,
    STUDY_ROW_FILE,
    RunDir,
    eval_file,
    federated_row_dir,
)

FED_METHODS = {
    "fedmedlora": "Fed-MedLoRA",
    "fedmedlora+": "Fed-MedLoRA+",
    "fedsa": "FedSA-LoRA",
    "ffa": "FFA-LoRA",
    "rolora": "RoLoRA",
}
SKIPPABLE = ("zero_shot", "single_site", "centralized", "new_site")
#: ``study --privacy``: federated rows under DP or SecAgg+ (row name → (rule, config overrides)), each compared with
#: the plain row of its rule. Record-level budgets are over the whole run (``target_epsilon`` calibrates the noise
#: for all rounds); the unit of privacy is ``train.dp.unit``.
PRIVACY_ROWS: dict[str, tuple[str, list[str]]] = {
    "Fed-MedLoRA + DP-SGD (ε=8)": ("fedmedlora", ["train.dp.target_epsilon=8"]),
    "Fed-MedLoRA + DP-SGD (ε=3)": ("fedmedlora", ["train.dp.target_epsilon=3"]),
    "Fed-MedLoRA + client DP (ε=8)": ("fedmedlora", ["federation.dp.target_epsilon=8"]),
    "Fed-MedLoRA+ private (site losses, SecAgg+)": (
        "fedmedlora+",
        ["federation.plus_loss_source=site", "federation.secure_aggregation=true"],
    ),
}


def _scaled(cfg: RunConfig, factor: float) -> RunConfig:
    """``cfg`` with its training budget multiplied by ``factor`` (steps if set, else epochs)."""
    t = cfg.train
    if t.max_steps is not None:
        train = t.model_copy(update={"max_steps": max(1, round(t.max_steps * factor))})
    else:
        train = t.model_copy(update={"epochs": t.epochs * factor})
    return cfg.model_copy(update={"train": train})


def _same_run(stored: RunConfig, wanted: RunConfig) -> bool:
    """Equal configurations, ``eval.bootstrap_resamples`` aside (it changes no training and no generation; the
    study recomputes its intervals from the stored per-document counts)."""
    ev = stored.eval.model_copy(update={"bootstrap_resamples": wanted.eval.bootstrap_resamples})
    return stored.model_copy(update={"eval": ev}) == wanted


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    """``cfg`` trained with ``seed`` but scored on the first seed's evaluation sample (``eval.sample_seed``), so
    the spread over seeds is the spread of training, not of which test sentences were drawn."""
    sample_seed = cfg.seed if cfg.eval.sample_seed is None else cfg.eval.sample_seed
    return cfg.model_copy(update={"seed": seed, "eval": cfg.eval.model_copy(update={"sample_seed": sample_seed})})


def run_study(
    cfg: RunConfig,
    out: str | Path,
    *,
    fed_methods: Sequence[str] = ("fedmedlora", "fedmedlora+"),
    external: Sequence[str] | None = None,
    encoder: bool = False,
    encoder_settings: dict[str, Any] | None = None,
    skip: Sequence[str] = (),
    seeds: int = 1,
    privacy: Mapping[str, tuple[str, Sequence[str]]] | None = None,
    progress: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Run the study and write its comparison table. Returns the table rows and per-model extras.

    Args:
        cfg: the base configuration (model, LoRA, training budget per round, federation rounds, evaluation caps).
        out: study folder.
        fed_methods: aggregation rules to run (keys of ``FED_METHODS``).
        external: extra evaluation-only sites of the benchmark (never trained on); default: the benchmark's
            ``external`` sites.
        encoder: add encoder-baseline rows (single-site, centralized, federated full / LoRA).
        encoder_settings: ``fedmedlora.encoder.settings.EncoderSettings`` fields for those rows.
        skip: settings to leave out (``SKIPPABLE``: zero_shot, single_site, centralized, new_site).
        seeds: how many seeds (``cfg.seed``, ``cfg.seed + 1``, ...) to train every trained LLM row with; the
            rows of seed ``cfg.seed + k`` (k ≥ 1) go to ``<out>/seed-<cfg.seed + k>/``, the zero-shot row and the
            encoder rows run once. With more than one, the study adds mean ± sd over seeds.
        privacy: extra federated rows under DP or SecAgg+, row name → (rule, config overrides) (e.g.
            ``PRIVACY_ROWS``); each is compared with the plain row of its rule (when that rule is in
            ``fed_methods``) and the DP rows are plotted F1 against ε.
    """
    if seeds < 1:
        raise ValueError(f"seeds: need at least 1, got {seeds}")
    all_seeds = [cfg.seed + k for k in range(seeds)]
    study = Study(
        cfg,
        out,
        fed_methods=fed_methods,
        external=external,
        progress=progress,
        seeds=all_seeds if seeds > 1 else (),
        privacy=privacy,
    )
    progress_events.plan(
        _planned_rows(study, skip, encoder) + (seeds - 1) * _planned_rows(study, (*skip, "zero_shot"), False)
    )
    with study.run.recording_end():  # Ctrl-C, SIGTERM or an error: the study's run.json says so, never "running"
        _run_rows(study, skip, encoder=encoder, encoder_settings=encoder_settings)
        per_seed = {cfg.seed: study.results}
        for seed in all_seeds[1:]:
            tag = f"[study] seed {seed}: "
            sub = Study(
                seed_config(cfg, seed),
                study.out / SEED_DIR.format(seed=seed),
                fed_methods=fed_methods,
                external=study.external,
                progress=lambda m, tag=tag: progress(m.replace("[study] ", tag, 1)),
                privacy=privacy,
            )
            sub.row_prefix = f"seed {seed}: "
            with sub.run.recording_end():
                _run_rows(sub, (*skip, "zero_shot"), encoder=False)
                sub.write()
            per_seed[seed] = sub.results
        res = study.write(per_seed=per_seed if seeds > 1 else None)
    try:  # the tables are on disk: a report that cannot be written says so and how to rebuild it
        progress(f"report.html: {write_report(study.out)}")
    except (ReportError, OSError) as e:
        progress(f"report.html not written ({e}); rebuild it with `fedmedlora report {study.out}`")
    except Exception as e:  # a bug in the report must not fail a finished study; its message may quote note text
        progress(f"report.html not written ({type(e).__name__}); `fedmedlora report {study.out}` rebuilds it, logs why")
    return res


def _row_plan(
    study: Study, skip: Sequence[str], *, encoder: bool = False, encoder_settings: dict[str, Any] | None = None
) -> list[tuple[int, Callable[[], Any]]]:
    """Every row of one study folder, in the table's order: ``(rows it makes, the call that runs or reuses them)``.
    One list for both running the rows and sizing the progress display."""
    rounds = study.cfg.federation.rounds
    train_sites = study.train_sites
    plan: list[tuple[int, Callable[[], Any]]] = []
    if "zero_shot" not in skip:
        plan.append((1, partial(study.local, "zero-shot", "zero_shot", study.cfg)))
    if "single_site" not in skip:
        for site in train_sites:
            cfg = _scaled(study.cfg, rounds)
            plan.append((1, partial(study.local, f"single-site ({site})", "single_site", cfg, sites=[site])))
    if "centralized" not in skip:
        factor = rounds * len(train_sites) if study.cfg.train.max_steps is not None else rounds
        cfg = _scaled(study.cfg, factor)
        plan.append((1, partial(study.local, "centralized", "centralized", cfg, sites=train_sites)))
    for rule in study.fed_methods:
        plan.append((1, partial(study.federated, rule)))
    for name, (rule, overrides) in study.privacy.items():
        plan.append((1, partial(study.federated, rule, name=name, overrides=overrides)))
    if study.new_site and "new_site" not in skip:
        plan.append((2 if study.fed_methods else 1, study.new_site_rows))  # adapted (if federated) and from base
    if encoder:
        plan.append((1, partial(study.encoder_rows, encoder_settings)))
    return plan


def _planned_rows(study: Study, skip: Sequence[str], encoder: bool) -> int:
    """How many rows ``_run_rows`` runs (or reuses) in ``study``: the length of the progress display."""
    return sum(n for n, _ in _row_plan(study, skip, encoder=encoder))


def _run_rows(
    study: Study, skip: Sequence[str], *, encoder: bool = False, encoder_settings: dict[str, Any] | None = None
) -> None:
    """Every row of one study folder, in the table's order."""
    for _, run in _row_plan(study, skip, encoder=encoder, encoder_settings=encoder_settings):
        run()


class Study:
    """One study folder being filled: the benchmark, the shared model session, and every row's results.

    Each row is a run folder under ``out``; a finished row of the same configuration, evaluation sites and
    starting adapter is reused (``study_row.json`` records what it was run with), and an interrupted federation
    resumes from its last checkpoint, so a study that is interrupted or extended goes on where it was.
    """

    def __init__(
        self,
        cfg: RunConfig,
        out: str | Path,
        *,
        fed_methods: Sequence[str],
        external: Sequence[str] | None,
        progress: Callable[[str], Any],
        seeds: Sequence[int] = (),
        privacy: Mapping[str, tuple[str, Sequence[str]]] | None = None,
    ) -> None:
        self.privacy = {k: (rule, list(v)) for k, (rule, v) in (privacy or {}).items()}
        unknown = sorted({rule for rule, _ in self.privacy.values()} - set(FED_METHODS))
        if unknown:
            raise ValueError(f"privacy rows name unknown rules {unknown}; choose from {sorted(FED_METHODS)}")
        clash = set(self.privacy) & set(FED_METHODS.values())
        if clash:
            raise ValueError(f"privacy rows may not reuse the names of the federated rows: {sorted(clash)}")
        self.t_start = time.perf_counter()
        self.out = Path(out)
        self.progress = progress
        self.bench = bench = open_benchmark(cfg.data.benchmark)
        self.train_sites = list(cfg.federation.sites or bench.train_sites)
        self.new_site = bench.new_site
        self.external = list(external) if external is not None else list(bench.external_sites)
        for s in [*self.train_sites, *self.external]:
            if s not in bench.sites:
                raise ValueError(f"unknown site {s!r}; the benchmark has {sorted(bench.sites)}")
        bad = set(fed_methods) - set(FED_METHODS)
        if bad:
            raise ValueError(f"unknown federated method(s) {sorted(bad)}; choose from {sorted(FED_METHODS)}")
        if set(self.external) & set(self.train_sites):
            raise ValueError(
                f"external sites {sorted(set(self.external) & set(self.train_sites))} are also training sites"
            )
        self.fed_methods = list(fed_methods)
        self.eval_sites = [*self.train_sites, *self.external, *([self.new_site] if self.new_site else [])]
        self.cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"sites": self.train_sites})})
        self.run = RunDir(
            self.out,
            self.cfg,
            command="study",
            train_sites=self.train_sites,
            external=self.external,
            new_site=self.new_site,
            **({"seeds": list(seeds)} if seeds else {}),
        )
        # one loaded model for every setting (the federation's clients use the same process-wide session)
        self.session = get_session(self.cfg)
        self.results: dict[str, dict[str, Any]] = {}
        self.extras: dict[str, dict[str, Any]] = {}
        self.fed_rounds: dict[str, list[dict[str, Any]]] = {}
        self.fed_dirs: dict[str, Path] = {}
        self.new_site_pair: tuple[str, str] | None = None  # (adapted, from base) row names
        self.row_prefix = ""  # how the progress display names this folder's rows ("seed 15: " for a second seed)

    def _row_done(self, name: str, t0: float | None) -> None:
        """Tell the progress display that row ``name`` is finished (``t0``: when it started; ``None``: reused)."""
        seconds = time.perf_counter() - t0 if t0 is not None else 60 * float(self.extras[name].get("minutes", 0))
        f1 = progress_events.headline_f1(self.results[name]) if name in self.results else None
        progress_events.row_finished(self.row_prefix + name, f1, seconds)

    # -- rows ----------------------------------------------------------------------------------------------------
    def local(self, name: str, setting: Setting, run_cfg: RunConfig, **kw: Any) -> None:
        """A non-federated row (``run_setting``), evaluated on the study's sites unless ``eval_sites`` is given."""
        kw.setdefault("eval_sites", self.eval_sites)
        what = {"eval_sites": list(kw.get("eval_sites") or []), "init_adapter": str(kw.get("init_adapter") or "")}
        if self._reuse(self.out / name, run_cfg, name, what):
            self._row_done(name, None)
            return
        if (self.out / name).exists():
            shutil.rmtree(self.out / name)  # an incomplete or differently configured run: start it again
        self.progress(f"[study] {name}")
        progress_events.row_started(self.row_prefix + name)
        t0 = time.perf_counter()
        run = run_setting(setting, run_cfg, self.out / name, session=self.session, command=f"study:{setting}", **kw)
        self.results[name] = run.read_json(eval_file("test"))
        recs = run.read_jsonl(ROUNDS_FILE)
        self.extras[name] = {
            "train steps": sum(r.get("steps", 0) for r in recs),
            "minutes": round((time.perf_counter() - t0) / 60, 1),
        }
        run.write_json(STUDY_ROW_FILE, {**self.extras[name], "_reuse_key": what})
        self._row_done(name, t0)

    def federated(self, rule: str, *, name: str | None = None, overrides: Sequence[str] = ()) -> None:
        """A federated row through the real Flower apps (in-process simulation), resumed if interrupted.

        ``name`` and ``overrides`` make a variant row of ``rule`` (the privacy rows): its config is the study's
        with the overrides applied, its folder is named after the row."""
        cfg = self.cfg
        if overrides:
            cfg = load_config(overrides=list(overrides), **cfg.model_dump(mode="json"))
        fcfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"strategy": rule})})
        name = name or FED_METHODS[rule]
        fed_dir = self.out / federated_row_dir(name)
        if not overrides:
            self.fed_dirs[rule] = fed_dir
        what = {"eval_sites": list(self.eval_sites), "init_adapter": ""}
        if self._reuse(fed_dir, fcfg, name, what):
            self.fed_rounds[name] = RunDir(fed_dir).read_jsonl(ROUNDS_FILE)
            self._row_done(name, None)
            return
        progress_events.row_started(self.row_prefix + name)
        t0 = time.perf_counter()
        result, done_before = self._resume_federation(fcfg, fed_dir, name)
        if result is None:
            if fed_dir.exists():
                shutil.rmtree(fed_dir)  # a differently configured run: start it again
            self.progress(f"[study] {name}")
            result = run_federation(fcfg, fed_dir)
        run = RunDir(fed_dir)
        with run.recording_end():  # interrupted while scoring: the row's run.json says so
            evals = evaluate_into(run, self.session, result.arrays, self.bench, self.eval_sites, fcfg)
        self.results[name] = evals
        recs = [r for r in result.rounds if r.get("round", 0) > 0]  # every round, an interrupted call's too
        self.fed_rounds[name] = result.rounds
        per_round = [sum(r.get("bytes_up", {}).values()) + sum(r.get("bytes_down", {}).values()) for r in recs]
        rounds, n_sites = cfg.federation.rounds, len(self.train_sites)
        self.extras[name] = {
            "train steps": (cfg.train.max_steps or 0) * rounds * n_sites or "epochs",
            "MB per round (all sites, up+down)": round(max(per_round) / 1e6, 2) if per_round else 0,
            "minutes": round((time.perf_counter() - t0 + done_before) / 60, 1),
            **privacy_extras(result.rounds, fcfg),
        }
        run.write_json(STUDY_ROW_FILE, {**self.extras[name], "_reuse_key": what})
        self._row_done(name, t0)

    def new_site_rows(self) -> None:
        """The new low-resource site: the federated adapter adapted to it, against training from the base model."""
        new_site, scaled = self.new_site, _scaled(self.cfg, self.cfg.federation.rounds)
        assert new_site is not None
        base_rule = "fedmedlora" if "fedmedlora" in self.fed_dirs else next(iter(self.fed_dirs), None)
        from_base = f"{new_site} only (from base)"
        if base_rule is not None:
            adapted = f"{FED_METHODS[base_rule]} → adapted to {new_site}"
            self.new_site_pair = (adapted, from_base)
            self.local(
                adapted,
                "adapt",
                scaled,
                sites=[new_site],
                eval_sites=[new_site],
                init_adapter=RunDir(self.fed_dirs[base_rule]).adapter_dir(FINAL),
            )
        self.local(from_base, "local_only", scaled, sites=[new_site], eval_sites=[new_site])

    def encoder_rows(self, settings: dict[str, Any] | None) -> None:
        """The encoder (BERT-style) baseline rows (``fedmedlora.recipes.encoder_study``)."""
        self.progress("[study] encoder baseline")
        progress_events.row_started(self.row_prefix + "encoder baseline")
        t0 = time.perf_counter()
        enc_results, enc_extras = encoder_rows(
            self.cfg, self.bench, self.train_sites, self.eval_sites, self.out / STUDY_ENCODER_DIR, settings=settings
        )
        self.results.update(enc_results)
        self.extras.update(enc_extras)
        progress_events.row_finished(self.row_prefix + "encoder baseline", None, time.perf_counter() - t0)

    # -- the table -----------------------------------------------------------------------------------------------
    def paired_specs(self) -> list[dict[str, Any]]:
        """The paired comparisons of the study (A vs B on which sites), for the rows it holds.

        Each federated row against each single-site row on that row's unseen sites (the other training sites,
        the external sites and the new site); Fed-MedLoRA+ against Fed-MedLoRA and each federated row against
        centralized, in-domain and on the held-out sites (external + new); the adapted model against training
        from the base model on the new site.
        """
        res, specs = self.results, []
        fed = [FED_METHODS[r] for r in self.fed_methods if FED_METHODS[r] in res]
        held_out = [*self.external, *([self.new_site] if self.new_site else [])]

        def add(kind: str, a: str, b: str, sites: Sequence[str]) -> None:
            if a in res and b in res and sites:
                specs.append({"kind": kind, "comparison": f"{a} vs {b}", "a": a, "b": b, "sites": list(sites)})

        for f in fed:
            for s in self.train_sites:
                unseen = [*(t for t in self.train_sites if t != s), *held_out]
                add(f"{f} vs single-site models, on their unseen sites", f, f"single-site ({s})", unseen)
        for sites in (self.train_sites, held_out):
            add("Fed-MedLoRA+ vs Fed-MedLoRA", "Fed-MedLoRA+", "Fed-MedLoRA", sites)
        for f in fed:
            for sites in (self.train_sites, held_out):
                add(f"{f} vs centralized", f, "centralized", sites)
        for p, (rule, _) in self.privacy.items():
            for sites in (self.train_sites, held_out):
                add(f"{p} vs {FED_METHODS[rule]}", p, FED_METHODS[rule], sites)
        if self.new_site_pair and self.new_site:
            adapted, from_base = self.new_site_pair
            add("adapted vs from base, on the new site", adapted, from_base, [self.new_site])
        return specs

    def paired(self) -> list[dict[str, Any]]:
        """``paired_specs`` scored: one row per comparison and (task, rule), ``compare_models``' fields added."""
        n = self.cfg.eval.bootstrap_resamples
        if n <= 0:
            return []
        rows = []
        for spec in self.paired_specs():
            for r in compare_models(
                self.results[spec["a"]], self.results[spec["b"]], spec["sites"], n_resamples=n, seed=self.cfg.seed
            ):
                rows.append({**spec, **r})
        return rows

    def write(self, per_seed: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
        """``study.md``, ``study.csv``, ``study.json``, ``study_paired.csv`` and the per-round plots; returns rows,
        extras, Markdown. ``per_seed`` (``{seed: results}``, more than one seed): add mean ± sd over seeds."""
        groups: dict[str, list[str]] = {f"{s}": [s] for s in self.train_sites}
        groups["in-domain (all)"] = self.train_sites
        for s in self.external:
            groups[f"external: {s}"] = [s]
        if self.new_site:
            groups[f"new site: {self.new_site}"] = [self.new_site]
        # the paper's generalisation claim: federated models against each single-site model on the sites it never saw
        compare = {
            "LLM adapters": [*(FED_METHODS[r] for r in self.fed_methods), *self.privacy, "centralized"],
            "encoder models": ["encoder federated-full", "encoder federated-lora", "encoder centralized"],
        }
        prefix = {"LLM adapters": "", "encoder models": "encoder "}
        unseen = {
            kind: unseen_site_rows(
                self.results, {f"{prefix[kind]}single-site ({s})": s for s in self.train_sites}, self.train_sites, c
            )
            for kind, c in compare.items()
        }
        plots = plot_rounds(self.fed_rounds, self.out / "plots") if self.fed_rounds else []
        if self.privacy:
            plain = sorted({FED_METHODS[rule] for rule, _ in self.privacy.values()})
            dp_rows = [p for p in self.privacy if any(k.startswith("ε") for k in self.extras.get(p, {}))]
            points = privacy_points(self.results, self.extras, [*dp_rows, *plain], self.train_sites)
            plots += plot_privacy(points, self.out / "plots")
        n_resamples, seed = self.cfg.eval.bootstrap_resamples, self.cfg.seed
        bootstrap = {"resamples": n_resamples, "seed": seed, "level": DEFAULT_LEVEL, "unit": "document"}
        intervals = row_intervals(self.results, groups, n_resamples=n_resamples, seed=seed) if n_resamples else None
        paired = self.paired()
        seeds = None
        if per_seed and len(per_seed) > 1:
            seeds = {"seeds": sorted(per_seed), "rows": seed_summary(per_seed, groups)}
        rows, md = study_markdown(
            self.results,
            groups,
            self.extras,
            unseen,
            compare,
            plots,
            title=f"Study on {self.bench.name}",
            intervals=intervals,
            paired=paired,
            bootstrap=bootstrap,
            seeds=seeds,
        )
        self.run.write_text(STUDY_MD, md)
        self.run.write_text(STUDY_CSV, comparison_csv(rows, intervals, seeds["rows"] if seeds else None))
        self.run.write_text(STUDY_PAIRED_CSV, paired_csv(paired))
        summary: dict[str, Any] = {
            "rows": [{"model": m, "group": g, **h, **(intervals or {}).get(m, {}).get(g, {})} for m, g, h in rows],
            "extras": self.extras,
            "groups": groups,
            "unseen_sites": unseen,
            "bootstrap": bootstrap,
            "paired": paired,
        }
        if seeds:
            summary["seeds"] = seeds
        self.run.write_json(STUDY_JSON, summary)
        self.run.finish(minutes=round((time.perf_counter() - self.t_start) / 60, 1))
        return {"rows": rows, "extras": self.extras, "markdown": md}

    # -- reuse and resume ----------------------------------------------------------------------------------------
    def _resume_federation(self, cfg: RunConfig, fed_dir: Path, name: str) -> tuple[FederationResult | None, float]:
        """Continue an interrupted federation in ``fed_dir`` from its last checkpointed round.

        Returns the federation result and the seconds its earlier rounds took, or ``(None, 0.0)`` when there is
        no checkpoint or the run there was made with a different configuration (the caller starts it again).
        """
        done = checkpointed_round(fed_dir)
        if done is None:
            return None, 0.0
        before = RunDir(fed_dir).read_jsonl(ROUNDS_FILE)
        seconds = sum(float(r.get("seconds", 0.0)) for r in before if 0 < r.get("round", 0) <= done)
        try:
            self.progress(f"[study] {name}: resuming the interrupted run in {fed_dir} after round {done}")
            return run_federation(cfg, fed_dir, resume=True), seconds
        except ResumeError as e:
            self.progress(f"[study] {name}: cannot resume ({e}); starting again")
            return None, 0.0

    def _reuse(self, run_path: Path, run_cfg: RunConfig, name: str, what: dict[str, Any]) -> bool:
        """Reuse a finished run of the same configuration, evaluation sites and starting adapter (an interrupted
        or extended study continues where it was)."""
        needed = [run_path / CONFIG_FILE, run_path / eval_file("test"), run_path / STUDY_ROW_FILE]
        if not all(p.is_file() for p in needed):
            return False
        try:
            if not _same_run(load_config(run_path / CONFIG_FILE), run_cfg):
                return False
        except ConfigError:
            return False
        run = RunDir(run_path)
        row = run.read_json(STUDY_ROW_FILE)
        if row.pop("_reuse_key", None) != what:
            return False
        self.results[name] = run.read_json(eval_file("test"))
        self.extras[name] = row
        self.progress(f"[study] {name}: reusing the finished run in {run_path}")
        return True


def privacy_extras(rounds: Sequence[Mapping[str, Any]], cfg: RunConfig) -> dict[str, Any]:
    """The table's privacy columns of a federated row: ε spent (record level: the largest over sites) and δ."""
    last = next((r for r in reversed(rounds) if r.get("round", 0) > 0 and r.get("privacy")), None)
    if last is None:
        return {}
    out: dict[str, Any] = {}
    if "sites" in last["privacy"]:
        out["ε record-level (max over sites)"] = round(max(last["privacy"]["sites"].values()), 2)
        out["δ record"] = cfg.train.dp.delta
    if "client" in last["privacy"]:
        out["ε client-level"] = round(last["privacy"]["client"]["epsilon"], 2)
        out["δ client"] = cfg.federation.dp.delta
    return out


def privacy_points(
    results: Mapping[str, Any], extras: Mapping[str, Mapping[str, Any]], rows: Sequence[str], sites: Sequence[str]
) -> list[dict[str, Any]]:
    """(row, ε, in-domain NER / RE strict F1) of the rows present; ε is ``inf`` for a non-private row."""
    points = []
    for model, _group, h in comparison_rows({r: results[r] for r in rows if r in results}, {"in": list(sites)}):
        ex = extras.get(model, {})
        eps = ex.get("ε record-level (max over sites)", ex.get("ε client-level", math.inf))
        kind = "record" if "ε record-level (max over sites)" in ex else "client" if "ε client-level" in ex else "none"
        points.append(
            {"row": model, "epsilon": eps, "kind": kind, **{c: h.get(c) for c in ("ner_strict_f1", "re_strict_f1")}}
        )
    return points


def load_study(out: str | Path) -> dict[str, Any]:
    return json.loads((Path(out) / STUDY_JSON).read_text(encoding="utf-8"))
