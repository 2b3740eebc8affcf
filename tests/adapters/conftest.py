"""Fixtures for adapter tests: a tiny random Llama model and a small byte-level BPE tokenizer, built offline.

Nothing here downloads anything. The tokenizer is trained on a few hundred characters of clinical-ish text,
has ChatML-style special tokens, a minimal chat template and **no pad token** (like SmolLM2), so the tests go
through the same ``prepare_tokenizer`` path (pad = EOS) as the real model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tinymodel import (  # noqa: F401  (re-exported for tests importing from conftest)
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    TRAINING_TEXT,
    FakeExample,
    build_tiny_model,
    build_tiny_tokenizer,
    save_tiny_model,
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny model + tokenizer folder (built once per session)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def tiny(tiny_model_dir):
    """A fresh ``(model, tokenizer)`` loaded through ``load_base_model`` on CPU in fp32."""
    from fedmedlora.lm.model import load_base_model

    return load_base_model(tiny_model_dir, device="cpu", dtype="float32")


@pytest.fixture
def examples() -> list[FakeExample]:
    return [
        FakeExample("Extract drugs: Started metformin 500 mg daily.", "metformin"),
        FakeExample("Extract drugs: Aspirin 81 mg daily was continued.", "Aspirin"),
        FakeExample("Extract problems: The patient denies chest pain.", "chest pain"),
        FakeExample("Extract problems: No fever, no cough.", "fever; cough"),
        FakeExample("Extract tests: CT of the abdomen showed no acute abnormality.", "CT"),
    ]
