"""A collection: one folder holding a document store and any number of named indexes.

Layout::

    COLLECTION/
      collection.json      manifest: format version and the index specs by name
      docs.sqlite          document store + operation log (genseek.store)
      indexes/NAME/        one folder per index, owned by its index type
      index-state.json     what each index last committed (sequence number, documents), so
                           :meth:`Collection.describe` reports without opening any index
      collection.lock      held (flock) by the one process that has it open

Write path: :meth:`Collection.write` commits a batch to the store (the
acknowledgement point), then brings every index up to the store's sequence
number. Opening a collection does the same catch-up, so a crash between the
store's commit and an index's commit loses nothing. ``Collection.open(path, lazy=True)``
opens no index until it is used: each one is opened and caught up on its first use, so a
command pays only for the indexes it touches (a bm25 search starts the JVM and loads no
model).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genseek.atomic import atomic_write_json
from genseek.errors import (
    CollectionLocked,
    ConflictError,
    GenseekError,
    IndexUnavailable,
    InvalidParameter,
    NotFoundError,
    ServerError,
)
from genseek.protocols import EncodesDocuments, Index, Retriever, UsesSiblings
from genseek.registry import check_spec, index_schemas, resolve
from genseek.spec import IndexSpec, validate_name
from genseek.store import DocStore, WriteResult
from genseek.types import Document, Hit, IndexStats

if TYPE_CHECKING:
    from genseek.params import Params

log = logging.getLogger("genseek.collection")

MANIFEST = "collection.json"
STATE = "index-state.json"
CREATING = "creating"
"""The manifest's ``state`` while :meth:`Collection.create` has not finished."""
FORMAT = "genseek-collection"
FORMAT_VERSION = 1

Progress = Callable[[str, int, int], None]
"""``progress(index_name, applied_seq, target_seq)`` during catch-up."""

Encoded = Mapping[str, Mapping[str, Any]]
"""Precomputed model work for a batch: ``{DocumentWork.key: {doc_id: payload}}``
(:mod:`genseek.docwork`)."""


@dataclass(frozen=True)
class IngestReport:
    """What :meth:`Collection.ingest` did."""

    read: int  # records read from the source in this run
    skipped_lines: int  # lines skipped because an earlier run had committed them
    upserted: int
    unchanged: int
    empty_ids: tuple[str, ...]  # documents with neither title nor text (indexed anyway)
    seq: int


class Searching:
    """``retriever`` and ``search`` over a collection's ``serving(name)`` and
    ``default_indexes()`` (a :class:`Collection` and a sharded one share them)."""

    path: Path

    def serving(self, name: str) -> Any:  # pragma: no cover - the collection's own
        raise NotImplementedError

    def default_indexes(self) -> list[str]:  # pragma: no cover - the collection's own
        raise NotImplementedError

    def retriever(self, names: Sequence[str] | str | None = None, fusion: str = "rrf",
                  **fusion_params: Any) -> Retriever:
        """One index, or a fusion of several (by default every index that is serving: a failed
        one is left out, see :meth:`default_indexes`), built by :func:`genseek.pipeline.fuse`.
        ``fusion`` is ``rrf`` (``rrf_k``, ``weights``, ``depth``) or ``linear`` (``weights``,
        ``normalization``, ``depth``). A named index that is failing raises
        :class:`IndexUnavailable`."""
        from genseek.pipeline import fuse_named

        if isinstance(names, str):
            return self.serving(names)
        chosen = list(names) if names else self.default_indexes()
        if not chosen:
            raise GenseekError(f"collection {self.path} has no indexes")
        return fuse_named(self.serving, chosen, fusion, **fusion_params)

    def search(self, queries: Sequence[str] | str, k: int = 10,
               index: Sequence[str] | str | None = None, fusion: str = "rrf",
               **fusion_params: Any) -> list[list[Hit]] | list[Hit]:
        """Search one query (returns hits) or a batch (returns one list per query)."""
        single = isinstance(queries, str)
        batch = [queries] if single else list(queries)
        results = self.retriever(index, fusion, **fusion_params).search(batch, k)
        return results[0] if single else results


class Collection(Searching):
    """Open with :meth:`open` or :meth:`create`; use as a context manager."""

    def __init__(self, path: Path, manifest: dict[str, Any], lock_fd: int, strict: bool = True,
                 lazy: bool = False, progress: Progress | None = None):
        self.path = path
        self.manifest = manifest
        self._lock_fd: int | None = lock_fd
        self.indexes: dict[str, Index] = {}
        self.store: DocStore | None = None
        # Each index catches up on its own (one lock and, in the background, one applier
        # thread per index), so a cheap index never waits behind an expensive one.
        self._index_locks: dict[str, threading.RLock] = {}
        self._synced = threading.Condition()  # notified after every catch-up
        self._wakes: dict[str, threading.Event] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._background: float | None = None  # the interval while background sync runs
        self._stopping = False
        self.sync_errors: dict[str, str] = {}  # index name -> its applier's last failure
        self.unapplied: dict[str, int] = {}  # after close: index -> operations not applied
        self.failed: dict[str, str] = {}  # index name -> why it could not open
        # lazy: indexes of the manifest not opened yet (opened on first use, see index())
        self._unopened: set[str] = set(manifest["indexes"]) if lazy else set()
        self._open_lock = threading.RLock()  # re-entrant: an index opening may open a sibling
        self._progress = progress
        self._state_lock = threading.Lock()
        self._state: dict[str, dict[str, Any]] = _read_state(path)
        try:
            self.store = DocStore(path / "docs.sqlite")
            for name, spec in manifest["indexes"].items():
                if lazy:
                    break
                try:
                    self.indexes[name] = self._open_index(name, IndexSpec.parse(spec))
                except Exception as exc:
                    if strict:
                        raise
                    self.failed[name] = _describe(exc)
                    self._record(name, {"error": self.failed[name]})
                    log.error("collection %s: index %s cannot open: %s", path, name,
                              self.failed[name])
        except BaseException:
            self.close()
            raise

    # -- opening ------------------------------------------------------------------------

    @staticmethod
    def _lock(path: Path) -> int:
        fd = os.open(path / "collection.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CollectionLocked(f"collection {path} is open in another process; "
                               "try again when it has finished") from None
        return fd

    @staticmethod
    def _check_dir(path: Path) -> Path:
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise GenseekError(f"{path} is a file, not a collection folder")
        return path

    @classmethod
    def exists(cls, path: Path) -> bool:
        """Whether ``path`` holds a complete collection (not an interrupted creation)."""
        manifest = cls._peek(Path(path))
        return manifest is not None and manifest.get("state") != CREATING

    @classmethod
    def interrupted(cls, path: Path) -> dict[str, str] | None:
        """The index specs of a creation of ``path`` that was interrupted (its manifest says
        ``creating``), which :meth:`create` with the same specs finishes; else None."""
        manifest = cls._peek(Path(path))
        if manifest is not None and manifest.get("state") == CREATING:
            return dict(manifest["indexes"])
        return None

    @staticmethod
    def _peek(path: Path) -> dict[str, Any] | None:
        try:
            return Collection._read_manifest(path)
        except GenseekError:
            return None

    @classmethod
    def _complete_manifest(cls, path: Path) -> dict[str, Any]:
        """The manifest of a complete collection; :class:`NotFoundError` for a folder that is
        none, or whose creation was interrupted."""
        manifest = cls._read_manifest(path)
        if manifest is None:
            raise NotFoundError(f"{path} is not a genseek collection (no {MANIFEST})")
        if manifest.get("state") == CREATING:
            raise NotFoundError(f"{path}: its creation was interrupted; run the same create "
                                "command again (same indexes) to finish it")
        return manifest

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any] | None:
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            return None
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise GenseekError(f"{manifest_path}: unreadable manifest: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
                or not isinstance(manifest.get("indexes"), dict):
            raise GenseekError(f"{manifest_path}: not a genseek collection manifest")
        if manifest.get("version", 0) > FORMAT_VERSION:
            raise GenseekError(f"{manifest_path}: format version {manifest['version']} is newer "
                               f"than this genseek supports ({FORMAT_VERSION})")
        return manifest

    @classmethod
    def open(cls, path: Path, progress: Progress | None = None, *,
             lazy: bool = False) -> Collection:
        """Open an existing collection and bring every index up to date.

        An index that cannot open, or cannot apply the stored writes, does not stop the others:
        it is reported by :meth:`health` and answers with
        :class:`~genseek.errors.IndexUnavailable` until the collection is opened again.

        With ``lazy``, no index is opened now: each one is opened, and caught up with the
        store, when it is first used (:meth:`index`, a search); :meth:`stats` reports the others from
        what they last committed. Writes apply to the indexes that are open; the others catch
        up when they open.
        """
        path = cls._check_dir(path)
        manifest = cls._complete_manifest(path)
        collection = cls(path, manifest, cls._lock(path), strict=False, lazy=lazy,
                         progress=progress)
        try:
            collection.sync(progress, raise_errors=False)
        except BaseException:
            collection.close()
            raise
        return collection

    @classmethod
    def create(cls, path: Path, indexes: dict[str, str | IndexSpec] | None = None,
               progress: Progress | None = None, *, exist_ok: bool = False) -> Collection:
        """Create a collection (the folder may exist but must be empty) with ``indexes``.

        With ``exist_ok``, a collection that already exists with the same indexes is opened
        instead (a script can run twice); one with other indexes is a
        :class:`~genseek.errors.ConflictError`.

        Creation is recognisably incomplete until it has finished: the manifest is written
        first, marked ``creating``, and the mark is dropped once every index has opened. A
        creation killed half-way is finished by calling ``create`` again with the same
        indexes (the CLI's and the API's create do so); other specs are refused.
        """
        path = cls._check_dir(path)
        # unknown types and bad parameters fail before anything is written
        specs = {validate_name(n): str(check_spec(str(s))) for n, s in (indexes or {}).items()}
        existing = cls._read_manifest(path)
        resuming = existing is not None and existing.get("state") == CREATING
        if existing is not None and not resuming:
            if not exist_ok:
                raise ConflictError(f"{path} is already a collection")
            if existing["indexes"] != specs:
                have = ", ".join(f"{n}={s}" for n, s in existing["indexes"].items()) or "none"
                raise ConflictError(f"{path} is already a collection with indexes {have}")
            return cls.open(path, progress)
        if resuming and existing["indexes"] != specs:
            have = ", ".join(f"{n}={s}" for n, s in existing["indexes"].items()) or "none"
            raise ConflictError(f"{path}: an interrupted creation with indexes {have}; run it "
                                "again with the same indexes to finish it, or delete the folder")
        if not resuming and path.exists() and any(p.name != "collection.lock"
                                                  for p in path.iterdir()):
            raise ConflictError(f"{path} exists and is not empty; choose a new folder")
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        fd = cls._lock(path)
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "indexes": specs}
        if not resuming:  # the first thing written: the folder is now a creation
            try:
                atomic_write_json(path / MANIFEST, {**manifest, "state": CREATING})
            except BaseException:
                os.close(fd)
                cls._remove_partial(path, created)
                raise
        try:
            collection = cls(path, manifest, fd, strict=True)
        except BaseException:  # __init__ has closed what it opened, the lock included
            if not resuming:
                cls._remove_partial(path, created)
            raise
        try:
            atomic_write_json(path / MANIFEST, manifest)
            collection.sync(progress)
        except BaseException:
            collection.close()
            if not resuming:
                cls._remove_partial(path, created)
            raise
        return collection

    @staticmethod
    def _remove_partial(path: Path, created: bool) -> None:
        import shutil

        if created:
            shutil.rmtree(path, ignore_errors=True)
            return
        for child in path.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)

    def _open_index(self, name: str, spec: IndexSpec) -> Index:
        index = resolve(spec).open(self.path / "indexes" / name, dict(spec.params))
        self._index_locks.setdefault(name, threading.RLock())
        if isinstance(index, UsesSiblings):
            index.bind_siblings(functools.partial(self._sibling, name))
        return index

    def _sibling(self, asking: str, name: str) -> Index | None:
        """Index ``name`` for index ``asking`` (:data:`genseek.protocols.Siblings`): opened if
        it is lazily unopened; None where there is none, it is ``asking`` itself, or it cannot
        serve."""
        if name == asking or name not in self.manifest["indexes"] or name in self.failed:
            return None
        try:
            return self.index(name)
        except GenseekError:
            return None

    def add_index(self, name: str, spec: str | IndexSpec, progress: Progress | None = None) -> Index:
        """Add an index and build it from the stored documents."""
        validate_name(name)
        spec = check_spec(spec)
        if name in self.indexes:
            if str(spec) != self.manifest["indexes"][name]:
                raise ConflictError(f"index {name!r} already exists with spec "
                                   f"{self.manifest['indexes'][name]!r}, not {str(spec)!r}")
            return self.indexes[name]
        index = self._open_index(name, spec)
        self.manifest = {**self.manifest, "indexes": {**self.manifest["indexes"], name: str(spec)}}
        atomic_write_json(self.path / MANIFEST, self.manifest)
        self._sync_index(name, index, progress)  # built before searches can see it
        self.indexes = {**self.indexes, name: index}
        if self._background is not None:
            self._start_worker(name)
        return index

    def drop_index(self, name: str) -> None:
        """Remove an index from the manifest and delete its folder."""
        import shutil

        if name in self.failed or name in self._unopened:  # never opened: nothing to close
            self.failed = {n: e for n, e in self.failed.items() if n != name}
            self._unopened.discard(name)
        else:
            index = self.index(name)
            self._stop_worker(name)
            with self._index_locks[name]:
                self.indexes = {n: i for n, i in self.indexes.items() if n != name}
                index.close()
        self.sync_errors.pop(name, None)
        self.manifest = {**self.manifest, "indexes": {
            n: s for n, s in self.manifest["indexes"].items() if n != name}}
        atomic_write_json(self.path / MANIFEST, self.manifest)
        self._record(name, None)
        shutil.rmtree(self.path / "indexes" / name, ignore_errors=True)

    # -- keeping indexes current ------------------------------------------------------------

    def sync(self, progress: Progress | None = None, batch_ops: int = 1000,
             raise_errors: bool = True, encoded: Encoded | None = None) -> None:
        """Apply every store operation each index has not applied yet.

        Every index is tried, and one that fails does not stop the others: its error is kept
        in :attr:`sync_errors` (see :meth:`health`) and, with ``raise_errors``, the first
        failure is raised once all have been tried. ``encoded``: precomputed model work for
        the documents just written (:data:`Encoded`, see :meth:`write`).
        """
        first: Exception | None = None
        for name, index in list(self.indexes.items()):
            first = self._sync_recorded(name, index, progress, batch_ops, encoded) or first
        if first is not None and raise_errors:
            raise first

    def _sync_recorded(self, name: str, index: Index, progress: Progress | None = None,
                       batch_ops: int = 1000, encoded: Encoded | None = None
                       ) -> Exception | None:
        """:meth:`_sync_index`, its failure kept in :attr:`sync_errors` (and returned)."""
        try:
            self._sync_index(name, index, progress, batch_ops, encoded)
        except Exception as exc:  # noqa: BLE001 - reported through health()
            self.sync_errors[name] = _describe(exc)
            log.error("collection %s, index %s: applying writes failed: %s", self.path, name,
                      self.sync_errors[name])
            self._record(name, {"error": self.sync_errors[name]})
            return exc
        self.sync_errors.pop(name, None)
        if self._state.get(name, {}).get("error"):
            self._record(name, {"error": None})
        return None

    def _sync_index(self, name: str, index: Index, progress: Progress | None = None,
                    batch_ops: int = 1000, encoded: Encoded | None = None) -> None:
        """Bring one index up to the store's current sequence number (in steps of at most
        250 operations when someone watches the ``progress``, so it moves). With
        ``encoded``, an :class:`~genseek.protocols.EncodesDocuments` index takes the payloads
        of its work's key from it (``apply_encoded``) and computes only what is missing."""
        if progress is not None:
            batch_ops = min(batch_ops, 250)
        payloads = _payloads(index, encoded)
        with self._index_locks[name]:
            target = self.store.seq
            seq = index.applied_seq
            if seq > target:
                raise ServerError(f"index {name!r} is ahead of the document store "
                                   f"({seq} > {target}): the collection folder was mixed up")
            if progress and seq < target:
                progress(name, seq, target)  # at once: the bar exists before the first batch
            while seq < target:
                changes = self.store.changes(seq, batch_ops)
                if payloads is None:
                    index.apply(changes)
                else:
                    index.apply_encoded(changes, payloads)  # type: ignore[attr-defined]
                index.commit(changes.upto_seq)
                seq = changes.upto_seq
                if progress:
                    progress(name, seq, target)
            if self._state.get(name, {}).get("applied_seq") != seq:
                self._record(name, {"applied_seq": seq})
        with self._synced:
            self._synced.notify_all()

    @property
    def sync_error(self) -> str | None:
        """The background appliers' last failures (``index: error; ...``), or None."""
        if not self.sync_errors:
            return None
        return "; ".join(f"{name}: {error}" for name, error in sorted(self.sync_errors.items()))

    @sync_error.setter
    def sync_error(self, value: str | None) -> None:  # for operators and tests
        self.sync_errors = {} if value is None else {"collection": value}

    def index_applied_seq(self, name: str) -> int:
        """The sequence number one index has reached."""
        return self.index(name).applied_seq

    @property
    def applied_seq(self) -> int:
        """The sequence number every index has reached (the store's, with no indexes)."""
        seqs = [index.applied_seq for index in self.indexes.values()]
        return min(seqs) if seqs else self.store.seq

    def write(self, upserts: Sequence[Document] = (), deletes: Iterable[str] = (),
              meta: dict[str, str] | None = None, *, sync: bool = True,
              progress: Progress | None = None, encoded: Encoded | None = None) -> WriteResult:
        """Commit a batch to the store, then apply it to every index.

        The batch is acknowledged (durable) once the store has committed it; if the
        process dies before the indexes have applied it, the next open replays it.
        With ``sync=False`` the indexes are left to the background applier (see
        :meth:`start_background_sync`); :meth:`wait_for` waits for them. ``progress`` is
        :meth:`sync`'s.

        ``encoded`` (:data:`Encoded`) is model work already done for ``upserts`` (by Ray
        actors: :mod:`genseek.cluster`): ``{DocumentWork.key: {doc_id: payload}}``, each
        payload made from the winning copy of that id in ``upserts``. The indexes whose work
        has that key apply it instead of encoding (``apply_encoded``); ignored with
        ``sync=False``.
        """
        result = self.store.write(upserts, deletes, meta)
        if sync:
            self.sync(progress, encoded=encoded)
        else:
            for wake in list(self._wakes.values()):
                wake.set()
        return result

    def wait_for(self, seq: int, timeout: float | None = None,
                 indexes: Sequence[str] | None = None) -> bool:
        """Block until every index (or each of ``indexes``) has applied ``seq``; False on
        timeout."""
        names = list(self.indexes) if indexes is None else list(indexes)
        for name in names:
            self.index(name)  # a clear error for an unknown name

        def reached() -> bool:
            current = self.indexes
            return all(n not in current or current[n].applied_seq >= seq for n in names)

        if not self._workers and not reached():
            for name in names:
                self._sync_index(name, self.indexes[name])
        with self._synced:
            return self._synced.wait_for(reached, timeout)

    def start_background_sync(self, interval: float = 1.0) -> None:
        """Apply store writes to the indexes in the background (``write(sync=False)``):
        one applier thread per index, so each index catches up at its own pace."""
        if self._background is not None:
            return
        self._stopping = False
        self._background = interval
        for name in self.indexes:
            self._start_worker(name)

    def _start_worker(self, name: str) -> None:
        wake = self._wakes[name] = threading.Event()
        worker = threading.Thread(target=self._apply_loop, args=(name, wake),
                                  name=f"genseek-sync-{self.path.name}-{name}", daemon=True)
        self._workers[name] = worker
        worker.start()

    def _stop_worker(self, name: str) -> None:
        worker = self._workers.pop(name, None)
        wake = self._wakes.pop(name, None)
        if worker is not None and wake is not None:
            wake.set()
            worker.join()

    def _apply_loop(self, name: str, wake: threading.Event) -> None:
        interval = self._background or 1.0
        backoff = interval
        while not self._stopping and self._wakes.get(name) is wake:
            wake.wait(backoff)
            wake.clear()
            if self._stopping or self._wakes.get(name) is not wake:
                return
            index = self.indexes.get(name)
            if index is None:
                return
            failed = self._sync_recorded(name, index) is not None
            backoff = min(backoff * 2, 30.0) if failed else interval

    def stop_background_sync(self) -> None:
        """Stop the appliers, then apply what they left (an index whose writes fail stays
        behind, in :attr:`sync_errors`)."""
        if self._background is None:
            return
        self._stopping = True
        for name in list(self._workers):
            self._stop_worker(name)
        self._background = None
        self.sync(raise_errors=False)

    def upsert(self, docs: Sequence[Document]) -> WriteResult:
        return self.write(upserts=docs)

    def delete(self, doc_ids: Iterable[str]) -> WriteResult:
        return self.write(deletes=doc_ids)

    def ingest(self, records: Iterator[tuple[int, Document]], source_key: str | None = None,
               batch_size: int = 1000, on_batch: Callable[[int], None] | None = None,
               skip_lines: int = 0, on_apply: Progress | None = None,
               encode: Callable[[Sequence[Document]], Encoded] | None = None) -> IngestReport:
        """Write ``(line_number, Document)`` records in batches.

        With ``source_key``, each batch also records the last line it committed under
        that key, so an interrupted import resumes there (see :meth:`resume_point`).
        ``on_batch(n)`` follows each committed batch; ``on_apply`` is the indexes' progress
        within a batch (watched, they apply it in steps of at most 250 operations).
        ``encode(batch)``, called before each batch is written, returns its precomputed
        model work (see :meth:`write`; :func:`genseek.cluster.ingest` computes it in Ray).
        """
        def write(batch: list[Document], meta: dict[str, str] | None) -> WriteResult:
            encoded = encode(batch) if encode is not None else None
            return self.write(upserts=batch, meta=meta, progress=on_apply, encoded=encoded)

        return ingest_batches(records, write, self.store.seq, source_key, batch_size,
                              on_batch, skip_lines)

    def resume_point(self, source_key: str) -> int:
        """The last line an earlier import of ``source_key`` committed (0 if none)."""
        raw = self.store.get_meta(source_key)
        return int(json.loads(raw)["line"]) if raw else 0

    # -- reading ----------------------------------------------------------------------------

    def index(self, name: str) -> Index:
        """The open index ``name``: :class:`NotFoundError` if there is none,
        :class:`IndexUnavailable` if it could not open."""
        try:
            return self.indexes[name]
        except KeyError:
            if name in self._unopened:
                return self._open_lazily(name)
            if name in self.failed:
                raise IndexUnavailable(f"index {name!r} of collection {self.path.name!r} is "
                                       f"unavailable: it could not open ({self.failed[name]})",
                                       index=name) from None
            known = ", ".join(self.manifest["indexes"]) or "none"
            raise NotFoundError(f"no index named {name!r} in {self.path} (indexes: {known})") \
                from None

    def _open_lazily(self, name: str) -> Index:
        """Open a not-yet-opened index of a lazy collection, catch it up, and serve it."""
        with self._open_lock:
            if name in self.indexes:
                return self.indexes[name]
            if name not in self._unopened:  # it failed meanwhile, or was dropped
                return self.index(name)
            try:
                index = self._open_index(name, IndexSpec.parse(self.manifest["indexes"][name]))
            except Exception as exc:
                self.failed[name] = _describe(exc)
                self._unopened.discard(name)
                self._record(name, {"error": self.failed[name]})
                log.error("collection %s: index %s cannot open: %s", self.path, name,
                          self.failed[name])
                return self.index(name)  # IndexUnavailable naming the reason
            self._sync_recorded(name, index, self._progress)
            opened = {**self.indexes, name: index}  # kept in manifest order (linear weights)
            self.indexes = {n: opened[n] for n in self.manifest["indexes"] if n in opened}
            self._unopened.discard(name)
            if self._background is not None:
                self._start_worker(name)
            return index

    def serving(self, name: str) -> Index:
        """The index ``name`` for a search: :meth:`index`, and :class:`IndexUnavailable` while
        its writes keep failing (its results would miss them)."""
        index = self.index(name)
        error = self.sync_errors.get(name)
        if error is not None:
            raise IndexUnavailable(f"index {name!r} of collection {self.path.name!r} is "
                                   f"unavailable: applying writes fails ({error})", index=name)
        return index

    def unavailable(self) -> dict[str, str]:
        """The indexes that cannot serve (they could not open, or their writes fail) and why."""
        return {**self.sync_errors, **self.failed}

    def default_indexes(self) -> list[str]:
        """The indexes a search that names none uses: every one that is serving. Raises
        :class:`IndexUnavailable` when indexes exist but none is serving."""
        for name in [n for n in self.manifest["indexes"] if n in self._unopened]:
            # a default search uses them all: open them now
            with contextlib.suppress(IndexUnavailable):
                self.index(name)
        broken = self.unavailable()
        names = [n for n in self.manifest["indexes"] if n in self.indexes and n not in broken]
        if not names and broken:
            raise IndexUnavailable(f"no index of collection {self.path.name!r} is serving "
                                   f"(failing: {', '.join(sorted(broken))})")
        return names

    def health(self) -> dict[str, dict[str, Any]]:
        """Per index: ``state`` (``ready``: current; ``catching_up``: behind the store;
        ``failed``: it could not open, or applying writes fails; ``not_open``: a lazy
        collection has not opened it yet), ``lag`` (operations behind, None if it is not open)
        and ``error``."""
        seq = self.store.seq if self.store is not None else 0
        out: dict[str, dict[str, Any]] = {}
        for name in self.manifest["indexes"]:
            if name in self.failed:
                out[name] = {"state": "failed", "lag": None, "error": self.failed[name]}
                continue
            if name in self._unopened:
                out[name] = {"state": "not_open", "lag": None, "error": None}
                continue
            index = self.indexes.get(name)
            if index is None:  # being added or dropped right now
                continue
            lag = max(0, seq - index.applied_seq)
            error = self.sync_errors.get(name)
            state = "failed" if error else ("catching_up" if lag else "ready")
            out[name] = {"state": state, "lag": lag, "error": error}
        return out

    def search_params(self, name: str, params: dict[str, Any]) -> Params | None:
        """Per-request search ``params`` for index ``name``, validated by its type's
        ``SearchParams`` schema (what :meth:`Retriever.search <genseek.protocols.Retriever.search>`
        takes); None for none. Refused with one line naming the index
        (:class:`~genseek.errors.InvalidParameter`)."""
        self.index(name)
        _, schema = index_schemas(IndexSpec.parse(self.manifest["indexes"][name]).type)
        if schema is None:
            if params:
                raise InvalidParameter(f"index {name!r} takes no search parameters "
                                       f"(got {', '.join(map(repr, params))})")
            return None
        try:
            return schema.check(params)
        except InvalidParameter as exc:
            raise InvalidParameter(f"index {name!r}: {exc}") from None

    def get(self, doc_ids: Sequence[str]) -> dict[str, Document]:
        return self.store.get(doc_ids)

    def __len__(self) -> int:
        return len(self.store)

    def stats(self) -> dict[str, Any]:
        try:
            import psutil

            rss = psutil.Process().memory_info().rss
        except ImportError:  # pragma: no cover
            rss = None
        return _stats_record(self.path, len(self.store), self.store.seq, rss,
                             self._index_stats())

    def _index_stats(self) -> dict[str, dict[str, Any]]:
        """Each index's stats with its health (``state``, ``lag``, ``error``); an index that
        failed, or whose stats fail, still has an entry."""
        health = self.health()
        seq = self.store.seq
        out: dict[str, dict[str, Any]] = {}
        for name, spec in self.manifest["indexes"].items():
            entry: dict[str, Any] = {"spec": spec}
            index = self.indexes.get(name)
            if name in self._unopened:
                entry.update(_recorded_stats(self.path, name, self._state.get(name), seq))
            elif index is not None:
                try:
                    entry.update(stats_dict(index))
                except Exception as exc:  # noqa: BLE001 - report it, keep the others
                    entry["stats_error"] = _describe(exc)
                    entry.setdefault("applied_seq", index.applied_seq)
            if name in health and name not in self._unopened:
                entry.update(health[name])
            out[name] = entry
        return out

    # -- what each index committed, readable without opening it -------------------------------

    def _record(self, name: str, entry: dict[str, Any] | None) -> None:
        """Update index ``name``'s entry of ``index-state.json`` (None removes it)."""
        with self._state_lock:
            state = dict(self._state)
            if entry is None:
                state.pop(name, None)
            else:
                state[name] = {**state.get(name, {}), **entry}
            self._state = state
            _write_state(self.path, state)

    def _record_stats(self) -> None:
        """Record every open index's counts (what :meth:`describe` reports for it), in one
        write of ``index-state.json``."""
        counted: dict[str, dict[str, Any]] = {}
        for name, index in list(self.indexes.items()):
            try:
                stats = stats_dict(index)
            except Exception:  # noqa: BLE001 - only a report; the index reports it when open
                continue
            entry = {k: v for k, v in stats.items() if k in _RECORDED and v is not None}
            entry.update(applied_seq=index.applied_seq, counted_at_seq=index.applied_seq)
            if name in self.sync_errors:
                entry["error"] = self.sync_errors[name]
            counted[name] = entry
        with self._state_lock:
            self._state = {**self._state, **counted}
            _write_state(self.path, self._state)

    @classmethod
    def describe(cls, path: Path) -> dict[str, Any]:
        """:meth:`stats` of a collection without opening it: the store's counts and what each
        index last recorded (its sequence number, and its counts as of the last close). Takes
        no lock, starts no JVM and loads no model, so it works while another process (a
        server) has the collection open. Memory is reported only by :meth:`stats` of an open
        collection."""
        path = cls._check_dir(path)
        manifest = cls._complete_manifest(path)
        seq, documents = DocStore.peek(path / "docs.sqlite")
        state = _read_state(path)
        return _stats_record(path, documents, seq, None, {
            name: {"spec": spec, **_recorded_stats(path, name, state.get(name), seq)}
            for name, spec in manifest["indexes"].items()})

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Apply what is left (background appliers stop after it), close every index and the
        store. :attr:`unapplied` then says which indexes were left behind the store (an index
        whose writes failed), by how many operations: the next open replays them."""
        errors: list[Exception] = []
        if self.store is not None:
            try:
                if self._background is not None:
                    self.stop_background_sync()  # applies what is left
                else:
                    self.sync(raise_errors=False)
                self.unapplied = {name: h["lag"] for name, h in self.health().items()
                                  if h["lag"]}
                self._record_stats()
            except Exception as exc:  # noqa: BLE001 - still close everything
                errors.append(exc)
        for index in self.indexes.values():
            try:
                index.close()
            except Exception as exc:  # noqa: BLE001 - close the rest, then report
                errors.append(exc)
        self.indexes = {}
        if self.store is not None:
            self.store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if errors:
            raise errors[0]

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_RECORDED = ("type", "documents", "max_doc", "vectors", "dim", "terms")
"""Fields of an index's ``stats()`` that ``index-state.json`` keeps."""


def ingest_batches(records: Iterator[tuple[int, Document]],
                   write: Callable[[list[Document], dict[str, str] | None], Any], seq: int,
                   source_key: str | None = None, batch_size: int = 1000,
                   on_batch: Callable[[int], None] | None = None,
                   skip_lines: int = 0) -> IngestReport:
    """The import loop of :meth:`Collection.ingest` (and of a sharded collection's): records
    in batches of ``batch_size``, each written by ``write(batch, meta)`` (a result with
    ``upserted``, ``unchanged``, ``seq``) with ``meta`` = the last line it holds under
    ``source_key``; ``seq`` is the collection's before the import."""
    read = upserted = unchanged = 0
    empty: list[str] = []
    batch: list[Document] = []
    last_line = skip_lines

    def flush() -> None:
        nonlocal upserted, unchanged, seq
        meta = {source_key: json.dumps({"line": last_line})} if source_key else None
        result = write(batch, meta)
        upserted += result.upserted
        unchanged += result.unchanged
        seq = result.seq
        if on_batch:
            on_batch(len(batch))
        batch.clear()

    for line, doc in records:
        read += 1
        last_line = line
        if not doc.title.strip() and not doc.text.strip():
            empty.append(doc.doc_id)
        batch.append(doc)
        if len(batch) >= batch_size:
            flush()
    if batch or source_key:
        flush()
    return IngestReport(read, skip_lines, upserted, unchanged, tuple(empty), seq)


def stats_dict(index: Index) -> dict[str, Any]:
    """``index.stats()`` (an :class:`~genseek.types.IndexStats`) in its JSON form."""
    stats = index.stats()
    if isinstance(stats, IndexStats):
        return stats.to_dict()
    if isinstance(stats, dict):  # an index type written before IndexStats
        return dict(stats)
    raise TypeError(f"{type(index).__name__}.stats() returned {type(stats).__name__}, "
                    "not IndexStats")


def _read_state(path: Path) -> dict[str, dict[str, Any]]:
    """``index-state.json`` of a collection folder; {} when it is missing or unreadable (it
    is a report, never the source of truth: each index commits its own sequence number)."""
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(state, dict):
        return {}
    return {str(k): v for k, v in state.items() if isinstance(v, dict)}


def _write_state(path: Path, state: dict[str, dict[str, Any]]) -> None:
    """Replace ``index-state.json`` atomically. Not fsynced: the file is a report written
    after every catch-up, and a crash can only leave it behind what the indexes committed
    (their own commits carry the truth)."""
    tmp = path / f".{STATE}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        tmp.write_text(json.dumps(state, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path / STATE)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.warning("collection %s: cannot record index state: %s", path, exc)


def _recorded_stats(path: Path, name: str, entry: dict[str, Any] | None,
                    seq: int) -> dict[str, Any]:
    """The stats of a closed index from its recorded state: ``state`` is ``ready`` or
    ``catching_up`` by its recorded sequence number (``unknown`` if none was recorded)."""
    from genseek.protocols import dir_bytes

    folder = path / "indexes" / name
    out: dict[str, Any] = {"disk_bytes": dir_bytes(folder) if folder.is_dir() else None,
                           "memory_bytes": None, "open": False}
    entry = entry or {}
    applied = entry.get("applied_seq")
    applied = applied if isinstance(applied, int) else None
    out.update({k: v for k, v in entry.items() if k in _RECORDED or k == "counted_at_seq"})
    lag = None if applied is None else max(0, seq - applied)
    if entry.get("error"):  # it could not open, or apply writes, when it was last used
        state, error = "failed", entry["error"]
    elif applied is None:
        state, error = "unknown", "nothing recorded yet: 'genseek sync' opens it and records it"
    else:
        state, error = ("catching_up" if lag else "ready"), None
    return {**out, "applied_seq": applied, "state": state, "lag": lag, "error": error}


def _stats_record(path: Path, documents: int, seq: int, rss: int | None,
                  indexes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The stats of a collection folder (:meth:`Collection.stats`, :meth:`Collection.describe`)."""
    from genseek.protocols import dir_bytes, file_bytes

    return {"path": str(path), "documents": documents, "seq": seq,
            "disk_bytes": dir_bytes(path), "store_bytes": file_bytes(path.glob("docs.sqlite*")),
            "process_rss_bytes": rss, "indexes": indexes}


def _payloads(index: Index, encoded: Encoded | None) -> Mapping[str, Any] | None:
    """The payloads in ``encoded`` for ``index``'s document work, or None (apply as usual)."""
    if not encoded or not isinstance(index, EncodesDocuments):
        return None
    work = index.document_work()
    return encoded.get(work.key) if work is not None else None


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an index failure, on one line."""
    text = " ".join(str(exc).split())[:500]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
