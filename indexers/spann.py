"""``spann``: a memory–disk hybrid vector index (SPANN) with SPFresh-style live updates.

Two layers:

- :class:`SpannEngine` — the index over int64-labelled float32 vectors (squared L2).
  Heads (about ``head_ratio`` of the vectors, chosen by hierarchical balanced
  clustering) live in memory in a faiss index; every vector is stored under up to
  ``max_replicas`` heads chosen by the RNG rule, in posting lists on disk. A search
  probes the ``nprobe`` nearest heads, drops those farther than ``(1 + eps)`` times
  the nearest one, reads their postings with ``os.pread``, filters stale/deleted
  entries through the version map, removes duplicates, scores the stored codes and
  reranks the best ``rerank`` candidates exactly against the float32 vectors.
- :class:`SpannIndex` — the collection index type (like ``dense``): MiniLM
  encodes each document version once into ``vectors.sqlite`` (the source of truth,
  committed with the sequence number); the engine under ``engine/`` is caught up
  from it on open, so nothing is ever re-encoded.

Engine folder layout::

    postings.bin   4 KiB file header, then page-aligned posting regions; a region is a
                   16-byte header (magic, head id, capacity, record size) and records
                   (slot u32, version u8, code) — code is fp16, int8 or PQ bytes
    vectors.f32    float32 rows by slot (append only), for exact reranking and splits
    heads-N.faiss  the head index of generation N (faiss's own format)
    state.npz      directory (offset, capacity, count, CRC32 per posting), version map,
                   slot labels, codec tables and a JSON header; written atomically

Regions referenced by a saved state are never overwritten (appends go past the saved
count; splits and relocations go to the end of the file), so ``state.npz`` is always
consistent with the files it names. On load every posting's header and CRC32 and
the vector file's CRC32 are checked: a corrupted or truncated file is a clear error.

Updates (SPFresh): an insert is appended to the postings of its RNG-selected heads;
a posting longer than twice ``posting_cap`` (the build-time cap) is split by 2-means
into two new heads, and only vectors near the boundary (the split posting's vectors
whose old head was closer than both new ones, and vectors of neighbouring postings now
closer to a new head than to their own) are reassigned, by bumping their version and
appending them anew. A delete clears the slot in the version map. Oversized postings
are queued as appends make them so; :meth:`SpannEngine.rebalance_step` does one split
or one slice of a garbage-collection sweep (rewriting postings that are mostly stale),
and :meth:`SpannEngine.rebalance` does everything at once.

Background rebalancing (SPFresh's local rebuilder): with ``rebalance="background"``
an update batch only appends and queues; a daemon thread owned by the
:class:`SpannIndex` takes the index lock for one step at a time, so searches are
served between steps and always see a consistent engine (the version map hides
deleted and moved entries, replicas are deduplicated). Saves happen under the same
lock, so ``state.npz`` never describes half a split; a process killed in the middle of
one reloads the last saved state, whose regions were never overwritten, and catches
up from ``vectors.sqlite``; the queue itself is not saved but rebuilt on load from the
posting lengths. :meth:`SpannIndex.close` lets the current step finish, joins the
thread and leaves queued work for the next open. A failure inside the thread stops it;
it is logged, reported by ``stats()["rebalance"]`` (``errors``, ``last_error``) and
makes every later :meth:`SpannIndex.commit` raise without committing (the engine is
never saved again) until the index is reopened, which recovers it.

Parameters (spec ``spann(key=value, ...)``; engine parameters apply to
:class:`SpannEngine` too):

- ``rebalance`` (``background``): ``background`` — a per-index thread splits and
  garbage-collects while updates only append (a writer still splits at once a posting
  grown past ``BACKPRESSURE`` = 4 times the split threshold); ``sync`` — every update
  batch splits oversized postings before returning (the behaviour of ``auto_split``);
  ``off`` — only an explicit :meth:`SpannIndex.rebalance` does.
- ``auto_split`` (true, engine): the older spelling — in a spec without ``rebalance``,
  true means ``sync`` and false ``off``; a spec without either gets ``background``.
- ``rebalance_pause`` (0.001 s): the rebalancer's sleep between two steps.
- ``posting_cap`` (64): build-time posting length; postings over twice it are split.
- ``head_ratio`` (0.1), ``max_replicas`` (8), ``candidates`` (16), ``rng_factor`` (1.0),
  ``closure`` (10.0), ``branch`` (16), ``seed`` (0): building and assignment.
- ``codec`` (``fp16`` | ``int8`` | ``pq`` with ``pq_m`` 48), ``head_index`` (``auto`` |
  ``flat`` | ``hnsw``, ``hnsw_ef`` 128): storage.
- ``nprobe`` (32), ``eps`` (1.0), ``rerank`` (64): search; ``reassign_neighbors`` (8):
  neighbouring postings checked after a split.
- ``model``, ``batch_size``, ``max_length``: the encoder; ``save_every`` (300 s): the
  engine is saved at a commit at most this often (and on close); ``verify`` (true):
  check every checksum on open.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from genseek.atomic import atomic_write
from genseek.encoders import TextEncoder, shared_encoder
from genseek.errors import GenseekError
from genseek.indexers.labelstore import VectorStore
from genseek.kernels import spann as K
from genseek.params import SpannEngineParams, SpannParams, SpannSearchParams
from genseek.protocols import dir_bytes
from genseek.types import ChangeSet, Hit

BLOCK = 4096
FILE_MAGIC = b"SPANNPST"
REGION_MAGIC = b"SPNP"
REGION_HEADER = 16
FORMAT_VERSION = 1

ENGINE_PARAMS: dict[str, Any] = SpannEngineParams().model_dump()
"""The engine's parameters and their defaults (:class:`genseek.params.SpannEngineParams`)."""
CODECS = ("fp16", "int8", "pq")


def _err(msg: str) -> GenseekError:
    return GenseekError(f"spann: {msg}")


def _check_vectors(x: Any, dim: int | None, what: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 ``[n, dim]`` array, or a clear error."""
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise _err(f"{what} must be a 2-d array [n, dim], got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise _err(f"{what} have dimension {arr.shape[1]}, the index holds {dim}-d vectors")
    if not np.issubdtype(arr.dtype, np.number):
        raise _err(f"{what} must be numeric, not {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int(np.nonzero(~np.isfinite(arr).all(axis=1))[0][0])
        raise _err(f"{what} row {bad} holds NaN or infinite values")
    return arr


class _Codec:
    """Vector codes stored in postings: ``encode [n, d] -> [n, size] uint8``, ``decode`` back."""

    def __init__(self, kind: str, dim: int, pq_m: int):
        if kind not in CODECS:
            raise _err(f"codec must be one of {', '.join(CODECS)}, not {kind!r}")
        self.kind, self.dim = kind, dim
        self.lo = np.zeros(dim, np.float32)
        self.scale = np.ones(dim, np.float32)
        self.pq: faiss.ProductQuantizer | None = None
        if kind == "pq":
            if dim % pq_m:
                raise _err(f"pq_m={pq_m} must divide the dimension {dim}")
            self.pq = faiss.ProductQuantizer(dim, pq_m, 8)
        self.size = {"fp16": 2 * dim, "int8": dim, "pq": pq_m}[kind]

    def train(self, x: np.ndarray) -> None:
        if self.kind == "int8":
            self.lo = x.min(axis=0)
            self.scale = np.maximum((x.max(axis=0) - self.lo) / 255.0, 1e-12).astype(np.float32)
        elif self.kind == "pq":
            assert self.pq is not None
            sample = x if len(x) >= 256 else np.concatenate([x] * (256 // max(len(x), 1) + 1))
            self.pq.train(np.ascontiguousarray(sample[:65536]))

    def encode(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "fp16":
            return x.astype(np.float16).view(np.uint8).reshape(len(x), -1)
        if self.kind == "int8":
            q = np.rint((x - self.lo) / self.scale)
            return np.clip(q, 0, 255).astype(np.uint8)
        assert self.pq is not None
        return self.pq.compute_codes(np.ascontiguousarray(x)).reshape(len(x), -1)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        if self.kind == "fp16":
            return np.ascontiguousarray(codes).view(np.float16).astype(np.float32)
        if self.kind == "int8":
            return codes.astype(np.float32) * self.scale + self.lo
        assert self.pq is not None
        return self.pq.decode(np.ascontiguousarray(codes))

    def tables(self) -> dict[str, np.ndarray]:
        out = {"codec_lo": self.lo, "codec_scale": self.scale}
        if self.pq is not None:
            out["codec_pq"] = faiss.vector_to_array(self.pq.centroids).astype(np.float32)
        return out

    def load_tables(self, arrays: Any) -> None:
        self.lo = np.asarray(arrays["codec_lo"], np.float32)
        self.scale = np.asarray(arrays["codec_scale"], np.float32)
        if self.pq is not None:
            faiss.copy_array_to_vector(np.asarray(arrays["codec_pq"], np.float32),
                                       self.pq.centroids)


def _grow(arr: np.ndarray, n: int, fill: Any = 0) -> np.ndarray:
    if n <= len(arr):
        return arr
    out = np.full(max(n, 2 * len(arr), 16), fill, dtype=arr.dtype)
    out[:len(arr)] = arr
    return out


class SpannEngine:
    """SPANN over labelled vectors; see the module docstring. Not thread-safe by itself."""

    def __init__(self, path: Path, dim: int, params: dict[str, Any] | None = None):
        self.params = SpannEngineParams.resolve(params)
        if not isinstance(dim, int) or dim <= 0:
            raise _err(f"dim must be a positive integer, not {dim!r}")
        self.path = Path(path)
        self.dim = dim
        self.codec = _Codec(str(self.params["codec"]), dim, int(self.params["pq_m"]))
        self.rec = np.dtype([("slot", "<u4"), ("ver", "u1"), ("code", "u1", (self.codec.size,))])
        # slots: one per stored vector version
        self.labels = np.zeros(0, np.int64)     # slot -> external label
        self.alive = np.zeros(0, bool)          # slot -> not deleted
        self.versions = np.zeros(0, np.uint8)   # slot -> current version (version map)
        self.nslots = 0
        self._f32_crc = 0
        # heads / postings directory, by head id
        self.nheads = 0
        self.head_alive = np.zeros(0, bool)
        self.post_off = np.zeros(0, np.int64)
        self.post_cap = np.zeros(0, np.int64)
        self.post_cnt = np.zeros(0, np.int64)
        self.post_crc = np.zeros(0, np.uint32)
        self.heads: faiss.Index | None = None
        self._gen = 0
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # (labels, slots) for lookup
        self._fd_post: int | None = None
        self._fd_vec: int | None = None
        self._file_end = BLOCK
        self._mm: np.memmap | None = None
        self._dead_heads = 0
        self.counters = {"splits": 0, "reassigned": 0, "relocations": 0, "gc_rewrites": 0}
        # rebalancing work (derived state: rebuilt from the directory on load)
        self._queue: dict[int, None] = {}  # oversized live heads, oldest first
        self._stale = 0        # slots invalidated (deleted, replaced, reassigned) since a sweep
        self._sweep = -1       # next head of the running garbage-collection sweep, -1: none
        self._sweep_stale = 0  # the stale estimate the running sweep started from

    # -- parameters ---------------------------------------------------------------------

    # -- files --------------------------------------------------------------------------

    def _open_files(self, create: bool) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        post, vec = self.path / "postings.bin", self.path / "vectors.f32"
        try:
            self._fd_post = os.open(post, flags, 0o644)
            self._fd_vec = os.open(vec, flags, 0o644)
        except FileNotFoundError as exc:
            raise _err(f"{exc.filename} is missing: the index folder is incomplete") from None
        if create:
            header = FILE_MAGIC + np.array([FORMAT_VERSION, self.dim, self.codec.size,
                                            self.rec.itemsize], "<u4").tobytes()
            os.ftruncate(self._fd_post, 0)
            os.ftruncate(self._fd_vec, 0)
            os.pwrite(self._fd_post, header.ljust(BLOCK, b"\0"), 0)
            self._file_end = BLOCK

    def _close_files(self) -> None:
        for fd in (self._fd_post, self._fd_vec):
            if fd is not None:
                os.close(fd)
        self._fd_post = self._fd_vec = None
        self._mm = None

    # -- id lookup ----------------------------------------------------------------------

    def _lookup(self, labels: np.ndarray) -> np.ndarray:
        """Live slot of each label, -1 if absent. Shape ``[len(labels)]``."""
        if self._sorted is None:
            live = np.nonzero(self.alive[:self.nslots])[0]
            order = np.argsort(self.labels[live], kind="stable")
            self._sorted = (self.labels[live][order], live[order])
        keys, slots = self._sorted
        pos = np.searchsorted(keys, labels)
        pos = np.minimum(pos, max(len(keys) - 1, 0))
        if len(keys) == 0:
            return np.full(len(labels), -1, np.int64)
        found = keys[pos] == labels
        return np.where(found, slots[pos], -1)

    @property
    def count(self) -> int:
        """Live vectors."""
        return int(self.alive[:self.nslots].sum())

    def live_labels(self) -> np.ndarray:
        return self.labels[:self.nslots][self.alive[:self.nslots]]

    # -- vectors file -------------------------------------------------------------------

    def _append_vectors(self, x: np.ndarray) -> np.ndarray:
        """Write rows for new slots; returns the slots ``[n]``."""
        n = len(x)
        start = self.nslots
        assert self._fd_vec is not None
        data = x.tobytes()
        os.pwrite(self._fd_vec, data, start * self.dim * 4)
        self._f32_crc = zlib.crc32(data, self._f32_crc)
        self.nslots += n
        self.labels = _grow(self.labels, self.nslots)
        self.alive = _grow(self.alive, self.nslots, False)
        self.versions = _grow(self.versions, self.nslots)
        self._mm = None
        return np.arange(start, start + n, dtype=np.int64)

    def _vectors(self, slots: np.ndarray) -> np.ndarray:
        """float32 rows ``[len(slots), dim]`` read from ``vectors.f32``."""
        if self._mm is None or len(self._mm) < self.nslots:
            self._mm = np.memmap(self.path / "vectors.f32", dtype=np.float32, mode="r",
                                 shape=(self.nslots, self.dim))
        return np.asarray(self._mm[np.asarray(slots, np.int64)])

    # -- postings -----------------------------------------------------------------------

    def _region_bytes(self, cap: int) -> int:
        return -(-(REGION_HEADER + cap * self.rec.itemsize) // BLOCK) * BLOCK

    def _cap_for(self, n: int) -> int:
        want = max(n + n // 2, 8)
        return (self._region_bytes(want) - REGION_HEADER) // self.rec.itemsize

    def _new_head_ids(self, n: int) -> np.ndarray:
        ids = np.arange(self.nheads, self.nheads + n, dtype=np.int64)
        self.nheads += n
        for name, fill in (("head_alive", False), ("post_off", 0), ("post_cap", 0),
                           ("post_cnt", 0), ("post_crc", 0)):
            setattr(self, name, _grow(getattr(self, name), self.nheads, fill))
        self.head_alive[ids] = True
        return ids

    def _write_region(self, head: int, records: np.ndarray) -> None:
        """Put ``records`` in a fresh region at the end of the file (copy on write)."""
        cap = self._cap_for(len(records))
        size = self._region_bytes(cap)
        off = self._file_end
        header = REGION_MAGIC + np.array([head, cap, self.rec.itemsize], "<u4").tobytes()
        payload = records.tobytes()
        assert self._fd_post is not None
        os.pwrite(self._fd_post, (header + payload).ljust(size, b"\0"), off)
        self._file_end = off + size
        self.post_off[head], self.post_cap[head] = off, cap
        self.post_cnt[head], self.post_crc[head] = len(records), zlib.crc32(payload)
        self._note_length(head)

    def _split_cap(self) -> int:
        """Entries (stale ones included) beyond which a posting is split: build cap x 2."""
        return 2 * int(self.params["posting_cap"])

    def _note_length(self, head: int) -> None:
        """Queue ``head`` for a split when its posting is oversized, unqueue it otherwise."""
        if self.head_alive[head] and self.post_cnt[head] > self._split_cap():
            self._queue[head] = None
        else:
            self._queue.pop(head, None)

    def _read_posting(self, head: int) -> np.ndarray:
        """All records of a posting (stale ones included), checked against its header."""
        cnt = int(self.post_cnt[head])
        off = int(self.post_off[head])
        assert self._fd_post is not None
        raw = os.pread(self._fd_post, REGION_HEADER + cnt * self.rec.itemsize, off)
        if (len(raw) != REGION_HEADER + cnt * self.rec.itemsize or raw[:4] != REGION_MAGIC
                or int.from_bytes(raw[4:8], "little") != head):
            raise _err(f"{self.path / 'postings.bin'}: posting of head {head} at byte {off} "
                       "is truncated or corrupted")
        return np.frombuffer(raw, dtype=self.rec, offset=REGION_HEADER, count=cnt)

    def _append(self, head: int, records: np.ndarray) -> None:
        cnt, cap = int(self.post_cnt[head]), int(self.post_cap[head])
        if cnt + len(records) <= cap:
            payload = records.tobytes()
            assert self._fd_post is not None
            os.pwrite(self._fd_post, payload,
                      int(self.post_off[head]) + REGION_HEADER + cnt * self.rec.itemsize)
            self.post_cnt[head] = cnt + len(records)
            self.post_crc[head] = zlib.crc32(payload, int(self.post_crc[head]))
            self._note_length(head)
            return
        old = self._read_posting(head)
        merged = np.concatenate([old[self._valid(old)], records])
        self._write_region(head, merged)
        self.counters["relocations"] += 1

    def _valid(self, recs: np.ndarray) -> np.ndarray:
        slots = recs["slot"].astype(np.int64)
        return self.alive[slots] & (self.versions[slots] == recs["ver"])

    # -- heads --------------------------------------------------------------------------

    def _new_head_index(self, expected: int) -> faiss.Index:
        kind = self.params["head_index"]
        if kind == "auto":
            kind = "hnsw" if expected > 20_000 else "flat"
        if kind == "flat":
            return faiss.IndexFlatL2(self.dim)
        index = faiss.IndexHNSWFlat(self.dim, 32)
        index.hnsw.efConstruction = 40
        return index

    def _head_vectors(self, ids: np.ndarray) -> np.ndarray:
        assert self.heads is not None
        return self.heads.reconstruct_batch(np.asarray(ids, np.int64))

    def _search_heads(self, q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` nearest live heads: ``(d2 [q, n], ids [q, n])`` (inf / -1 padded)."""
        assert self.heads is not None
        fetch = min(self.heads.ntotal, n + self._dead_heads)
        if isinstance(self.heads, faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW(efSearch=max(int(self.params["hnsw_ef"]), fetch))
            d2, ids = self.heads.search(q, fetch, params=params)
        else:
            d2, ids = self.heads.search(q, fetch)
        if self._dead_heads:
            ok = (ids >= 0) & self.head_alive[np.maximum(ids, 0)]
            order = np.argsort(~ok, axis=1, kind="stable")
            ids = np.where(np.take_along_axis(ok, order, 1), np.take_along_axis(ids, order, 1), -1)
            d2 = np.where(ids >= 0, np.take_along_axis(d2, order, 1), np.inf)
        ids, d2 = ids[:, :n], d2[:, :n]
        d2 = np.where(ids >= 0, d2, np.inf).astype(np.float32)
        return d2, ids

    def _assign(self, x: np.ndarray) -> np.ndarray:
        """RNG-selected heads for vectors ``x [n, d]``: ``[n, max_replicas]``, -1 padded."""
        c, r = int(self.params["candidates"]), int(self.params["max_replicas"])
        out = []
        for s in range(0, len(x), 2048):
            xb = x[s:s + 2048]
            d2, ids = self._search_heads(xb, c)
            uniq, inv = np.unique(np.maximum(ids, 0), return_inverse=True)
            cand_vecs = self._head_vectors(uniq)[inv.reshape(ids.shape)]
            out.append(K.rng_assign(ids, d2, cand_vecs, r, float(self.params["rng_factor"]),
                                    float(self.params["closure"])))
        return np.concatenate(out) if out else np.zeros((0, r), np.int64)

    # -- build --------------------------------------------------------------------------

    def build(self, x: Any, labels: Any, progress: bool = False) -> None:
        """(Re)build from vectors ``x [n, dim]`` with int64 ``labels [n]`` (unique)."""
        x = _check_vectors(x, self.dim, "vectors")
        labels = np.asarray(labels, np.int64).ravel()
        if len(labels) != len(x):
            raise _err(f"{len(x)} vectors but {len(labels)} labels")
        if len(np.unique(labels)) != len(labels):
            raise _err("labels must be unique")
        if len(x) == 0:
            raise _err("cannot build an index from no vectors")
        self._close_files()
        self.__init__(self.path, self.dim, self.params)  # type: ignore[misc]
        self._open_files(create=True)
        p = self.params
        # 1. heads by hierarchical balanced clustering
        head_rows = K.hierarchical_heads(x, float(p["head_ratio"]), int(p["branch"]),
                                         seed=int(p["seed"]))
        self.heads = self._new_head_index(len(head_rows))
        self.heads.add(np.ascontiguousarray(x[head_rows]))
        self._new_head_ids(len(head_rows))
        # 2. codes and the float32 rows
        rng = np.random.default_rng(int(p["seed"]))
        self.codec.train(x[rng.choice(len(x), size=min(len(x), 100_000), replace=False)])
        slots = self._append_vectors(x)
        self.labels[slots] = labels
        self.alive[slots] = True
        # 3. RNG assignment to up to max_replicas heads, then the posting cap
        assign = self._assign(x)
        vec_i, rep = np.nonzero(assign >= 0)
        head_i = assign[vec_i, rep]
        d2 = ((x[vec_i] - self._head_vectors(head_i)) ** 2).sum(axis=1) if len(vec_i) else \
            np.zeros(0, np.float32)
        keep = K.cap_postings(vec_i, head_i, d2, rep == 0, int(p["posting_cap"]))
        vec_i, head_i = vec_i[keep], head_i[keep]
        # 4. postings written head by head, each in its own page-aligned region
        order = np.argsort(head_i, kind="stable")
        vec_i, head_i = vec_i[order], head_i[order]
        codes = self.codec.encode(x)
        bounds = np.searchsorted(head_i, np.arange(self.nheads + 1))
        for h in range(self.nheads):
            members = vec_i[bounds[h]:bounds[h + 1]]
            recs = np.zeros(len(members), self.rec)
            recs["slot"] = slots[members]
            recs["code"] = codes[members]
            self._write_region(h, recs)
        self._sorted = None
        self.rebalance()

    # -- updates ------------------------------------------------------------------------

    def insert(self, x: Any, labels: Any) -> None:
        """Add vectors ``x [n, dim]`` with new int64 ``labels [n]`` (an existing label is
        replaced). Appends to the nearest postings and splits the ones that overflow."""
        x = _check_vectors(x, self.dim, "vectors")
        labels = np.asarray(labels, np.int64).ravel()
        if len(labels) != len(x):
            raise _err(f"{len(x)} vectors but {len(labels)} labels")
        if len(x) == 0:
            return
        if len(np.unique(labels)) != len(labels):
            raise _err("labels in one insert must be unique")
        if self.heads is None:
            self.build(x, labels)
            return
        self.delete(labels, missing_ok=True)
        slots = self._append_vectors(x)
        self.labels[slots] = labels
        self.alive[slots] = True
        self._sorted = None
        self._place(slots, x)
        if self.params["auto_split"]:
            self.rebalance(only_oversized=True)

    def _place(self, slots: np.ndarray, x: np.ndarray) -> None:
        """Append records of ``slots`` (current versions) to their RNG-selected heads."""
        assign = self._assign(x)
        vec_i, rep = np.nonzero(assign >= 0)
        head_i = assign[vec_i, rep]
        order = np.argsort(head_i, kind="stable")
        vec_i, head_i = vec_i[order], head_i[order]
        codes = self.codec.encode(x)
        uniq, starts = np.unique(head_i, return_index=True)
        ends = np.append(starts[1:], len(head_i))
        for h, s, e in zip(uniq, starts, ends, strict=True):
            members = vec_i[s:e]
            recs = np.zeros(len(members), self.rec)
            recs["slot"] = slots[members]
            recs["ver"] = self.versions[slots[members]]
            recs["code"] = codes[members]
            self._append(int(h), recs)

    def delete(self, labels: Any, missing_ok: bool = False) -> int:
        """Mark ``labels`` deleted in the version map; returns how many were live."""
        labels = np.asarray(labels, np.int64).ravel()
        if self.heads is None or len(labels) == 0:
            return 0
        slots = self._lookup(labels)
        if not missing_ok and (slots < 0).any():
            raise _err(f"label {int(labels[slots < 0][0])} is not in the index")
        slots = slots[slots >= 0]
        self.alive[slots] = False
        self._stale += len(slots)
        self._sorted = None
        return len(slots)

    def rebalance(self, only_oversized: bool = False, max_rounds: int = 64,
                  limit: int | None = None) -> int:
        """Split every posting holding more than ``limit`` entries (SPFresh), synchronously.

        ``limit`` defaults to ``2 * posting_cap``. With ``only_oversized`` false it also
        rewrites postings whose stale entries exceed half of their length (garbage
        collection of the whole index). Returns the splits made.
        """
        cap = self._split_cap() if limit is None else max(int(limit), self._split_cap())
        splits = 0
        for _ in range(max_rounds):
            live = np.nonzero(self.head_alive[:self.nheads])[0]
            over = live[self.post_cnt[live] > cap]
            if not only_oversized:
                for h in live[self.post_cnt[live] > 0]:
                    self._gc_posting(int(h))
            if len(over) == 0:
                break
            for h in over:
                if self.head_alive[h] and self.post_cnt[h] > cap:
                    splits += self._split(int(h))
        if not only_oversized:  # every posting was just swept
            self._sweep, self._sweep_stale, self._stale = -1, 0, 0
        return splits

    def _gc_posting(self, head: int) -> bool:
        """Rewrite one posting without its stale entries when they are more than half of it
        and the rest fits under the split threshold (copy on write); True if rewritten."""
        recs = self._read_posting(head)
        ok = self._valid(recs)
        valid = int(ok.sum())
        if valid * 2 < len(recs) and valid <= self._split_cap():
            self._write_region(head, recs[ok].copy())
            self.counters["gc_rewrites"] += 1
            return True
        return False

    def _gc_due(self) -> bool:
        """A garbage-collection sweep is due: stale slots reach a quarter of the live ones."""
        return self._stale > 0 and 4 * self._stale >= max(self.count, 1)

    def has_pending_work(self) -> bool:
        """Whether :meth:`rebalance_step` has anything to do."""
        return bool(self._queue) or self._sweep >= 0 or self._gc_due()

    def pending(self) -> dict[str, Any]:
        """Rebalancing work waiting: ``queued`` oversized postings, whether a garbage
        collection sweep is running or due (``gc_pending``), ``stale_estimate`` slots."""
        return {"queued": len(self._queue), "gc_pending": self._sweep >= 0 or self._gc_due(),
                "stale_estimate": self._stale + (self._sweep_stale if self._sweep >= 0 else 0)}

    def rebalance_step(self, gc_batch: int = 32) -> bool:
        """Do one small, bounded unit of rebalancing; False when there was nothing to do.

        In order of priority: split the oldest queued oversized posting (2-means, then
        LIRE reassignment near the boundary, which may queue more postings), or advance
        a garbage-collection sweep by up to ``gc_batch`` postings (a sweep starts once the
        stale estimate reaches a quarter of the live vectors). Each step leaves the
        engine consistent, so searches and :meth:`save` may run between any two steps.
        """
        if self.heads is None:
            return False
        cap = self._split_cap()
        while self._queue:
            head = next(iter(self._queue))
            del self._queue[head]
            if self.head_alive[head] and self.post_cnt[head] > cap:
                self._split(head)
                return True
        if self._sweep < 0 and self._gc_due():
            self._sweep, self._sweep_stale, self._stale = 0, self._stale, 0
        if self._sweep < 0:
            return False
        end = min(self._sweep + max(int(gc_batch), 1), self.nheads)
        for h in range(self._sweep, end):
            if self.head_alive[h] and self.post_cnt[h] > 0:
                self._gc_posting(h)
        if end < self.nheads:
            self._sweep = end
        else:
            self._sweep, self._sweep_stale = -1, 0
        return True

    def _split(self, head: int) -> int:
        """2-means split of one posting, then LIRE reassignment near the boundary."""
        recs = self._read_posting(head)
        recs = recs[self._valid(recs)]
        _, first = np.unique(recs["slot"], return_index=True)
        recs = recs[np.sort(first)].copy()
        cap = self._split_cap()
        if len(recs) <= cap:  # only stale entries made it long: garbage-collect
            self._write_region(head, recs)
            return 0
        slots = recs["slot"].astype(np.int64)
        x = self._vectors(slots)
        old_centre = self._head_vectors(np.array([head]))[0]
        cents, lab = K.two_means(x, seed=int(self.params["seed"]) + head)
        # 1. two new heads replace the old one
        new = self._new_head_ids(2)
        assert self.heads is not None
        self.heads.add(cents)
        for j in range(2):
            self._write_region(int(new[j]), recs[lab == j])
        self.head_alive[head] = False
        self.post_cnt[head] = 0
        self._queue.pop(head, None)
        self._dead_heads += 1
        self.counters["splits"] += 1
        # 2. LIRE: the split posting's vectors for which the old head was closer
        moved = [slots[K.split_reassign_mask(x, old_centre, cents)]]
        # 3. ... and neighbours' vectors that are now closer to a new head than their own
        n_nb = int(self.params["reassign_neighbors"])
        if n_nb:
            _, nb = self._search_heads(old_centre[None, :], n_nb + 2)
            for h in nb[0]:
                if h < 0 or h in new:
                    continue
                nrec = self._read_posting(int(h))
                nrec = nrec[self._valid(nrec)]
                if not len(nrec):
                    continue
                ns = nrec["slot"].astype(np.int64)
                nx = self._vectors(ns)
                own = ((nx - self._head_vectors(np.array([h]))[0]) ** 2).sum(axis=1)
                moved.append(ns[K.neighbor_reassign_mask(nx, own, cents)])
        redo = np.unique(np.concatenate(moved))
        if len(redo):
            # a new version invalidates every old replica; then place the vector anew
            self.versions[redo] = (self.versions[redo].astype(np.int64) + 1) % 256
            self._stale += len(redo)
            self._place(redo, self._vectors(redo))
            self.counters["reassigned"] += len(redo)
        return 1

    # -- search -------------------------------------------------------------------------

    def search(self, q: Any, k: int, nprobe: int | None = None, eps: float | None = None,
               rerank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` labels and exact squared distances: ``(d2 [nq, k], labels [nq, k])``.

        Rows are padded with ``inf`` / -1 when fewer than ``k`` candidates were found.
        """
        if self.heads is None or self.count == 0:
            raise _err("the index is empty: add vectors before searching")
        q = _check_vectors(q, self.dim, "query vectors")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise _err(f"k must be a positive integer, not {k!r}")
        if k > self.count:
            raise _err(f"k={k} is larger than the {self.count} vectors in the index")
        nprobe = int(self.params["nprobe"] if nprobe is None else nprobe)
        eps = float(self.params["eps"] if eps is None else eps)
        rerank = max(int(self.params["rerank"] if rerank is None else rerank), k)
        if nprobe < 1 or eps < 0:
            raise _err("nprobe must be >= 1 and eps >= 0")
        hd2, hids = self._search_heads(q, nprobe)
        keep = K.prune_heads(hd2, eps) & (hids >= 0)
        out_d = np.full((len(q), k), np.inf, np.float32)
        out_l = np.full((len(q), k), -1, np.int64)
        item = self.rec.itemsize
        assert self._fd_post is not None
        fd = self._fd_post
        for i in range(len(q)):
            chunks = []
            for h in hids[i][keep[i]]:
                cnt = int(self.post_cnt[h])
                if cnt:
                    off = int(self.post_off[h])
                    raw = os.pread(fd, REGION_HEADER + cnt * item, off)
                    if len(raw) != REGION_HEADER + cnt * item or raw[:4] != REGION_MAGIC:
                        raise _err(f"{self.path / 'postings.bin'}: posting of head {h} at "
                                   f"byte {off} is truncated or corrupted")
                    chunks.append(raw[REGION_HEADER:])
            if not chunks:
                continue
            recs = np.frombuffer(b"".join(chunks), dtype=self.rec)
            recs = recs[self._valid(recs)]
            slots = recs["slot"].astype(np.int64)
            slots, first = np.unique(slots, return_index=True)  # deduplicate replicas
            if not len(slots):
                continue
            xs = self.codec.decode(recs["code"][first])
            approx = np.einsum("ij,ij->i", xs, xs) - 2.0 * (xs @ q[i])
            if len(slots) > rerank:
                top = np.argpartition(approx, rerank - 1)[:rerank]
                slots = slots[top]
            exact = ((self._vectors(slots) - q[i]) ** 2).sum(axis=1)
            n = min(k, len(slots))
            best = np.argpartition(exact, n - 1)[:n] if len(slots) > n else np.arange(n)
            best = best[np.argsort(exact[best], kind="stable")]
            out_d[i, :n] = exact[best]
            out_l[i, :n] = self.labels[slots[best]]
        return out_d, out_l

    # -- persistence --------------------------------------------------------------------

    def save(self, extra: dict[str, Any] | None = None) -> None:
        """Write the directory atomically (after syncing the data files)."""
        if self.heads is None:
            return
        assert self._fd_post is not None and self._fd_vec is not None
        os.fsync(self._fd_post)
        os.fsync(self._fd_vec)
        self._gen += 1
        head_file = self.path / f"heads-{self._gen}.faiss"
        heads = self.heads
        atomic_write(head_file, lambda tmp: faiss.write_index(heads, tmp))
        n, h = self.nslots, self.nheads
        meta = {"format": FORMAT_VERSION, "dim": self.dim, "params": self.params,
                "nslots": n, "nheads": h, "gen": self._gen, "file_end": self._file_end,
                "f32_crc": self._f32_crc, "dead_heads": self._dead_heads,
                "counters": self.counters, "stale": self.pending()["stale_estimate"],
                "extra": extra or {}}
        arrays = {"labels": self.labels[:n], "alive": self.alive[:n],
                  "versions": self.versions[:n], "head_alive": self.head_alive[:h],
                  "post_off": self.post_off[:h], "post_cap": self.post_cap[:h],
                  "post_cnt": self.post_cnt[:h], "post_crc": self.post_crc[:h],
                  "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8),
                  **self.codec.tables()}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write(self.path / "state.npz", lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
        for old in self.path.glob("heads-*.faiss"):
            if old != head_file:
                old.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path, verify: bool = True,
             params: dict[str, Any] | None = None) -> SpannEngine:
        """Open a saved engine; ``params`` may override search-time parameters.

        Raises :class:`GenseekError` naming the file when a file is missing, truncated
        or fails its checksum.
        """
        path = Path(path)
        state = path / "state.npz"
        try:
            with np.load(state, allow_pickle=False) as z:
                arrays = {key: z[key] for key in z.files}
            meta = json.loads(arrays.pop("meta").tobytes().decode())
        except FileNotFoundError:
            raise _err(f"{state} is missing: no saved index there") from None
        except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
            raise _err(f"{state} is unreadable or corrupted ({type(exc).__name__})") from None
        if meta.get("format") != FORMAT_VERSION:
            raise _err(f"{state}: unsupported format {meta.get('format')!r}")
        stored = dict(meta["params"])
        for key, value in (params or {}).items():
            if key in ("nprobe", "eps", "rerank", "hnsw_ef", "auto_split",
                       "reassign_neighbors", "posting_cap", "candidates", "max_replicas",
                       "rng_factor", "closure"):
                stored[key] = value
            elif key in ENGINE_PARAMS and stored.get(key) != value:
                raise _err(f"{path}: parameter {key}={value!r} differs from the saved "
                           f"{stored.get(key)!r}; rebuild the index to change it")
        eng = cls(path, int(meta["dim"]), stored)
        eng.codec.load_tables(arrays)
        n, h = int(meta["nslots"]), int(meta["nheads"])
        eng.labels, eng.alive, eng.versions = arrays["labels"], arrays["alive"], arrays["versions"]
        eng.head_alive, eng.post_off = arrays["head_alive"], arrays["post_off"]
        eng.post_cap, eng.post_cnt = arrays["post_cap"], arrays["post_cnt"]
        eng.post_crc = arrays["post_crc"]
        if not (len(eng.labels) == n and len(eng.head_alive) == h and len(eng.post_off) == h):
            raise _err(f"{state}: array lengths do not match its header")
        for name in ("labels", "alive", "versions", "head_alive", "post_off", "post_cap",
                     "post_cnt", "post_crc"):
            setattr(eng, name, np.array(getattr(eng, name)))  # writable copies
        eng.nslots, eng.nheads = n, h
        eng._gen, eng._file_end = int(meta["gen"]), int(meta["file_end"])
        eng._f32_crc, eng._dead_heads = int(meta["f32_crc"]), int(meta["dead_heads"])
        eng.counters = {**eng.counters, **meta["counters"]}
        eng._stale = int(meta.get("stale", 0))
        eng.extra = dict(meta.get("extra", {}))
        head_file = path / f"heads-{eng._gen}.faiss"
        try:
            eng.heads = faiss.read_index(str(head_file))
        except RuntimeError:
            raise _err(f"{head_file} is missing or corrupted") from None
        if eng.heads.ntotal != h or eng.heads.d != eng.dim:
            raise _err(f"{head_file} holds {eng.heads.ntotal} heads, expected {h}")
        eng._open_files(create=False)
        eng._check_files(verify)
        live = np.nonzero(eng.head_alive[:h])[0]
        eng._queue = dict.fromkeys(int(v) for v in live[eng.post_cnt[live] > eng._split_cap()])
        return eng

    def _check_files(self, verify: bool) -> None:
        post, vec = self.path / "postings.bin", self.path / "vectors.f32"
        assert self._fd_post is not None and self._fd_vec is not None
        size = os.fstat(self._fd_post).st_size
        if size < self._file_end:
            raise _err(f"{post} is truncated: {size} bytes, the index needs {self._file_end}")
        head = os.pread(self._fd_post, 24, 0)
        want = FILE_MAGIC + np.array([FORMAT_VERSION, self.dim, self.codec.size,
                                      self.rec.itemsize], "<u4").tobytes()
        if head != want:
            raise _err(f"{post}: bad file header (not a spann postings file of this index)")
        need = self.nslots * self.dim * 4
        vsize = os.fstat(self._fd_vec).st_size
        if vsize < need:
            raise _err(f"{vec} is truncated: {vsize} bytes, the index needs {need}")
        if not verify:
            return
        crc = 0
        for s in range(0, need, 1 << 24):
            crc = zlib.crc32(os.pread(self._fd_vec, min(1 << 24, need - s), s), crc)
        if crc != self._f32_crc:
            raise _err(f"{vec} fails its CRC32 check: the file is corrupted")
        for h in np.nonzero(self.post_cnt[:self.nheads])[0]:
            recs = self._read_posting(int(h))
            if zlib.crc32(recs.tobytes()) != int(self.post_crc[h]):
                raise _err(f"{post}: posting of head {h} at byte {int(self.post_off[h])} "
                           "fails its CRC32 check: the file is corrupted")

    def close(self) -> None:
        self._close_files()

    # -- accounting ---------------------------------------------------------------------

    def memory_bytes(self) -> int:
        """Bytes held in RAM by the structures a search needs (heads, directory, maps)."""
        heads = int(faiss.serialize_index(self.heads).nbytes) if self.heads is not None else 0
        arrays = (self.labels, self.alive, self.versions, self.head_alive, self.post_off,
                  self.post_cap, self.post_cnt, self.post_crc)
        lookup = sum(a.nbytes for a in self._sorted) if self._sorted else 16 * self.count
        return heads + sum(a.nbytes for a in arrays) + lookup

    def disk_bytes(self) -> int:
        return dir_bytes(self.path)

    def stats(self) -> dict[str, Any]:
        live_heads = np.nonzero(self.head_alive[:self.nheads])[0]
        cnt = self.post_cnt[live_heads]
        return {"vectors": self.count, "slots": self.nslots, "heads": int(len(live_heads)),
                "dead_heads": self._dead_heads,
                "mean_posting": float(cnt.mean()) if len(cnt) else 0.0,
                "max_posting": int(cnt.max()) if len(cnt) else 0,
                "replicas_per_vector": float(cnt.sum() / max(self.count, 1)),
                "memory_bytes": self.memory_bytes(), "disk_bytes": self.disk_bytes(),
                **self.counters, **self.pending()}


# -- the collection index type -------------------------------------------------------------

REBALANCE_MODES = ("background", "sync", "off")
BACKPRESSURE = 4  # a posting this many times the split threshold is split by the writer
_IDLE_WAIT_S = 1.0  # an idle rebalancer re-checks for work at least this often


log = logging.getLogger("genseek.indexers.spann")


def _rebalance_mode(params: dict[str, Any]) -> str:
    """The rebalancing mode a spec asks for; ``auto_split`` is its older spelling.

    ``rebalance`` unset: ``auto_split=true`` means ``sync``, ``auto_split=false`` means
    ``off``, neither means ``background``. Both set must agree (``auto_split=true`` goes
    only with ``sync``).
    """
    mode, auto = params.get("rebalance"), params.get("auto_split")
    if mode is None:
        return "background" if auto is None else ("sync" if auto else "off")
    if mode not in REBALANCE_MODES:
        raise _err(f"rebalance must be one of {', '.join(REBALANCE_MODES)}, not {mode!r}")
    if auto is not None and bool(auto) != (mode == "sync"):
        raise _err(f"auto_split={auto!r} contradicts rebalance={mode!r} (auto_split is the "
                   "older spelling: true = sync, false = off or background); drop auto_split")
    return str(mode)


class SpannIndex:
    """A collection index: MiniLM vectors in SQLite, searched through a :class:`SpannEngine`.

    Scores are inner products (cosine, as vectors are L2-normalised): ``1 - d2 / 2``.
    An empty collection returns no hits, and ``k`` beyond the collection returns all.

    With ``rebalance="background"`` the index owns one daemon thread (started on open,
    stopped and joined by :meth:`close`) that runs :meth:`SpannEngine.rebalance_step`
    under the index lock, one small step at a time, sleeping ``rebalance_pause``
    seconds between steps so searches and writes get the lock in between. Every access
    to the engine holds that lock, so a search or a save sees the engine between two
    steps, never inside one.
    """

    Params = SpannParams
    SearchParams = SpannSearchParams

    def __init__(self, path: Path, params: dict[str, Any], encoder: TextEncoder | None = None):
        checked = SpannParams.resolve(params)
        mode = _rebalance_mode(params)
        self.params = {**checked, "rebalance": mode, "auto_split": mode == "sync"}
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        engine_params = {k: self.params[k] for k in ENGINE_PARAMS}
        SpannEngine(self.path / "engine", 1, engine_params)  # validate before any work
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
        self._lock = threading.RLock()
        self._last_save = time.monotonic()
        # the background rebalancer (per index: no state shared between indexes)
        self._mode = mode
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._rb = {"steps": 0, "background_splits": 0, "inline_splits": 0, "errors": 0}
        self._rb_error: str | None = None
        self._failed = False
        self._engine = self._open_engine(engine_params)
        if mode == "background":
            self._thread = threading.Thread(target=self._rebalance_loop, daemon=True,
                                            name=f"spann-rebalance:{self.path}")
            self._thread.start()

    @classmethod
    def open(cls, path: Path, params: dict[str, Any]) -> SpannIndex:
        return cls(path, params)

    @property
    def applied_seq(self) -> int:
        return self._store.applied_seq

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
                self._backpressure(eng)
            return eng
        eng = SpannEngine(folder, self.dim, engine_params)
        if self._labels:
            ids, vecs = self._store.vectors()
            eng.build(vecs, ids)
        return eng

    # -- background rebalancing ----------------------------------------------------------

    def _backpressure(self, eng: SpannEngine) -> None:
        """In background mode, split at once any posting grown past ``BACKPRESSURE`` times
        the split threshold, so postings stay bounded when the rebalancer falls behind."""
        if self._mode == "background" and eng.heads is not None:
            before = eng.counters["splits"]
            eng.rebalance(only_oversized=True, limit=BACKPRESSURE * eng._split_cap())
            self._rb["inline_splits"] += eng.counters["splits"] - before

    def _rebalance_loop(self) -> None:
        """The rebalancer thread: one :meth:`SpannEngine.rebalance_step` per lock hold.

        An exception stops the thread after recording it (``stats()["rebalance"]``),
        logging it with its traceback and marking the index failed (see :meth:`commit`);
        this happens under the lock, so no save can see the interrupted step.
        """
        pause = float(self.params["rebalance_pause"])
        while not self._stop.is_set():
            self._wake.clear()  # before looking, so a later wake-up is never lost
            with self._lock:
                if self._stop.is_set():
                    return
                before = self._engine.counters["splits"]
                try:
                    worked = self._engine.rebalance_step()
                except Exception as exc:  # noqa: BLE001 - recorded, logged and surfaced
                    self._failed = True
                    self._rb["errors"] += 1
                    self._rb_error = f"{type(exc).__name__}: {exc}"
                    log.error("spann index at %s: the background rebalancer failed and "
                              "stopped: %s", self.path, self._rb_error, exc_info=True)
                    return
                if worked:
                    self._rb["steps"] += 1
                    self._rb["background_splits"] += self._engine.counters["splits"] - before
            if not worked:
                self._wake.wait(_IDLE_WAIT_S)
            elif pause > 0:
                self._stop.wait(pause)
            else:
                time.sleep(0)  # let a waiting search or write take the lock

    def _stop_rebalancer(self) -> None:
        """Stop the rebalancer after its current step and join it (pending work stays
        queued in memory; it is found again from the saved state on the next open)."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def wait_rebalanced(self, timeout: float | None = None) -> bool:
        """Block until no rebalancing work is pending; False on timeout, or at once when
        work is pending but no rebalancer runs (``sync``/``off``: call :meth:`rebalance`).

        Raises :class:`GenseekError` if the background rebalancer has failed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._failed:
                    raise self._failure()
                if not self._engine.has_pending_work():
                    return True
            running = self._thread is not None and self._thread.is_alive()
            if not running or (deadline is not None and time.monotonic() >= deadline):
                return False
            self._wake.set()
            time.sleep(0.005)

    def _failure(self) -> GenseekError:
        return GenseekError(f"spann index at {self.path}: the background rebalancer failed "
                            f"({self._rb_error}); close and reopen the index, which recovers "
                            "from its last saved state and vectors.sqlite")

    # -- writes ---------------------------------------------------------------------------

    def _encode(self, texts: list[str]) -> np.ndarray:
        vecs = self.encoder.encode(texts, int(self.params["batch_size"]))
        return _check_vectors(vecs, self.dim, "encoded vectors")

    def apply(self, changes: ChangeSet) -> None:
        staged = self._store.stage(changes, self._labels, self._encode)
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
                self._backpressure(self._engine)
        self._wake.set()

    def commit(self, seq: int) -> None:
        """Commit ``seq`` with the applied changes; saves the engine every ``save_every`` s.

        Raises :class:`GenseekError`, committing nothing, once the background rebalancer
        has failed: the engine in memory may be inconsistent, so it is never saved again;
        closing and reopening the index recovers it (saved state + ``vectors.sqlite``).
        """
        if self._failed:
            raise self._failure()
        self._store.commit(seq)
        if time.monotonic() - self._last_save > float(self.params["save_every"]):
            self._save()

    def _save(self) -> None:
        """Save the engine under the lock, so between two rebalancing steps."""
        with self._lock:
            if self._failed:
                log.warning("spann index at %s: not saving the engine after a rebalancer "
                            "failure; the next open recovers it", self.path)
                return
            self._engine.save({"seq": self.applied_seq})
            self._last_save = time.monotonic()

    def rebalance(self) -> int:
        """Explicit rebalancing: split oversized postings and garbage-collect stale entries."""
        with self._lock:
            return self._engine.rebalance()

    # -- reads ----------------------------------------------------------------------------

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.encoder.encode(list(queries), int(self.params["batch_size"]))

    def search(self, queries: Sequence[str], k: int, **params: Any) -> list[list[Hit]]:
        """Top-``k`` per query; ``nprobe``, ``eps``, ``rerank`` override the spec."""
        params = SpannSearchParams.overrides(params)
        if k <= 0 or not queries:
            return [[] for _ in queries]
        return self.search_vectors(self.encode_queries(queries), k, **params)

    def search_vectors(self, vectors: np.ndarray, k: int, **params: Any) -> list[list[Hit]]:
        """Search with query vectors ``[n, dim]``."""
        with self._lock:
            n = self._engine.count if self._engine.heads is not None else 0
            if n == 0:
                return [[] for _ in range(len(vectors))]
            if k >= n:  # the whole collection was asked for: probe every posting
                params = {"nprobe": self._engine.nheads, "eps": 1e9, "rerank": n}
            d2, labels = self._engine.search(vectors, min(k, n), **params)
            return [[Hit(self._labels[int(lab)], 1.0 - float(d) / 2.0)
                     for d, lab in zip(rd, rl, strict=True) if lab >= 0 and int(lab) in self._labels]
                    for rd, rl in zip(d2, labels, strict=True)]

    def stats(self) -> dict[str, Any]:
        """Sizes, the engine's statistics and ``rebalance``: the mode, whether the thread
        runs, pending work (``queued`` oversized postings, ``gc_pending``,
        ``stale_estimate``), ``steps`` and ``background_splits`` done by the thread,
        ``inline_splits`` forced by back-pressure, ``errors`` and ``last_error``."""
        with self._lock:
            eng = self._engine.stats() if self._engine.heads is not None else {}
            rebalance = {"mode": self._mode,
                         "running": self._thread is not None and self._thread.is_alive(),
                         **self._engine.pending(), "splits": self._engine.counters["splits"],
                         **self._rb, "last_error": self._rb_error}
            return {"type": "spann", "documents": len(self._labels), "applied_seq": self.applied_seq,
                    "disk_bytes": dir_bytes(self.path),
                    "memory_bytes": eng.get("memory_bytes", 0), "dim": self.dim, "engine": eng,
                    "rebalance": rebalance,
                    "params": {k: v for k, v in self.params.items() if v is not None}}

    def close(self) -> None:
        """Stop and join the rebalancer (its current step completes; queued work is left
        for the next open), then save the engine unless a transaction is open or the
        rebalancer failed, and close the files."""
        self._stop_rebalancer()
        if not self._store.rollback():
            self._save()
        self._engine.close()
        self._store.close()
