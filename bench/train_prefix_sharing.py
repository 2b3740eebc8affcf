"""Training with prefix-shared micro-batches (``train.prefix_sharing``) against padded ones: step time and agreement.

``train.prefix_sharing=true`` packs a micro-batch into one sequence in which the rows' common prompt prefixes appear
once (``fedmedlora.lm.packing``); the loss and gradients are the padded batch's up to floating-point rounding. This
script trains the demo's SmolLM2 adapter on each training site's examples ``--steps`` steps with and without it,
``--repeats`` times alternating (A B A B, so load from other processes hits both alike), from the same initial
adapter and seed, and reports per site the median step time of each, their ratio, the positions computed per step
(padded batch against the packed tree), the largest difference between the two runs' step losses and between
the two trained adapters.

Usage::

    python bench/train_prefix_sharing.py                  # ~4 min on 2 cores
    python bench/train_prefix_sharing.py --steps 4 --repeats 1 --sites phee
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
from fedmedlora.lm.packing import pack_shared_prefixes
from fedmedlora.lm.session import Session
from fedmedlora.lm.train import TrainSettings, _micro_batches, encode_examples, labels_for
from fedmedlora.sampling import site_examples


def positions_per_step(tokenizer, examples, cfg, steps: int) -> tuple[float, float]:
    """Mean positions per micro-batch of the first ``steps`` batches train_local draws: padded, packed."""
    settings = TrainSettings.from_config(cfg)
    data = encode_examples(tokenizer, examples, settings).examples
    batches = _micro_batches(len(data), settings.batch_size, torch.Generator().manual_seed(settings.seed))
    padded, packed = [], []
    for _ in range(steps):
        rows = [data[i] for i in next(batches)]
        padded.append(len(rows) * max(len(r.input_ids) for r in rows))
        tree = pack_shared_prefixes([r.input_ids for r in rows], [labels_for(r, settings.loss_on) for r in rows])
        packed.append(tree.length)
    return statistics.mean(padded), statistics.mean(packed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--sites", default="chia,phee,bc5cdr")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    base = load_config("demo", ["model.device=cpu", f"train.max_steps={args.steps}"])
    bench = open_benchmark(None)
    session = Session.load(base)
    rows = []
    for site in args.sites.split(","):
        examples = site_examples(bench, site, base)
        runs: dict[bool, list] = {False: [], True: []}
        for _ in range(args.repeats):
            for sharing in (False, True):
                cfg = base.model_copy(update={"train": base.train.model_copy(update={"prefix_sharing": sharing})})
                runs[sharing].append(session.train(examples, None, cfg, progress=False))
        median = {s: statistics.median(x for r in runs[s] for x in r.step_seconds[1:]) for s in runs}
        a, b = runs[False][-1], runs[True][-1]
        padded, packed = positions_per_step(session.tokenizer, examples, base, args.steps)
        rows.append(
            {
                "site": site,
                "padded_step_s": round(median[False], 2),
                "shared_step_s": round(median[True], 2),
                "speedup": round(median[False] / median[True], 2),
                "padded_positions": round(padded),
                "shared_positions": round(packed),
                "max_step_loss_diff": float(np.max(np.abs(np.array(a.losses) - np.array(b.losses)))),
                "max_adapter_diff": max(float(np.abs(a.arrays[k] - b.arrays[k]).max()) for k in a.arrays),
            }
        )
    info = machine_info()
    info["torch_threads"] = torch.get_num_threads()
    cols = list(rows[0])
    print_table(
        "train_local: padded vs prefix-shared micro-batches", cols, [[r[c] for c in cols] for r in rows],
        machine_label(info) + f"; torch threads {info['torch_threads']}",
    )  # fmt: skip
    total = sum(r["padded_step_s"] for r in rows) / sum(r["shared_step_s"] for r in rows)
    print(f"speed-up over the sites' median steps: {total:.2f}x")
    out = args.out or RESULTS_DIR / "train_prefix_sharing.json"
    payload = {"rows": rows, "speedup": round(total, 3), "machine": info,
               "args": {k: str(v) for k, v in vars(args).items()}}  # fmt: skip
    write_json(out, payload)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
