"""JSONL serialisation of ``schema.Document`` records: one document per line.

Owns reading and writing benchmark files. Every error names ``file:line`` and the offending field, e.g.
``site/train.jsonl:12: sentences[3].entities[0].end: expected an integer, got '7'``. Must not import torch or flwr.

Line format (all offsets as documented in ``fedmedlora.schema``)::

    {"id": "NCT001_inc", "site": "chia", "split": "train", "text": "...",
     "label_set": {"entities": ["problem", "drug"], "modifiers": ["negation"]},
     "meta": {"source": "chia"},
     "sentences": [{"start": 0, "end": 42,
                    "entities": [{"id": "T1", "type": "problem", "start": 0, "end": 8, "text": "diabetes"}],
                    "modifiers": [{"id": "T2", "type": "negation", "start": ..., "head": "T1", ...}]}]}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fedmedlora.schema import Document, Entity, LabelSet, Modifier, SchemaError, Sentence


class JsonlError(ValueError):
    """A JSONL benchmark file is malformed. The message starts with ``file:line:``."""


def document_to_dict(doc: Document) -> dict[str, Any]:
    return {
        "id": doc.id,
        "site": doc.site,
        "split": doc.split,
        "text": doc.text,
        "label_set": doc.label_set.to_dict(),
        "meta": doc.meta,
        "sentences": [
            {
                "start": s.start,
                "end": s.end,
                "entities": [
                    {"id": e.id, "type": e.type, "start": e.start, "end": e.end, "text": e.text}
                    | ({"attributes": list(e.attributes)} if e.attributes else {})
                    for e in s.entities
                ],
                "modifiers": [
                    {
                        "id": m.id,
                        "type": m.type,
                        "start": m.start,
                        "end": m.end,
                        "text": m.text,
                        "head": m.head,
                    }
                    for m in s.modifiers
                ],
            }
            for s in doc.sentences
        ],
    }


def _get(d: Any, key: str, typ: type | tuple[type, ...], path: str, default: Any = ...) -> Any:
    if not isinstance(d, dict):
        raise SchemaError(f"{path or 'record'}: expected an object, got {type(d).__name__}")
    if key not in d:
        if default is not ...:
            return default
        raise SchemaError(f"{path + '.' if path else ''}{key}: missing")
    v = d[key]
    # bool is an int subclass: never accept it where a number is expected
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise SchemaError(f"{path + '.' if path else ''}{key}: expected {names}, got {v!r:.60}")
    return v


def document_from_dict(d: Any) -> Document:
    """Build and validate a ``Document`` from its JSON object. Raises ``SchemaError`` naming the field."""
    doc_id = _get(d, "id", str, "")
    text = _get(d, "text", str, "")
    label_set = LabelSet.from_dict(_get(d, "label_set", dict, ""))
    sentences = []
    for i, sd in enumerate(_get(d, "sentences", list, "")):
        p = f"sentences[{i}]"
        start, end = _get(sd, "start", int, p), _get(sd, "end", int, p)
        ents = []
        for j, ed in enumerate(_get(sd, "entities", list, p, [])):
            q = f"{p}.entities[{j}]"
            ents.append(
                Entity(
                    id=_get(ed, "id", str, q),
                    type=_get(ed, "type", str, q),
                    start=_get(ed, "start", int, q),
                    end=_get(ed, "end", int, q),
                    text=_get(ed, "text", str, q),
                    attributes=tuple(_get(ed, "attributes", list, q, [])),
                )
            )
        mods = []
        for j, md in enumerate(_get(sd, "modifiers", list, p, [])):
            q = f"{p}.modifiers[{j}]"
            mods.append(
                Modifier(
                    id=_get(md, "id", str, q),
                    type=_get(md, "type", str, q),
                    start=_get(md, "start", int, q),
                    end=_get(md, "end", int, q),
                    text=_get(md, "text", str, q),
                    head=_get(md, "head", str, q),
                )
            )
        sentences.append(
            Sentence(
                id=f"{doc_id}:{i}",
                start=start,
                end=end,
                text=text[start:end],
                entities=tuple(ents),
                modifiers=tuple(mods),
            )
        )
    doc = Document(
        id=doc_id,
        site=_get(d, "site", str, ""),
        split=_get(d, "split", str, ""),
        text=text,
        sentences=tuple(sentences),
        label_set=label_set,
        meta=_get(d, "meta", dict, "", {}),
    )
    doc.validate()
    return doc


def read_documents(path: str | Path) -> list[Document]:
    """Read a JSONL file of documents. Raises ``JsonlError`` with ``file:line: field: problem``."""
    return list(iter_documents(path))


def iter_json_lines(path: str | Path, error: type[Exception] = JsonlError) -> Iterator[tuple[int, Any]]:
    """``(line number, decoded value)`` for each non-blank line of a UTF-8 JSONL file.

    Raises:
        error: (``JsonlError`` unless given) naming ``file`` or ``file:line`` for a missing file, a line that is
            not UTF-8, or a line that is not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            yield lineno, obj


def iter_documents(path: str | Path) -> Iterator[Document]:
    for lineno, obj in iter_json_lines(path):
        try:
            yield document_from_dict(obj)
        except SchemaError as e:
            raise JsonlError(f"{path}:{lineno}: {e}") from None


def write_documents(path: str | Path, docs: Iterable[Document]) -> int:
    """Write documents as JSONL (UTF-8, one per line). Returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    tmp = path.with_suffix(path.suffix + ".partial")
    with tmp.open("w", encoding="utf-8", newline="\n") as f:
        for doc in docs:
            f.write(json.dumps(document_to_dict(doc), ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n
