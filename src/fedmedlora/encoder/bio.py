"""Character-offset spans ↔ BIO tags over sub-word tokens (pure functions).

Owns: the BIO label scheme (``BioScheme``), per-site label masks, the alignment of gold character spans to
sub-word tags (``spans_to_tags``) and the decoding of predicted sub-word tags back to character spans
(``tags_to_spans``). Works on the ``offset_mapping`` a fast tokenizer returns, so it never re-tokenises text.
Must not import torch, transformers, peft or flwr.

Token offsets
-------------
A token is described by its half-open character interval ``(start, end)`` into the sentence text, exactly what a
fast tokenizer's ``offset_mapping`` gives (uncased tokenizers included: offsets point into the original, cased
text). A token with **no** characters — ``None`` or an empty interval such as the ``(0, 0)`` of ``[CLS]`` /
``[SEP]`` / padding, or an inserted marker token — is *special*: it gets no tag (``None``, i.e. loss ignored) and
it closes any span being decoded.

Policies
--------
* **Expansion to token boundaries (training labels).** A gold span tags every token that overlaps it; the first
  such token gets ``B-``, the others ``I-``. A span that starts or ends inside a token (e.g. ``"diabet"`` of
  ``"diabetic"``) is therefore expanded to whole tokens; ``AlignStats.not_token_aligned`` counts those spans, so the
  loss of exactness is reported, never silent.
* **Overlapping / nested gold spans** cannot all be represented in one flat BIO sequence. Spans are placed in
  order ``(start, -length)`` (earlier first, longer first at the same start); a span whose tokens are already taken
  is dropped and counted in ``AlignStats.dropped_overlap``.
* **Spans with no token** (outside the tokenised window, e.g. after truncation) are counted in
  ``AlignStats.dropped_no_token``.
* **Decoding.** ``B-t`` starts a span; ``I-t`` continues the open span if it has type ``t`` and otherwise starts a
  new one (an ``I-`` without ``B-`` starts a span); ``O``, a special token or a tag of another type closes it. A
  decoded span runs from the start of its first token to the end of its last token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fedmedlora.schema import Span

#: Label used for positions whose loss is ignored (PyTorch ``CrossEntropyLoss`` ``ignore_index``).
IGNORE_INDEX = -100

Offset = tuple[int, int] | None


@dataclass(frozen=True)
class BioScheme:
    """The BIO label vocabulary over a fixed tuple of span types.

    Labels are ``["O", "B-t1", "I-t1", "B-t2", "I-t2", ...]`` in the order of ``types``; ids are list positions.
    """

    types: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(set(self.types)) != len(self.types) or not self.types:
            raise ValueError(f"BioScheme.types: must be non-empty and unique, got {self.types!r}")
        for t in self.types:
            if "-" in t and t.startswith(("B-", "I-")):
                raise ValueError(f"BioScheme.types: type {t!r} must not look like a BIO tag")

    @property
    def labels(self) -> list[str]:
        out = ["O"]
        for t in self.types:
            out += [f"B-{t}", f"I-{t}"]
        return out

    @property
    def label2id(self) -> dict[str, int]:
        return {lab: i for i, lab in enumerate(self.labels)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    def allowed(self, types: Iterable[str]) -> list[bool]:
        """Label mask: ``O`` plus ``B-``/``I-`` of each type in ``types`` (types outside the scheme are an error).

        A site's examples are trained and decoded with the logits of every other label excluded from the softmax,
        so a type the site does not annotate is never learned as ``O`` from that site (see ``docs/encoder.md``).
        """
        types = set(types)
        unknown = types - set(self.types)
        if unknown:
            raise ValueError(f"label mask: type(s) {sorted(unknown)} are not in the scheme {self.types}")
        mask = [True]
        for t in self.types:
            mask += [t in types, t in types]
        return mask

    def encode(self, tags: Sequence[str | None]) -> list[int]:
        """Tags → label ids, ``None`` → ``IGNORE_INDEX``."""
        l2i = self.label2id
        try:
            return [IGNORE_INDEX if t is None else l2i[t] for t in tags]
        except KeyError as exc:
            raise ValueError(f"tag {exc.args[0]!r} is not a label of the scheme {self.labels}") from None

    def decode(self, ids: Sequence[int]) -> list[str | None]:
        """Label ids → tags, ``IGNORE_INDEX`` → ``None``."""
        labels = self.labels
        return [None if i == IGNORE_INDEX else labels[i] for i in ids]


@dataclass
class AlignStats:
    """Counts from aligning gold spans to tokens (added up over a data set with ``+=``)."""

    spans: int = 0
    placed: int = 0
    not_token_aligned: int = 0
    dropped_overlap: int = 0
    dropped_no_token: int = 0
    examples: list[str] = field(default_factory=list)

    def __iadd__(self, other: AlignStats) -> AlignStats:
        self.spans += other.spans
        self.placed += other.placed
        self.not_token_aligned += other.not_token_aligned
        self.dropped_overlap += other.dropped_overlap
        self.dropped_no_token += other.dropped_no_token
        self.examples += other.examples[: max(0, 5 - len(self.examples))]
        return self

    def to_dict(self) -> dict[str, int]:
        return {
            "spans": self.spans,
            "placed": self.placed,
            "not_token_aligned": self.not_token_aligned,
            "dropped_overlap": self.dropped_overlap,
            "dropped_no_token": self.dropped_no_token,
        }


def _real(off: Offset) -> bool:
    return off is not None and off[1] > off[0]


def spans_to_tags(
    spans: Iterable[Span], offsets: Sequence[Offset], *, text: str | None = None
) -> tuple[list[str | None], AlignStats]:
    """Gold character spans → one BIO tag per token (``None`` for special tokens).

    Args:
        spans: typed half-open character spans of the sentence.
        offsets: per-token ``(start, end)`` into the sentence text; ``None``/empty = special token.
        text: the sentence text, only used to make the ``AlignStats.examples`` readable.

    Returns:
        ``(tags, stats)``; see the module docstring for the expansion and overlap policies.
    """
    tags: list[str | None] = ["O" if _real(o) else None for o in offsets]
    taken = [False] * len(offsets)
    stats = AlignStats()
    for sp in sorted(spans, key=lambda s: (s.start, -(s.end - s.start), s.type)):
        stats.spans += 1
        if sp.end <= sp.start:
            raise ValueError(f"span {sp}: empty or reversed interval")
        idx = [i for i, o in enumerate(offsets) if _real(o) and o[0] < sp.end and o[1] > sp.start]
        if not idx:
            stats.dropped_no_token += 1
            continue
        if any(taken[i] for i in idx):
            stats.dropped_overlap += 1
            continue
        if offsets[idx[0]][0] != sp.start or offsets[idx[-1]][1] != sp.end:
            stats.not_token_aligned += 1
            if text is not None and len(stats.examples) < 5:
                a, b = offsets[idx[0]][0], offsets[idx[-1]][1]
                stats.examples.append(f"{text[sp.start : sp.end]!r} -> {text[a:b]!r}")
        for k, i in enumerate(idx):
            tags[i] = ("B-" if k == 0 else "I-") + sp.type
            taken[i] = True
        stats.placed += 1
    return tags, stats


def tags_to_spans(tags: Sequence[str | None], offsets: Sequence[Offset]) -> list[Span]:
    """Predicted BIO tags over tokens → typed character spans (see the decoding policy in the module docstring).

    Raises:
        ValueError: ``tags`` and ``offsets`` differ in length, or a tag is not ``O``/``B-x``/``I-x``/``None``.
    """
    if len(tags) != len(offsets):
        raise ValueError(f"tags_to_spans: {len(tags)} tags for {len(offsets)} tokens")
    out: list[Span] = []
    cur_type: str | None = None
    cur_start = cur_end = 0

    def close() -> None:
        nonlocal cur_type
        if cur_type is not None:
            out.append(Span(cur_start, cur_end, cur_type))
        cur_type = None

    for tag, off in zip(tags, offsets, strict=True):
        if not _real(off) or tag is None or tag == "O":
            close()
            continue
        if tag[:2] not in ("B-", "I-") or len(tag) < 3:
            raise ValueError(f"tags_to_spans: {tag!r} is not a BIO tag")
        typ = tag[2:]
        if tag.startswith("I-") and cur_type == typ:
            cur_end = off[1]
            continue
        close()
        cur_type, cur_start, cur_end = typ, off[0], off[1]
    close()
    return out


def token_windows(n_tokens: int, max_tokens: int, *, center: tuple[int, int] | None = None) -> list[range]:
    """Split ``n_tokens`` content tokens into windows of at most ``max_tokens`` (no token lost, no overlap).

    With ``center=(i, j)`` a single window of ``max_tokens`` containing tokens ``i..j-1`` (as centred as possible)
    is returned instead: used for relation inputs, which need the head entity in view.
    """
    if max_tokens < 1:
        raise ValueError(f"token_windows: max_tokens must be >= 1, got {max_tokens}")
    if n_tokens <= max_tokens:
        return [range(n_tokens)]
    if center is None:
        return [range(a, min(a + max_tokens, n_tokens)) for a in range(0, n_tokens, max_tokens)]
    i, j = center
    slack = max(0, max_tokens - (j - i))
    a = max(0, min(i - slack // 2, n_tokens - max_tokens))
    return [range(a, min(n_tokens, a + max_tokens))]
