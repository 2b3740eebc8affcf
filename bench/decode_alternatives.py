"""What else could make CPU decoding ~5x faster (issue 12), measured: the costs that bound each alternative.

The project's decoder (``fedmedlora.lm.generate``) already caches the shared instruction prefix, stops rows early
and keeps the batch full. This bench measures the three alternatives that remained, on the real SmolLM2 model
with random prompt tokens (costs do not depend on the token values), one process, ``--threads`` torch threads:

1. **Batch size** (``step``): one decode step of ``B`` rows over a 300-token cache, ``B`` in ``--batches``: the
   per-row cost of a generated token. A larger ``eval.batch_size`` only pays where this falls.
2. **Speculative decoding by prompt lookup** (``verify`` + ``acceptance``): a draft of ``q - 1`` tokens copied from
   the prompt or the answer so far (the n-gram that ends the answer, found earlier in the context) is verified in
   one forward pass of ``q`` tokens per row. It pays when tokens accepted per pass / cost of a ``q``-token pass
   exceeds 1 / cost of a 1-token pass. ``acceptance`` replays real answers (``--outputs``: an
   ``eval/test_outputs.jsonl``) to count tokens per pass; ``verify`` times the ``q``-token pass.
3. **CTranslate2** (``ct2``, only when the ``ctranslate2`` package is installed; not a project dependency): the
   same model converted to a CTranslate2 generator (fp32), prefill and per-step time at the same batch sizes.

``--packed`` also times each 1-token pass with the linear layers on oneDNN with packed weights
(``fedmedlora.lm.prepack``, what ``eval.packed_weights`` does), next to the default PyTorch (MKL) path.

Nothing is asserted. Usage::

    python bench/decode_alternatives.py --outputs runs/demo/centralized/eval/test_outputs.jsonl
    python bench/decode_alternatives.py --q 1 --packed --no-ct2 --out bench/results/decode_packed.json
"""

from __future__ import annotations

import argparse
import copy
import json
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
from fedmedlora.config import load_config
from fedmedlora.lm.model import encode_prompt, resolve_model_source
from fedmedlora.lm.prepack import packed_linears
from fedmedlora.lm.session import Session

CONTEXT = 300  # cached tokens per row: a prompt (~264 tokens) plus part of its answer


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


@torch.no_grad()
def forward_cost(model: Any, batch: int, q: int, reps: int) -> float:
    """Seconds of one forward pass of ``q`` new tokens per row for ``batch`` rows over a ``CONTEXT``-token cache."""
    ids = torch.randint(100, 40000, (batch, CONTEXT))
    base = model(ids, use_cache=True, logits_to_keep=1).past_key_values
    times = []
    for _ in range(reps):
        cache = copy.deepcopy(base)
        new = torch.randint(100, 40000, (batch, q))
        mask = torch.ones(batch, CONTEXT + q, dtype=torch.long)
        pos = torch.arange(CONTEXT, CONTEXT + q)[None].expand(batch, q)
        t0 = time.perf_counter()
        model(new, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=q)
        times.append(time.perf_counter() - t0)
    return _median(times)


def lookup_draft(context: list[int], k: int, max_n: int = 3) -> list[int]:
    """Prompt-lookup draft: the ``k`` tokens that followed the latest earlier occurrence of the context's last
    n-gram (longest n first, ``max_n`` down to 1); [] when none occurs."""
    for n in range(max_n, 0, -1):
        if len(context) <= n:
            continue
        tail = context[-n:]
        for j in range(len(context) - n - 1, -1, -1):
            if context[j : j + n] == tail:
                return context[j + n : j + n + k]
    return []


def acceptance(tokenizer: Any, outputs: Path, k: int) -> dict[str, float]:
    """Replay real greedy answers: tokens produced per verification pass with drafts of ``k`` tokens."""
    steps = tokens = answers = 0
    for line in outputs.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        prompt = encode_prompt(tokenizer, rec["prompt"], True)
        answer = tokenizer(rec["output"], add_special_tokens=False)["input_ids"]
        i = 0
        while i < len(answer):
            draft = lookup_draft(prompt + answer[:i], k)
            ok = 0
            while ok < len(draft) and i + ok < len(answer) and draft[ok] == answer[i + ok]:
                ok += 1
            i += ok + 1  # the accepted draft tokens plus the model's own next token
            steps += 1
        tokens += len(answer)
        answers += 1
    return {"answers": answers, "tokens": tokens, "passes": steps, "tokens_per_pass": round(tokens / max(steps, 1), 2)}


def ct2_costs(model_dir: str, batches: list[int], threads: int) -> dict[str, Any]:
    """CTranslate2 (fp32) prefill and per-step time of the base model; {"installed": False} without the package."""
    try:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        return {"installed": False}
    out: dict[str, Any] = {"installed": True, "version": ctranslate2.__version__, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        ct2_dir = Path(tmp) / "ct2"
        TransformersConverter(model_dir).convert(str(ct2_dir), force=True)
        gen = ctranslate2.Generator(str(ct2_dir), device="cpu", intra_threads=threads, compute_type="float32")
        vocab = json.loads((ct2_dir / "vocabulary.json").read_text())
        g = torch.Generator().manual_seed(0)
        for b in batches:
            prompts = [[vocab[int(i)] for i in torch.randint(100, 40000, (CONTEXT,), generator=g)] for _ in range(b)]
            t = {}
            for length in (1, 33):
                t0 = time.perf_counter()
                gen.generate_batch(prompts, max_length=length, min_length=length, sampling_topk=1,
                                   include_prompt_in_result=False, end_token=[])  # fmt: skip
                t[length] = time.perf_counter() - t0
            out["rows"].append(
                {"batch": b, "prefill_s": round(t[1], 2), "step_ms": round((t[33] - t[1]) / 32 * 1e3, 1)}
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="8,16,32", help="rows per forward pass")
    ap.add_argument("--q", default="1,3,5", help="tokens per row per pass (1 = plain decoding)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--outputs", type=Path, help="eval/test_outputs.jsonl of a run, for the acceptance replay")
    ap.add_argument("--draft", type=int, default=4, help="draft tokens per pass in the acceptance replay")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: usable cores)")
    ap.add_argument("--no-ct2", action="store_true", help="skip CTranslate2 even when installed")
    ap.add_argument("--packed", action="store_true", help="also time 1-token passes with packed weights")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "decode_alternatives.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config("demo", ["model.device=cpu"])
    session = Session.load(cfg)
    batches = [int(b) for b in args.batches.split(",")]
    qs = [int(q) for q in args.q.split(",")]
    rows = []
    with session.merged():  # as evaluation decodes: the adapter folded into the base weights
        model = session.model.eval()
        for b in batches:
            for q in qs:
                s = forward_cost(model, b, q, args.reps)
                row = {"batch": b, "q": q, "pass_ms": round(s * 1e3, 1), "ms_per_row_pass": round(s * 1e3 / b, 2)}
                if args.packed and q == 1:
                    with packed_linears(model) as n:
                        if not n:
                            raise SystemExit("--packed: this PyTorch build or machine cannot pack (no oneDNN/memory)")
                        row["pass_ms_packed"] = round(forward_cost(model, b, q, args.reps) * 1e3, 1)
                rows.append(row)
    result: dict[str, Any] = {"passes": rows, "context_tokens": CONTEXT}
    if args.outputs is not None:
        result["acceptance"] = {"outputs": str(args.outputs), "draft": args.draft,
                                **acceptance(session.tokenizer, args.outputs, args.draft)}  # fmt: skip
    if not args.no_ct2:
        model_dir, _ = resolve_model_source(cfg.model.name, cache_dir=None)
        result["ct2"] = ct2_costs(model_dir, [b for b in batches if b >= 16] or batches, torch.get_num_threads())
    info = machine_info()
    info["torch_threads"] = torch.get_num_threads()
    print_table("decode pass cost", ["batch", "q", "pass_ms", "ms_per_row_pass"],
                [[r[c] for c in ("batch", "q", "pass_ms", "ms_per_row_pass")] for r in rows],
                machine_label(info))  # fmt: skip
    print({k: v for k, v in result.items() if k != "passes"})
    write_json(args.out, {**result, "machine": info, "args": {k: str(v) for k, v in vars(args).items()}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
