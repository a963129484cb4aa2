"""The FM-index docid store of SEAL: main + delta token-level FM-indexes with tombstones.

The segments, their update and merge policy, the commit and the folder layout are those of
:class:`genseek.indexers.trie_store.SegmentStore`; each segment here is a
``genseek.kernels.fmindex.FMIndex`` over its documents' tokens (saved as ``index/`` in the
segment folder, memory-mapped when opened; it keeps its text, so a merge reads the documents
back from it).

Tombstones are exact: the tombstoned main documents get their own FM-index (the **tombstone
index**, ``index/`` in the tombstones' folder), and every count is ``sum over the segments -
count in the tombstone index``. That is exact, not an estimate, because the tombstoned
documents are a sub-multiset of the main segment's. So a key is counted, weighted and offered
to decoding by its occurrences in *live* documents only: ``provider()`` is the segments'
``UnionProvider`` wrapped in :class:`TombstonedProvider` when there are tombstones, and a token
whose live count drops to 0 is no longer allowed. ``locate`` drops tombstoned documents.

``count`` and ``locate`` answers are cached per key (bounded; dropped when the segments or the
tombstones change, and by :meth:`FMStore.clear_caches`, e.g. to time a cold search): SEAL counts
a query's n-grams once to pick them and again to weight them, and frequent keys recur across
queries and across the scoring settings of one decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from genseek.errors import GenseekError
from genseek.indexers.trie_store import SegmentStore
from genseek.kernels.constraints import Candidates, ConstraintProvider, UnionProvider
from genseek.kernels.fmindex import FMIndex, FMIndexProvider, fm_state_counts

_PAD_KEY = torch.iinfo(torch.int64).max

#: bounds of the per-key caches: keys counted, and labels located (int64: 16 MB)
COUNT_CACHE_KEYS = 200_000
LOCATE_CACHE_LABELS = 2_000_000


class TombstonedProvider:
    """``base`` (the segments, with counts) minus ``dead`` (the tombstone index).

    State: ``[base state | dead state]`` (``S = S_base + 2``). Each step subtracts the dead
    index's count of every candidate from the base count and drops candidates whose live
    count is 0. Exact, because tombstoned documents are a sub-multiset of the segments'.
    """

    def __init__(self, base: ConstraintProvider, dead: FMIndexProvider):
        self.base = base
        self.dead = dead
        self.base_width = int(base.state_width)
        self.state_width = self.base_width + 2

    def root(self, n: int, device: torch.device | None = None) -> torch.Tensor:
        """``[n, S]``: the base's roots, then the dead index's."""
        return torch.cat([self.base.root(n, device), self.dead.root(n, device)], dim=1)

    def state_counts(self, states: torch.Tensor) -> torch.Tensor:
        """Live occurrences of each state's key: int64 ``[N]``."""
        return (fm_state_counts(states[:, :self.base_width])
                - fm_state_counts(states[:, self.base_width:])).clamp(min=0)

    def is_terminal(self, states: torch.Tensor) -> torch.Tensor:
        """bool ``[N]``: the key is non-empty and occurs in a live document."""
        return self.base.is_terminal(states[:, :self.base_width]) & (self.state_counts(states) > 0)

    def step(self, states: torch.Tensor) -> Candidates:
        """``states [N, S]`` -> Candidates with live counts; dropped tokens are compacted out.

        1. base and dead step on their slices; 2. each base token is looked up in the dead
        row (sorted, batched ``searchsorted``); 3. live = base - dead, keep live > 0;
        4. kept candidates are moved to the front of their row and the width trimmed.
        """
        b = self.base.step(states[:, :self.base_width])
        d = self.dead.step(states[:, self.base_width:])
        assert b.counts is not None and d.counts is not None
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


class FMStore(SegmentStore[FMIndex]):
    """Main + delta FM-indexes with exact tombstones (see the module docstring).

    ``sample_rate`` (default 32) is the suffix-array sampling of the segments it builds.
    """

    FORMAT = "genseek-fm-store"
    WHAT = "FM store"

    def __init__(self, path: Path, vocab_size: int, merge_docs: int = 1000,
                 sample_rate: int = 32):
        super().__init__(path, vocab_size, merge_docs)
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
            raise GenseekError(f"{self.WHAT}: sample_rate must be a positive integer, "
                               f"not {sample_rate!r}")
        self.sample_rate = sample_rate
        self._dead_index: tuple[int, FMIndex] | None = None  # (tombstone_version, index)
        self._provider: ConstraintProvider | None = None
        self.clear_caches()

    # -- the segment structure ------------------------------------------------------------------

    def build(self, seqs: list[np.ndarray]) -> FMIndex:
        return FMIndex.build(seqs, self.vocab_size, sample_rate=self.sample_rate)

    def sequences(self, data: FMIndex, docs: np.ndarray) -> list[np.ndarray]:
        return [data.document(int(d)) for d in docs.tolist()]

    @staticmethod
    def n_docs(data: FMIndex) -> int:
        return data.n_docs

    @staticmethod
    def data_nbytes(data: FMIndex) -> int:
        return int(sum(data.nbytes().values()))

    @staticmethod
    def save_data(data: FMIndex, folder: Path) -> None:
        data.save(folder / "index")

    @staticmethod
    def load_data(folder: Path, verify: bool) -> FMIndex:
        return FMIndex.load(folder / "index", verify=verify)

    def save_tombstone_data(self, folder: Path) -> None:
        dead = self.tombstone_index()
        assert dead is not None
        dead.save(folder / "index")

    def load_tombstone_data(self, folder: Path, verify: bool) -> None:
        self._dead_index = (self.tombstone_version,
                            FMIndex.load(folder / "index", verify=verify))

    def changed(self) -> None:
        self._provider = None
        self.clear_caches()

    # -- queries --------------------------------------------------------------------------------

    def tombstone_index(self) -> FMIndex | None:
        """The FM-index over the tombstoned documents' tokens (None without tombstones)."""
        if self.main is None or not self.dead.any():
            return None
        if self._dead_index is None or self._dead_index[0] != self.tombstone_version:
            docs = self.sequences(self.main.data, np.flatnonzero(self.dead))
            self._dead_index = (self.tombstone_version, FMIndex.build(
                docs, self.vocab_size, sample_rate=self.sample_rate, keep_text=False))
        return self._dead_index[1]

    def clear_caches(self) -> None:
        """Forget the per-key count / locate answers (a cold start, e.g. to time a search)."""
        self._counts: dict[tuple[int, ...], int] = {}
        self._located: dict[tuple[tuple[int, ...], int], np.ndarray] = {}
        self._located_size = 0

    @property
    def total_tokens(self) -> int:
        """Tokens of the live documents."""
        dead = self.tombstone_index()
        return int(sum(s.data.n - s.data.n_docs for s, _ in self.segments)
                   - (dead.n - dead.n_docs if dead is not None else 0))

    def count(self, key: Sequence[int]) -> int:
        """Occurrences of ``key`` (token ids) in the live documents (cached)."""
        k = tuple(int(t) for t in key)
        if k not in self._counts:
            if len(self._counts) >= COUNT_CACHE_KEYS:
                self._counts = {}
            dead = self.tombstone_index()
            self._counts[k] = int(sum(s.data.count(list(k)) for s, _ in self.segments)
                                  - (dead.count(list(k)) if dead is not None else 0))
        return self._counts[k]

    def locate(self, key: Sequence[int], limit: int | None = None) -> np.ndarray:
        """Labels of the live documents containing ``key``: sorted, unique, read-only int64.
        ``limit`` caps the occurrences located per segment (the first rows of each interval,
        tombstoned ones included). Cached."""
        ck = (tuple(int(t) for t in key), -1 if limit is None else int(limit))
        hit = self._located.get(ck)
        if hit is not None:
            return hit
        out = []
        for seg, dead in self.segments:
            lo, hi = seg.data.interval(list(ck[0]))
            if hi > lo:
                docs, _ = seg.data.locate_docs(lo, hi, limit)
                if dead is not None:
                    docs = docs[~dead[docs]]
                out.append(seg.labels[docs])
        found = np.unique(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)
        found.flags.writeable = False  # shared by every caller of the cached answer
        if self._located_size + found.size > LOCATE_CACHE_LABELS:
            self._located, self._located_size = {}, 0
        self._located[ck] = found
        self._located_size += found.size
        return found

    def present(self) -> np.ndarray:
        """bool ``[vocab_size]``: the token occurs in a live document."""
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        dead = self.tombstone_index()
        parts = [(s.data, 1) for s, _ in self.segments]
        if dead is not None:
            parts.append((dead, -1))
        for index, sign in parts:
            counts += sign * np.diff(np.asarray(index.C, dtype=np.int64))[1:self.vocab_size + 1]
        return counts > 0

    def provider(self) -> ConstraintProvider | None:
        """``ConstraintProvider`` over the live documents (None for an empty store), cached
        until the next change: ``state_width`` is 2 per segment, plus 2 with tombstones."""
        if self._provider is None and self.segments:
            parts = [FMIndexProvider(seg.data) for seg, _ in self.segments]
            base: ConstraintProvider = parts[0] if len(parts) == 1 else UnionProvider(parts)
            dead = self.tombstone_index()
            self._provider = base if dead is None else TombstonedProvider(
                base, FMIndexProvider(dead))
        return self._provider

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "corpus_tokens": self.total_tokens}

    def nbytes(self) -> int:
        dead = self.tombstone_index()
        return super().nbytes() + (self.data_nbytes(dead) if dead is not None else 0)
