"""Framework overhead per federated round: round wall time minus the model work (local training, validation).

Runs the real ServerApp and ClientApp through ``fedmedlora.federation.simulation.run_federation`` (in-process,
every message serialised to protobuf as on the wire) with a tiny random Llama (``tests/tinymodel.py``,
2 layers, hidden 32) on 3 and 10 simulated sites. ``fedmedlora.lm.train.train_local`` and
``fedmedlora.lm.train.validation_loss`` are wrapped with timers; what is left of each round's wall time is the
framework: message building and (de)serialisation, checks, aggregation, adapter checkpoints, logs.

Usage::

    python bench/round_overhead.py                     # 3 and 10 sites, 3 rounds → bench/results/round_overhead.json
    python bench/round_overhead.py --sites 3 --rounds 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, machine_label, print_table, write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def _tiny_builders() -> Any:
    """The test suite's tiny model builders (``tests/tinymodel.py``, loaded as a plain module)."""
    path = REPO / "tests" / "tinymodel.py"
    spec = importlib.util.spec_from_file_location("_fedmedlora_tinymodel", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise FileNotFoundError(f"{path}: needed for the tiny model builders")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need their module registered
    spec.loader.exec_module(module)
    return module


def build_world(root: Path, n_sites: int) -> list[str]:
    """Tiny model folder + an ``n_sites`` benchmark (4 training docs, 1 dev doc each) + server validation."""
    sites = [f"site{k:02d}" for k in range(n_sites)]
    _tiny_builders().build_tiny_world(root, sites, [4] * n_sites)
    return sites


class Timers:
    """Wraps ``fedmedlora.lm.train.train_local`` / ``validation_loss`` and records (kind, start, end)."""

    def __init__(self) -> None:
        import fedmedlora.lm.train as train_module

        self.module = train_module
        self.calls: list[tuple[str, float, float]] = []
        self._orig = {name: getattr(train_module, name) for name in ("train_local", "validation_loss")}

    def __enter__(self) -> Timers:
        for name, fn in self._orig.items():
            setattr(self.module, name, self._wrap(name, fn))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in self._orig.items():
            setattr(self.module, name, fn)

    def _wrap(self, name: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.calls.append((name, t0, time.time()))

        return timed


def run_once(root: Path, sites: list[str], rounds: int, steps: int) -> dict[str, Any]:
    from fedmedlora.config import load_config
    from fedmedlora.federation.simulation import run_federation

    cfg = load_config(
        overrides=[
            "name=overhead",
            f"model.name={root / 'model'}",
            "model.dtype=float32",
            "model.device=cpu",
            "lora.r=2",
            "lora.alpha=4",
            f"train.max_steps={steps}",
            "train.batch_size=2",
            "train.max_length=128",
            "data.tasks=[ner]",
            "federation.strategy=fedmedlora",
            f"federation.rounds={rounds}",
            f"federation.sites=[{','.join(sites)}]",
            f"federation.min_sites={len(sites)}",
        ]
    )
    out = Path(tempfile.mkdtemp(prefix=f"overhead{len(sites)}_", dir=root))
    with Timers() as timers:
        t0 = time.perf_counter()
        result = run_federation(cfg, out / "run", data_dir=root / "bench")
        total = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "run" / "rounds.jsonl").read_text().splitlines() if line.strip()]
    per_round = []
    for rec in records:
        if rec.get("round", 0) == 0 or "seconds" not in rec:
            continue
        start = rec.get("started", rec["time"] - rec["seconds"])
        end = start + rec["seconds"]
        inside = [(k, a, b) for k, a, b in timers.calls if a >= start - 1e-3 and b <= end + 1e-3]
        train_s = sum(b - a for k, a, b in inside if k == "train_local")
        val_s = sum(b - a for k, a, b in inside if k == "validation_loss")
        per_round.append(
            {
                "round": rec["round"],
                "wall_s": rec["seconds"],
                "train_s": train_s,
                "validation_s": val_s,
                "overhead_s": rec["seconds"] - train_s - val_s,
                "train_calls": sum(1 for k, *_ in inside if k == "train_local"),
            }
        )
    up = sum(w.wire_bytes for w in result.wire if w.direction == "up")
    down = sum(w.wire_bytes for w in result.wire if w.direction == "down")
    return {
        "sites": len(sites),
        "rounds": rounds,
        "train_steps_per_round": steps,
        "total_s": total,
        "per_round": per_round,
        "wire_bytes_up": up,
        "wire_bytes_down": down,
        "messages": len(result.wire),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, nargs="*", default=[3, 10])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1, help="local optimiser steps per site and round")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "round_overhead.json")
    args = parser.parse_args(argv)
    import flwr  # noqa: F401  (imported first so that its logger exists before we quieten it)

    for name in ("flwr", "fedmedlora"):
        logging.getLogger(name).setLevel(logging.WARNING)

    info = machine_info()
    runs = []
    with tempfile.TemporaryDirectory(prefix="round_overhead_") as tmp:
        root = Path(tmp)
        for n in args.sites:
            sites = build_world(root, n)
            res = run_once(root, sites, args.rounds, args.steps)
            runs.append(res)
            print(f"{n} sites: {res['total_s']:.1f} s total; per round: {res['per_round']}", flush=True)

    rows = []
    for res in runs:
        pr = res["per_round"]
        # round 1 pays one-off costs (model load, first-call warm-ups); report it apart from the steady state
        steady = pr[1:] or pr
        rows.append(
            [
                f"{res['sites']} sites",
                f"{pr[0]['wall_s']:.2f} / {pr[0]['overhead_s']:.2f}" if pr else "—",
                f"{statistics.median(r['wall_s'] for r in steady):.2f}" if steady else "—",
                f"{statistics.median(r['train_s'] for r in steady):.2f}" if steady else "—",
                f"{statistics.median(r['validation_s'] for r in steady):.2f}" if steady else "—",
                f"{statistics.median(r['overhead_s'] for r in steady):.2f}" if steady else "—",
                f"{statistics.median(r['overhead_s'] for r in steady) / res['sites'] * 1e3:.0f}" if steady else "—",
            ]
        )
    print_table(
        f"Per-round framework overhead, in-process federation, tiny random Llama, {args.steps} local step(s)",
        [
            "federation",
            "round 1 wall / overhead (s)",
            "later rounds wall (s)",
            "local training (s)",
            "validation (s)",
            "overhead (s)",
            "overhead per site (ms)",
        ],
        rows,
        f"Machine: {machine_label(info)}",
    )
    write_json(
        args.out,
        {
            "benchmark": "round_overhead",
            "machine": info,
            "driver": "fedmedlora.federation.simulation.run_federation (in-process, protobuf round trip)",
            "model": "tiny random Llama (2 layers, hidden 32), LoRA r=2, fp32, CPU",
            "runs": runs,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
