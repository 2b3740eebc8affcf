"""Error analysis of one sentence: which prediction goes with which gold span, and how it is wrong.

Owns ``classify_spans`` (gold and predicted spans → one ``Outcome`` per gold span and per prediction, of five
kinds) and ``classify_sentence`` (a sentence's entities, and its modifiers head by head). The study report's error
browser (``fedmedlora.html_report``) draws these; the scores themselves stay in ``fedmedlora.metrics``.

The kinds, decided in this order, each pass pairing a gold span with at most one prediction:

1. ``match``: same start, end and type (what strict scoring counts as a true positive);
2. ``type``: same start and end, another type;
3. ``boundary``: overlapping, same type, other boundaries (what lenient scoring forgives);
4. ``type`` again: overlapping, another type and other boundaries (lenient scoring does not forgive it either;
   the wrong type is what a reader fixes first, the outcome keeps both spans);
5. ``miss``: a gold span left unpaired (a false negative); ``false_positive``: a prediction left unpaired.

Among several candidates a prediction takes the unpaired gold span it overlaps most (ties: the earlier one).

Pure core: stdlib and ``fedmedlora.schema`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from fedmedlora.schema import Sentence, Span

MATCH, TYPE, BOUNDARY, MISS, FALSE_POSITIVE = "match", "type", "boundary", "miss", "false_positive"
#: Every kind, in the order the report lists them.
KINDS: tuple[str, ...] = (MATCH, MISS, FALSE_POSITIVE, BOUNDARY, TYPE)
#: How the report names each kind.
KIND_LABELS: dict[str, str] = {
    MATCH: "exact match",
    MISS: "miss (false negative)",
    FALSE_POSITIVE: "false positive",
    BOUNDARY: "boundary error",
    TYPE: "type error",
}


@dataclass(frozen=True)
class Outcome:
    """One gold span, one prediction, or a gold span paired with a prediction, and the kind of the pairing.

    ``gold`` is None for a false positive, ``pred`` is None for a miss; both are set for the other kinds.
    ``head`` is the gold head entity id for a modifier outcome, None for an entity.
    """

    kind: str
    gold: Span | None
    pred: Span | None
    head: str | None = None

    @property
    def span(self) -> Span:
        """The span to draw: the prediction where there is one, else the missed gold span."""
        s = self.pred if self.pred is not None else self.gold
        assert s is not None
        return s


def _overlap(a: Span, b: Span) -> int:
    return max(0, min(a.end, b.end) - max(a.start, b.start))


def classify_spans(gold: Iterable[Span], pred: Iterable[Span], head: str | None = None) -> list[Outcome]:
    """Pair gold and predicted spans (duplicates count once) and name each outcome's kind (module docstring).

    Returns the outcomes sorted by the position of their span (prediction first, else gold).
    """
    g = sorted(set(gold), key=lambda s: (s.start, s.end, s.type))
    p = sorted(set(pred), key=lambda s: (s.start, s.end, s.type))
    gold_free = [True] * len(g)
    pred_free = [True] * len(p)
    out: list[Outcome] = []
    passes: list[tuple[str, Callable[[Span, Span], bool]]] = [
        (MATCH, lambda a, b: (a.start, a.end, a.type) == (b.start, b.end, b.type)),
        (TYPE, lambda a, b: (a.start, a.end) == (b.start, b.end)),
        (BOUNDARY, lambda a, b: a.type == b.type and a.overlaps(b)),
        (TYPE, lambda a, b: a.overlaps(b)),
    ]
    for kind, fits in passes:
        for j, ps in enumerate(p):
            if not pred_free[j]:
                continue
            best, best_overlap = None, 0
            for i, gs in enumerate(g):
                if gold_free[i] and fits(gs, ps) and _overlap(gs, ps) > best_overlap:
                    best, best_overlap = i, _overlap(gs, ps)
            if best is not None:
                gold_free[best] = pred_free[j] = False
                out.append(Outcome(kind, g[best], ps, head))
    out += [Outcome(MISS, gs, None, head) for i, gs in enumerate(g) if gold_free[i]]
    out += [Outcome(FALSE_POSITIVE, None, ps, head) for j, ps in enumerate(p) if pred_free[j]]
    return sorted(out, key=lambda o: (o.span.start, o.span.end, o.span.type, o.kind))


def classify_sentence(gold: Sentence, pred: Sentence) -> tuple[list[Outcome], list[Outcome]]:
    """``(entity outcomes, modifier outcomes)`` of a predicted sentence against its gold sentence.

    Modifiers are compared head by head: a predicted modifier points at a gold entity id (RE with gold heads,
    the evaluation protocol) and is paired only with the gold modifiers of that same head.
    """
    entities = classify_spans([e.span for e in gold.entities], [e.span for e in pred.entities])
    heads = list(dict.fromkeys([*(m.head for m in gold.modifiers), *(m.head for m in pred.modifiers)]))
    modifiers: list[Outcome] = []
    for h in heads:
        modifiers += classify_spans(
            [m.span for m in gold.modifiers if m.head == h], [m.span for m in pred.modifiers if m.head == h], head=h
        )
    return entities, sorted(modifiers, key=lambda o: (o.span.start, o.span.end, o.span.type, o.kind))


def count_kinds(outcomes: Sequence[Outcome]) -> dict[str, int]:
    """How many outcomes of each kind (every kind present as a key)."""
    counts = dict.fromkeys(KINDS, 0)
    for o in outcomes:
        counts[o.kind] += 1
    return counts
