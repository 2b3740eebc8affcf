"""The ``fedmedlora`` command line: a table of small commands that call library functions.

Each command resolves its options, calls one library function and prints where the results went. Heavy
modules (torch, transformers, flwr) are imported inside the commands so ``fedmedlora --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
data_app = typer.Typer(no_args_is_help=True, help="Build and inspect the federated benchmark.")
app.add_typer(data_app, name="data")


def main() -> None:  # console-script entry point
    app()


ConfigOpt = typer.Option(None, "--config", "-c", help="YAML run config (see configs/).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a config field, e.g. -s train.max_steps=20 (repeatable).")
BenchOpt = typer.Option(None, "--benchmark", "-b", help="Benchmark folder (default: the bundled sample).")


def _fail(message: str) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(2)


def _resolve(config: Path | None, sets: list[str] | None, **fields):
    """Defaults <- YAML <- --set overrides <- explicit command options (non-None only)."""
    from fedmedlora.config import ConfigError, load_config

    overrides = list(sets or [])
    for key, value in fields.items():
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        return load_config(config, overrides)
    except ConfigError as e:
        raise _fail(str(e)) from None


def _user_errors():
    """Errors that are the user's input, reported as one line instead of a traceback."""
    from fedmedlora.config import ConfigError
    from fedmedlora.jsonl import JsonlError
    from fedmedlora.schema import SchemaError

    errors: list[type[Exception]] = [ConfigError, JsonlError, SchemaError, ValueError, FileNotFoundError]
    try:
        from fedmedlora.model import ModelLoadError

        errors.append(ModelLoadError)
    except ImportError:  # pragma: no cover - torch missing
        pass
    return tuple(errors)


# ---- data commands (fedmedlora.corpora / fedmedlora.benchmark) ----------------------------------------------


def _default_corpora_dir() -> Path | None:
    """``../shared/datasets`` next to the working directory or the repository, else ``/work/shared/datasets``."""
    repo = Path(__file__).resolve().parents[2]
    for cand in (Path.cwd().parent / "shared" / "datasets", repo.parent / "shared" / "datasets"):
        if cand.is_dir():
            return cand
    return None


@data_app.command("prepare")
def data_prepare(
    corpora: Path = typer.Option(
        None, "--corpora", help="Folder with chia/, phee/, bc5cdr/, maccrobat/ (default: ../shared/datasets)."
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="Benchmark folder to write (default with --sample: the bundled sample)."
    ),
    seed: int = typer.Option(13, help="Seed of the Chia/MACCROBAT splits, the server set and the sample."),
    max_docs: int = typer.Option(None, help="Read at most N documents per corpus (per split file); quick checks."),
    sample: bool = typer.Option(False, "--sample", help="Write the small bundled sample, not the full benchmark."),
    site: list[str] = typer.Option(None, "--site", help="Only these sites (repeatable; default: all four)."),
) -> None:
    """Convert the open corpora into the federated benchmark and print its statistics."""
    import sys

    from rich.console import Console

    from fedmedlora.benchmark import BenchmarkError, default_benchmark_dir, prepare_benchmark
    from fedmedlora.corpora import CorpusError

    corpora = corpora or _default_corpora_dir()
    if corpora is None or not corpora.is_dir():
        raise _fail(f"corpora folder not found: {corpora or '../shared/datasets'} (pass --corpora)")
    if out is None:
        if not sample:
            raise _fail("--out is required (or pass --sample to regenerate the bundled sample)")
        out = default_benchmark_dir()
    try:
        stats = prepare_benchmark(corpora, out, seed=seed, max_docs=max_docs, sites=site or None, sample=sample)
    except (CorpusError, BenchmarkError) as e:
        raise _fail(str(e)) from None
    stats.print(Console(width=None if sys.stdout.isatty() else 160))
    typer.echo(f"wrote {out} (benchmark.json, <site>/{{train,dev,test}}.jsonl, stats.md, stats.json)")


@data_app.command("stats")
def data_stats(
    root: Path = typer.Argument(None, help="Benchmark folder (default: the bundled sample)."),
    drops: bool = typer.Option(False, "--drops", help="Also print the conversion's dropped-annotation counts."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the Markdown table instead of rich tables."),
) -> None:
    """Print the statistics table of a benchmark folder (sites × entity/modifier types, sentences, documents)."""
    from fedmedlora.benchmark import BenchmarkError, benchmark_stats, load_benchmark
    from fedmedlora.jsonl import JsonlError

    try:
        stats = benchmark_stats(load_benchmark(root))
    except (BenchmarkError, JsonlError) as e:
        raise _fail(str(e)) from None
    if markdown:
        typer.echo(stats.to_markdown() if drops else stats.to_markdown().split("\n## Dropped")[0])
    else:
        stats.print(drops=drops)


# ---- single-site / centralized / zero-shot training, extraction, evaluation (fedmedlora.train, .evaluate) ----


@app.command()
def train(
    setting: str = typer.Option(
        "single_site", help="zero_shot | single_site | centralized | adapt | local_only (see docs/settings.md)."
    ),
    site: list[str] = typer.Option(None, "--site", help="Training site(s) (repeatable). Default depends on setting."),
    eval_site: list[str] = typer.Option(None, "--eval-site", help="Sites to evaluate on (default: all)."),
    init_adapter: Path = typer.Option(None, help="Adapter folder to continue from (required for adapt)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write."),
    config: Path = ConfigOpt,
    sets: list[str] = SetOpt,
    benchmark: Path = BenchOpt,
) -> None:
    """Train (or not, for zero_shot) one adapter without federation, then evaluate it on the benchmark."""
    from fedmedlora.experiments import run_setting

    cfg = _resolve(config, sets, **{"data.benchmark": benchmark})
    valid = ("zero_shot", "single_site", "centralized", "adapt", "local_only")
    if setting not in valid:
        raise _fail(f"--setting: {setting!r} is not one of {', '.join(valid)}")
    try:
        run = run_setting(
            setting,
            cfg,
            out,
            sites=site or None,
            eval_sites=eval_site or None,
            init_adapter=init_adapter,
            command="train",
        )
    except _user_errors() as e:
        raise _fail(str(e)) from None
    typer.echo(f"run folder: {run.path}\n{(run.path / 'eval' / 'test.md').read_text()}")


@app.command()
def adapt(
    adapter: Path = typer.Option(..., help="The federated adapter folder to start from."),
    site: str = typer.Option(None, help="The new site (default: the benchmark's new site)."),
    out: Path = typer.Option(..., "--out", "-o"),
    config: Path = ConfigOpt,
    sets: list[str] = SetOpt,
    benchmark: Path = BenchOpt,
) -> None:
    """Adapt a (federated) adapter to a new low-resource site with its few training documents."""
    from fedmedlora.experiments import run_setting

    cfg = _resolve(config, sets, **{"data.benchmark": benchmark})
    try:
        run = run_setting(
            "adapt",
            cfg,
            out,
            sites=[site] if site else None,
            eval_sites=[site] if site else None,
            init_adapter=adapter,
            command="adapt",
        )
    except _user_errors() as e:
        raise _fail(str(e)) from None
    typer.echo(f"run folder: {run.path}\n{(run.path / 'eval' / 'test.md').read_text()}")


@app.command()
def evaluate(
    adapter: Path = typer.Option(None, help="Adapter folder (PEFT + fedmedlora.json); omit for zero-shot."),
    site: list[str] = typer.Option(None, "--site", help="Sites to evaluate (default: all)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write eval/ tables into."),
    config: Path = ConfigOpt,
    sets: list[str] = SetOpt,
    benchmark: Path = BenchOpt,
) -> None:
    """Score an adapter (or the base model) on benchmark splits: strict/lenient P/R/F1 for NER and RE."""
    from fedmedlora.experiments import run_setting

    cfg = _resolve(config, sets, **{"data.benchmark": benchmark})
    if adapter is not None:
        cfg = _with_adapter_prompting(cfg, adapter)
    try:
        run = run_setting("zero_shot", cfg, out, eval_sites=site or None, init_adapter=adapter, command="evaluate")
    except _user_errors() as e:
        raise _fail(str(e)) from None
    typer.echo(f"run folder: {run.path}\n{(run.path / 'eval' / 'test.md').read_text()}")


def _with_adapter_prompting(cfg, adapter: Path):
    """Use the prompt format / chat-template choice the adapter was trained with (from its fedmedlora.json)."""
    from fedmedlora.adapter_io import read_adapter_meta

    try:
        meta = read_adapter_meta(adapter).get("meta", {})
    except (FileNotFoundError, ValueError) as e:
        raise _fail(f"{adapter}: not an adapter folder ({e})") from None
    update = {}
    if "format" in meta:
        update["data"] = cfg.data.model_copy(update={"format": meta["format"]})
    if "use_chat_template" in meta:
        update["model"] = cfg.model.model_copy(update={"use_chat_template": meta["use_chat_template"]})
    return cfg.model_copy(update=update)


@app.command()
def extract(
    notes: list[Path] = typer.Argument(..., help="Note files: .txt (one note each), .jsonl ({id, text}) or folders."),
    adapter: Path = typer.Option(None, help="Adapter folder; omit for zero-shot."),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL: entities and modifiers with char offsets."),
    brat: Path = typer.Option(None, help="Also write BRAT standoff (.txt + .ann per note) into this folder."),
    entity: list[str] = typer.Option(None, "--entity", help="Entity types to extract (default: all four)."),
    modifier: list[str] = typer.Option(None, "--modifier", help="Modifier types (default: all 16)."),
    config: Path = ConfigOpt,
    sets: list[str] = SetOpt,
) -> None:
    """Extract entities and modifiers from clinical notes (NER, then RE on the predicted entities)."""
    from fedmedlora.extract import extract_notes

    cfg = _resolve(config, sets)
    if adapter is not None:
        cfg = _with_adapter_prompting(cfg, adapter)
    try:
        n = extract_notes(cfg, notes, out, adapter=adapter, brat_dir=brat, entities=entity, modifiers=modifier)
    except _user_errors() as e:
        raise _fail(str(e)) from None
    typer.echo(f"{n} notes -> {out}" + (f" (+ BRAT in {brat})" if brat else ""))


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
    config: Path = ConfigOpt,
    sets: list[str] = SetOpt,
    benchmark: Path = BenchOpt,
) -> None:
    """Run a federation in-process: the real ServerApp + one ClientApp per site (see docs/federation.md)."""
    from fedmedlora.federation.server_app import ResumeError
    from fedmedlora.federation.simulation import run_federation

    cfg = _resolve(config, sets, **{"data.benchmark": benchmark})
    try:
        result = run_federation(cfg, out, resume=resume)
        if evaluate_after:
            from fedmedlora.experiments import evaluate_arrays, open_benchmark, write_eval
            from fedmedlora.federation.client_app import get_session
            from fedmedlora.runs import RunDir

            bench = open_benchmark(cfg)
            results = evaluate_arrays(get_session(cfg), result.arrays, bench, list(bench.sites))
            write_eval(RunDir(out), "test", results)
    except (*_user_errors(), ResumeError) as e:
        raise _fail(str(e)) from None
    last = result.rounds[-1] if result.rounds else {}
    typer.echo(
        f"run folder: {result.run_dir} ({len(result.rounds) - 1} rounds, sites {', '.join(result.sites)}, "
        f"last val loss {last.get('val_loss')}, {result.seconds:.1f} s)"
    )


# ---- the study (fedmedlora.study) ------------------------------------------------------------------------------


@app.command()
def study(
    out: Path = typer.Option(Path("runs/study"), "--out", "-o", help="Study folder to write."),
    method: list[str] = typer.Option(
        None, "--method", help="Federated methods: fedmedlora, fedmedlora+, fedsa, ffa (default: the first two)."
    ),
    external: list[str] = typer.Option(None, "--external", help="Evaluation-only site(s) never trained on."),
    encoder: bool = typer.Option(False, "--encoder/--no-encoder", help="Add the encoder (BERT-style) baseline rows."),
    skip: list[str] = typer.Option(None, "--skip", help="zero_shot | single_site | centralized | new_site"),
    config: Path = ConfigOpt,
    sets: list[str] = SetOpt,
    benchmark: Path = BenchOpt,
) -> None:
    """Run zero-shot, single-site, centralized, Fed-MedLoRA and Fed-MedLoRA+ (+ new-site adaptation) and write
    one comparison table (study.md / .csv / .json) and plots. Default config: configs/demo.yaml-equivalent."""
    from fedmedlora.study import run_study

    if config is None and Path("configs/demo.yaml").is_file():
        config = Path("configs/demo.yaml")
    cfg = _resolve(config, sets, **{"data.benchmark": benchmark})
    try:
        res = run_study(
            cfg,
            out,
            fed_methods=method or ("fedmedlora", "fedmedlora+"),
            external=external or None,
            encoder=encoder,
            skip=skip or (),
        )
    except _user_errors() as e:
        raise _fail(str(e)) from None
    typer.echo(res["markdown"])
    typer.echo(f"study folder: {out}")


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
    import json as _json

    from fedmedlora.encoder.model import EncoderLoadError
    from fedmedlora.encoder.train import run_encoder_setting

    fields: dict = {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise _fail(f"--set {item!r}: expected key=value")
        try:
            fields[key] = _json.loads(value)
        except _json.JSONDecodeError:
            fields[key] = value
    try:
        res = run_encoder_setting(setting, benchmark, site or None, eval_site or None, fields, out)
    except (*_user_errors(), EncoderLoadError) as e:
        raise _fail(str(e)) from None
    for model, per_site in res["eval"].items():
        for name, r in per_site.items():
            c = r["metrics"]["counts"]
            ner = c.get("ner", {})
            typer.echo(
                f"{model} -> {name}: NER F1 strict {ner.get('strict', {}).get('micro', {}).get('f1', 0):.3f} "
                f"lenient {ner.get('lenient', {}).get('micro', {}).get('f1', 0):.3f}"
            )
    typer.echo(f"bytes per round: {res['communication'].get('bytes_per_round', 0)}; results: {out / 'result.json'}")


if __name__ == "__main__":
    main()
