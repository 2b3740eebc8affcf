"""Reports: evaluation results and run folders → Markdown/CSV tables and matplotlib plots.

Owns formatting only; it reads plain dicts and files (``Evaluation.to_dict()`` results, ``rounds.jsonl``) and never
imports torch or flwr (matplotlib is imported inside the plotting functions).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedmedlora.intervals import OVERALL, flat_intervals, site_results
from fedmedlora.metrics import Evaluation, combine, pooled


def _f(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _ci(x: float | None, low: float | None, high: float | None) -> str:
    """``41.2 [30.1, 52.0]`` (in %); the bare number without an interval, ``–`` without a number."""
    if x is None or low is None or high is None:
        return _f(x)
    return f"{_f(x)} [{_f(low)}, {_f(high)}]"


def _cell(h: Mapping[str, Any], key: str, ci: Mapping[str, float] | None) -> str:
    """``h[key]`` with its interval from ``ci`` (``flat_intervals`` keys) when there is one."""
    ci = ci or {}
    return _ci(h.get(key), ci.get(f"{key}_low"), ci.get(f"{key}_high"))


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


#: The columns of the evaluation summary that get intervals.
EVAL_CI_COLUMNS = (
    "ner_strict_precision",
    "ner_strict_recall",
    "ner_strict_f1",
    "ner_lenient_f1",
    "re_strict_f1",
    "re_lenient_f1",
)


def eval_markdown(results: Mapping[str, Mapping[str, Any]], title: str = "evaluation") -> str:
    """Summary table (one row per site + all sites) and per-type tables of one model's evaluation.

    Scores with 95% intervals where the evaluation has them (``41.2 [30.1, 52.0]``: per site its own, the
    ``all`` row the pooled ones of ``fedmedlora.intervals.OVERALL``); an evaluation without them (made before
    intervals existed, or ``eval.bootstrap_resamples=0``) shows the bare numbers.
    """
    overall = results.get(OVERALL, {})
    sites = site_results(results)
    per_site = {site: Evaluation.from_dict(r["metrics"]) for site, r in sites.items()}
    evs = combine(per_site) if len(per_site) > 1 else per_site
    cis = {site: flat_intervals(r.get("intervals") or {}) for site, r in sites.items()}
    if len(per_site) > 1:
        cis["all"] = flat_intervals(overall.get("intervals") or {})
    boot = overall.get("bootstrap") or {}
    note = ""
    if any(cis.values()):
        note = (
            f" [low, high]: {100 * boot.get('level', 0.95):.0f}% interval of a document-level bootstrap "
            f"({boot.get('resamples', '?')} resamples, seed {boot.get('seed', '?')}; all sites: stratified by site)."
        )
    lines = [
        f"## {title}",
        "",
        "Micro-averaged, in %. strict = exact span and type; lenient = overlapping span, same type; "
        "RE = (head, modifier, type) with the gold head marked (paper protocol)." + note,
        "",
        "| site | sentences | NER strict P | NER strict R | NER strict F1 | NER lenient F1 | RE strict F1 | "
        "RE lenient F1 | NER untyped strict F1 | parse-failure rate NER/RE |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for site, ev in evs.items():
        h = headline(ev)
        r = sites.get(site, {})
        ci = cis.get(site)
        n = r.get("n_sentences", sum(x.get("n_sentences", 0) for x in sites.values()))
        rates = r.get("parse", {}).get("parse_failure_rate", {})
        rate = "/".join(_f(rates.get(t)) for t in ("ner", "re")) if rates else "–"
        cells = [_cell(h, k, ci) for k in EVAL_CI_COLUMNS]
        lines.append(f"| {site} | {n} | {' | '.join(cells)} | {_f(h['ner_strict_untyped_f1'])} | {rate} |")
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
            rows.append((model, group, headline(pooled(results, present))))
    return rows


def comparison_markdown(
    rows,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    title: str = "",
    cell: Callable[[str, str, Mapping[str, Any], str], str] | None = None,
) -> str:
    """One line per model, four columns (``COLUMNS``) per group, then the ``extra`` columns. ``cell(model,
    group, headline, column)`` formats a score (default: the bare number, in %)."""
    groups = list(dict.fromkeys(g for _, g, _ in rows))
    models = list(dict.fromkeys(m for m, _, _ in rows))
    scores = {(m, g): h for m, g, h in rows}
    fmt = cell or (lambda _m, _g, h, c: _f(h[c]))
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
            h = scores.get((m, g))
            vals += [fmt(m, g, h, c) if h else "–" for c in COLUMNS]
        vals += [str((extra or {}).get(m, {}).get(c, "–")) for c in extra_cols]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def interval_markdown(rows, intervals: Mapping[str, Mapping[str, Mapping[str, float]]], title: str = "") -> str:
    """The comparison table with each score's 95% interval (``41.2 [30.1, 52.0]``); ``–`` where the model has
    no per-document counts there (the encoder rows, evaluations made before intervals existed)."""

    def cell(m: str, g: str, h: Mapping[str, Any], c: str) -> str:
        ci = intervals.get(m, {}).get(g)
        if h.get(c) is None:
            return "–"
        return _cell(h, c, ci) if ci and f"{c}_low" in ci else "–"

    return comparison_markdown(rows, title=title, cell=cell)


def _pp(x: float | None) -> str:
    """A difference of fractions in signed percentage points."""
    return "–" if x is None else f"{100 * x:+.1f}"


def paired_markdown(rows: Sequence[Mapping[str, Any]], title: str = "") -> str:
    """The paired comparisons (``fedmedlora.intervals.compare_models`` rows with ``comparison`` and ``sites``):
    the F1 difference of A − B in percentage points, its 95% paired bootstrap interval and the verdict, then per
    comparison kind a count of wins / losses (NER strict F1)."""
    if not rows:
        return ""
    lines = [f"## {title}", ""] if title else []
    lines += [
        "| comparison (A vs B) | sites | task / rule | difference A − B (pp) | 95% interval | verdict |",
        "|---|---|---|---:|---:|---|",
    ]
    for r in rows:
        iv = "–" if r.get("low") is None else f"[{_pp(r['low'])}, {_pp(r['high'])}]"
        why = r.get("verdict") or (f"– ({r['note']})" if r.get("note") else "–")
        lines.append(
            f"| {r['comparison']} | {', '.join(r['sites'])} | {r['task'].upper()} {r['rule']} | "
            f"{_pp(r.get('difference'))} | {iv} | {why} |"
        )
    lines.append("")
    tally: dict[str, dict[str, int]] = {}
    for r in rows:
        if (r["task"], r["rule"]) == ("ner", "strict") and r.get("verdict"):
            t = tally.setdefault(r.get("kind") or r["comparison"], {"win": 0, "loss": 0, "not significant": 0})
            t[r["verdict"]] += 1
    for kind, t in tally.items():
        n = sum(t.values())
        lines.append(
            f"- {kind} (NER strict F1): {t['win']} win(s), {t['loss']} loss(es), "
            f"{t['not significant']} not significant, of {n}."
        )
    return "\n".join(lines) + "\n"


def seed_summary(
    per_seed: Mapping[int, Mapping[str, Mapping[str, Mapping[str, Any]]]],
    groups: Mapping[str, Sequence[str]],
) -> list[dict[str, Any]]:
    """Across repeated runs (``{seed: {model: {site: result}}}``): per model and group, ``seeds`` (those that
    ran it), ``n_seeds`` and for each of ``COLUMNS`` its ``_mean`` and sample ``_sd`` (None with one value)."""
    values: dict[tuple[str, str], dict[str, list[float]]] = {}
    ran: dict[tuple[str, str], list[int]] = {}
    for seed, models in per_seed.items():
        for m, g, h in comparison_rows(models, groups):
            ran.setdefault((m, g), []).append(seed)
            for c in COLUMNS:
                if h[c] is not None:
                    values.setdefault((m, g), {}).setdefault(c, []).append(h[c])
    out = []
    for (m, g), seeds in ran.items():
        row: dict[str, Any] = {"model": m, "group": g, "seeds": seeds, "n_seeds": len(seeds)}
        for c in COLUMNS:
            xs = values.get((m, g), {}).get(c, [])
            row[f"{c}_mean"] = statistics.fmean(xs) if xs else None
            row[f"{c}_sd"] = statistics.stdev(xs) if len(xs) > 1 else None
        out.append(row)
    return out


def seed_markdown(summary: Sequence[Mapping[str, Any]], seeds: Sequence[int], title: str = "") -> str:
    """``seed_summary`` as the comparison table with ``mean ± sd`` cells (a bare number: one seed ran it)."""
    rows = [(r["model"], r["group"], {c: r[f"{c}_mean"] for c in COLUMNS}) for r in summary]
    sd = {(r["model"], r["group"]): r for r in summary}

    def cell(m: str, g: str, h: Mapping[str, Any], c: str) -> str:
        mean, dev = h[c], sd[(m, g)][f"{c}_sd"]
        return _f(mean) if dev is None else f"{_f(mean)} ± {100 * dev:.1f}"

    n_seeds = {r["model"]: r["n_seeds"] for r in summary}
    extra = {m: {"seeds": n} for m, n in n_seeds.items()}
    md = comparison_markdown(rows, extra, title=title, cell=cell)
    return md + f"\nMean ± sample sd over seeds {', '.join(map(str, seeds))} (rows trained once per seed).\n"


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
                scores[m] = headline(pooled(models[m], unseen))
        out.append({"model": model, "trained_on": site, "unseen": unseen, "scores": scores})
    return out


def unseen_site_markdown(rows: Sequence[Mapping[str, Any]], compare: Sequence[str], title: str = "") -> str:
    """``unseen_site_rows`` as a table (strict / lenient F1 per task), with a count of where each compared model
    has the higher point estimate than the single-site model on that model's unseen sites (NER strict F1)."""
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
                f"- {m} has the higher point estimate than the single-site model on its unseen sites in {won} of "
                f"{n} cases (NER strict F1; whether a difference is a win is in the paired comparisons)."
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
    *,
    intervals: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    paired: Sequence[Mapping[str, Any]] = (),
    bootstrap: Mapping[str, Any] | None = None,
    seeds: Mapping[str, Any] | None = None,
) -> tuple[list, str]:
    """A study's ``study.md``: the comparison table, its 95% intervals (``intervals``: ``{model: {group:
    flat_intervals}}``), the paired comparisons (``paired``), the mean ± sd over seeds (``seeds``: ``{"seeds",
    "rows": seed_summary}``, only for more than one seed), the unseen-site tables (one per kind of model:
    ``unseen[kind]`` compared with ``compare[kind]``) and the plots. Returns the comparison rows and the Markdown."""
    rows = comparison_rows(results, groups)
    md = comparison_markdown(rows, extras, title=f"{title}: micro F1 (%)") + STUDY_NOTE
    boot = bootstrap or {}
    how = (
        f"{100 * boot.get('level', 0.95):.0f}% intervals of a document-level bootstrap "
        f"({boot.get('resamples', '?')} resamples, seed {boot.get('seed', '?')}; a group of several sites is "
        "resampled site by site)"
    )
    if intervals is not None:
        md += "\n" + interval_markdown(rows, intervals, title="Micro F1 (%) with 95% intervals")
        md += f"\n{how[0].upper()}{how[1:]}. – : no per-document counts (encoder rows, older evaluations).\n"
    if paired:
        md += "\n" + paired_markdown(paired, title="Paired comparisons on the same documents: F1 difference")
        md += (
            f"\nA − B in percentage points, with the {how}, both models scored on each resample. "
            "win / loss: the interval excludes 0; otherwise not significant.\n"
        )
    if seeds:
        md += "\n" + seed_markdown(
            seeds["rows"], seeds["seeds"], title=f"Across {len(seeds['seeds'])} seeds: micro F1 (%), mean ± sd"
        )
    for kind, kind_rows in unseen.items():
        heading = f"Sites a single-site model did not train on ({kind}): micro F1 (%)"
        md += "\n" + unseen_site_markdown(kind_rows, compare[kind], title=heading)
    if plots:
        md += "\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots) + "\n"
    return rows, md


def comparison_csv(
    rows,
    intervals: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    seeds: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """``study.csv``: one line per model and group with ``COLUMNS``; with ``intervals`` also each column's
    ``_low`` / ``_high`` (empty without per-document counts); with ``seeds`` (``seed_summary``, more than one
    seed) also ``n_seeds`` and each column's ``_mean`` / ``_sd``."""

    def num(x: float | None) -> str:
        return "" if x is None else f"{x:.6f}"

    head = ["model", "group", *COLUMNS]
    if intervals is not None:
        head += [f"{c}_{end}" for c in COLUMNS for end in ("low", "high")]
    if seeds is not None:
        head += ["n_seeds", *(f"{c}_{stat}" for c in COLUMNS for stat in ("mean", "sd"))]
    by_row = {(r["model"], r["group"]): r for r in seeds or ()}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(head)
    for m, g, h in rows:
        line = [m, g, *(num(h[c]) for c in COLUMNS)]
        if intervals is not None:
            ci = intervals.get(m, {}).get(g, {})
            line += [num(ci.get(f"{c}_{end}")) for c in COLUMNS for end in ("low", "high")]
        if seeds is not None:
            r = by_row.get((m, g), {})
            line += [
                str(r.get("n_seeds", "")),
                *(num(r.get(f"{c}_{stat}")) for c in COLUMNS for stat in ("mean", "sd")),
            ]
        w.writerow(line)
    return buf.getvalue()


def paired_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """``study_paired.csv``: the paired comparisons, differences and interval bounds as fractions."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        ["comparison", "kind", "a", "b", "sites", "task", "rule", "difference", "low", "high", "verdict", "note"]
    )
    for r in rows:
        w.writerow(
            [
                r["comparison"],
                r.get("kind", ""),
                r["a"],
                r["b"],
                ";".join(r["sites"]),
                r["task"],
                r["rule"],
                *("" if r.get(k) is None else f"{r[k]:.6f}" for k in ("difference", "low", "high")),
                r.get("verdict") or "",
                r.get("note", ""),
            ]
        )
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


def plot_privacy(points: Sequence[Mapping[str, Any]], out_dir: str | Path) -> list[Path]:
    """In-domain strict F1 (NER, RE) against ε of the privacy rows (``recipes.study.privacy_points``); the
    non-private row (ε = ∞) is a dashed line. Returns the PNG written (none without a private point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    private = [p for p in points if math.isfinite(p["epsilon"])]
    if not private:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for col, label, color in (("ner_strict_f1", "NER", "tab:blue"), ("re_strict_f1", "RE", "tab:orange")):
        for kind, marker in (("record", "o"), ("client", "s")):
            pts = sorted((p["epsilon"], p[col]) for p in private if p["kind"] == kind and p.get(col) is not None)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=marker, color=color, label=f"{label}, {kind}-level DP")
        for p in points:
            if not math.isfinite(p["epsilon"]) and p.get(col) is not None:
                ax.axhline(p[col], color=color, linestyle="--", alpha=0.6, label=f"{label}, {p['row']} (no DP)")
    ax.set_xlabel("ε (δ as configured; record level: largest over sites)")
    ax.set_ylabel("in-domain strict F1")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "f1_vs_epsilon.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]
