"""Training under bf16 autocast on CPU: step time and loss against fp32, same model, data, seed and steps.

``train.autocast=bf16`` runs forward and backward under ``torch.autocast(bfloat16)``; the LoRA weights and AdamW
stay fp32. This script trains the demo's SmolLM2 adapter on PHEE's training examples ``--steps`` steps in fp32 and
in bf16 autocast, ``--repeats`` times alternating (A B A B, so load from other processes hits both alike), from the
same initial adapter and seed, and reports the median step time of each, their ratio, the final training losses and
the largest absolute difference between the two trained adapters. It does not measure F1: the default stays fp32
until a study scores both (see docs/performance.md). Only meaningful on CPUs with bf16 hardware (AMX /
AVX-512-bf16); elsewhere autocast emulates bf16 and is slower.

``--layouts padded,tree`` measures both micro-batch layouts (``train.prefix_sharing`` false / true, the default:
one prefix tree per micro-batch), each against its own fp32 run; the runs alternate over layouts and modes.

Usage::

    python bench/train_autocast.py                  # ~4 min on 2 cores
    python bench/train_autocast.py --steps 4 --repeats 1
    python bench/train_autocast.py --steps 6 --layouts padded,tree --out bench/results/train_autocast_layouts.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch

from _common import RESULTS_DIR, machine_info, machine_label, print_table, write_json
from fedmedlora.benchmark import open_benchmark
from fedmedlora.config import load_config
from fedmedlora.lm.session import Session
from fedmedlora.sampling import site_examples

#: --layouts name -> train.prefix_sharing
LAYOUTS = {"padded": False, "tree": True}


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """The largest absolute difference between two adapters, over every weight."""
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--layouts", default="tree", help="micro-batch layouts, comma-separated: padded (prefix_sharing=false), tree"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    if not layouts or set(layouts) - set(LAYOUTS):
        ap.error(f"--layouts: choose from {', '.join(LAYOUTS)}, got {args.layouts!r}")
    base = load_config("demo", ["model.device=cpu", f"train.max_steps={args.steps}"])
    examples = site_examples(open_benchmark(None), "phee", base)
    session = Session.load(base)
    runs: dict[tuple[str, str], list] = {(lay, mode): [] for lay in layouts for mode in ("none", "bf16")}
    for _ in range(args.repeats):
        for lay, mode in runs:
            train = base.train.model_copy(update={"autocast": mode, "prefix_sharing": LAYOUTS[lay]})
            runs[lay, mode].append(
                session.train(examples, None, base.model_copy(update={"train": train}), progress=False)
            )
    rows = []
    for (lay, mode), results in runs.items():
        steps = [s for r in results for s in r.step_seconds[1:]]  # the first step of each run warms up
        rows.append(
            {
                "layout": lay,
                "autocast": mode,
                "median_step_s": round(statistics.median(steps), 2),
                "final_loss": round(results[-1].losses[-1], 4),
                "mean_loss": round(results[-1].train_loss, 4),
            }
        )
    step = {(r["layout"], r["autocast"]): r["median_step_s"] for r in rows}
    speedup = {lay: round(step[lay, "none"] / step[lay, "bf16"], 3) for lay in layouts}
    diff = {lay: _max_diff(runs[lay, "none"][-1].arrays, runs[lay, "bf16"][-1].arrays) for lay in layouts}
    info = machine_info()
    info["torch_threads"] = torch.get_num_threads()
    cols = ["layout", "autocast", "median_step_s", "final_loss", "mean_loss"]
    print_table(
        "train_local: fp32 vs bf16 autocast", cols, [[r[c] for c in cols] for r in rows],
        machine_label(info) + f"; torch threads {info['torch_threads']}",
    )  # fmt: skip
    for lay in layouts:
        print(
            f"{lay}: speed-up of bf16 autocast {speedup[lay]:.2f}x; max |adapter fp32 - adapter bf16| = {diff[lay]:.3g}"
        )
    out = args.out or RESULTS_DIR / "train_autocast.json"
    payload = {"rows": rows, "speedup_bf16": speedup, "max_abs_adapter_diff": diff, "machine": info,
               "args": {k: str(v) for k, v in vars(args).items()}}  # fmt: skip
    write_json(out, payload)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
