"""The federated benchmark on disk: its layout, manifest and loading.

Owns: the on-disk layout and its manifest (``benchmark.json``), the site roles, the bundled sample
(``default_benchmark_dir``) and ``load_benchmark`` / ``open_benchmark`` / ``Benchmark`` (what the trainers use).
Building it from the corpora is ``fedmedlora.prepare``; its statistics table is ``fedmedlora.benchmark_stats``.
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
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fedmedlora.jsonl import read_documents
from fedmedlora.schema import SPLITS, Document, LabelSet

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
        """The documents of ``site``/``split`` (validated). An absent split file means no documents.

        Raises:
            BenchmarkError: a document whose ``site``/``split`` contradict its file, or a document id twice in it.
        """
        p = self.path(site, split)
        docs = read_documents(p) if p.is_file() else []
        seen: set[str] = set()
        for line, d in enumerate(docs, 1):
            if d.site != site or d.split != split:
                raise BenchmarkError(
                    f"{p}:{line}: document {d.id!r} says site={d.site!r}, split={d.split!r}, but the file is "
                    f"{site}/{split}.jsonl"
                )
            if d.id in seen:
                raise BenchmarkError(f"{p}:{line}: document id {d.id!r} appears twice")
            seen.add(d.id)
        return docs

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


def open_benchmark(source: Benchmark | str | Path | None = None) -> Benchmark:
    """A ``Benchmark``: an already loaded one, a benchmark folder, or ``None`` (the bundled sample)."""
    return source if isinstance(source, Benchmark) else load_benchmark(source)


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
    except UnicodeDecodeError as e:
        raise BenchmarkError(f"{mf}: not UTF-8 text (byte {e.start})") from None
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
        n_docs = s.get("n_docs") or {}
        if not isinstance(n_docs, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in n_docs.values()
        ):
            raise BenchmarkError(f"{where}.n_docs: expected split -> document count, got {n_docs!r}")
        if not (root / name).is_dir():
            raise BenchmarkError(f"{where}: the manifest lists site {name!r} but {root / name} does not exist")
        sites[name] = SiteInfo(name, role, ls, str(s.get("source", "")), str(s.get("licence", "")), dict(n_docs))
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


def check_benchmark(bench: Benchmark) -> list[str]:
    """Everything that would make a study on ``bench`` wrong without an error elsewhere: documents in two splits of
    a site, documents whose label set differs from the manifest's (its ``label_set``, or one of its ``label_sets``
    for a site partitioned from several corpora), and the per-file checks of ``Benchmark.load``.
    Returns the problems found (empty: the benchmark is consistent)."""
    problems: list[str] = []
    for site, info in bench.sites.items():
        where: dict[str, str] = {}
        # a site partitioned from several corpora (fedmedlora.partition) lists its documents' label sets
        listed = (bench.manifest.get("sites", {}).get(site) or {}).get("label_sets") or []
        allowed = [info.label_set, *(LabelSet.from_dict(d) for d in listed if isinstance(d, dict))]
        for split in SPLITS:
            try:
                docs = bench.load(site, split)
            except (BenchmarkError, ValueError) as e:
                problems.append(str(e))
                continue
            odd = [d for d in docs if d.label_set not in allowed]
            if odd:
                problems.append(
                    f"{bench.path(site, split)}: {len(odd)} document(s), e.g. {odd[0].id!r}, have label set "
                    f"{odd[0].label_set.to_dict()}; the manifest says {info.label_set.to_dict()}"
                )
            for d in docs:
                if d.id in where:
                    problems.append(f"{site}: document {d.id!r} is in both {where[d.id]} and {split}")
                where.setdefault(d.id, split)
    return problems
