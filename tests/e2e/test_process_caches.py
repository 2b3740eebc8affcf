"""Two federations in one process share the loaded model, never each other's settings or examples.

A simulation, a study or a notebook runs several federations in one process; the model session and the sites'
instruction examples are cached across them. Each cache must be keyed on everything that changes what it holds:
these two tests failed when the session cache ignored ``data.format`` (the second federation's adapters were
labelled with the first one's prompt format, and ``evaluate`` trusts that label) and when the examples cache ignored
``data.re_empty_keep`` (the second federation trained on the first one's examples).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tinymodel import build_tiny_world, tiny_federation_config

pytestmark = pytest.mark.slow

SITES = ["alpha", "beta"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The tiny world, with sites that annotate negation: every entity is an RE head, none has a modifier, so every
    RE example has an empty answer (what ``data.re_empty_keep`` thins)."""
    from fedmedlora.jsonl import read_documents, write_documents
    from fedmedlora.schema import LabelSet

    root = build_tiny_world(tmp_path_factory.mktemp("cacheworld"), SITES, [2, 3])
    labels = LabelSet(modifiers=frozenset({"negation"}))
    for site in SITES:
        for split in ("train", "dev"):
            path = root / "bench" / site / f"{split}.jsonl"
            write_documents(path, [dataclasses.replace(d, label_set=labels) for d in read_documents(path)])
    return root


def _cfg(world: Path, *extra: str):
    return tiny_federation_config(world, "cache", SITES, *extra, rounds=1, min_sites=2)


def _run(world: Path, out: Path, cfg):
    from fedmedlora.federation.simulation import run_federation

    return run_federation(cfg, out, data_dir=world / "bench")


def test_second_federation_labels_its_adapters_with_its_own_prompt_format(world, tmp_path):
    from fedmedlora.federation.site import clear_caches
    from fedmedlora.lm.adapter_io import read_adapter_meta

    clear_caches()
    _run(world, tmp_path / "html", _cfg(world, "data.format=html"))
    _run(world, tmp_path / "json", _cfg(world, "data.format=json"))
    for name in ("round_0", "round_1", "final"):
        assert read_adapter_meta(tmp_path / "html" / "adapters" / name)["format"] == "html"
        assert read_adapter_meta(tmp_path / "json" / "adapters" / name)["format"] == "json", name


def test_second_federation_trains_on_its_own_examples(world, tmp_path):
    from fedmedlora.federation.site import clear_caches

    def cfg(keep: float):
        return _cfg(world, "data.tasks=[ner,re]", f"data.re_empty_keep={keep}", "federation.weight_by=examples")

    clear_caches()
    every = _run(world, tmp_path / "every", cfg(1.0)).rounds[1]["sizes"]
    after = _run(world, tmp_path / "after", cfg(0.0)).rounds[1]["sizes"]
    clear_caches()
    alone = _run(world, tmp_path / "alone", cfg(0.0)).rounds[1]["sizes"]
    assert every != alone, "the two settings must select different examples for this test to mean anything"
    assert after == alone
