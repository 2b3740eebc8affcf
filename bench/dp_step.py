"""The cost of record-level DP-SGD: time per optimiser step against plain training, same model, data and seed.

Trains the demo's SmolLM2 adapter on one site's training examples (``--site``, default chia) for ``--steps``
steps: plain (``train.batch_size`` examples per step), DP-SGD with ``unit=sentence`` and with ``unit=document``
(``train.batch_size`` *records* per step, Poisson-sampled, so a step processes every prompt of the sampled
records). Reports the median step time, the mean number of examples a step processed and the time ratio to the
plain step, measured in one run on one machine. Run it alone (one torch process at a time).

Usage::

    python bench/dp_step.py                # ~6 min on 2 cores
    python bench/dp_step.py --steps 3 --site phee
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

import torch

from _common import RESULTS_DIR, machine_info, machine_label, print_table, write_json
from fedmedlora.benchmark import open_benchmark
from fedmedlora.config import load_config
from fedmedlora.lm.session import Session
from fedmedlora.privacy import record_ids
from fedmedlora.sampling import site_examples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--site", default="chia")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    base = load_config("demo", ["model.device=cpu", f"train.max_steps={args.steps}"])
    examples = site_examples(open_benchmark(None), args.site, base)
    session = Session.load(base)
    modes = {
        "plain": [],
        "dp-sgd, unit=sentence": ["train.dp.noise_multiplier=1.0", "train.dp.unit=sentence"],
        "dp-sgd, unit=document": ["train.dp.noise_multiplier=1.0", "train.dp.unit=document"],
    }
    rows = []
    for mode, overrides in modes.items():
        cfg = load_config(overrides=overrides, **base.model_dump(mode="json"))
        result = session.train(examples, None, cfg, progress=False)
        steps = result.step_seconds[1:] or result.step_seconds  # the first step warms up
        if result.privacy is not None:
            records = max(record_ids(examples, cfg.train.dp.unit)) + 1
            examples_per_step = statistics.mean(result.privacy.sampled_examples)
        else:
            records, examples_per_step = len(examples), float(cfg.train.batch_size)
        rows.append(
            {
                "mode": mode,
                "records": records,
                "median_step_s": round(statistics.median(steps), 2),
                "examples_per_step": round(examples_per_step, 1),
                "epsilon": round(result.privacy.epsilon, 2) if result.privacy else None,
            }
        )
    plain = rows[0]["median_step_s"]
    for r in rows:
        r["ratio_to_plain"] = round(r["median_step_s"] / plain, 2)
    info = machine_info()
    info["torch_threads"] = torch.get_num_threads()
    cols = ["mode", "records", "median_step_s", "examples_per_step", "ratio_to_plain", "epsilon"]
    print_table(
        f"train_local at {args.site}: plain vs DP-SGD ({args.steps} steps, batch {base.train.batch_size})",
        cols,
        [[r[c] for c in cols] for r in rows],
        machine_label(info) + f"; torch threads {info['torch_threads']}",
    )
    out = args.out or RESULTS_DIR / "dp_step.json"
    write_json(out, {"rows": rows, "machine": info, "args": {k: str(v) for k, v in vars(args).items()}})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
