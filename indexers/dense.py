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
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from genseek.atomic import atomic_write, atomic_write_json
from genseek.encoders import TextEncoder, shared_encoder
from genseek.errors import GenseekError
from genseek.indexers.labelstore import VectorStore
from genseek.params import DenseParams, DenseSearchParams
from genseek.protocols import dir_bytes
from genseek.types import ChangeSet, Hit


class DenseIndex:
    """A faiss index over stored vectors. See the module docstring for the spec."""

    Params = DenseParams
    SearchParams = DenseSearchParams

    def __init__(self, path: Path, params: dict[str, Any], encoder: TextEncoder | None = None):
        self.params = DenseParams.resolve(params)  # fail here, not after a store commit
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.encoder = encoder or shared_encoder(str(self.params["model"]), self.params["max_length"])
        self.dim = self.encoder.dim
        self._store = VectorStore(self.path / "vectors.sqlite", self.dim)
        self._check_meta()
        self._lock = threading.RLock()
        self._labels: dict[int, str] = self._store.labels()
        self._dead = 0
        self._fallback = False
        self._train_failed_at = 0  # vectors at the last failed training attempt
        self._saved_seq = -1
        self._last_save = time.monotonic()
        self._index = self._load_or_rebuild()

    @classmethod
    def open(cls, path: Path, params: dict[str, Any]) -> DenseIndex:
        return cls(path, params)

    # -- metadata -----------------------------------------------------------------------

    def _check_meta(self) -> None:
        stored_dim, stored_model = self._store.meta("dim"), self._store.meta("model")
        if stored_dim is None:
            self._store.write_meta({"dim": str(self.dim), "model": str(self.params["model"])})
        elif int(stored_dim) != self.dim:
            raise GenseekError(
                f"dense index at {self.path} holds {stored_dim}-d vectors from model "
                f"{stored_model!r}; model {self.params['model']!r} makes {self.dim}-d vectors"
            )

    @property
    def applied_seq(self) -> int:
        return self._store.applied_seq

    # -- the faiss structure --------------------------------------------------------------

    def _metric(self) -> int:
        return faiss.METRIC_INNER_PRODUCT if self.params["metric"] == "ip" else faiss.METRIC_L2

    def _new_index(self, vectors: np.ndarray) -> faiss.Index:
        """An ID-mapped index for ``vectors`` (trained on them when it must be).

        Sets ``self._fallback`` when the factory needs more training vectors than
        there are: the index is then an exact Flat one until ``train_min`` is reached.
        """
        try:
            index = faiss.index_factory(self.dim, f"IDMap2,{self.params['factory']}", self._metric())
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
        labels, vecs = self._store.vectors()
        index = self._new_index(vecs)
        if len(labels):
            index.add_with_ids(vecs, labels)
        self._dead = 0
        return index

    def _load_or_rebuild(self) -> faiss.Index:
        info_path, ann_path = self.path / "ann.json", self.path / "ann.faiss"
        try:
            info = json.loads(info_path.read_text())
            dead = int(info.get("dead", 0))
            if (info.get("seq") == self.applied_seq
                    and info.get("factory") == self.params["factory"]
                    and info.get("ntotal") == len(self._labels) + dead):
                index = faiss.read_index(str(ann_path))
                if index.d == self.dim and index.ntotal == len(self._labels) + dead:
                    self._dead = dead  # removed labels still in the structure, filtered at search
                    self._fallback = bool(info.get("fallback"))
                    self._saved_seq = self.applied_seq
                    self._apply_search_params(index)
                    return index
        except (OSError, ValueError, RuntimeError):
            pass  # missing, stale or unreadable cache: rebuild from the stored vectors
        return self._rebuild()

    def _apply_search_params(self, index: faiss.Index) -> None:
        ps = faiss.ParameterSpace()
        for name, faiss_name in (("nprobe", "nprobe"), ("ef_search", "efSearch")):
            if self.params[name] is not None:
                # The exact fallback index has no such parameter: ignore it there.
                with contextlib.suppress(RuntimeError):
                    ps.set_index_parameter(index, faiss_name, self.params[name])

    def _save(self) -> None:
        with self._lock:
            index, seq, ntotal = self._index, self.applied_seq, self._index.ntotal
            if seq == self._saved_seq:
                return
            atomic_write(self.path / "ann.faiss", lambda tmp: faiss.write_index(index, tmp))
            atomic_write_json(self.path / "ann.json", {
                "seq": seq, "factory": self.params["factory"], "ntotal": ntotal,
                "dead": self._dead, "fallback": self._fallback})
            self._saved_seq = seq
            self._last_save = time.monotonic()

    # -- writes ---------------------------------------------------------------------------

    def apply(self, changes: ChangeSet) -> None:
        staged = self._store.stage(changes, self._labels, lambda texts: self.encoder.encode(
            texts, int(self.params["batch_size"])))
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
        self._store.commit(seq)
        with self._lock:
            n = len(self._labels)
            if (self._dead > float(self.params["rebuild_dead"]) * max(n, 1)
                    or (self._fallback
                        and n >= max(int(self.params["train_min"]), 2 * self._train_failed_at))):
                self._index = self._rebuild()
        if time.monotonic() - self._last_save > float(self.params["save_every"]):
            self._save()

    # -- reads ----------------------------------------------------------------------------

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Query vectors, shape ``[len(queries), dim]``."""
        return self.encoder.encode(list(queries), int(self.params["batch_size"]))

    def search(self, queries: Sequence[str], k: int, **params: Any) -> list[list[Hit]]:
        """Top-``k`` per query; ``nprobe`` / ``ef_search`` override the spec for this call."""
        search_params = self._search_params(params)
        if k <= 0 or not queries:
            return [[] for _ in queries]
        return self.search_vectors(self.encode_queries(queries), k, search_params)

    def _search_params(self, params: dict[str, Any]) -> faiss.SearchParameters | None:
        params = DenseSearchParams.overrides(params)
        if not params or self._fallback:
            return None
        inner = faiss.downcast_index(self._index.index)
        if "nprobe" in params and isinstance(inner, faiss.IndexIVF):
            return faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))
        if "ef_search" in params and isinstance(inner, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(efSearch=int(params["ef_search"]))
        return None  # the parameter does not apply to this index (e.g. Flat): exact anyway

    def search_vectors(self, vectors: np.ndarray, k: int,
                       params: faiss.SearchParameters | None = None) -> list[list[Hit]]:
        """Search with query vectors of shape ``[n, dim]``."""
        with self._lock:
            index, labels, dead = self._index, self._labels, self._dead
            fetch = min(index.ntotal, k + dead)
            if fetch == 0:
                return [[] for _ in range(len(vectors))]
            x = np.ascontiguousarray(vectors, dtype=np.float32)
            scores, ids = index.search(x, fetch, params=params) if params else index.search(x, fetch)
            sign = -1.0 if self.params["metric"] == "l2" else 1.0
            out = []
            for row_s, row_i in zip(scores, ids, strict=True):
                hits = [Hit(labels[int(i)], sign * float(s))
                        for s, i in zip(row_s, row_i, strict=True) if int(i) in labels]
                out.append(hits[:k])
            return out

    def stats(self) -> dict[str, Any]:
        with self._lock:
            memory = int(faiss.serialize_index(self._index).nbytes)
            return {
                "type": "dense",
                "documents": len(self._labels),
                "applied_seq": self.applied_seq,
                "disk_bytes": dir_bytes(self.path),
                "memory_bytes": memory,
                "vectors": int(self._index.ntotal),
                "dim": self.dim,
                "exact_fallback": self._fallback,
                "params": {k: v for k, v in self.params.items() if v is not None},
            }

    def close(self) -> None:
        # Applied but not committed (an error interrupted a sync): drop it, and do not
        # save the in-memory faiss index, which may hold the uncommitted changes.
        if not self._store.rollback():
            self._save()
        self._store.close()
