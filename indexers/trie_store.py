"""Persistent, incrementally updatable CSR-trie docid store (Lucene-style segments).

Layout of a store folder::

    store.json                   manifest: format, vocab_size, generation, segments in order
    seg_000001/header.json       {"format": "genseek-trie-segment", "vocab_size", "num_docs", ...}
    seg_000001/<array>.npy       indptr, edge_token, parent, level_ptr, term_nodes, term_ptr,
                                 term_docs, docid_blob (utf-8 bytes), docid_off (int64 [n+1])
    seg_000001.del.000007.npy    int64 sorted doc numbers deleted from that segment (tombstones)

The first segment is the *main* segment, later ones are *deltas*. ``update`` writes one new
delta segment (the upserted docs) and new tombstone files for every older segment that held a
deleted or replaced doc id, then swaps the manifest atomically (temp file + rename); files no
longer referenced are removed afterwards. Nothing is pickled: numpy ``.npy`` with
``allow_pickle=False`` and JSON only. ``merge`` folds all live docs into a new main segment.

At query time ``provider()`` is a UnionProvider over the segments (each pruned by its
tombstones, so deleted docids are never offered), and ``decode(state)`` maps a hypothesis'
final union state to the live doc ids ending there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genseek.atomic import atomic_write_json, fsync_dir, read_json_header
from genseek.errors import GenseekError
from genseek.kernels.constraints import ConstraintProvider, UnionProvider
from genseek.kernels.trie import Trie, TrieConstraint, build_trie_flat, trie_from_arrays

STORE_FORMAT = "genseek-trie-store"
SEGMENT_FORMAT = "genseek-trie-segment"
FORMAT_VERSION = 1
_ARRAYS = ("indptr", "edge_token", "parent", "level_ptr", "term_nodes", "term_ptr",
           "term_docs", "docid_blob", "docid_off")


@dataclass
class Segment:
    """One immutable trie segment plus its (replaceable) tombstones.

    doc_ids[i] is doc number ``i``; ``deleted`` is a sorted int64 array of doc numbers.
    """

    name: str
    trie: Trie
    doc_ids: list[str]
    deleted: np.ndarray
    tombstone_file: str | None

    def live_mask(self) -> np.ndarray:
        mask = np.ones(len(self.doc_ids), dtype=bool)
        mask[self.deleted] = False
        return mask


def _encode_ids(doc_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [d.encode("utf-8") for d in doc_ids]
    off = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=off[1:])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    return blob, off


def _decode_ids(blob: np.ndarray, off: np.ndarray) -> list[str]:
    raw = blob.tobytes()
    return [raw[a:b].decode("utf-8") for a, b in zip(off[:-1].tolist(), off[1:].tolist(),
                                                        strict=True)]


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as exc:
        raise GenseekError(f"{path}: unreadable trie array ({exc})") from exc


def write_segment(folder: Path, name: str, trie: Trie, doc_ids: Sequence[str]) -> int:
    """Write a segment as ``folder/name/`` atomically (temp folder + rename); returns bytes."""
    if len(doc_ids) != trie.num_docs:
        raise ValueError("one doc id per trie doc number expected")
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=folder))
    try:
        blob, off = _encode_ids(doc_ids)
        arrays = {"indptr": trie.indptr, "edge_token": trie.edge_token, "parent": trie.parent,
                  "level_ptr": trie.level_ptr, "term_nodes": trie.term_nodes,
                  "term_ptr": trie.term_ptr, "term_docs": trie.term_docs,
                  "docid_blob": blob, "docid_off": off}
        if trie.num_nodes < 2**31:  # int32 on disk is enough; widened again on load
            arrays["indptr"] = trie.indptr.astype(np.int32)
            arrays["term_ptr"] = trie.term_ptr.astype(np.int32)
        if trie.num_docs < 2**31:
            arrays["term_docs"] = trie.term_docs.astype(np.int32)
        for key, arr in arrays.items():
            _save_npy(tmp / f"{key}.npy", arr)
        header = {"format": SEGMENT_FORMAT, "version": FORMAT_VERSION,
                  "vocab_size": trie.vocab_size, "num_docs": trie.num_docs,
                  "num_nodes": trie.num_nodes, "depth": trie.depth}
        with open(tmp / "header.json", "w", encoding="utf-8") as fh:
            json.dump(header, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(tmp)
        os.rename(tmp, folder / name)
        fsync_dir(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return int(sum(a.nbytes for a in arrays.values()))


def read_segment(folder: Path, mmap: bool = False) -> tuple[Trie, list[str]]:
    """Load a segment folder written by ``write_segment``; bad files raise GenseekError."""
    header = read_json_header(folder / "header.json", "trie segment", SEGMENT_FORMAT,
                              FORMAT_VERSION)
    arr = {key: _load_npy(folder / f"{key}.npy", mmap) for key in _ARRAYS}
    n = int(header["num_docs"])
    if arr["docid_off"].shape != (n + 1,) or arr["term_docs"].shape != (n,) \
            or arr["indptr"].shape != (int(header["num_nodes"]) + 1,):
        raise GenseekError(f"{folder}: array shapes disagree with header.json")
    trie = trie_from_arrays(indptr=arr["indptr"], edge_token=arr["edge_token"],
                            parent=arr["parent"], level_ptr=arr["level_ptr"],
                            term_nodes=arr["term_nodes"], term_ptr=arr["term_ptr"],
                            term_docs=arr["term_docs"], vocab_size=int(header["vocab_size"]))
    return trie, _decode_ids(np.asarray(arr["docid_blob"]), np.asarray(arr["docid_off"]))


class TrieStore:
    """A folder of trie segments with tombstones (see the module docstring).

    ``TrieStore.open(path, vocab_size)`` creates the folder when missing. ``update`` and
    ``merge`` are durable and atomic when they return. Not thread-safe: one writer.
    ``max_segments`` (default 8): an update leaving more segments triggers ``merge``.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], segments: list[Segment],
                 max_segments: int):
        self.path = path
        self.vocab_size = int(manifest["vocab_size"])
        self.generation = int(manifest["generation"])
        self.segments = segments
        self.max_segments = max_segments
        self._providers: dict[str, ConstraintProvider] = {}
        self._where: dict[str, tuple[int, int]] | None = None

    # ---- opening -------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, vocab_size: int | None = None,
             max_segments: int = 8) -> TrieStore:
        path = Path(path)
        manifest_path = path / "store.json"
        if not manifest_path.exists():
            if vocab_size is None:
                raise GenseekError(f"{manifest_path}: no trie store here (give vocab_size "
                                   "to create one)")
            path.mkdir(parents=True, exist_ok=True)
            manifest = {"format": STORE_FORMAT, "version": FORMAT_VERSION,
                        "vocab_size": int(vocab_size), "generation": 0, "segments": []}
            atomic_write_json(manifest_path, manifest)
        manifest = read_json_header(manifest_path, "trie store", STORE_FORMAT, FORMAT_VERSION)
        if vocab_size is not None and int(manifest["vocab_size"]) != int(vocab_size):
            raise GenseekError(f"{manifest_path}: vocab_size is {manifest['vocab_size']}, "
                               f"not {vocab_size}")
        segments = []
        for entry in manifest["segments"]:
            trie, ids = read_segment(path / entry["name"])
            tomb = entry.get("tombstones")
            deleted = (np.asarray(_load_npy(path / tomb, False), dtype=np.int64) if tomb
                       else np.zeros(0, dtype=np.int64))
            segments.append(Segment(entry["name"], trie, ids, deleted, tomb))
        store = cls(path, manifest, segments, max_segments)
        store._collect_garbage()
        return store

    # ---- reading -------------------------------------------------------------------
    def _index(self) -> dict[str, tuple[int, int]]:
        """doc id -> (segment index, doc number) of its live copy."""
        if self._where is None:
            where: dict[str, tuple[int, int]] = {}
            for si, seg in enumerate(self.segments):
                live = seg.live_mask()
                for j, d in enumerate(seg.doc_ids):
                    if live[j]:
                        where[d] = (si, j)
            self._where = where
        return self._where

    def __len__(self) -> int:
        return len(self._index())

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._index()

    def live_items(self) -> Iterable[tuple[str, tuple[int, ...]]]:
        """(doc id, token sequence) of every live doc, segment by segment."""
        for seg in self.segments:
            live = np.flatnonzero(seg.live_mask())
            if live.size == 0:
                continue
            nodes = seg.trie.doc_nodes()[live]
            flat, off = seg.trie.sequences(nodes)
            flat_l = flat.tolist()
            for k, j in enumerate(live.tolist()):
                yield seg.doc_ids[j], tuple(flat_l[off[k]:off[k + 1]])

    def provider(self, device: torch.device | str = "cpu") -> ConstraintProvider:
        """UnionProvider over the segments (tombstoned docs pruned), cached per device."""
        key = str(torch.device(device))
        if key not in self._providers:
            if not self.segments:
                raise GenseekError(f"{self.path}: the trie store holds no documents")
            parts = [TrieConstraint(s.trie, device, s.live_mask() if s.deleted.size else None)
                     for s in self.segments]
            self._providers[key] = UnionProvider(parts)
        return self._providers[key]

    def decode(self, state: Sequence[int]) -> list[str]:
        """Live doc ids ending at a final union state (one node id per segment)."""
        if len(state) != len(self.segments):
            raise ValueError(f"state has {len(state)} columns, store has "
                             f"{len(self.segments)} segments")
        out: list[str] = []
        for seg, node in zip(self.segments, state, strict=True):
            if node < 0:
                continue
            docs = seg.trie.docs_at(int(node))
            if seg.deleted.size:
                docs = docs[~np.isin(docs, seg.deleted)]
            out.extend(seg.doc_ids[int(d)] for d in docs)
        return out

    def stats(self) -> dict[str, Any]:
        return {"segments": len(self.segments), "live_docs": len(self),
                "deleted_docs": int(sum(s.deleted.size for s in self.segments)),
                "nodes": int(sum(s.trie.num_nodes for s in self.segments)),
                "bytes": int(sum(s.trie.nbytes(dense_tables=False) for s in self.segments)),
                "generation": self.generation}

    # ---- writing -------------------------------------------------------------------
    def update(self, upserts: Sequence[tuple[str, Sequence[int]]] = (),
               deletes: Iterable[str] = ()) -> None:
        """Delete ``deletes``, then upsert ``(doc id, token ids)`` pairs (last copy wins).

        Replaced and deleted docs get tombstones in their segments; the upserts form one new
        segment. Durable and atomic on return; a doc id not in the store is ignored on delete.
        """
        new: dict[str, tuple[int, ...]] = {}
        for i, item in enumerate(upserts):
            if not (isinstance(item, tuple | list) and len(item) == 2
                    and isinstance(item[0], str)):
                raise GenseekError(f"trie store update: upsert #{i} must be (doc_id: str, "
                                   "token ids)")
            doc_id, seq = item
            toks = tuple(int(t) for t in seq)
            if any(t < 0 or t >= self.vocab_size for t in toks):
                raise GenseekError(f"trie store update: doc {doc_id!r} has a token id outside "
                                   f"[0, {self.vocab_size})")
            new[doc_id] = toks
        index = self._index()
        kill: dict[int, list[int]] = {}
        for doc_id in list(deletes) + list(new):
            hit = index.get(doc_id)
            if hit is not None:
                kill.setdefault(hit[0], []).append(hit[1])
        if not new and not kill:
            return
        gen = self.generation + 1
        entries = [self._entry(s) for s in self.segments]
        staged: list[tuple[int, np.ndarray, str]] = []
        for si, nums in kill.items():
            seg = self.segments[si]
            deleted = np.union1d(seg.deleted, np.asarray(nums, dtype=np.int64))
            fname = f"{seg.name}.del.{gen:06d}.npy"
            _save_npy(self.path / fname, deleted)
            entries[si]["tombstones"] = fname
            staged.append((si, deleted, fname))
        new_seg: Segment | None = None
        if new:
            ids = list(new)
            seqs = list(new.values())
            lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
            off = np.zeros(len(seqs) + 1, dtype=np.int64)
            np.cumsum(lengths, out=off[1:])
            flat = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(off[-1]))
            trie = build_trie_flat(flat, off, self.vocab_size)
            name = f"seg_{gen:06d}"
            write_segment(self.path, name, trie, ids)
            new_seg = Segment(name, trie, ids, np.zeros(0, dtype=np.int64), None)
            entries.append(self._entry(new_seg))
        self._swap_manifest(gen, entries)
        for si, deleted, fname in staged:
            self.segments[si].deleted = deleted
            self.segments[si].tombstone_file = fname
        if new_seg is not None:
            self.segments.append(new_seg)
        self._changed()
        if len(self.segments) > self.max_segments:
            self.merge()

    def merge(self) -> None:
        """Fold every segment's live docs into one new main segment (atomic)."""
        if len(self.segments) <= 1 and not any(s.deleted.size for s in self.segments):
            return
        ids: list[str] = []
        flats: list[np.ndarray] = []
        lens: list[np.ndarray] = []
        for seg in self.segments:
            live = np.flatnonzero(seg.live_mask())
            flat, off = seg.trie.sequences(seg.trie.doc_nodes()[live])
            flats.append(flat)
            lens.append(np.diff(off))
            ids.extend(seg.doc_ids[j] for j in live.tolist())
        gen = self.generation + 1
        if not ids:
            self._swap_manifest(gen, [])
            self.segments = []
            self._changed()
            return
        lengths = np.concatenate(lens)
        off = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
        np.cumsum(lengths, out=off[1:])
        trie = build_trie_flat(np.concatenate(flats), off, self.vocab_size)
        name = f"seg_{gen:06d}"
        write_segment(self.path, name, trie, ids)
        seg = Segment(name, trie, ids, np.zeros(0, dtype=np.int64), None)
        self._swap_manifest(gen, [self._entry(seg)])
        self.segments = [seg]
        self._changed()

    # ---- internals -----------------------------------------------------------------
    @staticmethod
    def _entry(seg: Segment) -> dict[str, Any]:
        return {"name": seg.name, "tombstones": seg.tombstone_file,
                "num_docs": len(seg.doc_ids), "num_deleted": int(seg.deleted.size)}

    def _swap_manifest(self, gen: int, entries: list[dict[str, Any]]) -> None:
        manifest = {"format": STORE_FORMAT, "version": FORMAT_VERSION,
                    "vocab_size": self.vocab_size, "generation": gen, "segments": entries}
        atomic_write_json(self.path / "store.json", manifest)
        self.generation = gen
        self._collect_garbage(entries)

    def _changed(self) -> None:
        self._providers.clear()
        self._where = None

    def _collect_garbage(self, entries: list[dict[str, Any]] | None = None) -> None:
        """Remove segment folders, tombstone files and temp files the manifest no longer names."""
        if entries is None:
            entries = [self._entry(s) for s in self.segments]
        keep = {"store.json"} | {e["name"] for e in entries} | \
            {e["tombstones"] for e in entries if e.get("tombstones")}
        for child in self.path.iterdir():
            if child.name in keep:
                continue
            if child.name.startswith("seg_") or child.name.startswith(".seg_") \
                    or child.name.startswith(".store.json."):
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
