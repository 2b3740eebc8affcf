"""Batched greedy generation for a list of prompts: shared-prefix KV cache, early stop, finished rows dropped.

Owns: ``generate`` (the decoder every evaluation and extraction uses) and ``generate_hf`` (the same prompts through
plain ``model.generate``: the reference the tests and ``bench/generate_throughput.py`` compare against).

How ``generate`` saves work without changing greedy semantics:

* **Shared prefix, computed once.** Prompts are grouped by their instruction (``prompts.Prompt.instruction``: the
  task text, markup guide and definitions are identical for every prompt of one site and task). The longest
  common token prefix of a group is run through the model once; its ``DynamicCache`` is copied and expanded to
  each batch. Each row is laid out ``[prefix][left padding][own suffix]`` with explicit position ids, so every
  real token sees exactly the keys and positions it sees in an unpadded, uncached forward pass.
* **Early stop.** A row ends at EOS, when its answer is complete (``stopping.StopRule``: JSON list closed, HTML
  sentence reproduced, a new ``###`` section) or when it loops (``stopping.RepetitionRule``). The rules look at
  the answer so far only, so the output equals plain greedy generation cut by ``stopping.cut_at_stop``.
* **Finished rows leave the batch** (their cache rows are dropped), so a batch costs what its longest live
  answer costs, not ``batch_size`` times the longest answer.
* **Logits of the last position only** (``logits_to_keep=1``): no ``(tokens × vocabulary)`` prefill logits.

``constraint`` (``fedmedlora.lm.constrained``) restricts each greedy choice to tokens its automaton accepts.

This is an adapter module: it imports torch and transformers. It must not import flwr or the CLI.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from fedmedlora.lm.model import encode_prompt, eos_token_ids, model_device
from fedmedlora.stopping import StopRule

#: Groups whose common prefix is shorter than this are decoded without a prefix cache (nothing to save).
MIN_PREFIX_TOKENS = 8


class RowConstraint(Protocol):
    """Per-row token filter for greedy decoding (``fedmedlora.lm.constrained.JsonConstraint``)."""

    def choose(self, logits: torch.Tensor, ids: list[int], text: str) -> int | None:
        """The highest-scoring allowed token after ``ids`` (decoded: ``text``), or ``None`` to end the row."""
        ...

    def finish(self, text: str) -> str:
        """The final answer text (e.g. a list closed after the last complete item)."""
        ...


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``(input_ids, attention_mask)`` tensors."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            attention_mask[row, width - len(seq) :] = 1
    return input_ids, attention_mask


def _cut_at_eos(ids: list[int], stop: set[int]) -> list[int]:
    for i, token in enumerate(ids):
        if token in stop:
            return ids[:i]
    return ids


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token id lists."""
    if not sequences:
        return 0
    first = sequences[0]
    n = min(len(s) for s in sequences)
    for seq in sequences[1:]:
        k = 0
        while k < n and seq[k] == first[k]:
            k += 1
        n = k
    return n


def _instruction_key(prompt: str) -> str:
    return str(getattr(prompt, "instruction", ""))


def _batches(encoded: Sequence[Sequence[int]], prompts: Sequence[str], batch_size: int) -> list[tuple[int, list[int]]]:
    """``(prefix length, row indices)`` per batch: rows grouped by instruction, longest first within a group."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(_instruction_key(p), []).append(i)
    out: list[tuple[int, list[int]]] = []
    for key in sorted(groups):
        rows = sorted(groups[key], key=lambda i: len(encoded[i]), reverse=True)
        # the last prompt token is never in the prefix: every row needs >= 1 own token to produce logits
        lp = min(common_prefix_length([encoded[i] for i in rows]), min(len(encoded[i]) for i in rows) - 1)
        lp = lp if lp >= MIN_PREFIX_TOKENS else 0
        out.extend((lp, rows[s : s + batch_size]) for s in range(0, len(rows), batch_size))
    return out


class _PrefixCache:
    """KV caches of shared prefixes (batch of one), by token ids; a few kept (one per group in flight)."""

    def __init__(self, model: Any, device: torch.device, keep: int = 4) -> None:
        self.model, self.device, self.keep = model, device, keep
        self._caches: dict[tuple[int, ...], Any] = {}

    def expanded(self, prefix: Sequence[int], batch: int) -> Any:
        key = tuple(prefix)
        if key not in self._caches:
            if len(self._caches) >= self.keep:
                self._caches.pop(next(iter(self._caches)))
            ids = torch.tensor([list(prefix)], dtype=torch.long, device=self.device)
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            self._caches[key] = out.past_key_values
        cache = copy.deepcopy(self._caches[key])
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        return cache


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    use_chat_template: bool = True,
    progress: bool = True,
    stop_on_repetition: bool = True,
    early_stop: bool = True,
    prefix_cache: bool = True,
    constraint: Callable[[str], RowConstraint | None] | None = None,
) -> list[str]:
    """Greedy-decode an answer for every prompt.

    Args:
        model: a causal LM or ``PeftModel``.
        tokenizer: its tokenizer (from ``load_base_model``).
        prompts: ``Example.prompt`` strings or ``prompts.Prompt`` s (rendered exactly as in training); a
            ``Prompt`` also enables the completeness stop for its format.
        max_new_tokens: maximum answer length in tokens.
        batch_size: rows decoded together. Prompts are grouped by instruction and sorted by length; the output
            keeps the input order.
        use_chat_template: render prompts with the chat template when the tokenizer has one (must match
            training).
        progress: show a progress bar.
        stop_on_repetition: end a row that loops (``stopping.RepetitionRule``).
        early_stop: end a row as soon as its answer is complete (``stopping.answer_complete``).
        prefix_cache: compute each group's shared prefix once (off: every row runs its whole prompt).
        constraint: prompt → a ``RowConstraint`` (or ``None`` for an unconstrained row).

    Returns:
        The generated text of each prompt (new tokens only, up to but excluding EOS, special tokens removed).

    Raises:
        ValueError: ``max_new_tokens`` or ``batch_size`` is not positive.
    """
    from tqdm.auto import tqdm

    if max_new_tokens <= 0 or batch_size <= 0:
        raise ValueError(f"max_new_tokens and batch_size must be positive, got {max_new_tokens}, {batch_size}")
    if len(prompts) == 0:
        return []
    encoded = [encode_prompt(tokenizer, p, use_chat_template) for p in prompts]
    rules = [StopRule.for_prompt(p if early_stop else "", repetition=stop_on_repetition) for p in prompts]
    constraints = [constraint(p) if constraint is not None else None for p in prompts]
    stop = set(eos_token_ids(model, tokenizer))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop)
    device = model_device(model)
    was_training = model.training
    model.eval()
    cache = _PrefixCache(model, device)
    outputs: list[str] = [""] * len(prompts)
    bar = tqdm(total=len(prompts), disable=not progress, desc="generate", leave=False)
    try:
        for lp, rows in _batches(encoded, prompts, batch_size):
            lp = lp if prefix_cache else 0
            answers = _decode_batch(
                model, tokenizer, cache, [encoded[i] for i in rows], lp, [rules[i] for i in rows],
                [constraints[i] for i in rows], max_new_tokens, stop, pad_id, device,
            )  # fmt: skip
            for i, text in zip(rows, answers, strict=True):
                outputs[i] = text
            bar.update(len(rows))
    finally:
        bar.close()
        if was_training:
            model.train()
    return outputs


def _decode_batch(
    model: Any,
    tokenizer: Any,
    prefixes: _PrefixCache,
    seqs: list[list[int]],
    lp: int,
    rules: list[StopRule],
    constraints: list[RowConstraint | None],
    max_new_tokens: int,
    stop: set[int],
    pad_id: int,
    device: torch.device,
) -> list[str]:
    from transformers import DynamicCache

    n = len(seqs)
    suffix_ids, suffix_mask = left_pad([s[lp:] for s in seqs], pad_id)
    past = prefixes.expanded(seqs[0][:lp], n) if lp else DynamicCache(config=getattr(model, "config", None))
    mask = torch.cat([torch.ones((n, lp), dtype=torch.long), suffix_mask], dim=1)
    positions = (lp + suffix_mask.cumsum(-1) - 1).masked_fill(suffix_mask == 0, 1)
    out = model(
        input_ids=suffix_ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        past_key_values=past,
        use_cache=True,
        logits_to_keep=1,
    )
    past = out.past_key_values
    logits = out.logits[:, -1, :]
    next_pos = positions[:, -1] + 1
    generated: list[list[int]] = [[] for _ in range(n)]
    texts = [""] * n
    live = list(range(n))  # batch row -> original row
    for _ in range(max_new_tokens):
        keep: list[int] = []
        new_tokens: list[int] = []
        for b, row in enumerate(live):
            con = constraints[row]
            token = int(logits[b].argmax()) if con is None else con.choose(logits[b], generated[row], texts[row])
            if token is None or token in stop:
                continue
            generated[row].append(token)
            texts[row] = tokenizer.decode(generated[row], skip_special_tokens=True)
            if rules[row](generated[row], texts[row]):
                continue
            keep.append(b)
            new_tokens.append(token)
        if not keep:
            break
        if len(keep) < len(live):
            idx = torch.tensor(keep, dtype=torch.long)
            past.batch_select_indices(idx.to(device))
            mask, next_pos = mask[idx], next_pos[idx]
            live = [live[b] for b in keep]
        mask = torch.cat([mask, torch.ones((len(live), 1), dtype=torch.long)], dim=1)
        out = model(
            input_ids=torch.tensor(new_tokens, dtype=torch.long, device=device)[:, None],
            attention_mask=mask.to(device),
            position_ids=next_pos[:, None].to(device),
            past_key_values=past,
            use_cache=True,
            logits_to_keep=1,
        )
        past = out.past_key_values
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1
    return [texts[r] if constraints[r] is None else constraints[r].finish(texts[r]) for r in range(n)]


@torch.no_grad()
def generate_hf(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    use_chat_template: bool = True,
    return_ids: bool = False,
) -> list[str] | list[list[int]]:
    """Plain ``model.generate`` greedy decoding (longest first, left-padded batches, EOS only): the reference.

    ``return_ids``: the new token ids (up to EOS) instead of the text, for ``stopping.cut_at_stop``.
    """
    if len(prompts) == 0:
        return []
    encoded = [encode_prompt(tokenizer, p, use_chat_template) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    stop = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    device = model_device(model)
    was_training = model.training
    model.eval()
    ids_out: list[list[int]] = [[] for _ in prompts]
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids, attention_mask = left_pad([encoded[i] for i in rows], pad_id)
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=stop,
                pad_token_id=pad_id,
            )
            for row, ids in zip(rows, generated[:, input_ids.shape[1] :].tolist(), strict=True):
                ids_out[row] = _cut_at_eos(ids, set(stop))
    finally:
        if was_training:
            model.train()
    if return_ids:
        return ids_out
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in ids_out]


__all__ = ["MIN_PREFIX_TOKENS", "RowConstraint", "common_prefix_length", "generate", "generate_hf", "left_pad"]
