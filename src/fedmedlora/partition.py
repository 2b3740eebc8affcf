"""Re-partition a benchmark's training sites into N synthetic sites, IID or skewed (``fedmedlora data split``).

Owns: ``partition_documents`` (the seeded assignment of documents to new sites), ``type_mix`` /
``total_variation`` (how far a site's entity-type mix is from the pooled one), ``PartitionSettings`` and
``split_benchmark`` (read a benchmark, write the partitioned one in the project's layout with provenance in its
manifest). Must not import torch, transformers, peft or flwr (pure core: stdlib + numpy).

Method
------
The documents of the source sites (default: every ``role="train"`` site) are pooled; a document is the unit (never
split). Each document's *entity-type mix* ``m_d`` is the share of each entity type among its entities (a document
without entities counts as the pseudo-type ``none``).

* **Label skew** (``alpha``): for each type ``c`` a site-preference vector ``p_c ~ Dirichlet(alpha · 1_N)`` is
  drawn once; document ``d`` prefers site ``k`` with probability ``q_d,k ∝ Σ_c m_d,c · p_c,k``. Small ``alpha``
  (e.g. 0.1) concentrates each type on a few sites; ``alpha = inf`` (or very large) makes every ``p_c`` uniform: IID.
* **Size skew** (``proportions`` or ``size_skew``): the target share ``s_k`` of each site; ``size_skew = f`` is
  shorthand for one large site with share ``f`` and ``N − 1`` equal small ones. Default: equal shares.
* **Assignment, IID** (``alpha = inf``): site ``k`` receives exactly ``quota_k`` documents of each split (the
  largest-remainder rounding of ``s_k × n``): the documents of a split, sorted by (source site, id) and shuffled by
  the seed, are dealt out at random among the sites whose quota is not full. Sizes are exact.
* **Assignment, label skew** (finite ``alpha``): each document independently goes to site ``k`` with probability
  ``∝ s_k · q_d,k``, as in the usual Dirichlet partitioners (sizes then vary with the draw; exact quotas would undo
  most of the skew, since the common types must then be spread over every site). A site left without a document of
  a split that has at least ``N`` documents is given the document that prefers it most among those of the site
  holding the most documents, so every site has training, dev and test data. (Under IID a dev or test quota of 0
  is raised to 1 where the split allows; a training quota of 0 is an error naming the site.)
* **Dev and test**: every source site's dev and test documents are partitioned the same way as the training ones
  (same type preferences ``p_c``, same proportions, a quota per split), so each new site keeps its own dev split
  (its loss for Fed-MedLoRA+ ``plus_loss_source=site``) and test split (in-domain evaluation) drawn like its
  training data. Every new site must get ≥ 1 training document (an error names the site otherwise); a dev or
  test split with at least ``N`` documents gives every site ≥ 1 of them.

Sites of the source benchmark that are not partitioned (the new site, external cohorts) and the coordinator's
validation set are copied unchanged. A document keeps its id, text, annotations and label set (a new site may hold
documents of several label sets: its manifest ``label_set`` is their union and ``label_sets`` lists them; training
and scoring use each document's own label set); ``meta.source_site`` records where it came from.

Same seed and settings → the same partition (independent of file order); a different seed → a different one.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedmedlora.benchmark import MANIFEST, SERVER_VALIDATION, Benchmark, BenchmarkError, load_benchmark
from fedmedlora.benchmark_stats import benchmark_stats
from fedmedlora.jsonl import write_documents
from fedmedlora.schema import ENTITY_TYPES, SPLITS, Document, LabelSet

#: The pseudo-type of a document without entities.
NO_ENTITY = "none"
#: Entity types a mix is computed over, in this order.
MIX_TYPES: tuple[str, ...] = (*ENTITY_TYPES, NO_ENTITY)


class PartitionError(ValueError):
    """A partition that cannot be made as asked; the message names the setting, site or file."""


@dataclass(frozen=True)
class PartitionSettings:
    """How to partition.

    Attributes:
        n_sites: Number of new sites ``N`` (≥ 1).
        alpha: Dirichlet concentration of the label skew (> 0); ``math.inf`` gives IID.
        seed: Seed of the Dirichlet draws and the assignment.
        proportions: Relative size of each new site (``N`` positive numbers; normalised); None = equal, unless
            ``size_skew``.
        size_skew: Share in (0, 1) of the first (large) site; the other ``N − 1`` share the rest equally.
        prefix: New site names are ``<prefix>01`` … (zero-padded to the width of ``N``).
    """

    n_sites: int
    alpha: float = math.inf
    seed: int = 13
    proportions: tuple[float, ...] | None = None
    size_skew: float | None = None
    prefix: str = "site"

    def __post_init__(self) -> None:
        errors = []
        if isinstance(self.n_sites, bool) or not isinstance(self.n_sites, int) or self.n_sites < 1:
            errors.append(f"sites={self.n_sites!r} must be an integer ≥ 1")
        if not isinstance(self.alpha, int | float) or math.isnan(self.alpha) or not self.alpha > 0:
            errors.append(f"alpha={self.alpha!r} must be > 0 (inf for IID)")
        if self.proportions is not None and self.size_skew is not None:
            errors.append("give proportions or size_skew, not both")
        if self.proportions is not None:
            props = list(self.proportions)
            if isinstance(self.n_sites, int) and len(props) != self.n_sites:
                errors.append(f"proportions: {len(props)} values for {self.n_sites} sites")
            if not all(isinstance(p, int | float) and math.isfinite(p) and p > 0 for p in props):
                errors.append(f"proportions={props!r} must all be finite numbers > 0")
        if self.size_skew is not None and not (0 < self.size_skew < 1):
            errors.append(f"size_skew={self.size_skew!r} must be in (0, 1)")
        if self.size_skew is not None and self.n_sites == 1:
            errors.append("size_skew needs at least 2 sites")
        if not self.prefix or not all(ch.isalnum() or ch in "_-" for ch in self.prefix):
            errors.append(f"prefix={self.prefix!r} must be letters, digits, '_' or '-'")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            errors.append(f"seed={self.seed!r} must be an integer ≥ 0")
        if errors:
            raise PartitionError("invalid partition settings: " + "; ".join(errors))

    @property
    def iid(self) -> bool:
        return math.isinf(self.alpha)

    def shares(self) -> np.ndarray:
        """The normalised target share of every new site."""
        n = self.n_sites
        if self.proportions is not None:
            raw = np.asarray(self.proportions, dtype=np.float64)
        elif self.size_skew is not None:
            raw = np.array([self.size_skew] + [(1 - self.size_skew) / (n - 1)] * (n - 1))
        else:
            raw = np.ones(n)
        return raw / raw.sum()

    def site_names(self) -> list[str]:
        width = max(2, len(str(self.n_sites)))
        return [f"{self.prefix}{k + 1:0{width}d}" for k in range(self.n_sites)]


# ---- type mixes ------------------------------------------------------------------------------------------------


def type_counts(doc: Document) -> np.ndarray:
    """Entity counts of a document over ``MIX_TYPES`` (``none`` = 1 for a document without entities)."""
    counts = np.zeros(len(MIX_TYPES))
    for s in doc.sentences:
        for e in s.entities:
            counts[MIX_TYPES.index(e.type)] += 1
    if counts.sum() == 0:
        counts[-1] = 1
    return counts


def type_mix(docs: Sequence[Document]) -> dict[str, float]:
    """The share of each of ``MIX_TYPES`` among the entities of ``docs`` (entity-weighted; empty → all zeros)."""
    total = sum((type_counts(d) for d in docs), np.zeros(len(MIX_TYPES)))
    s = float(total.sum())
    return {t: (float(v) / s if s else 0.0) for t, v in zip(MIX_TYPES, total, strict=True)}


def total_variation(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Total-variation distance ``½ Σ |p − q|`` between two type mixes (0 identical, 1 disjoint)."""
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


# ---- the partition ---------------------------------------------------------------------------------------------


def quotas(n: int, shares: np.ndarray, min_each: int = 0) -> list[int]:
    """Split ``n`` items by ``shares`` (largest remainder, ties to the lower index), each site ≥ ``min_each``
    where ``n`` allows it (taken from the largest quotas)."""
    raw = shares * n
    q = np.floor(raw).astype(int)
    order = sorted(range(len(shares)), key=lambda k: (-(raw[k] - q[k]), k))
    for k in order[: n - int(q.sum())]:
        q[k] += 1
    if min_each and n >= min_each * len(shares):
        for k in range(len(q)):
            while q[k] < min_each:
                donor = max(range(len(q)), key=lambda j: (q[j], -j))
                q[donor] -= 1
                q[k] += 1
    return [int(x) for x in q]


def type_preferences(settings: PartitionSettings) -> np.ndarray:
    """``p_c``: one Dirichlet(alpha) site-preference vector per type of ``MIX_TYPES`` (rows), uniform for IID."""
    n = settings.n_sites
    if settings.iid:
        return np.full((len(MIX_TYPES), n), 1.0 / n)
    rng = np.random.default_rng([settings.seed, 0])
    prefs = rng.dirichlet(np.full(n, float(settings.alpha)), size=len(MIX_TYPES))
    prefs = np.nan_to_num(prefs, nan=0.0)  # tiny alpha can underflow; a row of zeros falls back to the quotas
    return prefs


def partition_documents(docs: Sequence[Document], settings: PartitionSettings) -> dict[str, list[Document]]:
    """Assign every document to one new site (see the module docstring); each keeps its split.

    Args:
        docs: The pooled documents of the source sites (any splits).
        settings: Number of sites, alpha, sizes, seed.

    Returns:
        New site name → its documents (sorted by split, then source site and id), each with ``site`` set to the new
        name and ``meta["source_site"]`` to its old one.

    Raises:
        PartitionError: more sites than training documents, a site whose quota of training documents is 0 (named),
            or a document id held twice by one new site.
    """
    names = settings.site_names()
    shares = settings.shares()
    prefs = type_preferences(settings)
    out: dict[str, list[Document]] = {s: [] for s in names}
    n_train = sum(d.split == "train" for d in docs)
    if n_train < settings.n_sites:
        raise PartitionError(
            f"cannot split {n_train} training documents into {settings.n_sites} sites: every site needs at least one "
            "training document (use fewer sites)"
        )
    for i, split in enumerate(SPLITS):
        pool = sorted((d for d in docs if d.split == split), key=lambda d: (d.site, d.id))
        if not pool:
            continue
        quota = quotas(len(pool), shares, min_each=0 if split == "train" else 1)
        if split == "train" and settings.iid:
            for name, k, share in zip(names, quota, shares, strict=True):
                if k == 0:
                    raise PartitionError(
                        f"site {name} would get no training document (share {share:.3g} of {len(pool)} documents); "
                        "use fewer sites or larger proportions / a smaller size_skew"
                    )
        rng = np.random.default_rng([settings.seed, 1 + i])
        want = np.stack([(m / m.sum()) @ prefs for m in map(type_counts, pool)]) * shares
        where = np.zeros(len(pool), dtype=int)
        if settings.iid:
            left = np.asarray(quota, dtype=np.float64)
            for j in rng.permutation(len(pool)):
                where[j] = int(rng.choice(len(names), p=left / left.sum()))
                left[where[j]] -= 1
        else:
            for j in range(len(pool)):
                w = want[j] if want[j].sum() > 0 else shares  # every preference underflowed (tiny alpha)
                where[j] = int(rng.choice(len(names), p=w / w.sum()))
            if len(pool) >= len(names):
                for k in range(len(names)):
                    if not (where == k).any():  # give it the document that prefers it most, from the largest site
                        donor = int(np.argmax(np.bincount(where, minlength=len(names))))
                        cands = np.flatnonzero(where == donor)
                        where[cands[int(np.argmax(want[cands, k]))]] = k
        for j, doc in enumerate(pool):
            k = int(where[j])
            out[names[k]].append(replace(doc, site=names[k], meta={**doc.meta, "source_site": doc.site}))
    for name, site_docs in out.items():
        site_docs.sort(key=lambda d: (SPLITS.index(d.split), d.meta["source_site"], d.id))
        seen: dict[tuple[str, str], str] = {}
        for d in site_docs:
            key = (d.split, d.id)
            if key in seen:
                raise PartitionError(
                    f"site {name}: document id {d.id!r} ({d.split}) comes from both {seen[key]} and "
                    f"{d.meta['source_site']}; ids must be unique within a site"
                )
            seen[key] = d.meta["source_site"]
    return out


# ---- benchmark folders -----------------------------------------------------------------------------------------


def _json_alpha(alpha: float) -> float | str:
    return "inf" if math.isinf(alpha) else float(alpha)


def split_benchmark(
    source: str | Path | Benchmark,
    out: str | Path,
    settings: PartitionSettings,
    *,
    sites: Sequence[str] | None = None,
    name: str | None = None,
    keep_other_sites: bool = True,
) -> dict[str, Any]:
    """Partition a benchmark's training sites into ``settings.n_sites`` new ones and write the new benchmark.

    Args:
        source: The benchmark to partition (folder or opened ``Benchmark``).
        out: New benchmark folder (must not exist or be empty).
        settings: The partition.
        sites: Source sites to pool (default: every ``role="train"`` site of ``source``).
        name: Name in the new manifest (default: ``<source name>-split<N>``).
        keep_other_sites: copy the sites that are not partitioned (new site, external cohorts, training sites left
            out of ``sites``); ``False`` leaves them out (an experiment that scores only the new sites).

    Returns:
        The new manifest (also written to ``out/benchmark.json``; ``partition`` holds the provenance).

    Raises:
        PartitionError: ``out`` is not empty or is the source, an unknown or non-training source site, or what
            ``partition_documents`` raises.
    """
    bench = source if isinstance(source, Benchmark) else load_benchmark(source)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PartitionError(f"{out}: already exists and is not an empty folder; choose a new --out")
    if out.resolve() == bench.root.resolve():
        raise PartitionError(f"{out}: is the source benchmark itself")
    chosen = list(sites) if sites else bench.train_sites
    for s in chosen:
        if s not in bench.sites:
            raise PartitionError(f"{bench.root / MANIFEST}: no site {s!r}; sites are {list(bench.sites)}")
        if bench.sites[s].role != "train":
            raise PartitionError(f"site {s!r} has role {bench.sites[s].role!r}; only training sites are partitioned")
    if not chosen:
        raise PartitionError(f"{bench.root / MANIFEST}: no training site to partition")
    pooled = [d for s in chosen for split in SPLITS for d in bench.load(s, split)]
    parts = partition_documents(pooled, settings)
    pooled_mix = type_mix([d for d in pooled if d.split == "train"])

    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {k: v for k, v in bench.manifest.items() if k not in ("sites", "splits")}
    manifest["name"] = name or f"{bench.name or 'benchmark'}-split{settings.n_sites}"
    manifest["seed"] = settings.seed
    manifest["sites"] = {}
    src_sites = bench.manifest.get("sites", {})
    tvs = []
    for new, docs in parts.items():
        for split in SPLITS:
            write_documents(out / new / f"{split}.jsonl", [d for d in docs if d.split == split])
        label_sets: list[LabelSet] = []
        for d in docs:
            if d.label_set not in label_sets:
                label_sets.append(d.label_set)
        union = label_sets[0]
        for ls in label_sets[1:]:
            union = union.union(ls)
        train = [d for d in docs if d.split == "train"]
        mix = type_mix(train)
        tv = total_variation(mix, pooled_mix)
        tvs.append(tv)
        from_sources = {
            s: {sp: sum(1 for d in docs if d.meta["source_site"] == s and d.split == sp) for sp in SPLITS}
            for s in chosen
        }
        manifest["sites"][new] = {
            "role": "train",
            "label_set": union.to_dict(),
            "label_sets": [ls.to_dict() for ls in label_sets],
            "source": "partition of " + ", ".join(s for s in chosen if any(from_sources[s].values())),
            "licence": "; ".join(
                sorted({str(src_sites.get(s, {}).get("licence", "")) for s in chosen if any(from_sources[s].values())})
            ),
            "n_docs": {sp: sum(d.split == sp for d in docs) for sp in SPLITS},
            "n_sentences": {sp: sum(len(d.sentences) for d in docs if d.split == sp) for sp in SPLITS},
            "partition": {
                "source_sites": {s: c for s, c in from_sources.items() if any(c.values())},
                "train_type_mix": {t: round(v, 4) for t, v in mix.items()},
                "train_tv_to_pool": round(tv, 4),
            },
        }
    left_out = []
    for s, info in bench.sites.items():  # the sites not partitioned travel unchanged (or not at all)
        if s in chosen:
            continue
        if not keep_other_sites:
            left_out.append(s)
            continue
        shutil.copytree(bench.root / s, out / s)
        manifest["sites"][s] = src_sites.get(s, {"role": info.role, "label_set": info.label_set.to_dict()})
    if bench.server_validation:
        (out / SERVER_VALIDATION).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bench.root / bench.server_validation, out / SERVER_VALIDATION)
        manifest["server_validation"] = SERVER_VALIDATION
    if (bench.root / "ATTRIBUTION.md").is_file():
        shutil.copyfile(bench.root / "ATTRIBUTION.md", out / "ATTRIBUTION.md")
    manifest["partition"] = {
        "tool": "fedmedlora data split",
        "from": str(bench.root),
        "from_name": bench.name,
        "method": "iid" if settings.iid else "dirichlet-type-mix",
        "alpha": _json_alpha(settings.alpha),
        "seed": settings.seed,
        "n_sites": settings.n_sites,
        "shares": [round(float(x), 6) for x in settings.shares()],
        "size_skew": settings.size_skew,
        "proportions": list(settings.proportions) if settings.proportions is not None else None,
        "source_sites": chosen,
        "sites_left_out": left_out,
        "dev_test": "partitioned like the training documents (same type preferences and shares, a quota per split)",
        "pooled_train_type_mix": {t: round(v, 4) for t, v in pooled_mix.items()},
        "mean_train_tv_to_pool": round(float(np.mean(tvs)), 4),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    try:
        benchmark_stats(load_benchmark(out)).write(out)
    except BenchmarkError as e:  # pragma: no cover - the folder was just written by this function
        raise PartitionError(f"{out}: the written benchmark does not load: {e}") from None
    return manifest
