"""When an answer is finished: early-stop rules for greedy decoding that never change what the parser reads.

Owns: ``answer_complete`` (the answer is complete and nothing generated after it can change its parse),
``repetition_loop`` (the answer has fallen into a token loop), ``StopRule`` (both, for one prompt) and
``cut_at_stop`` (the same rule applied after the fact to a finished generation: what an early-stopping decoder
must return, used by the tests and the throughput benchmark).

Every rule is a function of the answer so far only, so stopping the moment a rule fires and cutting a full
generation at the first prefix where it fires give the same text.

Completeness by format:
    JSON   (``parsing.json_list_closed``, beside the decoder it mirrors) the list that starts at the first ``[``
           is closed (``]``) with every item decoded, exactly what
           ``parsing.parse_json`` reads; anything after it is ignored by the parser. A first ``[`` that does not
           start a decodable list never counts as complete (the parser may then use a later ``[``).
    HTML   the tag-stripped answer reproduces the whole sentence with no tag open or cut off. Text after that
           point would only be extra characters the aligner has to skip.
    both   a new ``###`` section has started (the parser cuts there).

Repetition: the last ``max(min_tokens, min_repeats * p)`` tokens repeat with a period ``p <= max_period``
(``<pre><code>`` sixteen times, or the same JSON item over and over). Greedy decoding of a looping model rarely
leaves the loop, and the parser would drop the repeats anyway (``not_found`` / ``duplicate``).

Pure core: stdlib only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedmedlora.parsing import json_list_closed, scan_html, section_started


def html_sentence_reproduced(text: str, sentence: str) -> bool:
    """The tag-stripped ``text`` equals ``sentence`` (after trailing whitespace) and no tag is open or cut off."""
    tail, last = text.rstrip(), sentence.rstrip()[-1:]
    if last and not (tail.endswith(last) or tail.endswith(">")):
        return False  # cheap pre-check: the answer does not end where the sentence (or a tag) ends
    stripped, _, fails = scan_html(text, sentence)
    if fails.get("unclosed_tag") or fails.get("truncated"):
        return False
    return stripped.rstrip() == sentence.rstrip()


def answer_complete(text: str, fmt: str, sentence: str | None = None) -> bool:
    """Whether the answer ``text`` is complete in format ``fmt`` (see the module docstring).

    ``sentence`` is needed for HTML (without it an HTML answer is complete only once a new section starts).
    """
    if section_started(text):
        return True
    if fmt == "json":
        return json_list_closed(text)
    if fmt == "html" and sentence is not None:
        return html_sentence_reproduced(text, sentence)
    return False


@dataclass(frozen=True)
class RepetitionRule:
    """A loop is ``min_repeats`` or more periods (period ``<= max_period`` tokens) covering ``>= min_tokens``."""

    min_tokens: int = 24
    max_period: int = 32
    min_repeats: int = 3

    def __call__(self, ids: Sequence[int]) -> bool:
        n_ids = len(ids)
        if n_ids < self.min_tokens:
            return False
        window = max(self.min_tokens, self.min_repeats * self.max_period)
        ids = list(ids[-window:])
        for p in range(1, self.max_period + 1):
            n = max(self.min_tokens, self.min_repeats * p)
            if n > len(ids):
                break
            tail = ids[-n:]
            if tail[p:] == tail[:-p]:
                return True
        return False


def repetition_loop(ids: Sequence[int], rule: RepetitionRule | None = None) -> bool:
    """Whether the token ids end in a repetition loop (``RepetitionRule`` defaults)."""
    return (rule or RepetitionRule())(ids)


@dataclass(frozen=True)
class StopRule:
    """The early-stop rule of one prompt: its answer is complete, or it loops.

    Attributes:
        fmt: the answer format (``None``: no completeness rule, e.g. a free-text prompt).
        sentence: the sentence an HTML answer must reproduce.
        repetition: the loop rule, or ``None`` to never stop on loops.
    """

    fmt: str | None = None
    sentence: str | None = None
    repetition: RepetitionRule | None = RepetitionRule()

    def __call__(self, ids: Sequence[int], text: str) -> bool:
        if self.fmt is not None and answer_complete(text, self.fmt, self.sentence):
            return True
        return self.repetition is not None and self.repetition(ids)

    @classmethod
    def for_prompt(cls, prompt: str, *, complete: bool = True, repetition: bool = True) -> StopRule:
        """The rule for a prompt: with ``complete``, completeness from a ``prompts.Prompt``'s format and sentence
        (a plain string has none); with ``repetition``, the loop rule."""
        return cls(
            fmt=getattr(prompt, "fmt", None) if complete else None,
            sentence=getattr(prompt, "sentence", None) if complete else None,
            repetition=RepetitionRule() if repetition else None,
        )


def cut_at_stop(ids: Sequence[int], decode: Callable[[Sequence[int]], str], rule: StopRule) -> list[int]:
    """``ids`` up to and including the first token after which ``rule`` fires (all of them if it never does):
    what a decoder that stops early on ``rule`` returns for the same greedy generation."""
    for k in range(1, len(ids) + 1):
        if rule(ids[:k], decode(ids[:k])):
            return list(ids[:k])
    return list(ids)


__all__ = [
    "RepetitionRule",
    "StopRule",
    "answer_complete",
    "cut_at_stop",
    "html_sentence_reproduced",
    "repetition_loop",
]
