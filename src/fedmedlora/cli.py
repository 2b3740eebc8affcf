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


ConfigOpt = typer.Option(
    "demo",
    "--config",
    "-c",
    help="YAML run config, or a packaged preset: 'demo' (CPU-sized, the default) or 'paper' (reference settings).",
)
SetOpt = typer.Option(None, "--set", "-s", help="Override a config field, e.g. -s train.max_steps=20 (repeatable).")
BenchOpt = typer.Option(None, "--benchmark", "-b", help="Benchmark folder (default: the bundled sample).")


def _fail(message: str) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(2)


def _resolve(config: str | Path | None, sets: list[str] | None, **fields):
    """Defaults <- YAML <- --set overrides <- explicit command options (non-None only)."""
    import json

    from fedmedlora.config import ConfigError, load_config

    overrides = list(sets or [])
    for key, value in fields.items():
        if value is not None:  # explicit options are taken verbatim (a path is never re-parsed as YAML)
            overrides.append(f"{key}={json.dumps(str(value))}")
    try:
        return load_config(config, overrides)
    except ConfigError as e:
        raise _fail(str(e)) from None


def _json_fields(items: list[str] | None) -> dict:
    """``key=value`` items into a dict, values parsed as JSON when they parse (else kept as strings)."""
    import json

    fields: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise _fail(f"{item!r}: expected key=value")
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value
    return fields


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
    config: str = ConfigOpt,
    sets: list[str] = SetOpt,
    benchmark: Path = BenchOpt,
) -> None:
    """Train (or not, for zero_shot) one adapter without federation, then evaluate it on the benchmark."""
    from fedmedlora.experiments import run_setting

    cfg = _resolve(config, sets, **{"data.benchmark": benchmark})
    if init_adapter is not None:
        cfg = _with_adapter_prompting(cfg, init_adapter)
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
    config: str = ConfigOpt,
    sets: list[str] = SetOpt,
    benchmark: Path = BenchOpt,
) -> None:
    """Adapt a (federated) adapter to a new low-resource site with its few training documents."""
    from fedmedlora.experiments import run_setting

    cfg = _with_adapter_prompting(_resolve(config, sets, **{"data.benchmark": benchmark}), adapter)
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
    config: str = ConfigOpt,
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
    """Use what the adapter was trained with: its LoRA shape (``adapter_config.json``: r, alpha, target modules) and
    its prompt format / chat-template choice (``fedmedlora.json``), so training and inference cannot drift apart."""
    import json

    from fedmedlora.adapter_io import read_adapter_meta

    try:
        meta = read_adapter_meta(adapter)
        peft_cfg = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise _fail(f"{adapter}: not an adapter folder ({e})") from None
    meta = meta.get("meta", meta)
    update = {}
    if "format" in meta:
        update["data"] = cfg.data.model_copy(update={"format": meta["format"]})
    if "use_chat_template" in meta:
        update["model"] = cfg.model.model_copy(update={"use_chat_template": meta["use_chat_template"]})
    targets = peft_cfg.get("target_modules")
    update["lora"] = cfg.lora.model_copy(
        update={
            "r": int(peft_cfg.get("r", cfg.lora.r)),
            "alpha": int(peft_cfg.get("lora_alpha", cfg.lora.alpha)),
            "target_modules": sorted(targets) if isinstance(targets, list | set | tuple) else cfg.lora.target_modules,
        }
    )
    return cfg.model_copy(update=update)


@app.command()
def extract(
    notes: list[Path] = typer.Argument(..., help="Note files: .txt (one note each), .jsonl ({id, text}) or folders."),
    adapter: Path = typer.Option(None, help="Adapter folder; omit for zero-shot."),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL: entities and modifiers with char offsets."),
    brat: Path = typer.Option(None, help="Also write BRAT standoff (.txt + .ann per note) into this folder."),
    entity: list[str] = typer.Option(None, "--entity", help="Entity types to extract (default: all four)."),
    modifier: list[str] = typer.Option(None, "--modifier", help="Modifier types (default: all 16)."),
    config: str = ConfigOpt,
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
    config: str = ConfigOpt,
    sets: list[str] = SetOpt,
    benchmark: Path = BenchOpt,
) -> None:
    """Run a federation in-process: the real ServerApp + one ClientApp per site (see docs/federation.md)."""
    from fedmedlora.federation.server_app import ResumeError
    from fedmedlora.federation.simulation import run_federation
    from fedmedlora.federation.strategy import FederationError

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
    except (*_user_errors(), ResumeError, FederationError) as e:
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
    encoder: bool = typer.Option(
        None, "--encoder/--no-encoder", help="Add the encoder (BERT-style) baseline rows (default: study.encoder)."
    ),
    encoder_set: list[str] = typer.Option(
        None, "--encoder-set", help="Encoder baseline setting, e.g. --encoder-set epochs=4 (value parsed as JSON)."
    ),
    skip: list[str] = typer.Option(None, "--skip", help="zero_shot | single_site | centralized | new_site"),
    config: str = ConfigOpt,
    sets: list[str] = SetOpt,
    benchmark: Path = BenchOpt,
) -> None:
    """Run zero-shot, single-site, centralized, Fed-MedLoRA and Fed-MedLoRA+ (+ new-site adaptation) and write
    one comparison table (study.md / .csv / .json) and plots."""
    from fedmedlora.encoder.model import EncoderLoadError
    from fedmedlora.federation.strategy import FederationError
    from fedmedlora.study import run_study

    cfg = _resolve(config, sets, **{"data.benchmark": benchmark})
    bad = sorted(set(skip or ()) - {"zero_shot", "single_site", "centralized", "new_site"})
    if bad:
        raise _fail(f"--skip: {bad} not among zero_shot, single_site, centralized, new_site")
    try:
        res = run_study(
            cfg,
            out,
            fed_methods=method or ("fedmedlora", "fedmedlora+"),
            external=external or None,
            encoder=cfg.study.encoder if encoder is None else encoder,
            encoder_settings={**cfg.study.encoder_settings, **_json_fields(encoder_set)},
            skip=skip or (),
        )
    except (*_user_errors(), EncoderLoadError, FederationError) as e:
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
    from fedmedlora.encoder.model import EncoderLoadError
    from fedmedlora.encoder.train import run_encoder_setting

    fields = _json_fields(sets)
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


# ---- deployment ----
# Real multi-hospital deployment on Flower's Deployment Engine (fedmedlora.deploy; guide: deploy/README.md).

deploy_app = typer.Typer(
    no_args_is_help=True,
    help="Real deployment on Flower's Deployment Engine: TLS, hospital keys, SuperLink/SuperNodes.",
)
app.add_typer(deploy_app, name="deploy")
FlwrHomeOpt = typer.Option(
    None, "--flwr-home", help="Flower config folder of the operator (default: $FLWR_HOME or ~/.flwr)."
)
ConnOpt = typer.Option(
    ..., "--connection", help="Connection name in $FLWR_HOME/config.toml (`fedmedlora deploy connection`)."
)
StateOpt = typer.Option(
    None,
    "--background",
    help="Start in the background; log and PID go to this folder (stop: `fedmedlora deploy down`).",
)


def _flwr_home(opt: Path | None) -> Path:
    import os

    return opt or Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")


def _launch(name: str, args: list[str], state: Path | None, dry_run: bool, flwr_home: Path | None = None) -> None:
    """Print the command; then replace this process with it, or start it in the background with a PID file."""
    import os
    import shlex

    from fedmedlora import deploy

    typer.echo(shlex.join(args))
    if dry_run:
        return
    env = deploy.flower_env(flwr_home)
    if state is None:
        os.execve(args[0], args, env)  # foreground: signals (Ctrl+C, systemd stop) go straight to Flower
    proc = deploy.start_process(name, args, state_dir=state, env=env)
    typer.echo(f"{name}: pid {proc.pid}, log {proc.log_path}")


@deploy_app.command("certs")
def deploy_certs(
    out: Path = typer.Option(
        Path("deploy/certs"), "--out", "-o", help="Folder for ca.crt, ca.key, server.pem, server.key."
    ),
    san: list[str] = typer.Option(
        None, "--san", help="Extra subjectAltName, e.g. DNS:coord.example.org or IP:10.0.0.5."
    ),
    days: int = typer.Option(365, help="Validity in days."),
) -> None:
    """Self-signed CA + SuperLink certificate FOR TEST DEPLOYMENTS (production: your PKI; see deploy/README.md)."""
    from fedmedlora.deploy import DeployError, generate_certs

    try:
        files = generate_certs(out, sans=san or (), days=days)
    except DeployError as e:
        raise _fail(str(e)) from None
    typer.echo(
        f"CA (give to hospitals and the flwr CLI): {files.ca_cert}\nSuperLink: {files.server_cert}, {files.server_key}"
    )


@deploy_app.command("node-key")
def deploy_node_key(
    sites: list[str] = typer.Argument(..., help="Site names (a hospital runs this for its own site only)."),
    out: Path = typer.Option(Path("deploy/keys"), "--out", "-o", help="Folder for <site> and <site>.pub."),
) -> None:
    """ECDSA P-384 key pair per hospital for SuperNode authentication (the .pub goes to the coordinator)."""
    from fedmedlora.deploy import DeployError, generate_node_key

    for site in sites:
        try:
            private, public = generate_node_key(out, site)
        except DeployError as e:
            raise _fail(str(e)) from None
        typer.echo(f"{site}: private {private} (stays at the hospital), public {public} (send to the coordinator)")


@deploy_app.command("connection")
def deploy_connection(
    name: str = typer.Argument(..., help="Connection name, used as `flwr ... <name>` and --connection."),
    address: str = typer.Option(..., "--address", help="SuperLink host:port."),
    ca: Path = typer.Option(None, "--ca", help="CA certificate that signed the SuperLink's certificate."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS (local debugging only)."),
    flwr_home: Path = FlwrHomeOpt,
) -> None:
    """Write the superlink.NAME connection section of $FLWR_HOME/config.toml (absolute CA path, as flwr needs)."""
    from fedmedlora.deploy import DeployError, write_connection

    if ca is None and not insecure:
        raise _fail("give --ca <ca.crt> (or --insecure for a local test without TLS)")
    try:
        path = write_connection(_flwr_home(flwr_home), name, address, root_certificates=ca, insecure=insecure)
    except DeployError as e:
        raise _fail(str(e)) from None
    typer.echo(f"connection {name} -> {address} written to {path}")


@deploy_app.command("superlink")
def deploy_superlink(
    certs: Path = typer.Option(Path("deploy/certs"), "--certs", help="Folder with ca.crt, server.pem, server.key."),
    host: str = typer.Option("127.0.0.1", help="Listen address (0.0.0.0 for hospitals on other machines)."),
    port: int = typer.Option(9092, help="HTTPS port for the Fleet, Control and Runtime APIs."),
    database: Path = typer.Option(
        Path("deploy/state/superlink.db"), help="On-disk state: registered keys and runs survive a restart."
    ),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS and no node authentication (debugging only)."),
    background: Path = StateOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the command."),
) -> None:
    """Start the coordinator's SuperLink (TLS + node authentication, no runtime dependency installation)."""
    from fedmedlora.deploy import DeployError, TLSFiles, superlink_command

    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        tls = None if insecure else TLSFiles.in_dir(certs)
        args = superlink_command(tls=tls, host=host, port=port, database=database.resolve(), node_auth=not insecure)
        _launch("superlink", args, background, dry_run)
    except DeployError as e:
        raise _fail(str(e)) from None


@deploy_app.command("supernode")
def deploy_supernode(
    site: str = typer.Option(..., "--site", help="This hospital's site name (the ClientApp reads <data>/<site>/)."),
    data: Path = typer.Option(..., "--data", help="Folder holding <site>/train.jsonl and <site>/dev.jsonl."),
    key: Path = typer.Option(..., "--key", help="This hospital's private key (`fedmedlora deploy node-key`)."),
    ca: Path = typer.Option(Path("deploy/certs/ca.crt"), "--ca", help="CA certificate of the SuperLink."),
    superlink: str = typer.Option("127.0.0.1:9092", "--superlink", help="SuperLink host:port."),
    port: int = typer.Option(9094, help="Local port of this node's runtime API (one per node on a machine)."),
    trusted_entities: Path = typer.Option(None, help="YAML of Ed25519 keys whose signed apps this node runs."),
    background: Path = StateOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the command."),
) -> None:
    """Start a hospital's SuperNode (authenticated with its key; its notes stay in --data)."""
    from fedmedlora.deploy import DeployError, supernode_command

    try:
        args = supernode_command(
            superlink=superlink,
            site=site,
            data_dir=data,
            private_key=key,
            root_certificates=ca,
            port=port,
            trusted_entities=trusted_entities,
        )
        _launch(f"supernode-{site}", args, background, dry_run)
    except DeployError as e:
        raise _fail(str(e)) from None


@deploy_app.command("register")
def deploy_register(
    public_keys: list[Path] = typer.Argument(..., help="Hospitals' public keys (<site>.pub); the name = file stem."),
    connection: str = ConnOpt,
    flwr_home: Path = FlwrHomeOpt,
) -> None:
    """Register hospitals' public keys with the SuperLink (only registered keys may connect)."""
    from fedmedlora.deploy import DeployError, register_node

    for pub in public_keys:
        try:
            node_id = register_node(pub, connection, flwr_home=_flwr_home(flwr_home), name=pub.stem)
        except DeployError as e:
            raise _fail(str(e)) from None
        typer.echo(f"{pub.stem}: node id {node_id}")


@deploy_app.command("run")
def deploy_run(
    connection: str = ConnOpt,
    run_dir: Path = typer.Option(..., "--run-dir", help="Run folder ON THE COORDINATOR (rounds, checkpoints)."),
    resume: bool = typer.Option(False, help="Continue the run in --run-dir after its last completed round."),
    server_data: Path = typer.Option(None, "--server-data", help="Folder with _server/validation.jsonl (coordinator)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the run to finish."),
    max_restarts: int = typer.Option(0, help="Watchdog: resubmit with resume this many times if the run fails."),
    stall_timeout: float = typer.Option(None, help="Watchdog: stop and resume a run with no new round for N s."),
    timeout: float = typer.Option(86400.0, help="Give up waiting after N s (the run itself keeps going)."),
    config: str = ConfigOpt,
    sets: list[str] = SetOpt,
    flwr_home: Path = FlwrHomeOpt,
) -> None:
    """Submit a federation to a running deployment (the whole resolved config travels as the app's run config)."""
    import tempfile

    from fedmedlora import deploy

    cfg = _resolve(config, sets)
    home = _flwr_home(flwr_home)
    if server_data is None:
        from fedmedlora.benchmark import default_benchmark_dir

        server_data = Path(cfg.data.benchmark or default_benchmark_dir())
    try:
        with tempfile.TemporaryDirectory(prefix="fedmedlora-app-") as tmp:
            app_dir = deploy.write_app_dir(
                tmp, deploy.app_config(cfg, run_dir=run_dir, resume=resume, server_data_dir=server_data)
            )
            if not wait:
                run_id = deploy.submit_run(app_dir, connection, flwr_home=home)
                typer.echo(f"run {run_id} submitted; follow it with: flwr log {run_id} {connection}")
                return
            status = deploy.supervise_run(
                app_dir,
                connection,
                flwr_home=home,
                run_dir=run_dir,
                timeout=timeout,
                max_restarts=max_restarts,
                stall_timeout=stall_timeout,
                on_event=typer.echo,
            )
    except deploy.DeployError as e:
        raise _fail(str(e)) from None
    typer.echo(f"run {status.get('run-id')}: {status.get('status')} {status.get('status-details') or ''}".rstrip())
    typer.echo(f"run folder: {run_dir.resolve()} (rounds recorded: {deploy.completed_rounds(run_dir)})")
    if status.get("status") != "finished:completed":
        raise typer.Exit(1)


@deploy_app.command("status")
def deploy_status(
    run_id: int = typer.Argument(..., help="Run id printed by `fedmedlora deploy run`."),
    connection: str = ConnOpt,
    flwr_home: Path = FlwrHomeOpt,
) -> None:
    """Status of a run and of the registered hospitals' nodes."""
    from fedmedlora import deploy

    home = _flwr_home(flwr_home)
    try:
        st = deploy.run_status(run_id, connection, flwr_home=home)
        nodes = deploy.list_nodes(connection, flwr_home=home)
    except deploy.DeployError as e:
        raise _fail(str(e)) from None
    typer.echo(f"run {run_id}: {st.get('status')} {st.get('status-details') or ''}".rstrip())
    for n in nodes:
        typer.echo(f"node {n.get('node-id')}: {n.get('status')}")


@deploy_app.command("down")
def deploy_down(
    state: Path = typer.Option(..., "--state", help="Folder given to --background."),
) -> None:
    """Stop the processes started with --background, by their recorded process groups."""
    from fedmedlora.deploy import stop_recorded

    stopped = stop_recorded(state)
    typer.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


if __name__ == "__main__":
    main()
