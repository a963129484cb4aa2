"""The protocols of genseek: what the collection, the pipeline and the API call, and nothing
they do not.

- :class:`Retriever` is a pipeline stage: a batch of queries (and the stage's validated
  per-request search parameters) in, one ranked list per query out. Indexes, fusions and whole
  pipelines are retrievers, so they compose.
- :class:`Index` is a retriever that owns persistent state kept in step with the collection's
  document store: it applies change sets and commits the sequence number it has reached,
  atomically with its data, and describes itself with a typed :class:`~genseek.types.IndexStats`.
- :class:`VectorSearch` is an index that searches with query vectors it encodes itself
  (``dense``, ``spann``, ``repconc``, ``muvera``, ``impact``): ``search`` is
  ``search_vectors(encode_queries(queries), k, params)``, so a caller that already has the
  vectors (a benchmark, an encoder pool) skips the encoder.
- :class:`VectorSource` is an index whose stored document vectors a sibling may reuse
  (``dense``); :class:`UsesSiblings` is an index that asks for them (``repconc``). The
  collection hands the second a lookup of its siblings by name (:data:`Siblings`); no index
  opens another index's files.
- :class:`EncodesDocuments` is an index whose ``apply`` runs a model on the documents
  (``dense``, ``spann``, ``repconc``, ``muvera``, ``impact``): it describes that work
  (``document_work()``, a :class:`~genseek.docwork.DocumentWork`) and applies a change set
  with some of the results precomputed (``apply_encoded``), so the model work can run
  elsewhere (Ray actors, :mod:`genseek.cluster`) and the index only stores the results.
- :class:`Reranker` is the rerank stage: candidate texts of a batch of queries in, one score
  per candidate out (``rank_batch``: a listwise LLM batches its windows across queries).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from genseek.types import ChangeSet, Hit, IndexStats

if TYPE_CHECKING:
    import numpy as np

    from genseek.docwork import DocumentWork, Payload
    from genseek.params import Params

Q = TypeVar("Q")
"""Query vectors: ``float32 [n, dim]`` (dense, spann, repconc), a list of ``[n_tokens_i, dim]``
arrays (muvera) or one ``(token ids int64 [n], weights float32 [n])`` pair per query (impact)."""


@runtime_checkable
class Retriever(Protocol):
    """A pipeline stage: ``search(queries, k, params)`` returns one ranked list per query.

    ``params`` is an instance of the index type's ``SearchParams`` schema (validated by the
    caller, e.g. :func:`genseek.pipeline.build_retriever`), or None for the spec's values. A
    retriever that takes no search parameters (a fusion) accepts only None.
    """

    def search(self, queries: Sequence[str], k: int,
               params: Params | None = None) -> list[list[Hit]]: ...


@runtime_checkable
class Index(Retriever, Protocol):
    """A persistent index inside a collection.

    Life cycle: ``open(path, params)`` (creating an empty index if the folder is
    new), then any number of ``apply`` calls followed by ``commit(seq)``. After
    ``commit`` returns, ``applied_seq == seq`` survives a crash together with the
    data. ``apply`` must be idempotent: a change set may be replayed after a crash.
    Searches never return a document that a committed or applied change removed.
    ``close`` drops what was applied and not committed.
    """

    @property
    def applied_seq(self) -> int: ...

    def apply(self, changes: ChangeSet) -> None: ...

    def commit(self, seq: int) -> None: ...

    def stats(self) -> IndexStats: ...

    def close(self) -> None: ...


@runtime_checkable
class VectorSearch(Index, Protocol[Q]):
    """An index that encodes queries with its own model and searches with the vectors."""

    def encode_queries(self, queries: Sequence[str]) -> Q: ...

    def search_vectors(self, vectors: Q, k: int,
                       params: Params | None = None) -> list[list[Hit]]: ...


@runtime_checkable
class VectorSource(Protocol):
    """An index that stores one float32 vector per live document version (its label)."""

    @property
    def vector_model(self) -> str:
        """The encoder that made the vectors (a sibling reuses them only for the same one)."""
        ...

    @property
    def dim(self) -> int: ...

    def stored_vectors(self, labels: Sequence[int]) -> dict[int, np.ndarray]:
        """``label -> float32 [dim]`` for the labels it holds (committed or applied); labels
        it does not hold are left out."""
        ...


Siblings = Callable[[str], object | None]
"""The collection's lookup of another index by name: the open index, or None where there is
no such index (or it failed). Opening a lazily opened sibling happens inside the call."""


@runtime_checkable
class UsesSiblings(Protocol):
    """An index that reads from other indexes of its collection (e.g. ``repconc`` reuses the
    ``dense`` vectors): the collection calls ``bind_siblings`` once, after opening it."""

    def bind_siblings(self, siblings: Siblings) -> None: ...


@runtime_checkable
class EncodesDocuments(Protocol):
    """An index whose ``apply`` needs model work on the documents, done through a
    :class:`~genseek.docwork.DocumentWork`.

    ``document_work()`` describes it (None when it cannot be reproduced elsewhere, e.g. an
    encoder object handed to the index in-process); ``apply_encoded(changes, encoded)`` is
    ``apply`` taking the payloads of some upserts from ``encoded`` (``doc_id -> payload`` of
    the document's current contents, as ``DocumentWork.run`` makes them) and computing the
    others with the same ``run``. ``apply(changes)`` is ``apply_encoded(changes, {})``.
    """

    def document_work(self) -> DocumentWork | None: ...

    def apply_encoded(self, changes: ChangeSet, encoded: Mapping[str, Payload]) -> None: ...


@runtime_checkable
class Reranker(Protocol):
    """Reorders candidates: one score per candidate text, per query (higher is better).

    ``texts[i]`` are query ``i``'s candidates in their fused order; the result has the same
    shape. Ties keep the fused order (the pipeline sorts stably).
    """

    def rank_batch(self, queries: Sequence[str],
                   texts: Sequence[Sequence[str]]) -> list[list[float]]: ...


class IndexType(Protocol):
    """What the registry holds: a class (or factory) with an ``open`` constructor, and its
    parameter schemas ``Params`` and ``SearchParams`` (:mod:`genseek.params`)."""

    def open(self, path: Path, params: dict[str, Any]) -> Index: ...


def file_bytes(paths: Iterable[Path | str]) -> int:
    """Total size of the regular files among ``paths``. A path that is gone by the time it
    is measured counts 0: writers replace files (temp file + rename) and SQLite deletes its
    journal while a stats call walks the folder."""
    total = 0
    for p in paths:
        try:
            st = os.stat(p)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


def dir_bytes(path: Path | str) -> int:
    """Bytes on disk under ``path`` (files only), safe against concurrent writers."""
    return file_bytes(os.path.join(root, name) for root, _, names in os.walk(path)
                      for name in names)
