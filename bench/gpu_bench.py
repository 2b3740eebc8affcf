"""GPU figures: LoRA training throughput and peak memory on a Llama-3-8B-sized model, vs full fine-tuning.

The model is built from the Llama-3.1-8B architecture config (``comm_bytes.CONFIGS``) with random weights
directly on the GPU in bf16 — no download. Measured, each after warm-up steps:

* ``lora-bf16``: bf16 base + LoRA r=16 on the 7 projections (``fedmedlora.lm.model.attach_lora``), AdamW on the
  LoRA parameters; tokens/s and ``torch.cuda.max_memory_allocated``.
* ``lora-nf4``: QLoRA (NF4 base, bf16 compute, the reference setting), only if ``bitsandbytes`` is importable.
  The random bf16 model is saved to a temporary folder and reloaded quantised (needs ~16 GB of disk).
* ``full-bf16``: full fine-tuning (all parameters, AdamW, bf16 weights and optimiser states) — peak memory and
  tokens/s, or the memory at which it ran out.

Without CUDA it prints ``no GPU: skipped`` and exits 0 (``--smoke`` instead runs the same code path on a tiny
random config on the CPU, to check the script itself; its numbers mean nothing).

Usage::

    python bench/gpu_bench.py                         # → bench/results/gpu_bench.json when a GPU is present
    python bench/gpu_bench.py --batch 4 --seq 512 --steps 5
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, machine_label, print_table, write_json
from comm_bytes import ALL7, CONFIGS

TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "tie_word_embeddings": False,
}


def _gib(n: float) -> float:
    return round(n / 2**30, 2)


def _build(cfg_dict: dict[str, Any], device: Any, dtype: Any) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(cfg_dict["model_type"], **{k: v for k, v in cfg_dict.items() if k != "model_type"})
    torch.manual_seed(0)
    with warnings.catch_warnings(), torch.device(device):
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model


def _peak_reset(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: Any) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        return _gib(torch.cuda.max_memory_allocated())
    return _gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # process peak RSS on CPU


def _train(model: Any, params: list[Any], device: Any, args: argparse.Namespace, vocab: int) -> dict[str, Any]:
    """``warmup`` + ``steps`` optimiser steps on random token ids; tokens/s over the timed steps."""
    import torch

    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    gen = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=gen).to(device)

    def step() -> float:
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    tokens = args.batch * args.seq * args.steps
    return {"tokens_per_s": tokens / secs, "step_s": secs / args.steps, "last_loss": losses[-1]}


def run_lora(cfg: dict[str, Any], device: Any, args: argparse.Namespace, quantised: bool) -> dict[str, Any]:
    import torch

    from fedmedlora.config import LoraConfig
    from fedmedlora.lm.model import attach_lora, count_parameters

    _peak_reset(device)
    tmp = None
    if quantised:
        from peft import prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        base = _build(cfg, "cpu", torch.bfloat16)  # random weights; quantised on reload
        tmp = tempfile.TemporaryDirectory(prefix="gpu_bench_")
        base.save_pretrained(tmp.name)
        del base
        gc.collect()
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=False,
        )
        _peak_reset(device)
        model = AutoModelForCausalLM.from_pretrained(
            tmp.name, quantization_config=quant, dtype=torch.bfloat16, device_map={"": 0}
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.grad_ckpt)
    else:
        model = _build(cfg, device, torch.bfloat16)
        if args.grad_ckpt:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
    weights_gib = _peak(device)
    peft_model = attach_lora(model, LoraConfig(r=16, alpha=64, target_modules=ALL7), seed=0)
    trainable, total = count_parameters(peft_model)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    res = _train(peft_model, params, device, args, cfg["vocab_size"])
    res.update({"peak_gib": _peak(device), "weights_gib": weights_gib, "trainable": trainable, "total": total})
    del peft_model, model, params
    if tmp is not None:
        tmp.cleanup()
    _peak_reset(device)
    return res


def run_full(cfg: dict[str, Any], device: Any, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    _peak_reset(device)
    model = None
    try:
        model = _build(cfg, device, torch.bfloat16)
        if args.grad_ckpt:
            model.gradient_checkpointing_enable()
        weights_gib = _peak(device)
        params = [p for p in model.parameters()]
        res = _train(model, params, device, args, cfg["vocab_size"])
        res.update({"peak_gib": _peak(device), "weights_gib": weights_gib, "trainable": sum(p.numel() for p in params)})
    except torch.OutOfMemoryError as err:
        res = {"oom": True, "peak_gib": _peak(device), "error": str(err).splitlines()[0]}
    finally:
        del model
        _peak_reset(device)
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing (the QLoRA default)")
    parser.add_argument("--skip-full", action="store_true", help="do not run full fine-tuning")
    parser.add_argument("--smoke", action="store_true", help="no GPU: run the code path on a tiny CPU model")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "gpu_bench.json")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available() and not args.smoke:
        print("no GPU: skipped")
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    cfg = dict(TINY if args.smoke else CONFIGS["llama-3.1-8b"])
    info = machine_info(gpu=True)
    results: dict[str, dict[str, Any]] = {}
    results["lora-bf16"] = run_lora(cfg, device, args, quantised=False)
    print(f"lora-bf16: {results['lora-bf16']}", flush=True)
    if device.type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None:
        try:
            results["lora-nf4"] = run_lora(cfg, device, args, quantised=True)
        except Exception as err:
            results["lora-nf4"] = {"error": f"{type(err).__name__}: {err}"}
        print(f"lora-nf4: {results['lora-nf4']}", flush=True)
    else:
        results["lora-nf4"] = {"skipped": "bitsandbytes not importable" if device.type == "cuda" else "needs CUDA"}
    if not args.skip_full:
        results["full-bf16"] = run_full(cfg, device, args)
        print(f"full-bf16: {results['full-bf16']}", flush=True)

    rows = []
    for name, res in results.items():
        if "tokens_per_s" in res:
            rows.append(
                [name, f"{res['tokens_per_s']:.0f}", f"{res['step_s']:.2f}", f"{res['peak_gib']}", res.get("trainable")]
            )
        else:
            rows.append([name, "—", "—", f"OOM at {res['peak_gib']}" if res.get("oom") else "—", str(res)[:60]])
    model_name = "tiny smoke config (CPU, numbers meaningless)" if args.smoke else "Llama-3.1-8B config, random weights"
    print_table(
        f"{model_name}: batch {args.batch}×{args.seq} tokens, grad-ckpt={args.grad_ckpt}",
        ["setting", "tokens/s", "s/step", "peak GiB" + (" (RSS)" if device.type == "cpu" else ""), "trainable"],
        rows,
        f"Machine: {machine_label(info)}",
    )
    out = args.out if not args.smoke or args.out != RESULTS_DIR / "gpu_bench.json" else None
    if out is not None:
        write_json(
            out,
            {
                "benchmark": "gpu_bench",
                "machine": info,
                "model": model_name,
                "config": cfg,
                "batch": args.batch,
                "seq": args.seq,
                "steps": args.steps,
                "warmup": args.warmup,
                "grad_ckpt": args.grad_ckpt,
                "results": results,
            },
        )
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
