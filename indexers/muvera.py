"""``muvera``: multi-vector retrieval with fixed-dimensional encodings (MUVERA).

Every document is a set of token vectors (the dense encoder's per-token embeddings,
normalised, optionally projected); a query is scored by Chamfer similarity (MaxSim,
``sum over query tokens of the best document token``). Search follows Dhulipala et al. 2024:
fixed-dimensional encodings (kernels/muvera.py) of documents in faiss give ``candidates``
documents by one inner product each, which are reranked by exact Chamfer
(kernels/chamfer.py) over their stored token vectors.

Layout of the index folder::

    docs.sqlite          docs(label PK, doc_id, segment, start, length) + meta(seq, dim, ...)
    segments/NNNNNN.npy  token vectors, float16 [tokens, dim], one file per applied batch
    fde.faiss, fde.json  the FDE index: a cache of the segments at fde.json's seq

A document's label is its version (the store's sequence number), as in ``dense``. A batch's
segment file is written (temp file + rename) before its rows are inserted in the SQLite
transaction that also commits the sequence number, so a crash leaves at most an unreferenced
segment, which the next open deletes. Deletes remove rows; a segment whose tokens are mostly
dead is compacted on commit. The FDE index is rebuilt from the segments (never re-encoded)
when missing or stale.

Spec parameters: ``model`` (all-MiniLM-L6-v2), ``max_length`` (256 tokens), ``proj_dim``
(token projection, none), ``k_sim`` (4), ``d_proj`` (16), ``r_reps`` (20), ``d_final``
(none), ``seed`` (0), ``candidates`` (200: FDE hits reranked exactly), ``batch_size`` (16),
``compact_dead`` (0.5), ``save_every`` (seconds, 300).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from genseek.atomic import atomic_write
from genseek.docwork import DocumentWork, Payload, backend_option, payloads_for
from genseek.encoders import TokenEncoder, resolve_model
from genseek.errors import GenseekError
from genseek.indexers._vectorindex import FaissCache, StoredIndex
from genseek.indexers.labelstore import LabelStore
from genseek.kernels import chamfer as ch
from genseek.kernels import muvera as fde
from genseek.models import loading
from genseek.params import MuveraParams, MuveraSearchParams
from genseek.types import ChangeSet, Hit, IndexStats

_FDE_KEYS = ("k_sim", "d_proj", "r_reps", "d_final", "seed", "proj_dim", "model", "backend")
_SEGMENT = re.compile(r"^(\d{6})\.npy$")
_DOC_COLUMNS = ("label INTEGER PRIMARY KEY", "doc_id TEXT NOT NULL", "segment INTEGER NOT NULL",
                "start INTEGER NOT NULL", "length INTEGER NOT NULL")


def _write_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)

    atomic_write(path, write)


class MuveraIndex(StoredIndex[list[np.ndarray]]):
    """FDE candidates + exact Chamfer rerank over stored token vectors (see module docstring).

    A :class:`~genseek.protocols.VectorSearch` whose query vectors are token sets: one
    ``float32 [n_tokens_i, dim]`` array per query (:meth:`encode_queries`).
    ``encoder`` may be any object with ``dim`` and ``encode(texts) -> list[[n_i, dim]]``
    (tests pass a tiny one); by default the MiniLM :class:`TokenEncoder` is loaded lazily, on
    the first text that needs encoding.
    """

    Params = MuveraParams
    SearchParams = MuveraSearchParams

    def __init__(self, path: Path, params: dict[str, Any], encoder: Any | None = None,
                 dim: int | None = None):
        self._init_spec(path, params)
        (self.path / "segments").mkdir(exist_ok=True)
        self._encoder = encoder
        self._own_encoder = encoder is None  # else document_work() cannot reproduce it
        if dim is None:
            dim = encoder.dim if encoder is not None else (
                self.params["proj_dim"] or self._model_dim())
        self.dim = int(dim)
        self.fde_params = fde.make_params(self.dim, int(self.params["k_sim"]),
                                          self.params["d_proj"], int(self.params["r_reps"]),
                                          self.params["d_final"], int(self.params["seed"]))
        self._store = LabelStore(self.path / "docs.sqlite", "docs", _DOC_COLUMNS)
        self._check_meta()
        self._init_state()
        self._cache = FaissCache(self.path, "fde")
        self._pending_segments: list[int] = []
        self._rows: dict[int, tuple[str, int, int, int]] = {
            int(r[0]): (r[1], int(r[2]), int(r[3]), int(r[4]))
            for r in self._store.select("label, doc_id, segment, start, length")}
        self._segments: dict[int, np.ndarray] = {}
        self._clean_and_check_segments()
        self._index = self._load_or_rebuild()

    # -- setup ------------------------------------------------------------------------------

    def _model_dim(self) -> int:
        from transformers import AutoConfig

        source = resolve_model(str(self.params["model"]))
        try:
            with loading():
                return int(AutoConfig.from_pretrained(source).hidden_size)
        except Exception as exc:  # noqa: BLE001 - any loader failure is a user error here
            raise GenseekError(f"muvera: cannot read model {self.params['model']!r} ({source}): "
                               f"{type(exc).__name__}") from None

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            self._encoder = TokenEncoder(str(self.params["model"]), self.params["max_length"],
                                         self.params["proj_dim"], int(self.params["seed"]),
                                         backend=str(self.params["backend"]))
            if self._encoder.dim != self.dim:
                raise GenseekError(f"muvera: encoder makes {self._encoder.dim}-d token vectors;"
                                   f" the index holds {self.dim}-d ones")
        return self._encoder

    def _check_meta(self) -> None:
        config = json.dumps({"dim": self.dim, **{k: self.params[k] for k in _FDE_KEYS}},
                            sort_keys=True)
        stored = self._store.meta("config")
        if stored is None:
            self._store.write_meta({"config": config})
            return
        old, new = json.loads(stored), json.loads(config)
        if old["dim"] != new["dim"] or old.get("proj_dim") != new.get("proj_dim") \
                or old.get("model") != new.get("model") \
                or old.get("backend", "torch") != new.get("backend", "torch"):
            raise GenseekError(f"muvera index at {self.path} holds {old['dim']}-d token vectors "
                               f"of model {old.get('model')!r} (proj_dim {old.get('proj_dim')});"
                               f" the spec asks for {new['dim']}-d ones of {new.get('model')!r}")
        if old != new:  # FDE settings changed: the FDE cache is rebuilt from the segments
            self._store.write_meta({"config": config})

    def _segment_path(self, number: int) -> Path:
        return self.path / "segments" / f"{number:06d}.npy"

    def _clean_and_check_segments(self) -> None:
        """Delete unreferenced segment files; check every referenced one is whole."""
        used = {seg for _, seg, _, _ in self._rows.values()}
        for file in (self.path / "segments").iterdir():
            match = _SEGMENT.match(file.name)
            if match is None or int(match.group(1)) not in used:
                file.unlink()  # a crashed batch or a compacted segment (or a stray temp file)
        extent: dict[int, int] = {}
        for _, seg, start, length in self._rows.values():
            extent[seg] = max(extent.get(seg, 0), start + length)
        for seg, need in extent.items():
            tokens = self._segment(seg)
            if tokens.shape[0] < need:
                raise GenseekError(f"muvera: segment {self._segment_path(seg)} holds "
                                   f"{tokens.shape[0]} token vectors; docs.sqlite needs {need}")

    def _segment(self, number: int) -> np.ndarray:
        """A segment's tokens ``[t, dim]`` float16, memory-mapped (cached)."""
        tokens = self._segments.get(number)
        if tokens is None:
            path = self._segment_path(number)
            try:
                tokens = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise GenseekError(f"muvera: cannot read segment {path}: {exc} (truncated or "
                                   "corrupted; rebuild the index)") from None
            if tokens.dtype != np.float16 or tokens.ndim != 2 or tokens.shape[1] != self.dim:
                raise GenseekError(f"muvera: segment {path} holds {tokens.dtype} "
                                   f"{list(tokens.shape)}; expected float16 [n, {self.dim}]")
            self._segments[number] = tokens
        return tokens

    def _next_segment(self) -> int:
        used = [seg for _, seg, _, _ in self._rows.values()] + self._pending_segments
        files = [int(m.group(1)) for f in (self.path / "segments").iterdir()
                 if (m := _SEGMENT.match(f.name))]
        return max(used + files, default=0) + 1

    def _empty(self) -> bool:
        return not self._rows

    # -- token vectors and FDEs ---------------------------------------------------------------

    def doc_tokens(self, labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Flat ``(tokens [T, dim] float32, offsets [len(labels) + 1])`` of stored documents."""
        parts, lengths = [], []
        for label in labels:
            _, seg, start, length = self._rows[int(label)]
            parts.append(self._segment(seg)[start:start + length])
            lengths.append(length)
        import torch

        # fp16 -> fp32 through torch: several times faster than numpy's astype
        tokens = (torch.from_numpy(np.concatenate(parts)).float().numpy() if parts
                  else np.zeros((0, self.dim), np.float32))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return tokens, offsets

    def _doc_fdes(self, labels: Sequence[int], chunk: int = 512) -> np.ndarray:
        """FDEs ``[len(labels), D]`` of stored documents (from their fp16 tokens)."""
        out = np.zeros((len(labels), self.fde_params.out_dim), dtype=np.float32)
        for lo in range(0, len(labels), chunk):
            tokens, offsets = self.doc_tokens(labels[lo:lo + chunk])
            out[lo:lo + chunk] = fde.encode(tokens, offsets, self.fde_params, is_query=False)
        return out

    def _rebuild(self) -> faiss.Index:
        labels = sorted(self._rows)
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.fde_params.out_dim))
        if labels:
            index.add_with_ids(self._doc_fdes(labels), np.asarray(labels, dtype=np.int64))
        return index

    def _info(self) -> dict[str, Any]:
        return {"seq": self.applied_seq, "ntotal": len(self._rows),
                "config": json.loads(self._store.meta("config") or "{}")}

    def _load_or_rebuild(self) -> faiss.Index:
        saved = self._cache.load(self._info())
        if saved is not None:
            index = saved[0]
            if index.d == self.fde_params.out_dim and index.ntotal == len(self._rows):
                self._saved_seq = self.applied_seq
                return index
        return self._rebuild()  # missing, stale or unreadable cache: from the segments

    def _save(self) -> None:
        with self._lock:
            seq = self.applied_seq
            if seq == self._saved_seq:
                return
            self._cache.save(self._index, self._info())
            self._saved(seq)

    # -- writes -------------------------------------------------------------------------------

    def _check_tokens(self, tokens: np.ndarray, what: str) -> np.ndarray:
        arr = np.asarray(tokens)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise GenseekError(f"muvera: {what} must have shape [n, {self.dim}], "
                               f"not {list(arr.shape)}")
        if not np.all(np.isfinite(arr)):
            raise GenseekError(f"muvera: {what} holds NaN or infinite values")
        return np.ascontiguousarray(arr, dtype=np.float32)

    def add_token_vectors(self, docs: Sequence[tuple[int, str]],
                          tokens: Sequence[np.ndarray]) -> None:
        """Add documents ``(label, doc_id)`` with their token vectors ``[n_i, dim]`` (uncommitted).

        All inputs are checked before anything is written; labels already present are skipped.
        """
        if len(docs) != len(tokens):
            raise GenseekError(f"muvera: {len(docs)} documents but {len(tokens)} token sets")
        checked = [self._check_tokens(t, f"token vectors of document {d[1]!r}")
                   for d, t in zip(docs, tokens, strict=True)]
        keep = [i for i, (label, _) in enumerate(docs) if int(label) not in self._rows]
        if not keep:
            return
        lengths = [len(checked[i]) for i in keep]
        flat = (np.concatenate([checked[i] for i in keep]) if sum(lengths)
                else np.zeros((0, self.dim), np.float32))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        fdes = fde.encode(flat.astype(np.float16).astype(np.float32), offsets, self.fde_params,
                          is_query=False)  # as a rebuild from the fp16 segment would compute
        seg = self._next_segment()
        self._pending_segments.append(seg)
        _write_npy(self._segment_path(seg), flat.astype(np.float16))
        rows = [(int(docs[i][0]), str(docs[i][1]), seg, int(offsets[j]), int(lengths[j]))
                for j, i in enumerate(keep)]
        self._store.insert(rows)
        with self._lock:
            self._index.add_with_ids(fdes, np.asarray([r[0] for r in rows], dtype=np.int64))
            for label, doc_id, s, start, length in rows:
                self._rows[label] = (doc_id, s, start, length)

    def remove_labels(self, labels: Sequence[int]) -> None:
        """Make documents unsearchable (uncommitted)."""
        gone = [int(v) for v in labels if int(v) in self._rows]
        if not gone:
            return
        self._store.delete(gone)
        with self._lock:
            self._index.remove_ids(np.asarray(gone, dtype=np.int64))
            for v in gone:
                del self._rows[v]

    def _work(self) -> DocumentWork:
        return DocumentWork("tokens", str(self.params["model"]), self.params["max_length"],
                            int(self.params["batch_size"]), self.params["proj_dim"],
                            int(self.params["seed"]),
                            options=backend_option(str(self.params["backend"])))

    def document_work(self) -> DocumentWork | None:
        """The token encoder's work (:class:`~genseek.protocols.EncodesDocuments`): float16
        token vectors per document, as stored; None with an encoder object handed in."""
        return self._work() if self._own_encoder else None

    def apply(self, changes: ChangeSet) -> None:
        self.apply_encoded(changes, {})

    def apply_encoded(self, changes: ChangeSet, encoded: Mapping[str, Payload]) -> None:
        """:meth:`apply`, taking the token vectors of some upserts from ``encoded``
        (``doc_id -> [n_tokens, dim]``); the others are encoded here."""
        self.remove_labels([v for _, v in changes.removed])
        new_docs = [d for d in changes.upserts if d.version not in self._rows]
        if new_docs:
            tokens = payloads_for(self._work(), lambda: self.encoder, new_docs, encoded)
            self.add_token_vectors([(d.version, d.doc_id) for d in new_docs], tokens)

    def commit(self, seq: int) -> None:
        self._commit_store(seq)
        self._pending_segments = []
        self._maybe_compact()
        self._save_if_due()

    def _maybe_compact(self) -> None:
        """Rewrite live tokens of segments that are mostly dead into one new segment."""
        live: dict[int, int] = {}
        for _, seg, _, length in self._rows.values():
            live[seg] = live.get(seg, 0) + length
        victims = [seg for seg, n in live.items()
                   if n < (1 - float(self.params["compact_dead"])) * self._segment(seg).shape[0]]
        if not victims:
            return
        labels = sorted(v for v, r in self._rows.items() if r[1] in victims)
        tokens, offsets = self.doc_tokens(labels)
        seg = self._next_segment()
        _write_npy(self._segment_path(seg), tokens.astype(np.float16))
        db = self._store.db  # its own transaction: no change set is open after a commit
        db.execute("BEGIN IMMEDIATE")
        db.executemany("UPDATE docs SET segment = ?, start = ? WHERE label = ?",
                       [(seg, int(offsets[i]), v) for i, v in enumerate(labels)])
        db.execute("COMMIT")
        with self._lock:
            for i, v in enumerate(labels):
                doc_id, _, _, length = self._rows[v]
                self._rows[v] = (doc_id, seg, int(offsets[i]), length)
            for old in victims:
                self._segments.pop(old, None)
        for old in victims:  # unreferenced now; a crash before this is cleaned at open
            self._segment_path(old).unlink(missing_ok=True)

    # -- reads --------------------------------------------------------------------------------

    def encode_queries(self, queries: Sequence[str]) -> list[np.ndarray]:
        """Query token vectors: one float32 ``[n_tokens_i, dim]`` array per query."""
        return self.encoder.encode(list(queries), int(self.params["batch_size"]))

    def query_fdes(self, queries: Sequence[np.ndarray]) -> np.ndarray:
        """Query FDEs ``[n, D]`` of token sets ``[n_i, dim]``."""
        checked = [self._check_tokens(q, "query token vectors") for q in queries]
        offsets = np.concatenate([[0], np.cumsum([len(q) for q in checked])]).astype(np.int64)
        flat = np.concatenate(checked) if checked else np.zeros((0, self.dim), np.float32)
        return fde.encode(flat, offsets, self.fde_params, is_query=True)

    def search_vectors(self, vectors: Sequence[np.ndarray], k: int,
                       params: MuveraSearchParams | None = None) -> list[list[Hit]]:
        """FDE top-``candidates`` then exact Chamfer rerank, for query token sets
        ``[n_i, dim]``; ``candidates`` in ``params`` overrides the spec for this call."""
        import torch

        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise GenseekError(f"muvera: k must be a non-negative integer, not {k!r}")
        candidates = int(MuveraSearchParams.overrides(params).get("candidates",
                                                                  self.params["candidates"]))
        qf = self.query_fdes(vectors)  # checks the queries even on an empty index
        with self._lock:
            fetch = min(len(self._rows), max(candidates, k))
            if k == 0 or fetch == 0:
                return [[] for _ in vectors]
            _, ids = self._index.search(qf, fetch)  # [nq, fetch]
            out = []
            for q, row in zip(vectors, ids, strict=True):
                labels = [int(i) for i in row if int(i) in self._rows]
                out.append(self._rerank(np.asarray(q, dtype=np.float32), labels, k, torch))
            return out

    def _rerank(self, query: np.ndarray, labels: list[int], k: int, torch: Any) -> list[Hit]:
        """Exact Chamfer of ``query [Lq, dim]`` against the candidates' unpadded tokens."""
        tokens, offsets = self.doc_tokens(labels)  # [T_c, dim], [c + 1]
        scores = ch.chamfer_flat(torch.from_numpy(query), torch.from_numpy(tokens),
                                 torch.from_numpy(offsets))  # [c]
        top = torch.topk(scores, min(k, len(labels))).indices.tolist()
        return [Hit(self._rows[labels[i]][0], float(scores[i])) for i in top]

    def exact_search_vectors(self, vectors: Sequence[np.ndarray], k: int) -> list[list[Hit]]:
        """Brute-force Chamfer over every stored document (the baseline FDE search
        approximates), for query token sets ``[n_i, dim]``."""
        import torch

        checked = [self._check_tokens(q, "query token vectors") for q in vectors]
        with self._lock:
            labels = sorted(self._rows)
            if not labels or k <= 0:
                return [[] for _ in vectors]
            tokens, offsets = self.doc_tokens(labels)
            t, o = torch.from_numpy(tokens), torch.from_numpy(offsets)
            out = []
            for q in checked:
                scores = ch.chamfer_flat(torch.from_numpy(q), t, o)
                top = torch.topk(scores, min(k, len(labels))).indices.tolist()
                out.append([Hit(self._rows[labels[i]][0], float(scores[i])) for i in top])
            return out

    def stats(self) -> IndexStats:
        with self._lock:
            return self._index_stats(
                len(self._rows), int(self._index.ntotal) * self.fde_params.out_dim * 4,
                token_vectors=int(sum(r[3] for r in self._rows.values())), dim=self.dim,
                fde_dim=self.fde_params.out_dim, segments=len({r[1] for r in self._rows.values()}))

    def _dropped(self) -> None:
        for seg in self._pending_segments:  # written for the dropped change set
            self._segment_path(seg).unlink(missing_ok=True)

    def close(self) -> None:
        super().close()
        self._segments.clear()


__all__ = ["MuveraIndex"]
