"""Tests for fedmedlora.lm.model with the tiny random Llama (no downloads)."""

from __future__ import annotations

import pytest
import torch

from fedmedlora.config import LoraConfig
from fedmedlora.lm.model import (
    DEFAULT_LORA_TARGETS,
    ModelLoadError,
    attach_lora,
    encode_prompt,
    format_prompt,
    load_base_model,
    lora_target_modules,
    resolve_device,
    resolve_dtype,
)


def test_load_local_folder_prepares_tokenizer(tiny):
    model, tok = tiny
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tok.pad_token_id == tok.eos_token_id  # the fixture tokenizer has no pad token, like SmolLM2
    assert tok.padding_side == "left"
    assert model.config.pad_token_id == tok.pad_token_id
    assert next(model.parameters()).dtype == torch.float32
    assert not model.training


def test_load_bfloat16(tiny_model_dir):
    model, _ = load_base_model(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_unknown_hub_id_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"could not be found.*pass the folder"):
        load_base_model("no-such-org/no-such-model-xyz", device="cpu")


def test_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_base_model(tmp_path / "missing.gguf", device="cpu")
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_base_model(tmp_path, device="cpu")
    stray = tmp_path / "weights.bin"
    stray.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"not a \.gguf"):
        load_base_model(stray, device="cpu")


def test_4bit_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the CPU error path cannot be exercised")
    with pytest.raises(ModelLoadError, match="needs a CUDA GPU"):
        load_base_model("whatever", device="cpu", load_in_4bit=True)


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("int8", torch.device("cpu"))  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")


def test_lora_targets_table_and_fallback(tiny):
    model, _ = tiny
    assert lora_target_modules(model) == list(DEFAULT_LORA_TARGETS["llama"])

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj_in = torch.nn.Linear(4, 4)
            self.block = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
            self.lm_head = torch.nn.Linear(4, 8)

    assert lora_target_modules(Head()) == ["proj_in", "0"]


def test_attach_lora_only_lora_trainable(tiny):
    model, _ = tiny
    peft_model = attach_lora(model, LoraConfig(r=4, alpha=8), seed=0)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable, "LoRA parameters must be trainable"
    assert all("lora_A" in n or "lora_B" in n for n in trainable)
    # all 7 projections in both layers, A and B each
    assert len(trainable) == 2 * 7 * 2
    frozen = [n for n, p in peft_model.named_parameters() if not p.requires_grad]
    assert any("embed_tokens" in n for n in frozen)
    cfg = peft_model.peft_config["default"]
    assert cfg.r == 4 and cfg.lora_alpha == 8 and set(cfg.target_modules) == set(DEFAULT_LORA_TARGETS["llama"])


def test_attach_lora_seed_is_reproducible(tiny_model_dir):
    def lora_a(seed):
        model, _ = load_base_model(tiny_model_dir, device="cpu")
        pm = attach_lora(model, LoraConfig(r=4), seed=seed)
        return next(p for n, p in pm.named_parameters() if "lora_A" in n).detach().clone()

    assert torch.equal(lora_a(1), lora_a(1))
    assert not torch.equal(lora_a(1), lora_a(2))


def test_lora_settings_defaults_and_validation():
    s = LoraConfig()
    assert (s.r, s.alpha, s.dropout, s.target_modules) == (16, 64, 0.0, None)
    with pytest.raises(ValueError):
        LoraConfig(r=0)
    with pytest.raises(ValueError):
        LoraConfig(rank=8)  # type: ignore[call-arg]


def test_format_prompt_chat_and_raw(tiny):
    _, tok = tiny
    chat = format_prompt(tok, "Extract drugs: aspirin", True)
    assert chat == "<|im_start|>user\nExtract drugs: aspirin<|im_end|>\n<|im_start|>assistant\n"
    assert format_prompt(tok, "Extract drugs: aspirin", False) == "Extract drugs: aspirin"
    tok.chat_template = None
    assert format_prompt(tok, "Extract drugs: aspirin", True) == "Extract drugs: aspirin"


def test_encode_prompt_does_not_duplicate_special_tokens(tiny):
    _, tok = tiny
    ids = encode_prompt(tok, "hi", True)
    assert ids.count(tok.bos_token_id) == 2  # the two <|im_start|> of the template, no extra BOS
    assert tok.decode(ids) == format_prompt(tok, "hi", True)
