"""The ``fedmedlora`` command line: a table of small commands that call library functions.

Each command resolves its options, calls one library function and prints where the results went. The pure core
is imported here; the layers that load torch, transformers or flwr (``fedmedlora.lm``, ``federation``,
``recipes``, ``encoder``, ``deploy``) are imported inside the commands, so ``fedmedlora --help`` stays fast.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import typer

from fedmedlora.benchmark import open_benchmark
from fedmedlora.cli.common import (
    STATE,
    BenchOpt,
    ConfigOpt,
    ForceOpt,
    SetOpt,
    fail,
    json_fields,
    report_unexpected,
    resolve,
    run_folder_of,
    user_errors,
    with_adapter_prompting,
)
from fedmedlora.cli.data import data_app
from fedmedlora.cli.deploy import deploy_app
from fedmedlora.config import RunConfig
from fedmedlora.runs import RunDir, RunDirError, eval_file, force_output_dir

# no locals in tracebacks, ever: a frame's locals hold clinical note text (issue 15)
app = typer.Typer(
    no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0], pretty_exceptions_show_locals=False
)
app.add_typer(data_app, name="data")
app.add_typer(deploy_app, name="deploy")


@app.callback()
def _options(
    ctx: typer.Context,
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="Show the libraries' own progress bars and warnings, and an unexpected error's whole traceback "
        "(no locals; its log file then keeps the error messages, which may quote note text).",
    ),
) -> None:
    """Options for every command: ``fedmedlora -v <command> ...``."""
    from fedmedlora import progress
    from fedmedlora.cli.console import quiet_libraries

    STATE.verbose = verbose
    ctx.with_resource(quiet_libraries(verbose))
    ctx.with_resource(progress.reporting(None, bars=verbose))  # fedmedlora's own tqdm bars too (extract, ...)


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM: stop like Ctrl-C, now and (should this exception be dropped in a finaliser) at the next step."""
    from fedmedlora import progress

    progress.request_stop(signum)
    raise SystemExit(128 + signum)


def _interrupt(signum: int, frame: object) -> None:
    """SIGINT (Ctrl-C): ``KeyboardInterrupt`` now, and the stop also requested for the next training step, decoding
    step or round, because Python drops an exception raised while a ``__del__`` runs."""
    from fedmedlora import progress

    progress.request_stop(signum)
    raise KeyboardInterrupt


def main() -> None:  # console-script entry point
    """Run the CLI; an unexpected error becomes one line naming the command, the error type and the log file
    that holds the traceback (no locals, no note text on the terminal). ``FEDMEDLORA_DEBUG=1`` re-raises."""
    # SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C, so every run folder records how it ended
    signal.signal(signal.SIGTERM, _terminate)
    # Ctrl-C / SIGINT stops the run even where the starting shell set it to "ignore" (a job started with `&`
    # from a script inherits that: it then ran to the end, ~70 s, instead of stopping; issue 15)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        app(standalone_mode=True)
    except SystemExit:
        raise
    except Exception as err:  # everything the commands did not turn into a one-line user error
        if os.environ.get("FEDMEDLORA_DEBUG"):
            raise
        command = [a for a in sys.argv[1:] if a not in ("-v", "--verbose")][:1]
        raise SystemExit(
            report_unexpected(err, command, verbose=STATE.verbose, run_folder=run_folder_of(sys.argv[1:]))
        ) from None


def _force(out: Path, command: str, force: bool, *, keep_same_kind: bool = False) -> None:
    """``--force``: let the run into ``out`` (``fedmedlora.runs.force_output_dir``) and say what that did."""
    if not force:
        return
    try:
        notes = force_output_dir(out, command, keep_same_kind=keep_same_kind)
    except RunDirError as e:
        raise fail(str(e)) from None
    for note in notes:
        typer.secho(note, fg=typer.colors.YELLOW, err=True)


def _warn_benchmark(cfg: RunConfig) -> None:
    """Say, before any work, what ``fedmedlora data check`` would find in the run's benchmark (a document in two
    splits, documents whose label set differs from the manifest's): visible, not fatal (the per-file errors —
    duplicate ids, misfiled documents — stop the run where the file is read)."""
    from fedmedlora.benchmark import BenchmarkError, check_benchmark

    try:
        problems = check_benchmark(open_benchmark(cfg.data.benchmark))
    except (BenchmarkError, ValueError, OSError):
        return  # the command itself reports an unusable benchmark, with its own message
    for problem in problems[:5]:
        typer.secho(f"warning: {problem}", fg=typer.colors.YELLOW, err=True)
    if len(problems) > 5:
        typer.secho(
            f"warning: ... and {len(problems) - 5} more (fedmedlora data check)", fg=typer.colors.YELLOW, err=True
        )


def _run_local(label: str, command: str, out: Path, force: bool, setting: str, cfg: RunConfig, **kwargs: Any) -> RunDir:
    """``run_setting`` for one command, under the progress display, with one summary line when it is done."""
    import time

    from fedmedlora import progress
    from fedmedlora.cli.console import progress_display
    from fedmedlora.recipes.local import run_setting

    _force(out, command, force)
    _warn_benchmark(cfg)
    t0 = time.perf_counter()
    try:
        with progress_display(label, STATE.verbose):
            progress.plan(1)
            progress.row_started(label)
            run = run_setting(setting, cfg, out, command=command, **kwargs)
            scores = run.read_json(eval_file("test"))
            progress.row_finished(label, progress.headline_f1(scores), time.perf_counter() - t0)
    except user_errors() as e:
        raise fail(str(e)) from None
    return run


# ---- single-site / centralized / zero-shot training, extraction, evaluation (fedmedlora.lm.train, .evaluate) ----


@app.command()
def train(
    setting: str = typer.Option(
        "single_site", help="zero_shot | single_site | centralized | adapt | local_only (see docs/settings.md)."
    ),
    site: list[str] = typer.Option(None, "--site", help="Training site(s) (repeatable). Default depends on setting."),
    eval_site: list[str] = typer.Option(None, "--eval-site", help="Sites to evaluate on (default: all)."),
    init_adapter: Path = typer.Option(None, help="Adapter folder to continue from (required for adapt)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write."),
    config: str = ConfigOpt,
    sets: list[str] = SetOpt,
    benchmark: Path = BenchOpt,
    force: bool = ForceOpt,
) -> None:
    """Train (or not, for zero_shot) one adapter without federation, then evaluate it on the benchmark."""
    cfg = resolve(config, sets, **{"data.benchmark": benchmark})
    if init_adapter is not None:
        cfg = with_adapter_prompting(cfg, init_adapter)
    valid = ("zero_shot", "single_site", "centralized", "adapt", "local_only")
    if setting not in valid:
        raise fail(f"--setting: {setting!r} is not one of {', '.join(valid)}")
    run = _run_local(
        f"train ({setting})",
        "train",
        out,
        force,
        setting,
        cfg,
        sites=site or None,
        eval_sites=eval_site or None,
        init_adapter=init_adapter,
    )
    typer.echo(f"run folder: {run.path}\n{(run.path / eval_file('test', '.md')).read_text()}")


@app.command()
def adapt(
    adapter: Path = typer.Option(..., help="The federated adapter folder to start from."),
    site: str = typer.Option(None, help="The new site (default: the benchmark's new site)."),
    out: Path = typer.Option(..., "--out", "-o"),
    config: str = ConfigOpt,
    sets: list[str] = SetOpt,
    benchmark: Path = BenchOpt,
    force: bool = ForceOpt,
) -> None:
    """Adapt a (federated) adapter to a new low-resource site with its few training documents."""
    cfg = with_adapter_prompting(resolve(config, sets, **{"data.benchmark": benchmark}), adapter)
    run = _run_local(
        "adapt",
        "adapt",
        out,
        force,
        "adapt",
        cfg,
        sites=[site] if site else None,
        eval_sites=[site] if site else None,
        init_adapter=adapter,
    )
    typer.echo(f"run folder: {run.path}\n{(run.path / eval_file('test', '.md')).read_text()}")


@app.command()
def evaluate(
    adapter: Path = typer.Option(None, help="Adapter folder (PEFT + fedmedlora.json); omit for zero-shot."),
    site: list[str] = typer.Option(None, "--site", help="Sites to evaluate (default: all)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write eval/ tables into."),
    config: str = ConfigOpt,
    sets: list[str] = SetOpt,
    benchmark: Path = BenchOpt,
    force: bool = ForceOpt,
) -> None:
    """Score an adapter (or the base model) on benchmark splits: strict/lenient P/R/F1 for NER and RE."""
    cfg = resolve(config, sets, **{"data.benchmark": benchmark})
    if adapter is not None:
        cfg = with_adapter_prompting(cfg, adapter)
    run = _run_local(
        "evaluate", "evaluate", out, force, "zero_shot", cfg, eval_sites=site or None, init_adapter=adapter
    )
    typer.echo(f"run folder: {run.path}\n{(run.path / eval_file('test', '.md')).read_text()}")


@app.command()
def extract(
    notes: list[Path] = typer.Argument(..., help="Note files: .txt (one note each), .jsonl ({id, text}) or folders."),
    adapter: Path = typer.Option(None, help="Adapter folder; omit for zero-shot."),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL: entities and modifiers with char offsets."),
    brat: Path = typer.Option(None, help="Also write BRAT standoff (.txt + .ann per note) into this folder."),
    html: Path = typer.Option(None, "--html", help="Also write the notes with the predicted spans highlighted."),
    entity: list[str] = typer.Option(None, "--entity", help="Entity types to extract (default: all four)."),
    modifier: list[str] = typer.Option(None, "--modifier", help="Modifier types (default: all 16)."),
    config: str = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Extract entities and modifiers from clinical notes (NER, then RE on the predicted entities)."""
    from fedmedlora.recipes.extract import extract_notes

    cfg = resolve(config, sets)
    if adapter is not None:
        cfg = with_adapter_prompting(cfg, adapter)
    try:
        if html is not None:
            from fedmedlora.html_report import check_html_path

            check_html_path(html, "--html")
        n = extract_notes(cfg, notes, out, adapter=adapter, brat_dir=brat, entities=entity, modifiers=modifier)
        if html is not None:
            from fedmedlora.extract import read_notes
            from fedmedlora.html_report import write_notes_html

            write_notes_html(read_notes(notes), out, html, title=f"Extraction: {', '.join(p.name for p in notes)}")
    except user_errors() as e:
        raise fail(str(e)) from None
    typer.echo(f"{n} notes -> {out}" + (f" (+ BRAT in {brat})" if brat else "") + (f" (+ HTML {html})" if html else ""))


# ---- federation (fedmedlora.federation) -----------------------------------------------------------------------


fed_app = typer.Typer(
    no_args_is_help=True, help="Federated training (Fed-MedLoRA, Fed-MedLoRA+, FedSA-LoRA, FFA-LoRA)."
)
app.add_typer(fed_app, name="fed")


@fed_app.command("run")
def fed_run(
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write (or to resume)."),
    resume: bool = typer.Option(False, help="Continue the run in --out after its last completed round."),
    evaluate_after: bool = typer.Option(True, "--eval/--no-eval", help="Score the final adapter on all sites."),
    config: str = ConfigOpt,
    sets: list[str] = SetOpt,
    benchmark: Path = BenchOpt,
    force: bool = ForceOpt,
) -> None:
    """Run a federation in-process: the real ServerApp + one ClientApp per site (see docs/federation.md)."""
    import time

    from fedmedlora import progress
    from fedmedlora.cli.console import progress_display
    from fedmedlora.federation.checkpoint import ResumeError
    from fedmedlora.federation.simulation import run_federation
    from fedmedlora.federation.strategies import FederationError
    from fedmedlora.lm.session import get_session
    from fedmedlora.recipes.evaluate import evaluate_into

    cfg = resolve(config, sets, **{"data.benchmark": benchmark})
    if force and resume:
        raise fail("--force clears the run in --out; --resume continues it: give one of them")
    _force(out, "federation", force)
    _warn_benchmark(cfg)
    label = f"fed run ({cfg.federation.strategy})"
    t0 = time.perf_counter()
    try:
        with progress_display("fed run", STATE.verbose):
            progress.plan(1)
            progress.row_started(label)
            result = run_federation(cfg, out, resume=resume)
            scores = None
            if evaluate_after:
                run = RunDir(out)
                with run.recording_end():  # interrupted while scoring: run.json says so
                    bench = open_benchmark(cfg.data.benchmark)
                    scores = evaluate_into(run, get_session(cfg), result.arrays, bench, list(bench.sites), cfg)
            progress.row_finished(label, progress.headline_f1(scores or {}), time.perf_counter() - t0)
    except (*user_errors(), ResumeError, FederationError) as e:
        raise fail(str(e)) from None
    last = result.rounds[-1] if result.rounds else {}
    typer.echo(
        f"run folder: {result.run_dir} ({len(result.rounds) - 1} rounds, last val loss {last.get('val_loss')}, "
        f"{result.seconds:.1f} s)"
    )
    for r in result.rounds[1:]:  # who actually contributed, round by round, and who did not
        line = f"  round {r['round']}: aggregated {', '.join(r.get('sites', [])) or 'nobody'}"
        if r.get("failures"):
            line += f"; left out: {'; '.join(r['failures'])}"
        typer.echo(line)
    spent = last.get("privacy") or {}
    if "sites" in spent:
        eps = ", ".join(f"{s} {e:.2f}" for s, e in spent["sites"].items())
        typer.echo(f"record-level DP-SGD: ε so far (δ={cfg.train.dp.delta:g}): {eps}")
    if "epsilon" in spent.get("client", {}):
        typer.echo(f"client-level DP: ε so far {spent['client']['epsilon']:.2f} (δ={cfg.federation.dp.delta:g})")
    if "secure_aggregation" in spent:
        typer.echo(f"secure aggregation (SecAgg+): last round summed {', '.join(spent['secure_aggregation']['sites'])}")
    run_info = RunDir(out).read_json("run.json") if (Path(out) / "run.json").is_file() else {}
    if run_info.get("status") == "stopped":
        typer.echo(f"stopped early: {run_info.get('reason')}")


# ---- the study (fedmedlora.recipes.study) -------------------------------------------------------------------


@app.command()
def study(
    out: Path = typer.Option(Path("runs/study"), "--out", "-o", help="Study folder to write."),
    method: list[str] = typer.Option(
        None, "--method", help="Federated methods: fedmedlora, fedmedlora+, fedsa, ffa, rolora (default: first two)."
    ),
    external: list[str] = typer.Option(None, "--external", help="Evaluation-only site(s) never trained on."),
    encoder: bool = typer.Option(
        None, "--encoder/--no-encoder", help="Add the encoder (BERT-style) baseline rows (default: study.encoder)."
    ),
    encoder_set: list[str] = typer.Option(
        None, "--encoder-set", help="Encoder baseline setting, e.g. --encoder-set epochs=4 (value parsed as JSON)."
    ),
    skip: list[str] = typer.Option(None, "--skip", help="zero_shot | single_site | centralized | new_site"),
    seeds: int = typer.Option(
        1,
        "--seeds",
        min=1,
        help="Train every trained row with this many seeds (seed, seed+1, ...; extra seeds in <out>/seed-<N>/) "
        "and report mean ± sd over them.",
    ),
    privacy: bool = typer.Option(
        False,
        "--privacy",
        help="Add rows under DP / SecAgg+: Fed-MedLoRA with DP-SGD at ε=8 and ε=3 (record level, unit "
        "train.dp.unit) and with client DP at ε=8, and the private Fed-MedLoRA+ (site losses, SecAgg+); each "
        "compared with its plain rule, F1 plotted against ε (docs/privacy.md).",
    ),
    config: str = ConfigOpt,
    sets: list[str] = SetOpt,
    benchmark: Path = BenchOpt,
    force: bool = ForceOpt,
) -> None:
    """Run zero-shot, single-site, centralized, Fed-MedLoRA and Fed-MedLoRA+ (+ new-site adaptation) and write
    one comparison table (study.md / .csv / .json) with 95% intervals, paired comparisons and plots."""
    from fedmedlora.cli.console import progress_display
    from fedmedlora.encoder.model import EncoderLoadError
    from fedmedlora.federation.strategies import FederationError
    from fedmedlora.recipes.study import PRIVACY_ROWS, SKIPPABLE, run_study

    cfg = resolve(config, sets, **{"data.benchmark": benchmark})
    bad = sorted(set(skip or ()) - set(SKIPPABLE))
    if bad:
        raise fail(f"--skip: {bad} not among {', '.join(SKIPPABLE)}")
    _force(out, "study", force, keep_same_kind=True)  # a study of its own goes on where it stopped
    _warn_benchmark(cfg)
    try:
        with progress_display("study", STATE.verbose):
            res = run_study(
                cfg,
                out,
                fed_methods=method or ("fedmedlora", "fedmedlora+"),
                external=external or None,
                encoder=cfg.study.encoder if encoder is None else encoder,
                encoder_settings={**cfg.study.encoder_settings, **json_fields(encoder_set)},
                skip=skip or (),
                seeds=seeds,
                privacy=PRIVACY_ROWS if privacy else None,
            )
    except (*user_errors(), EncoderLoadError, FederationError) as e:
        raise fail(str(e)) from None
    typer.echo(res["markdown"])
    typer.echo(f"study folder: {out}")


@app.command()
def compare(
    a: Path = typer.Argument(..., help="Model A: a run folder (its eval/<split>.json) or an evaluation JSON file."),
    b: Path = typer.Argument(..., help="Model B, scored on the same documents."),
    site: list[str] = typer.Option(None, "--site", help="Sites to compare (default: every site both scored)."),
    split: str = typer.Option("test", "--split", help="Which evaluation of a run folder: eval/<split>.json."),
    resamples: int = typer.Option(1000, "--resamples", min=1, help="Paired bootstrap resamples of documents."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the resamples."),
    label_a: str = typer.Option(None, "--label-a", help="Name of A in the table (default: its folder name)."),
    label_b: str = typer.Option(None, "--label-b", help="Name of B in the table (default: its folder name)."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write the rows: .json, .csv or .md."),
) -> None:
    """Paired bootstrap of the F1 difference A − B on the same documents, per site and pooled (strict/lenient NER
    and RE); a win or loss only when the 95% interval excludes 0."""
    import json

    from fedmedlora.intervals import compare_evaluations
    from fedmedlora.reports import paired_csv, paired_markdown

    def load(path: Path) -> tuple[dict[str, Any], str]:
        file = path / eval_file(split) if path.is_dir() else path
        if not file.is_file():
            raise fail(f"{file}: no such evaluation (score the model with `fedmedlora evaluate` first)")
        try:
            results = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise fail(f"{file}: not a readable evaluation JSON ({e})") from None
        if not isinstance(results, dict) or not all(isinstance(v, dict) for v in results.values()):
            raise fail(f"{file}: not an evaluation ({{site: results}} expected)")
        name = path.name if path.is_dir() else (path.parent.parent.name or path.stem)
        return results, name

    results_a, name_a = load(a)
    results_b, name_b = load(b)
    try:
        rows = compare_evaluations(
            results_a, results_b, site or None, label_a=label_a or name_a, label_b=label_b or name_b,
            n_resamples=resamples, seed=seed,
        )  # fmt: skip
    except ValueError as e:
        raise fail(str(e)) from None
    notes = sorted({r["note"] for r in rows if r.get("note")})
    for note in notes:
        typer.secho(f"warning: {note}", err=True, fg="yellow")
    md = paired_markdown(rows, title="Paired comparison on the same documents: F1 difference")
    typer.echo(md)
    if out is not None:
        kinds = {
            ".json": lambda: json.dumps(rows, indent=2) + "\n",
            ".csv": lambda: paired_csv(rows),
            ".md": lambda: md,
        }
        if out.suffix not in kinds:
            raise fail(f"--out {out}: use a .json, .csv or .md file")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(kinds[out.suffix](), encoding="utf-8")
        typer.echo(f"wrote {out}")


@app.command()
def report(
    study_dir: Path = typer.Argument(..., help="A finished study folder (holds study.json)."),
    out: Path = typer.Option(None, "--out", "-o", help="HTML file to write (default: <study-dir>/report.html)."),
    sentences: int = typer.Option(12, "--sentences", min=1, help="Test sentences per site in the error browser."),
) -> None:
    """Rebuild a study's report.html: tables with intervals, paired comparisons, per-round curves, breakdowns and
    an error browser of gold against predicted spans (one self-contained file, no network needed to view it)."""
    from fedmedlora.html_report import write_report

    try:
        path = write_report(study_dir, out, per_site=sentences)
    except user_errors() as e:
        raise fail(str(e)) from None
    typer.echo(f"report: {path}")


# ---- encoder baseline (fedmedlora.encoder) --------------------------------------------------------------------


@app.command()
def encoder(
    setting: str = typer.Option(
        "single_site", help="single_site | centralized | federated_full | federated_lora (docs/encoder.md)."
    ),
    site: list[str] = typer.Option(None, "--site", help="Training site(s) (repeatable; default: training sites)."),
    eval_site: list[str] = typer.Option(None, "--eval-site", help="Sites to score (default: the training sites)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for result.json and predictions."),
    sets: list[str] = typer.Option(
        None, "--set", "-s", help="EncoderSettings field, e.g. -s epochs=5 -s model=/path (value parsed as JSON)."
    ),
    benchmark: Path = BenchOpt,
) -> None:
    """Train and score the BERT-style token-classification baseline (NER + modifier tagging)."""
    from fedmedlora.encoder.model import EncoderLoadError
    from fedmedlora.encoder.run import run_encoder_setting

    fields = json_fields(sets)
    try:
        res = run_encoder_setting(setting, benchmark, site or None, eval_site or None, fields, out)
    except (*user_errors(), EncoderLoadError) as e:
        raise fail(str(e)) from None
    for model, per_site in res["eval"].items():
        for name, r in per_site.items():
            c = r["metrics"]["counts"]
            ner = c.get("ner", {})
            typer.echo(
                f"{model} -> {name}: NER F1 strict {ner.get('strict', {}).get('micro', {}).get('f1', 0):.3f} "
                f"lenient {ner.get('lenient', {}).get('micro', {}).get('f1', 0):.3f}"
            )
    typer.echo(f"bytes per round: {res['communication'].get('bytes_per_round', 0)}; results: {out / 'result.json'}")
