"""Memory of evaluation's generation: resident memory (RSS) before, at its peak during, and after every
``generate`` call of one demo evaluation, with the size of the batch's KV cache for comparison.

Runs what ``fedmedlora evaluate`` runs (``recipes.evaluate.evaluate_arrays`` on the demo config, every site's test
sentences, NER then RE), zero-shot or with ``--adapter``, in this one process, while a thread samples the RSS every
10 ms. The peak is what a hospital's machine must hold: the model, the packed copy of its weights
(``eval.packed_weights``), the KV cache of a full batch and whatever the allocator keeps. ``kv_full_batch_mb`` is
``batch × (longest prompt + max_new_tokens) × layers × 2 × kv_heads × head_dim × 4 bytes``: the largest cache a
call can hold. Peaks from different processes are comparable; the first call also pays the model's pages.

Run it once per version or setting, each in its own process, ``--append`` collecting the runs in one file
(the script uses only functions that exist since issue 12, so it also runs on older checkouts), e.g.::

    python bench/generate_memory.py --label zero-shot
    python bench/generate_memory.py --adapter runs/demo/fed-medlora/adapters/final --label fed --append
    python bench/generate_memory.py -s eval.packed_weights=false --label zero-shot-unpacked --append

~5 min zero-shot, ~3 min with a trained adapter (2 cores). One torch process at a time: threads are set by
``--threads`` (default 2).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
import torch

from _common import RESULTS_DIR, machine_info, machine_label, print_table, write_json


class _Peak:
    """The largest RSS seen by a sampling thread since the last ``reset``."""

    def __init__(self, every_s: float = 0.01) -> None:
        self.proc, self.every_s, self.value = psutil.Process(), every_s, 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            self.value = max(self.value, self.proc.memory_info().rss)
            time.sleep(self.every_s)

    def now(self) -> int:
        return self.proc.memory_info().rss

    def reset(self) -> None:
        self.value = self.now()


def _mb(n: float) -> float:
    return round(n / 2**20, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adapter", type=Path, default=None, help="adapter folder (default: zero-shot)")
    ap.add_argument("-s", "--set", action="append", default=[], help="config override, e.g. eval.batch_size=16")
    ap.add_argument("--sites", default=None, help="comma-separated (default: all four)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--label", default=None, help="name of this run in the JSON (default: zero-shot/adapter)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "generate_memory.json")
    ap.add_argument("--append", action="store_true", help="add this run to --out's runs (same label: replaced)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import fedmedlora.lm.session as session_mod
    from fedmedlora.benchmark import open_benchmark
    from fedmedlora.config import load_config
    from fedmedlora.lm.adapter_io import load_adapter_arrays
    from fedmedlora.lm.model import encode_prompt
    from fedmedlora.lm.session import Session
    from fedmedlora.recipes.evaluate import evaluate_arrays

    peak = _Peak()
    cfg = load_config("demo", args.set)
    session = Session.load(cfg)
    loaded = peak.now()
    mc = session.model.config
    kv_heads = getattr(mc, "num_key_value_heads", None) or mc.num_attention_heads
    head_dim = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
    kv_per_token = mc.num_hidden_layers * 2 * kv_heads * head_dim * 4  # fp32 keys + values, every layer
    calls: list[dict[str, Any]] = []
    real = session_mod.generate

    def measured(model: Any, tok: Any, prompts: list[Any], **kw: Any) -> list[str]:
        lengths = [len(encode_prompt(tok, p, cfg.model.use_chat_template)) for p in prompts]
        before = peak.now()
        peak.reset()
        t0 = time.perf_counter()
        out = real(model, tok, prompts, **kw)
        seconds = time.perf_counter() - t0
        rows = min(len(prompts), kw.get("batch_size", cfg.eval.batch_size))
        calls.append(
            {
                "prompts": len(prompts),
                "longest_prompt": max(lengths),
                "kv_full_batch_mb": _mb(rows * (max(lengths) + cfg.eval.max_new_tokens) * kv_per_token),
                "rss_before_mb": _mb(before),
                "rss_peak_mb": _mb(peak.value),
                "rss_after_mb": _mb(peak.now()),
                "seconds": round(seconds, 1),
            }
        )
        return out

    session_mod.generate = measured  # type: ignore[assignment]
    bench = open_benchmark(cfg.data.benchmark)
    sites = args.sites.split(",") if args.sites else list(bench.sites)
    arrays = load_adapter_arrays(args.adapter) if args.adapter else None
    t0 = time.perf_counter()
    evaluate_arrays(session, arrays, bench, sites, cfg)
    total = time.perf_counter() - t0
    label = args.label or ("adapter" if args.adapter else "zero-shot")
    result = {
        "label": label,
        "adapter": str(args.adapter) if args.adapter else None,
        "overrides": args.set,
        "sites": sites,
        "threads": args.threads,
        "model_loaded_rss_mb": _mb(loaded),
        "process_peak_rss_mb": _mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
        "generate_seconds": round(sum(c["seconds"] for c in calls), 1),
        "evaluate_seconds": round(total, 1),
        "calls": calls,
    }
    info = machine_info()
    print_table(
        f"generate memory ({label})",
        ["prompts", "longest", "KV full batch MB", "RSS before", "RSS peak", "RSS after", "s"],
        [[c[k] for k in calls[0]] for c in calls],
        caption=f"process peak {result['process_peak_rss_mb']} MB; {machine_label(info)}",
    )
    result["args"] = {k: str(v) for k, v in vars(args).items()}
    runs = [result]
    if args.append and args.out.exists():
        previous = json.loads(args.out.read_text())
        runs = [r for r in previous["runs"] if r["label"] != label] + runs
    write_json(args.out, {"machine": info, "runs": runs})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
