"""The durable document store: SQLite in WAL mode with an append-only operation log.

Tables::

    docs(doc_id TEXT PRIMARY KEY, version INTEGER UNIQUE, title, text, metadata JSON, hash)
    oplog(seq INTEGER PRIMARY KEY, op 'upsert'|'delete', doc_id, prev_version)
    meta(key TEXT PRIMARY KEY, value TEXT)

Every write is one transaction that appends to ``oplog`` and changes ``docs``; a
document's ``version`` is the ``seq`` of the upsert that wrote it. Indexes record
the last ``seq`` they applied and catch up with :meth:`DocStore.changes`, which
returns the net effect of a range of operations read in one snapshot.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genseek.errors import GenseekError, InputError
from genseek.types import ChangeSet, Document, text_problem

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    doc_id   TEXT PRIMARY KEY,
    version  INTEGER NOT NULL UNIQUE,
    title    TEXT NOT NULL,
    text     TEXT NOT NULL,
    metadata TEXT NOT NULL,
    hash     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS oplog (
    seq          INTEGER PRIMARY KEY,
    op           TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
    doc_id       TEXT NOT NULL,
    prev_version INTEGER
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def content_hash(doc: Document) -> bytes:
    """A digest of a document's content, used to skip re-writing unchanged documents."""
    h = hashlib.blake2b(digest_size=16)
    for part in (doc.title, doc.text, json.dumps(doc.metadata, sort_keys=True)):
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one :meth:`DocStore.write` did."""

    seq: int  # the store's last sequence number after the write
    upserted: int  # documents written (new or changed)
    unchanged: int  # upserts skipped because the content was identical
    deleted: int  # documents removed
    missing: int  # deletes of ids that were not in the store


class DocStore:
    """SQLite document store, safe to share between threads.

    Writes go through one connection under a lock (SQLite allows one writer);
    each reading thread gets its own connection, and WAL mode lets readers run
    while a write is in progress.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._db = self._connect()
        with self._tx() as db:
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed (acknowledged) write survives power loss, not only kill -9.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=30000")
        return db

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
            with self._lock:
                self._readers.append(db)
        return db

    # -- transactions ---------------------------------------------------------------

    @contextmanager
    def _tx(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """A write transaction on the writer connection (held under the lock)."""
        with self._lock:
            self._db.execute(f"BEGIN {mode}")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same committed state."""
        db = self._reader()
        db.execute("BEGIN DEFERRED")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for db in self._readers:
                db.close()
            self._readers.clear()
            self._db.close()

    # -- writes -----------------------------------------------------------------------

    def write(
        self,
        upserts: Sequence[Document] = (),
        deletes: Iterable[str] = (),
        meta: Mapping[str, str] | None = None,
    ) -> WriteResult:
        """Apply a batch atomically: all of it is committed, or none of it.

        Within one batch, a later upsert of the same id wins over an earlier one
        (as in Elasticsearch's bulk API), and deletes are applied after upserts.
        An upsert whose content equals the stored version is skipped, so re-running
        an import writes nothing twice. ``meta`` entries are written in the same
        transaction (used for resumable imports).
        """
        latest: dict[str, Document] = {}
        deletes = list(deletes)
        for doc in upserts:  # nothing of a batch is written if one document is invalid
            problem = doc.problem()
            if problem:
                raise InputError(f"document {str(doc.doc_id)[:40]!r}: {problem}")
        for doc_id in deletes:  # any stored id can be deleted; it must be storable text
            problem = "must be a string" if not isinstance(doc_id, str) else text_problem(doc_id)
            if problem:
                raise InputError(f"delete: id {str(doc_id)[:40]!r} {problem}")
        for doc in upserts:
            latest.pop(doc.doc_id, None)  # keep insertion order of the winning copy
            latest[doc.doc_id] = doc
        upserted = unchanged = deleted = missing = 0
        with self._tx() as db:
            seq = self._last_seq(db)
            for doc in latest.values():
                digest = content_hash(doc)
                row = db.execute(
                    "SELECT version, hash FROM docs WHERE doc_id = ?", (doc.doc_id,)
                ).fetchone()
                if row is not None and row[1] == digest:
                    unchanged += 1
                    continue
                seq += 1
                prev = row[0] if row is not None else None
                db.execute(
                    "INSERT INTO oplog(seq, op, doc_id, prev_version) VALUES (?, 'upsert', ?, ?)",
                    (seq, doc.doc_id, prev),
                )
                db.execute(
                    "INSERT INTO docs(doc_id, version, title, text, metadata, hash)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(doc_id) DO UPDATE SET"
                    " version=excluded.version, title=excluded.title, text=excluded.text,"
                    " metadata=excluded.metadata, hash=excluded.hash",
                    (doc.doc_id, seq, doc.title, doc.text, json.dumps(doc.metadata), digest),
                )
                upserted += 1
            for doc_id in dict.fromkeys(deletes):
                row = db.execute("SELECT version FROM docs WHERE doc_id = ?", (doc_id,)).fetchone()
                if row is None:
                    missing += 1
                    continue
                seq += 1
                db.execute(
                    "INSERT INTO oplog(seq, op, doc_id, prev_version) VALUES (?, 'delete', ?, ?)",
                    (seq, doc_id, row[0]),
                )
                db.execute("DELETE FROM docs WHERE doc_id = ?", (doc_id,))
                deleted += 1
            for key, value in (meta or {}).items():
                db.execute(
                    "INSERT INTO meta(key, value) VALUES (?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (key, value),
                )
        return WriteResult(seq, upserted, unchanged, deleted, missing)

    # -- reads ------------------------------------------------------------------------

    @staticmethod
    def peek(path: Path) -> tuple[int, int]:
        """``(seq, documents)`` of a store, read without opening it for writing (no schema
        set-up, no lock beyond SQLite's own): what ``genseek stats`` reports while another
        process may be writing."""
        uri = Path(path).resolve().as_uri() + "?mode=ro"
        try:
            db = sqlite3.connect(uri, uri=True)
        except sqlite3.Error as exc:
            raise GenseekError(f"{path}: cannot read the document store: {exc}") from None
        try:
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("BEGIN DEFERRED")
            seq = DocStore._last_seq(db)
            documents = db.execute("SELECT COUNT(*) FROM docs").fetchone()[0]
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise GenseekError(f"{path}: cannot read the document store: {exc}") from None
        finally:
            db.close()
        return int(seq), int(documents)

    @staticmethod
    def _last_seq(db: sqlite3.Connection) -> int:
        return db.execute("SELECT COALESCE(MAX(seq), 0) FROM oplog").fetchone()[0]

    @property
    def seq(self) -> int:
        """The sequence number of the last committed operation (0 for an empty store)."""
        return self._last_seq(self._reader())

    def __len__(self) -> int:
        return self._reader().execute("SELECT COUNT(*) FROM docs").fetchone()[0]

    def get_meta(self, key: str) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @staticmethod
    def _row_to_doc(row: tuple[Any, ...]) -> Document:
        doc_id, version, title, text, metadata = row
        return Document(doc_id, title, text, json.loads(metadata), version)

    def get(self, doc_ids: Sequence[str]) -> dict[str, Document]:
        """The live documents among ``doc_ids``, keyed by id (absent ids are left out)."""
        out: dict[str, Document] = {}
        ids = list(dict.fromkeys(doc_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._reader().execute(
                f"SELECT doc_id, version, title, text, metadata FROM docs WHERE doc_id IN ({marks})",
                chunk,
            ):
                doc = self._row_to_doc(row)
                out[doc.doc_id] = doc
        return out

    def iter_docs(self, batch_size: int = 1000) -> Iterator[Document]:
        """All live documents in version order."""
        after = 0
        while True:
            rows = self._reader().execute(
                "SELECT doc_id, version, title, text, metadata FROM docs"
                " WHERE version > ? ORDER BY version LIMIT ?",
                (after, batch_size),
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield self._row_to_doc(row)
            after = rows[-1][1]

    def changes(self, after_seq: int, max_ops: int = 1000) -> ChangeSet:
        """The net effect of at most ``max_ops`` operations after ``after_seq``.

        Read in one snapshot. Call repeatedly until ``upto_seq == seq`` to catch up;
        once caught up, an index that applied every change set holds exactly the
        live documents.
        """
        with self._snapshot() as db:
            last = self._last_seq(db)
            upto = min(last, after_seq + max_ops)
            if upto <= after_seq:
                return ChangeSet(after_seq, after_seq)
            ops = db.execute(
                "SELECT doc_id, prev_version FROM oplog WHERE seq > ? AND seq <= ? ORDER BY seq",
                (after_seq, upto),
            ).fetchall()
            touched = {doc_id for doc_id, _ in ops}
            removed = tuple((doc_id, prev) for doc_id, prev in ops if prev is not None)
            upserts = tuple(
                self._row_to_doc(row)
                for row in db.execute(
                    "SELECT doc_id, version, title, text, metadata FROM docs"
                    " WHERE version > ? AND version <= ? ORDER BY version",
                    (after_seq, upto),
                )
            )
            # Touched ids with no version written in the range were deleted, or replaced
            # by an operation after ``upto`` that a later change set carries.
            deleted = frozenset(touched - {d.doc_id for d in upserts})
        return ChangeSet(after_seq, upto, upserts, removed, deleted)
