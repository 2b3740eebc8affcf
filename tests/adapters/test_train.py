"""Tests for fedmedlora.lm.train with the tiny random Llama."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmedlora.config import LoraConfig
from fedmedlora.lm.adapter_io import AdapterMismatchError, get_adapter_arrays
from fedmedlora.lm.model import attach_lora, encode_prompt, encode_target, load_base_model
from fedmedlora.lm.train import (
    IGNORE_INDEX,
    TrainSettings,
    collate,
    count_supervised_tokens,
    encode_example,
    encode_examples,
    train_local,
    validation_loss,
)
from tinymodel import FakeExample

LORA = LoraConfig(r=8, alpha=16)
FAST = TrainSettings(learning_rate=1e-2, batch_size=2, max_steps=4, warmup_ratio=0.0, seed=7, max_length=128)


def _peft(tiny_model_dir, seed=0):
    model, tok = load_base_model(tiny_model_dir, device="cpu")
    return attach_lora(model, LORA, seed=seed), tok


def test_loss_decreases(tiny_model_dir, examples):
    model, tok = _peft(tiny_model_dir)
    settings = FAST.model_copy(update={"max_steps": 30, "schedule": "constant"})
    result = train_local(model, tok, examples[:3], settings, progress=False)
    assert result.steps == 30 and len(result.losses) == 30
    assert np.mean(result.losses[-5:]) < 0.5 * np.mean(result.losses[:5])
    assert result.train_loss == pytest.approx(np.mean(result.losses))
    assert result.num_examples == 3
    assert result.optimizer_state is None


def test_seeded_runs_are_identical(tiny_model_dir, examples):
    runs = []
    for _ in range(2):
        model, tok = _peft(tiny_model_dir, seed=0)
        runs.append(train_local(model, tok, examples, FAST, progress=False))
    assert runs[0].losses == runs[1].losses
    assert all(np.array_equal(runs[0].arrays[k], runs[1].arrays[k]) for k in runs[0].arrays)
    model, tok = _peft(tiny_model_dir, seed=0)
    other = train_local(model, tok, examples, FAST.model_copy(update={"seed": 8}), progress=False)
    assert other.losses != runs[0].losses  # the seed drives the shuffle


def test_only_lora_parameters_change(tiny_model_dir, examples):
    model, tok = _peft(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_local(model, tok, examples, FAST, progress=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "training changed nothing"
    assert all("lora_" in n for n in changed)
    base = [n for n in before if "lora_" not in n]
    assert base and all(torch.equal(dict(model.named_parameters())[n], before[n]) for n in base)


def test_continue_from_arrays(tiny_model_dir, examples):
    model, tok = _peft(tiny_model_dir, seed=0)
    first = train_local(model, tok, examples, FAST, progress=False)
    # a fresh model with a *different* LoRA init, continued from the first run's arrays
    fresh, tok2 = _peft(tiny_model_dir, seed=5)
    vl_start = validation_loss(fresh, tok2, examples, FAST, adapter_arrays=first.arrays)
    assert vl_start == pytest.approx(validation_loss(model, tok, examples, FAST), abs=1e-6)
    second = train_local(fresh, tok2, examples, FAST, adapter_arrays=first.arrays, progress=False)
    # same weights and same seed → the continued run equals continuing the original model
    reference = train_local(model, tok, examples, FAST, progress=False)
    assert second.losses == pytest.approx(reference.losses, abs=1e-6)
    assert second.losses[0] < first.losses[0]
    bad = dict(first.arrays)
    bad.pop(next(iter(bad)))
    with pytest.raises(AdapterMismatchError, match="missing"):
        train_local(fresh, tok2, examples, FAST, adapter_arrays=bad, progress=False)


def test_answer_only_labels(tiny_model_dir):
    _, tok = _peft(tiny_model_dir)
    settings = TrainSettings(max_length=128)
    ex_short = encode_example(tok, "Extract drugs: aspirin", "aspirin", settings)
    ex_long = encode_example(tok, "Extract problems: The patient denies chest pain.", "chest pain", settings)
    prompt_ids = encode_prompt(tok, "Extract drugs: aspirin", True)
    target_ids = encode_target(tok, "aspirin")
    assert target_ids[-1] == tok.eos_token_id
    assert ex_short.input_ids == prompt_ids + target_ids and ex_short.num_prompt_tokens == len(prompt_ids)

    batch = collate([ex_short, ex_long], tok.pad_token_id, "answer")
    n_short = len(ex_short.input_ids)
    labels, mask = batch["labels"], batch["attention_mask"]
    assert labels.shape == batch["input_ids"].shape == mask.shape
    # row 0: prompt masked, answer + EOS supervised, right padding masked (pad == EOS id here!)
    assert tok.pad_token_id == tok.eos_token_id
    assert labels[0, : len(prompt_ids)].eq(IGNORE_INDEX).all()
    assert labels[0, len(prompt_ids) : n_short].tolist() == target_ids
    assert labels[0, n_short:].eq(IGNORE_INDEX).all() and mask[0, n_short:].eq(0).all()
    assert mask[0, :n_short].eq(1).all()
    assert batch["input_ids"][0, n_short:].eq(tok.pad_token_id).all()
    # row 1 is the longest: no padding, EOS at the end is supervised
    assert mask[1].eq(1).all() and labels[1, -1].item() == tok.eos_token_id

    all_batch = collate([ex_short], tok.pad_token_id, "all")
    assert all_batch["labels"][0].tolist() == ex_short.input_ids


def test_count_supervised_tokens(tiny_model_dir, examples):
    _, tok = _peft(tiny_model_dir)
    settings = TrainSettings(max_length=128)
    expected = sum(len(encode_target(tok, e.target)) for e in examples)
    assert count_supervised_tokens(tok, examples, settings) == expected
    expected_all = sum(
        len(encode_prompt(tok, e.prompt, True)) + len(encode_target(tok, e.target)) - 1 for e in examples
    )
    assert count_supervised_tokens(tok, examples, settings.model_copy(update={"loss_on": "all"})) == expected_all


def test_num_train_tokens_matches_count(tiny_model_dir, examples):
    model, tok = _peft(tiny_model_dir)
    result = train_local(model, tok, examples, FAST, progress=False)
    assert result.num_train_tokens == count_supervised_tokens(tok, examples, FAST)
    assert result.num_seen_tokens > 0 and result.num_input_tokens > result.num_seen_tokens


def test_truncation_keeps_answer_and_counts(tiny_model_dir, caplog):
    _, tok = _peft(tiny_model_dir)
    long_prompt = "Extract drugs: " + "the patient was stable " * 20
    exs = [FakeExample(long_prompt, "aspirin"), FakeExample("short", "x " * 80), FakeExample("ok", "aspirin")]
    settings = TrainSettings(max_length=40)
    data = encode_examples(tok, exs, settings)
    assert (data.num_truncated, data.num_skipped, len(data.examples)) == (1, 1, 2)
    trunc = data.examples[0]
    assert trunc.truncated and len(trunc.input_ids) == 40
    assert trunc.input_ids[trunc.num_prompt_tokens :] == encode_target(tok, "aspirin")
    assert (
        trunc.input_ids[: trunc.num_prompt_tokens] == encode_prompt(tok, long_prompt, True)[-trunc.num_prompt_tokens :]
    )
    assert "1 skipped" in caplog.text
    with pytest.raises(ValueError, match="all 1 examples were skipped"):
        model, tok = _peft(tiny_model_dir)
        train_local(model, tok, [exs[1]], settings, progress=False)


def test_bad_examples_are_named(tiny_model_dir):
    model, tok = _peft(tiny_model_dir)
    with pytest.raises(ValueError, match="example 1: needs string fields"):
        encode_examples(tok, [FakeExample("a", "b"), FakeExample("a", None)], TrainSettings())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no examples"):
        train_local(model, tok, [], FAST, progress=False)


def test_optimizer_state_round_trip(tiny_model_dir, examples):
    settings = FAST.model_copy(update={"keep_optimizer_state": True, "max_steps": 2})
    model, tok = _peft(tiny_model_dir)
    first = train_local(model, tok, examples, settings, progress=False)
    state = first.optimizer_state
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    assert any(k.endswith("::exp_avg") for k in state) and any(k.endswith("::step") for k in state)
    with_state = train_local(model, tok, examples, settings, optimizer_state=state, progress=False)
    steps = [v.item() for k, v in with_state.optimizer_state.items() if k.endswith("::step")]
    assert set(steps) == {4.0}  # 2 restored + 2 new
    # without keep_optimizer_state the state is ignored
    model2, _ = _peft(tiny_model_dir)
    train_local(model2, tok, examples, settings, progress=False)
    ignored = train_local(
        model2, tok, examples, FAST.model_copy(update={"max_steps": 2}), optimizer_state=state, progress=False
    )
    assert ignored.optimizer_state is None
    assert ignored.losses != with_state.losses
    with pytest.raises(ValueError, match="unknown parameter"):
        train_local(model, tok, examples, settings, optimizer_state={"nope::exp_avg": torch.zeros(1)}, progress=False)


def test_validation_loss_matches_hf_loss(tiny_model_dir, examples):
    model, tok = _peft(tiny_model_dir)
    settings = TrainSettings(max_length=128, batch_size=2, loss_on="all")  # validation is answer-only anyway
    vl = validation_loss(model, tok, examples[:1], settings)
    ex = encode_example(tok, examples[0].prompt, examples[0].target, settings)
    batch = collate([ex], tok.pad_token_id, "answer")
    with torch.no_grad():
        hf = model(**batch).loss.item()
    assert vl == pytest.approx(hf, rel=1e-5)
    # token-weighted over several batches, unaffected by batch size
    vl_all = validation_loss(model, tok, examples, settings)
    vl_all_bs1 = validation_loss(model, tok, examples, settings.model_copy(update={"batch_size": 1}))
    assert vl_all == pytest.approx(vl_all_bs1, rel=1e-5)


def test_grad_accum_and_epochs(tiny_model_dir, examples):
    model, tok = _peft(tiny_model_dir)
    settings = TrainSettings(batch_size=2, grad_accum=2, epochs=2, max_length=128, learning_rate=1e-3)
    result = train_local(model, tok, examples, settings, progress=False)
    assert result.steps == 3  # 2 epochs × ceil(5/2) = 6 micro-batches, 2 per optimiser step
    # each epoch is one permutation: every example is seen exactly twice
    lengths = [len(ex.input_ids) for ex in encode_examples(tok, examples, settings).examples]
    assert result.num_input_tokens == 2 * sum(lengths)
    assert result.num_seen_tokens == 2 * result.num_train_tokens
    assert len(get_adapter_arrays(model)) == len(result.arrays)


def test_gradient_checkpointing_gives_the_same_losses(tiny_model_dir, examples):
    runs = []
    for checkpointing in (False, True):
        model, tok = _peft(tiny_model_dir)
        settings = FAST.model_copy(update={"gradient_checkpointing": checkpointing, "max_steps": 2})
        runs.append(train_local(model, tok, examples, settings, progress=False).losses)
        assert not getattr(model.base_model.model, "is_gradient_checkpointing", False)
    assert runs[0] == pytest.approx(runs[1], abs=1e-6)


def test_bf16_autocast_trains_fp32_lora_weights_close_to_fp32(tiny_model_dir, examples):
    """train.autocast=bf16 runs the matmuls in bf16 (the losses differ from fp32), keeps LoRA weights fp32, and
    learns about the same thing."""
    model, tok = _peft(tiny_model_dir, seed=0)
    fp32 = train_local(model, tok, examples, FAST, progress=False)
    model, tok = _peft(tiny_model_dir, seed=0)
    bf16 = train_local(model, tok, examples, FAST.model_copy(update={"autocast": "bf16"}), progress=False)
    assert bf16.losses != fp32.losses
    assert all(np.isfinite(bf16.losses))
    assert all(v.dtype == np.float32 for v in bf16.arrays.values())
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)
    for k in fp32.arrays:
        assert np.allclose(bf16.arrays[k], fp32.arrays[k], atol=0.05), k
