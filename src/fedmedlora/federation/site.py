"""What a site (hospital node) is: its name and data folder, its training seeds, its cached examples.

Owns: which site and data folder a node serves (read from ``context.node_config`` — never from a path sent by
the server), ``SiteFolder`` (``<data-dir>/<site>/<split>.jsonl``), the per-(site, round) training seed, and the
process-wide cache of a site's instruction examples (keyed on the whole ``data`` section, the seed, the folder,
the site and the split, so two federations in one process never share examples they would select differently).

Node config (``flower-supernode --node-config "site='chia' data-dir='/data/fedmedlora'"``):
    ``site``       the site name; required in deployment.
    ``data-dir``   folder holding ``<site>/train.jsonl`` and ``<site>/dev.jsonl``; required (never defaulted, so
                   a misconfigured hospital node fails instead of training on other data).
    Fallback (Ray simulation, which only sets ``partition-id``): site = ``federation.sites[partition-id]`` and
    data = ``data.benchmark`` or the bundled sample.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from flwr.app import Context

from fedmedlora.benchmark import default_benchmark_dir
from fedmedlora.config import RunConfig
from fedmedlora.jsonl import read_documents
from fedmedlora.lm.session import SESSIONS
from fedmedlora.prompts import Example
from fedmedlora.sampling import site_examples
from fedmedlora.schema import Document

ExamplesKey = tuple[str, str, str, str, int]
_EXAMPLES: dict[ExamplesKey, list[Example]] = {}


class SiteConfigError(ValueError):
    """The node does not say which site it serves, or the site's data folder is missing."""


class SiteFolder:
    """``<data-dir>/<site>/<split>.jsonl`` read with ``fedmedlora.jsonl`` (duck-types ``Benchmark.load``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def load(self, site: str, split: str) -> list[Document]:
        path = self.root / site / f"{split}.jsonl"
        if not path.is_file():
            raise SiteConfigError(f"site {site}: no {split} split at {path} (check the node's data-dir)")
        return read_documents(path)


def default_data_dir(cfg: RunConfig) -> Path:
    """``data.benchmark``, else the bundled sample."""
    return Path(cfg.data.benchmark) if cfg.data.benchmark else default_benchmark_dir()


def site_seed(seed: int, site: str, server_round: int) -> int:
    """Training seed of a site in a round: depends only on (run seed, site name, round), so resume reproduces."""
    return int(seed + 1000 * server_round + zlib.crc32(site.encode("utf-8")) % 1000)


def site_of(context: Context, cfg: RunConfig) -> tuple[str, Path]:
    """The site this node serves and its data folder, from ``context.node_config`` only.

    Raises:
        SiteConfigError: no ``site`` and no usable ``partition-id`` fallback.
    """
    nc = context.node_config
    site = nc.get("site")
    simulated = site is None and "partition-id" in nc
    if simulated:
        sites = cfg.federation.sites
        pid = int(nc["partition-id"])
        if not sites or not 0 <= pid < len(sites):
            raise SiteConfigError(
                f"node {context.node_id}: node_config has partition-id={pid} but no 'site', and "
                f"federation.sites={sites} cannot map it; start the node with --node-config \"site='<name>'\""
            )
        site = sites[pid]
    if not isinstance(site, str) or not site:
        raise SiteConfigError(
            f"node {context.node_id}: node_config lacks 'site' (got keys {sorted(nc)}); start the SuperNode with "
            "--node-config \"site='<name>' data-dir='<folder>'\""
        )
    data_dir = nc.get("data-dir")
    if data_dir:
        return site, Path(str(data_dir))
    if simulated:  # Ray simulation on one machine: the run's benchmark (or the bundled sample)
        return site, default_data_dir(cfg)
    raise SiteConfigError(
        f"site {site} (node {context.node_id}): node_config lacks 'data-dir', the folder holding "
        f"{site}/train.jsonl; start the SuperNode with --node-config \"site='{site}' data-dir='<folder>'\""
    )


def examples_key(cfg: RunConfig, data_dir: Path, site: str, split: str) -> ExamplesKey:
    """Everything the example selection reads: the folder, site, split, the whole ``data`` section and the seed."""
    return (str(data_dir), site, split, cfg.data.model_dump_json(), cfg.seed)


def cached_site_examples(cfg: RunConfig, data_dir: Path, site: str, split: str) -> list[Example]:
    """The site's instruction examples (same selection and cap as the non-federated settings), cached."""
    key = examples_key(cfg, data_dir, site, split)
    if key not in _EXAMPLES:
        examples = site_examples(SiteFolder(data_dir), site, cfg, split)
        if not examples:
            raise SiteConfigError(f"site {site}: the {split} split at {data_dir / site} yields no examples")
        _EXAMPLES[key] = examples
    return _EXAMPLES[key]


def clear_caches() -> None:
    """Drop cached models and examples (tests; freeing memory)."""
    SESSIONS.clear()
    _EXAMPLES.clear()
