"""Model output text → sentence-relative ``Span`` s, with every failure counted by reason. Never raises on text.

Owns the parsers of the registered output formats (``PARSERS``, keys as ``fedmedlora.prompts.FORMATS``).
Must not import torch, transformers, peft or flwr.

HTML (the paper's inline markup)
    A tolerant regex tag scanner recognises ``<span class="x">`` (also ``class='x'``, ``class=x``, any case,
    extra attributes), ``</span>`` and nesting; everything else is plain text. The tag-stripped text is aligned
    to the original sentence character by character (identity when equal, otherwise
    ``difflib.SequenceMatcher(autojunk=False)``); a span maps to sentence offsets only when all its characters
    lie in ONE matching block, i.e. are reproduced exactly and contiguously. Whitespace at the inside edges of a
    span is trimmed first. There is no fuzzy token matching (cf. the reference code's character-set Jaccard).

JSON
    Code fences are stripped, the list starting at the first ``[`` is decoded item by item (so trailing garbage
    and truncation after the last complete item are tolerated), each ``{"type", "text"}`` (``"entity"`` is
    accepted for ``"type"``) is located by exact substring search from a cursor: first from the start of the
    previous match onward, then from the sentence start, never using the same (start, end, type) twice. For RE,
    when the caller passes the head span, the unused occurrence nearest to the head is taken instead. Only when
    the exact text occurs nowhere is letter case ignored ("Chronic myeloid leukemia" for "chronic myeloid
    leukemia"; small models often capitalise a list item); the span is still the sentence's own characters.

Failure reasons (``ParseResult.failures``)
    ``unknown_type``  span of a type not in ``allowed_types`` (dropped, never a false positive)
    ``text_mismatch`` HTML span whose text is not reproduced exactly and contiguously in the sentence
    ``not_found``     JSON item whose text does not occur (again) in the sentence
    ``unclosed_tag``  ``<span>`` never closed (the span is dropped)
    ``stray_close``   ``</span>`` without an open span
    ``truncated``     output ends inside a tag (HTML) or inside the JSON list (JSON)
    ``empty_span``    span / item with empty (or whitespace-only) text
    ``no_class``      ``<span>`` without a class attribute
    ``invalid_json``  no JSON list found / undecodable
    ``invalid_item``  list item that is not an object with string ``type`` and ``text``
    ``duplicate``     the same span predicted twice (kept once)
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from difflib import SequenceMatcher

from fedmedlora.schema import Span

#: Generation that runs on past the answer into a new prompt section is cut here.
_SECTION = re.compile(r"\n\s*###")


@dataclass(frozen=True)
class ParseResult:
    """Spans recovered from one model output.

    Attributes:
        spans: distinct sentence-relative spans of allowed types, sorted.
        n_failures: ``sum(failures.values())``.
        failures: count per failure reason (see the module docstring).
    """

    spans: tuple[Span, ...]
    n_failures: int = 0
    failures: dict[str, int] = field(default_factory=dict)


def _result(spans: Iterable[Span], fails: Counter[str]) -> ParseResult:
    uniq: list[Span] = []
    seen: set[Span] = set()
    for s in spans:
        if s in seen:
            fails["duplicate"] += 1
            continue
        seen.add(s)
        uniq.append(s)
    failures = {k: v for k, v in sorted(fails.items()) if v}
    return ParseResult(tuple(sorted(uniq)), sum(failures.values()), failures)


def section_started(output: str) -> bool:
    """A new ``###`` prompt section has started in ``output``: both parsers ignore everything from there on."""
    return _SECTION.search(output) is not None


def _cut_trailing_section(output: str) -> str:
    m = _SECTION.search(output)
    return output[: m.start()] if m else output


# --------------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------------

_TAG = re.compile(r"<\s*(?P<close>/\s*)?span\b(?P<attrs>[^<>]*)>", re.IGNORECASE)
_CLASS = re.compile(r"""\bclass\s*=\s*(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s"'>/]+))""", re.IGNORECASE)
#: The tail after the last "<" of a tag cut off by the end of the output: "", "sp", 'span class="pro', "/spa".
_PARTIAL_TAG_TAIL = re.compile(r"\s*(?:/\s*)?(?:s(?:p(?:a(?:n(?:\b.*)?)?)?)?)?", re.IGNORECASE | re.DOTALL)


def _partial_tag_start(output: str) -> int:
    """Index of a tag cut off by the end of ``output`` (no ``>`` after the last ``<``), or -1."""
    i = output.rfind("<")
    if i < 0 or ">" in output[i:] or not _PARTIAL_TAG_TAIL.fullmatch(output, i + 1):
        return -1
    return i


def scan_html(output: str, sentence_text: str = "") -> tuple[str, list[tuple[int, int, str]], Counter[str]]:
    """Strip span tags from ``output``.

    A tag fragment cut off by the end of the output (``<spa``, ``<span class="pro``) counts as ``truncated``
    and is removed, unless the sentence itself ends with that text (e.g. a sentence ending in ``<``).

    Returns:
        ``(stripped_text, spans, failures)`` where spans are ``(start, end, class)`` into ``stripped_text``
        (class lower-cased and stripped; ``""`` when the tag had no class).
    """
    fails: Counter[str] = Counter()
    cut = _partial_tag_start(output)
    if cut >= 0 and not sentence_text.endswith(output[cut:]):
        fails["truncated"] += 1
        output = output[:cut]
    text: list[str] = []
    n = 0
    stack: list[tuple[int, str]] = []
    spans: list[tuple[int, int, str]] = []
    pos = 0
    for m in _TAG.finditer(output):
        chunk = output[pos : m.start()]
        text.append(chunk)
        n += len(chunk)
        pos = m.end()
        if m.group("close"):
            if stack:
                start, cls = stack.pop()
                spans.append((start, n, cls))
            else:
                fails["stray_close"] += 1
        else:
            cm = _CLASS.search(m.group("attrs"))
            cls = ""
            if cm:
                cls = (cm.group("dq") or cm.group("sq") or cm.group("bare") or "").strip().lower()
            stack.append((n, cls))
    text.append(output[pos:])
    if stack:
        fails["unclosed_tag"] += len(stack)
    return "".join(text), spans, fails


def _block_map(stripped: str, sentence: str) -> Callable[[int, int], tuple[int, int] | None]:
    """A function mapping a stripped-text interval to sentence offsets when it lies in one matching block."""
    if stripped == sentence:
        return lambda a, b: (a, b)
    blocks = [b for b in SequenceMatcher(None, stripped, sentence, autojunk=False).get_matching_blocks() if b.size]

    def mapper(a: int, b: int) -> tuple[int, int] | None:
        for blk in blocks:
            if blk.a <= a and b <= blk.a + blk.size:
                return blk.b + (a - blk.a), blk.b + (b - blk.a)
        return None

    return mapper


def parse_html(output: str, sentence_text: str, allowed_types: Iterable[str]) -> ParseResult:
    """Parse inline ``<span class="type">`` markup (see the module docstring)."""
    allowed = {t.lower() for t in allowed_types}
    stripped, raw, fails = scan_html(_cut_trailing_section(output), sentence_text)
    mapper: Callable[[int, int], tuple[int, int] | None] | None = None
    spans: list[Span] = []
    for a, b, cls in raw:
        while a < b and stripped[a].isspace():
            a += 1
        while b > a and stripped[b - 1].isspace():
            b -= 1
        if not cls:
            fails["no_class"] += 1
            continue
        if cls not in allowed:
            fails["unknown_type"] += 1
            continue
        if a >= b:
            fails["empty_span"] += 1
            continue
        if mapper is None:
            mapper = _block_map(stripped, sentence_text)
        mapped = mapper(a, b)
        if mapped is None:
            fails["text_mismatch"] += 1
            continue
        spans.append(Span(mapped[0], mapped[1], cls))
    return _result(spans, fails)


# --------------------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[a-zA-Z]*")


def _decode_list(output: str, fails: Counter[str]) -> list:
    """Decode the JSON list starting at the first ``[``, item by item; tolerant of truncation and garbage."""
    text = _FENCE.sub("", output)
    start = text.find("[")
    attempts = 0
    while start >= 0 and attempts < _MAX_LIST_STARTS:
        attempts += 1
        items, problem = _decode_items(text, start + 1)
        if items or problem != "invalid_json":
            if problem:
                fails[problem] += 1
            return items
        start = text.find("[", start + 1)  # prose such as "[see below]" before the list: try the next "["
    fails["invalid_json"] += 1
    return []


_MAX_LIST_STARTS = 20
_DECODER = json.JSONDecoder()


def _decode_items(text: str, i: int) -> tuple[list, str | None]:
    """Items of a JSON list whose ``[`` precedes ``i``, and ``None``, ``"truncated"`` or ``"invalid_json"``."""
    items: list = []
    n = len(text)
    while True:
        while i < n and (text[i].isspace() or text[i] == ","):
            i += 1
        if i >= n:
            return items, "truncated"
        if text[i] == "]":
            return items, None
        try:
            item, i = _DECODER.raw_decode(text, i)
        except (json.JSONDecodeError, RecursionError):
            # An item cut off by the end of the output is truncation; anything else is undecodable.
            return items, ("truncated" if "]" not in text[i:] else "invalid_json")
        items.append(item)


def json_list_closed(output: str) -> bool:
    """The list at the first ``[`` of ``output`` (code fences removed) is closed and every item in it decodes: what
    ``parse_json`` reads from it is final, whatever follows. A first ``[`` that does not start a decodable list
    never counts (the parser may then read a later one)."""
    text = _FENCE.sub("", output)
    start = text.find("[")
    return start >= 0 and _decode_items(text, start + 1)[1] is None


def occurrences(needle: str, sentence: str, lo: int, hi: int, fold: bool) -> Iterator[tuple[int, int]]:
    """Every occurrence ``(start, end)`` of ``needle`` starting in ``[lo, hi)`` (overlapping ones included);
    ``fold``: ignore letter case (the span still comes from the sentence, so offsets and text stay exact)."""
    if not fold:
        i = sentence.find(needle, lo, hi + len(needle) - 1)
        while i >= 0:
            yield i, i + len(needle)
            i = sentence.find(needle, i + 1, hi + len(needle) - 1)
        return
    pattern = re.compile(re.escape(needle), re.IGNORECASE)
    m = pattern.search(sentence, lo)
    while m is not None and m.start() < hi:
        yield m.start(), m.end()
        m = pattern.search(sentence, m.start() + 1)


def _locate(
    needle: str, typ: str, sentence: str, cursor: int, used: set[tuple[int, int, str]]
) -> tuple[int, int] | None:
    """First unused occurrence at or after ``cursor``, else the first unused one starting before it; exact text
    first, then ignoring letter case."""
    for fold in (False, True):
        for lo, hi in ((cursor, len(sentence)), (0, cursor)):
            for a, b in occurrences(needle, sentence, lo, hi, fold):
                if (a, b, typ) not in used:
                    return a, b
    return None


def _locate_near(needle: str, typ: str, sentence: str, anchor: Span, used: set[tuple[int, int, str]]):
    """The unused occurrence nearest to ``anchor`` (distance between intervals; ties → the earlier one); exact
    text first, then ignoring letter case."""
    for fold in (False, True):
        best: tuple[int, int, int] | None = None
        for a, b in occurrences(needle, sentence, 0, len(sentence), fold):
            if (a, b, typ) not in used:
                dist = max(0, anchor.start - b, a - anchor.end)
                if best is None or dist < best[0]:
                    best = (dist, a, b)
        if best is not None:
            return best[1], best[2]
    return None


def parse_json(output: str, sentence_text: str, allowed_types: Iterable[str], head: Span | None = None) -> ParseResult:
    """Parse a JSON list of ``{"type", "text"}`` objects (see the module docstring).

    With ``head`` (RE), each item takes the unused occurrence nearest to the head instead of the cursor search:
    modifiers sit next to their head, and a modifier string repeated elsewhere in the sentence is then mapped to
    the right mention far more often.
    """
    allowed = {t.lower() for t in allowed_types}
    fails: Counter[str] = Counter()
    items = _decode_list(_cut_trailing_section(output), fails)
    spans: list[Span] = []
    used: set[tuple[int, int, str]] = set()
    cursor = 0
    for item in items:
        typ = item.get("type", item.get("entity")) if isinstance(item, dict) else None
        txt = item.get("text") if isinstance(item, dict) else None
        if not isinstance(typ, str) or not isinstance(txt, str):
            fails["invalid_item"] += 1
            continue
        typ = typ.strip().lower()
        if typ not in allowed:
            fails["unknown_type"] += 1
            continue
        txt = txt.strip()
        if not txt:
            fails["empty_span"] += 1
            continue
        if head is not None:
            loc = _locate_near(txt, typ, sentence_text, head, used)
        else:
            loc = _locate(txt, typ, sentence_text, cursor, used)
        if loc is None:
            fails["not_found"] += 1
            continue
        used.add((loc[0], loc[1], typ))
        cursor = loc[0]
        spans.append(Span(loc[0], loc[1], typ))
    return _result(spans, fails)


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------

PARSERS: dict[str, Callable[..., ParseResult]] = {"html": parse_html, "json": parse_json}


def parse(
    output: str,
    sentence_text: str,
    task: str,
    fmt: str,
    allowed_types: Iterable[str],
    *,
    head: Span | None = None,
) -> ParseResult:
    """Parse one model answer into sentence-relative spans.

    Args:
        output: the generated text (the answer only, after ``### Output Text:``); any string.
        sentence_text: the original sentence (``Sentence.text``) the prompt was built from.
        task: ``"ner"`` or ``"re"`` (both formats parse the same way; RE spans are the head's modifiers).
        fmt: a key of ``PARSERS``.
        allowed_types: the types the prompt asked for (``fedmedlora.prompts.allowed_types``); others are dropped
            and counted as ``unknown_type``.
        head: optional, RE only: the marked head's span. The JSON parser then maps each item to the unused
            occurrence nearest to the head (HTML positions are explicit and ignore it).

    Raises:
        ValueError: only for an unknown ``fmt`` or ``task`` (configuration errors), never for ``output``.
    """
    if task not in ("ner", "re"):
        raise ValueError(f"parse: unknown task {task!r}; choose 'ner' or 're'")
    try:
        parser = PARSERS[fmt]
    except KeyError:
        raise ValueError(f"parse: unknown format {fmt!r}; choose one of {sorted(PARSERS)}") from None
    if not isinstance(output, str):
        return ParseResult((), 1, {"invalid_output": 1})
    if fmt == "json" and task == "re" and head is not None:
        return parse_json(output, sentence_text, allowed_types, head=head)
    return parser(output, sentence_text, allowed_types)
