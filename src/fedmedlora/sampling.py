"""Which examples a setting trains on and which sentences it is scored on: every seeded selection in one place.

Owns: ``seeded_sample`` (the one seeded subsample, order kept), a site's instruction examples for training
(``site_examples``: empty RE answers thinned by ``data.re_empty_keep``, then capped by ``data.max_train_examples``),
the evaluation sample of a site (``eval_items`` / ``sample_eval``: every model, the LLM and the encoder baseline
alike, is scored on exactly the same sentences), and the coordinator's validation examples and round-evaluation
sentences (``server_validation_examples`` / ``server_round_items``).

Pure core: stdlib only, plus the schema and prompt builders. Anything with a ``load(site, split) -> [Document]``
method serves as the data source (``fedmedlora.benchmark.Benchmark`` or a node's site folder).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from fedmedlora.config import RunConfig
from fedmedlora.jsonl import read_documents
from fedmedlora.prompts import Example, build_examples
from fedmedlora.schema import Document, LabelSet, Sentence

T = TypeVar("T")

#: The coordinator-held labelled set: ``<data>/_server/validation.jsonl``.
SERVER_SPLIT_DIR = "_server"
SERVER_SPLIT = "validation"

EvalItem = tuple[Sentence, LabelSet]


class DocumentSource(Protocol):
    """What the selections read from: ``Benchmark`` or a node's site folder."""

    def load(self, site: str, split: str) -> list[Document]: ...


def seeded_sample(items: Sequence[T], cap: int | None, key: str | int) -> list[T]:
    """``cap`` of ``items`` drawn with ``random.Random(key)``, in their original order (all when ``cap`` is None
    or not smaller than ``len(items)``). The draw depends only on ``key`` and ``len(items)``."""
    if cap is None or len(items) <= cap:
        return list(items)
    keep = sorted(random.Random(key).sample(range(len(items)), cap))
    return [items[i] for i in keep]


def site_examples(source: DocumentSource, site: str, cfg: RunConfig, split: str = "train") -> list[Example]:
    """A site's instruction examples (its own label set): for training, RE examples with an empty answer thinned
    to ``data.re_empty_keep``; then capped by ``data.max_train_examples`` (both seeded)."""
    examples = build_examples(source.load(site, split), cfg.data.format, cfg.data.tasks)
    keep = cfg.data.re_empty_keep
    if keep < 1 and split == "train":
        rng = random.Random(f"{cfg.seed}:{site}:{split}:re-empty")
        examples = [ex for ex in examples if ex.task != "re" or ex.n_spans > 0 or rng.random() < keep]
    return seeded_sample(examples, cfg.data.max_train_examples, f"{cfg.seed}:{site}:{split}")


def eval_items(source: DocumentSource, site: str, cfg: RunConfig) -> tuple[list[Document], list[EvalItem]]:
    """The (seeded, capped) evaluation sentences of a site's ``eval.split``."""
    docs = source.load(site, cfg.eval.split)
    items = [(s, d.label_set) for d in docs for s in d.sentences]
    seed = cfg.seed if cfg.eval.sample_seed is None else cfg.eval.sample_seed
    return docs, sample_eval(items, cfg.eval.max_sentences, seed, site)


def sample_eval(items: list[T], cap: int | None, seed: int, site: str) -> list[T]:
    """The seeded evaluation sample of a site (``cap`` items in document order)."""
    return seeded_sample(items, cap, f"{seed}:{site}:eval")


def server_split_path(data_dir: str | Path) -> Path:
    """Where the coordinator's labelled validation set lives under a data folder."""
    return Path(data_dir) / SERVER_SPLIT_DIR / f"{SERVER_SPLIT}.jsonl"


def server_validation_examples(cfg: RunConfig, data_dir: str | Path) -> list[Example]:
    """Instruction examples of the coordinator-held labelled set ([] if none), capped by
    ``federation.server_val_max_examples`` (seeded)."""
    path = server_split_path(data_dir)
    if not path.is_file():
        return []
    examples = build_examples(read_documents(path), cfg.data.format, cfg.data.tasks)
    return seeded_sample(examples, cfg.federation.server_val_max_examples, f"{cfg.seed}:_server:validation")


def server_round_items(cfg: RunConfig, data_dir: str | Path) -> list[EvalItem]:
    """The ``federation.round_eval_sentences`` coordinator sentences scored after every round (seeded; [] when
    disabled or when the coordinator holds no labelled set)."""
    n = cfg.federation.round_eval_sentences
    path = server_split_path(data_dir)
    if n <= 0 or not path.is_file():
        return []
    items = [(s, d.label_set) for d in read_documents(path) for s in d.sentences]
    return seeded_sample(items, n, f"{cfg.seed}:_server:round-eval")
