"""The documented label mapping of every corpus onto the fedmedlora schema, as data.

Owns: the per-corpus tables (corpus label → entity type, corpus relation/argument → modifier type), the lexicon
filters, the per-site ``LABEL_SETS`` and ``CORPUS_INFO`` (source, licence). The readers in this package apply these
tables and nothing else, so this module *is* the mapping; ``docs/data.md`` renders the same decisions as prose.
Must not import torch, transformers, peft or flwr.

Decisions (and why)
-------------------

**Chia** (trial eligibility criteria, brat, ``chia_without_scope``)

* Entities: ``Condition``→problem, ``Drug``→drug, ``Measurement``→test, ``Procedure``→treatment. Chia does not
  separate diagnostic from therapeutic procedures; mapping all of them to *treatment* is noisy but needs no lexicon
  (the research note's default). ``Observation`` (smoking, pregnancy...), ``Person``, ``Device``, ``Visit`` and the
  annotation-only types (``Qualifier``, ``Value``, ``Temporal``, ``Negation``, ``Multiplier``, ``Mood``,
  ``Reference_point``, ``Line``) are not entities; the ones not used as modifiers are dropped and counted.
* Error spans (``Non-query-able``, ``Parsing_Error``, ``Post-eligibility``, ...; ``CHIA_ERROR_TYPES``) mark text
  that the annotators did *not* annotate. Keeping such a criterion would teach the model that the conditions in it
  are not conditions, so **the whole sentence containing an error span is removed** (with its annotations, all
  counted).
* Relations are ``Arg1`` = head, ``Arg2`` = modifier. ``Has_negation``→negation and ``Has_temporal``→temporal on any
  mapped head. ``Has_value``→labvalue on a test head (Measurement) and →dosage on a drug head (``>20 mg/day``);
  Has_value on a Condition/Person/Procedure has no schema equivalent and is dropped. ``Has_qualifier`` on a problem
  is kept only when the qualifier text matches the severity lexicon (→severity: mild, moderate, severe, serious,
  significant, ...) or the course lexicon (→course: acute, chronic, stable, progressive, recurrent, ...); all other
  qualifiers (``other``, ``active``, ``primary``, ...) are dropped. ``Has_mood`` on a problem is kept as *uncertain*
  only for hedging moods (suspected, possible, probable, ...). ``Has_multiplier`` on a drug is kept as dosage only
  when the text carries a dose unit (``75 mg``); frequency-like multipliers are too rare and mixed to label.
  ``Has_index``, ``Has_context``, ``Subsumes``, ``AND``, ``OR``, ``multi`` are not modifier relations.
* Label set: {problem, drug, test, treatment} × {negation, temporal, labvalue, dosage, severity, course, uncertain}.

**PHEE** (pharmacovigilance sentences; the JSON files, whose nested argument structure says which Dosage belongs to
which Drug — the brat "clean" files flatten it; all 32,574 JSON offsets check out)

* Entities: ``Treatment.Drug``→drug; ``Effect``, ``Treatment.Disorder`` (indication) and ``Subject.Disorder``
  (patient's condition)→problem. Effect is the adverse/therapeutic effect; leaving indications unlabelled would
  make them negatives for *problem*.
* Drug modifiers ``Dosage``→dosage, ``Route``→route, ``Freq``→frequency, ``Duration``→duration and
  ``Time_elapsed``→temporal attach to the drugs of the *same* Treatment argument: to every drug mention inside the
  Treatment span (a combination ``intrathecal methotrexate and cytarabine`` gives the route to both), else to the
  nearest drug mention of that Treatment.
* Event attributes with a cue span attach to the event's Effect mention(s): ``Severity``→severity,
  ``Negated``→negation, ``Speculated``→uncertain. An event without an Effect drops its cues (counted).
* ``Subject`` (Age, Gender, Race, Population), ``Trigger`` and ``Combination`` triggers are not in the schema.
* Label set: {drug, problem} × {dosage, route, frequency, duration, temporal, severity, negation, uncertain}.
  Negation/uncertainty/severity are annotated only for the effect of a drug event, not for every problem.

**BC5CDR** (PubMed abstracts, BioC XML): ``Chemical``→drug (includes non-drug chemicals), ``Disease``→problem.
Composite mentions (``ocular and visual toxicity``) are kept as the ``CompositeMention`` span as written; their
``IndividualMention`` parts (often discontinuous, always inside the composite) are dropped and counted, so spans
never overlap. The CID relation is document-level between MeSH ids, outside the schema. Label set: {drug, problem},
no modifiers.

**MACCROBAT** (case reports, brat; heads are brat events whose trigger is a text-bound)

* Entities: ``Sign_symptom``/``Disease_disorder``→problem, ``Diagnostic_procedure``→test,
  ``Therapeutic_procedure``→treatment, ``Medication``→drug. ``History``/``Family_history`` and the many
  descriptive types (Detailed_description, Shape, Color, Age, Sex, ...) are dropped.
* ``MODIFY`` relations are ``Arg1`` = **modifier**, ``Arg2`` = **head** (the opposite of Chia; checked on the data:
  Lab_value→Diagnostic_procedure 2,747). Modifier type by (modifier label, head type): ``MACCROBAT_MODIFIERS``.
  Biological_structure is *bodyloc* only on problems (the schema has no bodyloc for tests/treatments); Lab_value is
  *labvalue* only on tests. Date/Time/Duration also become *temporal* (*duration* on a drug) through ``OVERLAP``
  groups that put them together with a head in the same sentence; ``BEFORE``/``AFTER`` order events and are not
  time expressions *of* the event, so they are not used.
* Negation is the attribute ``POLARITY NEG`` with **no cue span**: it becomes ``Entity.attributes=("negated",)``,
  never a negation modifier, and negation is not in MACCROBAT's label set. ``UNCERTAIN``, ``MAYBE_POS`` and
  ``MAYBE_NEG`` become ``("uncertain",)``. ``TREND`` attributes (no cue span) are dropped and counted.
* Label set: {problem, test, treatment, drug} × {bodyloc, severity, labvalue, dosage, route, frequency, duration,
  temporal}.

**All corpora**: discontinuous spans are kept as their covering span when the gap is whitespace only, otherwise
dropped and counted (the schema has no discontinuous spans); a modifier whose head lands in another sentence is
dropped and counted; see ``fedmedlora.corpora.common.build_document``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from fedmedlora.schema import ENTITY_TYPES, LabelSet

#: Provenance of each corpus (see shared/datasets/<name>/SOURCE.md); written into the manifest and ATTRIBUTION.md.
CORPUS_INFO: dict[str, dict[str, str]] = {
    "chia": {
        "title": "Chia: a large annotated corpus of clinical trial eligibility criteria (Kury et al., Sci Data 2020)",
        "source": "figshare 10.6084/m9.figshare.11855817.v2 (mirror: github.com/Vidhate/CHIA-NER-RE @ ed84384)",
        "licence": "CC BY 4.0",
        "genre": "ClinicalTrials.gov eligibility criteria",
    },
    "phee": {
        "title": "PHEE: a dataset for pharmacovigilance event extraction from text (Sun et al., EMNLP 2022)",
        "source": "github.com/ZhaoyueSun/PHEE @ 41489b0 (data/json)",
        "licence": "MIT (repository LICENSE, Copyright (c) 2025 Sun Zhaoyue)",
        "genre": "PubMed case-report sentences (pharmacovigilance)",
    },
    "bc5cdr": {
        "title": "BioCreative V CDR corpus, CDR.Corpus.v010516 (Li et al., Database 2016)",
        "source": "BioCreative V Track 3 (copy: github.com/cryptoradon/biomedRelExt @ c3f40f6, CDR_Data/)",
        "licence": "US Government Work, public domain (NLM notice in README.txt)",
        "genre": "PubMed abstracts",
    },
    "maccrobat": {
        "title": "MACCROBAT2020 (Caufield et al.), clinical case reports annotated in brat",
        "source": "figshare 10.6084/m9.figshare.9764942 (mirror: github.com/Saieiei/NLP @ f2b5229)",
        "licence": "CC BY 4.0 (per the figshare record)",
        "genre": "PubMed Central open-access clinical case reports",
    },
}

_ALL = frozenset(ENTITY_TYPES)

LABEL_SETS: dict[str, LabelSet] = {
    "chia": LabelSet(
        entities=_ALL,
        modifiers=frozenset({"negation", "temporal", "labvalue", "dosage", "severity", "course", "uncertain"}),
    ),
    "phee": LabelSet(
        entities=frozenset({"drug", "problem"}),
        modifiers=frozenset(
            {"dosage", "route", "frequency", "duration", "temporal", "severity", "negation", "uncertain"}
        ),
    ),
    "bc5cdr": LabelSet(entities=frozenset({"drug", "problem"}), modifiers=frozenset()),
    "maccrobat": LabelSet(
        entities=_ALL,
        modifiers=frozenset(
            {"bodyloc", "severity", "labvalue", "dosage", "route", "frequency", "duration", "temporal"}
        ),
    ),
}

# ---- Chia --------------------------------------------------------------------------------------------------------

CHIA_ENTITIES: dict[str, str] = {
    "Condition": "problem",
    "Drug": "drug",
    "Measurement": "test",
    "Procedure": "treatment",
}

#: Chia's "error" labels: text the annotators flagged instead of annotating. Sentences containing one are removed.
CHIA_ERROR_TYPES: frozenset[str] = frozenset(
    {
        "Non-query-able",
        "Parsing_Error",
        "Post-eligibility",
        "Non-representable",
        "Undefined_semantics",
        "Informed_consent",
        "Subjective_judgement",
        "Pregnancy_considerations",
        "Context_Error",
        "Competing_trial",
        "Grammar_Error",
        "Not_a_criteria",
        "Intoxication_considerations",
        "c-Requires_causality",
    }
)

CHIA_SEVERITY = re.compile(
    r"^(?:clinically |medically )?(?:mild|mildly|moderate|moderately|severe|severely|serious|seriously|significant|"
    r"significantly|life[- ]threatening|profound|marked|extreme|minimal)"
    r"(?:(?: to | or |-| and/or )(?:moderate|severe|life[- ]threatening|serious))?$"
)
CHIA_COURSE = re.compile(
    r"^(?:acute|subacute|chronic|stable|unstable|persistent|progressive|progressing|worsening|recurrent|"
    r"recurring|resolved|resolving|improving|deteriorating|relapsing|intermittent)$"
)
CHIA_UNCERTAIN = re.compile(
    r"^(?:suspected|suspicion(?: of)?|suspicious(?: for| of)?|possible|possibly|probable|probably|suggestive"
    r"(?: of)?|potential|likely|presumed|questionable|equivocal)$"
)
DOSE_UNIT = re.compile(
    r"\d\s*(?:mg|mcg|µg|μg|ug|g|gm|grams?|ml|units?|iu|u|mmol|meq|mg/kg|mg/m2|mg/d|micrograms?)\b", re.IGNORECASE
)


def chia_qualifier_type(text: str) -> str | None:
    """severity / course for a Chia Qualifier text, or ``None`` (dropped)."""
    t = " ".join(text.lower().split())
    if CHIA_SEVERITY.match(t):
        return "severity"
    if CHIA_COURSE.match(t):
        return "course"
    return None


def chia_mood_type(text: str) -> str | None:
    """uncertain for a hedging Chia Mood text, else ``None``."""
    return "uncertain" if CHIA_UNCERTAIN.match(" ".join(text.lower().split())) else None


def chia_multiplier_type(text: str) -> str | None:
    """dosage for a Chia Multiplier text with a dose unit, else ``None``."""
    return "dosage" if DOSE_UNIT.search(text) else None


#: relation type → (label required on Arg2, {head entity type → modifier type, or a filter text → type|None}).
#: Arg1 = head, Arg2 = modifier.
CHIA_MODIFIERS: dict[str, tuple[str, dict[str, str | Callable[[str], str | None]]]] = {
    "Has_negation": ("Negation", {t: "negation" for t in ENTITY_TYPES}),
    "Has_temporal": ("Temporal", {t: "temporal" for t in ENTITY_TYPES}),
    "Has_value": ("Value", {"test": "labvalue", "drug": "dosage"}),
    "Has_qualifier": ("Qualifier", {"problem": chia_qualifier_type}),
    "Has_mood": ("Mood", {"problem": chia_mood_type}),
    "Has_multiplier": ("Multiplier", {"drug": chia_multiplier_type}),
}

# ---- PHEE --------------------------------------------------------------------------------------------------------

#: (event argument, sub-argument or "") → entity type
PHEE_ENTITIES: dict[tuple[str, str], str] = {
    ("Treatment", "Drug"): "drug",
    ("Effect", ""): "problem",
    ("Treatment", "Disorder"): "problem",
    ("Subject", "Disorder"): "problem",
}
#: Treatment sub-argument → modifier type of the treatment's drug(s)
PHEE_DRUG_MODIFIERS: dict[str, str] = {
    "Dosage": "dosage",
    "Route": "route",
    "Freq": "frequency",
    "Duration": "duration",
    "Time_elapsed": "temporal",
}
#: event attribute (with a cue span) → modifier type of the event's Effect
PHEE_EFFECT_CUES: dict[str, str] = {"Severity": "severity", "Negated": "negation", "Speculated": "uncertain"}

# ---- BC5CDR ------------------------------------------------------------------------------------------------------

BC5CDR_ENTITIES: dict[str, str] = {"Chemical": "drug", "Disease": "problem"}

# ---- MACCROBAT ---------------------------------------------------------------------------------------------------

MACCROBAT_ENTITIES: dict[str, str] = {
    "Sign_symptom": "problem",
    "Disease_disorder": "problem",
    "Diagnostic_procedure": "test",
    "Therapeutic_procedure": "treatment",
    "Medication": "drug",
}
_TEMPORAL = {"problem": "temporal", "test": "temporal", "treatment": "temporal", "drug": "temporal"}
#: MODIFY Arg1 (modifier) label → {head entity type → modifier type}
MACCROBAT_MODIFIERS: dict[str, dict[str, str]] = {
    "Lab_value": {"test": "labvalue"},
    "Biological_structure": {"problem": "bodyloc"},
    "Severity": {"problem": "severity"},
    "Dosage": {"drug": "dosage"},
    "Administration": {"drug": "route"},
    "Frequency": {"drug": "frequency"},
    "Duration": {**_TEMPORAL, "drug": "duration"},
    "Date": dict(_TEMPORAL),
    "Time": dict(_TEMPORAL),
}
#: labels that also attach through OVERLAP groups (same sentence only)
MACCROBAT_OVERLAP_TEMPORAL: frozenset[str] = frozenset({"Date", "Time", "Duration"})
#: POLARITY value → Entity.attributes
MACCROBAT_POLARITY: dict[str, tuple[str, ...]] = {
    "NEG": ("negated",),
    "UNCERTAIN": ("uncertain",),
    "MAYBE_POS": ("uncertain",),
    "MAYBE_NEG": ("uncertain",),
    "POS": (),
}
