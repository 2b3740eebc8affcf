"""The self-describing run folder, and the one place every run-file name is defined.

Owns the layout every command writes (and nothing else names run files)::

    <run>/config.yaml                resolved RunConfig, written before any work starts
    <run>/run.json                   what ran: command, setting, sites, versions, start/end time, status
    <run>/rounds.jsonl               one record per federated round (or one per local training call)
    <run>/comm.jsonl                 one record per message: round, site, direction, tensor count, bytes, names
    <run>/federation_state.json      a federation's resume point (``fedmedlora.federation.checkpoint``)
    <run>/site_state/<site>/         the in-process simulation's per-site state (``federation.site_state``)
    <run>/adapters/round_<N>/        PEFT adapter folders (checkpoints); adapters/final/ the final adapter
    <run>/eval/<name>.json|md        evaluation tables, per-document counts, intervals; eval/<name>_outputs.jsonl
                                     the raw generations
    <study>/study.md|csv|json        a study's comparison (``fedmedlora.recipes.study``); <row>/study_row.json
    <study>/study_paired.csv         its paired comparisons; <study>/seed-<N>/ the rows repeated with seed N
    <run>/error.log                  an unexpected error's traceback (``fedmedlora.cli``; no error text unless -v)

Also ``peak_rss_mb`` (the peak memory recorded in run records). Pure core: must not import torch or flwr.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedmedlora import __version__
from fedmedlora.config import RunConfig, load_config
from fedmedlora.jsonl import iter_json_lines

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
ROUNDS_FILE = "rounds.jsonl"
COMM_FILE = "comm.jsonl"
STATE_FILE = "federation_state.json"
SITE_STATE_DIR = "site_state"
ADAPTERS_DIR = "adapters"
FINAL = "final"
EVAL_DIR = "eval"
STUDY_MD, STUDY_CSV, STUDY_JSON = "study.md", "study.csv", "study.json"
STUDY_ROW_FILE = "study_row.json"
STUDY_PAIRED_CSV = "study_paired.csv"
SEED_DIR = "seed-{seed}"
#: A study's encoder-baseline runs: ``<study>/encoder/<setting>/`` (their predictions read by the report).
STUDY_ENCODER_DIR = "encoder"


def federated_row_dir(row: str) -> str:
    """A study's federated row's folder (``Fed-MedLoRA+`` → ``fed-medlora-plus``, ``FedSA-LoRA`` → ``fedsa-lora``):
    lower case, ``+`` → ``-plus``, anything but letters, digits, ``.`` and ``-`` → ``-``. (Local rows keep their name:
    ``single-site (chia)``.)"""
    name = row.lower().replace("+", "-plus").replace("ε", "eps")
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9.\-]+", "-", name)).strip("-")


def eval_file(name: str, suffix: str = ".json") -> str:
    """``eval/<name><suffix>``: ``.json`` (scores), ``.md`` (tables), ``_outputs.jsonl`` (raw generations)."""
    return f"{EVAL_DIR}/{name}{suffix}"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (monotonic: training's peak, then evaluation's)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


class RunDirError(ValueError):
    """An output folder that a new run must not write into (a file, not writable, foreign, another kind of run)."""


#: What a run writes at the top of its folder: what ``force_output_dir`` clears from an old run before a new one.
RUN_OUTPUTS = (
    CONFIG_FILE,
    RUN_FILE,
    ROUNDS_FILE,
    COMM_FILE,
    STATE_FILE,
    SITE_STATE_DIR,
    ADAPTERS_DIR,
    EVAL_DIR,
    STUDY_MD,
    STUDY_CSV,
    STUDY_JSON,
    STUDY_ROW_FILE,
    STUDY_PAIRED_CSV,
    "plots",
    "report.html",
    "error.log",
)

#: Folders the user allowed a run into although they are not run folders (``force_output_dir``), resolved.
_FORCED: set[Path] = set()


def force_output_dir(path: str | Path, command: str = "", *, keep_same_kind: bool = False) -> list[str]:
    """``--force``: let a new run of ``command`` into ``path``, saying what that does (never silently).

    A run folder (it has ``run.json``) loses its old outputs (``RUN_OUTPUTS``: eval tables, adapters, rounds, ...)
    so that old and new results cannot mix; with ``keep_same_kind`` a run of the same ``command`` is kept (a study
    goes on where it stopped). A folder that is not a run folder is allowed as it is; its files that a run writes
    too are named, and will be replaced. A file or a folder that cannot be written is still refused.

    Returns:
        One line per thing done or about to be overwritten (empty: nothing to say).

    Raises:
        RunDirError: the path is a file or cannot be written.
    """
    p = Path(path)
    try:
        check_output_dir(p, command)
        return []
    except RunDirError:
        if not p.is_dir() or not os.access(p, os.W_OK):
            raise
    notes: list[str] = []
    old = _run_command(p / RUN_FILE) if (p / RUN_FILE).is_file() else None
    if old is None:
        clash = sorted(name for name in RUN_OUTPUTS if (p / name).exists())
        _FORCED.add(p.resolve())
        notes.append(
            f"--force: {p} is not a fedmedlora run folder; writing into it"
            + (f" replaces its {', '.join(clash)}" if clash else " (none of its files has a run file's name)")
        )
        return notes
    if keep_same_kind and old == command:
        return notes
    removed = []
    for name in RUN_OUTPUTS:
        q = p / name
        if q.is_dir():
            shutil.rmtree(q)
        elif q.exists():
            q.unlink()
        else:
            continue
        removed.append(name)
    _FORCED.add(p.resolve())  # what is left (files that are not run outputs) stays, and the run may go in
    notes.append(f"--force: cleared the earlier {old or 'unknown'!r} run in {p} ({', '.join(removed)})")
    return notes


def _run_command(run_file: Path) -> str:
    """The ``command`` of a ``run.json`` ('' when it has none)."""
    try:
        return str(json.loads(run_file.read_text(encoding="utf-8")).get("command", ""))
    except (OSError, ValueError, AttributeError):
        raise RunDirError(f"{run_file}: unreadable; choose a new --out folder (or --force)") from None


def ending_status(err: BaseException) -> str:
    """How a run that raised ``err`` ended: ``interrupted`` (Ctrl-C, SIGTERM, a requested exit) or ``failed``."""
    return "interrupted" if isinstance(err, KeyboardInterrupt | SystemExit) else "failed"


def check_output_dir(path: str | Path, command: str = "") -> None:
    """Refuse, before any work, an output folder a new run of ``command`` would damage.

    Allowed: a missing or empty folder, a folder that already holds a run of the same ``command`` (a study
    goes on where it stopped; each command refuses to redo its own finished parts), or a folder the user allowed
    with ``--force`` (``force_output_dir``).

    Raises:
        RunDirError: the path is a file, cannot be written, holds files but no ``run.json`` (not a fedmedlora run
            folder: its files are never overwritten), or holds a run of another command.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise RunDirError(f"{p}: is a file; --out must be a folder (a new one, or a run folder of this command)")
    existing = p if p.exists() else next((q for q in p.parents if q.exists()), Path("."))
    if not os.access(existing, os.W_OK):
        raise RunDirError(f"{p}: cannot write there ({existing} is not writable)")
    if not p.is_dir() or not any(p.iterdir()) or p.resolve() in _FORCED:
        return
    run_file = p / RUN_FILE
    if not run_file.is_file():
        raise RunDirError(
            f"{p}: the folder is not empty and is not a fedmedlora run folder (no {RUN_FILE}); its files would be "
            "overwritten: choose a new --out folder (or --force to write into it anyway)"
        )
    old = _run_command(run_file)
    if command and old and old != command:
        raise RunDirError(
            f"{p}: holds a {old!r} run; a {command!r} run needs a folder of its own (or --force to clear that run)"
        )


class RunDir:
    """A run's output folder. Creating one with a config checks the folder (``check_output_dir``) and writes
    ``config.yaml`` first."""

    def __init__(self, path: str | Path, config: RunConfig | None = None, *, command: str = "", **info: Any):
        self.path = Path(path)
        if config is not None:
            check_output_dir(self.path, command)
        self.path.mkdir(parents=True, exist_ok=True)
        if config is not None:
            config.save(self.path / CONFIG_FILE)
            self.write_json(
                RUN_FILE,
                {
                    "command": command,
                    "fedmedlora_version": __version__,
                    "python": platform.python_version(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "status": "running",
                    **info,
                },
            )

    # ---- generic writers ---------------------------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".partial")
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=_jsonable) + "\n", encoding="utf-8")
        tmp.replace(p)
        return p

    def write_text(self, name: str, text: str) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        return p

    def append_jsonl(self, name: str, record: dict[str, Any]) -> None:
        p = self.path / name
        with p.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False, default=_jsonable) + "\n")

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        p = self.path / name
        if not p.is_file():
            return []
        return [obj for _, obj in iter_json_lines(p)]

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text(encoding="utf-8"))

    # ---- well-known places ---------------------------------------------------------------------------------------
    @property
    def config(self) -> RunConfig:
        return load_config(self.path / CONFIG_FILE)

    def adapter_dir(self, round_or_name: int | str) -> Path:
        name = f"round_{round_or_name}" if isinstance(round_or_name, int) else round_or_name
        return self.path / ADAPTERS_DIR / name

    def eval_dir(self) -> Path:
        d = self.path / EVAL_DIR
        d.mkdir(parents=True, exist_ok=True)
        return d

    @contextmanager
    def recording_end(self) -> Iterator[None]:
        """Run the block; if it raises, ``run.json`` says ``interrupted`` or ``failed`` (never stays
        ``running``), and the error goes on."""
        try:
            yield
        except BaseException as e:
            self.finish(ending_status(e), error=f"{type(e).__name__}: {e}"[:500])
            raise

    def note(self, **info: Any) -> None:
        """Add ``info`` to ``run.json``, keeping what it says (status included)."""
        p = self.path / RUN_FILE
        run = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
        run.update(**info)
        self.write_json(RUN_FILE, run)

    def finish(self, status: str = "done", **info: Any) -> None:
        self.note(status=status, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info)


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):  # numpy arrays and scalars (a 0-d value becomes a Python number)
        return o.tolist()
    if isinstance(o, set | frozenset | tuple):
        return sorted(o) if isinstance(o, set | frozenset) else list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
