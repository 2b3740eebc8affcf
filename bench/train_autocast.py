"""Training under bf16 autocast on CPU: step time and loss against fp32, same model, data, seed and steps.

``train.autocast=bf16`` runs forward and backward under ``torch.autocast(bfloat16)``; the LoRA weights and AdamW
stay fp32. This script trains the demo's SmolLM2 adapter on PHEE's training examples ``--steps`` steps in fp32 and
in bf16 autocast, ``--repeats`` times alternating (A B A B, so load from other processes hits both alike), from the
same initial adapter and seed, and reports the median step time of each, their ratio, the final training losses and
the largest absolute difference between the two trained adapters. It does not measure F1: the default stays fp32
until a study scores both (see docs/performance.md). Only meaningful on CPUs with bf16 hardware (AMX /
AVX-512-bf16); elsewhere autocast emulates bf16 and is slower.

Usage::

    python bench/train_autocast.py                  # ~4 min on 2 cores
    python bench/train_autocast.py --steps 4 --repeats 1
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    base = load_config("demo", ["model.device=cpu", f"train.max_steps={args.steps}"])
    examples = site_examples(open_benchmark(None), "phee", base)
    session = Session.load(base)
    runs: dict[str, list] = {"none": [], "bf16": []}
    for _ in range(args.repeats):
        for mode in ("none", "bf16"):
            cfg = base.model_copy(update={"train": base.train.model_copy(update={"autocast": mode})})
            runs[mode].append(session.train(examples, None, cfg, progress=False))
    rows = []
    for mode, results in runs.items():
        steps = [s for r in results for s in r.step_seconds[1:]]  # the first step of each run warms up
        rows.append(
            {
                "autocast": mode,
                "median_step_s": round(statistics.median(steps), 2),
                "final_loss": round(results[-1].losses[-1], 4),
                "mean_loss": round(results[-1].train_loss, 4),
            }
        )
    ratio = rows[0]["median_step_s"] / rows[1]["median_step_s"]
    a, b = runs["none"][-1].arrays, runs["bf16"][-1].arrays
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    info = machine_info()
    info["torch_threads"] = torch.get_num_threads()
    print_table(
        "train_local: fp32 vs bf16 autocast", ["autocast", "median_step_s", "final_loss", "mean_loss"],
        [[r[c] for c in ("autocast", "median_step_s", "final_loss", "mean_loss")] for r in rows],
        machine_label(info) + f"; torch threads {info['torch_threads']}",
    )  # fmt: skip
    print(f"speed-up of bf16 autocast: {ratio:.2f}x; max |adapter fp32 - adapter bf16| = {diff:.3g}")
    out = args.out or RESULTS_DIR / "train_autocast.json"
    payload = {"rows": rows, "speedup_bf16": round(ratio, 3), "max_abs_adapter_diff": diff, "machine": info,
               "args": {k: str(v) for k, v in vars(args).items()}}  # fmt: skip
    write_json(out, payload)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
