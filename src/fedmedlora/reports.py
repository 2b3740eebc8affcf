"""Reports: evaluation results and run folders → Markdown/CSV tables and matplotlib plots.

Owns formatting only; it reads plain dicts and files (``Evaluation.to_dict()`` results, ``rounds.jsonl``) and never
imports torch or flwr (matplotlib is imported inside the plotting functions).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedmedlora.metrics import Evaluation, combine


def _f(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def headline(ev: Evaluation) -> dict[str, float | None]:
    """The numbers of a results row: micro F1 (and P/R) per task and rule; ``None`` where a task was not scored."""
    row: dict[str, float | None] = {}
    for task in ("ner", "re"):
        scored = ev.n_instances.get(task, 0) > 0
        for rule in ("strict", "lenient", "strict_untyped", "lenient_untyped"):
            c = ev.get(task, rule)
            for name in ("precision", "recall", "f1"):
                row[f"{task}_{rule}_{name}"] = getattr(c, name) if scored else None
    return row


def eval_markdown(results: Mapping[str, Mapping[str, Any]], title: str = "evaluation") -> str:
    """Summary table (one row per site + all sites) and per-type tables of one model's evaluation."""
    per_site = {site: Evaluation.from_dict(r["metrics"]) for site, r in results.items()}
    evs = combine(per_site) if len(per_site) > 1 else per_site
    lines = [
        f"## {title}",
        "",
        "Micro-averaged, in %. strict = exact span and type; lenient = overlapping span, same type; "
        "RE = (head, modifier, type) with the gold head marked (paper protocol).",
        "",
        "| site | sentences | NER strict P | NER strict R | NER strict F1 | NER lenient F1 | RE strict F1 | "
        "RE lenient F1 | NER untyped strict F1 | parse-failure rate NER/RE |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for site, ev in evs.items():
        h = headline(ev)
        r = results.get(site, {})
        n = r.get("n_sentences", sum(x.get("n_sentences", 0) for x in results.values()))
        rates = r.get("parse", {}).get("parse_failure_rate", {})
        rate = "/".join(_f(rates.get(t)) for t in ("ner", "re")) if rates else "–"
        lines.append(
            f"| {site} | {n} | {_f(h['ner_strict_precision'])} | {_f(h['ner_strict_recall'])} | "
            f"{_f(h['ner_strict_f1'])} | {_f(h['ner_lenient_f1'])} | {_f(h['re_strict_f1'])} | "
            f"{_f(h['re_lenient_f1'])} | {_f(h['ner_strict_untyped_f1'])} | {rate} |"
        )
    lines.append("")
    for site, ev in evs.items():
        lines.append(ev.to_markdown(title=f"{site}: per type"))
    return "\n".join(lines)


# ---- comparison table (the study) -----------------------------------------------------------------------------

COLUMNS = ("ner_strict_f1", "ner_lenient_f1", "re_strict_f1", "re_lenient_f1")


def comparison_rows(models: Mapping[str, Mapping[str, Mapping[str, Any]]], groups: Mapping[str, Sequence[str]]):
    """Rows ``(model, group, metric -> value)`` where each group (in-domain / external / new site) sums the
    counts of its sites before scoring (micro over the group)."""
    rows = []
    for model, results in models.items():
        for group, sites in groups.items():
            present = [s for s in sites if s in results]
            if not present:
                continue
            ev = Evaluation()
            for s in present:
                ev += Evaluation.from_dict(results[s]["metrics"])
            rows.append((model, group, headline(ev)))
    return rows


def comparison_markdown(rows, extra: Mapping[str, Mapping[str, Any]] | None = None, title: str = "") -> str:
    groups = list(dict.fromkeys(g for _, g, _ in rows))
    models = list(dict.fromkeys(m for m, _, _ in rows))
    cell = {(m, g): h for m, g, h in rows}
    head = ["model"]
    for g in groups:
        head += [f"{g} NER strict", f"{g} NER lenient", f"{g} RE strict", f"{g} RE lenient"]
    extra_cols = sorted({k for v in (extra or {}).values() for k in v})
    head += extra_cols
    lines = [f"## {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for m in models:
        vals = [m]
        for g in groups:
            h = cell.get((m, g))
            vals += [_f(h[c]) if h else "–" for c in COLUMNS]
        vals += [str((extra or {}).get(m, {}).get(c, "–")) for c in extra_cols]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def unseen_site_rows(
    models: Mapping[str, Mapping[str, Mapping[str, Any]]],
    single_site: Mapping[str, str],
    train_sites: Sequence[str],
    compare: Sequence[str],
) -> list[dict[str, Any]]:
    """Generalisation to other sites: for each single-site model, the training sites it did not train on, scored
    (micro over those sites) for that model and for each model in ``compare`` on exactly the same sites.

    Args:
        models: model name -> site -> evaluation result (``{"metrics": Evaluation.to_dict()}``).
        single_site: single-site model name -> the site it trained on.
        train_sites: every training site of the study.
        compare: models to put beside each single-site model (federated, centralized).

    Returns:
        One dict per single-site model: ``model``, ``trained_on``, ``unseen`` (sites) and ``scores``
        (model name -> ``headline`` row); a compared model missing any of those sites is left out.
    """
    out = []
    for model, site in single_site.items():
        unseen = [s for s in train_sites if s != site]
        if not unseen or model not in models:
            continue
        scores = {}
        for m in [model, *compare]:
            if m in models and all(s in models[m] for s in unseen):
                ev = Evaluation()
                for s in unseen:
                    ev += Evaluation.from_dict(models[m][s]["metrics"])
                scores[m] = headline(ev)
        out.append({"model": model, "trained_on": site, "unseen": unseen, "scores": scores})
    return out


def unseen_site_markdown(rows: Sequence[Mapping[str, Any]], compare: Sequence[str], title: str = "") -> str:
    """``unseen_site_rows`` as a table (strict / lenient F1 per task), with a count of where each compared model
    beats the single-site model on that model's unseen sites (NER strict F1)."""
    shown = [m for m in compare if any(m in r["scores"] for r in rows)]
    if not rows or not shown:
        return ""
    tasks = [
        t for t in ("ner", "re") if any(h.get(f"{t}_strict_f1") is not None for r in rows for h in r["scores"].values())
    ]
    head = ["single-site model", "its unseen sites"]
    for m in ["single-site", *shown]:
        head += [f"{m} {t.upper()} strict / lenient" for t in tasks]
    lines = [f"## {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]

    def cell(h: Mapping[str, Any] | None, task: str) -> str:
        return "–" if h is None else f"{_f(h[f'{task}_strict_f1'])} / {_f(h[f'{task}_lenient_f1'])}"

    wins = {m: [0, 0] for m in shown}
    for r in rows:
        vals = [r["model"], ", ".join(r["unseen"])]
        for m in [r["model"], *shown]:
            vals += [cell(r["scores"].get(m), t) for t in tasks]
        lines.append("| " + " | ".join(vals) + " |")
        own = (r["scores"].get(r["model"]) or {}).get("ner_strict_f1")
        for m in shown:
            theirs = (r["scores"].get(m) or {}).get("ner_strict_f1")
            if own is not None and theirs is not None:
                wins[m][1] += 1
                wins[m][0] += theirs > own
    lines.append("")
    for m, (won, n) in wins.items():
        if n:
            lines.append(
                f"- {m} beats the single-site model on its unseen sites in {won} of {n} cases (NER strict F1)."
            )
    return "\n".join(lines) + "\n"


STUDY_NOTE = (
    "\nstrict = exact span and type; lenient = overlapping span, same type. RE is scored with gold heads "
    "(the paper's protocol). In-domain (all) sums the counts of the training sites' test splits. "
    "Types a site does not annotate are never scored there.\n"
)


def study_markdown(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    groups: Mapping[str, Sequence[str]],
    extras: Mapping[str, Mapping[str, Any]],
    unseen: Mapping[str, Sequence[Mapping[str, Any]]],
    compare: Mapping[str, Sequence[str]],
    plots: Sequence[Path],
    title: str,
) -> tuple[list, str]:
    """A study's ``study.md``: the comparison table, the unseen-site tables (one per kind of model: ``unseen[kind]``
    compared with ``compare[kind]``) and the plots. Returns the comparison rows and the Markdown."""
    rows = comparison_rows(results, groups)
    md = comparison_markdown(rows, extras, title=f"{title}: micro F1 (%)") + STUDY_NOTE
    for kind, kind_rows in unseen.items():
        heading = f"Sites a single-site model did not train on ({kind}): micro F1 (%)"
        md += "\n" + unseen_site_markdown(kind_rows, compare[kind], title=heading)
    if plots:
        md += "\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots) + "\n"
    return rows, md


def comparison_csv(rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "group", *COLUMNS])
    for m, g, h in rows:
        w.writerow([m, g, *("" if h[c] is None else f"{h[c]:.6f}" for c in COLUMNS)])
    return buf.getvalue()


# ---- plots ------------------------------------------------------------------------------------------------------


def plot_rounds(runs: Mapping[str, Sequence[Mapping[str, Any]]], out_dir: str | Path) -> list[Path]:
    """From each federated run's ``rounds.jsonl`` records: validation F1 / loss per round, aggregation weights per
    round, and bytes per round. Returns the PNG paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    def round_axis(ax) -> None:
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def metric_series(recs, key):
        xs, ys = [], []
        for r in recs:
            v = r.get("global_eval", {}).get(key, r.get(key))
            if isinstance(v, int | float):
                xs.append(r["round"])
                ys.append(v)
        return xs, ys

    for key, label, name in (
        ("val_ner_strict_f1", "validation NER strict F1", "f1_per_round.png"),
        ("val_loss", "validation loss", "val_loss_per_round.png"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        any_data = False
        for method, recs in runs.items():
            xs, ys = metric_series(recs, key)
            if xs:
                any_data = True
                ax.plot(xs, ys, marker="o", label=method)
        if any_data:
            round_axis(ax)
            ax.set_ylabel(label)
            ax.legend()
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(out_dir / name, dpi=120)
            written.append(out_dir / name)
        plt.close(fig)

    methods = [m for m, recs in runs.items() if any(r.get("weights") for r in recs)]
    if methods:
        fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 4), squeeze=False)
        for ax, method in zip(axes[0], methods, strict=True):
            recs = [r for r in runs[method] if r.get("weights")]  # round 0 (the initial adapter) has none
            sites = sorted({s for r in recs for s in r["weights"]})
            for site in sites:
                # a site absent from a round's weights was not sampled: it had no say in that round
                ax.plot([r["round"] for r in recs], [r["weights"].get(site, 0.0) for r in recs], marker="o", label=site)
            ax.set_title(f"{method}: aggregation weights")
            round_axis(ax)
            ax.set_ylim(0, 1)
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "weights_per_round.png", dpi=120)
        plt.close(fig)
        written.append(out_dir / "weights_per_round.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    any_bytes = False
    for method, recs in runs.items():
        xs = [r["round"] for r in recs if "bytes_up" in r or "bytes_total" in r]
        ys = [
            (r.get("bytes_total") or sum(r.get("bytes_up", {}).values()) + sum(r.get("bytes_down", {}).values())) / 1e6
            for r in recs
            if "bytes_up" in r or "bytes_total" in r
        ]
        if xs:
            any_bytes = True
            ax.plot(xs, ys, marker="o", label=method)
    if any_bytes:
        round_axis(ax)
        ax.set_ylabel("MB exchanged (up + down, all sites)")
        ax.set_ylim(bottom=0)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "bytes_per_round.png", dpi=120)
        written.append(out_dir / "bytes_per_round.png")
    plt.close(fig)
    return written
