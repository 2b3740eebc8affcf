"""Record-level DP-SGD (fedmedlora.lm.dp + train_local under train.dp) on the tiny random Llama.

The per-sample gradients Opacus computes for the PEFT LoRA tensors are checked against plain autograd (upstream
opacus#820 reports silently corrupted LoRA updates with some peft versions); a DP step is checked against a
hand-made clipped, summed step; the accountant against dp-accounting.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmedlora.config import DPSGDConfig, LoraConfig
from fedmedlora.lm.adapter_io import get_adapter_arrays
from fedmedlora.lm.dp import DPPlan, dpsgd_steps, epsilon_of, per_example_loss, plan_dpsgd
from fedmedlora.lm.model import attach_lora, load_base_model
from fedmedlora.lm.train import TrainSettings, collate, encode_examples, train_local
from fedmedlora.privacy import LedgerEntry, PrivacyBudgetExceeded, PrivacyError, PrivacyLedger, record_ids
from tinymodel import FakeExample

LORA = LoraConfig(r=4, alpha=8)
SETTINGS = TrainSettings(learning_rate=1e-2, batch_size=2, max_steps=3, warmup_ratio=0.0, seed=5, max_length=128)

EXAMPLES = [
    FakeExample("Find problems: The patient denies chest pain.", '["chest pain"]', sentence_id="d1:0"),
    FakeExample("Find drugs: Started metformin 500 mg daily.", '["metformin"]', sentence_id="d1:1"),
    FakeExample("Find tests: CT of the abdomen was normal.", '["CT"]', sentence_id="d2:0"),
    FakeExample("Find problems: No fever, no cough.", '["fever", "cough"]', sentence_id="d3:0"),
]


def _peft(tiny_model_dir, seed=0):
    model, tok = load_base_model(tiny_model_dir, device="cpu", dtype="float32")
    model = attach_lora(model, LORA, seed=seed)
    with torch.no_grad():  # LoRA B starts at 0; give it values so A's gradient is not zero either
        g = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model, tok


def _trainable(model):
    return [p for _, p in model.named_parameters() if p.requires_grad]


def _grads_of(model, tok, examples, settings=SETTINGS):
    """Plain autograd gradient of sum(per-example mean losses) over ``examples`` (one batch)."""
    data = encode_examples(tok, examples, settings)
    batch = collate(data.examples, tok.pad_token_id, "answer")
    params = _trainable(model)
    for p in params:
        p.grad = None
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    per_example_loss(out.logits, batch["labels"]).sum().backward()
    grads = [p.grad.detach().clone() for p in params]
    for p in params:
        p.grad = None
    return grads


def test_per_example_loss_matches_hf_loss_for_one_row(tiny_model_dir):
    model, tok = _peft(tiny_model_dir)
    data = encode_examples(tok, EXAMPLES[:1], SETTINGS)
    batch = collate(data.examples, tok.pad_token_id, "answer")
    out = model(**batch, use_cache=False)
    assert per_example_loss(out.logits, batch["labels"]).item() == pytest.approx(out.loss.item(), rel=1e-5)


def test_opacus_per_sample_gradients_equal_autograd_per_example(tiny_model_dir):
    from opacus import GradSampleModule

    model, tok = _peft(tiny_model_dir)
    expected = [_grads_of(model, tok, [ex]) for ex in EXAMPLES]
    data = encode_examples(tok, EXAMPLES, SETTINGS)
    batch = collate(data.examples, tok.pad_token_id, "answer")
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=False)
    try:
        out = gsm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        per_example_loss(out.logits, batch["labels"]).sum().backward()
        params = _trainable(model)
        assert all(p.grad_sample is not None for p in params), "a LoRA tensor got no per-sample gradient"
        for k, p in enumerate(params):
            for i in range(len(EXAMPLES)):
                torch.testing.assert_close(p.grad_sample[i], expected[i][k], rtol=1e-4, atol=1e-6)
    finally:
        gsm.remove_hooks()


@pytest.mark.parametrize("binding", [True, False], ids=["clip-binds", "infinite-clip"])
def test_dp_step_is_the_clipped_sum_of_record_gradients(tiny_model_dir, binding):
    """One step, every record sampled, no noise, SGD lr 1: the update is −Σ_r clip(g_r) / B, where g_r sums the
    gradients of the record's examples (d1 has two sentences). With an infinite clip it is the plain step."""
    model, tok = _peft(tiny_model_dir)
    records = record_ids(EXAMPLES, "document")
    assert records == [0, 0, 1, 2]
    per_record = [
        _grads_of(model, tok, [ex for ex, r in zip(EXAMPLES, records, strict=True) if r == rec]) for rec in range(3)
    ]
    clip = 0.5 * min(math.sqrt(sum(float(g.square().sum()) for g in grads)) for grads in per_record) if binding else 1e9
    expected_update = []
    for k in range(len(per_record[0])):
        total = torch.zeros_like(per_record[0][k])
        for grads in per_record:
            norm = math.sqrt(sum(float(g.square().sum()) for g in grads))
            total += grads[k] * min(1.0, clip / (norm + 1e-6))
        expected_update.append(-total / 3)
    params = _trainable(model)
    before = [p.detach().clone() for p in params]
    data = encode_examples(tok, EXAMPLES, SETTINGS)
    opt = torch.optim.SGD(params, lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    plan = DPPlan(0.0, 1.0, 1, 3, 3, clip, 1e-5)
    stats = dpsgd_steps(
        model,
        params,
        opt,
        sched,
        plan,
        records,
        lambda idx: collate([data.examples[i] for i in idx], tok.pad_token_id, "answer"),
        micro_batch=3,  # d1's two examples land in one micro-batch, d3 in the next: both paths are used
        seed=0,
        device=torch.device("cpu"),
    )
    assert stats.sampled_records == [3]
    for p, b, u in zip(params, before, expected_update, strict=True):
        torch.testing.assert_close(p.detach() - b, u, rtol=1e-4, atol=1e-6)
    assert all(not hasattr(p, "grad_sample") for p in params)


def test_epsilon_matches_dp_accounting():
    from dp_accounting import dp_event, rdp

    ledger = PrivacyLedger([LedgerEntry(1.1, 0.01, 1000), LedgerEntry(0.8, 0.05, 30)])
    accountant = rdp.RdpAccountant()
    for e in ledger.entries:
        accountant.compose(
            dp_event.PoissonSampledDpEvent(e.sample_rate, dp_event.GaussianDpEvent(e.noise_multiplier)), e.steps
        )
    assert epsilon_of(ledger, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=0.02)
    assert epsilon_of(PrivacyLedger(), 1e-5) == 0.0


def test_plan_calibrates_to_the_target_over_all_calls():
    dp = DPSGDConfig(target_epsilon=3.0, delta=1e-5)
    plan = plan_dpsgd(dp, num_records=40, batch_records=4, max_steps=10, epochs=1.0, calls=3)
    assert plan.sample_rate == pytest.approx(0.1) and plan.steps == 10
    ledger = PrivacyLedger([LedgerEntry(plan.noise_multiplier, plan.sample_rate, plan.steps)] * 3)
    assert epsilon_of(ledger, 1e-5) == pytest.approx(3.0, abs=0.05)
    by_epochs = plan_dpsgd(DPSGDConfig(noise_multiplier=1.0), num_records=40, batch_records=4, max_steps=None, epochs=2)
    assert by_epochs.steps == 20 and by_epochs.noise_multiplier == 1.0


def test_train_local_under_dp_reports_and_extends_the_ledger(tiny_model_dir):
    model, tok = _peft(tiny_model_dir)
    settings = SETTINGS.model_copy(update={"dp": DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0)})
    first = train_local(model, tok, EXAMPLES, settings, progress=False)
    assert first.privacy is not None and first.steps == 3
    assert first.privacy.plan.num_records == 3 and first.privacy.plan.sample_rate == pytest.approx(2 / 3)
    assert len(first.privacy.ledger.entries) == 1 and first.privacy.epsilon > 0
    second = train_local(model, tok, EXAMPLES, settings, progress=False, privacy_ledger=first.privacy.ledger)
    assert len(second.privacy.ledger.entries) == 2 and second.privacy.epsilon > first.privacy.epsilon
    assert second.privacy.epsilon == pytest.approx(epsilon_of(second.privacy.ledger, 1e-5))


def test_dp_training_is_seeded_and_noise_matters(tiny_model_dir):
    def run(sigma, seed=5, reproducible=True):
        model, tok = _peft(tiny_model_dir)
        dp = DPSGDConfig(noise_multiplier=sigma, max_grad_norm=1.0, reproducible_noise=reproducible)
        s = SETTINGS.model_copy(update={"dp": dp, "seed": seed})
        return train_local(model, tok, EXAMPLES, s, progress=False).arrays

    a, b, c = run(1.0), run(1.0), run(5.0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.allclose(a[k], c[k]) for k in a)
    # the default draws noise from secret entropy: the run seed does not reproduce (nor remove) it
    d, e = run(1.0, reproducible=False), run(1.0, reproducible=False)
    assert any(not np.array_equal(d[k], e[k]) for k in d)


def test_max_epsilon_refuses_before_training(tiny_model_dir):
    model, tok = _peft(tiny_model_dir)
    before = get_adapter_arrays(model)
    dp = DPSGDConfig(noise_multiplier=0.5, max_epsilon=0.1)
    with pytest.raises(PrivacyBudgetExceeded, match=r"max_epsilon=0\.1") as info:
        train_local(model, tok, EXAMPLES, SETTINGS.model_copy(update={"dp": dp}), progress=False)
    assert info.value.epsilon_after > 0.1 and info.value.epsilon_spent == 0.0
    after = get_adapter_arrays(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_dp_leaves_the_model_usable_for_plain_training(tiny_model_dir):
    """Hooks are removed: plain training after a DP call equals plain training on a model that never saw DP."""
    model, tok = _peft(tiny_model_dir)
    start = get_adapter_arrays(model)
    train_local(
        model, tok, EXAMPLES, SETTINGS.model_copy(update={"dp": DPSGDConfig(noise_multiplier=1.0)}), progress=False
    )
    after_dp = train_local(model, tok, EXAMPLES, SETTINGS, adapter_arrays=start, progress=False)
    fresh, tok2 = _peft(tiny_model_dir)
    plain = train_local(fresh, tok2, EXAMPLES, SETTINGS, adapter_arrays=start, progress=False)
    assert after_dp.losses == pytest.approx(plain.losses, rel=1e-5)


def test_dp_refuses_checkpointing_and_examples_without_ids(tiny_model_dir):
    model, tok = _peft(tiny_model_dir)
    dp = DPSGDConfig(noise_multiplier=1.0)
    with pytest.raises(PrivacyError, match="checkpointing"):
        train_local(model, tok, EXAMPLES, SETTINGS.model_copy(update={"dp": dp, "gradient_checkpointing": True}))
    bare = [FakeExample(ex.prompt, ex.target, sentence_id="") for ex in EXAMPLES]
    with pytest.raises(PrivacyError, match="example 0"):
        train_local(model, tok, bare, SETTINGS.model_copy(update={"dp": dp}), progress=False)
