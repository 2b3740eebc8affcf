"""A federation's resume point: what a finished round leaves behind, and whether a run folder can go on from it.

Owns ``federation_state.json`` (last completed round + what must match to resume: rule, seed, size key; the round's
global adapter is ``adapters/round_<N>/``), the check that the configuration has not changed since the run
started (only ``federation.rounds`` may differ), and the truncation of round logs written after the checkpoint
(rounds that ran but were interrupted before being checkpointed).

Resume restores the global adapter and the round counter; because sampling and training seeds depend only on
(seed, round, site), the resumed run selects the same sites with the same seeds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmedlora.config import RunConfig, flatten, load_config
from fedmedlora.lm.adapter_io import load_adapter_arrays
from fedmedlora.runs import COMM_FILE, CONFIG_FILE, ROUNDS_FILE, STATE_FILE, RunDir

log = logging.getLogger(__name__)


class ResumeError(RuntimeError):
    """The run folder cannot be resumed with this configuration."""


def checkpointed_round(run_dir: str | Path) -> int | None:
    """The last round checkpointed in ``run_dir`` (``federation_state.json``), or ``None`` if there is none."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    return int(json.loads(path.read_text(encoding="utf-8"))["round"])


def config_changes(saved_path: Path, cfg: RunConfig) -> list[str]:
    """Dotted fields that differ between the run's saved config and ``cfg`` (``federation.rounds`` excluded)."""
    if not saved_path.is_file():
        return []
    old = flatten(load_config(saved_path).model_dump(mode="json"))
    new = flatten(cfg.model_dump(mode="json"))
    return sorted(k for k in set(old) | set(new) if k != "federation.rounds" and old.get(k) != new.get(k))


def truncate_logs(run: RunDir, last_round: int) -> None:
    """Drop records of rounds after the resume point (written before a crash, never checkpointed)."""
    for name in (ROUNDS_FILE, COMM_FILE):
        kept = [r for r in run.read_jsonl(name) if int(r.get("round", 0)) <= last_round]
        run.write_text(name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))


@dataclass
class ResumePoint:
    """Where a resumed federation starts: after ``round``, from ``arrays``."""

    round: int
    arrays: dict[str, np.ndarray]


def resume_point(run: RunDir, cfg: RunConfig) -> ResumePoint:
    """Check that ``run`` can be resumed with ``cfg``, drop the logs of unfinished rounds, load the checkpoint.

    Raises:
        ResumeError: no checkpoint, or a different rule/seed/size key, or any other config change but
            ``federation.rounds``.
    """
    state_path = run.path / STATE_FILE
    if not state_path.is_file():
        raise ResumeError(f"cannot resume: {state_path} does not exist (no completed round in {run.path})")
    state = run.read_json(STATE_FILE)
    fed = cfg.federation
    for key, now in (("rule", fed.strategy), ("seed", cfg.seed), ("weight_by", fed.weight_by)):
        if state.get(key) != now:
            raise ResumeError(f"cannot resume {run.path}: {key} was {state.get(key)!r}, config says {now!r}")
    changed = config_changes(run.path / CONFIG_FILE, cfg)
    if changed:
        raise ResumeError(
            f"cannot resume {run.path}: the configuration changed since the run started ({', '.join(changed)}); "
            "only federation.rounds may differ"
        )
    calibrated = cfg.train.dp.target_epsilon is not None or fed.dp.target_epsilon is not None
    if calibrated and state.get("num_rounds") not in (None, fed.rounds):
        raise ResumeError(
            f"cannot resume {run.path} with federation.rounds={fed.rounds}: its DP noise was calibrated by "
            f"target_epsilon for {state.get('num_rounds')} rounds (set the noise_multiplier it used instead)"
        )
    offset = int(state["round"])
    arrays = load_adapter_arrays(run.adapter_dir(offset))
    truncate_logs(run, offset)
    log.info("resuming %s after round %d", run.path, offset)
    return ResumePoint(offset, arrays)


def write_checkpoint(run: RunDir, cfg: RunConfig, round_: int) -> None:
    """Mark ``round_`` as the resume point (its global adapter must already be in ``adapters/round_<N>/``)."""
    run.write_json(
        STATE_FILE,
        {
            "round": round_,
            "num_rounds": cfg.federation.rounds,
            "rule": cfg.federation.strategy,
            "seed": cfg.seed,
            "weight_by": cfg.federation.weight_by,
            "adapter": str(run.adapter_dir(round_).relative_to(run.path)),
        },
    )
