"""The two small protocols every index type and pipeline stage implements.

- :class:`Retriever` is a pipeline stage: a batch of queries in, ranked hits out.
  Indexes, fusions and (later) rerankers are all retrievers, so they compose.
- :class:`Index` is a retriever that owns persistent state kept in step with the
  collection's document store: it applies change sets and commits the sequence
  number it has reached, atomically with its data.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from genseek.types import ChangeSet, Hit


@runtime_checkable
class Retriever(Protocol):
    """A pipeline stage: ``search(queries, k)`` returns one ranked list per query."""

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]: ...


@runtime_checkable
class Index(Retriever, Protocol):
    """A persistent index inside a collection.

    Life cycle: ``open(path, params)`` (creating an empty index if the folder is
    new), then any number of ``apply`` calls followed by ``commit(seq)``. After
    ``commit`` returns, ``applied_seq == seq`` survives a crash together with the
    data. ``apply`` must be idempotent: a change set may be replayed after a crash.
    Searches never return a document that a committed or applied change removed.
    """

    @property
    def applied_seq(self) -> int: ...

    def apply(self, changes: ChangeSet) -> None: ...

    def commit(self, seq: int) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


@runtime_checkable
class Reranker(Protocol):
    """Scores candidate texts for one query (higher is more relevant)."""

    def score(self, query: str, texts: Sequence[str]) -> list[float]: ...


class IndexType(Protocol):
    """What the registry holds: a class (or factory) with an ``open`` constructor."""

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
