"""Constrained greedy decoding: each step takes the highest-scoring token that keeps the answer valid.

Owns ``JsonConstraint`` (one row's filter over ``fedmedlora.constraints.JsonAnswerState``) and ``constraint_for``
(the per-prompt factory ``generate(..., constraint=...)`` takes).

Greedy under a constraint is the argmax over the allowed tokens, so the filter walks the candidates in descending
logit order and takes the first whose text the automaton accepts: the top few candidates nearly always contain
it, and only then is the whole vocabulary searched. Token texts are decoded once per tokenizer. Tokens whose text
is empty or holds an incomplete UTF-8 byte sequence (``\\ufffd``) are never chosen, nor special tokens other than
EOS, which is allowed only once the list is closed. When no token fits (or the budget ends), ``finish`` closes the
list after the last complete item, so the answer is always well formed.

Adapter module (torch, the tokenizer); the grammar itself is pure core.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from fedmedlora.constraints import JsonAnswerState, start_state

#: Candidates tried in logit order before the whole vocabulary is searched.
TOP_K = 32

#: per tokenizer object, dropped with it (an ``id()`` key could be reused by a later tokenizer)
_PIECES: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()


def token_pieces(tokenizer: Any) -> list[str]:
    """The text of every token id, decoded alone (cached per tokenizer object)."""
    key = tokenizer
    if key not in _PIECES:
        size = max(len(tokenizer), int(getattr(tokenizer, "vocab_size", 0) or 0))
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        pieces = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False)
        _PIECES[key] = ["" if i in special or "\ufffd" in p else p for i, p in enumerate(pieces)]
    return _PIECES[key]


class JsonConstraint:
    """Keeps one row's answer inside the constrained JSON language (see ``fedmedlora.constraints``)."""

    def __init__(self, state: JsonAnswerState, pieces: list[str], eos_id: int) -> None:
        self.state = state
        self.pieces = pieces
        self.eos_id = eos_id

    def _accept(self, token: int) -> bool:
        if token == self.eos_id:
            return self.state.done
        piece = self.pieces[token] if token < len(self.pieces) else ""
        if not piece:
            return False
        nxt = self.state.feed(piece)
        if nxt is None:
            return False
        self.state = nxt
        return True

    def choose(self, logits: torch.Tensor, ids: list[int], text: str) -> int | None:
        if self.state.done:
            return self.eos_id
        k = min(TOP_K, logits.shape[-1])
        top = torch.topk(logits, k).indices.tolist()
        for token in top:
            if self._accept(token):
                return token
        for token in torch.argsort(logits, descending=True)[k:].tolist():
            if self._accept(token):
                return token
        return None  # nothing can follow: finish() closes the list

    def finish(self, text: str) -> str:
        return self.state.finish()


def constraint_for(tokenizer: Any) -> Callable[[str], JsonConstraint | None]:
    """Prompt → its ``JsonConstraint`` (``None`` for a prompt that is not a JSON ``prompts.Prompt``)."""
    pieces = token_pieces(tokenizer)
    eos_id = int(tokenizer.eos_token_id)

    def make(prompt: str) -> JsonConstraint | None:
        if getattr(prompt, "fmt", None) != "json":
            return None
        return JsonConstraint(start_state(prompt.sentence, prompt.types), pieces, eos_id)  # type: ignore[attr-defined]

    return make


__all__ = ["TOP_K", "JsonConstraint", "constraint_for", "token_pieces"]
