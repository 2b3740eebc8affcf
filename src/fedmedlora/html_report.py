"""The study report: one self-contained HTML page of a finished study folder; highlighted notes for ``extract``.

Owns ``write_report`` (``<study>/report.html``, what every ``fedmedlora study`` writes at its end and what
``fedmedlora report <study>`` rebuilds), ``notes_html`` (``fedmedlora extract --html``: a user's notes with the
predicted spans marked), the layout of marks over a text (``tracks``, ``nest``) and the jinja2 templates in
``fedmedlora/templates`` (autoescaped: note text is data, never markup).

The page reads only the files of the study folder (``study.json``, ``run.json``, ``config.yaml`` and each row's
``eval/test.json``, ``eval/test_outputs.jsonl``, ``rounds.jsonl``, ``run.json``, ``study_row.json``). The error
browser replays each row's recorded generations through the evaluation's own parser
(``fedmedlora.extract.extract_sentences`` with a look-up in place of the model) on the benchmark sentences of the
row's configuration, so it shows exactly the predictions that were scored, without loading a model; the kinds of
error are ``fedmedlora.span_errors``'. Plots are matplotlib (Agg) PNGs inlined as base64; CSS and JS are inline;
the page loads nothing from the network.

Why not spaCy's ``displacy``: spaCy is hundreds of MB of dependencies for one rendering helper, and displacy draws
one set of spans; the browser needs gold against prediction, the kind of each error, nested and overlapping spans,
and modifiers tied to their heads, so the marks are a few lines of our own template instead.

Pure: no torch, no flwr (jinja2; matplotlib inside ``fedmedlora.reports.plot_rounds``).
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from fedmedlora.benchmark import Benchmark, BenchmarkError, open_benchmark
from fedmedlora.config import ConfigError, RunConfig, load_config
from fedmedlora.extract import extract_sentences
from fedmedlora.intervals import group_intervals, site_results
from fedmedlora.jsonl import iter_json_lines
from fedmedlora.metrics import Evaluation, pooled
from fedmedlora.prompts import Prompt
from fedmedlora.reports import COLUMNS, plot_rounds
from fedmedlora.runs import (
    CONFIG_FILE,
    ROUNDS_FILE,
    RUN_FILE,
    STUDY_ENCODER_DIR,
    STUDY_JSON,
    STUDY_ROW_FILE,
    eval_file,
)
from fedmedlora.sampling import eval_items
from fedmedlora.schema import ENTITY_TYPES, MODIFIER_TYPES, Entity, Modifier, Sentence
from fedmedlora.span_errors import KIND_LABELS, KINDS, Outcome, classify_sentence

REPORT_FILE = "report.html"
#: Test sentences per site shown in the error browser.
SENTENCES_PER_SITE = 12
COLUMN_LABELS = {
    "ner_strict_f1": "NER strict F1",
    "ner_lenient_f1": "NER lenient F1",
    "re_strict_f1": "RE strict F1",
    "re_lenient_f1": "RE lenient F1",
}
#: Libraries whose installed versions the report lists.
LIBRARIES = ("torch", "transformers", "peft", "flwr", "numpy", "jinja2", "matplotlib")


class ReportError(ValueError):
    """A folder the report cannot be built from; the message names the folder and the missing file."""


# ---- marks over a text ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mark:
    """A span drawn over a text: ``type`` colours it, ``kind`` (an error kind, ``gold`` or ``pred``) frames it."""

    start: int
    end: int
    type: str
    kind: str
    label: str
    title: str = ""
    modifier: bool = False


def _crosses(a: Mark, b: Mark) -> bool:
    """Overlapping without one containing the other (such spans cannot nest as elements)."""
    return (
        a.start < b.end
        and b.start < a.end
        and not (a.start <= b.start and b.end <= a.end)
        and not (b.start <= a.start and a.end <= b.end)
    )


def tracks(marks: Iterable[Mark]) -> list[list[Mark]]:
    """Marks split into as few lines as greedily fit, each line's marks disjoint or nested (never crossing).

    Zero-length marks are dropped. Returns at least one (possibly empty) line.
    """
    lines: list[list[Mark]] = [[]]
    for m in sorted((m for m in marks if m.end > m.start), key=lambda m: (m.start, -m.end, m.modifier)):
        for line in lines:
            if not any(_crosses(m, o) for o in line):
                line.append(m)
                break
        else:
            lines.append([m])
    return lines


def nest(text: str, marks: Sequence[Mark]) -> list[dict[str, Any]]:
    """The tokens of one line: ``{"text": str}``, ``{"open": Mark}`` and ``{"close": Mark}`` in document order,
    for marks that nest (``tracks``); the template turns them into nested ``<mark>`` elements."""
    out: list[dict[str, Any]] = []
    stack: list[Mark] = []
    pos = 0

    def emit(upto: int) -> None:
        nonlocal pos
        if upto > pos:
            out.append({"text": text[pos:upto]})
            pos = upto

    for m in sorted(marks, key=lambda m: (m.start, -m.end, m.modifier)):
        while stack and stack[-1].end <= m.start:
            emit(stack[-1].end)
            out.append({"close": stack.pop()})
        emit(m.start)
        out.append({"open": m})
        stack.append(m)
    while stack:
        emit(stack[-1].end)
        out.append({"close": stack.pop()})
    emit(len(text))
    return out


def _lines(text: str, marks: Iterable[Mark]) -> list[list[dict[str, Any]]]:
    return [nest(text, line) for line in tracks(marks)]


_KIND_SIGNS = {"match": "✓", "miss": "missed", "false_positive": "✗", "boundary": "↔", "type": "≠"}


def gold_marks(sent: Sentence) -> list[Mark]:
    """A gold sentence's entities and modifiers (a modifier labelled with its head's text)."""
    heads = {e.id: e for e in sent.entities}
    marks = [Mark(e.start, e.end, e.type, "gold", e.type) for e in sent.entities]
    for m in sent.modifiers:
        head = heads.get(m.head)
        marks.append(Mark(m.start, m.end, m.type, "gold", f"{m.type} → {head.text if head else m.head}", modifier=True))
    return marks


def outcome_marks(gold: Sentence, entities: Sequence[Outcome], modifiers: Sequence[Outcome]) -> list[Mark]:
    """The marks of a model's line: its predictions framed by kind, and the gold spans it missed."""
    text, heads = gold.text, {e.id: e for e in gold.entities}

    def mark(o: Outcome, modifier: bool) -> Mark:
        s = o.span
        label = s.type
        if modifier:
            head = heads.get(o.head or "")
            label = f"{s.type} → {head.text if head else o.head}"
        title = KIND_LABELS[o.kind]
        if o.gold is not None and o.pred is not None and o.kind != "match":
            title += f"; gold: {o.gold.type} “{text[o.gold.start : o.gold.end]}”"
        return Mark(s.start, s.end, s.type, o.kind, f"{label} {_KIND_SIGNS[o.kind]}", title, modifier)

    return [*(mark(o, False) for o in entities), *(mark(o, True) for o in modifiers)]


# ---- reading the study folder -----------------------------------------------------------------------------------


def _key(name: str) -> str:
    """A row name or folder name reduced to what both keep (``Fed-MedLoRA+`` and ``fed-medlora-plus`` agree)."""
    return re.sub(r"[^a-z0-9.]", "", name.lower().replace("+", "plus").replace("ε", "eps"))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: unreadable ({e})") from None


@dataclass
class Row:
    """One model row of the study and its run folder (None for rows without one, e.g. the encoder rows)."""

    name: str
    path: Path | None
    run: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    row_info: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    cfg: RunConfig | None = None

    @property
    def federated(self) -> bool:
        return self.run.get("command") == "federation"


def study_rows(study_dir: Path, models: Sequence[str]) -> list[Row]:
    """The study's rows in table order, each with its run folder's files where it has one."""
    folders = [d for d in sorted(study_dir.iterdir()) if d.is_dir() and (d / eval_file("test")).is_file()]
    by_key = {_key(d.name): d for d in folders}
    rows = []
    for name in models:
        path = study_dir / name if (study_dir / name / eval_file("test")).is_file() else by_key.get(_key(name))
        row = Row(name, path)
        if path is not None:
            row.results = _read_json(path / eval_file("test"))
            row.run = _read_json(path / RUN_FILE) if (path / RUN_FILE).is_file() else {}
            row.row_info = _read_json(path / STUDY_ROW_FILE) if (path / STUDY_ROW_FILE).is_file() else {}
            row.rounds = (
                [obj for _, obj in iter_json_lines(path / ROUNDS_FILE)] if (path / ROUNDS_FILE).is_file() else []
            )
            try:
                row.cfg = load_config(path / CONFIG_FILE)
            except (ConfigError, OSError):
                row.cfg = None
        rows.append(row)
    return rows


# ---- sections ---------------------------------------------------------------------------------------------------


def _pct(x: Any) -> str:
    return "–" if not isinstance(x, int | float) else f"{100 * x:.1f}"


def _score(value: Any, low: Any = None, high: Any = None) -> dict[str, Any]:
    """A table cell: the score in %, its interval, and the number the column sorts by."""
    ci = f"[{_pct(low)}, {_pct(high)}]" if isinstance(low, int | float) and isinstance(high, int | float) else ""
    return {"text": _pct(value), "ci": ci, "sort": value if isinstance(value, int | float) else ""}


def comparison_tables(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One table per group of sites (groups of several sites first: in-domain; then each site, external, new
    site): the models' scores with their 95% intervals (``study.json`` rows)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in summary.get("rows", []):
        cells = [_score(r.get(c), r.get(f"{c}_low"), r.get(f"{c}_high")) for c in COLUMNS]
        groups.setdefault(r["group"], []).append({"model": r["model"], "cells": cells})
    sites = summary.get("groups", {})
    order = sorted(groups, key=lambda g: len(sites.get(g, [])) <= 1)  # groups of several sites (in-domain) first
    return [
        {
            "group": g,
            "sites": ", ".join(sites.get(g, [])),
            "rows": groups[g],
            "columns": [COLUMN_LABELS[c] for c in COLUMNS],
        }
        for g in order
    ]


def extras_table(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The per-model extras of the study (training steps, minutes, MB per round, ε)."""
    extras = summary.get("extras", {})
    cols = list(dict.fromkeys(k for v in extras.values() for k in v if not k.startswith("_")))
    return {"columns": cols, "rows": [{"model": m, "cells": [v.get(c, "–") for c in cols]} for m, v in extras.items()]}


def unseen_tables(summary: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per kind of model: each single-site model against the compared models on the training sites it never saw,
    with the 95% interval of each score on exactly those sites (from the rows' per-document counts in
    ``results``, ``{model: eval/test.json}``, as the study's own intervals; none for a row without them)."""
    boot = summary.get("bootstrap", {})
    n, seed = int(boot.get("resamples") or 0), int(boot.get("seed") or 0)

    def cell(model: str, h: Mapping[str, Any], sites: Sequence[str], task: str) -> dict[str, Any]:
        ci = (group_intervals(results.get(model, {}), sites, n_resamples=n, seed=seed) or {}).get(task, {})
        return _score(
            h.get(f"{task}_strict_f1"), ci.get("strict", {}).get("f1_low"), ci.get("strict", {}).get("f1_high")
        )

    out = []
    for kind, rows in summary.get("unseen_sites", {}).items():
        models = list(dict.fromkeys(m for r in rows for m in r["scores"] if m != r["model"]))
        if not rows or not models:
            continue
        body = []
        for r in rows:
            cells = []
            for m in [r["model"], *models]:
                h = r["scores"].get(m, {})
                cells += [cell(m, h, r["unseen"], "ner"), cell(m, h, r["unseen"], "re")]
            body.append({"model": r["model"], "unseen": ", ".join(r["unseen"]), "cells": cells})
        out.append({"kind": kind, "models": models, "rows": body})
    return out


def paired_groups(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The paired comparisons grouped by kind, each with its tally of verdicts (NER strict F1)."""
    groups: dict[str, dict[str, Any]] = {}
    for r in summary.get("paired", []):
        g = groups.setdefault(r.get("kind") or r["comparison"], {"rows": [], "tally": Counter()})
        diff = r.get("difference")
        g["rows"].append(
            {
                "comparison": r["comparison"],
                "sites": ", ".join(r.get("sites", [])),
                "metric": f"{r['task'].upper()} {r['rule']}",
                "difference": "–" if diff is None else f"{100 * diff:+.1f}",
                "sort": "" if diff is None else diff,
                "interval": "–" if r.get("low") is None else f"[{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]",
                "verdict": r.get("verdict") or "",
                "note": r.get("note", ""),
            }
        )
        if (r["task"], r["rule"]) == ("ner", "strict") and r.get("verdict"):
            g["tally"][r["verdict"]] += 1
    return [{"kind": k, **v} for k, v in groups.items()]


def seed_table(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """Mean ± sd over seeds (studies with more than one seed)."""
    seeds = summary.get("seeds")
    if not seeds:
        return None
    rows = []
    for r in seeds.get("rows", []):
        cells = []
        for c in COLUMNS:
            mean, sd = r.get(f"{c}_mean"), r.get(f"{c}_sd")
            text = _pct(mean) if sd is None else f"{_pct(mean)} ± {100 * sd:.1f}"
            cells.append({"text": text, "ci": "", "sort": mean if mean is not None else ""})
        rows.append({"model": r["model"], "group": r["group"], "n": r.get("n_seeds"), "cells": cells})
    return {"seeds": seeds.get("seeds", []), "rows": rows, "columns": [COLUMN_LABELS[c] for c in COLUMNS]}


def type_tables(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Strict F1 per entity type (NER) and per modifier type (RE), every site of a row pooled (``–``: no gold
    and no predicted span of that type)."""
    evs = {}
    for row in rows:
        if row.results:
            evs[row.name] = pooled(site_results(row.results))
    out = []
    for task, vocab in (("ner", ENTITY_TYPES), ("re", MODIFIER_TYPES)):
        types = [t for t in vocab if any((task, "strict", t) in ev.counts for ev in evs.values())]
        if not types:
            continue
        body = []
        for model, ev in evs.items():
            cells = []
            for t in types:
                c = ev.get(task, "strict", t)
                n = c.tp + c.fn
                # F1 is undefined where the type was scored but nobody (gold or model) has a span of it
                scored = (task, "strict", t) in ev.counts and c.tp + c.fp + c.fn > 0
                cell = _score(c.f1 if scored else None)
                cells.append({**cell, "ci": f"n={n}" if (task, "strict", t) in ev.counts else ""})
            body.append({"model": model, "cells": cells})
        out.append({"task": task.upper(), "types": types, "rows": body})
    return out


def site_table(rows: Sequence[Row]) -> dict[str, Any]:
    """NER and RE strict F1 of every row on every site it was scored on, with the site's 95% interval."""
    sites = list(dict.fromkeys(s for row in rows for s in site_results(row.results)))
    body = []
    for row in rows:
        if not row.results:
            continue
        cells = []
        for s in sites:
            r = row.results.get(s)
            for task in ("ner", "re"):
                if r is None or not Evaluation.from_dict(r["metrics"]).n_instances.get(task):
                    cells.append(_score(None))
                    continue
                ci = (r.get("intervals") or {}).get(task, {}).get("strict", {})
                f1 = Evaluation.from_dict(r["metrics"]).get(task, "strict").f1
                cells.append(_score(f1, ci.get("f1_low"), ci.get("f1_high")))
        body.append({"model": row.name, "cells": cells})
    return {"sites": sites, "rows": body}


def parse_table(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per row and site: prompts, the rate of outputs with a parse failure (NER / RE) and the failure reasons."""
    out = []
    for row in rows:
        for site, r in site_results(row.results).items():
            p = r.get("parse") or {}
            rates = p.get("parse_failure_rate", {})
            reasons = p.get("failure_reasons", {})
            out.append(
                {
                    "model": row.name,
                    "site": site,
                    "prompts": " / ".join(str(p.get("prompts", {}).get(t, 0)) for t in ("ner", "re")),
                    "ner": _score(rates.get("ner")),
                    "re": _score(rates.get("re")),
                    "reasons": ", ".join(f"{k} ×{v}" for k, v in reasons.items()) or "none",
                }
            )
    return out


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def curves(rows: Sequence[Row], plots_dir: Path) -> list[dict[str, str]]:
    """The per-round plots of the federated rows (validation F1, loss, aggregation weights, bytes), drawn from
    their ``rounds.jsonl``, and any other plot of the study's ``plots/`` (F1 against ε), as inline PNGs."""
    fed = {row.name: row.rounds for row in rows if row.federated and row.rounds}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        drawn = plot_rounds(fed, tmp) if fed else []
        out += [{"name": p.stem.replace("_", " "), "src": _data_uri(p)} for p in drawn]
        names = {p.name for p in drawn}
    if plots_dir.is_dir():
        out += [
            {"name": p.stem.replace("_", " "), "src": _data_uri(p)}
            for p in sorted(plots_dir.glob("*.png"))
            if p.name not in names
        ]
    return out


def run_table(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per row: what ran, its seed, when, for how long and its peak memory (``run.json``, ``study_row.json``)."""
    out = []
    for row in rows:
        if row.path is None:
            continue
        out.append(
            {
                "model": row.name,
                "folder": row.path.name,
                "command": row.run.get("command", "–"),
                "status": row.run.get("status", "–"),
                "seed": row.cfg.seed if row.cfg is not None else "–",
                "started": row.run.get("started", "–"),
                "finished": row.run.get("finished", "–"),
                "minutes": row.row_info.get("minutes", "–"),
                "steps": row.row_info.get("train steps", "–"),
                "eval_seconds": row.run.get("eval_seconds", "–"),
                "peak_rss_mb": row.run.get("peak_rss_mb", "–"),
            }
        )
    return out


def library_versions() -> dict[str, str]:
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = "not installed"
    return versions


# ---- the error browser ------------------------------------------------------------------------------------------


def replay(row: Row, bench: Benchmark, site: str) -> tuple[list[tuple[Sentence, Any]], list[Sentence], dict[str, str]]:
    """The evaluation sentences of ``site``, the row's predictions on them, from its recorded generations, and
    the raw NER answer of each sentence (by sentence text).

    Raises:
        ReportError: the row has no configuration or recorded generations, or they do not cover the sentences.
    """
    if row.cfg is None or row.path is None:
        raise ReportError(f"{row.name}: no readable {CONFIG_FILE}")
    outputs_file = row.path / eval_file("test", "_outputs.jsonl")
    if not outputs_file.is_file():
        raise ReportError(f"{outputs_file}: missing (no recorded generations)")
    recorded = {o["prompt"]: o["output"] for _, o in iter_json_lines(outputs_file) if o.get("site") == site}
    _, items = eval_items(bench, site, row.cfg)
    raw_ner: dict[str, str] = {}

    def look_up(prompts: list[str]) -> list[str]:
        missing = [p for p in prompts if p not in recorded]
        if missing:
            raise ReportError(
                f"{outputs_file}: {len(missing)} of {len(prompts)} prompts for {site} were not recorded (another "
                "benchmark or configuration?)"
            )
        for p in prompts:
            if isinstance(p, Prompt) and p.task == "ner":
                raw_ner[p.sentence] = recorded[p]
        return [recorded[p] for p in prompts]

    cfg = row.cfg
    preds = extract_sentences(items, look_up, fmt=cfg.data.format, tasks=cfg.data.tasks, heads="gold")
    return items, preds, raw_ner


def encoder_prediction_file(encoder_dir: Path, row_name: str, site: str, split: str) -> Path | None:
    """The predictions an encoder row wrote for ``site`` (``fedmedlora.encoder.run.write_predictions``:
    ``<setting>/predictions/<tag>/<site>.<split>.jsonl``), or ``None`` when ``row_name`` is not an encoder row."""
    single = re.fullmatch(r"encoder single-site \((.+)\)", row_name)
    if single:
        setting, tag = "single_site", f"single_site-{single.group(1)}"
    elif row_name.startswith("encoder "):
        setting = tag = row_name.removeprefix("encoder ").replace("-", "_")
    else:
        return None
    return encoder_dir / setting / "predictions" / tag / f"{site}.{split}.jsonl"


def read_encoder_predictions(path: Path, gold: Mapping[str, Sentence]) -> dict[str, Sentence]:
    """The predicted sentences of an encoder prediction file that are among ``gold`` (by sentence id).

    Raises:
        ReportError: naming ``file:line`` for a line that is not a prediction record.
    """
    out: dict[str, Sentence] = {}
    for i, rec in iter_json_lines(path, ReportError):
        try:
            sent = gold.get(rec["sentence_id"]) if isinstance(rec, dict) else None
            if sent is None:
                continue
            ents = tuple(
                Entity(str(e["id"]), str(e["type"]), int(e["start"]), int(e["end"]), str(e["text"]))
                for e in rec.get("entities", [])
            )
            mods = tuple(
                Modifier(str(m["id"]), str(m["type"]), int(m["start"]), int(m["end"]), str(m["text"]), str(m["head"]))
                for m in rec.get("modifiers", [])
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ReportError(f"{path}:{i}: not an encoder prediction record ({type(e).__name__}: {e})") from None
        out[sent.id] = Sentence(sent.id, sent.start, sent.end, sent.text, ents, mods)
    return out


def error_browser(
    rows: Sequence[Row], per_site: int = SENTENCES_PER_SITE, seed: int = 0, encoder_dir: Path | None = None
) -> dict[str, Any]:
    """A sample of ``per_site`` test sentences of each site (those with a gold or a predicted span), each with
    its gold spans and one line per model (predictions framed by error kind, misses drawn dashed). The encoder
    rows (no run folder) are read from their prediction files under ``encoder_dir`` where they cover the same
    sentences."""
    notes: list[str] = []
    benches: dict[str, Benchmark] = {}
    gold: dict[str, dict[str, Sentence]] = {}  # site -> sentence id -> gold sentence
    preds: dict[str, dict[str, dict[str, Sentence]]] = {}  # site -> sentence id -> model -> prediction
    models: list[str] = []
    raw: dict[tuple[str, str, str], str | None] = {}  # (site, sentence id, model) -> raw NER answer
    for row in rows:
        if row.path is None or row.cfg is None or not (row.path / eval_file("test", "_outputs.jsonl")).is_file():
            continue
        where = str(row.cfg.data.benchmark or "")
        try:
            bench = benches.get(where) or open_benchmark(row.cfg.data.benchmark)
        except (BenchmarkError, OSError) as e:
            notes.append(f"{row.name}: benchmark not available ({e})")
            continue
        benches[where] = bench
        for site in site_results(row.results):
            try:
                items, predicted, raw_ner = replay(row, bench, site)
            except (ReportError, BenchmarkError, OSError, ValueError) as e:
                notes.append(f"{row.name} on {site}: {e}")
                continue
            if row.name not in models:
                models.append(row.name)
            for (sent, _), p in zip(items, predicted, strict=True):
                gold.setdefault(site, {})[sent.id] = sent
                preds.setdefault(site, {}).setdefault(sent.id, {})[row.name] = p
                raw[(site, sent.id, row.name)] = raw_ner.get(sent.text)
    if encoder_dir is not None and encoder_dir.is_dir():
        split = next((r.cfg.eval.split for r in rows if r.cfg is not None), "test")
        for row in rows:
            if row.path is not None:
                continue
            for site, by_id in gold.items():
                path = encoder_prediction_file(encoder_dir, row.name, site, split)
                if path is None:
                    break
                if not path.is_file():
                    notes.append(f"{row.name} on {site}: no predictions ({path})")
                    continue
                try:
                    predicted_by_id = read_encoder_predictions(path, by_id)
                except ReportError as e:
                    notes.append(str(e))
                    continue
                if predicted_by_id and row.name not in models:
                    models.append(row.name)
                for sid, p in predicted_by_id.items():
                    preds[site][sid][row.name] = p
                    raw[(site, sid, row.name)] = None
    sentences = []
    totals: Counter[str] = Counter()
    for site, by_id in gold.items():
        shown = [
            sid
            for sid, s in by_id.items()
            if s.entities or s.modifiers or any(p.entities or p.modifiers for p in preds[site][sid].values())
        ]
        if len(shown) > per_site:
            keep = set(random.Random(f"{seed}:{site}:report").sample(range(len(shown)), per_site))
            shown = [sid for i, sid in enumerate(shown) if i in keep]
        for sid in shown:
            sent = by_id[sid]
            lines = []
            for model, p in preds[site][sid].items():
                ents, mods = classify_sentence(sent, p)
                kinds = sorted({o.kind for o in [*ents, *mods]}, key=KINDS.index)
                totals.update(o.kind for o in [*ents, *mods])
                lines.append(
                    {
                        "model": model,
                        "kinds": kinds,
                        "counts": Counter(o.kind for o in [*ents, *mods]),
                        "lines": _lines(sent.text, outcome_marks(sent, ents, mods)),
                        "raw": raw.get((site, sid, model)),
                    }
                )
            sentences.append({"site": site, "id": sid, "gold": _lines(sent.text, gold_marks(sent)), "models": lines})
    return {
        "sites": list(gold),
        "models": models,
        "sentences": sentences,
        "notes": notes,
        "kinds": [{"kind": k, "label": KIND_LABELS[k], "n": totals[k]} for k in KINDS],
        "per_site": per_site,
    }


# ---- rendering --------------------------------------------------------------------------------------------------


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fedmedlora", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def build_report(study_dir: str | Path, *, per_site: int = SENTENCES_PER_SITE) -> str:
    """The HTML of the report of the finished study in ``study_dir``.

    Raises:
        ReportError: ``study_dir`` is not a finished study folder (no ``study.json``) or a file is unreadable.
    """
    study_dir = Path(study_dir)
    if not (study_dir / STUDY_JSON).is_file():
        raise ReportError(
            f"{study_dir}: no {STUDY_JSON}; not a finished study folder (run `fedmedlora study --out {study_dir}`)"
        )
    summary = _read_json(study_dir / STUDY_JSON)
    run = _read_json(study_dir / RUN_FILE) if (study_dir / RUN_FILE).is_file() else {}
    models = list(dict.fromkeys(r["model"] for r in summary.get("rows", [])))
    rows = study_rows(study_dir, models)
    cfg_text = (study_dir / CONFIG_FILE).read_text(encoding="utf-8") if (study_dir / CONFIG_FILE).is_file() else ""
    try:
        title = f"Study on {open_benchmark(load_config(study_dir / CONFIG_FILE).data.benchmark).name}"
    except (ConfigError, BenchmarkError, OSError):
        title = f"Study {study_dir.name}"
    context = {
        "title": title,
        "folder": str(study_dir),
        "built": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "run": run,
        "bootstrap": summary.get("bootstrap", {}),
        "comparison": comparison_tables(summary),
        "extras": extras_table(summary),
        "unseen": unseen_tables(summary, {r.name: r.results for r in rows}),
        "paired": paired_groups(summary),
        "seeds": seed_table(summary),
        "types": type_tables(rows),
        "per_site": site_table(rows),
        "parse": parse_table(rows),
        "curves": curves(rows, study_dir / "plots"),
        "browser": error_browser(
            rows,
            per_site=per_site,
            seed=int(summary.get("bootstrap", {}).get("seed") or 0),
            encoder_dir=study_dir / STUDY_ENCODER_DIR,
        ),
        "runs": run_table(rows),
        "no_folder": [r.name for r in rows if r.path is None],
        "config": cfg_text,
        "versions": library_versions(),
        "kind_labels": KIND_LABELS,
    }
    return _environment().get_template("report.html.j2").render(**context)


def check_html_path(path: str | Path, option: str = "--out") -> None:
    """Refuse, before any work, an HTML output path that is a folder or cannot be written.

    Raises:
        ReportError: naming the option, the path and what is wrong with it.
    """
    p = Path(path)
    if p.is_dir():
        name = "notes.html" if option == "--html" else REPORT_FILE
        raise ReportError(f"{option} {p}: is a folder; give a file name such as {p / name}")
    existing = next((q for q in [p.parent, *p.parent.parents] if q.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ReportError(f"{option} {p}: cannot write there")


def write_report(study_dir: str | Path, out: str | Path | None = None, *, per_site: int = SENTENCES_PER_SITE) -> Path:
    """Write the report of the study in ``study_dir`` to ``out`` (default ``<study_dir>/report.html``)."""
    path = Path(out) if out is not None else Path(study_dir) / REPORT_FILE
    check_html_path(path)
    html = build_report(study_dir, per_site=per_site)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path


# ---- extract --html ---------------------------------------------------------------------------------------------


def note_marks(record: Mapping[str, Any]) -> list[Mark]:
    """The marks of one ``extract`` output record (``fedmedlora.extract.to_output_record``: document offsets).

    Entities on the same span become one mark labelled with every type (coloured by the first), and so do the
    modifiers on the same span: a model that gives one span several types reads as one mark, not a cascade.
    """
    heads = {e["id"]: e for e in record.get("entities", [])}
    entities: dict[tuple[int, int], list[str]] = {}
    for e in record.get("entities", []):
        entities.setdefault((e["start"], e["end"]), []).append(e["type"])
    modifiers: dict[tuple[int, int], list[tuple[str, str]]] = {}
    for m in record.get("modifiers", []):
        head = heads.get(m.get("head", ""))
        modifiers.setdefault((m["start"], m["end"]), []).append(
            (m["type"], head["text"] if head else m.get("head", "?"))
        )
    marks = [Mark(a, b, types[0], "pred", " · ".join(dict.fromkeys(types))) for (a, b), types in entities.items()]
    for (a, b), mods in modifiers.items():
        label = " · ".join(dict.fromkeys(f"{t} → {h}" for t, h in mods))
        marks.append(Mark(a, b, mods[0][0], "pred", label, modifier=True))
    return marks


def notes_html(notes: Sequence[tuple[str, str]], records: Sequence[Mapping[str, Any]], title: str = "") -> str:
    """A page of ``notes`` (``(id, text)``) with the predicted entities and modifiers of ``records`` marked.

    Raises:
        ReportError: a record's id is not among the notes.
    """
    texts = dict(notes)
    views, counts = [], Counter()
    for rec in records:
        if rec.get("id") not in texts:
            raise ReportError(f"extraction record {rec.get('id')!r}: no note with that id")
        marks = note_marks(rec)
        counts.update(x["type"] for x in [*rec.get("entities", []), *rec.get("modifiers", [])])
        views.append(
            {
                "id": rec["id"],
                "lines": _lines(texts[rec["id"]], marks),
                "n_entities": len(rec.get("entities", [])),
                "n_modifiers": len(rec.get("modifiers", [])),
            }
        )
    return (
        _environment()
        .get_template("notes.html.j2")
        .render(
            title=title or "Extracted entities",
            notes=views,
            types=sorted(counts.items()),
            built=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        )
    )


def write_notes_html(notes: Sequence[tuple[str, str]], predictions: Path, out: Path, title: str = "") -> Path:
    """``notes_html`` of ``extract``'s JSONL ``predictions``, written to ``out``."""
    check_html_path(out, "--html")
    records = [obj for _, obj in iter_json_lines(predictions)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(notes_html(notes, records, title=title), encoding="utf-8")
    return out
