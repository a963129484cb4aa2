"""What the vector indexes (``dense``, ``spann``, ``repconc``, ``muvera``, ``impact``) share.

- :class:`VectorIndex`: the :class:`~genseek.protocols.VectorSearch` composition
  ``search(queries, k, params) = search_vectors(encode_queries(queries), k, params)`` (the
  parameters are checked first, so a bad one fails even where nothing is searched), the
  ``open`` constructor and ``stats()`` as an :class:`~genseek.types.IndexStats`.
- :class:`StoredIndex`: a vector index whose source of truth is a
  :class:`~genseek.indexers.labelstore.LabelStore` and whose in-memory structure is saved as a
  cache at most every ``save_every`` seconds and on close (never after a rollback: the
  structure may hold what was dropped).
- :class:`FaissCache`: that cache when it is a faiss index, ``NAME.faiss`` beside ``NAME.json``
  (the sequence number and settings it was saved at); a missing, stale or unreadable one reads
  as absent, and the index rebuilds it from its store.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from genseek.atomic import atomic_write, atomic_write_json
from genseek.protocols import dir_bytes
from genseek.types import Hit, IndexStats

if TYPE_CHECKING:
    import faiss

    from genseek.indexers.labelstore import LabelStore
    from genseek.params import Params

Q = TypeVar("Q")
IndexT = TypeVar("IndexT", bound="VectorIndex[Any]")


def encoder_id(model: str, max_length: int | None, backend: str = "torch") -> str:
    """Who made a set of vectors: the model, the token limit when it is not the model's own,
    and the encoder backend when it is not torch float32
    (:attr:`genseek.protocols.VectorSource.vector_model`)."""
    out = str(model) if max_length is None else f"{model} (max_length={int(max_length)})"
    return out if backend == "torch" else f"{out} [{backend}]"


class VectorIndex(Generic[Q]):
    """Base of the vector index types: ``search`` encodes the queries and searches with the
    vectors. A subclass sets ``Params``/``SearchParams``, ``self.path`` and ``self.params``
    (the resolved spec) and implements ``encode_queries`` and ``search_vectors``."""

    Params: ClassVar[type[Params]]
    SearchParams: ClassVar[type[Params]]
    path: Path
    params: dict[str, Any]

    @classmethod
    def open(cls: type[IndexT], path: Path, params: dict[str, Any]) -> IndexT:
        return cls(path, params)  # type: ignore[call-arg]

    def _init_spec(self, path: Path, params: dict[str, Any]) -> None:
        """``self.params``: the spec checked by ``Params`` (a bad one fails here, before
        anything is written) with its defaults; ``self.path``: the folder, created."""
        self.params = self.Params.resolve(params)
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def applied_seq(self) -> int:
        raise NotImplementedError

    def encode_queries(self, queries: Sequence[str]) -> Q:
        raise NotImplementedError

    def search_vectors(self, vectors: Q, k: int,
                       params: Params | None = None) -> list[list[Hit]]:
        raise NotImplementedError

    def _empty(self) -> bool:
        """Whether the index holds nothing (a search then encodes no query)."""
        return False

    def search(self, queries: Sequence[str], k: int,
               params: Params | None = None) -> list[list[Hit]]:
        """Top-``k`` per query; ``params`` (this type's ``SearchParams``) override the spec."""
        self.SearchParams.overrides(params)
        if k <= 0 or not queries or self._empty():
            return [[] for _ in queries]
        return self.search_vectors(self.encode_queries(queries), k, params)

    def _index_stats(self, documents: int, memory_bytes: int | None,
                     **details: Any) -> IndexStats:
        """This index's :class:`IndexStats`: the named facts, the type's own in ``details``."""
        return IndexStats(self.Params.kind, int(documents), self.applied_seq,
                          dir_bytes(self.path), memory_bytes, dict(self.params), details)


class StoredIndex(VectorIndex[Q]):
    """A vector index on a :class:`LabelStore` (``self._store``) with an in-memory structure
    saved by ``_save`` (under ``self._lock``). ``_store_lock`` serialises the store's one
    connection between the writer and readers in other threads (a sibling reading stored
    vectors); the writer holds it around each store call."""

    _store: LabelStore
    _labels: dict[int, str]
    """``label -> doc_id`` of the documents held (committed or applied)."""

    def _init_state(self) -> None:
        """The locks and save bookkeeping; call before loading the in-memory structure."""
        self._lock = threading.RLock()
        self._store_lock = threading.Lock()
        self._closed = False
        self._saved_seq = -1
        self._last_save = time.monotonic()

    @property
    def applied_seq(self) -> int:
        return self._store.applied_seq

    def _empty(self) -> bool:
        return not self._labels

    def _save(self) -> None:
        raise NotImplementedError

    def _saved(self, seq: int) -> None:
        """Note that the structure at ``seq`` was just saved."""
        self._saved_seq = seq
        self._last_save = time.monotonic()

    def _commit_store(self, seq: int) -> None:
        """Commit the store's change set with ``seq``."""
        with self._store_lock:
            self._store.commit(seq)

    def _save_if_due(self) -> None:
        """Save when ``save_every`` seconds have passed since the last save."""
        if time.monotonic() - self._last_save > float(self.params["save_every"]):
            self._save()

    def _dropped(self) -> None:
        """Called by :meth:`close` after a rollback dropped applied changes."""

    def close(self) -> None:
        """Drop what was applied and not committed (nothing is saved then), else save; close
        the store."""
        with self._store_lock:
            dropped = self._store.rollback()
        if dropped:
            self._dropped()
        else:
            self._save()
        with self._store_lock:
            self._closed = True
            self._store.close()


class FaissCache:
    """A faiss index saved as ``folder/NAME.faiss`` with ``folder/NAME.json`` (its info)."""

    def __init__(self, folder: Path, name: str):
        self.index_file = Path(folder) / f"{name}.faiss"
        self.info_file = Path(folder) / f"{name}.json"

    def load(self, expect: Mapping[str, Any]) -> tuple[faiss.Index, dict[str, Any]] | None:
        """``(index, info)`` when the saved info holds every item of ``expect``; None when
        the cache is missing, stale or unreadable."""
        import faiss

        try:
            info = json.loads(self.info_file.read_text())
            if not isinstance(info, dict) or any(info.get(k) != v for k, v in expect.items()):
                return None
            return faiss.read_index(str(self.index_file)), info
        except (OSError, ValueError, RuntimeError):
            return None

    def save(self, index: faiss.Index, info: Mapping[str, Any]) -> None:
        """Write the index, then its info (each atomically: the info names a whole file)."""
        import faiss

        atomic_write(self.index_file, lambda tmp: faiss.write_index(index, tmp))
        atomic_write_json(self.info_file, dict(info))
