"""Tests for fedmedlora.lm.prepack (oneDNN linear layers with packed weights) with the tiny random Llama."""

from __future__ import annotations

import pytest
import torch

from fedmedlora.config import LoraConfig
from fedmedlora.lm.generate import generate
from fedmedlora.lm.model import attach_lora
from fedmedlora.lm.prepack import can_pack, packed_linears

pytestmark = pytest.mark.skipif(not can_pack(), reason="this PyTorch build has no oneDNN linear")


def _linears(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def test_packed_block_reproduces_every_linear_and_restores_the_model(tiny):
    model, tok = tiny
    model.eval()
    ids = torch.tensor([tok("Extract drugs: Started metformin 500 mg daily.")["input_ids"]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    n_linear = len(_linears(model))
    with torch.no_grad(), packed_linears(model) as n:
        assert n == n_linear > 0
        assert all("forward" in m.__dict__ for m in _linears(model))
        packed = model(input_ids=ids).logits
        x = torch.randn(5, 3, model.config.hidden_size)
        for layer in _linears(model):
            if layer.in_features == model.config.hidden_size:
                torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    torch.testing.assert_close(packed, before, rtol=1e-4, atol=1e-5)
    assert not any("forward" in m.__dict__ for m in _linears(model))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)  # the unpacked path again, bit for bit


def test_packed_block_falls_through_with_grad_or_another_dtype(tiny):
    model, _ = tiny
    layer = _linears(model)[0]
    x = torch.randn(4, layer.in_features, requires_grad=True)
    with packed_linears(model):
        y = layer(x)  # grad enabled: the layer's own forward, so backward works
        y.sum().backward()
        assert x.grad is not None
        torch.testing.assert_close(x.grad, layer.weight.sum(0).expand_as(x))
    with packed_linears(model, enabled=False) as n:
        assert n == 0
    model.to(torch.bfloat16)
    with packed_linears(model) as n:
        assert n == 0  # only fp32 weights are packed


def test_no_packing_when_the_copy_would_not_fit(tiny, monkeypatch):
    import psutil

    model, _ = tiny
    with packed_linears(model) as n:
        assert n > 0
    free = type("Mem", (), {"available": 1024})()  # 1 kB available: the tiny model's weights do not fit twice
    monkeypatch.setattr(psutil, "virtual_memory", lambda: free)
    with packed_linears(model) as n:
        assert n == 0
        assert not any("forward" in m.__dict__ for m in _linears(model))


def test_generate_with_packed_weights_answers_like_without(tiny):
    model, tok = tiny
    model = attach_lora(model, LoraConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"]), seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a non-trivial adapter, as after training
    prompts = [
        "Extract drugs: Started metformin 500 mg daily.",
        "Extract problems: The patient denies chest pain but reports mild shortness of breath.",
        "No fever.",
        "hi",
    ]
    base_linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in n]
    with torch.no_grad(), packed_linears(model) as n:
        assert n == len(base_linears)  # the rank-r LoRA factors stay as they are
    kw = {"max_new_tokens": 24, "batch_size": 3, "progress": False}
    unpacked = generate(model, tok, prompts, packed_weights=False, **kw)
    assert generate(model, tok, prompts, packed_weights=True, **kw) == unpacked
    assert not any("forward" in m.__dict__ for m in _linears(model))  # restored after generate
