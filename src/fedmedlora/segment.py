"""Deterministic, rule-based sentence segmentation that keeps character offsets.

Owns: ``split_sentences`` (text → half-open ``(start, end)`` sentence intervals into the original text) and the
abbreviation list it honours. No model is needed (no spaCy model is available offline) and the result depends on
nothing but the text and the arguments, so a benchmark built twice is byte-identical.
Must not import torch, transformers, peft or flwr.

Rules, applied in this order:

1. **Newlines** end a sentence (``\\n``, ``\\r\\n`` and ``\\r``) when ``newlines=True``: Chia has one criterion per
   line and MACCROBAT one sentence per line.
2. **Sentence punctuation** (``.``, ``!``, ``?``, optionally followed by closing quotes/brackets) ends a sentence
   when ``punctuation=True`` and it is followed by whitespace and then an upper-case letter, a digit or an opening
   quote/bracket. A period does *not* end a sentence after a known abbreviation (``Dr.``, ``vs.``, ``e.g.``,
   ``i.e.``, ``mg.``, ``No.``, ``Fig.``, ``et al.``, ...; see ``ABBREVIATIONS``) or after a single upper-case
   initial (``J. Smith``).
3. Sentences are **trimmed** of surrounding whitespace; all-whitespace pieces are dropped.
4. **Protected intervals** (the annotated spans of the document) are never cut: if a boundary falls strictly inside
   a protected interval, the sentences on both sides are merged. A sentence is also widened to cover a protected
   interval that starts or ends in the whitespace trimmed in step 3.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

#: Lower-cased tokens (without their final period) after which a period never ends a sentence.
ABBREVIATIONS: frozenset[str] = frozenset(
    {
        # titles and names
        "dr", "drs", "mr", "mrs", "ms", "prof", "st", "jr", "sr", "messrs",
        # Latin and general
        "e.g", "i.e", "eg", "ie", "etc", "vs", "v", "cf", "al", "approx", "ca", "viz", "resp", "incl", "esp",
        "min", "max", "avg", "est", "dept", "univ", "inc", "ltd", "co", "corp",
        # references and numbering
        "fig", "figs", "no", "nos", "vol", "ref", "refs", "eq", "eqs", "tab", "p", "pp", "ch", "sect", "suppl",
        # units and dosing
        "mg", "mcg", "kg", "g", "ml", "dl", "l", "mmol", "iu", "u", "cm", "mm", "hr", "hrs", "h", "wk", "wks",
        "mo", "mos", "yr", "yrs", "sec", "tabs", "cap", "caps", "inj", "amp", "soln", "susp",
        "b.i.d", "t.i.d", "q.i.d", "q.d", "p.o", "i.v", "i.m", "s.c", "p.r.n", "a.m", "p.m", "q.h.s",
        "bid", "tid", "qid", "qd", "po", "iv", "im", "sc", "prn", "qhs",
        # clinical-trial and medical shorthand
        "pt", "pts", "dx", "hx", "tx", "rx", "sx", "fx", "temp", "wt", "ht",
        # months
        "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    }
)  # fmt: skip

_PUNCT_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s+[\"'“‘(\[]?[A-Z0-9])")
_NEWLINE = re.compile(r"\r\n|\r|\n")
_TOKEN_BEFORE = re.compile(r"(\S+)$")


def _is_abbreviation(text: str, dot: int) -> bool:
    """True when the period at ``dot`` closes an abbreviation or an initial rather than a sentence."""
    m = _TOKEN_BEFORE.search(text, 0, dot)
    if not m:
        return False
    token = m.group(1).lstrip("(\"'[“‘").lower()
    if token in ABBREVIATIONS:
        return True
    # "et al." — "al" is listed; single upper-case initial "J." (but not "vitamin A." at a sentence end is
    # indistinguishable: we keep the initial rule, which errs toward longer sentences)
    return len(token) == 1 and token.isalpha() and text[dot - 1].isupper()


def _raw_boundaries(text: str, newlines: bool, punctuation: bool) -> list[int]:
    """Sorted offsets at which a new sentence may start (before trimming)."""
    cuts: set[int] = set()
    if newlines:
        for m in _NEWLINE.finditer(text):
            cuts.add(m.end())
    if punctuation:
        for m in _PUNCT_END.finditer(text):
            last_dot = m.group(0).rfind(".")
            # a "?"/"!" always ends; a run ending in "." is checked against the abbreviation list
            if (
                "!" not in m.group(0)
                and "?" not in m.group(0)
                and last_dot >= 0
                and _is_abbreviation(text, m.start() + m.group(0).find("."))
            ):
                continue
            cuts.add(m.end())
    return sorted(c for c in cuts if 0 < c < len(text))


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def split_sentences(
    text: str,
    protected: Iterable[tuple[int, int]] = (),
    *,
    newlines: bool = True,
    punctuation: bool = True,
) -> list[tuple[int, int]]:
    """Split ``text`` into sentences, returned as sorted, non-overlapping half-open ``(start, end)`` intervals.

    Args:
        text: the document text (unchanged; CRLF is fine).
        protected: annotated ``(start, end)`` intervals (document offsets) that must each end up inside a single
            sentence. Intervals outside ``[0, len(text)]`` raise ``ValueError``.
        newlines: end a sentence at every line break.
        punctuation: end a sentence at ``. ! ?`` followed by whitespace and a capital letter or digit.

    Returns:
        Sentence intervals, trimmed of surrounding whitespace (except where a protected interval reaches into
        that whitespace), covering every non-whitespace character of ``text`` exactly once.
    """
    ivs = sorted({(int(s), int(e)) for s, e in protected})
    for s, e in ivs:
        if not (0 <= s <= e <= len(text)):
            raise ValueError(f"protected interval [{s}, {e}) is outside the text (len {len(text)})")
    bounds = [0, *_raw_boundaries(text, newlines, punctuation), len(text)]
    pieces = []
    for a, b in itertools.pairwise(bounds):
        s, e = _trim(text, a, b)
        if s < e:
            pieces.append([s, e])
    # widen pieces to protected intervals that poke into trimmed whitespace, then merge pieces an interval spans
    if not pieces:
        # whitespace-only text: protected intervals (if any) become one sentence
        if ivs and any(e > s for s, e in ivs):
            return [(min(s for s, _ in ivs), max(e for _, e in ivs))]
        return []
    for s, e in ivs:
        if e <= s:
            continue
        # the first piece that ends after s, the last piece that starts before e
        first = next((i for i, p in enumerate(pieces) if p[1] > s), len(pieces) - 1)
        last = max((i for i, p in enumerate(pieces) if p[0] < e), default=0)
        lo, hi = min(first, last), max(first, last)
        pieces[lo][0] = min(pieces[lo][0], s)
        pieces[hi][1] = max(pieces[hi][1], e)
        if hi > lo:
            pieces[lo][1] = pieces[hi][1]
            del pieces[lo + 1 : hi + 1]
    # widening can make neighbours overlap: merge them
    merged: list[list[int]] = []
    for p in pieces:
        if merged and p[0] < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], p[1])
        else:
            merged.append(p)
    return [(s, e) for s, e in merged]
