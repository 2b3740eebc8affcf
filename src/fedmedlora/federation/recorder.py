"""What the coordinator writes after every round: the round record, the message log, a checkpoint.

Owns ``RoundRecorder``, the ``evaluate_fn`` Flower's strategy loop calls after each round's aggregation. It scores
the new global adapter (``ServerEvaluator``), saves it as ``adapters/round_<N>/`` (a PEFT folder), appends the
round's messages to ``comm.jsonl`` and its record to ``rounds.jsonl``, then moves the resume point
(``fedmedlora.federation.checkpoint``). A round is resumable only once all of that is on disk.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, MetricRecord

from fedmedlora import progress as progress_events
from fedmedlora.config import RunConfig
from fedmedlora.federation.checkpoint import write_checkpoint
from fedmedlora.federation.messages import VAL_LOSS, from_record
from fedmedlora.federation.server_eval import ServerEvaluator
from fedmedlora.federation.strategies import LoraStrategy
from fedmedlora.lm.adapter_io import adapter_meta, save_adapter
from fedmedlora.lm.session import Session
from fedmedlora.runs import COMM_FILE, ROUNDS_FILE, RunDir


class RoundRecorder:
    """Per-round records of a federation (``strategy.start(..., evaluate_fn=recorder)``).

    Args:
        run: The run folder.
        cfg: The run's configuration (adapter metadata, checkpoint fields).
        strategy: The running strategy (its ``rounds`` and ``messages`` bookkeeping is read and flushed).
        session: The coordinator's loaded model (its PEFT config describes the saved arrays).
        evaluator: The coordinator's validation scores.
        offset: Rounds completed before this run started (resume).
    """

    def __init__(
        self,
        run: RunDir,
        cfg: RunConfig,
        strategy: LoraStrategy,
        session: Session,
        evaluator: ServerEvaluator,
        offset: int = 0,
    ) -> None:
        self.run = run
        self.cfg = cfg
        self.strategy = strategy
        self.session = session
        self.evaluator = evaluator
        self.offset = offset
        self.records: list[dict[str, Any]] = []
        self.last_arrays: dict[str, np.ndarray] | None = None
        progress_events.step(progress_events.ROUND, offset, cfg.federation.rounds)

    def save_adapter(self, arrays: dict[str, np.ndarray], name: int | str, **meta: Any) -> None:
        """``adapters/<round_N | name>/``: the arrays as a PEFT folder with this run's metadata."""
        save_adapter(
            arrays,
            self.run.adapter_dir(name),
            adapter_meta(self.cfg, rule=self.cfg.federation.strategy, **meta),
            peft_config=self.session.peft_config,
        )

    def __call__(self, server_round: int, arrays_record: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        rnd = self.offset + server_round
        arrays = from_record(arrays_record, "global adapter")
        rlog = self.strategy.rounds[rnd]
        record: dict[str, Any] = {"time": time.time(), **asdict(rlog)}
        record["size_key"] = self.cfg.federation.weight_by
        record.update(self.evaluator.scores(arrays))
        self.save_adapter(arrays, rnd, round=rnd, sites=rlog.sites)
        self.last_arrays = arrays
        site_of_node = dict(zip(rlog.node_ids, rlog.sites, strict=True))
        mine = [m for m in self.strategy.messages if m["round"] == rnd]
        self.strategy.messages = [m for m in self.strategy.messages if m["round"] != rnd]
        for m in mine:
            m.setdefault("site", site_of_node.get(m["node_id"]))
            self.run.append_jsonl(COMM_FILE, m)
        record["seconds"] = round(time.time() - rlog.started, 3)
        self.run.append_jsonl(ROUNDS_FILE, record)
        write_checkpoint(self.run, self.cfg, rnd)
        self.records.append(record)
        progress_events.step(progress_events.ROUND, rnd, self.cfg.federation.rounds)
        return MetricRecord({VAL_LOSS: record["val_loss"]}) if "val_loss" in record else None
