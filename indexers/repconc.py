"""``repconc``: RepCONC product-quantised dense retrieval in a faiss IVF-PQ index.

Documents are the dense encoder's (MiniLM) vectors ``x [d]``, rotated ``y = R x`` and stored
as ``bytes`` one-byte PQ codes whose codebooks were trained for retrieval by
``genseek train repconc`` (indexers/repconc_train.py: joint training with a query-side
projection under Sinkhorn's uniform-clustering constraint, warm-started from OPQ). Queries
are projected ``q' = W q`` and scored by inner product with the reconstructed documents.

Layout of the index folder::

    vectors.sqlite   label INTEGER PRIMARY KEY, doc_id, vec BLOB (float32) + meta(seq, dim)
    ann.faiss        IVF-PQ (inner product, codes of y itself, not of residuals)
    ann.json         {"seq", "ntotal", "model", ...}: the cache's validity

As in ``dense``, the label is the document version, ``vectors.sqlite`` is the source of truth
(committed atomically with the sequence number) and the faiss file a cache rebuilt from it.
Vectors of documents are not encoded twice: the sibling index named ``reuse`` (``dense`` by
default) is asked for them first, by label, when it is a
:class:`~genseek.protocols.VectorSource` of the same encoder and dimension (the collection binds
the siblings: :class:`~genseek.protocols.UsesSiblings`); only the others are encoded.

Spec parameters: ``model`` (a folder written by ``genseek train repconc``; without one the
index trains faiss OPQ + PQ on its own vectors once it holds ``train_min`` of them, and uses
the rotation as query projection), ``encoder`` (all-MiniLM-L6-v2, must be the model's),
``bytes`` (48; the model's when one is given), ``nlist`` (16 inverted lists), ``nprobe``
(all lists), ``train_min`` (1000: exact search on the rotated vectors until then),
``batch_size`` (32), ``max_length``, ``reuse`` (the sibling's name, "dense"; "" for none),
``save_every`` (300), ``opq_iters`` (25: OPQ rounds when the index trains its own quantiser).
Per search: ``nprobe`` (:class:`genseek.params.RepconcSearchParams`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from genseek.atomic import atomic_write
from genseek.docwork import DocumentWork, Payload, payloads_for, stack
from genseek.encoders import TextEncoder, shared_encoder
from genseek.errors import GenseekError
from genseek.indexers._vectorindex import FaissCache, StoredIndex, encoder_id
from genseek.indexers.labelstore import VectorStore
from genseek.indexers.repconc_train import load_model, opq_warm_start
from genseek.params import RepconcParams, RepconcSearchParams
from genseek.protocols import Siblings, VectorSource
from genseek.types import ChangeSet, Hit, IndexStats


def _write_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array, np.float32), allow_pickle=False)

    atomic_write(path, write)


class RepconcIndex(StoredIndex[np.ndarray]):
    """IVF-PQ over RepCONC codebooks with a query projection. See the module docstring.

    A :class:`~genseek.protocols.VectorSearch` over encoder query vectors ``float32 [n, dim]``
    (projected here) and a :class:`~genseek.protocols.UsesSiblings`.
    """

    Params = RepconcParams
    SearchParams = RepconcSearchParams

    def __init__(self, path: Path, params: dict[str, Any], encoder: TextEncoder | None = None):
        self._init_spec(path, params)
        self.model = None
        if self.params["model"]:
            model_dir = Path(str(self.params["model"])).expanduser()
            self.model = load_model(model_dir)
            self.params["bytes"] = int(self.model["config"]["bytes"])
            self.params["encoder"] = str(self.model["config"].get("encoder",
                                                                 self.params["encoder"]))
        self._encoder = encoder
        self._own_encoder = encoder is None  # else document_work() cannot reproduce it
        self._siblings: Siblings | None = None
        self.dim = int(self.model["config"]["dim"]) if self.model else (
            encoder.dim if encoder is not None else self._load_encoder().dim)
        if self.dim % int(self.params["bytes"]):
            raise GenseekError(f"repconc: bytes ({self.params['bytes']}) must divide the vector "
                               f"dimension ({self.dim})")
        self._store = VectorStore(self.path / "vectors.sqlite", self.dim)
        stored = self._store.meta("dim")
        if stored is None:
            self._store.write_meta({"dim": str(self.dim)})
        elif int(stored) != self.dim:
            raise GenseekError(f"repconc index at {self.path} holds {stored}-d vectors; the "
                               f"spec's model makes {self.dim}-d ones")
        self._init_state()
        self._cache = FaissCache(self.path, "ann")
        self._labels: dict[int, str] = self._store.labels()
        self._quant: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # R, C, W
        self._fallback = True
        self._index = self._load_or_rebuild()

    def _load_encoder(self) -> TextEncoder:
        if self._encoder is None:
            self._encoder = shared_encoder(str(self.params["encoder"]), self.params["max_length"])
        return self._encoder

    # -- quantiser and faiss structure -----------------------------------------------------------

    def _quantiser(self, vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(R [d, d], codebooks [M, 256, d/M], W [d, d])``, or None while untrainable."""
        if self.model is not None:
            return self.model["rotation"], self.model["codebooks"], self.model["query_proj"]
        if self._quant is not None:
            return self._quant
        if len(vecs) < max(int(self.params["train_min"]), 256):
            return None
        rotation, codebooks = opq_warm_start(vecs, int(self.params["bytes"]),
                                             iters=int(self.params["opq_iters"]))
        self._quant = (rotation, codebooks, rotation)
        return self._quant

    def _build(self, labels: np.ndarray, vecs: np.ndarray) -> faiss.Index:
        quant = self._quantiser(vecs)
        nlist = int(self.params["nlist"])
        if quant is None or len(vecs) < max(int(self.params["train_min"]), nlist):
            self._fallback = True
            rotation = quant[0] if quant else np.eye(self.dim, dtype=np.float32)
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            if len(labels):
                index.add_with_ids(np.ascontiguousarray(vecs @ rotation.T, np.float32), labels)
            return index
        rotation, codebooks, _ = quant
        m = int(codebooks.shape[0])
        y = np.ascontiguousarray(vecs @ rotation.T, dtype=np.float32)
        coarse = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFPQ(coarse, self.dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        index.by_residual = False  # the codebooks quantise y itself
        index.cp.seed = 0
        # 1. coarse lists by k-means on the rotated vectors; 2. the trained PQ codebooks
        clus = faiss.Clustering(self.dim, nlist)
        clus.seed = 0
        clus.min_points_per_centroid = 1
        clus.train(y, coarse)
        faiss.copy_array_to_vector(np.ascontiguousarray(codebooks, np.float32).ravel(),
                                   index.pq.centroids)
        index.is_trained = True
        index.nprobe = int(self.params["nprobe"] or nlist)
        index.add_with_ids(y, labels)
        self._fallback = False
        return index

    def _rebuild(self) -> faiss.Index:
        labels, vecs = self._store.vectors()
        return self._build(labels, vecs)

    def _info(self) -> dict[str, Any]:
        return {"seq": self.applied_seq, "ntotal": len(self._labels),
                "model": str(self.params["model"]), "bytes": int(self.params["bytes"]),
                "nlist": int(self.params["nlist"])}

    def _load_or_rebuild(self) -> faiss.Index:
        saved = self._cache.load(self._info())
        if saved is not None and saved[0].d == self.dim and saved[0].ntotal == len(self._labels):
            index, info = saved
            fallback = bool(info.get("fallback"))
            try:
                if self.model is None and not fallback:
                    rotation = np.load(self.path / "own_rotation.npy", allow_pickle=False)
                    codebooks = np.load(self.path / "own_codebooks.npy", allow_pickle=False)
                    self._quant = (rotation, codebooks, rotation)
            except (OSError, ValueError):
                return self._rebuild()  # the trained quantiser is lost: rebuild
            self._fallback = fallback
            ivf = faiss.try_extract_index_ivf(index) if not fallback else None
            if ivf is not None:
                ivf.nprobe = int(self.params["nprobe"] or ivf.nlist)
            self._saved_seq = self.applied_seq
            return index
        return self._rebuild()  # missing, stale or unreadable cache: from the stored vectors

    def _save(self) -> None:
        with self._lock:
            seq = self.applied_seq
            if seq == self._saved_seq:
                return
            if self.model is None and self._quant is not None:
                for name, array in (("own_rotation", self._quant[0]),
                                    ("own_codebooks", self._quant[1])):
                    _write_npy(self.path / f"{name}.npy", array)
            self._cache.save(self._index, {**self._info(), "fallback": self._fallback})
            self._saved(seq)

    def _rotation_and_proj(self) -> tuple[np.ndarray, np.ndarray]:
        if self.model is not None:
            return self.model["rotation"], self.model["query_proj"]
        if self._quant is not None:
            return self._quant[0], self._quant[2]
        eye = np.eye(self.dim, dtype=np.float32)
        return eye, eye

    # -- writes -------------------------------------------------------------------------------

    def bind_siblings(self, siblings: Siblings) -> None:
        """Keep the collection's lookup of sibling indexes (:class:`UsesSiblings`)."""
        self._siblings = siblings

    def _vector_source(self) -> VectorSource | None:
        """The sibling named ``reuse`` when its stored vectors are this encoder's: a
        :class:`VectorSource` of the same encoder (and token limit) and dimension."""
        name = str(self.params["reuse"])
        if not name or self._siblings is None:
            return None
        sibling = self._siblings(name)
        if (isinstance(sibling, VectorSource) and sibling.dim == self.dim
                and sibling.vector_model == encoder_id(str(self.params["encoder"]),
                                                       self.params["max_length"])):
            return sibling
        return None

    def _reused_vectors(self, labels: list[int]) -> dict[int, np.ndarray]:
        """Vectors of ``labels`` that the sibling ``reuse`` already holds."""
        source = self._vector_source() if labels else None
        return source.stored_vectors(labels) if source is not None else {}

    def add_vectors(self, docs: Sequence[tuple[int, str]], vecs: np.ndarray) -> None:
        """Add documents ``(label, doc_id)`` with their encoder vectors ``[n, dim]``
        (uncommitted)."""
        vecs = np.asarray(vecs)
        if vecs.ndim != 2 or vecs.shape[1] != self.dim or len(vecs) != len(docs):
            raise GenseekError(f"repconc: expected {len(docs)} vectors of shape [n, {self.dim}],"
                               f" got {list(vecs.shape)}")
        if not np.all(np.isfinite(vecs)):
            raise GenseekError("repconc: document vectors hold NaN or infinite values")
        keep = [i for i, (label, _) in enumerate(docs) if int(label) not in self._labels]
        if not keep:
            return
        vecs = np.ascontiguousarray(vecs[keep], dtype=np.float32)
        rows = [(int(docs[i][0]), str(docs[i][1])) for i in keep]
        self._store.add(rows, vecs)
        with self._lock:
            rotation, _ = self._rotation_and_proj()
            self._index.add_with_ids(np.ascontiguousarray(vecs @ rotation.T, np.float32),
                                     np.asarray([r[0] for r in rows], dtype=np.int64))
            for lab, did in rows:
                self._labels[lab] = did

    def _work(self) -> DocumentWork:
        return DocumentWork("text", str(self.params["encoder"]), self.params["max_length"],
                            int(self.params["batch_size"]))

    def document_work(self) -> DocumentWork | None:
        """The encoder's work (:class:`~genseek.protocols.EncodesDocuments`): the same
        ``text`` vectors as ``dense`` on the same encoder; None with an encoder object handed
        in."""
        return self._work() if self._own_encoder else None

    def apply(self, changes: ChangeSet) -> None:
        self.apply_encoded(changes, {})

    def apply_encoded(self, changes: ChangeSet, encoded: Mapping[str, Payload]) -> None:
        """:meth:`apply`, taking the vectors of some upserts from ``encoded`` (``doc_id ->
        float32 [dim]``), then from the sibling ``reuse``; the others are encoded here."""
        gone = [v for _, v in changes.removed if v in self._labels]
        if gone:
            self._store.delete(gone)
            with self._lock:
                self._index.remove_ids(np.asarray(gone, dtype=np.int64))
                for v in gone:
                    del self._labels[v]
        new_docs = [d for d in changes.upserts if d.version not in self._labels]
        if not new_docs:
            return
        have = dict(encoded)
        rest = [d for d in new_docs if d.doc_id not in have]
        reused = self._reused_vectors([d.version for d in rest])
        have.update({d.doc_id: reused[d.version] for d in rest if d.version in reused})
        vecs = payloads_for(self._work(), self._load_encoder, new_docs, have)
        self.add_vectors([(d.version, d.doc_id) for d in new_docs],
                         stack(vecs, self.dim, "repconc"))

    def commit(self, seq: int) -> None:
        self._commit_store(seq)
        with self._lock:
            if self._fallback and len(self._labels) >= max(int(self.params["train_min"]),
                                                           int(self.params["nlist"])):
                self._index = self._rebuild()
        self._save_if_due()

    # -- reads --------------------------------------------------------------------------------

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Encoder query vectors ``[len(queries), dim]`` (not projected yet)."""
        return self._load_encoder().encode(list(queries), int(self.params["batch_size"]))

    def search_vectors(self, vectors: np.ndarray, k: int,
                       params: RepconcSearchParams | None = None) -> list[list[Hit]]:
        """Search with encoder query vectors ``[n, dim]`` (projected here by ``W``);
        ``nprobe`` in ``params`` overrides the spec for this call."""
        nprobe = RepconcSearchParams.overrides(params).get("nprobe")
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise GenseekError(f"repconc: query vectors must have shape [n, {self.dim}], "
                               f"not {list(vectors.shape)}")
        if not np.all(np.isfinite(vectors)):
            raise GenseekError("repconc: query vectors hold NaN or infinite values")
        with self._lock:
            fetch = min(len(self._labels), k)
            if fetch <= 0:
                return [[] for _ in range(len(vectors))]
            _, proj = self._rotation_and_proj()
            x = np.ascontiguousarray(vectors @ proj.T, dtype=np.float32)
            faiss_params = None
            if nprobe is not None and not self._fallback:
                faiss_params = faiss.SearchParametersIVF(nprobe=int(nprobe))
            scores, ids = (self._index.search(x, fetch, params=faiss_params) if faiss_params
                           else self._index.search(x, fetch))
            return [[Hit(self._labels[int(i)], float(s))
                     for s, i in zip(rs, ri, strict=True) if int(i) in self._labels]
                    for rs, ri in zip(scores, ids, strict=True)]

    def stats(self) -> IndexStats:
        with self._lock:
            return self._index_stats(
                len(self._labels), int(faiss.serialize_index(self._index).nbytes),
                bytes_per_doc=int(self.params["bytes"]), dim=self.dim,
                exact_fallback=self._fallback, trained_model=bool(self.model))
