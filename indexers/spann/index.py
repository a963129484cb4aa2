""":class:`SpannIndex`, the ``spann`` collection index type: MiniLM vectors in SQLite, searched
through a :class:`~genseek.indexers.spann.engine.SpannEngine` kept under ``engine/``.

Like ``dense``, each document version is encoded once into ``vectors.sqlite`` (the source of
truth, committed with the sequence number); the engine is caught up from it on open, so
nothing is ever re-encoded, and saved at a commit at most every ``save_every`` seconds (and on
close). Rebalancing (:mod:`.maintenance`) follows ``rebalance``:

- ``background`` (default): a per-index thread splits and garbage-collects while updates only
  append (a writer still splits at once a posting grown past ``BACKPRESSURE`` = 4 times the
  split threshold);
- ``sync``: every update batch splits oversized postings before returning;
- ``off``: only an explicit :meth:`SpannIndex.rebalance` does.

Parameters: :class:`genseek.params.SpannParams`; per search ``nprobe``, ``eps``, ``rerank``
(:class:`genseek.params.SpannSearchParams`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genseek.docwork import DocumentWork, Payload, payloads_for, stack
from genseek.encoders import TextEncoder, shared_encoder
from genseek.errors import GenseekError
from genseek.indexers._vectorindex import StoredIndex
from genseek.indexers.labelstore import VectorStore
from genseek.indexers.spann.engine import ENGINE_PARAMS, SpannEngine
from genseek.indexers.spann.format import check_vectors
from genseek.indexers.spann.maintenance import Rebalancer, log
from genseek.params import SpannParams, SpannSearchParams
from genseek.types import ChangeSet, Document, Hit, IndexStats


class SpannIndex(StoredIndex[np.ndarray]):
    """A collection index: MiniLM vectors in SQLite, searched through a :class:`SpannEngine`.

    Scores are inner products (cosine, as vectors are L2-normalised): ``1 - d2 / 2``.
    An empty collection returns no hits, and ``k`` beyond the collection returns all.
    Query vectors (:class:`~genseek.protocols.VectorSearch`) are ``float32 [n, dim]``.

    With ``rebalance="background"`` the index owns one daemon thread (started on open,
    stopped and joined by :meth:`close`; :class:`Rebalancer`) that runs
    :meth:`SpannEngine.rebalance_step` under the index lock, one small step at a time. Every
    access to the engine holds that lock, so a search or a save sees the engine between two
    steps, never inside one. A failure of the thread makes every later :meth:`commit` raise
    without committing (the engine is never saved again) until the index is reopened.
    """

    Params = SpannParams
    SearchParams = SpannSearchParams

    def __init__(self, path: Path, params: dict[str, Any], encoder: TextEncoder | None = None):
        self._init_spec(path, params)
        mode = str(self.params["rebalance"])
        engine_params = {**{k: self.params[k] for k in ENGINE_PARAMS if k in self.params},
                         "auto_split": mode == "sync"}
        SpannEngine(self.path / "engine", 1, engine_params)  # validate before any work
        self._own_encoder = encoder is None  # else document_work() cannot reproduce it
        self.encoder = encoder or shared_encoder(str(self.params["model"]),
                                                 self.params["max_length"])
        self.dim = self.encoder.dim
        self._store = VectorStore(self.path / "vectors.sqlite", self.dim)
        stored_dim = self._store.meta("dim")
        if stored_dim is None:
            self._store.write_meta({"dim": str(self.dim)})
        elif int(stored_dim) != self.dim:
            self._store.close()
            raise GenseekError(f"spann index at {self.path} holds {stored_dim}-d vectors; model "
                               f"{self.params['model']!r} makes {self.dim}-d vectors")
        self._labels: dict[int, str] = self._store.labels()
        self._init_state()
        self._rebalancer = Rebalancer(self.path, mode, float(self.params["rebalance_pause"]),
                                      self._lock, lambda: self._engine)
        self._engine = self._open_engine(engine_params)
        self._rebalancer.start()

    def _open_engine(self, engine_params: dict[str, Any]) -> SpannEngine:
        """Load the saved engine and catch it up with ``vectors.sqlite`` (or build one).

        Whatever a crash interrupted (a background split included) is lost with the
        process: the saved state only names regions and slots written before it, so it
        loads as saved, and the catch-up adds and drops what the source of truth gained
        and lost since. Oversized postings are queued again by :meth:`SpannEngine.load`.
        """
        folder = self.path / "engine"
        if (folder / "state.npz").exists():
            eng = SpannEngine.load(folder, bool(self.params["verify"]), engine_params)
            # catch up with the source of truth: drop what it lost, add what it gained
            have = eng.live_labels()
            want = np.fromiter(self._labels, np.int64, len(self._labels))
            eng.delete(np.setdiff1d(have, want), missing_ok=True)
            missing = np.setdiff1d(want, have)
            if len(missing):
                ids, vecs = self._store.vectors(missing.tolist())
                eng.insert(vecs, ids)
                self._rebalancer.backpressure(eng)
            return eng
        eng = SpannEngine(folder, self.dim, engine_params)
        if self._labels:
            ids, vecs = self._store.vectors()
            eng.build(vecs, ids)
        return eng

    # -- rebalancing ----------------------------------------------------------------------

    def wait_rebalanced(self, timeout: float | None = None) -> bool:
        """Block until no rebalancing work is pending; False on timeout, or at once when
        work is pending but no rebalancer runs (``sync``/``off``: call :meth:`rebalance`).

        Raises :class:`GenseekError` if the background rebalancer has failed.
        """
        return self._rebalancer.wait(timeout)

    def rebalance(self) -> int:
        """Explicit rebalancing: split oversized postings and garbage-collect stale entries."""
        with self._lock:
            return self._engine.rebalance()

    # -- writes ---------------------------------------------------------------------------

    def _work(self) -> DocumentWork:
        return DocumentWork("text", str(self.params["model"]), self.params["max_length"],
                            int(self.params["batch_size"]))

    def document_work(self) -> DocumentWork | None:
        """The encoder's work (:class:`~genseek.protocols.EncodesDocuments`): the same
        ``text`` vectors as ``dense`` on the same model; None with an encoder object handed
        in."""
        return self._work() if self._own_encoder else None

    def apply(self, changes: ChangeSet) -> None:
        self.apply_encoded(changes, {})

    def apply_encoded(self, changes: ChangeSet, encoded: Mapping[str, Payload]) -> None:
        """:meth:`apply`, taking the vectors of some upserts from ``encoded`` (``doc_id ->
        float32 [dim]``); the others are encoded here."""
        work = self._work()

        def vectors(docs: list[Document]) -> np.ndarray:
            vecs = stack(payloads_for(work, lambda: self.encoder, docs, encoded), self.dim,
                         "spann")
            return check_vectors(vecs, self.dim, "encoded vectors")

        staged = self._store.stage(changes, self._labels, vectors)
        if staged is None:
            return
        gone, new_docs, vecs = staged
        with self._lock:
            if gone:
                self._engine.delete(np.asarray(gone, np.int64), missing_ok=True)
                for v in gone:
                    del self._labels[v]
            if new_docs:
                labels = np.asarray([d.version for d in new_docs], np.int64)
                self._engine.insert(vecs, labels)
                for d in new_docs:
                    self._labels[d.version] = d.doc_id
                self._rebalancer.backpressure(self._engine)
        self._rebalancer.wake()

    def commit(self, seq: int) -> None:
        """Commit ``seq`` with the applied changes; saves the engine every ``save_every`` s.

        Raises :class:`GenseekError`, committing nothing, once the background rebalancer
        has failed: the engine in memory may be inconsistent, so it is never saved again;
        closing and reopening the index recovers it (saved state + ``vectors.sqlite``).
        """
        if self._rebalancer.failed:
            raise self._rebalancer.failure()
        self._commit_store(seq)
        self._save_if_due()

    def _save(self) -> None:
        """Save the engine under the lock, so between two rebalancing steps."""
        with self._lock:
            if self._rebalancer.failed:
                log.warning("spann index at %s: not saving the engine after a rebalancer "
                            "failure; the next open recovers it", self.path)
                return
            self._engine.save({"seq": self.applied_seq})
            self._saved(self.applied_seq)

    # -- reads ----------------------------------------------------------------------------

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Query vectors ``[len(queries), dim]``."""
        return self.encoder.encode(list(queries), int(self.params["batch_size"]))

    def search_vectors(self, vectors: np.ndarray, k: int,
                       params: SpannSearchParams | None = None) -> list[list[Hit]]:
        """Top-``k`` per query vector of ``vectors [n, dim]``; ``nprobe``, ``eps`` and
        ``rerank`` in ``params`` override the spec for this call."""
        overrides = SpannSearchParams.overrides(params)
        with self._lock:
            n = self._engine.count if self._engine.heads is not None else 0
            if n == 0 or k <= 0:
                return [[] for _ in range(len(vectors))]
            if k >= n:  # the whole collection was asked for: probe every posting
                overrides = {"nprobe": self._engine.nheads, "eps": 1e9, "rerank": n}
            d2, labels = self._engine.search(vectors, min(k, n), **overrides)
            held = self._labels
            return [[Hit(held[int(lab)], 1.0 - float(d) / 2.0)
                     for d, lab in zip(rd, rl, strict=True) if lab >= 0 and int(lab) in held]
                    for rd, rl in zip(d2, labels, strict=True)]

    def stats(self) -> IndexStats:
        """Sizes, the engine's statistics (``engine``) and ``rebalance``: the mode, whether the
        thread runs, pending work (``queued`` oversized postings, ``gc_pending``,
        ``stale_estimate``), ``steps`` and ``background_splits`` done by the thread,
        ``inline_splits`` forced by back-pressure, ``errors`` and ``last_error``."""
        with self._lock:
            eng = self._engine.stats() if self._engine.heads is not None else {}
            return self._index_stats(len(self._labels), eng.get("memory_bytes", 0),
                                     dim=self.dim, engine=eng,
                                     rebalance=self._rebalancer.stats(self._engine))

    def close(self) -> None:
        """Stop and join the rebalancer (its current step completes; queued work is left
        for the next open), then save the engine unless a transaction is open or the
        rebalancer failed, and close the files."""
        self._rebalancer.stop()
        super().close()
        self._engine.close()
