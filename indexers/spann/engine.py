""":class:`SpannEngine`: SPANN over int64-labelled float32 vectors (squared L2).

Heads (about ``head_ratio`` of the vectors, chosen by hierarchical balanced clustering) live in
memory in a faiss index; every vector is stored under up to ``max_replicas`` heads chosen by
the RNG rule, in posting lists on disk (:mod:`.format`). A search probes the ``nprobe``
nearest heads, drops those farther than ``(1 + eps)`` times the nearest one, reads their
postings with ``os.pread``, filters stale/deleted entries through the version map, removes
duplicates, scores the stored codes and reranks the best ``rerank`` candidates exactly
against the float32 vectors. Splits and garbage collection are :mod:`.maintenance`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from genseek.atomic import atomic_write
from genseek.indexers.spann import maintenance
from genseek.indexers.spann.format import (
    FORMAT_VERSION,
    Codec,
    DataFiles,
    check_vectors,
    grow,
    read_state,
    spann_error,
    write_state,
)
from genseek.kernels import spann as K
from genseek.params import SpannEngineParams
from genseek.protocols import dir_bytes

ENGINE_PARAMS: dict[str, Any] = SpannEngineParams().model_dump()
"""The engine's parameters and their defaults (:class:`genseek.params.SpannEngineParams`)."""
SEARCH_TIME = ("nprobe", "eps", "rerank", "hnsw_ef", "auto_split", "reassign_neighbors",
               "posting_cap", "candidates", "max_replicas", "rng_factor", "closure")
"""Parameters a saved engine may be opened with other values of (the rest are its build's)."""


class SpannEngine:
    """SPANN over labelled vectors; see the module docstring. Not thread-safe by itself."""

    def __init__(self, path: Path, dim: int, params: dict[str, Any] | None = None):
        self.params = SpannEngineParams.resolve(params)
        if not isinstance(dim, int) or dim <= 0:
            raise spann_error(f"dim must be a positive integer, not {dim!r}")
        self.path = Path(path)
        self.dim = dim
        self.codec = Codec(str(self.params["codec"]), dim, int(self.params["pq_m"]))
        self.rec = self.codec.record_dtype()
        self.files = DataFiles(self.path, dim, self.codec)
        # slots: one per stored vector version
        self.labels = np.zeros(0, np.int64)     # slot -> external label
        self.alive = np.zeros(0, bool)          # slot -> not deleted
        self.versions = np.zeros(0, np.uint8)   # slot -> current version (version map)
        self.nslots = 0
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
        self._dead_heads = 0
        self.counters = {"splits": 0, "reassigned": 0, "relocations": 0, "gc_rewrites": 0}
        self.extra: dict[str, Any] = {}
        # rebalancing work (derived state: rebuilt from the directory on load)
        self._queue: dict[int, None] = {}  # oversized live heads, oldest first
        self._stale = 0        # slots invalidated (deleted, replaced, reassigned) since a sweep
        self._sweep = -1       # next head of the running garbage-collection sweep, -1: none
        self._sweep_stale = 0  # the stale estimate the running sweep started from

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

    # -- vectors and postings -------------------------------------------------------------

    def _append_vectors(self, x: np.ndarray) -> np.ndarray:
        """Write rows for new slots; returns the slots ``[n]``."""
        start = self.nslots
        self.files.append_vectors(x, start)
        self.nslots += len(x)
        self.labels = grow(self.labels, self.nslots)
        self.alive = grow(self.alive, self.nslots, False)
        self.versions = grow(self.versions, self.nslots)
        return np.arange(start, start + len(x), dtype=np.int64)

    def _vectors(self, slots: np.ndarray) -> np.ndarray:
        """float32 rows ``[len(slots), dim]`` read from ``vectors.f32``."""
        return self.files.vectors(slots, self.nslots)

    def _records(self, slots: np.ndarray, codes: np.ndarray,
                 versions: np.ndarray | None = None) -> np.ndarray:
        """Posting records of ``slots [n]`` with their ``codes [n, size]`` (version 0 unless
        ``versions [n]`` are given)."""
        recs = np.zeros(len(slots), self.rec)
        recs["slot"] = slots
        if versions is not None:
            recs["ver"] = versions
        recs["code"] = codes
        return recs

    def _new_head_ids(self, n: int) -> np.ndarray:
        ids = np.arange(self.nheads, self.nheads + n, dtype=np.int64)
        self.nheads += n
        for name, fill in (("head_alive", False), ("post_off", 0), ("post_cap", 0),
                           ("post_cnt", 0), ("post_crc", 0)):
            setattr(self, name, grow(getattr(self, name), self.nheads, fill))
        self.head_alive[ids] = True
        return ids

    def _write_region(self, head: int, records: np.ndarray) -> None:
        """Put ``records`` in a fresh region at the end of the file (copy on write)."""
        off, cap, crc = self.files.write_region(head, records)
        self.post_off[head], self.post_cap[head] = off, cap
        self.post_cnt[head], self.post_crc[head] = len(records), crc
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
        return self.files.read_region(head, int(self.post_off[head]), int(self.post_cnt[head]))

    def _append(self, head: int, records: np.ndarray) -> None:
        cnt, cap = int(self.post_cnt[head]), int(self.post_cap[head])
        if cnt + len(records) <= cap:
            self.post_crc[head] = self.files.append_records(int(self.post_off[head]), cnt,
                                                            records, int(self.post_crc[head]))
            self.post_cnt[head] = cnt + len(records)
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

    # -- build and updates ----------------------------------------------------------------

    def _checked(self, x: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(x float32 [n, dim], labels int64 [n])``, or a clear error."""
        x = check_vectors(x, self.dim, "vectors")
        labels = np.asarray(labels, np.int64).ravel()
        if len(labels) != len(x):
            raise spann_error(f"{len(x)} vectors but {len(labels)} labels")
        return x, labels

    def build(self, x: Any, labels: Any, progress: bool = False) -> None:
        """(Re)build from vectors ``x [n, dim]`` with int64 ``labels [n]`` (unique)."""
        x, labels = self._checked(x, labels)
        if len(np.unique(labels)) != len(labels):
            raise spann_error("labels must be unique")
        if len(x) == 0:
            raise spann_error("cannot build an index from no vectors")
        self.files.close()
        self.__init__(self.path, self.dim, self.params)  # type: ignore[misc]
        self.files.open(create=True)
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
            self._write_region(h, self._records(slots[members], codes[members]))
        self._sorted = None
        self.rebalance()

    def insert(self, x: Any, labels: Any) -> None:
        """Add vectors ``x [n, dim]`` with new int64 ``labels [n]`` (an existing label is
        replaced). Appends to the nearest postings and splits the ones that overflow."""
        x, labels = self._checked(x, labels)
        if len(x) == 0:
            return
        if len(np.unique(labels)) != len(labels):
            raise spann_error("labels in one insert must be unique")
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
            members = slots[vec_i[s:e]]
            self._append(int(h), self._records(members, codes[vec_i[s:e]],
                                               self.versions[members]))

    def delete(self, labels: Any, missing_ok: bool = False) -> int:
        """Mark ``labels`` deleted in the version map; returns how many were live."""
        labels = np.asarray(labels, np.int64).ravel()
        if self.heads is None or len(labels) == 0:
            return 0
        slots = self._lookup(labels)
        if not missing_ok and (slots < 0).any():
            raise spann_error(f"label {int(labels[slots < 0][0])} is not in the index")
        slots = slots[slots >= 0]
        self.alive[slots] = False
        self._stale += len(slots)
        self._sorted = None
        return len(slots)

    # -- rebalancing (splits and garbage collection: .maintenance) -------------------------

    def rebalance(self, only_oversized: bool = False, max_rounds: int = 64,
                  limit: int | None = None) -> int:
        """Split every posting holding more than ``limit`` entries (SPFresh), synchronously.

        ``limit`` defaults to ``2 * posting_cap``. With ``only_oversized`` false it also
        rewrites postings whose stale entries exceed half of their length (garbage
        collection of the whole index). Returns the splits made.
        """
        return maintenance.rebalance(self, only_oversized, max_rounds, limit)

    def rebalance_step(self, gc_batch: int = 32) -> bool:
        """One small, bounded unit of rebalancing (:func:`maintenance.rebalance_step`);
        False when there was nothing to do."""
        return maintenance.rebalance_step(self, gc_batch)

    def has_pending_work(self) -> bool:
        """Whether :meth:`rebalance_step` has anything to do."""
        return maintenance.has_pending_work(self)

    def pending(self) -> dict[str, Any]:
        """Rebalancing work waiting: ``queued`` oversized postings, whether a garbage
        collection sweep is running or due (``gc_pending``), ``stale_estimate`` slots."""
        return maintenance.pending(self)

    def _split(self, head: int) -> int:
        """2-means split of one posting, then LIRE reassignment near the boundary."""
        return maintenance.split(self, head)

    # -- search -------------------------------------------------------------------------

    def search(self, q: Any, k: int, nprobe: int | None = None, eps: float | None = None,
               rerank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` labels and exact squared distances: ``(d2 [nq, k], labels [nq, k])``.

        Rows are padded with ``inf`` / -1 when fewer than ``k`` candidates were found.
        """
        if self.heads is None or self.count == 0:
            raise spann_error("the index is empty: add vectors before searching")
        q = check_vectors(q, self.dim, "query vectors")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise spann_error(f"k must be a positive integer, not {k!r}")
        if k > self.count:
            raise spann_error(f"k={k} is larger than the {self.count} vectors in the index")
        nprobe = int(self.params["nprobe"] if nprobe is None else nprobe)
        eps = float(self.params["eps"] if eps is None else eps)
        rerank = max(int(self.params["rerank"] if rerank is None else rerank), k)
        if nprobe < 1 or eps < 0:
            raise spann_error("nprobe must be >= 1 and eps >= 0")
        hd2, hids = self._search_heads(q, nprobe)
        keep = K.prune_heads(hd2, eps) & (hids >= 0)
        out_d = np.full((len(q), k), np.inf, np.float32)
        out_l = np.full((len(q), k), -1, np.int64)
        for i in range(len(q)):
            chunks = [self.files.raw_records(int(h), int(self.post_off[h]), int(self.post_cnt[h]))
                      for h in hids[i][keep[i]] if self.post_cnt[h]]
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

    _SLOT_ARRAYS = ("labels", "alive", "versions")
    _HEAD_ARRAYS = ("head_alive", "post_off", "post_cap", "post_cnt", "post_crc")
    _ARRAYS = _SLOT_ARRAYS + _HEAD_ARRAYS

    def save(self, extra: dict[str, Any] | None = None) -> None:
        """Write the directory atomically (after syncing the data files)."""
        if self.heads is None:
            return
        self.files.sync()
        self._gen += 1
        head_file = self.path / f"heads-{self._gen}.faiss"
        heads = self.heads
        atomic_write(head_file, lambda tmp: faiss.write_index(heads, tmp))
        n, h = self.nslots, self.nheads
        meta = {"format": FORMAT_VERSION, "dim": self.dim, "params": self.params,
                "nslots": n, "nheads": h, "gen": self._gen, "file_end": self.files.end,
                "f32_crc": self.files.f32_crc, "dead_heads": self._dead_heads,
                "counters": self.counters, "stale": self.pending()["stale_estimate"],
                "extra": extra or {}}
        arrays = {**{name: getattr(self, name)[:n] for name in self._SLOT_ARRAYS},
                  **{name: getattr(self, name)[:h] for name in self._HEAD_ARRAYS}}
        write_state(self.path, meta, {**arrays, **self.codec.tables()})
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
        meta, arrays = read_state(path)
        stored = dict(meta["params"])
        for key, value in (params or {}).items():
            if key in SEARCH_TIME:
                stored[key] = value
            elif key in ENGINE_PARAMS and stored.get(key) != value:
                raise spann_error(f"{path}: parameter {key}={value!r} differs from the saved "
                                  f"{stored.get(key)!r}; rebuild the index to change it")
        eng = cls(path, int(meta["dim"]), stored)
        eng.codec.load_tables(arrays)
        n, h = int(meta["nslots"]), int(meta["nheads"])
        if not (len(arrays["labels"]) == n and len(arrays["head_alive"]) == h
                and len(arrays["post_off"]) == h):
            raise spann_error(f"{path / 'state.npz'}: array lengths do not match its header")
        for name in cls._ARRAYS:
            setattr(eng, name, np.array(arrays[name]))  # writable copies
        eng.nslots, eng.nheads = n, h
        eng._gen, eng.files.end = int(meta["gen"]), int(meta["file_end"])
        eng.files.f32_crc, eng._dead_heads = int(meta["f32_crc"]), int(meta["dead_heads"])
        eng.counters = {**eng.counters, **meta["counters"]}
        eng._stale = int(meta.get("stale", 0))
        eng.extra = dict(meta.get("extra", {}))
        head_file = path / f"heads-{eng._gen}.faiss"
        try:
            eng.heads = faiss.read_index(str(head_file))
        except RuntimeError:
            raise spann_error(f"{head_file} is missing or corrupted") from None
        if eng.heads.ntotal != h or eng.heads.d != eng.dim:
            raise spann_error(f"{head_file} holds {eng.heads.ntotal} heads, expected {h}")
        eng.files.open(create=False)
        eng.files.check(n, eng.post_off[:h], eng.post_cnt[:h], eng.post_crc[:h], verify)
        live = np.nonzero(eng.head_alive[:h])[0]
        eng._queue = dict.fromkeys(int(v) for v in live[eng.post_cnt[live] > eng._split_cap()])
        return eng

    def close(self) -> None:
        self.files.close()

    # -- accounting ---------------------------------------------------------------------

    def memory_bytes(self) -> int:
        """Bytes held in RAM by the structures a search needs (heads, directory, maps)."""
        heads = int(faiss.serialize_index(self.heads).nbytes) if self.heads is not None else 0
        arrays = [getattr(self, name) for name in self._ARRAYS]
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


__all__ = ["ENGINE_PARAMS", "SpannEngine"]
