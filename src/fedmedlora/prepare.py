"""Building the federated benchmark from the open corpora (``fedmedlora data prepare``).

Owns ``prepare_benchmark`` (corpora → sites × splits JSONL + the coordinator's validation set + statistics + the
manifest), the bundled sample's seeded selection and ``write_attribution``. The layout it writes is
``fedmedlora.benchmark``'s. Must not import torch, transformers, peft or flwr.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedmedlora.benchmark import (
    BENCHMARK_NAME,
    DEFAULT_SEED,
    MANIFEST,
    SAMPLE_NEW_SITE_DOCS,
    SAMPLE_SENTENCES,
    SERVER_SENTENCES_FULL,
    SERVER_SENTENCES_SAMPLE,
    SERVER_VALIDATION,
    SITE_ROLES,
    BenchmarkError,
)
from fedmedlora.benchmark_stats import Stats, server_summary
from fedmedlora.corpora import CORPUS_INFO, LABEL_SETS, read_corpus
from fedmedlora.jsonl import write_documents
from fedmedlora.schema import SPLITS, Document
from fedmedlora.splits import assign_splits, remove_cross_site_duplicates


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
        stats.server = server_summary(server)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    stats.write(out)
    write_attribution(out, sites, sample)
    return stats
