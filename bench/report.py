"""Render docs/performance.md from the JSON files in bench/results/ (so the tables are never copied by hand).

Usage::

    python bench/report.py                  # → docs/performance.md
    python bench/report.py --out -          # print instead
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, human_bytes, machine_label, markdown_table

DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _machine(d: dict[str, Any]) -> str:
    return f"*Measured {d['created_utc']} on: {machine_label(d['machine'])}.*"


def comm_section(d: dict[str, Any]) -> list[str]:
    models = d["models"]
    out = [
        "## Communication per site and round",
        "",
        _machine(d),
        "",
        f"LoRA r={d['r']} (alpha {4 * d['r']}); adapters counted on models built from their architecture config on "
        "PyTorch's `meta` device (no weights). Payload sizes were measured by running "
        "`fedmedlora.compression.encode` on arrays of the adapter's exact shapes (MB = 10⁶ bytes; int8 includes one "
        "float32 scale per tensor). The reduction compares one adapter upload with one full-model upload.",
        "",
    ]
    rows = []
    for m in models:
        me, red = m["methods"], m["reduction_percent_vs_full"]
        rows.append(
            [
                m["label"],
                f"{m['lora_params']:,}",
                f"{m['lora_percent_of_model']:.2f}%",
                human_bytes(me["none"]["upload_bytes"]),
                human_bytes(me["bf16"]["upload_bytes"]),
                human_bytes(me["int8"]["upload_bytes"]),
                human_bytes(m["full_model_bytes"]["bf16"]),
                f"{red['none']['bf16']:.2f}%",
                f"{red['bf16']['bf16']:.2f}%",
                f"{red['int8']['bf16']:.2f}%",
            ]
        )
    out += [
        "**One upload (site → server)**",
        "",
        markdown_table(
            [
                "model",
                "LoRA params",
                "% of model",
                "adapter fp32",
                "adapter fp16/bf16",
                "adapter int8",
                "full model bf16",
                "reduction fp32",
                "reduction bf16",
                "reduction int8",
            ],
            rows,
        ),
        "",
        "Against a full fp32 model the reductions are: "
        + "; ".join(
            f"{m['label']} {m['reduction_percent_vs_full']['none']['fp32']:.2f}% (fp32 adapter)" for m in models
        )
        + ".",
        "",
    ]
    rows = [
        [
            m["label"],
            human_bytes(m["methods"]["none"]["per_site_round_bytes"]),
            human_bytes(m["methods"]["bf16"]["per_site_round_bytes"]),
            human_bytes(m["methods"]["int8"]["per_site_round_bytes"]),
            human_bytes(m["full_model_per_site_round_bytes"]["bf16"]),
            human_bytes(d["sites"] * m["methods"]["bf16"]["per_site_round_bytes"]),
        ]
        for m in models
    ]
    out += [
        "**Per site per round (upload + download, same method both ways)**",
        "",
        markdown_table(
            ["model", "fp32", "fp16/bf16", "int8", "full model bf16", f"all {d['sites']} sites, bf16"], rows
        ),
        "",
    ]
    rows = [
        [
            m["label"],
            *(human_bytes(v) for v in m["rule_upload_bytes_fp32"].values()),
        ]
        for m in models
    ]
    out += [
        "**Upload per rule (fp32)**: FedSA-LoRA sends only A, FFA-LoRA only B.",
        "",
        markdown_table(["model", *models[0]["rule_upload_bytes_fp32"]], rows),
        "",
    ]
    if all("encode_s" in m["methods"]["none"] for m in models):
        rows = [
            [m["label"]]
            + [
                f"{m['methods'][k]['encode_s'] * 1e3:.0f} / {m['methods'][k]['decode_s'] * 1e3:.0f}"
                for k in m["methods"]
            ]
            for m in models
        ]
        out += [
            "**Encode / decode time per adapter** (ms, numpy, one process)",
            "",
            markdown_table(["model", *models[0]["methods"]], rows),
            "",
        ]
    cands = d.get("paper_98_5_candidates", [])
    out += [
        '**The paper\'s "98.5 %".** The basis of the figure is not stated (paper.md §4.3). With r=16 on the 7 '
        "projections of Llama-3.1-8B, an fp32 adapter against the bf16 model is 98.96 % and a bf16 adapter 99.48 %. "
        "No standard combination gives exactly 98.5 %; the nearest (within 0.15 points) are:",
        "",
        markdown_table(
            ["model", "adapter dtype", "full model counted as", "reduction"],
            [[c["model"], c["adapter"], c["full_model"], f"{c['reduction']:.2f}%"] for c in cands] or [["none"] * 4],
        ),
        "",
        "`nf4_estimate` is the QLoRA base as held in memory (NF4 linear weights at 0.5 byte + one fp32 absmax per "
        '64 values, embeddings and head in bf16). The most plausible reading is therefore "a bf16 adapter vs the '
        "4-bit base the sites hold\" (98.6 %), but this is our reconstruction, not the paper's statement.",
        "",
    ]
    return out


def aggregation_section(d: dict[str, Any]) -> list[str]:
    points = d["points"]
    sizes = list(dict.fromkeys(p["size"] for p in points))
    sites = sorted({p["sites"] for p in points})
    key = "seconds_min" if "seconds_min" in points[0] else "seconds_median"
    rows = []
    for s in sizes:
        pts = {p["sites"]: p for p in points if p["size"] == s}
        f = d["fit_per_size"][s]
        first = next(iter(pts.values()))
        rows.append(
            [f"{s} ({human_bytes(first['bytes_per_site'])}/site)"]
            + [f"{pts[n][key]:.3f}" if n in pts else "—" for n in sites]
            + [f"{f['seconds_per_site'] * 1e3:.0f}", f"{f['r2']:.3f}"]
        )
    fit = d["fit_all"]
    return [
        "## Server aggregation time",
        "",
        _machine(d),
        "",
        "`fedmedlora.aggregation.weighted_mean` (per-site key/shape/dtype/finiteness checks + float64 accumulation) "
        f"on random float32 adapters with the exact PEFT tensor layout. Seconds, {key.split('_')[1]} of the "
        "repeats; the fit is `time = a × sites + b` per adapter size.",
        "",
        markdown_table(["adapter"] + [f"{n} sites" for n in sites] + ["ms per extra site", "R²"], rows),
        "",
        f"All points together: time ≈ {fit['ns_per_value_site']:.2f} ns × (sites × adapter values) "
        f"{fit['intercept_s'] * 1e3:+.0f} ms (R² = {fit['r2']:.3f}): linear in both the number of sites and the "
        "adapter size, i.e. bounded by one pass over the received bytes. Even 32 sites × 8B-sized adapters "
        "aggregate in seconds on 2 CPU cores, far below one local training round.",
        "",
    ]


def overhead_section(d: dict[str, Any]) -> list[str]:
    rows = []
    for run in d["runs"]:
        for x in run["per_round"]:
            rows.append(
                [
                    run["sites"],
                    x["round"],
                    f"{x['wall_s']:.2f}",
                    f"{x['train_s']:.2f}",
                    f"{x['validation_s']:.2f}",
                    f"{x['overhead_s'] * 1e3:.0f}",
                    f"{x['overhead_s'] * 1e3 / run['sites']:.0f}",
                ]
            )
    msg = d["runs"][0]["wire_bytes_up"] / max(1, d["runs"][0]["messages"] // 2) if d["runs"] else 0
    return [
        "## Framework overhead per round",
        "",
        _machine(d),
        "",
        f"In-process federation (`{d['driver']}`), {d['model']}, 1 local step per site. Overhead = round wall "
        "time − local training − the server's validation loss: messages built, serialised to protobuf and back, "
        "checked, aggregated, checkpointed and logged.",
        "",
        markdown_table(
            [
                "sites",
                "round",
                "round wall (s)",
                "local training (s)",
                "server validation (s)",
                "overhead (ms)",
                "overhead per site (ms)",
            ],
            rows,
        ),
        "",
        f"The tiny adapter makes each upload message {human_bytes(msg)}, so this is the fixed per-message cost; "
        "with real adapters add the byte-proportional costs measured above (encode/decode, aggregation). The "
        "Deployment Engine adds process start-up and network time on top (peers.md §2.5: ~10 s per round "
        "measured for a trivial app on this machine).",
        "",
    ]


def gpu_section(d: dict[str, Any] | None) -> list[str]:
    head = ["## GPU: LoRA vs full fine-tuning on a Llama-3.1-8B-sized model", ""]
    if d is None:
        return [
            *head,
            "Not measured yet: no GPU was available when these benchmarks were run. `python bench/gpu_bench.py` "
            "on a CUDA machine writes `bench/results/gpu_bench.json`; re-run `python bench/report.py` afterwards.",
            "",
        ]
    rows = []
    for name, res in d["results"].items():
        if "tokens_per_s" in res:
            rows.append([name, f"{res['tokens_per_s']:.0f}", f"{res['step_s']:.2f}", res["peak_gib"], res["trainable"]])
        elif res.get("oom"):
            rows.append([name, "OOM", "—", f">{res['peak_gib']}", "—"])
        else:
            rows.append([name, "—", "—", "—", next(iter(res.values()))])
    return [
        *head,
        _machine(d),
        "",
        f"{d['model']}; batch {d['batch']}×{d['seq']} tokens, {d['steps']} timed steps after {d['warmup']} warm-up, "
        f"gradient checkpointing {d['grad_ckpt']}.",
        "",
        markdown_table(["setting", "tokens/s", "s/step", "peak GiB", "trainable params"], rows),
        "",
    ]


def _cli_args(args: dict[str, str]) -> str:
    """The command-line flags a result was produced with (defaults, the output path, and ``--train-steps`` next to
    ``--adapter``, which replaces training, left out)."""
    skip = {"out"} | ({"train_steps"} if args.get("adapter", "None") != "None" else set())
    skip |= {"old_batch_size"} if args.get("old_batch_size") == "0" else set()
    return " ".join(
        f"--{k.replace('_', '-')}" + ("" if v == "True" else f" {v}")
        for k, v in args.items()
        if v not in ("None", "False") and k not in skip
    )


def generate_section(d: dict[str, Any], title: str = "the new decoder vs plain `model.generate`") -> list[str]:
    cols = ["adapter", "prompts", "plain s", "new s", "speed-up", "new answers/s", "new gen. tokens/s",
            "identical to plain cut by the stop rule", "identical to raw plain", "same parsed spans",
            "F1 plain (NER/RE)", "F1 new (NER/RE)"]  # fmt: skip
    first = d["rows"][0] if d["rows"] else {}  # the optional columns a run measured show in every row
    extra = "bf16_identical_to_fast_fp32" in first
    con = "f1_constrained" in first
    if extra:
        cols += ["bf16 speed-up over new fp32", "bf16 identical to fp32", "F1 bf16"]
    if con:
        cols += ["parse-failure share new", "F1 constrained", "parse-failure share constrained"]
    packed = "packed_identical_to_unpacked" in first
    old_batch = d["args"].get("old_batch_size", "0")
    if packed:
        cols += ["new without packed weights s", "packed speed-up", "packed identical to unpacked"]
    if old_batch != "0":
        cols += [f"plain at batch {old_batch} s", f"speed-up over plain at batch {old_batch}"]
    ct2 = "ct2_identical_to_fast" in first
    if ct2:
        cols += ["CTranslate2 s", "CTranslate2 speed-up over new", "CTranslate2 identical to new"]

    def f1(x: dict[str, float]) -> str:
        return " / ".join(f"{v:.1f}" for v in x.values())

    rows = []
    for r in d["rows"]:
        row = [r["adapter"], r["prompts"], r["plain_s"], r["fast_s"], f"{r['speedup']:.2f}×",
               r["fast_answers_per_s"], r["fast_gen_tokens_per_s"], f"{100 * r['identical_to_cut_plain']:.1f} %",
               f"{100 * r['identical_to_raw_plain']:.1f} %", f"{100 * r['same_parsed_spans']:.1f} %",
               f1(r["f1_plain"]), f1(r["f1_fast"])]  # fmt: skip
        if extra:
            row += [f"{r['bf16_speedup_vs_fast_fp32']:.2f}×", f"{100 * r['bf16_identical_to_fast_fp32']:.1f} %",
                    f1(r["f1_bf16"])]  # fmt: skip
        if con:
            row += [f"{100 * r['parse_failure_rate_fast']:.1f} %", f1(r["f1_constrained"]),
                    f"{100 * r['parse_failure_rate_constrained']:.1f} %"]  # fmt: skip
        if packed:
            row += [r["unpacked_s"], f"{r['packed_speedup_over_unpacked']:.2f}×",
                    f"{100 * r['packed_identical_to_unpacked']:.1f} %"]  # fmt: skip
        if old_batch != "0":
            row += [r["plain_old_batch_s"], f"{r['speedup_over_old_batch']:.2f}×"]
        if ct2:
            row += [r["ct2_s"], f"{r['ct2_speedup_over_fast']:.2f}×", f"{100 * r['ct2_identical_to_fast']:.1f} %"]
        rows.append(row)
    bound = d["compute_bound"]
    best = max(r["fast_gen_tokens_per_s"] for r in d["rows"])
    return [
        f"## Generation: {title} ({_cli_args(d['args']) or 'defaults'})",
        "",
        _machine(d),
        "",
        f"`bench/generate_throughput.py {_cli_args(d['args'])}`: "
        "the demo preset's evaluation prompts (JSON, NER + RE with gold heads) of seeded test sentences of all four "
        "sites, decoded by plain `model.generate` (longest-first batches, EOS only) and by `lm.generate.generate` "
        "(continuous batching, shared-prefix KV cache, early stop"
        + (", linear layers on oneDNN with packed weights" if packed or d.get("packed_weights") else "")
        + ") with the same batch size and token limit, adapter merged, one after the other in one process.",
        "",
        markdown_table(cols, rows),
        "",
        f"Compute bound: a 2048² fp32 matmul runs at {bound['matmul_gflops_fp32']} GFLOP/s here, so no decoder "
        f"can exceed ~{bound['tokens_per_s_bound']:.0f} generated tokens/s for this model (2 FLOPs per parameter "
        "per token). Decoding small batches is bound by reading the weights and by per-step overhead, not by "
        f"FLOPs: the new decoder reaches {best / bound['tokens_per_s_bound']:.0%} of that bound at best.",
        "",
    ]


def packed_step_section(d: dict[str, Any]) -> list[str]:
    rows = [[r["batch"], r["pass_ms"], r["pass_ms_packed"], f"{r['pass_ms'] / r['pass_ms_packed']:.2f}×"]
            for r in d["passes"] if "pass_ms_packed" in r]  # fmt: skip
    return [
        "### One decoding step with packed weights",
        "",
        _machine(d),
        "",
        f"`bench/decode_alternatives.py {_cli_args(d['args'])}`: one forward pass of 1 new token per row for `batch` "
        f"rows over a {d['context_tokens']}-token cache (SmolLM2, fp32, adapter merged, median of the repeats), with "
        "PyTorch's default CPU linear layers (MKL) and inside `fedmedlora.lm.prepack.packed_linears` (oneDNN, "
        "weights packed once).",
        "",
        markdown_table(["batch", "pass (ms), default", "pass (ms), packed weights", "speed-up"], rows),
        "",
    ]


def memory_section(d: dict[str, Any]) -> list[str]:
    """``bench/generate_memory.py`` runs (one process each): peak RSS of a demo evaluation's generation."""
    runs = d["runs"]
    rows = [
        [
            r["label"],
            r["model_loaded_rss_mb"],
            max(c["kv_full_batch_mb"] for c in r["calls"]),
            max(c["rss_peak_mb"] for c in r["calls"]),
            max(c["rss_after_mb"] for c in r["calls"]),
            r["generate_seconds"],
        ]
        for r in runs
    ]
    calls = len(runs[0]["calls"])
    return [
        "## Generation memory: peak RSS of one evaluation",
        "",
        _machine(d),
        "",
        f"`bench/generate_memory.py` (one process per row, {runs[0]['threads']} threads): the demo's evaluation on "
        f"every site's test sentences ({calls} `generate` calls: NER, then RE where the site has it), zero-shot or "
        "with an adapter; the RSS sampled every 10 ms. *Largest KV cache* is a full batch's keys and values at the "
        "longest prompt plus `max_new_tokens`, the most a call has to hold.",
        "",
        markdown_table(
            [
                "run",
                "RSS, model loaded (MB)",
                "largest KV cache (MB)",
                "peak RSS (MB)",
                "largest RSS after a call (MB)",
                "generate (s)",
            ],
            rows,
        ),
        "",
        MEMORY_NOTES,
        "",
    ]


def decode_section(d: dict[str, Any]) -> list[str]:
    rows = [[r["batch"], r["q"], r["pass_ms"], r["ms_per_row_pass"]] for r in d["passes"]]
    out = [
        "## Generation: what bounds a faster CPU decoder (batch size, speculative decoding, CTranslate2)",
        "",
        _machine(d),
        "",
        f"`bench/decode_alternatives.py {_cli_args(d['args'])}`: one forward pass of `q` new tokens per row for "
        f"`batch` rows over a {d['context_tokens']}-token cache (SmolLM2, fp32, adapter merged, as evaluation "
        "decodes). `q = 1` is plain decoding; `q > 1` is the verification pass of a speculative decoder.",
        "",
        markdown_table(["batch", "q", "pass (ms)", "ms per row and pass"], rows),
        "",
    ]
    acc = d.get("acceptance")
    if acc:
        out += [
            f"Prompt-lookup drafts ({acc['draft']} tokens copied from the prompt or the answer so far), replayed on "
            f"{acc['answers']} real greedy answers (`{Path(acc['outputs']).name}` of a 30-step adapter): "
            f"{acc['tokens_per_pass']} tokens per verification pass ({acc['tokens']} tokens in {acc['passes']} "
            "passes).",
            "",
        ]
    ct2 = d.get("ct2") or {}
    if ct2.get("installed"):
        cells = ", ".join(f"batch {r['batch']}: prefill {r['prefill_s']} s, {r['step_ms']} ms per step"
                          for r in ct2["rows"])  # fmt: skip
        out += [f"CTranslate2 {ct2['version']} (fp32, same model, random {d['context_tokens']}-token prompts): "
                f"{cells}.", ""]  # fmt: skip
    return out


def autocast_f1_lines(f: dict[str, Any] | None) -> list[str]:
    """The F1 effect of bf16 autocast training (``train_autocast_f1.json``: paired comparison rows), or a line
    saying it was not measured."""
    if f is None:
        return ["F1 was not measured, so `train.autocast` stays `none` by default.", ""]
    pooled = [r for r in f["rows"] if len(r["sites"]) > 1]
    cells = "; ".join(
        f"{r['task'].upper()} {r['rule']} {100 * r['difference']:+.1f} pp [{100 * r['low']:+.1f}, "
        f"{100 * r['high']:+.1f}] ({r['verdict']})"
        for r in pooled
    )
    secs = f["train_seconds"]
    return [
        f"**F1 effect** ({f['created_utc']}, {f['machine']}): a centralized adapter trained {f['train_steps']} steps "
        f"in fp32 and under bf16 autocast, same seed and data, scored in fp32 on the same {pooled[0]['n_docs']} "
        f"documents ({f['sentences_per_site']} sentences per site, {len(pooled[0]['sites'])} sites), paired "
        f"bootstrap bf16 − fp32: {cells}. Training took "
        f"{secs['bf16_autocast']:.0f} s against {secs['fp32']:.0f} s "
        f"({secs['fp32'] / secs['bf16_autocast']:.2f}×; two runs on different days, same machine). One adapter "
        "only: `train.autocast` stays `none` by default (`bench/results/train_autocast_f1.json`).",
        "",
    ]


def autocast_layouts_lines(d: dict[str, Any] | None) -> list[str]:
    """Autocast per micro-batch layout (``train_autocast.py --layouts``: rows with a ``layout``, speed-ups per
    layout), e.g. ``train_autocast_layouts.json``."""
    if d is None:
        return []
    rows = [[r["layout"], r["autocast"], r["median_step_s"], r["final_loss"], r["mean_loss"]] for r in d["rows"]]
    ratios = "; ".join(
        f"{lay} **{x:.2f}×** (adapters differ by at most {d['max_abs_adapter_diff'][lay]:.3g})"
        for lay, x in d["speedup_bf16"].items()
    )
    described = {"padded": "padded micro-batches (`train.prefix_sharing=false`)", "tree": "the default prefix tree"}
    on = " and on ".join(described[lay] for lay in d["speedup_bf16"])
    return [
        f"**Per micro-batch layout** (`bench/train_autocast.py {_cli_args(d['args'])}`; measured "
        f"{d['created_utc']} on {machine_label(d['machine'])}): bf16 autocast on {on}, each against "
        "its own fp32 run.",
        "",
        markdown_table(["layout", "autocast", "median step (s)", "final step loss", "mean loss"], rows),
        "",
        f"bf16 autocast speed-up per layout: {ratios}.",
        "",
    ]


def autocast_section(
    d: dict[str, Any], f1: dict[str, Any] | None = None, layouts: dict[str, Any] | None = None
) -> list[str]:
    if isinstance(d["speedup_bf16"], dict):  # a run of the bench since --layouts (rows per layout)
        return ["## Training under bf16 autocast (CPU)", "", *autocast_layouts_lines(d), *autocast_f1_lines(f1)]
    rows = [[r["autocast"], r["median_step_s"], r["final_loss"], r["mean_loss"]] for r in d["rows"]]
    return [
        "## Training under bf16 autocast (CPU)",
        "",
        _machine(d),
        "",
        f"`bench/train_autocast.py {_cli_args(d['args'])}`: the demo's SmolLM2 LoRA adapter on PHEE, fp32 against "
        "`train.autocast=bf16` (LoRA weights and AdamW stay fp32), same initial adapter, data and seed, runs "
        "alternating.",
        "",
        markdown_table(["autocast", "median step (s)", "final step loss", "mean loss"], rows),
        "",
        f"bf16 autocast: **{d['speedup_bf16']:.2f}×** faster steps; the two trained adapters differ by at most "
        f"{d['max_abs_adapter_diff']:.3g} in any weight.",
        "",
        *autocast_layouts_lines(layouts),
        *autocast_f1_lines(f1),
    ]


#: (result key, column header) of the prefix-sharing table.
PREFIX_SHARING_COLUMNS = [
    ("site", "site"), ("padded_step_s", "padded step (s)"), ("shared_step_s", "shared step (s)"),
    ("speedup", "speed-up"), ("padded_positions", "padded positions"), ("shared_positions", "tree positions"),
    ("max_step_loss_diff", "max step-loss diff"), ("max_adapter_diff", "max adapter diff"),
]  # fmt: skip


def prefix_sharing_section(d: dict[str, Any]) -> list[str]:
    def fmt(x: Any) -> Any:
        return f"{x:.2g}" if isinstance(x, float) and x < 0.01 else x

    rows = [[fmt(r[key]) for key, _ in PREFIX_SHARING_COLUMNS] for r in d["rows"]]
    return [
        "## Training with prefix-shared micro-batches",
        "",
        _machine(d),
        "",
        f"`bench/train_prefix_sharing.py {_cli_args(d['args'])}`: the demo's SmolLM2 LoRA adapter trained on each "
        "site's examples with padded micro-batches (`train.prefix_sharing=false`) and with the micro-batch packed as "
        "one prefix tree (`true`, the default: shared prompt prefixes computed once, tree attention mask, only the "
        "supervised positions through the LM head), same initial adapter, data and seed, runs alternating. "
        "Positions: tokens computed per step (padded batch against tree), mean over the steps.",
        "",
        markdown_table([head for _, head in PREFIX_SHARING_COLUMNS], rows),
        "",
        f"Over the {len(d['rows'])} sites' median steps: **{d['speedup']:.2f}×** faster. The step losses agree to "
        f"{max(r['max_step_loss_diff'] for r in d['rows']):.1g} (the loss is the same mean over the same supervised "
        "tokens; `tests/adapters/test_packing.py` checks loss and gradients against the padded batch for sdpa and "
        f"eager attention); the trained adapters differ by up to {max(r['max_adapter_diff'] for r in d['rows']):.1g} "
        "in a weight, rounding that AdamW's first steps amplify where a gradient is near zero (its update is "
        "about lr × sign(g) there).",
        "",
    ]


def dp_section(d: dict[str, Any]) -> list[str]:
    cols = ["mode", "records", "median_step_s", "examples_per_step", "ratio_to_plain", "epsilon"]
    rows = [[r[c] if r[c] is not None else "–" for c in cols] for r in d["rows"]]
    per_example = {r["mode"]: r["median_step_s"] / r["examples_per_step"] for r in d["rows"] if r["examples_per_step"]}
    plain = per_example.get("plain")
    ratios = " and ".join(f"{v / plain:.2f}× ({m})" for m, v in per_example.items() if m != "plain" and plain)
    return [
        "## Record-level DP-SGD: step time",
        "",
        _machine(d),
        "",
        f"`bench/dp_step.py {_cli_args(d['args'])}`: the demo's SmolLM2 adapter, plain training (4 examples per "
        "step) against DP-SGD with 4 expected *records* per step (Poisson sampling, per-example gradients from "
        "Opacus, per-record clipping, noise multiplier 1.0). A step processes every prompt of the sampled records.",
        "",
        markdown_table(
            ["mode", "records (plain: examples)", "median step (s)", "examples per step", "× plain step", "ε after"],
            rows,
        ),
        "",
        f"Per example processed, a DP-SGD step takes {ratios} the time of a plain one: the per-sample gradients "
        "are cheap for LoRA; what costs is how many prompts a record brings (a Chia document ~9, a sentence ~1.6).",
        "",
    ]


def startup_section(d: dict[str, Any]) -> list[str]:
    m = d["median"]
    gb = m["model_bytes_read_per_round"]["fresh"] / 1e9
    rows = [
        [
            mode,
            f"{m[mode]['imports_s']:.2f}",
            f"{m[mode]['process_to_reply_s']:.2f}",
            f"{m['handler_s']:.2f}",
            f"{m[mode]['startup_overhead_s']:.2f}",
            human_bytes(m["model_bytes_read_per_round"][mode]),
        ]
        for mode in ("fresh", "resident")
    ]
    return [
        "## ClientApp start-up per site and round (Deployment Engine, real small model)",
        "",
        _machine(d),
        "",
        f"`bench/clientapp_startup.py` ({d['threads']} torch threads, median of {len(d['fresh'])}): a fresh "
        "`flwr-clientapp`-like process per message handles one real `evaluate` instruction (the initial adapter "
        "scored on two PHEE dev sentences). `fresh`: the process imports torch/transformers/peft and loads "
        "SmolLM2-135M + LoRA itself. `resident`: `deploy supernode --resident-model`; the process imports only "
        "flwr and the thin ClientApp and forwards to the site worker, which holds the model. Start-up overhead = "
        "process start → reply, minus the handler's own time with the model loaded.",
        "",
        markdown_table(
            ["mode", "imports (s)", "start → reply (s)", "handler (s)", "start-up overhead (s)", "model read/round"],
            rows,
        ),
        "",
        f"The resident worker cuts the per-round start-up {m['overhead_ratio']:.0f}×, to "
        f"{m['resident']['startup_overhead_s']:.2f} s per site and round (target ≤ 2.5 s). Its first message "
        f"pays the one model load ({m['resident']['first_message_s']:.1f} s start → reply). Without it, every round "
        f"reads the whole base model again: {gb:.2f} GB here (fp32). For Llama-3.1-8B in bf16 that is 16.1 GB per "
        "site and round, i.e. about 8 s at 2 GB/s before any initialisation; the resident worker reads it once.",
        "",
    ]


def deployment_section(d: dict[str, Any], title: str) -> list[str]:
    rows = [
        [
            str(r["sites"]),
            r["mode"],
            f"{r['first_round_s']:.1f}",
            f"{r['steady_round_s']:.1f}",
            "—" if r.get("vs_sim") is None else f"{r['vs_sim']:.2f}×",
        ]
        for r in d["results"]
    ]
    return [
        f"## {title}",
        "",
        _machine(d),
        "",
        f"`bench/deployment_round.py --model {d['model']} --rounds {d['rounds']}`: the same federation in the "
        "in-process simulation (`sim`, sites in turn, "
        f"{d['threads']} torch threads) and on a loopback Deployment Engine (TLS SuperLink with node "
        f"authentication, one SuperNode per site, every site process at {d['site_threads']} torch thread(s)): "
        "`fresh` ClientApp processes, or `resident` site workers. Seconds per round from `rounds.jsonl`; rounds ≥ 2 "
        "are the steady state (round 1 of `resident` includes each worker's one model load). On one machine the "
        "sites of a deployment share its cores; at hospitals each has its own.",
        "",
        markdown_table(["sites", "mode", "round 1 (s)", "rounds ≥ 2, median (s)", "vs simulation"], rows),
        "",
    ]


#: Reading of the generation tables (written by hand from the runs they describe; kept with the tables).
GENERATION_NOTES = """Reading these tables:
- The new decoder's output equals plain greedy `model.generate` cut by the same stop rule on 100 % of the 130
  prompts (97.9 % of 48 in the bf16 run's zero-shot row: one prompt whose greedy path flipped on floating-point
  noise from a different batch layout), and it parses to the same spans on 100 %. The raw text differs where a
  stop rule cut an answer early, i.e. text the parser ignores (after a closed list) or a loop.
- Speed-up 1.27–1.43× in answers per second at batch 16, not the 5× the issue asked for. Where the time goes
  (profile of the zero-shot batch): ~55 % in the linear layers of 30 decoder layers at ~80 ms per decode step
  for 8–16 rows (reading 540 MB of fp32 weights per step, plus per-op overhead), ~15 % in the `DynamicCache`
  concatenations, ~10 % in attention. Zero-shot answers mostly run to the 96-token limit (prose, HTML or
  ```` ```json ```` objects that only the limit ends), and those tokens have to be generated either way; the
  gains come from the prefix cache (a 300-token prefill was ~25 % of a plain batch), dropping finished rows
  and keeping the batch full. In the demo study the 24-sentence evaluation of a trained adapter took 0.26 s per
  answer and zero-shot 0.7 s, against 1–2 s per answer before.
- bf16 (this CPU has AMX-bf16) is another 1.35–1.42× but changes 23–46 % of the answers, so fp32 stays the
  CPU default; bf16 remains `model.dtype=bfloat16` for whoever wants it.
- Constrained decoding (`--constrained`) removes every parse failure (100 % → 0 % of zero-shot answers,
  68.5 % → 0 % for the 10-step adapter). Its F1 on these 130 prompts is in the table without an interval: a
  bench of 12 sentences per site is not a comparison, so `eval.constrained` stays off by default until a study
  measures it with paired intervals. (Zero-shot and the 10-step adapter both score 17.1 NER strict under the
  constraint; they answer differently on 9 of 12 NER prompts checked, so that is a coincidence. Under the
  constraint both tend to list one span once per allowed type, which the grammar permits.)"""


#: Reading of the decode-alternatives table (by hand, from the run it describes).
DECODE_NOTES = """Reading it (AMD EPYC, 2 threads, 2026-12-04; the issue asked for 5× over plain `model.generate`):
- **Batch size.** A generated token costs 10.7 ms of a row's share of a pass at batch 8, 7.7 ms at 16 and 6.6 ms
  at 32: doubling the batch from the demo's 16 saves 14 %, and only while 32 rows are waiting (the tail of every
  evaluation is smaller). The linear layers take ~60 % of decoding time (profile of a 30-step adapter's
  evaluation: 30 s of 50 s in `torch._C._nn.linear`, 5.5 s attention, 5 s `DynamicCache` concatenation), so the
  weights, not Python, bound a step.
- **Speculative decoding by prompt lookup does not pay here.** Real answers of a 30-step adapter copy enough from
  the sentence and from their own JSON layout to accept 1.89 tokens per verification pass (4-token drafts). But
  a 5-token pass costs 2.6× a 1-token pass at batch 16 (transformers repeats the grouped key/value heads for
  multi-token queries and computes 5 logit rows), so a token would cost 10.6 ms instead of 7.7 ms. With 2-token
  drafts at batch 8 a 3-token pass costs 18.4 ms, so even at the same 1.89 tokens per pass it would save ~9 %.
  A growing pre-allocated key/value cache instead of concatenation saved 8–11 % per step in a separate trial
  (not kept: greedy paths differed from the reference on random inputs).
- **CTranslate2 is not faster on this CPU.** Its fp32 generator steps in 107 ms at batch 16 (transformers: 123
  ms) but 289 ms at batch 32 (transformers: 212 ms); its bf16 mode is refused on this CPU ("do not support
  efficient bfloat16 computation"). It would also need every adapter merged and converted (~10 s each). End to
  end (2026-12-05, `bench/generate_throughput.py --ctranslate2`, next section): with each instruction's common
  prefix as its cached `static_prompt` and the same stop rule through its per-token callback, it returns the
  same answers as this decoder on 130/130 prompts per adapter but takes 135 s against 83 s zero-shot and 88 s
  against 43 s with the Fed-MedLoRA adapter (0.61× / 0.48×): its batches cannot mix instructions (one static
  prompt per call), and on this AMD CPU it selects AVX2 with unpacked oneDNN sgemm (forcing AVX-512 or MKL was
  no faster on 35 prompts). Not adopted.
- **openvino-genai was not tried**: its exporter (optimum-intel 2.2.0, the newest here) requires transformers
  < 5.6 and this project runs 5.23, so a model could only be exported from a second environment.
- **Cascade attention over the shared prefix** (tried 2026-12-05, not kept): each instruction prefix's keys and
  values held once per batch, each row's cache holding only its own tokens, attention computed over the prefix
  (all rows of a group stacked against one copy) and over the row's own tokens, and merged by log-sum-exp.
  Answers were identical to this decoder on 35/35 prompts per adapter, but decoding was slower: 29.3 s against
  27.3 s zero-shot and 23.2 s against 20.3 s with the demo's Fed-MedLoRA adapter (0.93× / 0.87× the speed). The
  profile that motivated it overstated the cost of per-row copies: PyTorch's fused SDPA kernel with grouped
  key/value heads reads 32 rows × 300 cached positions in ~0.6 ms per layer when warm, while splitting every
  layer's attention into two kernels plus the merge added more operator overhead than the copies cost (a
  profile of 32 zero-shot prompts: 53 % packed linear layers, 20 % SDPA, 9 % cache concatenation, about half of
  the linear time in prefill).
- **Also tried 2026-12-05, not kept:** `torch.compile(dynamic=True)` with Inductor's weight freezing on one
  decoding step (32 rows, 300 cached positions): 104 s to compile and 322 ms per step against 165 ms for the
  eager step with packed weights (same logits argmax); an evaluation batch of 64 instead of 32: 1.13× zero-shot
  but 0.88× with the Fed-MedLoRA adapter (130 prompts, identical answers), so the preset stays at 32; glibc's
  heap kept from shrinking (`MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_THRESHOLD_`): the cache concatenation of a
  fresh process went from 135 to 22 ms per step (page faults), but a real `generate` call took the same time
  (20.4 s against 20.6 s), its heap being warm already; joining rows prefilled in chunks of similar suffix length
  (so short prompts are not padded to long ones: 1,970 of 8,072 suffix positions on the 130 bench prompts are
  padding): identical answers but 0.93–0.97× the speed (29 prefill passes instead of 12, each chunk joined to
  the running cache).
- **Tried 2026-12-05 (later), not kept: two decoding processes at 1 thread each instead of one at 2.** If the
  decoder were bound by per-operator overhead, two processes with one thread each (each decoding half of the
  prompts) would use the two cores better than one process with two. The 130 bench prompts with the demo's
  Fed-MedLoRA adapter, batch 32, packed weights: one process at 2 threads 45.4 s; one process at 1 thread 73.1 s
  (so the second thread already gives 1.61×); the two alternating halves at 1 thread took 40.1 s and 65.1 s each
  alone and 40.1 s / 66.6 s side by side (they did not slow each other), so the pair needs 66.6 s, 0.68× the
  speed. Even a perfectly balanced split would take half of 105 s of one-thread work, more than 45.4 s: a half
  fills the continuous batch for a shorter time and prefills every instruction prefix again.
- **A stricter loop rule does not pay either** (2026-12-05, the demo study's 533 answers per row re-tokenised):
  the current rule (≥ 24 tokens, 3 periods) already ends the loops; 2 periods over ≥ 8 or ≥ 16 tokens would have
  cut 1.1 % of the generated tokens of the zero-shot row (constrained decoding, its default) and 4.8 % of the
  Fed-MedLoRA row's, at the risk of cutting answers that repeat an item once. The zero-shot row's answers end
  mostly because their JSON list closes (6 of 533 reach the 96-token limit).
- What is left is the arithmetic: an fp32 matmul runs at ~190 GFLOP/s on these 2 cores (~700 generated tokens/s
  for a 135M model), and decoding at batch 32 reaches ~150 tokens/s. bf16 or int8 weights would halve the bytes
  read per step, and they change answers (bf16: 23–46 % of answers on the Intel machine), so fp32 stays the
  default. The 5× target is not met: the decoder is 1.3–1.4× plain `model.generate` on the Intel machine's bench
  (above), and the evaluation of a trained adapter runs at 2.2 answers/s here (533 prompts of 48 sentences per
  site in 247 s). (2026-12-05: part of what looked like the weights' bound was MKL re-packing every weight matrix
  on every call; packing them once through oneDNN made the decoder 1.31–1.34× faster, first section on
  generation above.)"""


#: Reading of the packed-weights generation table (by hand, from the run it describes).
MEMORY_NOTES = """Reading it (AMD EPYC, 2 threads, 2026-12-05; "before" is commit 6049367, run with the same script):
- **Where the old peak came from.** The decoder joins newly prefilled rows into the running batch (continuous
  batching). Until 6049367 it padded both caches, concatenated them, and built the new cache from that list, and
  the padded copies, the list and the new rows' own cache stayed bound to local variables of the decoding loop
  until the next join: at every decoding step two to three stale copies of the batch's keys and values were alive
  next to the real one (found by listing live tensors by shape between two joins), and glibc kept the freed space
  after the call. In the demo's zero-shot evaluation that was a 5.8 GB peak for a 135M model whose largest KV
  cache is 0.7 GB. The demo run's 6.4 GB peak (README) came from its evaluations: its zero-shot row, which trains
  nothing, had already reached 5.8 GB. Re-run after the fix (same day, same machine, alone), the whole demo peaked
  at 5.0 GB (4.5 GB until the encoder rows; its zero-shot row at 3.7 GB) in 59.6 instead of 60.8 minutes, every
  answer byte-identical.
- **The fix** (`fedmedlora.lm.generate._join_caches`, `_cache_of`): a join writes each layer once into one fresh
  tensor and releases that layer of both inputs at once; the cache is filled layer by layer through the public
  `Cache.update`, so building it never holds a second copy (`DynamicCache(ddp_cache_data=...)` did); nothing of
  a join outlives it. The same layer-by-layer filling builds the shared-prefix part of a batch. Answers are
  identical (533 of 533 prompts of each evaluation, zero-shot and adapter, compared with the old decoder), and a
  test checks at every decoding step that no cache tensor of an earlier batch is still alive.
- **What remains** of the ~3.4 GB peak: Python, torch and transformers (~0.45 GB), the model's fp32 weights
  (0.54 GB), their packed copy while generating (`eval.packed_weights`, ~0.54 GB; off: that much less, 1.31–1.34×
  slower decoding), the batch's KV cache (up to 0.7 GB here) and what glibc keeps of freed memory. Forcing glibc to
  return large blocks at once (`MALLOC_MMAP_THRESHOLD_=131072`) cut the old decoder's peak only to 4.5 GB and made
  generation 2× slower (page faults on every step), so the allocator is left at its defaults.
- Generation time did not change beyond run-to-run variation: 313 → 316 s zero-shot and 180 → 181 s with the
  adapter in these runs; an earlier pair of runs the same day, with a script doing the same, gave 299 → 317 s and
  179 → 179 s.
"""


SPEEDUP_NOTES = """Reading it (AMD EPYC, 2 threads, 2026-12-05; batch 32 as in the demo preset; "given" is the demo
study's Fed-MedLoRA adapter, `runs/demo/fed-medlora/adapters/final`):
- **Packed weights.** PyTorch's CPU `linear` calls MKL's `sgemm`, which packs the weight matrix into its own
  layout on every call; with 8–32 rows that packing costs about as much as the product (measured on AMD, where
  MKL is also known to pick slower code paths; not measured on Intel). oneDNN, shipped in every PyTorch CPU
  wheel, can pack each weight once (`torch.ops.mkldnn._reorder_linear_weight`, what `torch.compile` does under
  `freezing`).
  `fedmedlora.lm.prepack` does that for the duration of one `generate` call (`eval.packed_weights`, default on;
  CPU and fp32 only): the decoder is **1.31×** faster zero-shot and **1.34×** with the federated adapter, with
  answers identical to the unpacked decoder's on 130 of 130 prompts each.
- **Against plain `model.generate`.** At the same batch of 32: **1.93×** zero-shot and **3.25×** with the federated
  adapter (its answers are short, and plain `generate` keeps every row of a batch until the longest one ends).
  Against plain `generate` at batch 8, the demo preset when issue 12 was filed (commit 860dd14): **3.07×** and
  **4.02×**. The output equals plain greedy output cut by the same stop rule on 100 % of the 130 prompts and
  parses to the same spans on 100 %.
- **Still short of 5×.** Where the time goes now (profile of the federated adapter on 35 prompts, batch 32): 55 %
  in the packed linear layers, 18 % in attention over the ~400-position cache (every row holds its own copy of
  the shared prefix's keys and values), 8 % in the cache's per-step concatenation. A cache with spare positions
  (written in place) removed the concatenations but added as many copies whenever a row leaves the batch: no
  measurable gain (0.94× and 1.03× on 48 prompts), not kept. Attending to the shared prefix once per batch
  (cascade attention) was built as a transformers attention function and tried: identical answers, 0.87–0.93×
  the speed, not kept (details under "what bounds a faster CPU decoder" below). CTranslate2 end to end: identical
  answers, 0.48–0.61× the speed (the table after that section). Zero-shot answers mostly run to the 96-token
  limit, which no exact decoder can shorten."""


#: Reading of the deployment tables (by hand, from the logs of the runs they describe).
DEPLOYMENT_NOTES = """Reading the deployment tables:
- Before (7ef166c, measured under load): 11.3 s per site and round to start the ClientApp with SmolLM2, and
  26–28 s per round with the tiny model against 2.1 s in simulation. Now: 3.5 s per site and round for a fresh
  ClientApp (most of the earlier 8 s "model load" was transformers' lazy imports on a loaded machine), 0.27 s
  with the resident worker. That is 13× less, and below the 2.5 s target.
- The whole round: with packed adapters (below) and resident workers, a SmolLM2 round of 4 sites takes 75.3 s on
  the Deployment Engine against 67.1 s in simulation (1.12×, the table above: 2026-12-04, 2-core AMD EPYC, one
  run, sites at 1 torch thread each, simulation at 2). Before packing it was 105 s against 47 s (2.24×, Intel
  Xeon, 2026-12-02; fresh ClientApps 132 s, 2.82×; not re-measured here). The timestamps of one of those
  unpacked rounds (round 1 of a 2-round run, 4 sites, `--keep`; including the one-time FAB install and model
  load) showed where the time went:
  - the handlers start 14–20 s after the round begins;
  - they run 46–52 s in parallel, on 1 thread each on 2 cores (the simulation's sites run one after another,
    at about 10 s each on 2 threads);
  - the coordinator aggregates 26 s after the last reply reached the SuperLink.
  Flower's own polling accounts for only a few seconds: a SuperNode polls for messages every 3 s (hard-coded in
  flwr 1.41), the SuperExec every 1 s (`FLWR_SUPEREXEC_TASK_POLL_INTERVAL`), and the coordinator's
  `RejoiningGrid` every 1 s, where Flower's grid waits 3 s.
- The rest was Flower's object transfer, now measured (the "Adapter layout on the wire" table): Flower stores and
  moves every `Array` of a message as its own object, one request each over TLS, so an adapter of 240 tensors
  was 482 objects per message. Since 09336f5 the adapter travels packed (one JSON index `Array` + one byte
  `Array`, 6 objects per message; `fedmedlora.federation.messages`). With the 240 tensors of SmolLM2's adapter on
  a tiny 30-layer model, 3 resident sites, a round went from 73 s to 8.5 s (8.6×, in-memory SuperLink), and the
  unpacked run against the SQLite SuperLink failed twice with HTTP 500 while the packed one finished.
- 10 SuperNodes now finish every round against the SQLite SuperLink (`--database`), fresh and resident, in 4
  runs of 3 rounds (the scale table; measured on a 2-core AMD EPYC while a SmolLM2 study ran beside it, so
  every process was at 1 torch thread: a 2-thread simulation under that load ran 60× slower from OpenMP
  oversubscription). With the tiny
  model the deployment's cost is Flower's fixed per-round cost (polling, process start), not work: 7 s per round
  for 3 resident sites and 15 s for 10, against well under a second of computation.
  Before packing, one of ten simultaneous reply pushes was answered with HTTP 500 "database is locked" (Flower's
  `busy_timeout` is 5 s), the SuperNode did not retry, and the round waited for `federation.round_timeout_s`.
  Fewer objects means far fewer SQLite writes per round. If a lock still occurs at larger scale,
  `fedmedlora deploy superlink --in-memory` keeps the SuperLink's state in memory (no writer lock; registered keys
  and runs are then lost when it stops), and `round_timeout_s` near the SLA with `min_sites` below the number of
  sites ends such a round with the others."""


def wire_section(d: dict[str, Any]) -> list[str]:
    """Packed vs one-Array-per-tensor adapters on the Deployment Engine (``bench/results/deployment_wire.json``)."""
    rows = []
    for r in d["runs"]:
        if r.get("failed"):
            rows.append([r["wire"], r["superlink_state"], "failed", r["failed"]])
        else:
            rounds = ", ".join(f"{x:.1f}" for x in r["round_seconds"])
            rows.append([r["wire"], r["superlink_state"], f"{r['steady_round_s']:.1f}", rounds])
    done = [r for r in d["runs"] if not r.get("failed") and r["superlink_state"] == "memory"]
    med = {w: sorted(r["steady_round_s"] for r in done if r["wire"] == w) for w in ("packed", "unpacked")}
    ratio = ""
    if med["packed"] and med["unpacked"]:
        ratio = (
            f" Against the in-memory SuperLink, unpacked rounds take "
            f"{statistics.median(med['unpacked']) / statistics.median(med['packed']):.1f}× as long as packed ones."
        )
    return [
        "## Adapter layout on the wire: packed vs one Flower object per tensor",
        "",
        _machine(d),
        "",
        f"{d['model']}, 3 sites with resident workers ({d['site_threads']} torch thread each), {d['rounds']} rounds, "
        f"TLS + node auth. Command: `{d['commands'][0]}`. Flower stores and transfers every `Array` of a message as "
        "its own object (one request each); a packed adapter is 6 objects per message, an unpacked one 482." + ratio,
        "",
        markdown_table(["wire", "SuperLink state", "rounds ≥2 median (s)", "round seconds / outcome"], rows),
        "",
    ]


def render() -> str:
    lines = [
        "# Performance",
        "",
        "Generated by `python bench/report.py` from `bench/results/*.json` (see `bench/README.md` for how to "
        "re-run). Every table names the machine it was measured on. CPU timings come from a 2-core machine shared "
        "with other jobs and varied by up to ~2× between runs: read them as orders of magnitude and slopes.",
        "",
    ]
    for name, fn in (("comm_bytes", comm_section), ("aggregation_scaling", aggregation_section)):
        d = _load(name)
        if d is not None:
            lines += fn(d)
    d = _load("round_overhead")
    lines += overhead_section(d) if d else ["## Framework overhead per round", "", "Not measured yet.", ""]
    d = _load("generate_speedup")  # a run with --unpacked --old-batch-size 8 (packed weights, pre-issue baseline)
    if d is not None:
        lines += [*generate_section(d), SPEEDUP_NOTES, ""]
    d = _load("decode_packed")  # bench/decode_alternatives.py --q 1 --packed --no-ct2
    if d is not None:
        lines += packed_step_section(d)
    for name in ("generate_throughput", "generate_throughput_bf16"):  # the second: a run with --dtype bfloat16
        d = _load(name)
        if d is not None:
            lines += generate_section(d)
    if _load("generate_throughput") is not None:
        lines += [GENERATION_NOTES, ""]
    d = _load("decode_alternatives")
    if d is not None:
        lines += [*decode_section(d), DECODE_NOTES, ""]
    d = _load("generate_ct2")  # bench/generate_throughput.py --ctranslate2: CTranslate2 end to end
    if d is not None:
        lines += generate_section(d, "CTranslate2 end to end, next to the new decoder and plain `model.generate`")
    d = _load("generate_memory")
    if d is not None:
        lines += memory_section(d)
    d = _load("train_autocast")
    if d is not None:
        lines += autocast_section(d, _load("train_autocast_f1"), _load("train_autocast_layouts"))
    d = _load("train_prefix_sharing")
    if d is not None:
        lines += prefix_sharing_section(d)
    d = _load("dp_step")
    if d is not None:
        lines += dp_section(d)
    d = _load("clientapp_startup")
    if d is not None and "fresh" in d:
        lines += startup_section(d)
    d = _load("deployment_round")
    if d is not None:
        lines += deployment_section(d, "Round time: Deployment Engine against the simulation (real small model)")
    d = _load("deployment_scale")
    if d is not None:
        lines += deployment_section(d, "Round time against the number of SuperNodes (tiny model)")
    d = _load("deployment_wire")
    if d is not None:
        lines += wire_section(d)
    if _load("deployment_round") is not None:
        lines += [DEPLOYMENT_NOTES, ""]
    lines += gpu_section(_load("gpu_bench"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(DOC), help="output file, or - for stdout")
    args = parser.parse_args(argv)
    text = render()
    if args.out == "-":
        print(text)
    else:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
