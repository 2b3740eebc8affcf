"""Constrained answers: a character automaton that accepts exactly the JSON answers the parser maps without loss.

Owns ``JsonAnswerState``: the state of a JSON answer being written, character by character. A decoder
(``fedmedlora.lm.constrained``) only lets the model emit a token whose text keeps the state valid, so a finished
answer always parses, with no failure of any kind, and every span is text copied from the sentence:

* the layout is the training layout, ``[{"type": "<t>", "text": "<s>"}, {"type": ...}]`` (``prompts.render_json``);
* ``<t>`` is one of the prompt's types;
* ``<s>`` decodes (JSON string escapes ``\\" \\\\ \\/ \\n \\t \\r \\b \\f``) to a substring of the sentence, does not
  start with whitespace, is not empty, and is closed only while the sentence still holds an occurrence of it (and
  of that type) that no earlier item of the answer has taken. That is exactly when ``parsing.parse_json`` locates
  it (``not_found``, ``duplicate``, ``empty_span``, ``unknown_type``, ``invalid_item`` cannot happen);
* ``<s>`` begins and ends at word boundaries of that occurrence (an annotated span never cuts a word).

``finish`` turns any prefix into a valid answer: the list closed after the last complete item (what an answer cut
off by the token budget becomes). Pure core: stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedmedlora.parsing import occurrences

# modes
START, LIST_OPEN, LIT, TYPE, TEXT, AFTER_ITEM, DONE = range(7)

ITEM_OPEN = '{"type": "'
TYPE_TO_TEXT = '", "text": "'
ITEM_CLOSE = '"}'
SEPARATOR = ", "
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def count_occurrences(needle: str, haystack: str) -> int:
    """Occurrences of ``needle`` in ``haystack``, overlapping ones included (the parser's own search)."""
    return sum(1 for _ in occurrences(needle, haystack, 0, len(haystack), fold=False))


def _starts_word(text: str, i: int) -> bool:
    return i == 0 or not (text[i - 1].isalnum() and text[i].isalnum())


def _ends_word(text: str, j: int) -> bool:
    return j == len(text) or not (text[j - 1].isalnum() and text[j].isalnum())


def word_starts(needle: str, haystack: str) -> list[int]:
    """Start offsets of the occurrences of ``needle`` that begin at a word boundary."""
    return [a for a, _ in occurrences(needle, haystack, 0, len(haystack), fold=False) if _starts_word(haystack, a)]


def count_words(needle: str, haystack: str) -> int:
    """Occurrences of ``needle`` that begin and end at word boundaries (no word is cut)."""
    return sum(1 for i in word_starts(needle, haystack) if _ends_word(haystack, i + len(needle)))


@dataclass(frozen=True)
class JsonAnswerState:
    """A valid prefix of a constrained JSON answer (immutable: ``feed`` returns the next state or ``None``).

    Attributes:
        sentence: the text spans are copied from.
        types: the allowed types.
        mode: where in the grammar the prefix ends.
        lit: the rest of a fixed literal still to be written (mode ``LIT``), then ``after`` is the next mode.
        buf: the type (mode ``TYPE``) or decoded text (mode ``TEXT``) written so far.
        escape: the last text character was a backslash.
        item_type: the type of the item being written.
        used: ``(text, type)`` of the complete items, in order.
        text: the answer so far.
        last_item_end: ``len(text)`` right after the last complete item (or after ``[``), for ``finish``.
        word_boundaries: a span must also begin and end at word boundaries (no "ortn" out of "shortness":
            annotated spans never cut a word). Stricter than the parser needs, never looser.
    """

    sentence: str
    types: tuple[str, ...]
    mode: int = START
    lit: str = ""
    after: int = TYPE
    buf: str = ""
    escape: bool = False
    item_type: str = ""
    used: tuple[tuple[str, str], ...] = ()
    text: str = ""
    last_item_end: int = 0
    word_boundaries: bool = True

    @property
    def done(self) -> bool:
        return self.mode == DONE

    def feed(self, chars: str) -> JsonAnswerState | None:
        """The state after writing ``chars``, or ``None`` if they leave the language."""
        state: JsonAnswerState | None = self
        for ch in chars:
            assert state is not None
            state = state._step(ch)
            if state is None:
                return None
        return state

    def _can_close(self, decoded: str) -> bool:
        needle = decoded.strip()
        if not needle or needle != decoded.lstrip():
            return False
        taken = sum(1 for t, ty in self.used if t == needle and ty == self.item_type)
        if self.word_boundaries:
            return count_words(needle, self.sentence) > taken
        return count_occurrences(needle, self.sentence) > taken

    def _step(self, ch: str) -> JsonAnswerState | None:
        text = self.text + ch
        m = self.mode
        if m == START:
            return replace(self, mode=LIST_OPEN, text=text, last_item_end=len(text)) if ch == "[" else None
        if m == LIST_OPEN:
            if ch == "]":
                return replace(self, mode=DONE, text=text)
            if ch == "{":
                return replace(self, mode=LIT, lit=ITEM_OPEN[1:], after=TYPE, text=text)
            return None
        if m == LIT:
            if ch != self.lit[0]:
                return None
            rest = self.lit[1:]
            if rest:
                return replace(self, lit=rest, text=text)
            nxt = replace(self, mode=self.after, lit="", buf="", escape=False, text=text)
            return replace(nxt, last_item_end=len(text)) if self.after == AFTER_ITEM else nxt
        if m == TYPE:
            if ch == '"':
                if self.buf not in self.types:
                    return None
                return replace(self, mode=LIT, lit=TYPE_TO_TEXT[1:], after=TEXT, item_type=self.buf, text=text)
            buf = self.buf + ch
            if not any(t.startswith(buf) for t in self.types):
                return None
            return replace(self, buf=buf, text=text)
        if m == TEXT:
            if self.escape:
                decoded_ch = _ESCAPES.get(ch)
                if decoded_ch is None:
                    return None
                return self._extend_text(decoded_ch, text)
            if ch == "\\":
                return replace(self, escape=True, text=text)
            if ch == '"':
                if not self._can_close(self.buf):
                    return None
                return replace(
                    self,
                    mode=LIT,
                    lit=ITEM_CLOSE[1:],
                    after=AFTER_ITEM,
                    used=(*self.used, (self.buf.strip(), self.item_type)),
                    text=text,
                )
            if ord(ch) < 0x20:
                return None  # raw control characters are not allowed in a JSON string
            return self._extend_text(ch, text)
        if m == AFTER_ITEM:
            if ch == "]":
                return replace(self, mode=DONE, text=text)
            if ch == ",":
                return replace(self, mode=LIT, lit=SEPARATOR[1:] + ITEM_OPEN, after=TYPE, text=text)
            return None
        return None  # DONE: nothing may follow

    def _extend_text(self, ch: str, text: str) -> JsonAnswerState | None:
        buf = self.buf + ch
        if buf[0].isspace() or buf not in self.sentence:
            return None
        if self.word_boundaries and not word_starts(buf, self.sentence):
            return None
        return replace(self, buf=buf, escape=False, text=text)

    def finish(self) -> str:
        """A complete, valid answer: the text itself when the list is closed, else the list closed after the last
        complete item."""
        if self.done:
            return self.text
        if self.last_item_end == 0:
            return "[]"
        return self.text[: self.last_item_end] + "]"


def start_state(sentence: str, types: tuple[str, ...] | list[str], *, word_boundaries: bool = True) -> JsonAnswerState:
    """The empty answer for a sentence and its allowed types."""
    return JsonAnswerState(sentence=sentence, types=tuple(types), word_boundaries=word_boundaries)


__all__ = ["JsonAnswerState", "count_occurrences", "count_words", "start_state", "word_starts"]
