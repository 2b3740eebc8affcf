"""Progress of long work, told to whoever shows it, without the work knowing who that is.

Owns the small protocol between the code that works (training steps, federated rounds, generation, a study's rows)
and a display (the CLI's console, ``fedmedlora.cli.console``). The working code calls ``step`` (a phase advanced:
"training step" 3 of 20, "round" 2 of 5, "generating" 17 of 40), and a study or command calls ``row_started`` /
``row_finished``; they go to the ``ProgressSink`` installed with ``reporting``, or nowhere. Nothing here imports
a display library: the core stays pure and the CLI stays a thin adapter.

Every ``step`` is also where a requested stop takes effect (``request_stop``, ``check_stop``): the CLI's SIGINT /
SIGTERM handler raises at once, but Python drops an exception raised while a finaliser (``__del__``) runs ("Exception
ignored in ..."), and Ctrl-C during training or generation then went unheard until the end; the request stays set,
and the next training step, decoding step or round raises it.

Pure core: must not import torch, flwr or rich.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

#: Phase names the library reports (a sink may show others as they come).
TRAINING, ROUND, GENERATING = "training step", "round", "generating"


class ProgressSink(Protocol):
    """What a progress display receives."""

    def plan(self, rows: int) -> None:
        """How many rows (runs) the whole job will run from now on (a study: every row not reused)."""
        ...

    def row_started(self, name: str) -> None:
        """A row (a study's model, or the one run of a command) started."""
        ...

    def step(self, phase: str, done: int, total: int) -> None:
        """``done`` of ``total`` units of ``phase`` of the current row are finished."""
        ...

    def row_finished(self, name: str, f1: float | None, seconds: float) -> None:
        """A row ended: its headline F1 (``None``: not scored) and how long it took."""
        ...


_sink: ProgressSink | None = None
_bars = True
_stop: int | None = None  # the signal number of a requested stop not yet raised


def request_stop(signum: int) -> None:
    """Ask the work to stop at its next step (a signal handler calls this before raising)."""
    global _stop
    _stop = signum


def check_stop() -> None:
    """Raise a requested stop here: ``KeyboardInterrupt`` for SIGINT, ``SystemExit(128 + n)`` for another signal
    (the request is then cleared)."""
    global _stop
    if _stop is None:
        return
    signum, _stop = _stop, None
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def current() -> ProgressSink | None:
    """The installed sink, or ``None``."""
    return _sink


def bars() -> bool:
    """Whether fedmedlora's own tqdm bars (training, generation) show: yes, unless ``reporting`` turned them off
    because a display shows the same progress."""
    return _bars


@contextmanager
def reporting(sink: ProgressSink | None, *, bars: bool = True) -> Iterator[None]:
    """Send progress to ``sink`` within the block (``None``: nowhere), with the tqdm bars on or off; what was
    installed before comes back after."""
    global _sink, _bars
    before = _sink, _bars
    _sink, _bars = sink, bars
    try:
        yield
    finally:
        _sink, _bars = before


def plan(rows: int) -> None:
    """See ``ProgressSink.plan``."""
    if _sink is not None:
        _sink.plan(rows)


def row_started(name: str) -> None:
    """See ``ProgressSink.row_started``."""
    if _sink is not None:
        _sink.row_started(name)


def step(phase: str, done: int, total: int) -> None:
    """See ``ProgressSink.step``; a requested stop is raised here (``check_stop``)."""
    check_stop()
    if _sink is not None:
        _sink.step(phase, done, total)


def row_finished(name: str, f1: float | None, seconds: float) -> None:
    """See ``ProgressSink.row_finished``."""
    if _sink is not None:
        _sink.row_finished(name, f1, seconds)


def headline_f1(results: Mapping[str, Any], task: str = "ner", rule: str = "strict") -> float | None:
    """The one number a finished row is summed up by: micro F1 (NER, strict by default) over every site of an
    evaluation (``fedmedlora.recipes.evaluate.evaluate_arrays``' result or ``eval/<name>.json``), or ``None`` when
    it scored nothing of that task."""
    from fedmedlora.metrics import MICRO, Evaluation

    total = None
    for r in results.values():
        if not isinstance(r, Mapping) or "metrics" not in r:
            continue  # the pooled entry (intervals) or anything else that is not a site's scores
        try:
            ev = Evaluation.from_dict(r["metrics"])
        except (KeyError, TypeError, ValueError):
            continue
        if (task, rule, MICRO) not in ev.counts:
            continue
        counts = ev.get(task, rule)
        total = counts if total is None else total + counts
    return None if total is None else total.f1


__all__ = [
    "GENERATING",
    "ROUND",
    "TRAINING",
    "ProgressSink",
    "bars",
    "check_stop",
    "current",
    "headline_f1",
    "plan",
    "reporting",
    "request_stop",
    "row_finished",
    "row_started",
    "step",
]
