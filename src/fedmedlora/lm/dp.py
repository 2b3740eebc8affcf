"""Record-level DP-SGD for the LoRA adapter (Opacus): per-record clipping, Poisson sampling, RDP accounting.

Owns: ``DPPlan`` (noise multiplier, sampling rate and steps of one training call, calibrated from
``train.dp``), ``epsilon_of`` (a ``PrivacyLedger`` → ε with Opacus's RDP accountant), ``check_budget`` (refuse
before training when ``max_epsilon`` would be exceeded) and ``dpsgd_steps``, the training loop ``train_local``
runs when ``train.dp`` is on.

One DP-SGD step, with R records (``fedmedlora.privacy.record_ids``), expected batch ``B`` records, ``q = B / R``:

1. every record joins the step independently with probability ``q`` (Poisson sampling, a seeded generator);
2. the examples of the sampled records go through the model in micro-batches of ``train.batch_size``;
   Opacus's ``GradSampleModule`` (hooks mode) gives each example's gradient of its own mean answer-token
   cross-entropy, and the gradients of one record's examples are summed into that record's gradient;
3. Opacus's ``DPOptimizer`` clips every record's gradient (over all LoRA tensors) to ``max_grad_norm``, sums,
   adds ``N(0, (σ·C)²)`` and divides by ``B``, then AdamW steps. An empty sample still takes a (noise-only) step.

Only the LoRA tensors are trainable (the base model is frozen), so only they get per-sample gradients. Gradient
checkpointing is refused: with it, Opacus's hooks see no per-sample gradient for most LoRA tensors. The Opacus
module is detached after every call, so the shared session model is left as it was found.

Caveats, stated in docs/privacy.md: the noise comes from torch's seeded PRNG (reproducible, not a CSPRNG;
Opacus's ``secure_mode`` needs torchcsprng); what the site reports besides the adapter (token counts) is not
covered.

Layer: ``fedmedlora.lm`` (torch, opacus); must not import flwr.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedmedlora.config import DPSGDConfig
from fedmedlora.lm.packing import IGNORE_INDEX
from fedmedlora.privacy import PrivacyBudgetExceeded, PrivacyError, PrivacyLedger


@dataclass(frozen=True)
class DPPlan:
    """The DP-SGD parameters of one training call."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    expected_records: int
    num_records: int
    max_grad_norm: float
    delta: float


@dataclass
class DPReport:
    """What a DP-SGD call spent: the plan, the ledger after it, ε at ``delta`` so far, and per-step counts."""

    plan: DPPlan
    ledger: PrivacyLedger
    epsilon: float
    sampled_records: list[int] = field(default_factory=list)
    sampled_examples: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        p = self.plan
        return {
            "epsilon": self.epsilon,
            "delta": p.delta,
            "noise_multiplier": p.noise_multiplier,
            "sample_rate": p.sample_rate,
            "steps": p.steps,
            "total_steps": self.ledger.steps,
            "records": p.num_records,
            "expected_records_per_step": p.expected_records,
            "max_grad_norm": p.max_grad_norm,
            "mean_sampled_records": sum(self.sampled_records) / max(1, len(self.sampled_records)),
        }


def epsilon_of(ledger: PrivacyLedger, delta: float) -> float:
    """ε of everything in ``ledger`` at ``delta`` (Opacus ``RDPAccountant``; 0 for an empty ledger)."""
    from opacus.accountants import RDPAccountant

    if not ledger.entries or ledger.steps == 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = ledger.history()
    return float(accountant.get_epsilon(delta=delta))


def plan_dpsgd(
    dp: DPSGDConfig, *, num_records: int, batch_records: int, max_steps: int | None, epochs: float, calls: int = 1
) -> DPPlan:
    """The noise multiplier, Poisson rate and steps of one call.

    ``target_epsilon`` calibrates σ so that ``calls`` such calls (a federation's rounds) spend exactly that ε;
    otherwise ``noise_multiplier`` is used as given.

    Raises:
        PrivacyError: no records, or a target ε no noise level reaches.
    """
    if num_records < 1:
        raise PrivacyError("train.dp: no training records")
    expected = dp.records_per_step or batch_records
    q = min(1.0, expected / num_records)
    steps = max_steps if max_steps is not None else max(1, math.ceil(epochs / q))
    if dp.noise_multiplier is not None:
        sigma = float(dp.noise_multiplier)
    elif dp.target_epsilon is not None:
        from opacus.accountants.utils import get_noise_multiplier

        try:
            with warnings.catch_warnings():  # large trial σ in the search reach the largest RDP order: harmless
                warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
                sigma = float(
                    get_noise_multiplier(
                        target_epsilon=dp.target_epsilon,
                        target_delta=dp.delta,
                        sample_rate=q,
                        steps=steps * max(1, calls),
                        accountant="rdp",
                        epsilon_tolerance=0.01,
                    )
                )
        except ValueError as e:
            raise PrivacyError(f"train.dp.target_epsilon={dp.target_epsilon}: {e}") from None
    else:
        raise PrivacyError("train.dp: set noise_multiplier or target_epsilon")
    return DPPlan(sigma, q, steps, expected, num_records, dp.max_grad_norm, dp.delta)


def check_budget(
    ledger: PrivacyLedger, after: PrivacyLedger, delta: float, max_epsilon: float | None, who: str = "this site"
) -> float:
    """ε of ``after`` (``ledger`` plus this call's entry); raises before anything is trained when it would pass
    ``max_epsilon``.

    Raises:
        PrivacyBudgetExceeded: ε after the call would exceed ``max_epsilon`` (the message gives both values).
    """
    eps_after = epsilon_of(after, delta)
    if max_epsilon is not None and eps_after > max_epsilon:
        spent = epsilon_of(ledger, delta)
        raise PrivacyBudgetExceeded(
            f"{who}: privacy budget: ε would reach {eps_after:.3f} > train.dp.max_epsilon={max_epsilon} "
            f"(spent so far {spent:.3f} at δ={delta}); not training",
            spent,
            eps_after,
        )
    return eps_after


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each row over its supervised positions (``[batch]``)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    token_loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    mask = (shift_labels != IGNORE_INDEX).to(token_loss.dtype)
    return (token_loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


@dataclass
class DPStepStats:
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    sampled_records: list[int] = field(default_factory=list)
    sampled_examples: list[int] = field(default_factory=list)
    seen_tokens: int = 0
    input_tokens: int = 0


def dpsgd_steps(
    model: Any,
    params: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    plan: DPPlan,
    records: Sequence[int],
    collate_fn: Callable[[list[int]], dict[str, torch.Tensor]],
    *,
    micro_batch: int,
    seed: int,
    device: torch.device,
    on_step: Callable[[float], None] | None = None,
) -> DPStepStats:
    """Run ``plan.steps`` DP-SGD steps (see the module docstring); ``optimizer`` is the plain AdamW of the params.

    Args:
        model: the PEFT model (only LoRA tensors trainable); wrapped in a ``GradSampleModule`` for the call.
        params: its trainable parameters, in optimiser order.
        optimizer: the AdamW over ``params`` (wrapped in Opacus's ``DPOptimizer`` here).
        scheduler: learning-rate scheduler of ``optimizer`` (stepped once per step).
        plan: from ``plan_dpsgd``.
        records: record index of every encoded example.
        collate_fn: example indices → a batch (``input_ids``, ``attention_mask``, ``labels``).
        micro_batch: examples per forward/backward pass.
        seed: seeds the Poisson sampling and the noise.
        device: where batches go.
        on_step: called with each step's loss (progress bars).
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    num_records = max(records) + 1 if records else 0
    by_record: list[list[int]] = [[] for _ in range(num_records)]
    for i, r in enumerate(records):
        by_record[r].append(i)
    sampler = torch.Generator().manual_seed(seed)
    noise = torch.Generator(device=device).manual_seed(seed + 1)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=False)
    dp_opt = DPOptimizer(
        optimizer,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        expected_batch_size=plan.expected_records,
        loss_reduction="mean",
        generator=noise,
    )
    stats = DPStepStats()
    # Opacus's hooks fire on module outputs because the frozen base takes no input gradient: expected here
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        try:
            for _ in range(plan.steps):
                start = time.perf_counter()
                dp_opt.zero_grad(set_to_none=True)
                chosen = (torch.rand(num_records, generator=sampler) < plan.sample_rate).nonzero().flatten().tolist()
                slot = {r: k for k, r in enumerate(chosen)}
                summed = [torch.zeros((len(chosen), *p.shape), dtype=p.dtype, device=p.device) for p in params]
                examples = [i for r in chosen for i in by_record[r]]
                total_loss = 0.0
                for begin in range(0, len(examples), micro_batch):
                    chunk = examples[begin : begin + micro_batch]
                    batch = {k: v.to(device) for k, v in collate_fn(chunk).items()}
                    out = gsm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
                    losses = per_example_loss(out.logits, batch["labels"])
                    losses.sum().backward()
                    rows = torch.tensor([slot[records[i]] for i in chunk], device=device)
                    for buf, p in zip(summed, params, strict=True):
                        if p.grad_sample is None:
                            raise PrivacyError(
                                "DP-SGD: a LoRA tensor got no per-sample gradient (is gradient checkpointing on?)"
                            )
                        buf.index_add_(0, rows, p.grad_sample.to(buf.dtype))
                        p.grad_sample = None
                        p.grad = None
                    total_loss += float(losses.detach().sum())
                    stats.seen_tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                    stats.input_tokens += int(batch["attention_mask"].sum())
                for buf, p in zip(summed, params, strict=True):
                    p.grad_sample = buf
                dp_opt.step()
                scheduler.step()
                step_loss = total_loss / len(examples) if examples else float("nan")
                stats.losses.append(step_loss)
                stats.sampled_records.append(len(chosen))
                stats.sampled_examples.append(len(examples))
                stats.step_seconds.append(time.perf_counter() - start)
                if on_step is not None:
                    on_step(step_loss)
        finally:
            dp_opt.zero_grad(set_to_none=True)
            gsm.remove_hooks()
            for p in params:
                for attr in ("grad_sample", "summed_grad", "_processed"):
                    if hasattr(p, attr):
                        delattr(p, attr)
    return stats


__all__ = [
    "DPPlan",
    "DPReport",
    "check_budget",
    "dpsgd_steps",
    "epsilon_of",
    "per_example_loss",
    "plan_dpsgd",
]
