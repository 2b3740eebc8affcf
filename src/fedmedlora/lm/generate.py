"""Batched greedy generation for a list of prompts.

Owns: ``generate`` — render each prompt with the same renderer as training (``fedmedlora.lm.model.encode_prompt``),
sort by length so each batch pads little, left-pad, decode greedily until EOS or ``max_new_tokens``, return only
the new text in the caller's order.

This is an adapter module: it imports torch and transformers. It must not import flwr or the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fedmedlora.lm.model import encode_prompt, eos_token_ids, model_device


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
) -> list[str]:
    """Greedy-decode an answer for every prompt.

    Args:
        model: a causal LM or ``PeftModel``.
        tokenizer: its tokenizer (from ``load_base_model``).
        prompts: ``Example.prompt`` strings (rendered exactly as in training).
        max_new_tokens: maximum answer length in tokens.
        batch_size: prompts per ``model.generate`` call. Prompts are sorted by length first, so batches hold
            prompts of similar length; the output keeps the input order.
        use_chat_template: render prompts with the chat template when the tokenizer has one (must match
            training).
        progress: show a progress bar.

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
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    stop = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    device = model_device(model)
    was_training = model.training
    model.eval()
    outputs: list[str] = [""] * len(prompts)
    bar = tqdm(total=len(prompts), disable=not progress, desc="generate", leave=False)
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
            new_tokens = generated[:, input_ids.shape[1] :].tolist()
            for row, ids in zip(rows, new_tokens, strict=True):
                outputs[row] = tokenizer.decode(_cut_at_eos(ids, set(stop)), skip_special_tokens=True)
            bar.update(len(rows))
    finally:
        bar.close()
        if was_training:
            model.train()
    return outputs


__all__ = ["generate", "left_pad"]
