"""The statistics table of a benchmark: documents, sentences, entities and modifiers per site and split.

Owns ``Stats`` (counts, the conversion's drop counts, Markdown / JSON / rich output) and ``benchmark_stats`` (the
table of an existing benchmark folder). Must not import torch, transformers, peft or flwr.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmedlora.benchmark import Benchmark, BenchmarkError
from fedmedlora.schema import ENTITY_TYPES, MODIFIER_TYPES, SPLITS, Document, LabelSet


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
        st.server = server_summary(sv)
    sj = bench.root / "stats.json"
    if sj.is_file():
        try:
            old = json.loads(sj.read_text(encoding="utf-8"))
            st.drops = dict(old.get("drops", {}))
        except (UnicodeDecodeError, ValueError, AttributeError, TypeError) as e:
            raise BenchmarkError(
                f"{sj}: not a statistics file ({type(e).__name__}: {e}); delete it or run data prepare again"
            ) from None
    st.removed_duplicates = bench.manifest.get("removed_duplicates", {})
    return st


def server_summary(docs: Sequence[Document]) -> dict[str, Any]:
    return {
        "documents": len(docs),
        "sentences": sum(len(d.sentences) for d in docs),
        "sites": dict(Counter(d.site for d in docs)),
    }
