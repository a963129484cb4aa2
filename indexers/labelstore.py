"""The SQLite source of truth that the vector and generative indexes share.

A :class:`LabelStore` is one SQLite file (WAL, ``synchronous=FULL``) with a table of rows keyed
by ``label`` (the document version: the store's sequence number, so a replaced version is
removed by label and a replay after a crash is a no-op) and a ``meta`` key/value table. The
writes of one change set go into one transaction, opened by the first write, that
:meth:`LabelStore.commit` closes together with the applied sequence number (``meta.seq``);
:meth:`LabelStore.rollback` drops them.

:class:`VectorStore` is the ``vectors.sqlite`` of the dense indexes (``dense``, ``repconc``,
``spann``): ``vectors(label, doc_id, vec)`` with float32 vectors as blobs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genseek.types import ChangeSet, Document

_CHUNK = 500  # labels per ``IN (...)`` query, below SQLite's variable limit


class LabelStore:
    """One table ``table`` of rows keyed by label, plus ``meta``, in one SQLite file.

    ``columns`` are the table's column definitions, the first ``label INTEGER PRIMARY KEY``.
    """

    def __init__(self, file: Path, table: str, columns: Sequence[str]):
        self.table = table
        self.names = [c.split()[0] for c in columns]
        self.db = sqlite3.connect(file, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(columns)})")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self.in_tx = False
        self.applied_seq = int(self.meta("seq") or 0)

    # -- meta -------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """The stored value of ``key`` (None when absent)."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def write_meta(self, values: Mapping[str, str]) -> None:
        """Set meta keys in one statement: inside the open transaction, if there is one."""
        marks = ", ".join("(?, ?)" for _ in values)
        self.db.execute(f"INSERT OR REPLACE INTO meta VALUES {marks}",
                        [x for item in values.items() for x in item])

    # -- rows -------------------------------------------------------------------------

    def select(self, columns: str) -> sqlite3.Cursor:
        """``SELECT columns FROM table``: every row, in no particular order."""
        return self.db.execute(f"SELECT {columns} FROM {self.table}")

    def begin(self) -> None:
        """Open the change set's transaction (once)."""
        if not self.in_tx:
            self.db.execute("BEGIN IMMEDIATE")
            self.in_tx = True

    def insert(self, rows: Iterable[Sequence[Any]]) -> None:
        """Insert (or replace) rows, one value per column (uncommitted)."""
        self.begin()
        marks = ", ".join("?" * len(self.names))
        self.db.executemany(f"INSERT OR REPLACE INTO {self.table}({', '.join(self.names)}) "
                            f"VALUES ({marks})", rows)

    def delete(self, labels: Iterable[int]) -> None:
        """Delete the rows of ``labels`` (uncommitted)."""
        self.begin()
        self.db.executemany(f"DELETE FROM {self.table} WHERE label = ?", [(v,) for v in labels])

    def commit(self, seq: int) -> None:
        """Commit the change set's writes together with the applied sequence number."""
        self.begin()
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('seq', ?)", (str(seq),))
        self.db.execute("COMMIT")
        self.in_tx = False
        self.applied_seq = seq

    def rollback(self) -> bool:
        """Drop the uncommitted writes; True when there were any (a transaction was open)."""
        if not self.in_tx:
            return False
        self.db.execute("ROLLBACK")
        self.in_tx = False
        return True

    def close(self) -> None:
        """Close the file (call :meth:`rollback` first to drop uncommitted writes)."""
        self.db.close()


VECTOR_COLUMNS = ("label INTEGER PRIMARY KEY", "doc_id TEXT NOT NULL", "vec BLOB NOT NULL")


def select_vectors(db: sqlite3.Connection, labels: Sequence[int] | None = None
                   ) -> list[tuple[int, bytes]]:
    """``(label, vec)`` rows of a ``vectors`` table: all, by label, when ``labels`` is None;
    else those of ``labels`` that exist (in chunks, in no particular order)."""
    if labels is None:
        return db.execute("SELECT label, vec FROM vectors ORDER BY label").fetchall()
    rows: list[tuple[int, bytes]] = []
    for lo in range(0, len(labels), _CHUNK):
        part = [int(v) for v in labels[lo:lo + _CHUNK]]
        marks = ",".join("?" * len(part))
        rows += db.execute(f"SELECT label, vec FROM vectors WHERE label IN ({marks})",
                           part).fetchall()
    return rows


class VectorStore(LabelStore):
    """``vectors.sqlite``: ``vectors(label, doc_id, vec)`` of ``dim``-d float32 vectors + meta."""

    def __init__(self, file: Path, dim: int):
        super().__init__(file, "vectors", VECTOR_COLUMNS)
        self.dim = int(dim)

    def labels(self) -> dict[int, str]:
        """``{label: doc_id}`` of every stored vector."""
        return dict(self.select("label, doc_id"))

    def add(self, docs: Sequence[tuple[int, str]], vecs: np.ndarray) -> None:
        """Store ``vecs[i]`` (float32) for document ``docs[i] = (label, doc_id)`` (uncommitted)."""
        self.insert([(label, doc_id, vecs[i].tobytes()) for i, (label, doc_id) in enumerate(docs)])

    def vectors(self, labels: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(labels int64 [n], vectors float32 [n, dim])`` of all (by label) or of ``labels``."""
        rows = select_vectors(self.db, labels)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(-1, self.dim)
        return ids, vecs

    def stage(self, changes: ChangeSet, labels: Mapping[int, str],
              vectors: Callable[[list[Document]], np.ndarray]
              ) -> tuple[list[int], list[Document], np.ndarray] | None:
        """Write the net effect of ``changes`` on ``labels`` (the stored ``{label: doc_id}``,
        which the caller updates): ``(gone, new_docs, vecs)``, None when it has none.

        ``gone`` are the removed versions that are stored, ``new_docs`` the upserts not stored
        yet and ``vecs`` their ``vectors(new_docs)`` (``[n, dim]``: encoded, or precomputed),
        computed before any write (a failing encoder leaves no transaction open). Both are
        written uncommitted, as by :meth:`delete` and :meth:`add`.
        """
        gone = [v for _, v in changes.removed if v in labels]
        new_docs = [d for d in changes.upserts if d.version not in labels]
        if not gone and not new_docs:
            return None
        vecs = vectors(new_docs) if new_docs else np.zeros((0, self.dim), np.float32)
        if gone:
            self.delete(gone)
        if new_docs:
            self.add([(d.version, d.doc_id) for d in new_docs], vecs)
        return gone, new_docs, vecs
