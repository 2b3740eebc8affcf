"""Tables and plots of the heterogeneity experiment (scripts/heterogeneity.sh), from its study folders.

Reads ``<out>/study-n<N>-a<alpha>[-fixedT|-size]/`` (``study.json``, each row's ``eval/test.json`` and ``rounds.jsonl``)
and ``<out>/bench-*/benchmark.json`` (how each partition was made). Prints Markdown:

* one table of every row: in-domain NER strict / lenient F1 with 95% document-bootstrap intervals (all the
  partition's sites pooled, stratified by site) and the unseen site's NER strict F1, plus the last round's weight
  entropy and temperature of the federated rows;
* paired comparisons on the same documents (``intervals.compare_evaluations``, in-domain sites pooled): each
  federated rule against Fed-MedLoRA, each federated row against centralized, Fed-MedLoRA+ with the data-chosen
  temperature against T = 1 and against the data-chosen T times size (``-size``), each federated row against each
  single-site row on the in-domain sites;
* the same rule on two partitions (10 vs 3 sites, skewed vs IID): the partitions split the same test documents,
  so they are compared document by document too;

and writes ``<plots>/heterogeneity_f1.png`` (in-domain NER strict F1 against the number of sites, per alpha) and
``<plots>/heterogeneity_weights.png`` (Fed-MedLoRA+'s per-site weights in the last round, T = 1 vs data-chosen) and
``<plots>/heterogeneity_weights_per_round.png`` (the same rules' weights in every round, with their entropy).

Usage::

    python scripts/heterogeneity_report.py runs/heterogeneity --plots docs/img > heterogeneity_tables.md
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from fedmedlora.intervals import compare_evaluations, evaluation_intervals
from fedmedlora.metrics import pooled
from fedmedlora.reports import paired_markdown
from fedmedlora.runs import federated_row_dir

STUDY = re.compile(r"^study-n(\d+)-a([^-]+)(?:-(fixedT|size))?$")
#: the Fed-MedLoRA+ row of a variant study folder (``study-<tag>-fixedT``: T = 1; ``-size``: loss weight x size)
VARIANTS = {"fixedT": "Fed-MedLoRA+ (T = 1)", "size": "Fed-MedLoRA+ (× size)"}
FEDERATED = ("Fed-MedLoRA", "Fed-MedLoRA+", *VARIANTS.values(), "FedSA-LoRA", "FFA-LoRA", "RoLoRA")
#: row folder -> row name, for the rows a study writes under a folder name of their own (``fedsa-lora``; a variant
#: is the ``Fed-MedLoRA+`` row of its own study folder)
FOLDERS = {federated_row_dir(name): name for name in FEDERATED if name not in VARIANTS.values()}


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _rows(study: Path, variant: str | None = None) -> dict[str, Path]:
    """``{row name: run folder}`` of a study: the LLM rows with an evaluation."""
    out = {}
    for d in sorted(study.iterdir()):
        if not (d / "eval" / "test.json").is_file():
            continue
        name = FOLDERS.get(d.name, d.name)  # local rows ("centralized", "single-site (chia)") keep their name
        if variant and name == "Fed-MedLoRA+":
            name = VARIANTS[variant]
        out[name] = d
    return out


def _weighted_rounds(run: Path) -> list[dict[str, Any]]:
    """The aggregation rounds of a run's ``rounds.jsonl`` (those that logged weights), in order."""
    path = run / "rounds.jsonl"
    if not path.is_file():
        return []
    rounds = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r for r in rounds if r.get("weights")]


def _last_round(run: Path) -> dict[str, Any]:
    rounds = _weighted_rounds(run)
    return rounds[-1] if rounds else {}


def collect(root: Path) -> list[dict[str, Any]]:
    """One record per partition: n, alpha, distance, sites, and its rows ``{name: {results, folder}}``."""
    parts: dict[tuple[int, str], dict[str, Any]] = {}
    for study in sorted(root.iterdir()):
        m = STUDY.match(study.name)
        if not m or not (study / "study.json").is_file():
            continue
        n, alpha = int(m.group(1)), m.group(2)
        bench = root / f"bench-n{n}-a{alpha}" / "benchmark.json"
        part = parts.setdefault((n, alpha), {"n": n, "alpha": alpha, "rows": {}})
        if bench.is_file():
            manifest = _json(bench)
            part["distance"] = manifest.get("partition", {}).get("mean_train_tv_to_pool")
            part["train_docs"] = {s: i["n_docs"]["train"] for s, i in manifest["sites"].items() if "n_docs" in i}
        part.setdefault("sites", _json(study / "study.json")["groups"]["in-domain (all)"])
        for name, folder in _rows(study, m.group(3)).items():
            part["rows"][name] = {"folder": folder, "results": _json(folder / "eval" / "test.json")}
    return sorted(parts.values(), key=lambda p: (p["alpha"] != "inf", p["n"]))


def _ci(results: dict[str, Any], sites: list[str], rule: str = "strict") -> tuple[float, float, float] | None:
    ci = evaluation_intervals(results, sites).get("ner", {}).get(rule)
    return None if ci is None else (ci["f1"], ci["f1_low"], ci["f1_high"])


def _fmt(ci: tuple[float, float, float] | None) -> str:
    return "–" if ci is None else f"{100 * ci[0]:.1f} [{100 * ci[1]:.1f}, {100 * ci[2]:.1f}]"


def _label(part: dict[str, Any]) -> str:
    a = "IID" if part["alpha"] == "inf" else f"α={part['alpha']}"
    return f"{part['n']} sites, {a}"


def table(parts: list[dict[str, Any]], unseen: str) -> str:
    """One row per model and partition; the unseen-site column only when some row was scored there."""
    shown = any(unseen in row["results"] for p in parts for row in p["rows"].values())
    extra = f" {unseen} NER strict F1 |" if shown else ""
    lines = [
        f"| partition (type-mix distance) | model | in-domain NER strict F1 | in-domain NER lenient F1 |{extra} "
        "weights entropy (last round) | T (last round) |",
        "|---|---|---:|---:|" + ("---:|" if shown else "") + "---:|---:|",
    ]
    for p in parts:
        dist = f" ({p['distance']:.2f})" if p.get("distance") is not None else ""
        for name, row in sorted(p["rows"].items(), key=lambda kv: _order(kv[0])):
            res = row["results"]
            last = _last_round(row["folder"]) if name in FEDERATED else {}
            ent = last.get("weights_entropy")
            temp = last.get("temperature")
            cell = f" {_fmt(_ci(res, [unseen]) if unseen in res else None)} |" if shown else ""
            lines.append(
                f"| {_label(p)}{dist} | {name} | {_fmt(_ci(res, p['sites']))} | "
                f"{_fmt(_ci(res, p['sites'], 'lenient'))} |{cell} "
                f"{'–' if ent is None else f'{ent:.3f}'} | {'–' if temp is None else f'{temp:.3g}'} |"
            )
    return "\n".join(lines) + "\n"


def _order(name: str) -> tuple[int, str]:
    ranks = {"centralized": 0, **{f: i + 1 for i, f in enumerate(FEDERATED)}}
    return ranks.get(name, 99), name


def paired(parts: list[dict[str, Any]]) -> str:
    out = []
    for p in parts:
        rows, sites = p["rows"], p["sites"]
        pairs = [(f, "Fed-MedLoRA") for f in FEDERATED if f != "Fed-MedLoRA"]
        pairs += [(f, "centralized") for f in FEDERATED]
        pairs += [("Fed-MedLoRA+", v) for v in VARIANTS.values()]
        pairs += [(f, s) for f in ("Fed-MedLoRA", "Fed-MedLoRA+") for s in sorted(rows) if s.startswith("single")]
        found = []
        for a, b in pairs:
            if a in rows and b in rows:
                found += [
                    r
                    for r in compare_evaluations(rows[a]["results"], rows[b]["results"], sites, label_a=a, label_b=b)
                    if len(r["sites"]) > 1 and r["task"] == "ner"
                ]
        for r in found:
            r["sites"] = ["in-domain, all sites"]
            r["kind"] = _label(p)
        out.append(paired_markdown(found, title=f"{_label(p)}: paired differences (A − B), in-domain NER"))
    return "\n".join(out)


def _pooled(results: dict[str, Any], sites: list[str]) -> dict[str, Any]:
    """The in-domain sites of one evaluation as one pseudo-site (summed metrics, every document), so that two
    partitions of the same test documents can be compared document by document."""
    docs = {}
    for s in sites:
        for doc, counts in results[s]["documents"].items():
            if doc in docs:
                raise ValueError(f"document {doc!r} is in two sites of one partition")
            docs[doc] = counts
    return {"in-domain": {"metrics": pooled(results, sites).to_dict(), "documents": docs}}


def across(parts: list[dict[str, Any]]) -> str:
    """The same rule on two partitions of the same test documents: 10 vs 3 sites at one alpha, skewed vs IID at one
    N (paired by document; unstratified, since the sites differ)."""
    by = {(p["n"], p["alpha"]): p for p in parts}
    pairs = [((10, a), (3, a), f"10 vs 3 sites, {'IID' if a == 'inf' else 'α=' + a}") for a in ("inf", "0.1")]
    pairs += [((n, "0.1"), (n, "inf"), f"α=0.1 vs IID, {n} sites") for n in (3, 10)]
    found = []
    for ka, kb, label in pairs:
        if ka not in by or kb not in by:
            continue
        pa, pb = by[ka], by[kb]
        for m in FEDERATED:
            if m in pa["rows"] and m in pb["rows"]:
                ra = _pooled(pa["rows"][m]["results"], pa["sites"])
                rb = _pooled(pb["rows"][m]["results"], pb["sites"])
                for r in compare_evaluations(ra, rb, label_a=f"{m}, {_label(pa)}", label_b=_label(pb)):
                    if r["task"] == "ner":
                        found.append({**r, "kind": label, "sites": ["in-domain, all test documents"]})
    return paired_markdown(found, title="The same rule on two partitions of the same test documents (A − B)")


def plots(parts: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    models = [m for m in FEDERATED if any(m in p["rows"] for p in parts)]
    for alpha, style in (("inf", "-"), ("0.1", "--")):
        ps = sorted((p for p in parts if p["alpha"] == alpha), key=lambda p: p["n"])
        for k, m in enumerate(models):
            pts = [(p["n"], _ci(p["rows"][m]["results"], p["sites"])) for p in ps if m in p["rows"]]
            pts = [(n, c) for n, c in pts if c is not None]
            if not pts:
                continue
            shift = 0.15 * (k - len(models) / 2) + (0.06 if alpha == "inf" else 0.0)  # side by side
            xs = [n + shift for n, _ in pts]
            ys = [100 * c[0] for _, c in pts]
            err = [[100 * (c[0] - c[1]) for _, c in pts], [100 * (c[2] - c[0]) for _, c in pts]]
            label = f"{m}, {'IID' if alpha == 'inf' else 'α=' + alpha}"
            ax.errorbar(xs, ys, yerr=err, fmt="o" + style, capsize=3, label=label, color=f"C{k}",
                        alpha=1.0 if alpha == "0.1" else 0.6)  # fmt: skip
    for p in parts:
        if "centralized" in p["rows"]:
            c = _ci(p["rows"]["centralized"]["results"], p["sites"])
            if c is not None:
                ax.axhspan(100 * c[1], 100 * c[2], color="grey", alpha=0.15)
                ax.axhline(100 * c[0], color="grey", lw=1, label="centralized (95% band)")
                break
    ax.set_xticks(sorted({p["n"] for p in parts}))
    ax.set_xticklabels([str(n) for n in sorted({p["n"] for p in parts})])
    ax.set_xlabel("number of sites")
    ax.set_ylabel("in-domain NER strict F1 (%)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: the points fill the axes
    fig.tight_layout()
    path = out_dir / "heterogeneity_f1.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    skewed = [p for p in parts if p["alpha"] != "inf" and "Fed-MedLoRA+" in p["rows"]]
    if skewed:
        p = max(skewed, key=lambda q: q["n"])
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        names = [("Fed-MedLoRA", "size (Fed-MedLoRA)"), ("Fed-MedLoRA+ (T = 1)", "Fed-MedLoRA+, T = 1"),
                 ("Fed-MedLoRA+", "Fed-MedLoRA+, data-chosen T"),
                 ("Fed-MedLoRA+ (× size)", "Fed-MedLoRA+, data-chosen T × size")]  # fmt: skip
        logged = {m: _weighted_rounds(p["rows"][m]["folder"]) for m, _ in names if m in p["rows"]}
        shown = [(m, lab) for m, lab in names if logged.get(m)]
        sites = p["sites"]
        width = 0.8 / max(len(shown), 1)
        for k, (m, lab) in enumerate(shown):
            w = logged[m][-1]["weights"]
            ax.bar([i + k * width for i in range(len(sites))], [w.get(s, math.nan) for s in sites], width, label=lab)
        ax.set_xticks([i + width * (len(shown) - 1) / 2 for i in range(len(sites))])
        docs = p.get("train_docs", {})
        ax.set_xticklabels([f"{s}\n{docs[s]} docs" if s in docs else s for s in sites], fontsize=7)
        ax.set_ylabel("weight in the last round")
        ax.set_title(f"{_label(p)}: how the coordinator weighs the sites", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / "heterogeneity_weights.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

        # per round: one panel per weighting rule, one line per site (same colour in every panel)
        fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.2), sharey=True, squeeze=False)
        for ax, (m, lab) in zip(axes[0], shown, strict=True):
            rounds = logged[m]
            for i, s in enumerate(sites):
                ax.plot([r["round"] for r in rounds], [r["weights"].get(s, math.nan) for r in rounds], "o-",
                        color=f"C{i % 10}", label=s, lw=1)  # fmt: skip
            ent = ", ".join(f"{r['weights_entropy']:.2f}" for r in rounds if r.get("weights_entropy") is not None)
            ax.set_title(f"{lab}\nentropy by round: {ent or '–'}", fontsize=8)
            ax.set_xlabel("round")
            ax.set_xticks(sorted({r["round"] for r in rounds}))
        axes[0][0].set_ylabel("site weight")
        axes[0][-1].legend(fontsize=6, ncol=2)
        fig.suptitle(f"{_label(p)}: weights per round", fontsize=9)
        fig.tight_layout()
        path = out_dir / "heterogeneity_weights_per_round.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path, help="the experiment's output folder (OUT of heterogeneity.sh)")
    ap.add_argument("--plots", type=Path, default=None, help="folder for the PNG plots (default: <root>/plots)")
    ap.add_argument("--unseen", default="maccrobat", help="the site no row trained on")
    args = ap.parse_args(argv)
    parts = collect(args.root)
    if not parts:
        print(f"{args.root}: no study-n<N>-a<alpha> folder with a study.json", file=sys.stderr)
        return 2
    print(table(parts, args.unseen))
    print(paired(parts))
    print(across(parts))
    for path in plots(parts, args.plots or args.root / "plots"):
        print(f"<!-- wrote {path} -->")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
