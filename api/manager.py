"""The collections an app serves, and the models it loads once.

:class:`CollectionManager` opens collections lazily under one root folder. A
collection's folder is always ``root/NAME`` with NAME checked by
:func:`genseek.spec.validate_name`, so no request can name any other path. Open
collections stay open with a background applier (``start_background_sync``);
every use holds a reference, so dropping a collection or shutting down waits for
the requests using it and never closes a collection under a running search.

Everything here is blocking (file system, Lucene, faiss, torch): the app calls it
from worker threads, never on the event loop.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from genseek.api.settings import Settings
from genseek.collection import Collection
from genseek.errors import (
    CollectionLocked,
    ConflictError,
    GenseekError,
    NotFoundError,
    UnavailableError,
)
from genseek.sharded import ShardedCollection, exists, open_any
from genseek.spec import IndexSpec, validate_name

log = logging.getLogger("genseek.api")


@dataclass(eq=False)
class _Handle:
    name: str
    collection: Collection | ShardedCollection | None = None
    users: int = 0
    closing: bool = False
    open_lock: threading.Lock = field(default_factory=threading.Lock)


class CollectionManager:
    """Open collections of one root folder, by name."""

    def __init__(self, root: Path, drain_timeout: float = 30.0):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.drain_timeout = drain_timeout
        self._cond = threading.Condition(threading.Lock())
        self._handles: dict[str, _Handle] = {}
        self._closed = False
        self.unapplied: dict[str, dict[str, int]] = {}  # after close: collection -> index -> ops

    @property
    def closed(self) -> bool:
        """Shutting down (or shut down): no collection opens any more."""
        return self._closed

    # -- names and paths ---------------------------------------------------------------

    def path(self, name: str) -> Path:
        """``root/name``, after checking that ``name`` is a plain safe name."""
        validate_name(name, "collection")
        path = self.root / name
        if path.parent != self.root:  # pragma: no cover - validate_name rules it out
            raise GenseekError(f"bad collection name {name!r}")
        return path

    def names(self) -> list[str]:
        """Every collection in the root folder (open or not), sorted."""
        with self._cond:
            dropping = {n for n, h in self._handles.items() if h.closing}
        out = []
        for child in self.root.iterdir():
            try:
                validate_name(child.name)
            except GenseekError:
                continue
            if child.name not in dropping and not child.is_symlink() and exists(child):
                out.append(child.name)
        return sorted(out)

    # -- using a collection -------------------------------------------------------------

    def _handle_locked(self, name: str, busy: type[Exception]) -> _Handle:
        """The live handle for ``name`` (made if absent); the caller holds ``_cond``."""
        if self._closed:
            raise UnavailableError("the server is shutting down")
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = _Handle(name)
        if handle.closing:
            raise busy(f"collection {name!r} is being dropped")
        return handle

    def _reserve(self, name: str, busy: type[Exception] = NotFoundError) -> _Handle:
        with self._cond:
            handle = self._handle_locked(name, busy)
            handle.users += 1
            return handle

    def _release(self, handle: _Handle) -> None:
        with self._cond:
            handle.users -= 1
            if handle.users == 0:
                if handle.collection is None and not handle.closing \
                        and self._handles.get(handle.name) is handle:
                    del self._handles[handle.name]  # never opened (e.g. not found)
                self._cond.notify_all()

    def _open(self, handle: _Handle, path: Path) -> None:
        with handle.open_lock:
            if handle.collection is not None:
                return
            if not exists(path) or path.is_symlink():
                raise NotFoundError(f"no collection named {handle.name!r}")
            try:
                collection = open_any(path)
            except CollectionLocked:
                raise CollectionLocked(f"collection {handle.name!r} is open in another process "
                                       "(e.g. the genseek CLI); try again when it has finished") \
                    from None
            except GenseekError as exc:
                raise UnavailableError(f"collection {handle.name!r} cannot be opened: "
                                       f"{str(exc).replace(str(self.root), '<root>')}") from None
            collection.start_background_sync()
            handle.collection = collection
            log.info("opened collection %s", handle.name)

    @contextmanager
    def use(self, name: str) -> Iterator[Collection | ShardedCollection]:
        """The open collection ``name`` (opened now if needed); 404 if there is none."""
        path = self.path(name)
        handle = self._reserve(name)
        try:
            self._open(handle, path)
            assert handle.collection is not None
            yield handle.collection
        finally:
            self._release(handle)

    def open_collections(self) -> Iterator[tuple[str, Collection | ShardedCollection]]:
        """Each collection open now, held for the duration of its step (never opens one)."""
        with self._cond:
            handles = [h for h in self._handles.values()
                       if h.collection is not None and not h.closing]
            for h in handles:
                h.users += 1
        try:
            for h in handles:
                if h.collection is not None:
                    yield h.name, h.collection
        finally:
            for h in handles:
                self._release(h)

    # -- creating and dropping ------------------------------------------------------------

    def create(self, name: str, indexes: dict[str, str], shards: int | None = None) -> None:
        path = self.path(name)
        specs = {validate_name(n): IndexSpec.parse(s) for n, s in indexes.items()}
        handle = self._reserve(name, busy=ConflictError)
        try:
            with handle.open_lock:
                if handle.collection is not None or exists(path):
                    raise ConflictError(f"collection {name!r} already exists")
                resumable = Collection.interrupted(path) is not None  # create finishes it
                if path.is_symlink() or path.exists() and not resumable and (
                        not path.is_dir() or any(p.name != "collection.lock"
                                                 for p in path.iterdir())):
                    raise ConflictError(f"{name!r} exists in the collections folder and is not a "
                                   "collection; choose another name")
                if shards is not None:
                    if path.exists():
                        shutil.rmtree(path)  # an empty folder or an interrupted creation
                    collection = ShardedCollection.create(path, {n: str(s) for n, s in
                                                                 specs.items()}, shards)
                else:
                    collection = Collection.create(path, specs)
                collection.start_background_sync()
                handle.collection = collection
                log.info("created collection %s with indexes %s", name,
                         {n: str(s) for n, s in specs.items()})
        finally:
            self._release(handle)

    def drop(self, name: str) -> None:
        """Close ``name`` once its current requests finish, and delete its folder."""
        path = self.path(name)
        with self._cond:
            handle = self._handle_locked(name, NotFoundError)
            handle.closing = True
            deadline = time.monotonic() + self.drain_timeout
            while handle.users > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    handle.closing = False
                    raise ConflictError(f"collection {name!r} is busy; try dropping it again")
                self._cond.wait(left)
        try:
            if handle.collection is not None:
                collection, handle.collection = handle.collection, None
                try:
                    collection.close()
                except Exception:  # noqa: BLE001 - it is being deleted anyway
                    log.exception("closing collection %s before dropping it", name)
                shutil.rmtree(path)
            else:
                if not exists(path) or path.is_symlink():
                    raise NotFoundError(f"no collection named {name!r}")
                fd = os.open(path / "collection.lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        raise ConflictError(f"collection {name!r} is open in another process") \
                            from None
                    shutil.rmtree(path)
                finally:
                    os.close(fd)
            log.info("dropped collection %s", name)
        finally:
            with self._cond:
                handle.closing = False
                if self._handles.get(name) is handle and handle.collection is None:
                    del self._handles[name]
                self._cond.notify_all()

    # -- starting and shutting down -----------------------------------------------------

    def reopen(self) -> None:
        """Serve again after :meth:`close` (an app started a second time, as in tests)."""
        with self._cond:
            self._closed = False

    def close(self) -> None:
        """Wait (bounded) for running requests, then close every collection.

        Closing stops each background applier after it has applied every
        acknowledged write, so a restart finds the indexes current.
        """
        with self._cond:
            self._closed = True
            deadline = time.monotonic() + self.drain_timeout
            while any(h.users for h in self._handles.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("closing collections while requests still use them")
                    break
                self._cond.wait(left)
            handles = list(self._handles.values())
            self._handles.clear()
        self.unapplied = {}
        for handle in handles:
            if handle.collection is None:
                continue
            collection = handle.collection
            try:
                collection.close()
                log.info("closed collection %s", handle.name)
            except Exception:  # noqa: BLE001 - close the others
                log.exception("closing collection %s", handle.name)
            if collection.unapplied:
                self.unapplied[handle.name] = dict(collection.unapplied)
                log.warning("collection %s closed with writes not yet applied: %s",
                            handle.name, collection.unapplied)
            handle.collection = None


class Preloader:
    """Opens every collection, then loads the models of the /v1 routes and rerankers, in one
    background thread started with the server (``Settings.preload``), so the first requests
    do not wait for them. Failures are logged and reported by :meth:`status` (a model whose
    package is missing is simply not preloaded); nothing here stops the server."""

    def __init__(self, manager: CollectionManager, hub: ModelHub, what: str):
        self.manager, self.hub, self.what = manager, hub, what
        self.state = "off" if what == "none" else "pending"
        self.failed: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.what == "none" or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="genseek-preload", daemon=True)
        self._thread.start()

    def _steps(self) -> Iterator[tuple[str, Callable[[], object]]]:
        for name in self.manager.names():
            yield f"collection {name}", functools.partial(self._open, name)
        if self.what == "all":
            yield "embeddings", self.hub.encoder
            yield "sparse embeddings", self.hub.sparse
            for name in self.hub.reranker_names():
                yield f"reranker {name}", functools.partial(self.hub.reranker, name)

    def _open(self, name: str) -> None:
        with self.manager.use(name) as coll:
            for index, error in coll.unavailable().items():
                self.failed[f"collection {name}, index {index}"] = error

    def _run(self) -> None:
        self.state = "running"
        started = time.monotonic()
        for label, step in self._steps():
            if self._stop.is_set() or self.manager.closed:
                break
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - reported; the server serves anyway
                self.failed[label] = " ".join(str(exc).split())[:300] or type(exc).__name__
                log.warning("preload: %s not loaded: %s", label, self.failed[label])
        self.state = "done"
        log.info("preload finished in %.1fs (%d failed)", time.monotonic() - started,
                 len(self.failed))

    def status(self) -> dict[str, object]:
        return {"state": self.state, "failed": dict(self.failed)}

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop after its current step (a model load cannot be cut)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


class ModelHub:
    """The encoders and rerankers of one app, each loaded on first use, once per process
    (:data:`genseek.models.MODELS`: concurrent first requests wait for one load)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def encoder(self):
        from genseek.encoders import shared_encoder

        return shared_encoder(self.settings.embedding_model, None)

    def sparse(self):
        from genseek.encoders import shared_sparse_encoder

        return shared_sparse_encoder(self.settings.sparse_model)

    def reranker_names(self) -> list[str]:
        return list(self.settings.rerankers)

    def reranker(self, name: str):
        from genseek.models import MODELS
        from genseek.registry import load_reranker

        spec = self.settings.rerankers.get(name)
        if spec is None:
            known = ", ".join(self.settings.rerankers) or "none"
            raise NotFoundError(f"no reranker named {name!r} (rerankers: {known})")
        return MODELS.get(("reranker", str(spec)), lambda: load_reranker(spec))
