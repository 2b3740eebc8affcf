"""Batched greedy generation for a list of prompts: shared-prefix KV cache, early stop, finished rows dropped.

Owns: ``generate`` (the decoder every evaluation and extraction uses) and ``generate_hf`` (the same prompts through
plain ``model.generate``: the reference the tests and ``bench/generate_throughput.py`` compare against).

How ``generate`` saves work without changing greedy semantics:

* **Shared prefix, computed once.** Prompts are grouped by their instruction (``prompts.Prompt.instruction``: the
  task text, markup guide and definitions are identical for every prompt of one site and task). The longest
  common token prefix of a group is run through the model once and its keys/values are kept. A batch may mix
  groups (full batches matter more on a CPU than anything else): each row is laid out
  ``[padding][its group's prefix][padding][its own suffix]`` with explicit position ids, so every real token sees
  exactly the keys and positions it sees in an unpadded, uncached forward pass.
* **Early stop.** A row ends at EOS, when its answer is complete (``stopping.StopRule``: JSON list closed, HTML
  sentence reproduced, a new ``###`` section) or when it loops (``stopping.RepetitionRule``). The rules look at
  the answer so far only, so the output equals plain greedy generation cut by ``stopping.cut_at_stop``.
* **Continuous batching.** A finished row leaves the batch at once (its cache row is dropped) and waiting
  prompts join it (prefilled together over their cached prefixes, the running cache left-padded to fit) once a
  quarter of the batch is free. On a CPU a decode step costs about the same for 8 rows as for 1 (weights are read
  once per step), so keeping the batch full is what pays most.
* **Logits of the last position only** (``logits_to_keep=1``): no ``(tokens × vocabulary)`` prefill logits.

``constraint`` (``fedmedlora.lm.constrained``) restricts each greedy choice to tokens its automaton accepts.

This is an adapter module: it imports torch and transformers. It must not import flwr or the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from fedmedlora import progress as progress_events
from fedmedlora.lm.model import encode_prompt, eos_token_ids, model_device
from fedmedlora.lm.prepack import packed_linears
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


def _pad_id(tokenizer: Any, stop: Sequence[int]) -> int:
    """The padding id: the tokenizer's, else the first EOS id (padded positions are masked either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """``model.eval()`` for the block, then back to training mode if it was training."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


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


def _prefix_lengths(encoded: Sequence[Sequence[int]], prompts: Sequence[str]) -> tuple[list[int], list[int]]:
    """Decoding order (grouped by instruction, longest first within a group) and each prompt's shared-prefix length:
    the longest common token prefix of its group, short of its own last token (0 when too short to pay)."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(_instruction_key(p), []).append(i)
    order: list[int] = []
    lengths = [0] * len(prompts)
    for key in sorted(groups):
        rows = sorted(groups[key], key=lambda i: len(encoded[i]), reverse=True)
        lcp = common_prefix_length([encoded[i] for i in rows]) if len(rows) > 1 else 0
        for i in rows:
            # the last prompt token is never in the prefix: every row needs >= 1 own token to produce logits
            lp = min(lcp, len(encoded[i]) - 1)
            lengths[i] = lp if lp >= MIN_PREFIX_TOKENS else 0
        order.extend(rows)
    return order, lengths


class _PrefixCache:
    """KV caches of shared prefixes (batch of one), by token ids, and their assembly into one batch cache."""

    def __init__(self, model: Any, device: torch.device, keep: int = 16) -> None:
        self.model, self.device, self.keep = model, device, keep
        self._caches: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def _layers(self, prefix: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if prefix not in self._caches:
            if len(self._caches) >= self.keep:
                self._caches.pop(next(iter(self._caches)))
            ids = torch.tensor([list(prefix)], dtype=torch.long, device=self.device)
            past = self.model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values
            self._caches[prefix] = [(layer.keys, layer.values) for layer in past.layers]
        return self._caches[prefix]

    def batch(self, prefixes: Sequence[tuple[int, ...]]) -> tuple[Any, torch.Tensor]:
        """A cache for rows with these prefixes, each right-aligned to the longest (left padding, masked), and
        the ``(rows, longest)`` attention mask of that part."""
        config = getattr(self.model, "config", None)
        width = max(len(p) for p in prefixes)
        mask = torch.zeros((len(prefixes), width), dtype=torch.long)
        for r, p in enumerate(prefixes):
            if p:
                mask[r, width - len(p) :] = 1
        if width == 0:
            return _cache_of([], config), mask
        per_row = [self._layers(p) if p else None for p in prefixes]
        template = next(layers for layers in per_row if layers is not None)

        def layers() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for li, (k0, v0) in enumerate(template):
                # a row without a prefix is one row of zero positions
                yield (
                    _right_aligned([k0[:, :, :0] if rl is None else rl[li][0] for rl in per_row], width),
                    _right_aligned([v0[:, :, :0] if rl is None else rl[li][1] for rl in per_row], width),
                )

        return _cache_of(layers(), config), mask


def _right_aligned(parts: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """``(rows, heads, positions, dim)`` tensors stacked along the rows, each right-aligned in ``width`` positions
    (zeros on the left, which the attention mask hides)."""
    first = parts[0]
    out = first.new_zeros((sum(p.shape[0] for p in parts), first.shape[1], width, first.shape[3]))
    row = 0
    for p in parts:
        out[row : row + p.shape[0], :, width - p.shape[2] :] = p
        row += p.shape[0]
    return out


def _cache_of(layers: Iterable[tuple[torch.Tensor, torch.Tensor]], config: Any) -> Any:
    """A ``DynamicCache`` filled layer by layer from ``(keys, values)`` pairs.

    Given a generator, each layer's tensors can be freed as soon as the cache holds them, so assembling a cache
    costs about one layer on top of it; ``DynamicCache(ddp_cache_data=...)`` would keep every input layer alive
    until all are copied (twice the cache; measured: +0.5 GB for 32 rows of ~400 positions of SmolLM2).
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    for i, (keys, values) in enumerate(layers):
        cache.update(keys, values, i)
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
    packed_weights: bool = True,
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
        progress: show a progress bar (unless ``fedmedlora.progress.bars()`` is off: a display took over). Every
            finished prompt is also reported as ``fedmedlora.progress.step("generating", k, n)``.
        stop_on_repetition: end a row that loops (``stopping.RepetitionRule``).
        early_stop: end a row as soon as its answer is complete (``stopping.answer_complete``).
        prefix_cache: compute each group's shared prefix once (off: every row runs its whole prompt).
        constraint: prompt → a ``RowConstraint`` (or ``None`` for an unconstrained row).
        packed_weights: on a CPU in fp32, run the linear layers through oneDNN with their weights packed once for
            this call (``fedmedlora.lm.prepack``; ignored elsewhere).

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
    rules = [StopRule.for_prompt(p, complete=early_stop, repetition=stop_on_repetition) for p in prompts]
    constraints = [constraint(p) if constraint is not None else None for p in prompts]
    eos = eos_token_ids(model, tokenizer)
    stop, pad_id = set(eos), _pad_id(tokenizer, eos)
    device = model_device(model)
    prefixes = _PrefixCache(model, device)
    order, prefix_len = _prefix_lengths(encoded, prompts)
    rows = [_Row(i, encoded[i], prefix_len[i] if prefix_cache else 0, rules[i], constraints[i]) for i in order]
    outputs: list[str] = [""] * len(prompts)
    bar = tqdm(total=len(prompts), disable=not (progress and progress_events.bars()), desc="generate", leave=False)
    done = 0
    progress_events.step(progress_events.GENERATING, done, len(prompts))
    try:
        with _eval_mode(model), packed_linears(model, enabled=packed_weights):
            for row in _decode(model, tokenizer, prefixes, rows, batch_size, max_new_tokens, stop, pad_id, device):
                outputs[row.index] = row.answer()
                bar.update(1)
                done += 1
                progress_events.step(progress_events.GENERATING, done, len(prompts))
    finally:
        bar.close()
    return outputs


@dataclass
class _Row:
    """One prompt being decoded."""

    index: int
    ids: list[int]
    prefix_len: int
    rule: StopRule
    constraint: RowConstraint | None
    generated: list[int] = field(default_factory=list)
    text: str = ""

    def answer(self) -> str:
        return self.text if self.constraint is None else self.constraint.finish(self.text)


def _join_caches(
    old: Any, old_mask: torch.Tensor, new: Any, new_mask: torch.Tensor, config: Any
) -> tuple[Any, torch.Tensor]:
    """One cache holding ``old``'s rows then ``new``'s, each left-padded (masked) to the longer of the two, and its
    attention mask.

    Built layer by layer, and each input layer is released as soon as it is copied, so the join costs a layer or
    two on top of the caches (not a padded copy of both plus their concatenation, held to the end); ``old`` and
    ``new`` are empty afterwards.
    """
    width = max(old_mask.shape[1], new_mask.shape[1])
    n_old = old_mask.shape[0]

    def layers() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for lo, ln in zip(old.layers, new.layers, strict=True):
            keys, values = _right_aligned([lo.keys, ln.keys], width), _right_aligned([lo.values, ln.values], width)
            lo.keys = lo.values = ln.keys = ln.values = None  # release the inputs now, not when the join returns
            yield keys, values

    mask = torch.zeros((n_old + new_mask.shape[0], width), dtype=old_mask.dtype)
    mask[:n_old, width - old_mask.shape[1] :] = old_mask
    mask[n_old:, width - new_mask.shape[1] :] = new_mask
    return _cache_of(layers(), config), mask


def _decode(
    model: Any,
    tokenizer: Any,
    prefixes: _PrefixCache,
    queue: list[_Row],
    batch_size: int,
    max_new_tokens: int,
    stop: set[int],
    pad_id: int,
    device: torch.device,
) -> Iterator[_Row]:
    """Continuous batching: rows leave when done and waiting rows join (prefilled together) once a quarter of
    the batch is free, so the batch stays full; yields each row as it finishes."""
    refill_at = batch_size - max(1, batch_size // 4)
    pending = list(queue)
    live: list[_Row] = []
    past: Any = None
    mask = torch.zeros((0, 0), dtype=torch.long)
    next_pos = torch.zeros((0,), dtype=torch.long)
    logits: torch.Tensor | None = None
    while pending or live:
        progress_events.check_stop()  # Ctrl-C takes effect at the next decoding step (fedmedlora.progress)
        if pending and (len(live) <= refill_at or not live):
            new, pending = pending[: batch_size - len(live)], pending[batch_size - len(live) :]
            # no local keeps the new rows' cache: between refills only the batch's own cache may stay alive
            past, mask, next_pos, logits = _refill(model, prefixes, new, pad_id, device, past, mask, next_pos, logits)
            live = live + new
        assert logits is not None
        keep: list[int] = []
        new_tokens: list[int] = []
        for b, row in enumerate(live):
            con = row.constraint
            token = int(logits[b].argmax()) if con is None else con.choose(logits[b], row.generated, row.text)
            done = token is None or token in stop
            if not done:
                row.generated.append(token)
                row.text = tokenizer.decode(row.generated, skip_special_tokens=True)
                done = row.rule(row.generated, row.text) or len(row.generated) >= max_new_tokens
            if done:
                yield row
            else:
                keep.append(b)
                new_tokens.append(token)
        if len(keep) < len(live):
            live = [live[b] for b in keep]
            if not live:
                past, logits = None, None
                mask = torch.zeros((0, 0), dtype=torch.long)
                next_pos = torch.zeros((0,), dtype=torch.long)
                continue
            idx = torch.tensor(keep, dtype=torch.long)
            past.batch_select_indices(idx.to(device))
            mask, next_pos = mask[idx], next_pos[idx]
        mask = torch.cat([mask, torch.ones((len(live), 1), dtype=torch.long)], dim=1)
        out = model(
            input_ids=torch.tensor(new_tokens, dtype=torch.long, device=device)[:, None],
            attention_mask=mask.to(device),
            position_ids=next_pos[:, None].to(device),
            past_key_values=past,
            use_cache=True,
            logits_to_keep=1,
        )
        past, logits = out.past_key_values, out.logits[:, -1, :]
        del out  # the model output must not keep a cache alive once the batch drops or joins it
        next_pos = next_pos + 1


def _refill(
    model: Any,
    prefixes: _PrefixCache,
    rows: list[_Row],
    pad_id: int,
    device: torch.device,
    past: Any,
    mask: torch.Tensor,
    next_pos: torch.Tensor,
    logits: torch.Tensor | None,
) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prefill ``rows`` and append them to the running batch (``past`` is ``None`` when no row is running)."""
    n_past, n_mask, n_pos, n_logits = _prefill(model, prefixes, rows, pad_id, device)
    if past is None or logits is None:
        return n_past, n_mask, n_pos, n_logits
    past, mask = _join_caches(past, mask, n_past, n_mask, getattr(model, "config", None))
    return past, mask, torch.cat([next_pos, n_pos]), torch.cat([logits, n_logits])


def _prefill(
    model: Any, prefixes: _PrefixCache, rows: list[_Row], pad_id: int, device: torch.device
) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the rows' own suffixes over their cached prefixes: ``(cache, mask, next positions, last logits)``."""
    suffix_ids, suffix_mask = left_pad([r.ids[r.prefix_len :] for r in rows], pad_id)
    past, prefix_mask = prefixes.batch([tuple(r.ids[: r.prefix_len]) for r in rows])
    mask = torch.cat([prefix_mask, suffix_mask], dim=1)
    own = torch.tensor([r.prefix_len for r in rows], dtype=torch.long)[:, None]
    positions = (own + suffix_mask.cumsum(-1) - 1).masked_fill(suffix_mask == 0, 1)
    out = model(
        input_ids=suffix_ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        past_key_values=past,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.past_key_values, mask, positions[:, -1] + 1, out.logits[:, -1, :]


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
    pad_id = _pad_id(tokenizer, stop)
    device = model_device(model)
    ids_out: list[list[int]] = [[] for _ in prompts]
    with _eval_mode(model):
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
    if return_ids:
        return ids_out
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in ids_out]


__all__ = ["MIN_PREFIX_TOKENS", "RowConstraint", "common_prefix_length", "generate", "generate_hf", "left_pad"]
