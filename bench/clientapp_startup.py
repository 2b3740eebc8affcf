"""Per-round start-up cost of a site on Flower's Deployment Engine, with the real small model.

On the Deployment Engine every round runs the ClientApp in a fresh ``flwr-clientapp`` process (peers.md §2.2), so
each round pays: interpreter start, importing torch/transformers/peft/flwr and fedmedlora's client app, and loading
the base model + attaching LoRA. This script times exactly that in fresh subprocesses (the GGUF → HF conversion is
cached once beforehand and is not part of a round). Prints a table and writes JSON.

    python bench/clientapp_startup.py --repeats 3 --out bench/results/clientapp_startup.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, machine_label, print_table, write_json

CHILD = r"""
import json, time
t0 = time.perf_counter()
import fedmedlora.federation.client_app  # noqa: F401  (torch, transformers, peft, flwr)
from fedmedlora.config import load_config
from fedmedlora.lm.session import Session
t1 = time.perf_counter()
Session.load(load_config("demo"))
t2 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "model_load_s": t2 - t1}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "clientapp_startup.json")
    args = parser.parse_args()

    # materialise the default model once (not part of a round)
    subprocess.run(
        [sys.executable, "-c", "from fedmedlora.lm.model import load_base_model; load_base_model(None)"],
        check=True,
        capture_output=True,
    )
    runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD], check=True, capture_output=True, text=True)
        total = time.perf_counter() - t0
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        rec["process_total_s"] = total
        runs.append(rec)
    keys = ("imports_s", "model_load_s", "process_total_s")
    summary = {k: statistics.median(r[k] for r in runs) for k in keys}
    info = machine_info()
    print_table(
        f"Per-round ClientApp start-up, SmolLM2-135M + LoRA (median of {args.repeats})",
        ["imports (s)", "model load + LoRA (s)", "whole fresh process (s)"],
        [[f"{summary[k]:.2f}" for k in keys]],
        caption=machine_label(info),
    )
    write_json(args.out, {"machine": info, "runs": runs, "median": summary})


if __name__ == "__main__":
    main()
