"""Local LoRA training at one site: ``train_local``, plus the two numbers the aggregators need.

Owns: ``TrainSettings``; turning examples (anything with ``.prompt`` and ``.target`` strings, e.g.
``fedmedlora.prompts.Example``) into token ids, labels and batches; the training loop; the optimiser-state
export/import as plain tensors; ``count_supervised_tokens`` (the Fed-MedLoRA aggregation weight) and
``validation_loss`` (the Fed-MedLoRA+ signal).

How an example becomes a training sequence:

* ``prompt`` is rendered by ``fedmedlora.lm.model.encode_prompt`` (chat template + generation prompt when asked and
  available) — the same function generation uses, so training and inference prompts are identical.
* ``target`` is tokenised on its own and **EOS is appended**, so the model learns to stop.
* ``loss_on="answer"`` (default) masks every prompt position with -100; ``"all"`` supervises prompt and answer
  (the reference code's behaviour). Padding positions are always -100. Masks are built from lengths, never by
  comparing ids with ``pad_token_id`` (pad may equal EOS).
* Batches are right-padded to their longest sequence; with ``prefix_sharing`` (default) a micro-batch is instead packed
  as one prefix tree (``fedmedlora.lm.packing``: same loss and gradients up to rounding, shared prefixes computed
  once).
* **Truncation keeps the whole answer**: a sequence longer than ``max_length`` loses tokens from the *left of the
  prompt* (the instructions' start; the sentence and the generation prompt sit at its end). If the answer + EOS
  alone does not fit in ``max_length - 1`` tokens the example is skipped. Both cases are counted in
  ``TrainResult`` and logged as a warning; nothing is dropped silently. Set ``max_length`` above your longest
  prompt + answer to avoid both.

The learning-rate schedule (with warm-up) restarts on every call, as in the reference code where the trainer is
rebuilt each round; AdamW moments are carried over only when ``keep_optimizer_state`` is set and the caller passes
back the previous ``optimizer_state``.

This is an adapter module: it imports torch and transformers. It must not import flwr or the CLI.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from pydantic import Field

from fedmedlora import progress as progress_events
from fedmedlora.config import RunConfig, TrainConfig
from fedmedlora.lm.adapter_io import get_adapter_arrays, set_adapter_arrays
from fedmedlora.lm.dp import DPReport, check_budget, dpsgd_steps, plan_dpsgd
from fedmedlora.lm.model import encode_prompt, encode_target, model_device
from fedmedlora.lm.packing import IGNORE_INDEX, PackedBatch, attention_kind, pack_shared_prefixes, packed_loss
from fedmedlora.privacy import LedgerEntry, PrivacyError, PrivacyLedger, record_ids

logger = logging.getLogger(__name__)


class PromptTarget(Protocol):
    """What training reads from an example (``fedmedlora.prompts.Example`` satisfies it)."""

    prompt: str
    target: str


class TrainSettings(TrainConfig):
    """Local training hyper-parameters: the ``train`` config section plus what a single call also needs.

    Every field of ``fedmedlora.config.TrainConfig`` (same names, defaults and bounds; see its field descriptions)
    plus:

    Attributes:
        seed: seeds python/numpy/torch and the data shuffle (default: the run config's default seed).
        use_chat_template: render prompts with the tokenizer's chat template when it has one.
        gradient_checkpointing: trade compute for memory (recomputes activations in the backward pass).
        dp_calls: under ``train.dp.target_epsilon``: how many calls the budget spans (a federation's rounds).
        dp_round, dp_run: written into the privacy ledger entry of this call.

    Notes on the inherited fields: ``max_steps`` is optimiser steps per ``train_local`` call (``None``: ``epochs``
    passes over the data); ``max_length`` is prompt + answer + EOS (see the module docstring on truncation);
    ``max_grad_norm=None`` disables clipping.
    """

    seed: int = Field(RunConfig.model_fields["seed"].default, ge=0)
    use_chat_template: bool = True
    gradient_checkpointing: bool = False
    dp_calls: int = Field(1, ge=1)
    dp_round: int = Field(0, ge=0)
    dp_run: str = ""

    @classmethod
    def from_config(cls, cfg: RunConfig, *, seed: int | None = None) -> TrainSettings:
        """The settings of a run: ``cfg.train`` with ``cfg.seed`` (or ``seed``) and ``cfg.model.use_chat_template``.
        The one place a ``RunConfig`` becomes training settings."""
        return cls(
            **cfg.train.model_dump(),
            seed=cfg.seed if seed is None else seed,
            use_chat_template=cfg.model.use_chat_template,
            dp_run=cfg.name,
        )


@dataclass(frozen=True)
class EncodedExample:
    """One training sequence: ``input_ids`` = prompt ids + answer ids + EOS.

    Attributes:
        input_ids: the token ids (unpadded).
        num_prompt_tokens: the first ``num_prompt_tokens`` ids are the (possibly truncated) prompt.
        truncated: the prompt was cut from the left to fit ``max_length``.
    """

    input_ids: list[int]
    num_prompt_tokens: int
    truncated: bool = False


@dataclass
class EncodedDataset:
    """The encoded examples plus what happened to the rest."""

    examples: list[EncodedExample]
    num_truncated: int = 0
    num_skipped: int = 0
    kept: list[int] = field(default_factory=list)  # index in the input of every encoded example


@dataclass
class TrainResult:
    """What ``train_local`` returns.

    Attributes:
        arrays: the adapter weights after training (``fedmedlora.lm.adapter_io`` layout, float32).
        num_examples: examples trained on (after skipping over-long ones).
        num_train_tokens: supervised tokens (labels != -100 after the causal shift) in one pass over those
            examples — the Fed-MedLoRA aggregation weight; equals ``count_supervised_tokens``.
        train_loss: mean of the per-step losses.
        losses: mean loss of each optimiser step.
        steps: optimiser steps taken.
        optimizer_state: AdamW state as plain tensors (``"<param name>::<field>"``) when
            ``keep_optimizer_state`` is set, else ``None``.
        seconds: wall time of the training loop.
        num_truncated: examples whose prompt was truncated from the left.
        num_skipped: examples skipped because the answer alone exceeds ``max_length``.
        num_seen_tokens: supervised tokens actually processed over all steps.
        num_input_tokens: non-padding tokens processed over all steps (for throughput).
        step_seconds: wall time of each optimiser step (for benchmarks; never assert on it).
        privacy: under ``train.dp``: the DP-SGD plan, the ledger after this call and ε so far.
    """

    arrays: dict[str, np.ndarray]
    num_examples: int
    num_train_tokens: int
    train_loss: float
    losses: list[float]
    steps: int
    optimizer_state: dict[str, torch.Tensor] | None
    seconds: float
    num_truncated: int = 0
    num_skipped: int = 0
    num_seen_tokens: int = 0
    num_input_tokens: int = 0
    step_seconds: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    privacy: DPReport | None = None


# --------------------------------------------------------------------------------------------------------------
# Encoding and batching
# --------------------------------------------------------------------------------------------------------------


def encode_example(tokenizer: Any, prompt: str, target: str, settings: TrainSettings) -> EncodedExample | None:
    """Encode one (prompt, target) pair; ``None`` when the answer + EOS alone does not fit ``max_length - 1``."""
    prompt_ids = encode_prompt(tokenizer, prompt, settings.use_chat_template)
    target_ids = encode_target(tokenizer, target)
    if len(prompt_ids) + len(target_ids) <= settings.max_length:
        return EncodedExample(prompt_ids + target_ids, len(prompt_ids))
    keep = settings.max_length - len(target_ids)
    if keep < 1:
        return None
    return EncodedExample(prompt_ids[-keep:] + target_ids, keep, truncated=True)


def encode_examples(tokenizer: Any, examples: Sequence[PromptTarget], settings: TrainSettings) -> EncodedDataset:
    """Encode all examples, counting (and logging) truncated and skipped ones.

    Raises:
        ValueError: an example lacks a string ``prompt`` or ``target`` (the message gives its index).
    """
    out = EncodedDataset(examples=[])
    for i, ex in enumerate(examples):
        prompt, target = getattr(ex, "prompt", None), getattr(ex, "target", None)
        if not isinstance(prompt, str) or not isinstance(target, str):
            raise ValueError(
                f"example {i}: needs string fields 'prompt' and 'target', got "
                f"prompt={type(prompt).__name__}, target={type(target).__name__}"
            )
        enc = encode_example(tokenizer, prompt, target, settings)
        if enc is None:
            out.num_skipped += 1
            continue
        out.num_truncated += enc.truncated
        out.examples.append(enc)
        out.kept.append(i)
    if out.num_truncated or out.num_skipped:
        logger.warning(
            "max_length=%d: %d of %d example(s) had their prompt truncated from the left, %d skipped because "
            "the answer alone is too long",
            settings.max_length,
            out.num_truncated,
            len(examples),
            out.num_skipped,
        )
    return out


def labels_for(example: EncodedExample, loss_on: Literal["answer", "all"]) -> list[int]:
    """Label ids of one unpadded sequence: prompt positions are -100 when ``loss_on == "answer"``."""
    if loss_on == "all":
        return list(example.input_ids)
    n = example.num_prompt_tokens
    return [IGNORE_INDEX] * n + example.input_ids[n:]


def supervised_tokens(example: EncodedExample, loss_on: Literal["answer", "all"]) -> int:
    """Positions with a loss after the causal shift (the first token is never predicted)."""
    labels = labels_for(example, loss_on)[1:]
    return sum(1 for y in labels if y != IGNORE_INDEX)


def collate(batch: Sequence[EncodedExample], pad_id: int, loss_on: Literal["answer", "all"]) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; masks come from lengths (pad may equal EOS)."""
    width = max(len(ex.input_ids) for ex in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ex in enumerate(batch):
        n = len(ex.input_ids)
        input_ids[row, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(labels_for(ex, loss_on), dtype=torch.long)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


#: A packed micro-batch attends over one (L, L) mask; beyond this multiple of the padded batch's attention size
#: (rows × width²) the padded batch is used (little sharing in a large batch would cost more than it saves).
MAX_PACKED_ATTENTION_RATIO = 4


def _pack(rows: Sequence[EncodedExample], loss_on: Literal["answer", "all"]) -> PackedBatch | None:
    """The micro-batch as a prefix tree (``fedmedlora.lm.packing``); ``None`` (use the padded batch) when no row
    has a supervised token (the padded path then gives Hugging Face's loss for that case) or when the packed
    attention would exceed ``MAX_PACKED_ATTENTION_RATIO`` × the padded batch's."""
    packed = pack_shared_prefixes([ex.input_ids for ex in rows], [labels_for(ex, loss_on) for ex in rows])
    width = max(len(ex.input_ids) for ex in rows)
    if packed.length**2 > MAX_PACKED_ATTENTION_RATIO * len(rows) * width**2:
        return None
    return packed if packed.targets.numel() else None


def _micro_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless seeded shuffled micro-batches of indices; each epoch is a fresh permutation."""
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


def count_supervised_tokens(tokenizer: Any, examples: Sequence[PromptTarget], settings: TrainSettings) -> int:
    """Supervised tokens in one pass over ``examples`` (the Fed-MedLoRA weight), computed without training.

    Uses exactly the encoding of ``train_local`` (chat template, EOS, truncation, ``loss_on``).
    """
    data = encode_examples(tokenizer, examples, settings)
    return sum(supervised_tokens(ex, settings.loss_on) for ex in data.examples)


# --------------------------------------------------------------------------------------------------------------
# Optimiser state as plain tensors
# --------------------------------------------------------------------------------------------------------------


def export_optimizer_state(optimizer: torch.optim.Optimizer, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """AdamW state as ``{"<param name>::<field>": tensor}`` (CPU copies; no pickles, no index coupling)."""
    out: dict[str, torch.Tensor] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            out[f"{names[index]}::{key}"] = tensor.detach().to("cpu").clone()
    return out


def import_optimizer_state(
    optimizer: torch.optim.Optimizer, names: Sequence[str], state: Mapping[str, torch.Tensor]
) -> None:
    """Restore state written by ``export_optimizer_state`` into ``optimizer`` (parameters matched by name).

    Raises:
        ValueError: the state names parameters this optimiser does not have.
    """
    index = {name: i for i, name in enumerate(names)}
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, value in state.items():
        name, _, field_name = key.rpartition("::")
        if name not in index:
            unknown.append(name)
            continue
        per_param.setdefault(index[name], {})[field_name] = value
    if unknown:
        raise ValueError(f"optimizer_state names {len(unknown)} unknown parameter(s), e.g. {sorted(unknown)[:3]}")
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": per_param, "param_groups": current["param_groups"]})


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _make_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings, total_steps: int) -> Any:
    from transformers import get_scheduler

    warmup = int(settings.warmup_ratio * total_steps)  # as the reference: int(0.05 × steps)
    name = "constant_with_warmup" if settings.schedule == "constant" else settings.schedule
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def _total_steps(num_examples: int, settings: TrainSettings) -> int:
    if settings.max_steps is not None:
        return settings.max_steps
    micro = math.ceil(settings.epochs * math.ceil(num_examples / settings.batch_size))
    return max(1, math.ceil(micro / settings.grad_accum))


def _progress(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar of ``total`` steps (off when ``enabled`` is false or a display took over, see
    ``fedmedlora.progress.bars``); each step is also reported as ``fedmedlora.progress.step``."""
    from tqdm.auto import tqdm

    progress_events.step(progress_events.TRAINING, 0, total)
    return _ReportingBar(tqdm(total=total, disable=not (enabled and progress_events.bars()), desc=desc, leave=False))


class _ReportingBar:
    """A tqdm bar whose ``update`` also reports the step count to ``fedmedlora.progress``."""

    def __init__(self, bar: Any) -> None:
        self.bar, self.done = bar, 0

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.done += n
        progress_events.step(progress_events.TRAINING, self.done, int(self.bar.total or 0))

    def set_postfix(self, **kwargs: Any) -> None:
        self.bar.set_postfix(**kwargs)

    def close(self) -> None:
        self.bar.close()


def train_local(
    model: Any,
    tokenizer: Any,
    examples: Sequence[PromptTarget],
    settings: TrainSettings | None = None,
    *,
    adapter_arrays: Mapping[str, np.ndarray] | None = None,
    optimizer_state: Mapping[str, torch.Tensor] | None = None,
    progress: bool = True,
    privacy_ledger: PrivacyLedger | None = None,
) -> TrainResult:
    """Train the LoRA adapter of ``model`` on ``examples`` and return the new adapter arrays.

    With ``settings.dp`` on, the steps are record-level DP-SGD (``fedmedlora.lm.dp``): the call first checks
    ``dp.max_epsilon`` against ``privacy_ledger`` plus this call, then trains and returns the extended ledger and
    ε in ``TrainResult.privacy``.

    Args:
        model: a ``PeftModel`` from ``fedmedlora.lm.model.attach_lora`` (trained in place).
        tokenizer: its tokenizer (from ``load_base_model``).
        examples: objects with ``.prompt`` and ``.target`` strings.
        settings: hyper-parameters (default ``TrainSettings()``).
        adapter_arrays: adapter weights to start from (e.g. the global adapter of the current round); loaded
            into ``model`` first, with full key/shape checks.
        optimizer_state: AdamW state from a previous call's ``TrainResult.optimizer_state``; used only when
            ``settings.keep_optimizer_state``.
        progress: show a progress bar.
        privacy_ledger: DP-SGD releases already made on these records (default: none).

    Returns:
        A ``TrainResult``.

    Raises:
        ValueError: no examples, no trainable parameters, or every example was skipped by truncation.
        fedmedlora.lm.adapter_io.AdapterMismatchError: ``adapter_arrays`` do not fit the model.
        fedmedlora.privacy.PrivacyBudgetExceeded: under DP, this call would pass ``dp.max_epsilon`` (nothing
            was trained).
        fedmedlora.privacy.PrivacyError: DP settings that cannot be honoured (checkpointing, autocast, ids).
    """
    settings = settings or TrainSettings()
    if len(examples) == 0:
        raise ValueError("train_local: no examples to train on")
    if adapter_arrays is not None:
        set_adapter_arrays(model, adapter_arrays)
    data = encode_examples(tokenizer, examples, settings)
    if not data.examples:
        raise ValueError(
            f"train_local: all {len(examples)} examples were skipped: their answers exceed "
            f"max_length={settings.max_length}"
        )
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("train_local: the model has no trainable parameters (call fedmedlora.lm.model.attach_lora)")
    names, params = [n for n, _ in named], [p for _, p in named]

    seed_everything(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    if settings.keep_optimizer_state and optimizer_state:
        import_optimizer_state(optimizer, names, optimizer_state)
    dp = settings.dp
    plan = None
    if dp.enabled:
        if settings.gradient_checkpointing or settings.autocast != "none":
            raise PrivacyError("train.dp: DP-SGD runs without gradient checkpointing and without autocast")
        kept = [examples[i] for i in data.kept]
        records = record_ids(kept, dp.unit)
        plan = plan_dpsgd(
            dp,
            num_records=max(records) + 1,
            batch_records=settings.batch_size * settings.grad_accum,
            max_steps=settings.max_steps,
            epochs=settings.epochs,
            calls=settings.dp_calls,
        )
        spent = privacy_ledger or PrivacyLedger()
        entry = LedgerEntry(
            plan.noise_multiplier, plan.sample_rate, plan.steps, round=settings.dp_round, run=settings.dp_run
        )
        after = spent.with_entry(entry)
        epsilon = check_budget(spent, after, plan.delta, dp.max_epsilon)
    total_steps = plan.steps if plan is not None else _total_steps(len(data.examples), settings)
    scheduler = _make_scheduler(optimizer, settings, total_steps)
    device = model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if plan is not None:
        return _train_dp(
            model,
            data,
            records,
            DPReport(plan, after, epsilon),
            settings,
            params,
            names,
            optimizer,
            scheduler,
            pad_id,
            device,
            progress,
        )
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    batches = _micro_batches(len(data.examples), settings.batch_size, generator)
    attention = attention_kind(model) if settings.prefix_sharing else None
    losses: list[float] = []
    step_seconds: list[float] = []
    seen_tokens = input_tokens = 0
    model.train()
    start = time.perf_counter()
    bar = _progress(total_steps, progress, "train")
    try:
        for _step in range(total_steps):
            step_start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for _ in range(settings.grad_accum):
                rows = [data.examples[i] for i in next(batches)]
                packed = _pack(rows, settings.loss_on) if attention is not None else None
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.autocast == "bf16"):
                    if packed is not None:
                        loss = packed_loss(model, packed, attention, device)
                        seen, seen_inputs = packed.targets.numel(), packed.num_row_tokens
                    else:
                        batch = {k: v.to(device) for k, v in collate(rows, pad_id, settings.loss_on).items()}
                        loss = model(**batch, use_cache=False).loss  # HF shifts labels, averages over labels != -100
                        seen = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                        seen_inputs = int(batch["attention_mask"].sum())
                (loss / settings.grad_accum).backward()
                step_loss += loss.item() / settings.grad_accum
                seen_tokens += seen
                input_tokens += seen_inputs
            if settings.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            losses.append(step_loss)
            step_seconds.append(time.perf_counter() - step_start)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
    finally:
        bar.close()
        model.eval()
        if settings.gradient_checkpointing:
            model.gradient_checkpointing_disable()
    seconds = time.perf_counter() - start

    return TrainResult(
        arrays=get_adapter_arrays(model),
        num_examples=len(data.examples),
        num_train_tokens=sum(supervised_tokens(ex, settings.loss_on) for ex in data.examples),
        train_loss=float(np.mean(losses)),
        losses=losses,
        steps=total_steps,
        optimizer_state=export_optimizer_state(optimizer, names) if settings.keep_optimizer_state else None,
        seconds=seconds,
        num_truncated=data.num_truncated,
        num_skipped=data.num_skipped,
        num_seen_tokens=seen_tokens,
        num_input_tokens=input_tokens,
        step_seconds=step_seconds,
    )


def _train_dp(
    model: Any,
    data: EncodedDataset,
    records: list[int],
    report: DPReport,
    settings: TrainSettings,
    params: list[torch.nn.Parameter],
    names: list[str],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    pad_id: int,
    device: torch.device,
    progress: bool,
) -> TrainResult:
    """The DP-SGD branch of ``train_local`` (``fedmedlora.lm.dp.dpsgd_steps``) and its ``TrainResult``;
    ``report`` holds the plan and the ledger/ε after this call, checked against the budget already."""
    plan = report.plan
    model.train()
    start = time.perf_counter()
    bar = _progress(plan.steps, progress, "train (DP-SGD)")

    def on_step(loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")

    try:
        stats = dpsgd_steps(
            model,
            params,
            optimizer,
            scheduler,
            plan,
            records,
            lambda idx: collate([data.examples[i] for i in idx], pad_id, settings.loss_on),
            micro_batch=settings.batch_size,
            seed=settings.seed if settings.dp.reproducible_noise else secrets.randbits(62),
            device=device,
            on_step=on_step,
        )
    finally:
        bar.close()
        model.eval()
    seconds = time.perf_counter() - start
    report.sampled_records, report.sampled_examples = stats.sampled_records, stats.sampled_examples
    finite = [x for x in stats.losses if math.isfinite(x)]
    return TrainResult(
        arrays=get_adapter_arrays(model),
        num_examples=len(data.examples),
        num_train_tokens=sum(supervised_tokens(ex, settings.loss_on) for ex in data.examples),
        train_loss=float(np.mean(finite)) if finite else float("nan"),
        losses=stats.losses,
        steps=plan.steps,
        optimizer_state=export_optimizer_state(optimizer, names) if settings.keep_optimizer_state else None,
        seconds=seconds,
        num_truncated=data.num_truncated,
        num_skipped=data.num_skipped,
        num_seen_tokens=stats.seen_tokens,
        num_input_tokens=stats.input_tokens,
        step_seconds=stats.step_seconds,
        privacy=report,
    )


@torch.no_grad()
def validation_loss(
    model: Any,
    tokenizer: Any,
    examples: Sequence[PromptTarget],
    settings: TrainSettings | None = None,
    adapter_arrays: Mapping[str, np.ndarray] | None = None,
) -> float:
    """Mean token cross-entropy over the answer tokens (+ EOS) of ``examples`` (the Fed-MedLoRA+ signal).

    Always answer-only, whatever ``settings.loss_on``; averaged over tokens, not examples. Uses the training
    encoding (chat template, truncation) and ``settings.batch_size``.

    Args:
        model: a ``PeftModel`` (or any causal LM).
        tokenizer: its tokenizer.
        examples: objects with ``.prompt`` and ``.target``.
        settings: encoding/batch settings (default ``TrainSettings()``).
        adapter_arrays: if given, loaded into ``model`` first (the model keeps them afterwards).

    Raises:
        ValueError: no example has a supervised token.
    """
    settings = (settings or TrainSettings()).model_copy(update={"loss_on": "answer"})
    if adapter_arrays is not None:
        set_adapter_arrays(model, adapter_arrays)
    data = encode_examples(tokenizer, examples, settings)
    if not data.examples:
        raise ValueError("validation_loss: no usable examples (empty, or all answers exceed max_length)")
    model.eval()
    device = model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    attention = attention_kind(model) if settings.prefix_sharing else None
    total_loss, total_tokens = 0.0, 0
    for start in range(0, len(data.examples), settings.batch_size):
        rows = data.examples[start : start + settings.batch_size]
        packed = _pack(rows, "answer") if attention is not None else None
        if packed is not None:
            total_loss += packed_loss(model, packed, attention, device, reduction="sum").item()
            total_tokens += packed.targets.numel()
            continue
        batch = collate(rows, pad_id, "answer")
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        shift_logits = logits[:, :-1].float()
        shift_labels = batch["labels"][:, 1:]
        total_loss += torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]),
            shift_labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        ).item()
        total_tokens += int((shift_labels != IGNORE_INDEX).sum())
    return total_loss / total_tokens


__all__ = [
    "IGNORE_INDEX",
    "EncodedExample",
    "TrainResult",
    "TrainSettings",
    "collate",
    "count_supervised_tokens",
    "encode_example",
    "encode_examples",
    "labels_for",
    "seed_everything",
    "train_local",
    "validation_loss",
]
