"""Plain data types shared by every layer: documents, hits and change sets, and the one set of
rules a document must follow, applied alike by the readers (CLI), the HTTP API and the store
(Python API)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_ID_CHARS = 512
"""Longest document id (characters)."""
MAX_METADATA_DEPTH = 32
"""Deepest nesting of a document's metadata (objects and lists)."""

_BAD_ID = re.compile(r"[\s\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def id_problem(value: object) -> str | None:
    """Why ``value`` is not a valid document id, or None.

    Ids are 1-512 characters without whitespace, control characters or unpaired surrogates:
    they go into TREC run files (whitespace-separated), URLs and log lines.
    """
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not value:
        return "is empty"
    if len(value) > MAX_ID_CHARS:
        return f"is {len(value):,} characters long; at most {MAX_ID_CHARS}"
    bad = _BAD_ID.search(value)
    if bad:
        return (f"holds {bad.group()!r} at position {bad.start()}: ids are 1-{MAX_ID_CHARS} "
                "characters without whitespace or control characters")
    return None


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text (an unpaired UTF-16 surrogate), or None."""
    bad = _SURROGATE.search(value)
    if bad:
        return (f"holds an unpaired surrogate {bad.group()!r} at position {bad.start()} "
                "(not valid Unicode text)")
    return None


def metadata_problem(value: object) -> str | None:
    """Why ``value`` is not valid metadata (a JSON object of finite numbers, strings, lists
    and objects, nested at most :data:`MAX_METADATA_DEPTH` deep), or None. Iterative, so even
    100,000 levels are rejected without recursion."""
    if not isinstance(value, Mapping):
        return f"must be a JSON object, not {type(value).__name__}"
    stack: list[tuple[object, int, str]] = [(value, 1, "metadata")]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, Mapping | list | tuple):
            if depth > MAX_METADATA_DEPTH:
                return f"is nested more than {MAX_METADATA_DEPTH} levels deep"
            if isinstance(item, Mapping):
                for key, sub in item.items():
                    if not isinstance(key, str):
                        return f"{where} has a key that is not a string: {key!r}"
                    problem = text_problem(key)
                    if problem:
                        return f"{where} key {key!r} {problem}"
                    stack.append((sub, depth + 1, f"{where}.{key}"))
            else:
                stack.extend((sub, depth + 1, f"{where}[{i}]") for i, sub in enumerate(item))
        elif isinstance(item, str):
            problem = text_problem(item)
            if problem:
                return f"{where} {problem}"
        elif isinstance(item, float) and not math.isfinite(item):
            return f"{where} is {item} (JSON has no NaN or infinity)"
        elif item is not None and not isinstance(item, bool | int | float):
            return f"{where} is a {type(item).__name__}, not a JSON value"
    return None


@dataclass(frozen=True, slots=True)
class Document:
    """One document as stored and as handed to indexes.

    ``version`` is the sequence number of the store operation that wrote this
    content (0 before the store has accepted it). It is unique across all
    versions of all documents, so indexes that need integer labels (faiss) use it.
    """

    doc_id: str
    title: str = ""
    text: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    version: int = 0

    def problem(self) -> str | None:
        """Why this document cannot be stored (``"field ...: why"``), or None."""
        problem = id_problem(self.doc_id)
        if problem:
            return f"id {self.doc_id[:40]!r} {problem}" if isinstance(self.doc_id, str) else \
                f"id {problem}"
        for name in ("title", "text"):
            value = getattr(self, name)
            if not isinstance(value, str):
                return f"field {name!r} must be a string, not {type(value).__name__}"
            problem = text_problem(value)
            if problem:
                return f"field {name!r} {problem}"
        problem = metadata_problem(self.metadata)
        return f"field 'metadata' {problem}" if problem else None

    @property
    def contents(self) -> str:
        """Title and text joined, the field that full-text and dense indexes read."""
        if self.title and self.text:
            return f"{self.title} {self.text}"
        return self.title or self.text


@dataclass(frozen=True, slots=True)
class Hit:
    """One ranked result: an external document id and its score (higher is better)."""

    doc_id: str
    score: float


@dataclass(frozen=True, slots=True)
class ChangeSet:
    """The net effect of store operations in ``(after_seq, upto_seq]``.

    - ``upserts``: live documents whose current version was written in the range;
      an index must make them searchable, replacing any older version.
    - ``removed``: ``(doc_id, version)`` pairs of versions that were superseded or
      deleted in the range; an index must make them unsearchable.
    - ``deleted_ids``: ids touched in the range that are no longer live at
      ``upto_seq``.

    Applying a change set is idempotent, so replaying one after a crash is safe.
    """

    after_seq: int
    upto_seq: int
    upserts: tuple[Document, ...] = ()
    removed: tuple[tuple[str, int], ...] = ()
    deleted_ids: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.upserts or self.removed or self.deleted_ids)


@dataclass(frozen=True, slots=True)
class IndexStats:
    """What every index's ``stats()`` returns: the facts the CLI, the HTTP API and the
    collection read by name, plus the type's own facts in ``details`` (JSON values).

    ``memory_bytes`` is None where the index cannot tell (a JVM-side structure); ``params`` is
    the index's resolved spec parameters (None values left out).
    """

    type: str
    documents: int
    applied_seq: int
    disk_bytes: int
    memory_bytes: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the named fields, then ``details`` beside them (flat)."""
        out: dict[str, Any] = {"type": self.type, "documents": self.documents,
                               "applied_seq": self.applied_seq, "disk_bytes": self.disk_bytes,
                               "memory_bytes": self.memory_bytes,
                               "params": {k: v for k, v in self.params.items() if v is not None}}
        for key, value in self.details.items():
            if key in out:
                raise ValueError(f"IndexStats.details may not redefine {key!r}")
            out[key] = value
        return out
