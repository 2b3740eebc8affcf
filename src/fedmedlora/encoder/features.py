"""Encoder featurisation: ``(Sentence, LabelSet)`` units to sub-word features, batching and the masked loss.

Owns: the two BIO schemes (``NER_SCHEME``, ``RE_SCHEME``); ``Feature`` and ``TokenizerView``; ``ner_features``
(NER inputs) and ``re_features`` (entity-conditioned modifier tagging inputs); ``batches`` / ``collate`` (padded
tensors); and the label mask applied to logits and loss (``masked_logits``, ``masked_loss``).

Imports torch (collation and masking). Must not import ``fedmedlora.federation``, ``fedmedlora.recipes`` or the CLI.

Design (details in ``docs/encoder.md``)
---------------------------------------
* NER: BIO over ``ENTITY_TYPES`` (9 labels). RE: a second model, BIO over ``MODIFIER_TYPES`` (33 labels), one
  input per head entity with the head wrapped in typed punctuation markers ``@ * problem * … @`` (marker tokens
  carry no character offsets, take no loss and are never decoded), so no new vocabulary is needed and LoRA stays
  adapter-only.
* Partial label sets: every feature carries a label mask (``BioScheme.allowed``). Logits of labels outside it are
  set to a large negative number before the softmax, in training *and* decoding. A token tagged ``O`` at a site
  that does not annotate ``drug`` therefore only says "not one of this site's types": the ``drug`` logits get no
  gradient from that site, and ``drug`` is never learned as ``O``. For RE the mask is the site's modifier types
  valid for the head's type.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedmedlora.encoder.bio import IGNORE_INDEX, AlignStats, BioScheme, Offset, spans_to_tags, token_windows
from fedmedlora.schema import ENTITY_TYPES, MODIFIER_TYPES, Entity, LabelSet, Sentence

NER_SCHEME = BioScheme(ENTITY_TYPES)
RE_SCHEME = BioScheme(MODIFIER_TYPES)
_NEG = -1e4  # logit given to labels outside a feature's mask (finite: no NaN in fp16/bf16 either)

Unit = tuple[Sentence, LabelSet]


@dataclass
class Feature:
    """One model input: sub-word ids, per-position label ids (``IGNORE_INDEX`` = no loss), label mask, offsets.

    ``offsets`` are sentence-relative character intervals, ``None`` for special and marker tokens. ``unit`` is the
    index of the ``(Sentence, LabelSet)`` it came from; ``head`` the RE head entity (``None`` for NER).
    """

    input_ids: list[int]
    labels: list[int]
    allowed: list[bool]
    offsets: list[Offset]
    unit: int
    head: Entity | None = None


class TokenizerView:
    """What featurisation needs from a fast tokenizer: content ids + offsets, special-token frame, markers."""

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("encoder featurisation needs a fast tokenizer (offset_mapping)")
        self.tok = tokenizer
        enc = tokenizer("a", add_special_tokens=True, return_special_tokens_mask=True)
        mask = list(enc["special_tokens_mask"])
        if 0 not in mask:
            raise ValueError("tokenizer: cannot locate content tokens between its special tokens")
        first = mask.index(0)
        last = len(mask) - 1 - mask[::-1].index(0)
        ids = list(enc["input_ids"])
        self.prefix = ids[:first]
        self.suffix = ids[last + 1 :]
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self._markers: dict[str, list[int]] = {}

    def content(self, text: str) -> tuple[list[int], list[Offset]]:
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        offs = [(int(a), int(b)) if b > a else None for a, b in enc["offset_mapping"]]
        return list(enc["input_ids"]), offs

    def marker(self, text: str) -> list[int]:
        if text not in self._markers:
            self._markers[text] = list(self.tok(text, add_special_tokens=False)["input_ids"])
        return self._markers[text]

    @property
    def frame(self) -> int:
        return len(self.prefix) + len(self.suffix)


def _frame(view: TokenizerView, ids: list[int], offs: list[Offset], tags: list[str | None]):
    p, s = len(view.prefix), len(view.suffix)
    return (view.prefix + ids + view.suffix, [None] * p + offs + [None] * s, [None] * p + tags + [None] * s)


def ner_features(
    units: Sequence[Unit], view: TokenizerView, max_length: int, *, stats: AlignStats | None = None
) -> list[Feature]:
    """NER features: one per window of each sentence whose label set annotates at least one entity type.

    Gold spans of types outside the label set cannot occur (schema validation), and the label mask excludes
    those types. ``stats`` receives the alignment counts (token-expanded / dropped gold spans).
    """
    budget = max_length - view.frame
    out: list[Feature] = []
    for u, (sent, ls) in enumerate(units):
        types = ls.sorted_entities()
        if not types:
            continue
        allowed = NER_SCHEME.allowed(types)
        ids, offs = view.content(sent.text)
        gold = [e.span for e in sent.entities if e.type in ls.entities]
        tags, st = spans_to_tags(gold, offs, text=sent.text)
        if stats is not None:
            stats += st
        for w in token_windows(len(ids), budget):
            if len(w) == 0:
                continue
            a, b = w.start, w.stop
            fi, fo, ft = _frame(view, ids[a:b], offs[a:b], tags[a:b])
            out.append(Feature(fi, NER_SCHEME.encode(ft), allowed, fo, u))
    return out


def _marker_texts(head_type: str) -> tuple[str, str]:
    return f"@ * {head_type} *", "@"


def re_features(
    units: Sequence[Unit],
    view: TokenizerView,
    max_length: int,
    *,
    heads: Sequence[Sequence[Entity]] | None = None,
    stats: AlignStats | None = None,
    skipped: Counter[str] | None = None,
) -> list[Feature]:
    """RE features: one per head entity whose type has at least one modifier type annotated by the site.

    Args:
        units: ``(sentence, label_set)`` pairs.
        view: the tokenizer view.
        max_length: positions per input (the window is centred on the head).
        heads: per unit, the head entities (default: the sentence's gold entities). Gold modifier labels are
            taken from ``sentence.modifiers_of(head.id)`` (none for predicted heads: labels are then all ``O``).
        stats: alignment counts of the gold modifier spans.
        skipped: counts heads that could not be featurised (``head_without_tokens``, ``modifier_outside_window``).
    """
    out: list[Feature] = []
    for u, (sent, ls) in enumerate(units):
        hs = sent.entities if heads is None else heads[u]
        cands = [h for h in hs if ls.is_re_head(h.type)]
        if not cands:
            continue
        ids, offs = view.content(sent.text)
        for h in cands:
            mods = ls.modifiers_for(h.type)
            hidx = [i for i, o in enumerate(offs) if o is not None and o[0] < h.end and o[1] > h.start]
            if not hidx:
                if skipped is not None:
                    skipped["head_without_tokens"] += 1
                continue
            gold = [m.span for m in sent.modifiers_of(h.id) if m.type in mods] if heads is None else []
            tags, st = spans_to_tags(gold, offs, text=sent.text)
            if stats is not None:
                stats += st
            opener, closer = (view.marker(t) for t in _marker_texts(h.type))
            budget = max_length - view.frame - len(opener) - len(closer)
            i, j = hidx[0], hidx[-1] + 1
            w = token_windows(len(ids), budget, center=(i, j))[0]
            if skipped is not None:
                lost = sum(
                    1 for k in range(len(ids)) if (k < w.start or k >= w.stop) and (tags[k] or "O").startswith("B-")
                )
                skipped["modifier_outside_window"] += lost
            i, j = max(i, w.start), min(j, w.stop)
            seq_ids = ids[w.start : i] + opener + ids[i:j] + closer + ids[j : w.stop]
            seq_offs = offs[w.start : i] + [None] * len(opener) + offs[i:j] + [None] * len(closer) + offs[j : w.stop]
            seq_tags = tags[w.start : i] + [None] * len(opener) + tags[i:j] + [None] * len(closer) + tags[j : w.stop]
            fi, fo, ft = _frame(view, seq_ids, seq_offs, seq_tags)
            out.append(Feature(fi, RE_SCHEME.encode(ft), RE_SCHEME.allowed(mods), fo, u, head=h))
    return out


def batches(features: Sequence[Feature], batch_size: int, order: Sequence[int]) -> Iterable[list[Feature]]:
    """Lists of ``batch_size`` features in ``order`` (the last one may be shorter)."""
    for k in range(0, len(order), batch_size):
        yield [features[i] for i in order[k : k + batch_size]]


def collate(batch: Sequence[Feature], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` (``IGNORE_INDEX`` padding) and ``allowed`` on
    ``device``."""
    n = max(len(f.input_ids) for f in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    att = torch.zeros((len(batch), n), dtype=torch.long)
    lab = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
    for r, f in enumerate(batch):
        ids[r, : len(f.input_ids)] = torch.tensor(f.input_ids)
        att[r, : len(f.input_ids)] = 1
        lab[r, : len(f.labels)] = torch.tensor(f.labels)
    allowed = torch.tensor([f.allowed for f in batch], dtype=torch.bool)
    return {
        "input_ids": ids.to(device),
        "attention_mask": att.to(device),
        "labels": lab.to(device),
        "allowed": allowed.to(device),
    }


def masked_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Give labels outside each example's mask (``allowed``: batch × labels) a large negative logit."""
    return logits.masked_fill(~allowed[:, None, :], _NEG)


def masked_loss(logits: torch.Tensor, labels: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Token cross-entropy over the allowed labels only; ``IGNORE_INDEX`` positions take no loss."""
    lg = masked_logits(logits, allowed)
    return torch.nn.functional.cross_entropy(
        lg.reshape(-1, lg.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )
