"""Tests for fedmedlora.lm.generate with the tiny random Llama."""

from __future__ import annotations

import pytest
import torch

from fedmedlora.config import LoraConfig
from fedmedlora.lm.generate import generate, left_pad
from fedmedlora.lm.model import attach_lora, encode_prompt, load_base_model
from fedmedlora.lm.train import TrainSettings, train_local
from tinymodel import FakeExample

PROMPTS = [
    "Extract drugs: Started metformin 500 mg daily.",
    "hi",
    "Extract problems: The patient denies chest pain but reports mild shortness of breath.",
    "No fever.",
]


def _greedy_reference(model, tok, prompt, max_new_tokens):
    """Token-by-token argmax without padding or model.generate: the ground truth for one prompt."""
    ids = torch.tensor([encode_prompt(tok, prompt, True)])
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tok.decode(new, skip_special_tokens=True)


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_batched_matches_reference_and_keeps_order(tiny):
    model, tok = tiny
    expected = [_greedy_reference(model, tok, p, 6) for p in PROMPTS]
    batched = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=3, progress=False)
    assert batched == expected
    singles = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=1, progress=False)
    assert singles == expected
    assert generate(model, tok, [], max_new_tokens=6, progress=False) == []


def test_stops_at_eos_after_training(tiny_model_dir):
    """A model trained on 'prompt → answer<EOS>' reproduces exactly the answer, and only it."""
    model, tok = load_base_model(tiny_model_dir, device="cpu")
    model = attach_lora(model, LoraConfig(r=8, alpha=16), seed=0)
    examples = [FakeExample("Extract drugs: aspirin daily", "aspirin"), FakeExample("Extract tests: CT", "CT")]
    settings = TrainSettings(learning_rate=1e-2, batch_size=2, max_steps=60, warmup_ratio=0, schedule="constant")
    result = train_local(model, tok, examples, settings, progress=False)
    # (the tiny model's logits cannot get very sharp: tied 32-dim embeddings, so the loss plateaus near 0.85)
    assert result.losses[-1] < 0.3 * result.losses[0]
    out = generate(model, tok, [e.prompt for e in examples], max_new_tokens=20, batch_size=2, progress=False)
    assert out == ["aspirin", "CT"]


def test_bad_arguments(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="must be positive"):
        generate(model, tok, ["x"], max_new_tokens=0, progress=False)
