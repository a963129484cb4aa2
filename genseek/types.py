"""Plain data types shared by every layer: documents, hits and change sets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


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
