"""Instruction prompts and answer targets: (Sentence, LabelSet) → ``Example``.

Owns the output-format registry (``FORMATS``: the paper's inline HTML ``<span>`` markup and a JSON list
variant), the instruction texts (paper §2.3–2.4, guideline definitions verbatim), the construction of NER and
RE training instances and the inference prompt (``build_prompt``, the same text as the training prompt).
Must not import torch, transformers, peft or flwr.

Conventions
-----------
* ``Example.prompt`` ends exactly where the answer begins (after ``"### Output Text:\\n"``);
  ``Example.target`` is the answer without EOS (the tokenizer side appends it).
* The sentence text is used **as-is** (never re-tokenised), so every span of a target is an exact character
  interval of the sentence and the parser can map answers back by exact character alignment.
* Sentence text is **not** HTML-escaped: clinical text is full of ``<`` and ``>`` ("age >= 18"); the parser only
  recognises ``<span ...>`` / ``</span>`` tags, so a literal ``<`` is plain text.
* A prompt lists only the types the site annotates (``LabelSet.sorted_entities()``; for RE,
  ``LabelSet.modifiers_for(head.type)``), so a site is never taught that an unannotated type is absent.
* RE ("entity-conditioned modifier tagging", paper §2.4): one instance per head entity whose type has at least
  one annotated modifier type at the site. Input = sentence with that ONE head wrapped in its entity tag;
  target = the sentence with only that head's modifiers marked (HTML) or the list of them (JSON). A head
  without modifiers gives a negative instance (plain sentence / ``[]``).
* Nesting and crossing (HTML only): nested spans render as nested tags; of two crossing spans only the earlier
  one (sorted by start, longer first) can be rendered, the other is skipped. ``unrepresentable_spans`` and
  ``count_unrepresentable`` report what was skipped; the JSON format represents every span.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from fedmedlora.schema import Document, Entity, LabelSet, Sentence, Span

TASKS: tuple[str, ...] = ("ner", "re")

#: Guideline definitions of the main entity types, verbatim (paper §2.1/§2.3), as "Name: definition".
ENTITY_DEFINITIONS: dict[str, str] = {
    "problem": "Medical Problem: The abnormal condition that happens physically or mentally to a patient.",
    "treatment": "Treatment: The procedures, interventions, and substances given to a patient for treating a problem.",
    "drug": "Drug: Generic or brand name of a single medication or a collective name of a group of medication.",
    "test": "Test: A medical procedure performed (i) to detect or diagnose a problem, (ii) to monitor diseases, "
    "disease processes, and susceptibility, or (iii) to determine a course of treatment.",
}

#: Short noun phrase used in the markup guide lines ("Use <span class="problem"> to denote a medical problem.").
ENTITY_GUIDES: dict[str, str] = {
    "problem": "a medical problem",
    "treatment": "a treatment",
    "test": "a test",
    "drug": "a drug",
}

#: One-line modifier definitions of the RE prompt (paper §2.4, temporal unified as in the reference code).
MODIFIER_GUIDES: dict[str, str] = {
    "bodyloc": "the location on the body where the observation is present",
    "condition": "a phrase that indicates the problems existing in a certain situation",
    "course": "the development or alteration of a problem",
    "dosage": "the amount of active ingredient from the number of drugs prescribed",
    "duration": "the time period a patient should take a drug",
    "form": "the form of drug",
    "frequency": "the frequency of taking a drug",
    "labvalue": "a numeric value or a normal description of the result of a lab test",
    "negation": "the phrase that indicates the absence of an entity",
    "reference_range": "the range or interval of values that are deemed as normal for a test in a healthy person",
    "route": "the way by which a drug, fluid, poison, or other substance is taken into the body",
    "severity": "the degree of intensity of a clinical condition",
    "strength": "the amount of active ingredient in a given dosage form",
    "subject": "the person entity who is experiencing the disorder",
    "temporal": "a calendar date, time, or duration related to a test/treatment/problem/drug",
    "uncertain": "a measure of doubt",
}

OUTPUT_HEADER = "### Output Text:\n"
INPUT_HEADER = "### Input Text:\n"


class Prompt(str):
    """An inference prompt (the text a model sees) that also knows what it asks for.

    It *is* the prompt string (every ``generate_fn(prompts)`` treats it as one); the attributes let a decoder
    stop as soon as the answer is complete or constrain the answer to what the parser accepts
    (``fedmedlora.stopping``, ``fedmedlora.constraints``) without re-parsing the instruction text.

    Attributes:
        sentence: the sentence text every answer span must be copied from (without the RE head markup).
        types: the types the prompt lists (``allowed_types``), in prompt order.
        fmt: the output format the answer must use.
        task: ``"ner"`` or ``"re"``.
        head: for RE, the marked head span (sentence offsets); ``None`` for NER.
    """

    sentence: str
    types: tuple[str, ...]
    fmt: str
    task: str
    head: Span | None

    def __new__(
        cls, text: str, *, sentence: str, types: Sequence[str], fmt: str, task: str, head: Span | None = None
    ) -> Prompt:
        obj = super().__new__(cls, text)
        obj.sentence = sentence
        obj.types = tuple(types)
        obj.fmt = fmt
        obj.task = task
        obj.head = head
        return obj

    def __reduce__(self):  # pickles/copies as the plain string it is (only text travels)
        return (str, (str(self),))

    @property
    def instruction(self) -> str:
        """Everything before the input text: identical for all prompts of one site, task (and head type)."""
        return self[: self.rfind(INPUT_HEADER)]


@dataclass(frozen=True)
class Example:
    """One instruction-tuning instance.

    Attributes:
        prompt: the full instruction text, ending exactly where the answer begins.
        target: the answer, without EOS.
        task: ``"ner"`` or ``"re"``.
        sentence_id: ``Sentence.id`` of the sentence it was built from.
        site: the site (hospital) that holds the sentence.
        head: for RE, the ``Entity.id`` of the marked head entity; ``None`` for NER.
        n_spans: gold spans in the target (0: the answer is empty, e.g. a head without modifiers).
    """

    prompt: str
    target: str
    task: str
    sentence_id: str
    site: str
    head: str | None = None
    n_spans: int = 0


# --------------------------------------------------------------------------------------------------------------
# Span layout (nesting / crossing)
# --------------------------------------------------------------------------------------------------------------


def _layout_order(spans: Iterable[Span]) -> list[Span]:
    """Distinct spans in rendering order: by start, longer (outer) first, then type."""
    return sorted(set(spans), key=lambda s: (s.start, -s.end, s.type))


def split_representable(spans: Iterable[Span]) -> tuple[list[Span], list[Span]]:
    """Split spans into those inline markup can render (a laminar, properly nested family) and the rest.

    Spans are taken in order (start, longer first, type); a span is kept when it is disjoint from or nested in
    every kept span that is still open, and skipped when it crosses one (starts inside it, ends after it).
    Exact duplicates are collapsed (they are represented). Identical extents with different types nest.

    Returns:
        ``(kept, skipped)``, both in rendering order.
    """
    kept: list[Span] = []
    skipped: list[Span] = []
    stack: list[Span] = []
    for sp in _layout_order(spans):
        while stack and stack[-1].end <= sp.start:
            stack.pop()
        if stack and sp.end > stack[-1].end:
            skipped.append(sp)
            continue
        kept.append(sp)
        stack.append(sp)
    return kept, skipped


def unrepresentable_spans(spans: Iterable[Span], fmt: str = "html") -> list[Span]:
    """Spans the output format cannot render (crossing spans in HTML; none in JSON)."""
    return get_format(fmt).unrepresentable(spans)


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------


def open_tag(type_: str) -> str:
    return f'<span class="{type_}">'


CLOSE_TAG = "</span>"


def render_html(text: str, spans: Iterable[Span]) -> str:
    """The sentence verbatim with ``<span class="type">…</span>`` inserted; crossing spans are skipped."""
    kept, _ = split_representable(spans)
    opens: dict[int, list[Span]] = {}
    for sp in kept:  # already outer-first within a start position
        opens.setdefault(sp.start, []).append(sp)
    out: list[str] = []
    stack: list[Span] = []
    for pos in range(len(text) + 1):
        while stack and stack[-1].end == pos:
            stack.pop()
            out.append(CLOSE_TAG)
        for sp in opens.get(pos, ()):
            out.append(open_tag(sp.type))
            stack.append(sp)
        if pos < len(text):
            out.append(text[pos])
    return "".join(out)


def render_json(text: str, spans: Iterable[Span]) -> str:
    """A JSON list of ``{"type", "text"}`` objects in text order (start, longer first, type)."""
    items = [{"type": s.type, "text": text[s.start : s.end]} for s in _layout_order(spans)]
    return json.dumps(items, ensure_ascii=False)


def mark_head(text: str, head: Entity | Span) -> str:
    """The sentence with the single head entity wrapped in its entity tag (RE input, both formats)."""
    return text[: head.start] + open_tag(head.type) + text[head.start : head.end] + CLOSE_TAG + text[head.end :]


# --------------------------------------------------------------------------------------------------------------
# Instruction texts
# --------------------------------------------------------------------------------------------------------------


def _definitions(entity_types: Sequence[str]) -> str:
    return "### Entity Definitions:\n" + "".join(ENTITY_DEFINITIONS[t] + "\n" for t in entity_types)


def _html_ner_instructions(entity_types: Sequence[str]) -> str:
    guides = "".join(f"Use {open_tag(t)} to denote {ENTITY_GUIDES[t]}.\n" for t in entity_types)
    return (
        "### Task:\n"
        "Your task is to generate an HTML version of an input text, using HTML <span> tags to mark up specific "
        "entities.\n\n"
        "### Entity Markup Guides:\n" + guides + "\n" + _definitions(entity_types)
    )


def _json_ner_instructions(entity_types: Sequence[str]) -> str:
    guides = "".join(f'Use {{"type": "{t}"}} to denote {ENTITY_GUIDES[t]}.\n' for t in entity_types)
    return (
        "### Task:\n"
        'Your task is to list the specific entities of an input text as a JSON list of {"type": ..., '
        '"text": ...} objects, in the order they appear, copying each text exactly as it is written in the input '
        "text. Output [] if there is none.\n\n"
        "### Entity Markup Guides:\n" + guides + "\n" + _definitions(entity_types)
    )


def _re_input_guide(head_type: str) -> str:
    return f"### Input Entity Markup Guides:\nUse {open_tag(head_type)} to denote {ENTITY_GUIDES[head_type]}.\n"


def _html_re_instructions(head_type: str, modifier_types: Sequence[str]) -> str:
    guides = "".join(f"Use {open_tag(m)} to denote {MODIFIER_GUIDES[m]}.\n" for m in modifier_types)
    return (
        "### Task:\n"
        "Your task is to mark up modifier entities related to the entities marked with <span> tag in the input "
        "text.\n\n" + _re_input_guide(head_type) + "### Modifier Entity Markup Guide:\n" + guides
    )


def _json_re_instructions(head_type: str, modifier_types: Sequence[str]) -> str:
    guides = "".join(f'Use {{"type": "{m}"}} to denote {MODIFIER_GUIDES[m]}.\n' for m in modifier_types)
    return (
        "### Task:\n"
        "Your task is to list the modifier entities related to the entity marked with <span> tag in the input "
        'text as a JSON list of {"type": ..., "text": ...} objects, in the order they appear, copying each text '
        "exactly as it is written in the input text. Output [] if there is none.\n\n"
        + _re_input_guide(head_type)
        + "### Modifier Entity Markup Guide:\n"
        + guides
    )


def _wrap(instructions: str, input_text: str) -> str:
    return instructions + "\n" + INPUT_HEADER + input_text + "\n" + OUTPUT_HEADER


# --------------------------------------------------------------------------------------------------------------
# Format registry
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputFormat:
    """A registered output format: how instructions read and how a target is rendered.

    The matching parser is registered under the same name in ``fedmedlora.parsing.PARSERS``.

    Attributes:
        name: registry key.
        ner_instructions: entity types → instruction text up to (excluding) ``### Input Text:``.
        re_instructions: (head type, modifier types) → instruction text.
        render: (sentence text, spans) → target text.
        unrepresentable: spans → those ``render`` cannot express (and skips).
    """

    name: str
    ner_instructions: Callable[[Sequence[str]], str]
    re_instructions: Callable[[str, Sequence[str]], str]
    render: Callable[[str, Iterable[Span]], str]
    unrepresentable: Callable[[Iterable[Span]], list[Span]]


FORMATS: dict[str, OutputFormat] = {
    "html": OutputFormat(
        name="html",
        ner_instructions=_html_ner_instructions,
        re_instructions=_html_re_instructions,
        render=render_html,
        unrepresentable=lambda spans: split_representable(spans)[1],
    ),
    "json": OutputFormat(
        name="json",
        ner_instructions=_json_ner_instructions,
        re_instructions=_json_re_instructions,
        render=render_json,
        unrepresentable=lambda spans: [],
    ),
}


def get_format(fmt: str) -> OutputFormat:
    """The registered format ``fmt``; a clear ``ValueError`` listing the choices otherwise."""
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ValueError(f"prompt format: unknown format {fmt!r}; choose one of {sorted(FORMATS)}") from None


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task: unknown task {task!r}; choose one of {TASKS}")


def allowed_types(label_set: LabelSet, task: str, head_type: str | None = None) -> tuple[str, ...]:
    """The types a prompt asks for: the site's entity types (NER) or its modifier types for ``head_type`` (RE)."""
    _check_task(task)
    if task == "ner":
        return label_set.sorted_entities()
    if head_type is None:
        raise ValueError("allowed_types: task 're' needs head_type")
    return label_set.modifiers_for(head_type)


def _resolve_head(sentence: Sentence, head: Entity | str | None) -> Entity:
    if head is None:
        raise ValueError(f"sentence {sentence.id!r}: task 're' needs a head entity")
    if isinstance(head, str):
        try:
            return sentence.entity(head)
        except KeyError:
            raise ValueError(f"sentence {sentence.id!r}: head: no entity with id {head!r}") from None
    return head


def build_prompt(
    sentence: Sentence, label_set: LabelSet, task: str, fmt: str = "html", head: Entity | str | None = None
) -> Prompt:
    """The instruction prompt for one sentence, identical to the training prompt, ending at the answer.

    Args:
        sentence: the sentence (its annotations are not used).
        label_set: the site's label set; only its types are listed.
        task: ``"ner"`` or ``"re"``.
        fmt: a key of ``FORMATS``.
        head: for RE, the head ``Entity`` (or its id in ``sentence``) to mark in the input.

    Raises:
        ValueError: unknown task/format, missing head for RE, or a label set with nothing to ask for.
    """
    f = get_format(fmt)
    _check_task(task)
    if task == "ner":
        types = label_set.sorted_entities()
        if not types:
            raise ValueError(f"sentence {sentence.id!r}: the label set annotates no entity type (task 'ner')")
        text = _wrap(f.ner_instructions(types), sentence.text)
        return Prompt(text, sentence=sentence.text, types=types, fmt=fmt, task="ner")
    ent = _resolve_head(sentence, head)
    mods = label_set.modifiers_for(ent.type)
    if not mods:
        raise ValueError(
            f"sentence {sentence.id!r} head {ent.id!r}: the label set annotates no modifier of {ent.type!r}"
        )
    text = _wrap(f.re_instructions(ent.type, mods), mark_head(sentence.text, ent))
    return Prompt(text, sentence=sentence.text, types=mods, fmt=fmt, task="re", head=Span(ent.start, ent.end, ent.type))


# --------------------------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------------------------


def ner_gold_spans(sentence: Sentence, label_set: LabelSet) -> list[Span]:
    """Gold entity spans of the sentence restricted to the label set."""
    return [e.span for e in sentence.entities if e.type in label_set.entities]


def re_gold_spans(sentence: Sentence, label_set: LabelSet, head: Entity) -> list[Span]:
    """Gold modifier spans of ``head`` restricted to the modifier types the site annotates for its type."""
    allowed = set(label_set.modifiers_for(head.type))
    return [m.span for m in sentence.modifiers_of(head.id) if m.type in allowed]


def _units(
    source: Document | Iterable[Document] | Iterable[Sentence], label_set: LabelSet | None, site: str
) -> list[tuple[Sentence, LabelSet, str]]:
    docs_or_sents = [source] if isinstance(source, Document) else list(source)
    units: list[tuple[Sentence, LabelSet, str]] = []
    for item in docs_or_sents:
        if isinstance(item, Document):
            ls = label_set if label_set is not None else item.label_set
            units.extend((s, ls, site or item.site) for s in item.sentences)
        elif isinstance(item, Sentence):
            if label_set is None:
                raise ValueError(f"sentence {item.id!r}: build_examples from sentences needs label_set=")
            units.append((item, label_set, site))
        else:
            raise TypeError(f"build_examples: expected Document or Sentence items, got {type(item).__name__}")
    return units


def build_examples(
    source: Document | Iterable[Document] | Iterable[Sentence],
    fmt: str = "html",
    tasks: Sequence[str] = TASKS,
    *,
    label_set: LabelSet | None = None,
    site: str = "",
) -> list[Example]:
    """Training/evaluation instances, in a deterministic order.

    For each sentence in input order: one NER instance (if ``"ner"`` in ``tasks`` and the site annotates at least
    one entity type), then one RE instance per head entity in sentence order whose type has at least one
    annotated modifier type (if ``"re"`` in ``tasks``). Crossing spans the format cannot render are skipped in
    the target (see ``count_unrepresentable``).

    Args:
        source: a ``Document``, documents, or sentences (then ``label_set`` is required).
        fmt: a key of ``FORMATS``.
        tasks: subset of ``("ner", "re")``.
        label_set: overrides the documents' label sets (required for bare sentences).
        site: overrides the documents' site name (used as-is for bare sentences).
    """
    f = get_format(fmt)
    for t in tasks:
        _check_task(t)
    out: list[Example] = []
    for sent, ls, site_name in _units(source, label_set, site):
        if "ner" in tasks and ls.sorted_entities():
            gold = ner_gold_spans(sent, ls)
            target = f.render(sent.text, gold)
            prompt = build_prompt(sent, ls, "ner", fmt)
            out.append(Example(prompt, target, "ner", sent.id, site_name, n_spans=len(gold)))
        if "re" in tasks:
            for ent in sent.entities:
                if not ls.is_re_head(ent.type):
                    continue
                gold = re_gold_spans(sent, ls, ent)
                target = f.render(sent.text, gold)
                prompt = build_prompt(sent, ls, "re", fmt, head=ent)
                out.append(Example(prompt, target, "re", sent.id, site_name, head=ent.id, n_spans=len(gold)))
    return out


def count_unrepresentable(
    source: Document | Iterable[Document] | Iterable[Sentence],
    fmt: str = "html",
    tasks: Sequence[str] = TASKS,
    *,
    label_set: LabelSet | None = None,
) -> dict[str, int]:
    """How many gold spans ``build_examples`` would skip because ``fmt`` cannot render them, per task."""
    f = get_format(fmt)
    counts = {t: 0 for t in tasks}
    for sent, ls, _ in _units(source, label_set, ""):
        if "ner" in tasks and ls.sorted_entities():
            counts["ner"] += len(f.unrepresentable(ner_gold_spans(sent, ls)))
        if "re" in tasks:
            for ent in sent.entities:
                if ls.is_re_head(ent.type):
                    counts["re"] += len(f.unrepresentable(re_gold_spans(sent, ls, ent)))
    return counts
