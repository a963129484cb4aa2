"""Segmented, incrementally updatable store of token-level FM-indexes (SEAL's n-gram index).

Like Lucene segments: one **main** segment plus small **delta** segments, each an immutable
``genseek.kernels.fmindex.FMIndex`` over its documents; deletes are **tombstones**; an
explicit ``merge`` rebuilds one main segment from the live documents.

Layout of ``path/`` (no pickle anywhere)::

    store.json              the commit point (written atomically): vocab_size, sample_rate,
                            generation, segments [{name, n_docs, tokens, tombstones: [local
                            document numbers]}], dead (name of the tombstone index or null)
    seg-000001/index/       FMIndex.save folder (header.json + .npy arrays, memory-mapped)
    seg-000001/doc_ids.npy  external document ids (numpy unicode array), one per document
    dead-000003/...         FM-index over the tokens of every tombstoned document

Queries merge the segments (``count`` and next-token counts add up over segments) and then
**subtract the tombstone index**: every tombstoned document lives in exactly one segment, so
``live count = sum over segments - count in the dead index`` is exact, not an estimate, and a
token whose live count drops to 0 is no longer allowed. ``locate`` drops occurrences in
tombstoned documents. ``provider()`` gives the same answers to constrained decoding: a
``UnionProvider`` over the segments, wrapped in ``TombstonedProvider`` when there are deletes.

An upsert of an existing id tombstones the old copy and adds the new one to a new delta.
Writers: one process at a time (the collection layer holds the lock); readers see the last
committed ``store.json``. Folders not named by ``store.json`` (left by a crash between writing
a segment and committing) are removed by the next commit (or ``open(cleanup=True)``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genseek.atomic import atomic_write_json, read_json_header
from genseek.errors import GenseekError
from genseek.kernels.fmindex import FMIndex, FMIndexProvider, fm_state_counts
from genseek.protocols import dir_bytes

FORMAT = "genseek-fmstore"
VERSION = 1
_PAD_KEY = np.iinfo(np.int64).max


class FMSegment:
    """One immutable segment: its FM-index, external ids and (mutable, committed) tombstones."""

    def __init__(self, name: str, index: FMIndex, doc_ids: np.ndarray, tombstones: np.ndarray):
        self.name = name
        self.index = index
        self.doc_ids = doc_ids
        self.dead = np.zeros(index.n_docs, dtype=bool)
        self.dead[tombstones] = True

    @property
    def n_live(self) -> int:
        return int(self.index.n_docs - np.count_nonzero(self.dead))


class EmptyProvider:
    """Provider of a store with no documents: the root is dead, nothing is allowed."""

    state_width = 2

    def root(self, n: int, device: Any = None):
        import torch

        return torch.full((n, 2), -1, dtype=torch.int64, device=device)

    def step(self, states):
        from genseek.kernels.constraints import empty_candidates

        return empty_candidates(states.shape[0], 2, states.device, with_counts=True)

    def is_terminal(self, states):
        import torch

        return torch.zeros(states.shape[0], dtype=torch.bool, device=states.device)


class TombstonedProvider:
    """``base`` (segments, with counts) minus ``dead`` (the tombstone FM-index).

    State: ``[base state | dead state]`` (``S = S_base + 2``). Each step subtracts the dead
    index's count of every candidate from the base count and drops candidates whose live
    count is 0. Exact, because tombstoned documents are a sub-multiset of the segments'.
    """

    def __init__(self, base: Any, dead: FMIndexProvider):
        self.base = base
        self.dead = dead
        self.base_width = int(base.state_width)
        self.state_width = self.base_width + 2

    def root(self, n: int, device: Any = None):
        import torch

        return torch.cat([self.base.root(n, device), self.dead.root(n, device)], dim=1)

    def state_counts(self, states):
        """Live occurrences of each state's key: int64 ``[N]``."""
        return (fm_state_counts(states[:, :self.base_width])
                - fm_state_counts(states[:, self.base_width:])).clamp(min=0)

    def is_terminal(self, states):
        return self.base.is_terminal(states[:, :self.base_width]) & (self.state_counts(states) > 0)

    def step(self, states):
        """``states [N, S]`` -> Candidates with live counts; dropped tokens are compacted out.

        1. base and dead step on their slices; 2. each base token is looked up in the dead
        row (sorted, batched ``searchsorted``); 3. live = base - dead, keep live > 0;
        4. kept candidates are moved to the front of their row and the width trimmed.
        """
        import torch

        from genseek.kernels.constraints import Candidates

        b = self.base.step(states[:, :self.base_width])
        d = self.dead.step(states[:, self.base_width:])
        # 2. lookup of base tokens in the sorted dead rows
        dkeys = torch.where(d.tokens < 0, torch.full_like(d.tokens, _PAD_KEY), d.tokens)
        dkeys, perm = torch.sort(dkeys, dim=1)
        dcounts = torch.gather(d.counts, 1, perm)
        dstates = torch.gather(d.next_states, 1, perm.unsqueeze(2).expand(-1, -1, 2))
        idx = torch.searchsorted(dkeys.contiguous(), b.tokens.contiguous())
        idx = idx.clamp_(max=dkeys.shape[1] - 1)
        hit = (torch.gather(dkeys, 1, idx) == b.tokens) & (b.tokens >= 0)
        dc = torch.where(hit, torch.gather(dcounts, 1, idx), torch.zeros_like(idx))
        ds = torch.gather(dstates, 1, idx.unsqueeze(2).expand(-1, -1, 2))
        ds = torch.where(hit.unsqueeze(2), ds, torch.full_like(ds, -1))
        # 3. live counts
        live = b.counts - dc
        keep = (b.tokens >= 0) & (live > 0)
        # 4. compaction: kept first, in their original order
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
        width = max(int(keep.sum(dim=1).max().item()) if keep.shape[0] else 0, 1)
        order = order[:, :width]
        keep = torch.gather(keep, 1, order)
        tokens = torch.where(keep, torch.gather(b.tokens, 1, order), -1)
        counts = torch.where(keep, torch.gather(live, 1, order), 0)
        nxt = torch.cat([b.next_states, ds], dim=2)
        nxt = torch.gather(nxt, 1, order.unsqueeze(2).expand(-1, -1, self.state_width))
        return Candidates(tokens, nxt, counts)


def _check_ngram(ngram: Sequence[int], vocab_size: int) -> list[int]:
    out = [int(t) for t in ngram]
    for t in out:
        if not 0 <= t < vocab_size:
            raise GenseekError(f"fm_store: token id {t} is out of range [0, {vocab_size})")
    return out


class FMStore:
    """Main + delta FM-index segments with tombstones; see the module docstring."""

    def __init__(self, path: Path, header: dict[str, Any], segments: list[FMSegment],
                 dead: FMIndex | None):
        self.path = Path(path)
        self.vocab_size = int(header["vocab_size"])
        self.sample_rate = int(header["sample_rate"])
        self.generation = int(header["generation"])
        self.segments = segments
        self.dead = dead
        self.dead_name: str | None = header.get("dead")
        self._live: dict[str, tuple[int, int]] = {}
        for s, seg in enumerate(segments):
            for local in np.flatnonzero(~seg.dead):
                self._live[str(seg.doc_ids[local])] = (s, int(local))

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, vocab_size: int, *, sample_rate: int = 32) -> FMStore:
        """A new empty store at ``path`` (a folder that does not exist or is empty)."""
        path = Path(path)
        if (path / "store.json").exists():
            raise GenseekError(f"{path}: an FM store already exists here")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise GenseekError(f"fm_store: vocab_size must be a positive integer, "
                               f"not {vocab_size!r}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
            raise GenseekError(f"fm_store: sample_rate must be a positive integer, "
                               f"not {sample_rate!r}")
        header = {"format": FORMAT, "version": VERSION, "vocab_size": vocab_size,
                  "sample_rate": sample_rate, "generation": 0, "segments": [], "dead": None}
        atomic_write_json(path / "store.json", header)
        return cls(path, header, [], None)

    @classmethod
    def open(cls, path: Path, *, verify: bool = False, cleanup: bool = False,
             _loaded: dict[str, tuple[FMIndex, np.ndarray]] | None = None) -> FMStore:
        """Open a store (arrays memory-mapped); ``verify`` checks every array's CRC-32.

        ``cleanup`` (writers only) removes folders a crashed writer left behind.
        """
        path = Path(path)
        head = path / "store.json"
        header = read_json_header(head, "FM store", FORMAT, VERSION)
        try:
            segments = []
            for entry in header["segments"]:
                folder = path / entry["name"]
                if _loaded and entry["name"] in _loaded:  # segments are immutable
                    index, doc_ids = _loaded[entry["name"]]
                else:
                    index = FMIndex.load(folder / "index", verify=verify)
                    doc_ids = _load_ids(folder / "doc_ids.npy", index.n_docs)
                tomb = np.asarray(entry["tombstones"], dtype=np.int64)
                if tomb.size and (tomb.min() < 0 or tomb.max() >= index.n_docs):
                    raise GenseekError(f"{head}: tombstone out of range in segment "
                                       f"{entry['name']}")
                if index.vocab_size != int(header["vocab_size"]):
                    raise GenseekError(f"{folder}: vocab_size {index.vocab_size}, store says "
                                       f"{header['vocab_size']}")
                segments.append(FMSegment(entry["name"], index, doc_ids, tomb))
            dead = None
            if header["dead"] is not None:
                dead = FMIndex.load(path / header["dead"] / "index", verify=verify)
        except (KeyError, TypeError, ValueError) as exc:
            raise GenseekError(f"{head}: malformed FM store header ({exc!r})") from None
        store = cls(path, header, segments, dead)
        if cleanup:
            store._remove_unreferenced()
        return store

    # -- updates ------------------------------------------------------------------------------

    def apply(self, upserts: Sequence[tuple[str, Sequence[int]]] = (),
              deletes: Iterable[str] = ()) -> None:
        """Add/replace documents ``(doc_id, token ids)`` and delete ids, as one commit.

        New documents go into one new delta segment; replaced and deleted documents are
        tombstoned (unknown ids are ignored, so replaying a change is harmless). Everything is
        validated before anything is written.
        """
        latest: dict[str, np.ndarray] = {}
        for i, item in enumerate(upserts):
            try:
                doc_id, tokens = item
            except (TypeError, ValueError):
                raise GenseekError(f"fm_store: upsert {i} must be a (doc_id, token ids) "
                                   f"pair") from None
            if not isinstance(doc_id, str) or not doc_id:
                raise GenseekError(f"fm_store: upsert {i}: doc_id must be a non-empty string, "
                                   f"not {doc_id!r}")
            try:
                arr = np.asarray(tokens, dtype=np.int64).reshape(-1)
            except (TypeError, ValueError):
                raise GenseekError(f"fm_store: document {doc_id!r}: token ids must be "
                                   f"integers") from None
            if arr.size == 0:
                raise GenseekError(f"fm_store: document {doc_id!r} has no tokens")
            bad = arr[(arr < 0) | (arr >= self.vocab_size)]
            if bad.size:
                raise GenseekError(f"fm_store: document {doc_id!r}: token id {int(bad[0])} is "
                                   f"out of range [0, {self.vocab_size})")
            latest[doc_id] = arr
        gone = {d for d in set(deletes) | set(latest) if d in self._live}
        if not latest and not gone:
            return
        header = self._header()
        gen = self.generation + 1
        header["generation"] = gen
        new_segment = None
        if latest:
            ids = list(latest)
            name = f"seg-{gen:06d}"
            self._write_segment(name, ids, [latest[d] for d in ids])
            new_segment = name
            header["segments"].append({"name": name, "n_docs": len(ids),
                                       "tokens": int(sum(a.size for a in latest.values())),
                                       "tombstones": []})
        for doc_id in gone:
            s, local = self._live[doc_id]
            header["segments"][s]["tombstones"].append(local)
        for entry in header["segments"]:
            entry["tombstones"] = sorted(entry["tombstones"])
        old_dead = self.dead_name
        if gone:
            header["dead"] = self._write_dead(header, gen)
        try:
            atomic_write_json(self.path / "store.json", header)
        except BaseException:
            for name in (new_segment, header["dead"] if gone else None):
                if name:
                    shutil.rmtree(self.path / name, ignore_errors=True)
            raise
        if gone and old_dead:
            shutil.rmtree(self.path / old_dead, ignore_errors=True)
        self._reload()
        self._remove_unreferenced()

    def add(self, docs: Sequence[tuple[str, Sequence[int]]]) -> None:
        """Upsert documents (see ``apply``)."""
        self.apply(upserts=docs)

    def delete(self, doc_ids: Iterable[str]) -> None:
        """Tombstone documents (see ``apply``)."""
        self.apply(deletes=doc_ids)

    def merge(self) -> None:
        """Rebuild one main segment from the live documents; drop deltas and tombstones."""
        live = self.documents()
        header = self._header()
        gen = self.generation + 1
        header.update(generation=gen, dead=None, segments=[])
        if live:
            name = f"seg-{gen:06d}"
            self._write_segment(name, [d for d, _ in live], [t for _, t in live])
            header["segments"] = [{"name": name, "n_docs": len(live),
                                   "tokens": int(sum(t.size for _, t in live)),
                                   "tombstones": []}]
        atomic_write_json(self.path / "store.json", header)
        self._reload()
        self._remove_unreferenced()

    # -- queries ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._live)

    def documents(self) -> list[tuple[str, np.ndarray]]:
        """Every live document ``(doc_id, token ids)``, segment by segment."""
        out = []
        for seg in self.segments:
            for local in np.flatnonzero(~seg.dead):
                out.append((str(seg.doc_ids[local]), seg.index.document(int(local))))
        return out

    def count(self, ngram: Sequence[int]) -> int:
        """Occurrences of a non-empty ``ngram`` in the live documents."""
        ngram = _check_ngram(ngram, self.vocab_size)
        if not ngram:
            raise GenseekError("fm_store: count needs a non-empty n-gram")
        total = sum(seg.index.count(ngram) for seg in self.segments)
        if self.dead is not None:
            total -= self.dead.count(ngram)
        return total

    def next_tokens(self, ngram: Sequence[int]) -> dict[int, int]:
        """``{token: live count of ngram + token}`` for every token that may follow ``ngram``."""
        ngram = _check_ngram(ngram, self.vocab_size)
        out: dict[int, int] = {}
        parts = [(seg.index, 1) for seg in self.segments]
        if self.dead is not None:
            parts.append((self.dead, -1))
        for index, sign in parts:
            lo, hi = index.interval(ngram) if ngram else index.root
            nt = index.next_tokens(np.array([lo]), np.array([hi]))
            for t, c in zip(nt.token.tolist(), nt.count.tolist(), strict=True):
                out[t] = out.get(t, 0) + sign * c
        return {t: c for t, c in sorted(out.items()) if c > 0}

    def locate(self, ngram: Sequence[int], limit: int | None = None) -> dict[str, int]:
        """``{doc_id: occurrences}`` of a non-empty ``ngram`` in live documents.

        ``limit`` caps the occurrences located per segment (the first rows of each interval).
        """
        ngram = _check_ngram(ngram, self.vocab_size)
        if not ngram:
            raise GenseekError("fm_store: locate needs a non-empty n-gram")
        out: dict[str, int] = {}
        for seg in self.segments:
            lo, hi = seg.index.interval(ngram)
            docs, occ = seg.index.locate_docs(lo, hi, limit)
            alive = ~seg.dead[docs]
            for d, c in zip(docs[alive].tolist(), occ[alive].tolist(), strict=True):
                out[str(seg.doc_ids[d])] = c
        return out

    def provider(self) -> Any:
        """``ConstraintProvider`` over the live documents (``state_width = 2 x segments``,
        plus 2 when there are tombstones)."""
        if not self.segments:
            return EmptyProvider()
        parts = [FMIndexProvider(seg.index) for seg in self.segments]
        if len(parts) == 1:
            base: Any = parts[0]
        else:
            from genseek.kernels.constraints import UnionProvider

            base = UnionProvider(parts)
        if self.dead is None:
            return base
        return TombstonedProvider(base, FMIndexProvider(self.dead))

    def stats(self) -> dict[str, Any]:
        """Documents, tokens, segments and bytes on disk."""
        disk = dir_bytes(self.path)
        return {"documents": len(self._live),
                "segments": [{"name": s.name, "documents": s.index.n_docs, "live": s.n_live,
                              "tokens": s.index.n - s.index.n_docs} for s in self.segments],
                "tombstoned_documents": int(sum(np.count_nonzero(s.dead)
                                                for s in self.segments)),
                "vocab_size": self.vocab_size, "bytes_on_disk": disk}

    # -- internals ----------------------------------------------------------------------------

    def _header(self) -> dict[str, Any]:
        return json.loads((self.path / "store.json").read_text(encoding="utf-8"))

    def _reload(self) -> None:
        loaded = {seg.name: (seg.index, seg.doc_ids) for seg in self.segments}
        fresh = FMStore.open(self.path, cleanup=False, _loaded=loaded)
        self.__dict__.update(fresh.__dict__)

    def _write_segment(self, name: str, ids: list[str], docs: list[np.ndarray]) -> None:
        final = self.path / name
        if final.exists():
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.path))
        try:
            FMIndex.build(docs, self.vocab_size, sample_rate=self.sample_rate).save(tmp / "index")
            with open(tmp / "doc_ids.npy", "wb") as fh:
                np.save(fh, np.array(ids, dtype=str), allow_pickle=False)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _write_dead(self, header: dict[str, Any], gen: int) -> str | None:
        """FM-index over every tombstoned document of ``header`` (None when there are none)."""
        docs = []
        for entry, seg in zip(header["segments"], self.segments, strict=False):
            for local in entry["tombstones"]:
                docs.append(seg.index.document(int(local)))
        if not docs:
            return None
        name = f"dead-{gen:06d}"
        final = self.path / name
        if final.exists():
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.path))
        try:
            FMIndex.build(docs, self.vocab_size, sample_rate=self.sample_rate,
                          keep_text=False).save(tmp / "index")
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return name

    def _remove_unreferenced(self) -> None:
        keep = {seg.name for seg in self.segments} | ({self.dead_name} if self.dead_name else set())
        for child in self.path.iterdir():
            if child.is_dir() and child.name not in keep and (
                    child.name.startswith(("seg-", "dead-", ".seg-", ".dead-"))):
                shutil.rmtree(child, ignore_errors=True)


def _load_ids(path: Path, n_docs: int) -> np.ndarray:
    try:
        ids = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise GenseekError(f"{path}: missing document ids") from None
    except (OSError, ValueError, EOFError) as exc:
        raise GenseekError(f"{path}: unreadable or truncated document ids ({exc})") from None
    if ids.dtype.kind != "U" or ids.shape != (n_docs,):
        raise GenseekError(f"{path}: expected {n_docs} string ids, found {ids.dtype} "
                           f"{ids.shape}")
    return ids
