"""The console of a long command: one progress display, one line per finished row, and quiet libraries.

Owns the CLI's side of ``fedmedlora.progress``: ``RunConsole`` (a ``ProgressSink`` drawn with rich: the current
row, its phase — training step k/n, round r/R, generating k/n — and the time left for the whole job; one printed
line per finished row with its headline F1 and time), ``progress_display`` (install it for a command) and
``quiet_libraries`` (third-party progress bars and known deprecation warnings off unless ``-v``).

On a terminal the display is a rich ``Live`` region on stderr (what the command prints goes above it); elsewhere
(a pipe, a log file, a test) only the row lines are printed. With ``-v`` there is no live region, the libraries'
own bars and warnings come back, and the row lines stay.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from fedmedlora import progress
from fedmedlora.progress import GENERATING, ROUND, TRAINING

#: Packages whose deprecation warnings (``FutureWarning`` / ``DeprecationWarning``) a user cannot act on: hidden
#: unless ``-v`` (e.g. transformers' "`is_gradient_checkpointing` is deprecated").
LIBRARIES = ("transformers", "peft", "torch", "flwr", "opacus", "huggingface_hub", "accelerate", "tokenizers", "click")

#: Loggers whose chatter (Flower's per-round INFO banner, its advisory WARNINGs) is hidden unless ``-v``: only
#: their errors show. fedmedlora's own loggers are left alone.
CHATTY_LOGGERS = ("flwr",)

#: Environment variables that turn the libraries' own progress bars and advisory messages off.
QUIET_ENV = {
    "TQDM_DISABLE": "1",  # bars that call tqdm directly (transformers' GGUF conversion); read when tqdm is imported
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}


@contextmanager
def quiet_libraries(verbose: bool) -> Iterator[None]:
    """Within the block: without ``verbose``, third-party progress bars (transformers/huggingface_hub: weight
    loading, the one-time GGUF conversion) and the libraries' deprecation warnings are off; fedmedlora's own
    warnings still show; Flower logs its errors only (``CHATTY_LOGGERS``). With ``verbose`` nothing is changed.
    Everything is restored afterwards."""
    if verbose:
        yield
        return
    saved = {k: os.environ.get(k) for k in QUIET_ENV}
    os.environ.update({k: v for k, v in QUIET_ENV.items() if saved[k] is None})
    restore_hf = _quiet_loaded_libraries()
    for name in CHATTY_LOGGERS:  # a filter, not a level: Flower sets its logger's level when it is imported
        logging.getLogger(name).addFilter(_errors_only)
    try:
        with warnings.catch_warnings():
            pattern = rf"({'|'.join(LIBRARIES)})(\.|$)"
            for category in (FutureWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category, module=pattern)
            yield
    finally:
        restore_hf()
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).removeFilter(_errors_only)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def _quiet_loaded_libraries() -> Any:
    """The environment switches act when a library is imported; one imported already (a test process) is told
    directly. Returns the function that puts back what was changed."""
    undo = []
    tf_logging = sys.modules.get("transformers.utils.logging")
    if tf_logging is not None:
        was_on, level = tf_logging.is_progress_bar_enabled(), tf_logging.get_verbosity()
        tf_logging.disable_progress_bar()
        tf_logging.set_verbosity_error()

        def _tf() -> None:
            tf_logging.set_verbosity(level)
            if was_on:
                tf_logging.enable_progress_bar()

        undo.append(_tf)
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None and hasattr(hub, "are_progress_bars_disabled"):
        hub_was_off = hub.are_progress_bars_disabled()
        hub.disable_progress_bars()
        undo.append(lambda: None if hub_was_off else hub.enable_progress_bars())

    def restore() -> None:
        for fn in undo:
            fn()

    return restore


def _stdout_is_a_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``1 h 12 min``."""
    s = round(max(seconds, 0.0))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


class RunConsole:
    """A ``fedmedlora.progress.ProgressSink`` for the terminal.

    Args:
        console: where the display goes (stderr).
        out: where the row lines go (stdout: they are part of what the command reports).
        live: draw the live display (a terminal, no ``-v``).
        label: what the job is called in the display (``study``, ``fed run``, ...).
    """

    def __init__(self, console: Console, out: Console, *, live: bool, label: str) -> None:
        self.console, self.out, self.label = console, out, label
        self.rows_total: int | None = None
        self.rows_done = 0
        self.rows_run = 0  # rows that ran here (not reused): their time is the basis of the estimate
        self.seconds_run = 0.0
        self.row: str | None = None
        self.row_start = time.monotonic()
        self.phases: dict[str, tuple[int, int]] = {}  # phase -> (done, total)
        self.live = (
            Live(
                console=console,
                get_renderable=self.render,
                transient=True,
                refresh_per_second=4,
                redirect_stdout=_stdout_is_a_terminal(),  # `study > log.txt`: the printed lines go to the file
            )
            if live
            else None
        )

    # -- ProgressSink --------------------------------------------------------------------------------------------
    def plan(self, rows: int) -> None:
        self.rows_total = rows

    def row_started(self, name: str) -> None:
        self.row, self.row_start, self.phases = name, time.monotonic(), {}

    def step(self, phase: str, done: int, total: int) -> None:
        self.phases[phase] = (done, total)
        if phase == ROUND:  # a new round: its inner phases start again
            self.phases = {k: v for k, v in self.phases.items() if k == ROUND}

    def row_finished(self, name: str, f1: float | None, seconds: float) -> None:
        self.rows_done += 1
        if self.row == name:
            self.rows_run += 1
            self.seconds_run += seconds
        self.row, self.phases = None, {}
        score = f"NER strict F1 {f1:.3f}" if f1 is not None else "not scored"
        count = f"[{self.rows_done}/{self.rows_total}] " if self.rows_total else ""
        self.out.print(f"{count}{escape(name)}: {score}, {_duration(seconds)}", highlight=False, soft_wrap=True)

    # -- the display ---------------------------------------------------------------------------------------------
    def time_left(self) -> float | None:
        """Seconds left for the whole job, or ``None`` before there is anything to estimate from.

        The current row's rest comes from its own progress (its rounds, else its training steps, else its
        generation) when it has any, else from the average of the rows run so far; every row still to come takes
        that average (or, before any row finished, what the current row is heading for)."""
        now = time.monotonic()
        current = now - self.row_start if self.row else 0.0
        left_rows = max((self.rows_total - self.rows_done - (1 if self.row else 0)) if self.rows_total else 0, 0)
        frac = self._row_fraction() if self.row else None
        per_row = self.seconds_run / self.rows_run if self.rows_run else (current / frac if frac else None)
        if per_row is None:
            return None
        this_row = current / frac - current if frac else max(per_row - current, 0.0)
        return this_row + left_rows * per_row

    def _row_fraction(self) -> float | None:
        for phase in (ROUND, TRAINING, GENERATING):
            done, total = self.phases.get(phase, (0, 0))
            if total and done:
                return done / total if phase != TRAINING else 0.5 * done / total  # training, then scoring
        return None

    def render(self) -> Text:
        """One line: job, row k/n, the row, its phases, elapsed in the row and time left."""
        parts = [self.label]
        if self.rows_total:
            parts.append(f"row {min(self.rows_done + 1, self.rows_total)}/{self.rows_total}")
        if self.row:
            parts.append(self.row)
        for phase in (ROUND, TRAINING, GENERATING):
            if phase in self.phases:
                done, total = self.phases[phase]
                shown = min(done + 1, total) if phase == ROUND else done
                parts.append(f"{phase} {shown}/{total}")
        if self.row:
            parts.append(_duration(time.monotonic() - self.row_start))
        left = self.time_left()
        parts.append(f"~{_duration(left)} left" if left is not None else "estimating time left")
        return Text(" · ".join(parts), style="cyan")


@contextmanager
def progress_display(label: str, verbose: bool = False) -> Iterator[RunConsole]:
    """Install a ``RunConsole`` for the block (and fedmedlora's own tqdm bars off unless ``verbose``)."""
    err = Console(stderr=True)
    sink = RunConsole(err, Console(), live=err.is_terminal and not verbose, label=label)
    with progress.reporting(sink, bars=verbose), sink.live if sink.live is not None else nullcontext():
        yield sink


__all__ = ["CHATTY_LOGGERS", "LIBRARIES", "QUIET_ENV", "RunConsole", "progress_display", "quiet_libraries"]
