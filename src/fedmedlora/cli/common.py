"""What every ``fedmedlora`` command shares: the config options, config resolution and one-line user errors."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from fedmedlora.config import ConfigError, RunConfig, load_config
from fedmedlora.jsonl import JsonlError
from fedmedlora.schema import SchemaError

ConfigOpt = typer.Option(
    "demo",
    "--config",
    "-c",
    help="YAML run config, or a packaged preset: 'demo' (CPU-sized, the default) or 'paper' (reference settings).",
)
SetOpt = typer.Option(None, "--set", "-s", help="Override a config field, e.g. -s train.max_steps=20 (repeatable).")
BenchOpt = typer.Option(None, "--benchmark", "-b", help="Benchmark folder (default: the bundled sample).")
ForceOpt = typer.Option(
    False,
    "--force",
    help="Write into --out although it is not a run folder, or holds a finished run (its old outputs — eval/, "
    "adapters/, rounds — are removed first and named).",
)


class CliState:
    """What the top-level options set for the command that runs (``fedmedlora -v ...``)."""

    verbose: bool = False


STATE = CliState()


def fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(2)


def resolve(config: str | Path | None, sets: list[str] | None, **fields):
    """Defaults <- YAML <- --set overrides <- explicit command options (non-None only)."""
    overrides = list(sets or [])
    for key, value in fields.items():
        if value is not None:  # explicit options are taken verbatim (a path is never re-parsed as YAML)
            overrides.append(f"{key}={json.dumps(str(value))}")
    try:
        return load_config(config, overrides)
    except ConfigError as e:
        raise fail(str(e)) from None


def json_fields(items: list[str] | None) -> dict:
    """``key=value`` items into a dict, values parsed as JSON when they parse (else kept as strings)."""
    fields: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise fail(f"{item!r}: expected key=value")
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value
    return fields


def user_errors():
    """Errors that are the user's input, reported as one line instead of a traceback."""
    errors: list[type[Exception]] = [ConfigError, JsonlError, SchemaError, ValueError, FileNotFoundError]
    try:
        from fedmedlora.lm.model import ModelLoadError

        errors.append(ModelLoadError)
    except ImportError:  # pragma: no cover - torch missing
        pass
    return tuple(errors)


ALLOW_MISMATCH = "FEDMEDLORA_ALLOW_BASE_MISMATCH"


def _same_base(a: str, b: str) -> bool:
    """The same base model: the same id, or two paths to the same folder/file."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def with_adapter_prompting(cfg: RunConfig, adapter: Path) -> RunConfig:
    """Use what the adapter was trained with: its LoRA shape (``adapter_config.json``: r, alpha, target modules) and
    its prompt format / chat-template choice (``fedmedlora.json``), so training and inference cannot drift apart."""
    from fedmedlora.lm.adapter_io import adapter_meta, read_adapter_meta

    try:
        meta = read_adapter_meta(adapter)
        peft_cfg = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise fail(f"{adapter}: not an adapter folder ({e})") from None
    meta = meta.get("meta", meta)
    trained_on, loading = meta.get("base_model"), adapter_meta(cfg)["base_model"]
    if trained_on and not _same_base(str(trained_on), str(loading)) and not os.environ.get(ALLOW_MISMATCH):
        raise fail(
            f"{adapter}: trained on base model {trained_on!r}, but the config loads {loading!r}; an adapter only "
            f"fits its own base: set -s model.name=... (or {ALLOW_MISMATCH}=1 if it is the same model moved)"
        )
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


def log_dir() -> Path:
    """Where unexpected errors' tracebacks go: ``$FEDMEDLORA_LOG_DIR``, else ``~/.cache/fedmedlora/logs``."""
    raw = os.environ.get("FEDMEDLORA_LOG_DIR")
    return Path(raw) if raw else Path.home() / ".cache" / "fedmedlora" / "logs"


def run_folder_of(argv: list[str]) -> Path | None:
    """The run folder a command line writes (``--out``/``-o``), if it is one already (it holds ``run.json``)."""
    for i, arg in enumerate(argv):
        value = None
        if arg in ("--out", "-o") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--out="):
            value = arg.split("=", 1)[1]
        if value and (Path(value) / "run.json").is_file():
            return Path(value)
    return None


def scrubbed_traceback(err: BaseException) -> str:
    """The traceback of ``err`` and of the errors it was raised from: frames and source lines, each error's type,
    but no error message (a message may quote a note: ``text='Patient denies ...'``) and no locals."""
    parts: list[str] = []
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        frames = "".join(traceback.format_list(traceback.extract_tb(e.__traceback__)))
        parts.append(
            f"Traceback (most recent call last):\n{frames}{type(e).__module__}.{type(e).__qualname__}: "
            "<message left out: it may quote input text; rerun with -v to log it>\n"
        )
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return "\nThe above was raised while handling / from:\n\n".join(reversed(parts))


def report_unexpected(
    err: BaseException, command: list[str], verbose: bool = False, run_folder: Path | None = None
) -> int:
    """Write the traceback (frames and source lines, no locals) to a log file — ``<run_folder>/error.log`` when the
    command was writing a run folder, else one in ``log_dir()`` — and print one line that names the
    command, the error type, where in fedmedlora it happened and the log — never the message, which may quote a
    note. OS errors name their file. Without ``verbose`` the log leaves every error message out too
    (``scrubbed_traceback``); with it, the log holds the full traceback and it is printed here as well (still
    without locals). Returns the exit code (1)."""
    name = command[0] if command else "fedmedlora"
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if f"{os.sep}fedmedlora{os.sep}" in f.filename]
    where = f" at {Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else ""
    path_note = f" on {err.filename}" if isinstance(err, OSError) and getattr(err, "filename", None) else ""
    full = "".join(traceback.format_exception(err))
    if verbose:
        sys.stderr.write(full)
    log_note = ""
    try:
        if run_folder is not None:
            log = run_folder / "error.log"
        else:
            folder = log_dir()
            folder.mkdir(parents=True, exist_ok=True)
            log = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{os.getpid()}.log"
        log.write_text(full if verbose else scrubbed_traceback(err), encoding="utf-8")
        log_note = f"; the traceback is in {log}" + (" (it may quote input text)" if verbose else "")
    except OSError:
        log_note = "; no log could be written (set FEDMEDLORA_LOG_DIR)"
    message = f"fedmedlora {name} failed unexpectedly: {type(err).__name__}{path_note}{where}{log_note}. " + (
        "" if verbose else "Run with -v to see the whole traceback, or FEDMEDLORA_DEBUG=1 to raise it here."
    )
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message.strip())}", highlight=False)
    return 1
