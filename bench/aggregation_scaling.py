"""Time of ``fedmedlora.aggregation.weighted_mean`` as the number of sites and the adapter size grow.

Adapters are random float32 arrays with the exact tensor layout of a PEFT LoRA adapter (A: ``(r, in)``,
B: ``(out, r)`` for every targeted projection of every layer), derived from the architecture configs in
``comm_bytes.CONFIGS``. The timed call includes what the server really does: the per-site checks (keys, shapes,
dtypes, finiteness) and the float64 accumulation.

Memory: at most ``--budget-gb`` (default 1.5 GB) of site adapters are held at once. When ``n_sites × adapter``
exceeds it, the list of updates reuses a pool of distinct arrays cyclically (marked ``reused_pool`` in the
JSON). Each array is far larger than any CPU cache, so reuse does not make the run faster; the cost per site is
still a full pass over memory.

Usage::

    python bench/aggregation_scaling.py                 # table + bench/results/aggregation_scaling.json
    python bench/aggregation_scaling.py --sites 2 4 --sizes smollm2-r8
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, human_bytes, machine_info, machine_label, print_table, write_json
from comm_bytes import ALL7, CONFIGS, EXPECTED_R16
from fedmedlora.aggregation import size_weights, weighted_mean

#: name → (config name, LoRA rank, targets)
SIZES: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "smollm2-r8": ("smollm2-135m", 8, ALL7),
    "smollm2-r16": ("smollm2-135m", 16, ALL7),
    "llama3.2-1b-r16": ("llama-3.2-1b", 16, ALL7),
    "llama3.1-8b-r16": ("llama-3.1-8b", 16, ALL7),
}


def lora_shapes(cfg: dict[str, Any], r: int, targets: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """PEFT adapter keys and shapes for a Llama-style decoder (same names as ``get_peft_model_state_dict``)."""
    d, f = cfg["hidden_size"], cfg["intermediate_size"]
    head_dim = cfg.get("head_dim") or d // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
    io = {
        "q_proj": ("self_attn", d, q),
        "k_proj": ("self_attn", d, kv),
        "v_proj": ("self_attn", d, kv),
        "o_proj": ("self_attn", q, d),
        "gate_proj": ("mlp", d, f),
        "up_proj": ("mlp", d, f),
        "down_proj": ("mlp", f, d),
    }
    shapes: dict[str, tuple[int, int]] = {}
    for layer in range(cfg["num_hidden_layers"]):
        for t in targets:
            block, fan_in, fan_out = io[t]
            prefix = f"base_model.model.model.layers.{layer}.{block}.{t}"
            shapes[f"{prefix}.lora_A.weight"] = (r, fan_in)
            shapes[f"{prefix}.lora_B.weight"] = (fan_out, r)
    return shapes


def random_adapter(shapes: dict[str, tuple[int, int]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: rng.random(s, dtype=np.float32) - np.float32(0.5) for k, s in shapes.items()}


def linear_fit(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Least-squares ``y = a·x + b``; returns (a, b, R²)."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    a, b = np.polyfit(xa, ya, 1)
    resid = ya - (a * xa + b)
    ss_tot = float(((ya - ya.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return float(a), float(b), r2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, nargs="*", default=[2, 4, 8, 16, 32])
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed calls per point (the minimum is reported: least disturbed by other jobs)",
    )
    parser.add_argument("--budget-gb", type=float, default=1.5, help="max GB of site adapters held at once")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "aggregation_scaling.json")
    args = parser.parse_args(argv)

    info = machine_info()
    rng = np.random.default_rng(0)
    points: list[dict[str, Any]] = []
    fits: dict[str, dict[str, float]] = {}
    for size in args.sizes:
        cfg_name, r, targets = SIZES[size]
        shapes = lora_shapes(CONFIGS[cfg_name], r, targets)
        n_values = int(sum(a * b for a, b in shapes.values()))
        label = {16: "r=16"}.get(r, f"r={r}")
        expected = {"llama-3.1-8b": "Llama-3.1-8B (7 proj)", "llama-3.2-1b": "Llama-3.2-1B (7 proj)"}.get(cfg_name)
        if r == 16 and expected and EXPECTED_R16[expected] != n_values:
            raise AssertionError(f"{size}: {n_values} values, expected {EXPECTED_R16[expected]}")
        adapter_bytes = 4 * n_values
        pool_n = max(1, min(max(args.sites), int(args.budget_gb * 1e9 // adapter_bytes)))
        t0 = time.perf_counter()
        pool = [random_adapter(shapes, rng) for _ in range(pool_n)]
        gen_s = time.perf_counter() - t0
        print(
            f"{size}: {len(shapes)} tensors, {n_values:,} values ({human_bytes(adapter_bytes)}), "
            f"pool of {pool_n} distinct adapters generated in {gen_s:.1f} s",
            flush=True,
        )
        weighted_mean(pool[: min(2, pool_n)], [1.0] * min(2, pool_n))  # warm-up (allocator, page faults)
        xs, ys = [], []
        for n in args.sites:
            updates = [pool[i % pool_n] for i in range(n)]
            weights = size_weights(rng.integers(100, 10_000, size=n).tolist())
            repeats = args.repeats if n_values * n < 2e8 else max(1, min(args.repeats, 3))
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = weighted_mean(updates, weights)
                times.append(time.perf_counter() - t0)
                del out
            best, med = min(times), statistics.median(times)
            xs.append(n)
            ys.append(best)
            points.append(
                {
                    "size": size,
                    "config": cfg_name,
                    "r": r,
                    "tensors": len(shapes),
                    "values_per_site": n_values,
                    "bytes_per_site": adapter_bytes,
                    "sites": n,
                    "repeats": repeats,
                    "seconds_min": best,
                    "seconds_median": med,
                    "seconds_all": times,
                    "ns_per_value_site": 1e9 * best / (n * n_values),
                    "reused_pool": n > pool_n,
                }
            )
            print(f"  {n:>3} sites: {best:8.3f} s min, {med:8.3f} s median ({repeats} calls)", flush=True)
        a, b, r2 = linear_fit(xs, ys)
        fits[size] = {"seconds_per_site": a, "intercept_s": b, "r2": r2, "label": label}
        del pool
        gc.collect()

    caption = f"Machine: {machine_label(info)}"
    sizes_in_run = list(dict.fromkeys(p["size"] for p in points))
    rows = []
    for size in sizes_in_run:
        pts = [p for p in points if p["size"] == size]
        rows.append(
            [
                f"{size} ({human_bytes(pts[0]['bytes_per_site'])}/site)",
                *(f"{p['seconds_min']:.3f}" for p in pts),
                f"{fits[size]['seconds_per_site'] * 1e3:.1f}",
                f"{fits[size]['r2']:.4f}",
                f"{statistics.median(p['ns_per_value_site'] for p in pts):.2f}",
            ]
        )
    print_table(
        "weighted_mean wall time (s, best of the repeats) vs number of sites",
        ["adapter", *(f"{n} sites" for n in args.sites), "ms per extra site", "R² (linear)", "ns/value·site"],
        rows,
        caption,
    )
    all_x = [p["sites"] * p["values_per_site"] for p in points]
    all_y = [p["seconds_min"] for p in points]
    a, b, r2 = linear_fit(all_x, all_y)
    print(f"all points: time ≈ {a * 1e9:.2f} ns × (sites × values) {b * 1e3:+.1f} ms, R² = {r2:.4f}")
    write_json(
        args.out,
        {
            "benchmark": "aggregation_scaling",
            "machine": info,
            "function": "fedmedlora.aggregation.weighted_mean (checks + float64 accumulation)",
            "points": points,
            "fit_per_size": fits,
            "fit_all": {"ns_per_value_site": a * 1e9, "intercept_s": b, "r2": r2},
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
