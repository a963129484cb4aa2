"""``dense``: faiss over a text encoder, with vectors stored so nothing is encoded twice.

Layout of the index folder::

    vectors.sqlite   label INTEGER PRIMARY KEY, doc_id, vec BLOB (float32) + meta(seq, dim, model)
    ann.faiss        the faiss structure, a cache of vectors.sqlite at ann.json's seq
    ann.json         {"seq": ..., "factory": ..., "trained": ...}

A vector's label is the document version (the store's sequence number), so a
replaced version is removed by label and a replay after a crash is a no-op.
``vectors.sqlite`` is the source of truth and is committed atomically with the
applied sequence number; the faiss file is rewritten at most every
``save_every`` seconds and on close (with the count of removed vectors it still
holds, filtered at search), and is rebuilt from the stored vectors (never
re-encoded) whenever it is missing, stale or unreadable.

Spec parameters: :class:`genseek.params.DenseParams` (``model`` all-MiniLM-L6-v2,
``factory`` a faiss index_factory string, ``Flat``, at most 65,536 IVF lists, ``metric`` ip |
l2, ``batch_size`` 32, ``max_length`` the model's, ``nprobe``, ``ef_search``, ``train_min``
1000 vectors before an index that must be trained is trained, exact search until then,
``rebuild_dead`` 0.2 the fraction of deleted-but-unremovable vectors that triggers a rebuild,
``save_every`` 300 seconds). Per search: ``nprobe``, ``ef_search``
(:class:`genseek.params.DenseSearchParams`).

Siblings (``repconc``) read the stored vectors through :meth:`DenseIndex.stored_vectors`
(:class:`genseek.protocols.VectorSource`), never the files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from genseek.docwork import DocumentWork, Payload, backend_option, payloads_for, stack
from genseek.encoders import TextEncoder, shared_encoder
from genseek.errors import GenseekError
from genseek.indexers._vectorindex import FaissCache, StoredIndex, encoder_id
from genseek.indexers.labelstore import VectorStore
from genseek.params import DenseParams, DenseSearchParams
from genseek.types import ChangeSet, Document, Hit, IndexStats


class DenseIndex(StoredIndex[np.ndarray]):
    """A faiss index over stored vectors. See the module docstring for the spec.

    A :class:`~genseek.protocols.VectorSearch` (query vectors ``float32 [n, dim]``) and a
    :class:`~genseek.protocols.VectorSource`: a sibling index (``repconc``) reads the stored
    vectors of the same encoder instead of encoding the documents again.
    """

    Params = DenseParams
    SearchParams = DenseSearchParams

    def __init__(self, path: Path, params: dict[str, Any], encoder: TextEncoder | None = None):
        self._init_spec(path, params)
        self._own_encoder = encoder is None  # else document_work() cannot reproduce it
        self.encoder = encoder or shared_encoder(str(self.params["model"]),
                                                 self.params["max_length"],
                                                 str(self.params["backend"]))
        self.dim = self.encoder.dim
        self._store = VectorStore(self.path / "vectors.sqlite", self.dim)
        self._check_meta()
        self._init_state()
        self._cache = FaissCache(self.path, "ann")
        self._labels: dict[int, str] = self._store.labels()
        self._dead = 0
        self._fallback = False
        self._train_failed_at = 0  # vectors at the last failed training attempt
        self._index = self._load_or_rebuild()

    # -- metadata -----------------------------------------------------------------------

    def _check_meta(self) -> None:
        stored_dim, stored_model = self._store.meta("dim"), self._store.meta("model")
        backend = str(self.params["backend"])
        if stored_dim is None:
            self._store.write_meta({"dim": str(self.dim), "model": str(self.params["model"]),
                                    "backend": backend})
            return
        stored_backend = self._store.meta("backend") or "torch"  # before backends: torch
        if stored_backend != backend:
            raise GenseekError(
                f"dense index at {self.path} holds vectors of the {stored_backend} encoder "
                f"backend; the spec asks for {backend} (rebuild the index to change it)")
        if int(stored_dim) != self.dim:
            raise GenseekError(
                f"dense index at {self.path} holds {stored_dim}-d vectors from model "
                f"{stored_model!r}; model {self.params['model']!r} makes {self.dim}-d vectors"
            )

    # -- the stored vectors, for siblings (VectorSource) ----------------------------------

    @property
    def vector_model(self) -> str:
        """The encoder of the stored vectors (:func:`encoder_id` of model and max_length)."""
        return encoder_id(str(self.params["model"]), self.params["max_length"],
                          str(self.params["backend"]))

    def stored_vectors(self, labels: Sequence[int]) -> dict[int, np.ndarray]:
        """``label -> float32 [dim]`` of the labels this index holds (committed or applied);
        safe beside this index's writer (the store's connection is taken in turn)."""
        with self._lock:
            held = [int(v) for v in labels if int(v) in self._labels]
        if not held:
            return {}
        with self._store_lock:
            if self._closed:
                return {}
            ids, vecs = self._store.vectors(held)
        return {int(label): vecs[i] for i, label in enumerate(ids.tolist())}

    # -- the faiss structure --------------------------------------------------------------

    def _metric(self) -> int:
        return faiss.METRIC_INNER_PRODUCT if self.params["metric"] == "ip" else faiss.METRIC_L2

    def _new_index(self, vectors: np.ndarray) -> faiss.Index:
        """An ID-mapped index for ``vectors`` (trained on them when it must be).

        Sets ``self._fallback`` when the factory needs more training vectors than
        there are: the index is then an exact Flat one until ``train_min`` is reached.
        """
        try:
            index = faiss.index_factory(self.dim, f"IDMap2,{self.params['factory']}",
                                        self._metric())
        except RuntimeError as exc:
            raise GenseekError(f"dense: bad faiss factory string {self.params['factory']!r}: "
                               f"{str(exc).split(': ')[-1].strip()[:200]}") from None
        self._fallback = False
        if not index.is_trained:
            if len(vectors) >= max(int(self.params["train_min"]), 2 * self._train_failed_at):
                # e.g. PQ8 needs >= 256 points: exact search until there are enough, and
                # no new attempt until the vectors have doubled.
                try:
                    index.train(vectors)
                except RuntimeError:
                    self._train_failed_at = len(vectors)
            if not index.is_trained:
                self._fallback = True
                return faiss.IndexIDMap2(faiss.IndexFlat(self.dim, self._metric()))
        self._apply_search_params(index)
        return index

    def _rebuild(self) -> faiss.Index:
        with self._store_lock:
            labels, vecs = self._store.vectors()
        index = self._new_index(vecs)
        if len(labels):
            index.add_with_ids(vecs, labels)
        self._dead = 0
        return index

    def _load_or_rebuild(self) -> faiss.Index:
        saved = self._cache.load({"seq": self.applied_seq, "factory": self.params["factory"]})
        if saved is not None:
            index, info = saved
            dead = int(info.get("dead", 0))
            ntotal = len(self._labels) + dead
            if index.d == self.dim and index.ntotal == info.get("ntotal") == ntotal:
                self._dead = dead  # removed labels still in the structure, filtered at search
                self._fallback = bool(info.get("fallback"))
                self._saved_seq = self.applied_seq
                self._apply_search_params(index)
                return index
        return self._rebuild()  # missing, stale or unreadable cache: from the stored vectors

    def _apply_search_params(self, index: faiss.Index) -> None:
        ps = faiss.ParameterSpace()
        for name, faiss_name in (("nprobe", "nprobe"), ("ef_search", "efSearch")):
            if self.params[name] is not None:
                # The exact fallback index has no such parameter: ignore it there.
                with contextlib.suppress(RuntimeError):
                    ps.set_index_parameter(index, faiss_name, self.params[name])

    def _save(self) -> None:
        with self._lock:
            seq = self.applied_seq
            if seq == self._saved_seq:
                return
            self._cache.save(self._index, {
                "seq": seq, "factory": self.params["factory"], "ntotal": self._index.ntotal,
                "dead": self._dead, "fallback": self._fallback})
            self._saved(seq)

    # -- writes ---------------------------------------------------------------------------

    def _work(self) -> DocumentWork:
        return DocumentWork("text", str(self.params["model"]), self.params["max_length"],
                            int(self.params["batch_size"]),
                            options=backend_option(str(self.params["backend"])))

    def document_work(self) -> DocumentWork | None:
        """The encoder's work (:class:`~genseek.protocols.EncodesDocuments`): a ``text``
        vector per document; None with an encoder object handed in."""
        return self._work() if self._own_encoder else None

    def apply(self, changes: ChangeSet) -> None:
        self.apply_encoded(changes, {})

    def apply_encoded(self, changes: ChangeSet, encoded: Mapping[str, Payload]) -> None:
        """:meth:`apply`, taking the vectors of some upserts from ``encoded`` (``doc_id ->
        float32 [dim]``); the others are encoded here."""
        work = self._work()

        def vectors(docs: list[Document]) -> np.ndarray:
            return stack(payloads_for(work, lambda: self.encoder, docs, encoded), self.dim,
                         "dense")

        with self._store_lock:
            staged = self._store.stage(changes, self._labels, vectors)
        if staged is None:
            return
        gone, new_docs, vecs = staged
        with self._lock:
            if gone:
                ids = np.asarray(gone, dtype=np.int64)
                # IDMap2's remove_ids is only right for flat-code sub-indexes: an IVF one
                # keeps its internal ids, so the id map would shift and mislabel results.
                # Others (IVF, HNSW): keep the vectors, filter them at search.
                removed = 0
                if isinstance(faiss.downcast_index(self._index.index), faiss.IndexFlatCodes):
                    removed = self._index.remove_ids(ids)
                self._dead += len(gone) - int(removed)
                for v in gone:
                    del self._labels[v]
            if new_docs:
                self._index.add_with_ids(vecs, np.asarray([d.version for d in new_docs],
                                                          dtype=np.int64))
                for d in new_docs:
                    self._labels[d.version] = d.doc_id

    def commit(self, seq: int) -> None:
        self._commit_store(seq)
        with self._lock:
            n = len(self._labels)
            if (self._dead > float(self.params["rebuild_dead"]) * max(n, 1)
                    or (self._fallback
                        and n >= max(int(self.params["train_min"]), 2 * self._train_failed_at))):
                self._index = self._rebuild()
        self._save_if_due()

    # -- reads ----------------------------------------------------------------------------

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Query vectors, shape ``[len(queries), dim]``."""
        return self.encoder.encode(list(queries), int(self.params["batch_size"]))

    def _faiss_params(self, params: dict[str, Any]) -> faiss.SearchParameters | None:
        """The faiss form of search overrides (``nprobe``, ``ef_search``) for the current
        structure; None where none applies (e.g. Flat, or the exact fallback)."""
        if not params or self._fallback:
            return None
        inner = faiss.downcast_index(self._index.index)
        if "nprobe" in params and isinstance(inner, faiss.IndexIVF):
            return faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))
        if "ef_search" in params and isinstance(inner, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(efSearch=int(params["ef_search"]))
        return None

    def search_vectors(self, vectors: np.ndarray, k: int,
                       params: DenseSearchParams | None = None) -> list[list[Hit]]:
        """Top-``k`` per query vector of ``vectors [n, dim]``; ``nprobe`` / ``ef_search`` in
        ``params`` override the spec for this call."""
        overrides = DenseSearchParams.overrides(params)
        with self._lock:
            index, labels, dead = self._index, self._labels, self._dead
            fetch = min(index.ntotal, k + dead) if k > 0 else 0
            if fetch == 0:
                return [[] for _ in range(len(vectors))]
            x = np.ascontiguousarray(vectors, dtype=np.float32)
            faiss_params = self._faiss_params(overrides)
            scores, ids = (index.search(x, fetch, params=faiss_params) if faiss_params
                           else index.search(x, fetch))
            sign = -1.0 if self.params["metric"] == "l2" else 1.0
            out = []
            for row_s, row_i in zip(scores, ids, strict=True):
                hits = [Hit(labels[int(i)], sign * float(s))
                        for s, i in zip(row_s, row_i, strict=True) if int(i) in labels]
                out.append(hits[:k])
            return out

    def stats(self) -> IndexStats:
        with self._lock:
            memory = int(faiss.serialize_index(self._index).nbytes)
            return self._index_stats(len(self._labels), memory, vectors=int(self._index.ntotal),
                                     dim=self.dim, exact_fallback=self._fallback)

