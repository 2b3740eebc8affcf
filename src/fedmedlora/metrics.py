"""Span and relation scoring: ``Counts`` that add up, matching rules, label-set masking, an ``Evaluation`` sum.

Owns the metric definitions (strict / lenient, typed / untyped, NER and relations) and their accumulation over
sentences, documents, sites and Flower clients. Scores are computed only at the end, from summed counts.
Must not import torch, transformers, peft or flwr.

Rules (``RULES``)
-----------------
``strict``            a predicted span matches a gold span with the same ``(start, end, type)``.
``lenient``           a predicted span matches a gold span of the same type sharing >= 1 character.
``strict_untyped``    ``strict`` ignoring the type (what the reference code reports as ``unified_class``).
``lenient_untyped``   ``lenient`` ignoring the type (the reference's headline lenient number).

Matching is one-to-one. Lenient matching runs in two passes: (1) exact pairs (same extent, and type for typed
rules) are matched first; (2) the remaining predictions, in order ``(start, end, type)``, each take the first
remaining overlapping gold span in the same order (greedy left to right, like the reference). Pass (1)
guarantees lenient TP >= strict TP. A prediction covering two gold spans matches only one: strict 0,
lenient P = 1, R = 0.5. Character offsets replace the reference's token alignment (no fuzzy matching).

Relations
---------
A relation is ``Relation(head, modifier)`` with ``modifier.type`` the relation type. It matches a gold relation
when head and modifier both match under the same rule (types of both compared for typed rules; neither for
untyped rules). Per-type rows of relations are keyed by modifier type. In the paper's RE setting the head is
given (the gold entity marked in the prompt), so head matching is trivially exact.

Label-set masking
-----------------
Scoring takes the site's ``LabelSet``: predicted and gold spans of entity types the site does not annotate are
dropped before matching (never false positives or negatives); a relation is kept only when its head type is
annotated and its modifier type is in ``label_set.modifiers_for(head.type)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fedmedlora.schema import LabelSet, Sentence, Span

RULES: tuple[str, ...] = ("strict", "lenient", "strict_untyped", "lenient_untyped")
TASKS: tuple[str, ...] = ("ner", "re")
MICRO = "micro"


@dataclass
class Counts:
    """True positives, false positives and false negatives; P/R/F1 are 0 when undefined."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def __iadd__(self, other: Counts) -> Counts:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def support(self) -> int:
        """Number of gold items."""
        return self.tp + self.fn

    def to_dict(self) -> dict[str, float]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "precision": self.precision, "recall": self.recall,
                "f1": self.f1}  # fmt: skip


@dataclass(frozen=True, order=True)
class Relation:
    """A head entity → modifier link; ``modifier.type`` is the relation type."""

    head: Span
    modifier: Span

    @property
    def type(self) -> str:
        return self.modifier.type


# --------------------------------------------------------------------------------------------------------------
# Gold extraction and masking
# --------------------------------------------------------------------------------------------------------------


def relations_from_sentence(sentence: Sentence) -> list[Relation]:
    """Gold relations of a sentence (one per ``Modifier``), sorted."""
    heads = {e.id: e.span for e in sentence.entities}
    return sorted(Relation(heads[m.head], m.span) for m in sentence.modifiers if m.head in heads)


def relations_for_head(head: Span, modifiers: Iterable[Span]) -> list[Relation]:
    """Relations of one head, e.g. from the modifier spans parsed out of an RE answer."""
    return sorted(Relation(head, m) for m in modifiers)


def mask_spans(spans: Iterable[Span], label_set: LabelSet) -> list[Span]:
    """Spans of entity types the site annotates."""
    return [s for s in spans if s.type in label_set.entities]


def mask_relations(relations: Iterable[Relation], label_set: LabelSet) -> list[Relation]:
    """Relations whose head type is annotated and whose modifier type is annotated for that head type."""
    return [
        r
        for r in relations
        if r.head.type in label_set.entities and r.modifier.type in label_set.modifiers_for(r.head.type)
    ]


# --------------------------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------------------------

T = TypeVar("T", Span, Relation)


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"metrics: unknown rule {rule!r}; choose one of {RULES}")


def _span_key(s: Span, typed: bool) -> Hashable:
    return (s.start, s.end, s.type) if typed else (s.start, s.end)


def _span_overlap(g: Span, p: Span, typed: bool) -> bool:
    return g.overlaps(p) and (not typed or g.type == p.type)


def _rel_key(r: Relation, typed: bool) -> Hashable:
    return (_span_key(r.head, typed), _span_key(r.modifier, typed))


def _rel_overlap(g: Relation, p: Relation, typed: bool) -> bool:
    return _span_overlap(g.head, p.head, typed) and _span_overlap(g.modifier, p.modifier, typed)


def match(
    gold: Sequence[T],
    pred: Sequence[T],
    lenient: bool,
    key: Callable[[T], Hashable],
    overlap: Callable[[T, T], bool],
) -> list[tuple[T, T]]:
    """One-to-one matched ``(gold, pred)`` pairs: exact keys first, then (lenient) greedy overlap.

    Args:
        gold: distinct gold items, sorted.
        pred: distinct predicted items, sorted.
        lenient: run the greedy overlap pass after the exact pass.
        key: the identity compared in the exact pass.
        overlap: the lenient match test.
    """
    by_key: dict[Hashable, list[int]] = {}
    for i, g in enumerate(gold):
        by_key.setdefault(key(g), []).append(i)
    used_gold = [False] * len(gold)
    pairs: list[tuple[T, T]] = []
    rest: list[T] = []
    for p in pred:
        cands = by_key.get(key(p))
        if cands:
            i = cands.pop(0)
            used_gold[i] = True
            pairs.append((gold[i], p))
        else:
            rest.append(p)
    if lenient:
        for p in rest:
            for i, g in enumerate(gold):
                if not used_gold[i] and overlap(g, p):
                    used_gold[i] = True
                    pairs.append((g, p))
                    break
    return pairs


def _count(
    gold: Iterable[T], pred: Iterable[T], rule: str, key_fn, overlap_fn, type_of: Callable[[T], str]
) -> dict[str, Counts]:
    _check_rule(rule)
    typed = not rule.endswith("_untyped")
    g = sorted(set(gold))
    p = sorted(set(pred))
    pairs = match(g, p, rule.startswith("lenient"), lambda x: key_fn(x, typed), lambda a, b: overlap_fn(a, b, typed))
    if not typed:
        return {MICRO: Counts(len(pairs), len(p) - len(pairs), len(g) - len(pairs))}
    tp = Counter(type_of(gi) for gi, _ in pairs)
    n_gold = Counter(type_of(x) for x in g)
    n_pred = Counter(type_of(x) for x in p)
    out = {t: Counts(tp[t], n_pred[t] - tp[t], n_gold[t] - tp[t]) for t in sorted(set(n_gold) | set(n_pred))}
    out[MICRO] = sum(out.values(), Counts())
    return out


def count_spans(gold: Iterable[Span], pred: Iterable[Span], rule: str) -> dict[str, Counts]:
    """Counts per type and ``"micro"`` (untyped rules: ``"micro"`` only). Duplicates count once."""
    return _count(gold, pred, rule, _span_key, _span_overlap, lambda s: s.type)


def count_relations(gold: Iterable[Relation], pred: Iterable[Relation], rule: str) -> dict[str, Counts]:
    """Relation counts per modifier type and ``"micro"`` (untyped rules: ``"micro"`` only)."""
    return _count(gold, pred, rule, _rel_key, _rel_overlap, lambda r: r.type)


# --------------------------------------------------------------------------------------------------------------
# Accumulation
# --------------------------------------------------------------------------------------------------------------

Key = tuple[str, str, str]  # (task, rule, type)


@dataclass
class Evaluation:
    """Summed counts keyed by ``(task, rule, type)`` (type ``"micro"`` for the micro average), plus the number
    of scored instances and parse failures per task. Add per-sentence (or per-RE-instance) results, ``merge``
    evaluations of documents/sites/clients, and compute scores once at the end.
    """

    counts: dict[Key, Counts] = field(default_factory=dict)
    n_instances: dict[str, int] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)

    def _add(self, task: str, per_rule: Mapping[str, Mapping[str, Counts]], types: Iterable[str]) -> None:
        self.n_instances[task] = self.n_instances.get(task, 0) + 1
        for rule, per_type in per_rule.items():
            if not rule.endswith("_untyped"):
                for t in types:  # every annotated type gets a row, even with zero support
                    self.counts.setdefault((task, rule, t), Counts())
            for t, c in per_type.items():
                self.counts.setdefault((task, rule, t), Counts())
                self.counts[(task, rule, t)] += c

    def add_ner(self, gold: Iterable[Span], pred: Iterable[Span], label_set: LabelSet) -> None:
        """Score one sentence's entities under every rule, after masking both sides with ``label_set``."""
        g, p = mask_spans(gold, label_set), mask_spans(pred, label_set)
        self._add("ner", {r: count_spans(g, p, r) for r in RULES}, label_set.sorted_entities())

    def add_re(self, gold: Iterable[Relation], pred: Iterable[Relation], label_set: LabelSet) -> None:
        """Score one RE instance (or a sentence's relations) under every rule, after masking with ``label_set``."""
        g, p = mask_relations(gold, label_set), mask_relations(pred, label_set)
        types = sorted({m for e in label_set.entities for m in label_set.modifiers_for(e)})
        self._add("re", {r: count_relations(g, p, r) for r in RULES}, types)

    def add_failures(self, task: str, failures: Mapping[str, int]) -> None:
        """Record parse failures (e.g. ``ParseResult.failures``) of one answer."""
        for reason, n in failures.items():
            if n:
                self.failures[(task, reason)] = self.failures.get((task, reason), 0) + n

    def get(self, task: str, rule: str, type_: str = MICRO) -> Counts:
        """The summed counts for ``(task, rule, type_)`` (zeros when absent)."""
        return self.counts.get((task, rule, type_), Counts())

    def merge(self, other: Evaluation) -> Evaluation:
        """A new evaluation with the counts of both summed."""
        out = Evaluation()
        out += self
        out += other
        return out

    def __add__(self, other: Evaluation) -> Evaluation:
        return self.merge(other)

    def __iadd__(self, other: Evaluation) -> Evaluation:
        for k, c in other.counts.items():
            self.counts.setdefault(k, Counts())
            self.counts[k] += c
        for t, n in other.n_instances.items():
            self.n_instances[t] = self.n_instances.get(t, 0) + n
        for k, n in other.failures.items():
            self.failures[k] = self.failures.get(k, 0) + n
        return self

    # ---- serialisation ----

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict: ``{"counts": {task: {rule: {type: {tp, fp, fn, precision, recall, f1}}}},
        "n_instances": {task: n}, "parse_failures": {task: {reason: n}}}``."""
        counts: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
        for (task, rule, t), c in sorted(self.counts.items(), key=lambda kv: _sort_key(kv[0])):
            counts.setdefault(task, {}).setdefault(rule, {})[t] = c.to_dict()
        fails: dict[str, dict[str, int]] = {}
        for (task, reason), n in sorted(self.failures.items()):
            fails.setdefault(task, {})[reason] = n
        return {"counts": counts, "n_instances": dict(sorted(self.n_instances.items())), "parse_failures": fails}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Evaluation:
        """Inverse of ``to_dict`` (scores are ignored and recomputed from counts)."""
        ev = cls()
        try:
            for task, rules in d.get("counts", {}).items():
                for rule, types in rules.items():
                    for t, c in types.items():
                        ev.counts[(task, rule, t)] = Counts(int(c["tp"]), int(c["fp"]), int(c["fn"]))
            ev.n_instances = {k: int(v) for k, v in d.get("n_instances", {}).items()}
            for task, reasons in d.get("parse_failures", {}).items():
                for reason, n in reasons.items():
                    ev.failures[(task, reason)] = int(n)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"Evaluation.from_dict: malformed evaluation dict ({type(e).__name__}: {e})") from None
        return ev

    def to_flat(self) -> dict[str, int]:
        """Flat ``{"count/<task>/<rule>/<type>/tp": n, "n/<task>": n, "fail/<task>/<reason>": n}`` of integers.

        Summing the flat dicts of several clients key by key and calling ``from_flat`` equals ``merge`` — the
        shape Flower ``MetricRecord`` s need (aggregate them with a sum, not FedAvg's weighted mean).
        """
        flat: dict[str, int] = {}
        for (task, rule, t), c in self.counts.items():
            for name in ("tp", "fp", "fn"):
                flat[f"count/{task}/{rule}/{t}/{name}"] = getattr(c, name)
        for task, n in self.n_instances.items():
            flat[f"n/{task}"] = n
        for (task, reason), n in self.failures.items():
            flat[f"fail/{task}/{reason}"] = n
        return flat

    @classmethod
    def from_flat(cls, flat: Mapping[str, int | float]) -> Evaluation:
        """Inverse of ``to_flat``; keys of other shapes are ignored (a MetricRecord may carry loss etc.)."""
        ev = cls()
        for k, v in flat.items():
            parts = k.split("/")
            if parts[0] == "count" and len(parts) == 5 and parts[4] in ("tp", "fp", "fn"):
                c = ev.counts.setdefault((parts[1], parts[2], parts[3]), Counts())
                setattr(c, parts[4], getattr(c, parts[4]) + int(v))
            elif parts[0] == "n" and len(parts) == 2:
                ev.n_instances[parts[1]] = ev.n_instances.get(parts[1], 0) + int(v)
            elif parts[0] == "fail" and len(parts) == 3:
                ev.failures[(parts[1], parts[2])] = ev.failures.get((parts[1], parts[2]), 0) + int(v)
        return ev

    def to_markdown(self, title: str | None = None) -> str:
        """A Markdown table: task, rule, type, P, R, F1, TP, FP, FN (micro first within each rule)."""
        lines = [f"### {title}", ""] if title else []
        lines += ["| task | rule | type | P | R | F1 | TP | FP | FN |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for (task, rule, t), c in sorted(self.counts.items(), key=lambda kv: _sort_key(kv[0])):
            scores = f"{c.precision:.4f} | {c.recall:.4f} | {c.f1:.4f}"
            lines.append(f"| {task} | {rule} | {t} | {scores} | {c.tp} | {c.fp} | {c.fn} |")
        if self.failures:
            lines += ["", "| task | parse failure | count |", "|---|---|---:|"]
            lines += [f"| {task} | {reason} | {n} |" for (task, reason), n in sorted(self.failures.items())]
        return "\n".join(lines) + "\n"


def _sort_key(k: Key) -> tuple:
    task, rule, t = k
    return (
        TASKS.index(task) if task in TASKS else len(TASKS),
        task,
        RULES.index(rule) if rule in RULES else len(RULES),
        rule,
        t != MICRO,
        t,
    )


def pooled(results: Mapping[str, Mapping[str, Any]], sites: Iterable[str] | None = None) -> Evaluation:
    """The evaluation of ``sites`` (default: every site of ``results``) pooled: each site's serialised metrics
    (``results[site]["metrics"]``, an ``Evaluation.to_dict``) summed, scores recomputed from the summed counts."""
    ev = Evaluation()
    for s in results if sites is None else sites:
        ev += Evaluation.from_dict(results[s]["metrics"])
    return ev


def combine(per_site: Mapping[str, Evaluation], total: str = "all") -> dict[str, Evaluation]:
    """Per-site evaluations plus their sum under ``total`` (counts summed, scores recomputed)."""
    out = dict(per_site)
    acc = Evaluation()
    for ev in per_site.values():
        acc += ev
    out[total] = acc
    return out


# --------------------------------------------------------------------------------------------------------------
# Scoring predicted sentences (shared by the LLM and the encoder paths)
# --------------------------------------------------------------------------------------------------------------


def score_sentence(
    ev: Evaluation,
    gold: Sentence,
    pred: Sentence,
    label_set: LabelSet,
    tasks: Sequence[str] = TASKS,
    heads: str = "gold",
) -> None:
    """Add one predicted sentence to ``ev`` under the site's label set.

    NER compares entity spans. RE compares ``(head, modifier)`` relations; a predicted modifier's ``head`` id is
    resolved against the gold entities (``heads="gold"``: the paper's protocol, heads given) or the predicted ones
    (``heads="predicted"``: end to end, so a wrong head makes the relation wrong).
    """
    if "ner" in tasks and label_set.sorted_entities():
        ev.add_ner([e.span for e in gold.entities], [e.span for e in pred.entities], label_set)
    if "re" in tasks and label_set.has_relations:
        head_src = gold.entities if heads == "gold" else pred.entities
        head_span = {e.id: e.span for e in head_src}
        predicted = [Relation(head_span[m.head], m.span) for m in pred.modifiers if m.head in head_span]
        ev.add_re(relations_from_sentence(gold), predicted, label_set)


def score_sentences(
    items: Sequence[tuple[Sentence, LabelSet]],
    preds: Sequence[Sentence],
    tasks: Sequence[str] = TASKS,
    heads: str = "gold",
) -> Evaluation:
    """Score predicted sentences against ``(gold sentence, label set)`` pairs; see ``score_sentence``."""
    ev = Evaluation()
    for (gold, label_set), pred in zip(items, preds, strict=True):
        score_sentence(ev, gold, pred, label_set, tasks, heads)
    return ev
