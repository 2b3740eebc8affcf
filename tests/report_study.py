"""A finished study folder built without a model, for the report tests (``fedmedlora.html_report``).

Two rows on two sites of the bundled sample: ``zero-shot`` answers nothing (every gold span a miss) and
``Fed-MedLoRA`` (a federated run folder with ``rounds.jsonl``) answers the gold spans with one error of each kind
put in on purpose (a boundary error, a type error, a miss, a false positive) wherever the sentence allows it. The
generations are rendered in the configured output format and recorded like ``recipes.evaluate.write_eval`` does,
so the report replays them exactly as it replays a real study's; ``study.json`` is computed with the same pure
functions the study uses (``reports``, ``intervals``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedmedlora.benchmark import open_benchmark
from fedmedlora.config import RunConfig, load_config
from fedmedlora.extract import ExtractionStats, extract_sentences
from fedmedlora.intervals import OVERALL, compare_models, document_counts, group_intervals, row_intervals
from fedmedlora.metrics import score_sentences
from fedmedlora.prompts import FORMATS, Prompt
from fedmedlora.reports import comparison_rows, eval_markdown, unseen_site_rows
from fedmedlora.runs import RunDir, eval_file
from fedmedlora.sampling import eval_items
from fedmedlora.schema import Span

SITES = ("chia", "phee")
RESAMPLES = 50


def perturb(spans: list[Span], text: str, types: tuple[str, ...]) -> list[Span]:
    """Gold spans with errors of each kind put in: the first kept (match), the second's end moved back by a
    character (boundary), the third's type changed (type), the fourth dropped (miss), and one false positive on
    the first word of four letters or more that no span covers."""
    spans = sorted(spans, key=lambda s: (s.start, s.end))
    out = list(spans)
    if len(spans) >= 2 and spans[1].end - spans[1].start > 2:
        out[1] = Span(spans[1].start, spans[1].end - 1, spans[1].type)
    other = [t for t in types if len(spans) >= 3 and t != spans[2].type]
    if other:
        out[2] = Span(spans[2].start, spans[2].end, other[0])
    if len(spans) >= 4:
        out.pop(3)
    pos = 0
    for word in text.split(" "):
        a, b = pos, pos + len(word)
        pos = b + 1
        if len(word) > 3 and word.isalpha() and not any(a < s.end and s.start < b for s in spans):
            out.append(Span(a, b, spans[0].type if spans else types[0]))
            break
    return out


def oracle(items, fmt: str, noisy: bool):
    """A ``generate_fn`` that answers each prompt from the gold annotation of its sentence (perturbed if noisy)."""
    by_text = {s.text: s for s, _ in items}
    render = FORMATS[fmt].render

    def gen(prompts: list[str]) -> list[str]:
        answers = []
        for p in prompts:
            assert isinstance(p, Prompt)
            sent = by_text[p.sentence]
            if p.task == "ner":
                gold = [e.span for e in sent.entities if e.type in p.types]
            else:
                head = next(e for e in sent.entities if e.span == p.head)
                gold = [m.span for m in sent.modifiers_of(head.id) if m.type in p.types]
            if not noisy:
                answers.append(render(sent.text, []))
                continue
            answers.append(render(sent.text, perturb(gold, sent.text, p.types) if p.task == "ner" else gold))
        return answers

    return gen


def evaluate(cfg: RunConfig, noisy: bool) -> dict[str, Any]:
    """What ``recipes.evaluate.evaluate_arrays`` returns, with the oracle in place of the model."""
    bench = open_benchmark(cfg.data.benchmark)
    out: dict[str, Any] = {}
    for site in SITES:
        docs, items = eval_items(bench, site, cfg)
        stats, outputs = ExtractionStats(), []
        gen = oracle(items, cfg.data.format, noisy)

        def recording(prompts, gen=gen, outputs=outputs):
            answers = gen(prompts)
            outputs.extend({"prompt": str(p), "output": a} for p, a in zip(prompts, answers, strict=True))
            return answers

        preds = extract_sentences(
            items, recording, fmt=cfg.data.format, tasks=cfg.data.tasks, heads="gold", stats=stats
        )
        doc_of = {s.id: d.id for d in docs for s in d.sentences}
        out[site] = {
            "metrics": score_sentences(items, preds, cfg.data.tasks).to_dict(),
            "parse": stats.to_dict(),
            "n_sentences": len(items),
            "documents": document_counts(items, preds, [doc_of[s.id] for s, _ in items], cfg.data.tasks),
            "outputs": outputs,
        }
    for site in SITES:
        out[site]["intervals"] = group_intervals(out, [site], n_resamples=RESAMPLES, seed=cfg.seed) or {}
    out[OVERALL] = {
        "sites": list(SITES),
        "intervals": group_intervals(out, list(SITES), n_resamples=RESAMPLES, seed=cfg.seed) or {},
        "bootstrap": {"resamples": RESAMPLES, "seed": cfg.seed, "level": 0.95, "unit": "document", "strata": "site"},
    }
    return out


def write_row(path: Path, cfg: RunConfig, results: dict[str, Any], command: str, rounds: list[dict]) -> None:
    run = RunDir(path, cfg, command=command)
    tables = {site: {k: v for k, v in r.items() if k != "outputs"} for site, r in results.items()}
    run.write_json(eval_file("test"), tables)
    run.write_text(eval_file("test", ".md"), eval_markdown(tables, title="test"))
    lines = [json.dumps({"site": s, **o}) + "\n" for s, r in results.items() for o in r.get("outputs", [])]
    run.write_text(eval_file("test", "_outputs.jsonl"), "".join(lines))
    for r in rounds:
        run.append_jsonl("rounds.jsonl", r)
    run.write_json("study_row.json", {"train steps": 6, "minutes": 0.1, "_reuse_key": {}})
    run.finish(peak_rss_mb=512.0, eval_seconds=1.5)


def make_study(root: Path, *, zero_shot_name: str = "zero-shot") -> Path:
    """A finished study folder at ``root`` (see the module docstring); returns it."""
    cfg = load_config(overrides=["eval.max_sentences=8", "data.format=html", "seed=13"])
    study = RunDir(root, cfg, command="study", train_sites=list(SITES), external=[], new_site=None)
    zero = evaluate(cfg, noisy=False)
    fed = evaluate(cfg, noisy=True)
    rounds = [
        {"round": 0, "val_loss": 2.0, "val_ner_strict_f1": 0.1},
        *(
            {
                "round": k,
                "weights": {"chia": 0.6, "phee": 0.4},
                "bytes_up": {"chia": 4096 * k, "phee": 4096},
                "bytes_down": {"chia": 4096, "phee": 4096},
                "val_loss": 2.0 / (k + 1),
                "val_ner_strict_f1": 0.2 * k,
            }
            for k in (1, 2)
        ),
    ]
    write_row(root / zero_shot_name, cfg, zero, "study:zero_shot", [])
    write_row(root / "fed-medlora", cfg, fed, "federation", rounds)
    results = {zero_shot_name: zero, "Fed-MedLoRA": fed}
    groups = {"chia": ["chia"], "phee": ["phee"], "in-domain (all)": list(SITES)}
    intervals = row_intervals(results, groups, n_resamples=RESAMPLES, seed=cfg.seed)
    rows = comparison_rows(results, groups)
    paired = [
        {
            "kind": "Fed-MedLoRA vs zero-shot",
            "comparison": "Fed-MedLoRA vs zero-shot",
            "a": "Fed-MedLoRA",
            "b": zero_shot_name,
            "sites": list(SITES),
            **r,
        }
        for r in compare_models(fed, zero, list(SITES), n_resamples=RESAMPLES, seed=cfg.seed)
    ]
    summary = {
        "rows": [{"model": m, "group": g, **h, **intervals.get(m, {}).get(g, {})} for m, g, h in rows],
        "extras": {
            zero_shot_name: {"train steps": 0, "minutes": 0.1},
            "Fed-MedLoRA": {"train steps": 6, "minutes": 0.2},
        },
        "groups": groups,
        # the zero-shot row plays a single-site model trained on chia: phee is the site it never saw
        "unseen_sites": {
            "LLM adapters": unseen_site_rows(results, {zero_shot_name: "chia"}, list(SITES), ["Fed-MedLoRA"])
        },
        "bootstrap": {"resamples": RESAMPLES, "seed": cfg.seed, "level": 0.95, "unit": "document"},
        "paired": paired,
    }
    study.write_json("study.json", summary)
    study.finish(minutes=0.3)
    return root
