"""A toy index type, written the way ARCHITECTURE.md's "Adding an index type" says, and
registered through the ``genseek.indexes`` entry point by tests/contract/test_toy_index.py.

``overlap``: a document's score for a query is the number of distinct query terms it holds,
divided by the square root of its number of distinct terms. Rows live in one SQLite file (the
public :class:`genseek.indexers.labelstore.LabelStore`), keyed by document version; a change
set is applied in memory and in the open transaction, and ``commit(seq)`` commits both with
the sequence number.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from genseek.indexers.labelstore import LabelStore
from genseek.params import Params
from genseek.protocols import dir_bytes
from genseek.types import ChangeSet, Hit, IndexStats


class OverlapParams(Params):
    kind: ClassVar[str] = "overlap"
    lowercase: bool = Field(True, description="compare terms case-insensitively")


class OverlapSearchParams(Params):
    kind: ClassVar[str] = "overlap search"
    min_overlap: int | None = Field(None, ge=1, le=64,
                                    description="leave out documents with fewer query terms")


class OverlapIndex:
    Params = OverlapParams
    SearchParams = OverlapSearchParams

    def __init__(self, path: Path, params: dict[str, Any]):
        self.path = Path(path)
        self.params = OverlapParams.resolve(params)
        self.path.mkdir(parents=True, exist_ok=True)
        self._store = LabelStore(self.path / "rows.sqlite", "rows",
                                 ("label INTEGER PRIMARY KEY", "doc_id TEXT NOT NULL",
                                  "terms TEXT NOT NULL"))
        self._lock = threading.RLock()
        self._rows: dict[int, tuple[str, frozenset[str]]] = {}
        self._load()

    @classmethod
    def open(cls, path: Path, params: dict[str, Any]) -> OverlapIndex:
        return cls(path, params)

    def _load(self) -> None:
        self._rows = {int(label): (doc_id, frozenset(json.loads(terms)))
                      for label, doc_id, terms in self._store.select("label, doc_id, terms")}

    def _terms(self, text: str) -> frozenset[str]:
        return frozenset((text.lower() if self.params["lowercase"] else text).split())

    @property
    def applied_seq(self) -> int:
        return self._store.applied_seq

    def apply(self, changes: ChangeSet) -> None:
        with self._lock:
            gone = [version for _, version in changes.removed]
            self._store.delete(gone)
            for version in gone:
                self._rows.pop(version, None)
            rows = []
            for doc in changes.upserts:
                terms = self._terms(doc.contents)
                self._rows[doc.version] = (doc.doc_id, terms)
                rows.append((doc.version, doc.doc_id, json.dumps(sorted(terms))))
            self._store.insert(rows)

    def commit(self, seq: int) -> None:
        with self._lock:
            self._store.commit(seq)

    def search(self, queries: Sequence[str], k: int,
               params: OverlapSearchParams | None = None) -> list[list[Hit]]:
        least = OverlapSearchParams.overrides(params).get("min_overlap", 1)
        with self._lock:
            rows = list(self._rows.values())
        out = []
        for query in queries:
            wanted = self._terms(query)
            scored = []
            for doc_id, terms in rows:
                hits = len(wanted & terms)
                if hits >= least:
                    scored.append(Hit(doc_id, hits / math.sqrt(len(terms))))
            scored.sort(key=lambda h: (-h.score, h.doc_id))
            out.append(scored[:max(k, 0)])
        return out

    def stats(self) -> IndexStats:
        with self._lock:
            return IndexStats("overlap", len(self._rows), self.applied_seq, dir_bytes(self.path),
                              None, self.params, {"terms": len(set().union(
                                  *(t for _, t in self._rows.values())))})

    def close(self) -> None:
        with self._lock:
            self._store.rollback()
            self._store.close()
