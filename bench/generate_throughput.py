"""Generation throughput: ``fedmedlora.lm.generate.generate`` (prefix cache, early stop, rows dropped) against plain
``model.generate`` (``generate_hf``, the decoder before issue 12) on the study's real prompts.

Prompts: the demo preset's evaluation prompts (JSON format, NER + RE with gold heads) of ``--sentences`` seeded test
sentences per site, for two adapters: zero-shot (the base model) and an adapter trained here for
``--train-steps`` steps on the pooled training sites (or ``--adapter DIR``). Both decoders run with the adapter
merged and the same ``max_new_tokens`` and batch size, one after the other in this one process.

Reported per adapter: answers/s and generated tokens/s of each decoder and their ratio; the share of prompts whose
new output equals the plain output cut by the same stop rule (``stopping.cut_at_stop``: the exactness claim), equals
the raw plain output, and parses to the same spans; micro F1 (NER and RE strict) of both. ``--dtype bfloat16``
adds the fast decoder in bf16 (only meaningful on CPUs with bf16 hardware: AMX / AVX-512-bf16) with its agreement
with fp32 and its F1. The compute bound: a large fp32 matmul's GFLOP/s on this machine divided by the ~2 x
parameters FLOPs a generated token needs = the tokens/s no decoder can beat on these cores. ``--constrained`` adds
constrained decoding (``eval.constrained``): its F1 and share of answers with a parse failure next to the
unconstrained ones.

``--unpacked`` also times the new decoder without packed weights (``eval.packed_weights=false``: the decoder
before ``fedmedlora.lm.prepack``) and its agreement with the packed one; ``--old-batch-size 8`` also times plain
``model.generate`` at the batch size the demo evaluated with when issue 12 was filed.

``--ctranslate2`` (needs ``pip install ctranslate2``; not a project dependency) also decodes with a CTranslate2
fp32 generator converted from the merged model: prompts grouped by instruction with the group's common prefix as
CTranslate2's cached ``static_prompt``, the same stop rule applied through its per-token callback; its time (after
conversion) against the new decoder and its share of identical answers.

Nothing is asserted. Usage::

    python bench/generate_throughput.py                       # ~15 min on 2 cores
    python bench/generate_throughput.py --sentences 3 --train-steps 6 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from _common import RESULTS_DIR, machine_info, machine_label, print_table, write_json
from fedmedlora.benchmark import open_benchmark
from fedmedlora.config import load_config
from fedmedlora.extract import ExtractionStats, extract_sentences
from fedmedlora.lm.constrained import constraint_for
from fedmedlora.lm.generate import generate, generate_hf
from fedmedlora.lm.session import Session
from fedmedlora.metrics import score_sentences
from fedmedlora.parsing import parse
from fedmedlora.sampling import eval_items, site_examples
from fedmedlora.stopping import StopRule, cut_at_stop


def _prompts_and_items(bench: Any, cfg: Any) -> tuple[list[Any], list[Any]]:
    """Every evaluation prompt of the sampled sentences, in the order evaluation builds them."""
    prompts: list[Any] = []
    items_all: list[Any] = []
    for site in bench.sites:
        _, items = eval_items(bench, site, cfg)
        items_all.extend(items)

        def record(ps: list[str]) -> list[str]:
            prompts.extend(ps)
            return ["[]"] * len(ps)

        extract_sentences(items, record, fmt=cfg.data.format, tasks=cfg.data.tasks, heads="gold")
    return prompts, items_all


def _score(items: list[Any], answers: dict[str, str], cfg: Any) -> dict[str, float]:
    preds = extract_sentences(
        items, lambda ps: [answers[p] for p in ps], fmt=cfg.data.format, tasks=cfg.data.tasks, heads="gold",
        stats=ExtractionStats(),
    )  # fmt: skip
    ev = score_sentences(items, preds, cfg.data.tasks)
    return {t: round(100 * ev.get(t, "strict").f1, 1) for t in cfg.data.tasks}


def _spans(prompt: Any, out: str) -> tuple:
    return parse(out, prompt.sentence, prompt.task, prompt.fmt, prompt.types, head=prompt.head).spans


def _failure_rate(prompts: list[Any], outs: list[str]) -> float:
    """Share of answers with at least one parse failure."""
    bad = sum(
        parse(o, p.sentence, p.task, p.fmt, p.types, head=p.head).n_failures > 0
        for p, o in zip(prompts, outs, strict=True)
    )
    return round(bad / len(prompts), 4)


def _compute_bound(n_params: int) -> dict[str, float]:
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    a @ b
    t0 = time.perf_counter()
    reps = 10
    for _ in range(reps):
        a @ b
    gflops = reps * 2 * 2048**3 / (time.perf_counter() - t0) / 1e9
    return {"matmul_gflops_fp32": round(gflops, 1), "tokens_per_s_bound": round(gflops * 1e9 / (2 * n_params), 1)}


def _identical(a: list[str], b: list[str]) -> float:
    """Share of positions where two answer lists agree exactly."""
    return round(sum(x == y for x, y in zip(a, b, strict=True)) / len(a), 4)


def _timed(fn: Any) -> tuple[Any, float]:
    """``fn()`` and the seconds it took."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _ctranslate2(session: Session, prompts: list[Any], kw: dict[str, Any], workdir: Path) -> tuple[list[str], float]:
    """Decode ``prompts`` with a CTranslate2 generator converted from the merged model (call inside
    ``session.merged()``): the answers and the decoding seconds (conversion excluded)."""
    import copy

    import ctranslate2

    from fedmedlora.lm.generate import common_prefix_length
    from fedmedlora.lm.model import encode_prompt, eos_token_ids

    tok, hf, ct2_dir = session.tokenizer, workdir / "hf", workdir / "ct2"
    merged = copy.deepcopy(session.model)
    merged = merged.merge_and_unload() if hasattr(merged, "merge_and_unload") else merged
    merged.save_pretrained(hf)
    tok.save_pretrained(hf)
    ctranslate2.converters.TransformersConverter(str(hf)).convert(str(ct2_dir), quantization="float32", force=True)
    gen = ctranslate2.Generator(str(ct2_dir), device="cpu", compute_type="float32",
                                intra_threads=torch.get_num_threads())  # fmt: skip
    encoded = [encode_prompt(tok, p, True) for p in prompts]
    eos = list(eos_token_ids(session.model, tok))
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p.instruction, []).append(i)
    outs = [""] * len(prompts)

    def run() -> None:
        for idx in groups.values():
            k = min(common_prefix_length([encoded[i] for i in idx]), min(len(encoded[i]) for i in idx) - 1)
            idx = sorted(idx, key=lambda i: len(encoded[i]))
            for b in range(0, len(idx), kw["batch_size"]):
                chunk = idx[b : b + kw["batch_size"]]
                rules = [StopRule.for_prompt(prompts[i]) for i in chunk]
                ids: list[list[int]] = [[] for _ in chunk]

                def stop(step: Any, ids: list[list[int]] = ids, rules: list[StopRule] = rules) -> bool:
                    row = ids[step.batch_id]
                    row.append(step.token_id)
                    return rules[step.batch_id](row, tok.decode(row, skip_special_tokens=True))

                results = gen.generate_batch(
                    [tok.convert_ids_to_tokens(encoded[i][k:]) for i in chunk],
                    static_prompt=tok.convert_ids_to_tokens(encoded[chunk[0]][:k]) or None,
                    include_prompt_in_result=False, max_length=kw["max_new_tokens"], end_token=eos, callback=stop,
                )  # fmt: skip
                for i, r in zip(chunk, results, strict=True):
                    outs[i] = tok.decode(r.sequences_ids[0], skip_special_tokens=True)

    _, seconds = _timed(run)
    return outs, seconds


def run_adapter(session: Session, arrays: Any, name: str, prompts: list[Any], items: list[Any], cfg: Any,
                args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    tok = session.tokenizer
    session.set_arrays(arrays)
    kw = {"max_new_tokens": cfg.eval.max_new_tokens, "batch_size": cfg.eval.batch_size}
    extra: dict[str, Any] = {}
    with session.merged():
        plain_ids, t_plain = _timed(lambda: generate_hf(session.model, tok, prompts, return_ids=True, **kw))
        fast, t_fast = _timed(lambda: generate(session.model, tok, prompts, progress=False, **kw))
        if args.unpacked:
            unpacked, t_unpacked = _timed(
                lambda: generate(session.model, tok, prompts, progress=False, packed_weights=False, **kw)
            )
            extra["unpacked_s"] = round(t_unpacked, 1)
            extra["packed_speedup_over_unpacked"] = round(t_unpacked / t_fast, 2)
            extra["packed_identical_to_unpacked"] = _identical(fast, unpacked)
        if args.ctranslate2:
            with tempfile.TemporaryDirectory() as tmp:
                ct2, t_ct2 = _ctranslate2(session, prompts, kw, Path(tmp))
            extra["ct2_s"] = round(t_ct2, 1)
            extra["ct2_speedup_over_fast"] = round(t_fast / t_ct2, 2)
            extra["ct2_identical_to_fast"] = _identical(fast, ct2)
        if args.old_batch_size:
            old_kw = {**kw, "batch_size": args.old_batch_size}
            _, t_old = _timed(lambda: generate_hf(session.model, tok, prompts, **old_kw))
            extra["plain_old_batch_s"] = round(t_old, 1)
            extra["speedup_over_old_batch"] = round(t_old / t_fast, 2)

    def decode(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=True)

    plain = [decode(ids) for ids in plain_ids]
    cut = [decode(cut_at_stop(ids, decode, StopRule.for_prompt(p))) for ids, p in zip(plain_ids, prompts, strict=True)]
    fast_tokens = sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in fast)
    plain_tokens = sum(len(ids) for ids in plain_ids)
    n = len(prompts)
    row: dict[str, Any] = {
        "adapter": name,
        "prompts": n,
        "plain_s": round(t_plain, 1),
        "fast_s": round(t_fast, 1),
        "plain_answers_per_s": round(n / t_plain, 2),
        "fast_answers_per_s": round(n / t_fast, 2),
        "speedup": round(t_plain / t_fast, 2),
        "plain_gen_tokens_per_s": round(plain_tokens / t_plain, 1),
        "fast_gen_tokens_per_s": round(fast_tokens / t_fast, 1),
        "identical_to_cut_plain": _identical(fast, cut),
        "identical_to_raw_plain": _identical(fast, plain),
        "same_parsed_spans": round(
            sum(_spans(p, a) == _spans(p, b) for p, a, b in zip(prompts, fast, plain, strict=True)) / n, 4
        ),
        "f1_plain": _score(items, dict(zip(prompts, plain, strict=True)), cfg),
        "f1_fast": _score(items, dict(zip(prompts, fast, strict=True)), cfg),
        "parse_failure_rate_fast": _failure_rate(prompts, fast),
        **extra,
    }
    if args.constrained:
        with session.merged():
            con, t_con = _timed(
                lambda: generate(session.model, tok, prompts, progress=False, constraint=constraint_for(tok), **kw)
            )
        row["constrained_s"] = round(t_con, 1)
        row["f1_constrained"] = _score(items, dict(zip(prompts, con, strict=True)), cfg)
        row["parse_failure_rate_constrained"] = _failure_rate(prompts, con)
    if args.dtype == "bfloat16":
        session.model.to(torch.bfloat16)
        try:
            with session.merged():
                bf, t_bf = _timed(lambda: generate(session.model, tok, prompts, progress=False, **kw))
        finally:
            session.model.to(torch.float32)
        row["bf16_s"] = round(t_bf, 1)
        row["bf16_speedup_vs_fast_fp32"] = round(t_fast / t_bf, 2)
        row["bf16_identical_to_fast_fp32"] = _identical(bf, fast)
        row["f1_bf16"] = _score(items, dict(zip(prompts, bf, strict=True)), cfg)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sentences", type=int, default=6, help="test sentences per site")
    ap.add_argument("--train-steps", type=int, default=20, help="steps of the trained adapter (0: zero-shot only)")
    ap.add_argument("--adapter", type=Path, help="a PEFT adapter folder to use instead of training one")
    ap.add_argument("--batch-size", type=int, default=None, help="rows per batch, both decoders (default: preset)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--constrained", action="store_true", help="also decode with eval.constrained (F1, failures)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: usable cores)")
    ap.add_argument(
        "--unpacked",
        action="store_true",
        help="also time the new decoder without packed weights (eval.packed_weights=false)",
    )
    ap.add_argument("--old-batch-size", type=int, default=0,
                    help="also time plain model.generate at this batch size (8: the demo preset when issue 12 was "
                    "filed, commit 860dd14)")  # fmt: skip
    ap.add_argument("--ctranslate2", action="store_true",
                    help="also decode with a CTranslate2 fp32 generator (needs the ctranslate2 package)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [f"eval.max_sentences={args.sentences}", "model.device=cpu"]
    if args.batch_size:
        overrides.append(f"eval.batch_size={args.batch_size}")
    cfg = load_config("demo", overrides)
    bench = open_benchmark(None)
    prompts, items = _prompts_and_items(bench, cfg)
    session = Session.load(cfg)
    n_params = sum(p.numel() for p in session.model.parameters())
    rows = [run_adapter(session, None, "zero-shot", prompts, items, cfg, args)]
    if args.adapter is not None:
        from fedmedlora.lm.adapter_io import load_adapter_arrays

        rows.append(run_adapter(session, load_adapter_arrays(args.adapter), "given", prompts, items, cfg, args))
    elif args.train_steps > 0:
        examples = [ex for site in ("chia", "phee", "bc5cdr") for ex in site_examples(bench, site, cfg)]
        train_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": args.train_steps})})
        trained = session.train(examples, None, train_cfg, progress=False).arrays
        rows.append(run_adapter(session, trained, f"trained {args.train_steps} steps", prompts, items, cfg, args))
    bound = _compute_bound(n_params)
    info = machine_info()
    info["torch_threads"] = torch.get_num_threads()
    cols = ["adapter", "prompts", "plain_s", "fast_s", "speedup", "fast_answers_per_s", "fast_gen_tokens_per_s",
            "identical_to_cut_plain", "identical_to_raw_plain", "same_parsed_spans", "f1_plain", "f1_fast"]  # fmt: skip
    if args.dtype == "bfloat16":
        cols += ["bf16_speedup_vs_fast_fp32", "bf16_identical_to_fast_fp32", "f1_bf16"]
    if args.unpacked:
        cols += ["unpacked_s", "packed_speedup_over_unpacked", "packed_identical_to_unpacked"]
    if args.old_batch_size:
        cols += ["plain_old_batch_s", "speedup_over_old_batch"]
    if args.ctranslate2:
        cols += ["ct2_s", "ct2_speedup_over_fast", "ct2_identical_to_fast"]
    cols.append("parse_failure_rate_fast")
    if args.constrained:
        cols += ["f1_constrained", "parse_failure_rate_constrained"]
    print_table(
        "generate: fast path vs plain model.generate", cols, [[r.get(c) for c in cols] for r in rows],
        machine_label(info) + f"; torch threads {info['torch_threads']}",
    )  # fmt: skip
    print(f"compute bound: {bound}")
    out = args.out or RESULTS_DIR / "generate_throughput.json"
    payload = {"rows": rows, "compute_bound": bound, "machine": info, "packed_weights": True,  # generate's default
               "args": {k: str(v) for k, v in vars(args).items()}}  # fmt: skip
    write_json(out, payload)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
