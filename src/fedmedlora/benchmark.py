"""The federated benchmark on disk: build it from the corpora, describe it, load it.

Owns: the on-disk layout and its manifest (``benchmark.json``), ``prepare_benchmark`` (corpora → sites × splits
JSONL + server validation set + statistics), the bundled sample (``default_benchmark_dir``), ``load_benchmark`` /
``Benchmark`` (what the trainers use) and the statistics table (``Stats``: Markdown, JSON, rich).
Must not import torch, transformers, peft or flwr.

Layout::

    <root>/benchmark.json             manifest: name, seed, sites {role, label_set, source, licence, n_docs, ...},
                                      server_validation, removed_duplicates
    <root>/<site>/{train,dev,test}.jsonl
    <root>/_server/validation.jsonl   small labelled set held by the coordinator (Fed-MedLoRA+ weighting)
    <root>/stats.md, stats.json       the statistics table and the drop counts of the conversion
    <root>/ATTRIBUTION.md             corpus credits and licences

Roles: chia, phee and bc5cdr are federated training sites (``role="train"``); maccrobat is the low-resource new
site (``role="new_site"``) that joins after federation. The server validation set is drawn (seeded) from the *dev*
splits of the training sites and removed from them, so it is disjoint from every site's data; its documents keep
their ``site`` (and label set) so the loss can be masked per site.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fedmedlora.jsonl import read_documents, write_documents
from fedmedlora.schema import ENTITY_TYPES, MODIFIER_TYPES, SPLITS, Document, LabelSet

MANIFEST = "benchmark.json"
SERVER_VALIDATION = "_server/validation.jsonl"
BENCHMARK_NAME = "fedmedlora-open"
DEFAULT_SEED = 13
#: site → role. Order is the canonical site order everywhere (manifest, tables).
SITE_ROLES: dict[str, str] = {"chia": "train", "phee": "train", "bc5cdr": "train", "maccrobat": "new_site"}
ROLES = ("train", "new_site", "external")

#: sentence budgets of the bundled sample, per training site and split; the new site keeps whole documents.
SAMPLE_SENTENCES: dict[str, int] = {"train": 200, "dev": 50, "test": 60}
SAMPLE_NEW_SITE_DOCS: dict[str, int] = {"train": 20, "dev": 3, "test": 5}
SERVER_SENTENCES_FULL, SERVER_SENTENCES_SAMPLE = 40, 10


class BenchmarkError(ValueError):
    """A benchmark folder is missing or malformed; the message names the file and field."""


# ---- manifest and loading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteInfo:
    """One site of a benchmark, as described by the manifest."""

    name: str
    role: str
    label_set: LabelSet
    source: str = ""
    licence: str = ""
    n_docs: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Benchmark:
    """A benchmark folder opened through its manifest. Documents are read lazily with ``load``."""

    root: Path
    name: str
    seed: int
    sites: dict[str, SiteInfo]
    server_validation: str | None = None
    manifest: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def train_sites(self) -> list[str]:
        """The federated training sites, in manifest order."""
        return [s for s, i in self.sites.items() if i.role == "train"]

    @property
    def new_site(self) -> str | None:
        """The low-resource site that joins after federation (``None`` if the benchmark has none)."""
        return next((s for s, i in self.sites.items() if i.role == "new_site"), None)

    @property
    def external_sites(self) -> list[str]:
        return [s for s, i in self.sites.items() if i.role == "external"]

    def label_set(self, site: str) -> LabelSet:
        return self._site(site).label_set

    def path(self, site: str, split: str) -> Path:
        self._site(site)
        if split not in SPLITS:
            raise BenchmarkError(f"split {split!r} is not one of {SPLITS}")
        return self.root / site / f"{split}.jsonl"

    def load(self, site: str, split: str) -> list[Document]:
        """The documents of ``site``/``split`` (validated). An absent split file means no documents."""
        p = self.path(site, split)
        return read_documents(p) if p.is_file() else []

    def load_server_validation(self) -> list[Document]:
        """The coordinator's small labelled validation set (empty list if the benchmark has none)."""
        if not self.server_validation:
            return []
        p = self.root / self.server_validation
        if not p.is_file():
            raise BenchmarkError(f"{self.root / MANIFEST}: server_validation: {p} does not exist")
        return read_documents(p)

    def _site(self, site: str) -> SiteInfo:
        if site not in self.sites:
            raise BenchmarkError(f"{self.root / MANIFEST}: no site {site!r}; sites are {list(self.sites)}")
        return self.sites[site]


def default_benchmark_dir() -> Path:
    """The bundled sample benchmark (``fedmedlora/sample_data``)."""
    return Path(str(resources.files("fedmedlora") / "sample_data"))


def load_benchmark(root: str | Path | None = None) -> Benchmark:
    """Open the benchmark at ``root`` (default: the bundled sample). Raises ``BenchmarkError`` naming the field."""
    root = Path(root) if root is not None else default_benchmark_dir()
    mf = root / MANIFEST
    if not mf.is_file():
        raise BenchmarkError(f"{mf}: no benchmark manifest (build one with `fedmedlora data prepare`)")
    try:
        data = json.loads(mf.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"{mf}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("sites"), dict):
        raise BenchmarkError(f"{mf}: sites: missing or not an object")
    sites = {}
    for name, s in data["sites"].items():
        where = f"{mf}: sites.{name}"
        if not isinstance(s, dict):
            raise BenchmarkError(f"{where}: expected an object")
        role = s.get("role")
        if role not in ROLES:
            raise BenchmarkError(f"{where}.role: {role!r} is not one of {ROLES}")
        try:
            ls = LabelSet.from_dict(s.get("label_set") or {})
        except ValueError as e:
            raise BenchmarkError(f"{where}.label_set: {e}") from None
        sites[name] = SiteInfo(
            name, role, ls, str(s.get("source", "")), str(s.get("licence", "")), dict(s.get("n_docs") or {})
        )
    seed = data.get("seed", 0)
    if not isinstance(seed, int):
        raise BenchmarkError(f"{mf}: seed: expected an integer, got {seed!r}")
    return Benchmark(
        root=root,
        name=str(data.get("name", "")),
        seed=seed,
        sites=sites,
        server_validation=data.get("server_validation") or None,
        manifest=data,
    )


# ---- statistics -----------------------------------------------------------------------------------------------


@dataclass
class Stats:
    """Counts per site and split: documents, sentences, entities by type, modifiers by type, attributes.

    ``drops`` holds the conversion's dropped annotations per site and reason (empty when computed from JSONL).
    """

    rows: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # site → split → counts
    label_sets: dict[str, LabelSet] = field(default_factory=dict)
    drops: dict[str, dict[str, int]] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    removed_duplicates: dict[str, list[str]] = field(default_factory=dict)

    @staticmethod
    def count(docs: Iterable[Document]) -> dict[str, Any]:
        c: dict[str, Any] = {"documents": 0, "sentences": 0, "entities": Counter(), "modifiers": Counter()}
        attrs: Counter = Counter()
        for d in docs:
            c["documents"] += 1
            c["sentences"] += len(d.sentences)
            for s in d.sentences:
                c["entities"].update(e.type for e in s.entities)
                c["modifiers"].update(m.type for m in s.modifiers)
                attrs.update(a for e in s.entities for a in e.attributes)
        c["attributes"] = attrs
        return c

    def add(self, site: str, split: str, docs: Sequence[Document], label_set: LabelSet) -> None:
        self.rows.setdefault(site, {})[split] = self.count(docs)
        self.label_sets[site] = label_set

    def total(self, site: str) -> dict[str, Any]:
        t: dict[str, Any] = {
            "documents": 0, "sentences": 0, "entities": Counter(), "modifiers": Counter(), "attributes": Counter()
        }  # fmt: skip
        for r in self.rows.get(site, {}).values():
            for k in ("documents", "sentences"):
                t[k] += r[k]
            for k in ("entities", "modifiers", "attributes"):
                t[k].update(r[k])
        return t

    def modifier_columns(self) -> list[str]:
        present = set().union(*(set(ls.modifiers) for ls in self.label_sets.values())) if self.label_sets else set()
        return [m for m in MODIFIER_TYPES if m in present]

    def _cell(self, site: str, kind: str, typ: str, counts: dict[str, Any]) -> str:
        ls = self.label_sets[site]
        annotated = typ in (ls.entities if kind == "entities" else ls.modifiers)
        return str(counts[kind].get(typ, 0)) if annotated else "—"

    def table_rows(self) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
        """(entity header, entity rows per site/split + total, modifier header, modifier rows per site)."""
        eh = ["site", "split", "docs", "sentences", *ENTITY_TYPES, "attributes"]
        er = []
        for site, splits in self.rows.items():
            for split, c in [*splits.items(), ("all", self.total(site))]:
                attrs = ", ".join(f"{k} {v}" for k, v in sorted(c["attributes"].items()))
                er.append(
                    [site, split, str(c["documents"]), str(c["sentences"])]
                    + [self._cell(site, "entities", t, c) for t in ENTITY_TYPES]
                    + [attrs]
                )
        mcols = self.modifier_columns()
        mh = ["site", "split", *mcols]
        mr = []
        for site, splits in self.rows.items():
            for split, c in [*splits.items(), ("all", self.total(site))]:
                mr.append([site, split] + [self._cell(site, "modifiers", m, c) for m in mcols])
        return eh, er, mh, mr

    def to_markdown(self) -> str:
        eh, er, mh, mr = self.table_rows()

        def md(h: list[str], rows: list[list[str]]) -> str:
            lines = ["| " + " | ".join(h) + " |", "|" + "|".join("---" for _ in h) + "|"]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            return "\n".join(lines)

        out = [
            "# Benchmark statistics",
            "",
            "Counts of documents, sentences, entities and modifiers per site and split. "
            "'—' = the site does not annotate that type (it is never scored as a negative there).",
            "",
            "## Entities",
            "",
            md(eh, er),
            "",
            "## Modifiers (relations head → modifier)",
            "",
            md(mh, mr),
        ]
        if self.server:
            out += ["", f"Server validation set: {self.server.get('documents', 0)} documents, "
                    f"{self.server.get('sentences', 0)} sentences ({self.server.get('sites', {})})."]  # fmt: skip
        if self.removed_duplicates:
            for site, ids in self.removed_duplicates.items():
                out += ["", f"Removed from {site} (PMIDs shared with another site): {len(ids)} — {', '.join(ids)}"]
        if self.drops:
            out += ["", "## Dropped annotations (conversion of the full corpora)", ""]
            for site, d in self.drops.items():
                out += [f"### {site} ({sum(d.values())} dropped)", "", "| count | reason |", "|---|---|"]
                out += [f"| {v} | {k} |" for k, v in sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))]
                out.append("")
        return "\n".join(out).rstrip() + "\n"

    def to_json(self) -> dict[str, Any]:
        def plain(c: dict[str, Any]) -> dict[str, Any]:
            return {k: (dict(sorted(v.items())) if isinstance(v, Counter) else v) for k, v in c.items()}

        return {
            "sites": {
                site: {
                    "label_set": self.label_sets[site].to_dict(),
                    "splits": {sp: plain(c) for sp, c in splits.items()},
                    "total": plain(self.total(site)),
                }
                for site, splits in self.rows.items()
            },
            "server_validation": self.server,
            "removed_duplicates": self.removed_duplicates,
            "drops": {s: dict(sorted(d.items())) for s, d in self.drops.items()},
        }

    def write(self, root: str | Path) -> None:
        root = Path(root)
        (root / "stats.md").write_text(self.to_markdown(), encoding="utf-8")
        (root / "stats.json").write_text(
            json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )

    def print(self, console: Any = None, drops: bool = True) -> None:
        """Print the tables (and the drop counts) with rich."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console(width=None if sys.stdout.isatty() else 160)
        eh, er, mh, mr = self.table_rows()
        for title, h, rows in (("Entities", eh, er), ("Modifiers (head → modifier)", mh, mr)):
            t = Table(title=title, show_lines=False)
            for i, col in enumerate(h):
                t.add_column(col, justify="left" if i < 2 or col == "attributes" else "right")
            prev = None
            for r in rows:
                if prev is not None and r[0] != prev:
                    t.add_section()
                prev = r[0]
                t.add_row(*r)
            console.print(t)
        if self.server:
            console.print(f"server validation: {self.server}")
        for site, ids in self.removed_duplicates.items():
            console.print(f"removed from {site}: {len(ids)} documents' PMIDs shared with another site")
        if drops and self.drops:
            t = Table(title="Dropped annotations (conversion)")
            t.add_column("site")
            t.add_column("count", justify="right")
            t.add_column("reason")
            for site, d in self.drops.items():
                t.add_section()
                for k, v in sorted(d.items(), key=lambda kv: (-kv[1], kv[0])):
                    t.add_row(site, str(v), k)
            console.print(t)


def benchmark_stats(bench: Benchmark) -> Stats:
    """Statistics of an existing benchmark folder (drop counts are read from its stats.json when present)."""
    st = Stats()
    for site, info in bench.sites.items():
        for split in SPLITS:
            st.add(site, split, bench.load(site, split), info.label_set)
    if bench.server_validation:
        sv = bench.load_server_validation()
        st.server = _server_summary(sv)
    sj = bench.root / "stats.json"
    if sj.is_file():
        old = json.loads(sj.read_text(encoding="utf-8"))
        st.drops = old.get("drops", {})
    st.removed_duplicates = bench.manifest.get("removed_duplicates", {})
    return st


def _server_summary(docs: Sequence[Document]) -> dict[str, Any]:
    return {
        "documents": len(docs),
        "sentences": sum(len(d.sentences) for d in docs),
        "sites": dict(Counter(d.site for d in docs)),
    }


# ---- building ---------------------------------------------------------------------------------------------------


def _take_sentences(docs: Sequence[Document], budget: int, rng: random.Random) -> list[Document]:
    """Seeded pick of whole documents until ``budget`` sentences are reached (docs in id order afterwards)."""
    pool = sorted(docs, key=lambda d: d.id)
    rng.shuffle(pool)
    out, n = [], 0
    for d in pool:
        if n >= budget:
            break
        if not d.sentences:
            continue
        out.append(d)
        n += len(d.sentences)
    return sorted(out, key=lambda d: d.id)


def _take_docs(docs: Sequence[Document], k: int, rng: random.Random) -> list[Document]:
    pool = sorted(docs, key=lambda d: d.id)
    rng.shuffle(pool)
    return sorted(pool[:k], key=lambda d: d.id)


def write_attribution(root: str | Path, sites: Sequence[str], sample: bool) -> None:
    """Write ATTRIBUTION.md crediting every corpus the benchmark was converted from."""
    from fedmedlora.corpora.mapping import CORPUS_INFO

    what = "a small **converted subset**" if sample else "a **converted** copy"
    lines = [
        "# Attribution",
        "",
        f"This folder holds {what} of the open corpora below, in the fedmedlora JSONL format (sentences, entity and "
        "modifier spans mapped onto the fedmedlora schema; see docs/data.md for the label mapping and what was "
        "dropped). It is a derived work: the original files are not included, and the original annotations carry "
        "more detail than kept here. Regenerate it with `fedmedlora data prepare" + (" --sample`." if sample else "`."),
        "",
        "| site | corpus | licence | source | genre |",
        "|---|---|---|---|---|",
    ]
    for s in sites:
        info = CORPUS_INFO[s]
        lines.append(f"| {s} | {info['title']} | {info['licence']} | {info['source']} | {info['genre']} |")
    lines += [
        "",
        "Licence notes: Chia and MACCROBAT are CC BY 4.0 (attribution required: cite Kury et al. 2020 and "
        'Caufield et al.); PHEE is MIT (keep the copyright notice: "Copyright (c) 2025 Sun Zhaoyue"); BC5CDR is a '
        "US Government Work in the public domain (NLM). The MACCROBAT and Chia licences are taken from their figshare "
        "records as cited by dataset cards; the GitHub mirrors carry no licence file.",
        "",
        "Changes made: text segmented into sentences; labels mapped (e.g. Chia Condition → problem, MACCROBAT "
        "Lab_value → labvalue of a test); annotations outside the schema dropped; 21 PHEE abstracts shared with "
        "BC5CDR removed from PHEE" + ("; a seeded subset of documents selected." if sample else "."),
        "",
    ]
    (Path(root) / "ATTRIBUTION.md").write_text("\n".join(lines), encoding="utf-8")


def prepare_benchmark(
    corpora_dir: str | Path,
    out_dir: str | Path,
    seed: int = DEFAULT_SEED,
    max_docs: int | None = None,
    *,
    sites: Sequence[str] | None = None,
    sample: bool = False,
    name: str | None = None,
) -> Stats:
    """Build the benchmark from the raw corpora into ``out_dir`` and return its statistics.

    Args:
        corpora_dir: folder with ``chia/``, ``phee/``, ``bc5cdr/``, ``maccrobat/`` (e.g. ``shared/datasets``).
        out_dir: output folder (created; existing site files are overwritten).
        seed: seed of the Chia/MACCROBAT splits, the server validation draw and the sample.
        max_docs: read at most this many documents per corpus (per split file for PHEE/BC5CDR); for tests.
        sites: subset of ``SITE_ROLES`` to build (default: all four).
        sample: write the small bundled sample (``SAMPLE_SENTENCES`` per training site and split,
            ``SAMPLE_NEW_SITE_DOCS`` for the new site) instead of the full benchmark.
        name: benchmark name in the manifest.

    Raises:
        fedmedlora.corpora.CorpusError: a corpus folder or file is missing or malformed (names the file).
    """
    from fedmedlora.corpora import read_corpus
    from fedmedlora.corpora.mapping import CORPUS_INFO
    from fedmedlora.splits import assign_splits, remove_cross_site_duplicates

    sites = list(sites) if sites is not None else list(SITE_ROLES)
    unknown = [s for s in sites if s not in SITE_ROLES]
    if unknown:
        raise BenchmarkError(f"unknown site(s) {unknown}; known: {list(SITE_ROLES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs: dict[str, list[Document]] = {}
    stats = Stats()
    for s in sites:
        read, drops = read_corpus(s, corpora_dir, max_docs=max_docs)
        docs[s] = assign_splits(s, read, seed)
        stats.drops[s] = dict(drops)
    if "phee" in docs and "bc5cdr" in docs:
        n_before = len(docs["phee"])
        docs["phee"], shared = remove_cross_site_duplicates(docs["phee"], docs["bc5cdr"])
        if shared:
            stats.removed_duplicates["phee"] = shared
            stats.drops["phee"]["document: PMID shared with bc5cdr (removed)"] = n_before - len(docs["phee"])
    by_split = {s: {sp: [d for d in docs[s] if d.split == sp] for sp in SPLITS} for s in sites}
    # server validation: seeded draw from the training sites' dev splits, removed from them
    server: list[Document] = []
    budget = SERVER_SENTENCES_SAMPLE if sample else SERVER_SENTENCES_FULL
    for s in sites:
        if SITE_ROLES[s] != "train":
            continue
        picked = _take_sentences(by_split[s]["dev"], budget, random.Random(f"{seed}:server:{s}"))
        ids = {d.id for d in picked}
        by_split[s]["dev"] = [d for d in by_split[s]["dev"] if d.id not in ids]
        server.extend(picked)
    if sample:
        for s in sites:
            for sp in SPLITS:
                rng = random.Random(f"{seed}:sample:{s}:{sp}")
                if SITE_ROLES[s] == "new_site":
                    by_split[s][sp] = _take_docs(by_split[s][sp], SAMPLE_NEW_SITE_DOCS[sp], rng)
                else:
                    by_split[s][sp] = _take_sentences(by_split[s][sp], SAMPLE_SENTENCES[sp], rng)
    manifest: dict[str, Any] = {
        "name": name or (BENCHMARK_NAME + ("-sample" if sample else "")),
        "seed": seed,
        "sample": sample,
        "sites": {},
        "server_validation": SERVER_VALIDATION if server else "",
        "removed_duplicates": stats.removed_duplicates,
        "splits": {
            "chia": "seeded 80/10/10 by NCT id (inc+exc together)",
            "phee": "official train/dev/test",
            "bc5cdr": "official Training/Development/Test",
            "maccrobat": "seeded 20 train / 20 dev / rest test documents",
        },
    }
    for s in sites:
        ls = next((d.label_set for d in docs[s]), None)
        if ls is None:
            from fedmedlora.corpora.mapping import LABEL_SETS

            ls = LABEL_SETS[s]
        for sp in SPLITS:
            write_documents(out / s / f"{sp}.jsonl", by_split[s][sp])
            stats.add(s, sp, by_split[s][sp], ls)
        info = CORPUS_INFO[s]
        manifest["sites"][s] = {
            "role": SITE_ROLES[s],
            "label_set": ls.to_dict(),
            "source": info["source"],
            "licence": info["licence"],
            "title": info["title"],
            "genre": info["genre"],
            "n_docs": {sp: len(by_split[s][sp]) for sp in SPLITS},
            "n_sentences": {sp: sum(len(d.sentences) for d in by_split[s][sp]) for sp in SPLITS},
        }
    if server:
        write_documents(out / SERVER_VALIDATION, server)
        stats.server = _server_summary(server)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    stats.write(out)
    write_attribution(out, sites, sample)
    return stats
