"""SPFresh maintenance of a :class:`~genseek.indexers.spann.engine.SpannEngine`: splits, garbage
collection and the background rebalancer thread.

Updates (SPFresh): an insert is appended to the postings of its RNG-selected heads; a posting
longer than twice ``posting_cap`` (the build-time cap) is split by 2-means into two new heads,
and only vectors near the boundary (the split posting's vectors whose old head was closer than
both new ones, and vectors of neighbouring postings now closer to a new head than to their own)
are reassigned, by bumping their version and appending them anew. A delete clears the slot in
the version map. Oversized postings are queued as appends make them so; :func:`rebalance_step`
does one split or one slice of a garbage-collection sweep (rewriting postings that are mostly
stale), and :func:`rebalance` does everything at once.

Background rebalancing (SPFresh's local rebuilder, :class:`Rebalancer`): an update batch only
appends and queues; a daemon thread owned by the index takes the index lock for one step at a
time, so searches are served between steps and always see a consistent engine (the version map
hides deleted and moved entries, replicas are deduplicated). Saves happen under the same lock,
so ``state.npz`` never describes half a split; a process killed in the middle of one reloads
the last saved state, whose regions were never overwritten, and catches up from
``vectors.sqlite``; the queue itself is not saved but rebuilt on load from the posting lengths.
A failure inside the thread stops it; it is logged, counted (``errors``, ``last_error``) and
makes the index refuse to commit until it is reopened, which recovers it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genseek.errors import GenseekError
from genseek.kernels import spann as K

if TYPE_CHECKING:
    from genseek.indexers.spann.engine import SpannEngine

BACKPRESSURE = 4  # a posting this many times the split threshold is split by the writer
IDLE_WAIT_S = 1.0  # an idle rebalancer re-checks for work at least this often

log = logging.getLogger("genseek.indexers.spann")


# -- splits and garbage collection ----------------------------------------------------------------


def rebalance(eng: SpannEngine, only_oversized: bool = False, max_rounds: int = 64,
              limit: int | None = None) -> int:
    """Split every posting holding more than ``limit`` entries (default ``2 * posting_cap``),
    at once; with ``only_oversized`` false, garbage-collect every posting too. Returns the
    splits made."""
    cap = eng._split_cap() if limit is None else max(int(limit), eng._split_cap())
    splits = 0
    for _ in range(max_rounds):
        live = np.nonzero(eng.head_alive[:eng.nheads])[0]
        over = live[eng.post_cnt[live] > cap]
        if not only_oversized:
            for h in live[eng.post_cnt[live] > 0]:
                gc_posting(eng, int(h))
        if len(over) == 0:
            break
        for h in over:
            if eng.head_alive[h] and eng.post_cnt[h] > cap:
                splits += eng._split(int(h))
    if not only_oversized:  # every posting was just swept
        eng._sweep, eng._sweep_stale, eng._stale = -1, 0, 0
    return splits


def gc_posting(eng: SpannEngine, head: int) -> bool:
    """Rewrite one posting without its stale entries when they are more than half of it and
    the rest fits under the split threshold (copy on write); True if rewritten."""
    recs = eng._read_posting(head)
    ok = eng._valid(recs)
    valid = int(ok.sum())
    if valid * 2 < len(recs) and valid <= eng._split_cap():
        eng._write_region(head, recs[ok].copy())
        eng.counters["gc_rewrites"] += 1
        return True
    return False


def gc_due(eng: SpannEngine) -> bool:
    """A garbage-collection sweep is due: stale slots reach a quarter of the live ones."""
    return eng._stale > 0 and 4 * eng._stale >= max(eng.count, 1)


def has_pending_work(eng: SpannEngine) -> bool:
    """Whether :func:`rebalance_step` has anything to do."""
    return bool(eng._queue) or eng._sweep >= 0 or gc_due(eng)


def pending(eng: SpannEngine) -> dict[str, Any]:
    """``queued`` oversized postings, whether a sweep is running or due (``gc_pending``), and
    the ``stale_estimate`` of slots."""
    return {"queued": len(eng._queue), "gc_pending": eng._sweep >= 0 or gc_due(eng),
            "stale_estimate": eng._stale + (eng._sweep_stale if eng._sweep >= 0 else 0)}


def rebalance_step(eng: SpannEngine, gc_batch: int = 32) -> bool:
    """Do one small, bounded unit of rebalancing; False when there was nothing to do.

    In order of priority: split the oldest queued oversized posting (2-means, then LIRE
    reassignment near the boundary, which may queue more postings), or advance a
    garbage-collection sweep by up to ``gc_batch`` postings (a sweep starts once the stale
    estimate reaches a quarter of the live vectors). Each step leaves the engine consistent,
    so searches and saves may run between any two steps.
    """
    if eng.heads is None:
        return False
    cap = eng._split_cap()
    while eng._queue:
        head = next(iter(eng._queue))
        del eng._queue[head]
        if eng.head_alive[head] and eng.post_cnt[head] > cap:
            eng._split(head)
            return True
    if eng._sweep < 0 and gc_due(eng):
        eng._sweep, eng._sweep_stale, eng._stale = 0, eng._stale, 0
    if eng._sweep < 0:
        return False
    end = min(eng._sweep + max(int(gc_batch), 1), eng.nheads)
    for h in range(eng._sweep, end):
        if eng.head_alive[h] and eng.post_cnt[h] > 0:
            gc_posting(eng, h)
    if end < eng.nheads:
        eng._sweep = end
    else:
        eng._sweep, eng._sweep_stale = -1, 0
    return True


def split(eng: SpannEngine, head: int) -> int:
    """2-means split of one posting, then LIRE reassignment near the boundary; 1 if split
    (0 when only stale entries made it long: it is garbage-collected instead)."""
    recs = eng._read_posting(head)
    recs = recs[eng._valid(recs)]
    _, first = np.unique(recs["slot"], return_index=True)
    recs = recs[np.sort(first)].copy()
    if len(recs) <= eng._split_cap():
        eng._write_region(head, recs)
        return 0
    slots = recs["slot"].astype(np.int64)
    x = eng._vectors(slots)
    old_centre = eng._head_vectors(np.array([head]))[0]
    cents, lab = K.two_means(x, seed=int(eng.params["seed"]) + head)
    # 1. two new heads replace the old one
    new = eng._new_head_ids(2)
    assert eng.heads is not None
    eng.heads.add(cents)
    for j in range(2):
        eng._write_region(int(new[j]), recs[lab == j])
    eng.head_alive[head] = False
    eng.post_cnt[head] = 0
    eng._queue.pop(head, None)
    eng._dead_heads += 1
    eng.counters["splits"] += 1
    # 2. LIRE: the split posting's vectors for which the old head was closer
    moved = [slots[K.split_reassign_mask(x, old_centre, cents)]]
    # 3. ... and neighbours' vectors that are now closer to a new head than their own
    n_nb = int(eng.params["reassign_neighbors"])
    if n_nb:
        _, nb = eng._search_heads(old_centre[None, :], n_nb + 2)
        for h in nb[0]:
            if h < 0 or h in new:
                continue
            nrec = eng._read_posting(int(h))
            nrec = nrec[eng._valid(nrec)]
            if not len(nrec):
                continue
            ns = nrec["slot"].astype(np.int64)
            nx = eng._vectors(ns)
            own = ((nx - eng._head_vectors(np.array([h]))[0]) ** 2).sum(axis=1)
            moved.append(ns[K.neighbor_reassign_mask(nx, own, cents)])
    redo = np.unique(np.concatenate(moved))
    if len(redo):
        # a new version invalidates every old replica; then place the vector anew
        eng.versions[redo] = (eng.versions[redo].astype(np.int64) + 1) % 256
        eng._stale += len(redo)
        eng._place(redo, eng._vectors(redo))
        eng.counters["reassigned"] += len(redo)
    return 1


# -- the background rebalancer -------------------------------------------------------------------


class Rebalancer:
    """One index's rebalancing: the background thread (``background``) or nothing (``sync``,
    ``off``), back-pressure on writers, and the failure record.

    The thread runs :func:`rebalance_step` on ``engine()`` under ``lock`` (the index's), one
    small step per hold, sleeping ``pause`` seconds between steps so searches and writes get
    the lock in between. :meth:`stop` lets the current step finish and joins the thread
    (queued work stays for the next open).
    """

    def __init__(self, path: Path, mode: str, pause: float, lock: threading.RLock,
                 engine: Callable[[], SpannEngine]):
        self.path, self.mode, self.pause = path, mode, float(pause)
        self._lock, self._engine = lock, engine
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts = {"steps": 0, "background_splits": 0, "inline_splits": 0, "errors": 0}
        self.last_error: str | None = None
        self.failed = False

    def start(self) -> None:
        """Start the thread (background mode only)."""
        if self.mode == "background":
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"spann-rebalance:{self.path}")
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """New work may be queued: look now."""
        self._wake.set()

    def backpressure(self, eng: SpannEngine) -> None:
        """In background mode, split at once any posting grown past ``BACKPRESSURE`` times
        the split threshold, so postings stay bounded when the thread falls behind."""
        if self.mode == "background" and eng.heads is not None:
            before = eng.counters["splits"]
            eng.rebalance(only_oversized=True, limit=BACKPRESSURE * eng._split_cap())
            self.counts["inline_splits"] += eng.counters["splits"] - before

    def _loop(self) -> None:
        """One :func:`rebalance_step` per lock hold. An exception stops the thread after
        recording it, logging it with its traceback and marking the index failed; this
        happens under the lock, so no save can see the interrupted step."""
        while not self._stop.is_set():
            self._wake.clear()  # before looking, so a later wake-up is never lost
            with self._lock:
                if self._stop.is_set():
                    return
                eng = self._engine()
                before = eng.counters["splits"]
                try:
                    worked = eng.rebalance_step()
                except Exception as exc:  # noqa: BLE001 - recorded, logged and surfaced
                    self.failed = True
                    self.counts["errors"] += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.error("spann index at %s: the background rebalancer failed and "
                              "stopped: %s", self.path, self.last_error, exc_info=True)
                    return
                if worked:
                    self.counts["steps"] += 1
                    self.counts["background_splits"] += eng.counters["splits"] - before
            if not worked:
                self._wake.wait(IDLE_WAIT_S)
            elif self.pause > 0:
                self._stop.wait(self.pause)
            else:
                time.sleep(0)  # let a waiting search or write take the lock

    def stop(self) -> None:
        """Stop the thread after its current step and join it."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def failure(self) -> GenseekError:
        return GenseekError(f"spann index at {self.path}: the background rebalancer failed "
                            f"({self.last_error}); close and reopen the index, which recovers "
                            "from its last saved state and vectors.sqlite")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no rebalancing work is pending; False on timeout, or at once when work
        is pending but no thread runs. Raises :meth:`failure` once the thread has failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self.failed:
                    raise self.failure()
                if not self._engine().has_pending_work():
                    return True
            if not self.running or (deadline is not None and time.monotonic() >= deadline):
                return False
            self._wake.set()
            time.sleep(0.005)

    def stats(self, eng: SpannEngine) -> dict[str, Any]:
        """``mode``, whether the thread runs, pending work, splits and the counters."""
        return {"mode": self.mode, "running": self.running, **eng.pending(),
                "splits": eng.counters["splits"], **self.counts, "last_error": self.last_error}
