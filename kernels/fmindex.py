"""Token-level FM-index over a corpus of token-id documents (the n-gram index of SEAL).

SEAL (Bevilacqua et al., 2022) constrains generation to n-grams that occur in the corpus with
an FM-index (Ferragina & Manzini, 2000). Here the index is built over the *reversed*
documents, so that each backward-search step extends the generated n-gram to the *right*:
the key ``g1 g2 ... gk`` occurs in a document iff the reversed key ``gk ... g1`` occurs in the
reversed document, and backward search consumes a pattern from its last symbol (``g1``) first.

Construction (numbered as below in the code):

1. text ``T`` (length ``n``): for each document, its token ids + 1 reversed, then the
   separator symbol 0. The alphabet is ``sigma = vocab_size + 1``; n-grams of real tokens never
   contain 0, so no match crosses a document boundary.
2. suffix array ``SA`` of ``T`` (pydivsufsort over the integer array).
3. Burrows-Wheeler transform ``BWT[i] = T[SA[i] - 1]`` (``T[n - 1]`` when ``SA[i] = 0``).
4. ``C[c]`` = number of symbols of ``T`` smaller than ``c`` (``C[sigma] = n``).
5. wavelet matrix over ``BWT`` (Claude, Navarro & Ordonez, 2015): ``levels`` bit planes,
   most significant first, each a bit vector with a rank directory (one cumulative count
   per 64-bit word; popcount inside the word). ``wm_start[c]`` is where position 0 lands
   after descending along ``c``'s bits, so ``rank_c(i) = final(i) - wm_start[c]``.
6. sampled suffix array: rows whose text position is a multiple of ``sample_rate`` or a
   document start are marked (bit vector + rank); ``samples`` holds their text positions in
   row order. ``locate`` walks LF at most ``sample_rate - 1`` times and never crosses a
   separator (document starts are always sampled).

Every query is batched with numpy over arrays of intervals; the structure never loops in
Python over states or occurrences. State of a key = its suffix-array interval ``[lo, hi)``;
``hi - lo`` is the number of occurrences of the key in the corpus. The empty key (root) is
``[0, n)``.

``FMIndexProvider`` wraps an index as a ``ConstraintProvider`` (see
``genseek.kernels.constraints``): ``state_width = 2``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from genseek.atomic import fsync_dir, read_json_header
from genseek.errors import GenseekError

FORMAT = "genseek-fmindex"
VERSION = 1
_MASKS = np.array([(1 << k) - 1 for k in range(64)], dtype=np.uint64)
_ARRAYS = ("C", "wm_words", "wm_cum", "wm_zeros", "wm_start", "marked_words", "marked_cum",
           "samples", "doc_starts")


# ---------------------------------------------------------------------------------------------
# bit vectors with rank


def pack_bits(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pack bool ``[n]`` into ``(words uint64 [n // 64 + 1], cum [n // 64 + 1])``.

    ``cum[j]`` = set bits in ``words[:j]`` (uint32 when it fits, else uint64), so
    ``rank1(i)`` for every ``0 <= i <= n`` reads one word and one count.
    """
    n = int(bits.shape[0])
    n_words = n // 64 + 1
    padded = np.zeros(n_words * 64, dtype=bool)
    padded[:n] = bits
    words = np.packbits(padded, bitorder="little").view("<u8").astype(np.uint64, copy=False)
    ones = np.bitwise_count(words).astype(np.int64)
    cum_dtype = np.uint32 if n < 2**32 else np.uint64
    cum = np.zeros(n_words, dtype=cum_dtype)
    if n_words > 1:
        np.cumsum(ones[:-1], out=cum[1:], dtype=cum_dtype)
    return words, cum


def rank1(words: np.ndarray, cum: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Set bits before each position: int64 ``[M]`` for int64 ``pos [M]`` (``0 <= pos <= n``)."""
    w = pos >> 6
    inside = np.bitwise_count(words[w] & _MASKS[pos & 63])
    return cum[w].astype(np.int64) + inside.astype(np.int64)


def bit_at(words: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The bit at each position: int64 ``[M]`` of 0/1."""
    return ((words[pos >> 6] >> (pos & 63).astype(np.uint64)) & np.uint64(1)).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# wavelet matrix


@dataclass(frozen=True)
class WaveletMatrix:
    """Wavelet matrix over a sequence of ``n`` symbols ``< 2**levels``.

    ``words [levels, n // 64 + 1]`` uint64 bit planes (most significant bit first, each level
    in the stable-partitioned order of the previous one), ``cum`` their rank directories,
    ``zeros [levels]`` the number of 0 bits per level.
    """

    words: np.ndarray
    cum: np.ndarray
    zeros: np.ndarray
    n: int

    @property
    def levels(self) -> int:
        return int(self.words.shape[0])

    @classmethod
    def build(cls, values: np.ndarray, levels: int) -> WaveletMatrix:
        """Phase 5: one stable partition by bit per level (``values``: unsigned ints ``[n]``)."""
        n = int(values.shape[0])
        n_words = n // 64 + 1
        words = np.empty((levels, n_words), dtype=np.uint64)
        cum = np.empty((levels, n_words), dtype=np.uint32 if n < 2**32 else np.uint64)
        zeros = np.empty(levels, dtype=np.int64)
        cur = values
        for level in range(levels):
            bits = ((cur >> (levels - 1 - level)) & 1).astype(bool)
            words[level], cum[level] = pack_bits(bits)
            zeros[level] = n - int(np.count_nonzero(bits))
            cur = np.concatenate([cur[~bits], cur[bits]])
            del bits
        return cls(words, cum, zeros, n)

    def descend(self, symbols: np.ndarray, pos: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Follow ``symbols [M]``'s bits from each array of positions ``[M]`` to the last level."""
        out = [p.astype(np.int64, copy=True) for p in pos]
        for level in range(self.levels):
            bit = ((symbols >> (self.levels - 1 - level)) & 1).astype(bool)
            words, cum, z = self.words[level], self.cum[level], self.zeros[level]
            for p in out:
                r = rank1(words, cum, p)
                np.copyto(p, np.where(bit, z + r, p - r))
        return out

    def access_final(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(symbol, final position)`` of each position ``[M]``: the value and its last-level row."""
        p = pos.astype(np.int64, copy=True)
        sym = np.zeros_like(p)
        for level in range(self.levels):
            words, cum, z = self.words[level], self.cum[level], self.zeros[level]
            bit = bit_at(words, p)
            r = rank1(words, cum, p)
            p = np.where(bit == 1, z + r, p - r)
            sym = (sym << 1) | bit
        return sym, p

    def enumerate(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
        """Distinct symbols of every range ``[lo, hi)`` (breadth-first range enumeration).

        Returns ``(rid, symbol, lo_final, hi_final)``, each int64 ``[K]`` with one entry per
        (range, distinct symbol): ``hi_final - lo_final`` is the symbol's count in the range.
        Work is proportional to the number of tree nodes visited, never to the alphabet.
        """
        rid = np.flatnonzero(hi > lo)
        lo = lo[rid].astype(np.int64)
        hi = hi[rid].astype(np.int64)
        sym = np.zeros_like(lo)
        for level in range(self.levels):
            words, cum, z = self.words[level], self.cum[level], self.zeros[level]
            rlo = rank1(words, cum, lo)
            rhi = rank1(words, cum, hi)
            lo0, hi0 = lo - rlo, hi - rhi
            lo1, hi1 = z + rlo, z + rhi
            m0, m1 = hi0 > lo0, hi1 > lo1
            rid = np.concatenate([rid[m0], rid[m1]])
            sym = np.concatenate([sym[m0] << 1, (sym[m1] << 1) | 1])
            lo = np.concatenate([lo0[m0], lo1[m1]])
            hi = np.concatenate([hi0[m0], hi1[m1]])
        return rid, sym, lo, hi


# ---------------------------------------------------------------------------------------------
# the FM-index


class NextTokens(NamedTuple):
    """Batched answer of ``FMIndex.next_tokens``: one entry per (query interval, next token).

    All int64 ``[K]``, sorted by ``(rid, token)``: ``rid`` indexes the query intervals,
    ``token`` is the external token id, ``count`` its occurrences after the key, and
    ``[lo, hi)`` the interval of the extended key (``hi - lo == count``).
    """

    rid: np.ndarray
    token: np.ndarray
    count: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def _as_documents(docs: Sequence[Sequence[int]] | Sequence[np.ndarray]) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    flat = np.empty(int(lengths.sum()), dtype=np.int64)
    at = 0
    for i, d in enumerate(docs):
        try:
            flat[at:at + lengths[i]] = np.asarray(d, dtype=np.int64)
        except (TypeError, ValueError) as exc:
            raise GenseekError(f"fmindex: document {i} is not a sequence of integer token ids "
                               f"({exc})") from None
        at += int(lengths[i])
    return flat, lengths


class FMIndex:
    """FM-index over reversed documents; see the module docstring for the layout.

    Attributes (all numpy, memory-mapped after ``load``): ``C [sigma + 1]`` int64,
    ``wm`` (WaveletMatrix over the BWT), ``wm_start [sigma]`` int64, ``marked_words`` /
    ``marked_cum`` (sampled rows), ``samples [n_marked]`` text positions,
    ``doc_starts [n_docs + 1]`` int64 (start of each reversed document in ``T``; the last
    entry is ``n``), ``text [n]`` (``T`` itself, kept for rebuilding segments; may be None).
    """

    def __init__(self, *, vocab_size: int, sample_rate: int, C: np.ndarray, wm: WaveletMatrix,
                 wm_start: np.ndarray, marked_words: np.ndarray, marked_cum: np.ndarray,
                 samples: np.ndarray, doc_starts: np.ndarray, text: np.ndarray | None):
        self.vocab_size = int(vocab_size)
        self.sample_rate = int(sample_rate)
        self.C = C
        self.wm = wm
        self.wm_start = wm_start
        self.marked_words = marked_words
        self.marked_cum = marked_cum
        self.samples = samples
        self.doc_starts = doc_starts
        self.text = text
        self.n = int(wm.n)
        self.n_docs = int(doc_starts.shape[0]) - 1

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def build(cls, docs: Sequence[Sequence[int]], vocab_size: int, *, sample_rate: int = 32,
              keep_text: bool = True) -> FMIndex:
        """Index ``docs`` (each a sequence of token ids in ``[0, vocab_size)``)."""
        flat, lengths = _as_documents(docs)
        return cls.build_flat(flat, lengths, vocab_size, sample_rate=sample_rate,
                              keep_text=keep_text)

    @classmethod
    def build_flat(cls, tokens: np.ndarray, lengths: np.ndarray, vocab_size: int, *,
                   sample_rate: int = 32, keep_text: bool = True) -> FMIndex:
        """Index documents given as concatenated ``tokens [sum(lengths)]`` and ``lengths [D]``."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) \
                or vocab_size < 1:
            raise GenseekError(f"fmindex: vocab_size must be a positive integer, "
                               f"not {vocab_size!r}")
        if not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1:
            raise GenseekError(f"fmindex: sample_rate must be a positive integer, "
                               f"not {sample_rate!r}")
        tokens = np.asarray(tokens)
        lengths = np.asarray(lengths, dtype=np.int64)
        if tokens.ndim != 1 or lengths.ndim != 1:
            raise GenseekError("fmindex: tokens and lengths must be 1-D arrays")
        if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
            raise GenseekError(f"fmindex: token ids must be integers, not {tokens.dtype}")
        if lengths.size == 0 or tokens.size == 0:
            raise GenseekError("fmindex: empty corpus: at least one document with at least one "
                               "token is needed")
        if (lengths < 0).any() or int(lengths.sum()) != tokens.size:
            raise GenseekError(f"fmindex: document lengths (sum {int(lengths.sum())}) do not "
                               f"match the {tokens.size} tokens given")
        bad = np.flatnonzero((tokens < 0) | (tokens >= vocab_size))
        if bad.size:
            doc = int(np.searchsorted(np.cumsum(lengths), bad[0], side="right"))
            raise GenseekError(f"fmindex: token id {int(tokens[bad[0]])} in document {doc} is "
                               f"out of range [0, {vocab_size})")
        sigma = int(vocab_size) + 1
        levels = max(1, int(sigma - 1).bit_length())
        n_docs = int(lengths.shape[0])
        n = int(tokens.size) + n_docs
        sym_dtype = np.uint16 if sigma <= 2**16 else np.uint32
        pos_dtype = np.uint32 if n < 2**32 else np.uint64

        # 1. T = reversed(doc + 1) + separator 0, for each document
        doc_starts = np.zeros(n_docs + 1, dtype=np.int64)
        np.cumsum(lengths + 1, out=doc_starts[1:])
        text = np.zeros(n, dtype=sym_dtype)
        # token g (global index) of document d goes to start_d + len_d - 1 - (g - cumlen_d)
        # = (2 * cumlen_d + d + len_d - 1) - g, since start_d = cumlen_d + d
        idx_dtype = np.int32 if n < 2**31 else np.int64  # halves the build's peak memory
        cumlen = doc_starts[:-1] - np.arange(n_docs)
        where = np.repeat((2 * cumlen + np.arange(n_docs) + lengths - 1).astype(idx_dtype),
                          lengths)
        where -= np.arange(tokens.size, dtype=idx_dtype)
        text[where] = tokens.astype(sym_dtype) + sym_dtype(1)
        del where, cumlen

        # 2. suffix array
        import pydivsufsort

        sa = pydivsufsort.divsufsort(text)

        # 3. BWT
        prev = sa - 1  # int32 when n < 2**31
        prev[prev < 0] = n - 1
        bwt = text[prev]
        del prev

        # 4. C array
        counts = np.bincount(text, minlength=sigma).astype(np.int64)
        C = np.zeros(sigma + 1, dtype=np.int64)
        np.cumsum(counts, out=C[1:])

        # 5. wavelet matrix over the BWT, and where row 0 lands for each symbol
        wm = WaveletMatrix.build(bwt, levels)
        del bwt
        all_syms = np.arange(sigma, dtype=np.int64)
        (wm_start,) = wm.descend(all_syms, [np.zeros(sigma, dtype=np.int64)])

        # 6. sampled suffix array: text positions that are multiples of the rate or doc starts
        is_start = np.zeros(n, dtype=bool)
        is_start[doc_starts[:-1]] = True
        marked = (sa % sample_rate == 0) | is_start[sa]
        del is_start
        marked_words, marked_cum = pack_bits(marked)
        samples = sa[marked].astype(pos_dtype)
        del sa, marked

        return cls(vocab_size=int(vocab_size), sample_rate=int(sample_rate), C=C, wm=wm,
                   wm_start=wm_start, marked_words=marked_words, marked_cum=marked_cum,
                   samples=samples, doc_starts=doc_starts, text=text if keep_text else None)

    # -- queries ------------------------------------------------------------------------------

    @property
    def root(self) -> tuple[int, int]:
        """The interval of the empty key: every row."""
        return 0, self.n

    def _check_tokens(self, tokens: np.ndarray) -> None:
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            bad = tokens[(tokens < 0) | (tokens >= self.vocab_size)][0]
            raise GenseekError(f"fmindex: token id {int(bad)} is out of range "
                               f"[0, {self.vocab_size})")

    def extend(self, lo: np.ndarray, hi: np.ndarray, tokens: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """One backward-search step per row: the intervals of ``key + token`` (int64 ``[M]``).

        ``lo, hi, tokens``: int ``[M]``. Empty input intervals stay empty.
        """
        tokens = np.asarray(tokens, dtype=np.int64)
        self._check_tokens(tokens)
        sym = tokens + 1
        lo_f, hi_f = self.wm.descend(sym, [np.asarray(lo), np.asarray(hi)])
        base = self.C[sym] - self.wm_start[sym]
        new_lo, new_hi = base + lo_f, base + hi_f
        empty = (np.asarray(hi) <= np.asarray(lo)) | (new_hi <= new_lo)
        new_lo[empty] = -1  # the dead state of genseek.kernels.constraints
        new_hi[empty] = -1
        return new_lo, new_hi

    def interval(self, ngram: Sequence[int]) -> tuple[int, int]:
        """Suffix-array interval ``[lo, hi)`` of an n-gram (``(-1, -1)`` when absent)."""
        lo = np.array([0], dtype=np.int64)
        hi = np.array([self.n], dtype=np.int64)
        for tok in ngram:
            lo, hi = self.extend(lo, hi, np.array([tok], dtype=np.int64))
            if hi[0] <= lo[0]:
                return -1, -1
        return int(lo[0]), int(hi[0])

    def count(self, ngram: Sequence[int]) -> int:
        """Occurrences of ``ngram`` in the corpus (the empty n-gram counts every token)."""
        if len(ngram) == 0:
            return self.n - self.n_docs
        lo, hi = self.interval(ngram)
        return max(0, hi - lo)

    def next_tokens(self, lo: np.ndarray, hi: np.ndarray) -> NextTokens:
        """Distinct next tokens of every interval, with counts and extended intervals.

        ``lo, hi``: int ``[M]``. The root interval ``[0, n)`` is answered from ``C`` directly
        (its fan-out is the whole vocabulary); other intervals by wavelet range enumeration.
        """
        lo = np.asarray(lo, dtype=np.int64)
        hi = np.asarray(hi, dtype=np.int64)
        # beams often share a key: answer each distinct interval once, then expand
        pairs, inverse = np.unique(np.stack([lo, hi], axis=1), axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        u_rid, sym, new_lo, new_hi = self._next_unique(pairs[:, 0], pairs[:, 1])
        if pairs.shape[0] == lo.shape[0] and np.array_equal(inverse, np.arange(lo.shape[0])):
            rid = u_rid
        else:
            per = np.bincount(u_rid, minlength=pairs.shape[0])
            first = np.cumsum(per) - per
            # rows of each query, in query order: query q takes u-rows first[u]..first[u]+per[u]
            counts = per[inverse]
            rid = np.repeat(np.arange(lo.shape[0]), counts)
            take = np.repeat(first[inverse] - (np.cumsum(counts) - counts), counts) \
                + np.arange(rid.shape[0])
            sym, new_lo, new_hi = sym[take], new_lo[take], new_hi[take]
        return NextTokens(rid, sym - 1, new_hi - new_lo, new_lo, new_hi)

    def _next_unique(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(rid, symbol, lo, hi)`` sorted by ``(rid, symbol)`` for distinct intervals."""
        is_root = (lo == 0) & (hi == self.n)
        sub = np.flatnonzero(~is_root)
        rid, sym, lo_f, hi_f = self.wm.enumerate(lo[sub], hi[sub])
        rid = sub[rid]
        keep = sym != 0  # the separator ends a document: it never extends a key
        rid, sym, lo_f, hi_f = rid[keep], sym[keep], lo_f[keep], hi_f[keep]
        base = self.C[sym] - self.wm_start[sym]
        new_lo, new_hi = base + lo_f, base + hi_f
        roots = np.flatnonzero(is_root)
        if roots.size:
            present = np.flatnonzero(np.diff(self.C[1:]) > 0) + 1  # symbols >= 1 in T
            r_rid = np.repeat(roots, present.size)
            r_sym = np.tile(present, roots.size)
            rid = np.concatenate([rid, r_rid])
            sym = np.concatenate([sym, r_sym])
            new_lo = np.concatenate([new_lo, self.C[r_sym]])
            new_hi = np.concatenate([new_hi, self.C[r_sym + 1]])
        order = np.lexsort((sym, rid))
        return rid[order], sym[order], new_lo[order], new_hi[order]

    def locate(self, lo: int, hi: int, limit: int | None = None) -> np.ndarray:
        """Text positions (in ``T``) of the rows ``[lo, hi)`` (the first ``limit`` rows): int64."""
        if limit is not None:
            hi = min(hi, lo + int(limit))
        rows = np.arange(lo, max(lo, hi), dtype=np.int64)
        pos = np.zeros(rows.size, dtype=np.int64)
        steps = np.zeros(rows.size, dtype=np.int64)
        todo = np.arange(rows.size)
        for _ in range(self.sample_rate + 1):
            if todo.size == 0:
                break
            r = rows[todo]
            hit = bit_at(self.marked_words, r) == 1
            done = todo[hit]
            ranks = rank1(self.marked_words, self.marked_cum, r[hit])
            pos[done] = self.samples[ranks].astype(np.int64) + steps[done]
            todo = todo[~hit]
            # LF step: the row of the suffix one position to the left
            sym, fin = self.wm.access_final(rows[todo])
            rows[todo] = self.C[sym] + fin - self.wm_start[sym]
            steps[todo] += 1
        if todo.size:  # pragma: no cover - impossible for a consistent index
            raise GenseekError("fmindex: corrupted sampled suffix array (locate did not end)")
        return pos

    def locate_docs(self, lo: int, hi: int, limit: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """``(doc indices, occurrences)`` of the rows ``[lo, hi)``: sorted unique int64 arrays."""
        pos = self.locate(lo, hi, limit)
        docs = np.searchsorted(self.doc_starts, pos, side="right") - 1
        return np.unique(docs, return_counts=True)

    def document(self, d: int) -> np.ndarray:
        """Token ids (forward order) of document ``d``; needs the stored text."""
        if self.text is None:
            raise GenseekError("fmindex: this index was built without its text")
        start, end = int(self.doc_starts[d]), int(self.doc_starts[d + 1]) - 1
        return np.asarray(self.text[start:end][::-1], dtype=np.int64) - 1

    def nbytes(self) -> dict[str, int]:
        """Bytes of each array (what ``save`` writes, before headers)."""
        out = {name: int(getattr(self, name).nbytes) for name in ("C", "wm_start",
                                                                  "marked_words", "marked_cum",
                                                                  "samples", "doc_starts")}
        out.update(wm_words=int(self.wm.words.nbytes), wm_cum=int(self.wm.cum.nbytes),
                   wm_zeros=int(self.wm.zeros.nbytes))
        if self.text is not None:
            out["text"] = int(self.text.nbytes)
        return out

    # -- persistence --------------------------------------------------------------------------

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {"C": self.C, "wm_words": self.wm.words, "wm_cum": self.wm.cum,
                  "wm_zeros": self.wm.zeros, "wm_start": self.wm_start,
                  "marked_words": self.marked_words, "marked_cum": self.marked_cum,
                  "samples": self.samples, "doc_starts": self.doc_starts}
        if self.text is not None:
            arrays["text"] = self.text
        return arrays

    def save(self, folder: Path) -> Path:
        """Write ``folder/`` (must not exist): ``header.json`` + one ``.npy`` per array.

        Written into a temporary sibling folder, then renamed (:func:`write_folder`): a crash
        leaves no half index.
        """

        def fill(tmp: Path) -> None:
            meta: dict[str, Any] = {}
            for name, arr in self._arrays().items():
                arr = np.ascontiguousarray(arr)
                save_npy(tmp / f"{name}.npy", arr)
                meta[name] = {"shape": list(arr.shape), "dtype": arr.dtype.str,
                              "crc32": zlib.crc32(memoryview(arr).cast("B"))}
            header = {"format": FORMAT, "version": VERSION, "n": self.n,
                      "n_docs": self.n_docs, "vocab_size": self.vocab_size,
                      "levels": self.wm.levels, "sample_rate": self.sample_rate,
                      "arrays": meta}
            with open(tmp / "header.json", "w", encoding="utf-8") as fh:
                json.dump(header, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())

        return write_folder(folder, fill)

    @classmethod
    def load(cls, folder: Path, *, mmap: bool = True, verify: bool = False) -> FMIndex:
        """Open a saved index (memory-mapped by default).

        Shapes, dtypes and structural invariants are always checked; ``verify=True`` also
        checks every array's CRC-32 (reads the whole index once).
        """
        folder = Path(folder)
        head_path = folder / "header.json"
        header = read_json_header(head_path, "FM-index", FORMAT, VERSION)
        try:
            n, n_docs = int(header["n"]), int(header["n_docs"])
            vocab_size, levels = int(header["vocab_size"]), int(header["levels"])
            sample_rate = int(header["sample_rate"])
            meta = header["arrays"]
            names = list(_ARRAYS) + (["text"] if "text" in meta else [])
            arrays: dict[str, np.ndarray] = {}
            for name in names:
                arrays[name] = _load_array(folder / f"{name}.npy", meta[name], mmap, verify)
        except (KeyError, TypeError, ValueError) as exc:
            raise GenseekError(f"{head_path}: malformed FM-index header ({exc!r})") from None
        sigma = vocab_size + 1
        n_words = n // 64 + 1
        expect = {"C": (sigma + 1,), "wm_words": (levels, n_words), "wm_cum": (levels, n_words),
                  "wm_zeros": (levels,), "wm_start": (sigma,), "marked_words": (n_words,),
                  "marked_cum": (n_words,), "doc_starts": (n_docs + 1,), "text": (n,)}
        for name, shape in expect.items():
            if name in arrays and tuple(arrays[name].shape) != shape:
                raise GenseekError(f"{folder / (name + '.npy')}: shape "
                                   f"{tuple(arrays[name].shape)}, expected {shape}")
        if int(arrays["C"][-1]) != n or int(arrays["doc_starts"][-1]) != n \
                or levels < max(1, (sigma - 1).bit_length()):
            raise GenseekError(f"{folder}: inconsistent FM-index (C, doc_starts or levels do "
                               f"not match n = {n})")
        wm = WaveletMatrix(arrays["wm_words"], arrays["wm_cum"], np.asarray(arrays["wm_zeros"]),
                           n)
        return cls(vocab_size=vocab_size, sample_rate=sample_rate, C=np.asarray(arrays["C"]),
                   wm=wm, wm_start=np.asarray(arrays["wm_start"]),
                   marked_words=arrays["marked_words"], marked_cum=arrays["marked_cum"],
                   samples=arrays["samples"], doc_starts=np.asarray(arrays["doc_starts"]),
                   text=arrays.get("text"))


def save_npy(path: Path, arr: np.ndarray) -> None:
    """Write one array durably (fsynced, ``allow_pickle=False``)."""
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def write_folder(final: Path, fill: Callable[[Path], None]) -> Path:
    """Create the folder ``final`` (which must not exist) atomically: ``fill(tmp)`` writes a
    temporary sibling folder, whose entries are fsynced before it is renamed into place.
    (Also how the docid stores of ``genseek.indexers`` write their segments.)"""
    final = Path(final)
    if final.exists():
        raise GenseekError(f"{final}: already exists; such a folder is written once")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        fill(tmp)
        for sub, _, _ in os.walk(tmp):  # every entry ``fill`` made, in subfolders too
            fsync_dir(Path(sub))
        os.rename(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _load_array(path: Path, meta: dict[str, Any], mmap: bool, verify: bool) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise GenseekError(f"{path}: missing FM-index array") from None
    except (OSError, ValueError, EOFError) as exc:
        raise GenseekError(f"{path}: unreadable or truncated array ({exc})") from None
    if list(arr.shape) != list(meta["shape"]) or arr.dtype.str != meta["dtype"]:
        raise GenseekError(f"{path}: shape {list(arr.shape)} dtype {arr.dtype.str}, header says "
                           f"{meta['shape']} {meta['dtype']}")
    if verify and zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B")) != meta["crc32"]:
        raise GenseekError(f"{path}: checksum mismatch (the file is corrupted)")
    return arr


# ---------------------------------------------------------------------------------------------
# constraint provider


def pad_candidates(n_states: int, rid: np.ndarray, columns: Sequence[np.ndarray],
                   fills: Sequence[int]) -> tuple[int, list[np.ndarray]]:
    """Scatter flat per-(state, candidate) columns sorted by ``rid`` into ``[N, F, ...]`` arrays.

    ``rid [K]`` sorted; each column is ``[K]`` or ``[K, S]``. Returns ``(F, padded arrays)``
    with ``F = max(1, largest fan-out)``; padding is ``fills[i]``.
    """
    per = np.bincount(rid, minlength=n_states)
    fan = max(1, int(per.max()) if per.size else 1)
    first = np.cumsum(per) - per
    col = np.arange(rid.size, dtype=np.int64) - first[rid]
    out = []
    for values, fill in zip(columns, fills, strict=True):
        arr = np.full((n_states, fan) + values.shape[1:], fill, dtype=np.int64)
        arr[rid, col] = values
        out.append(arr)
    return fan, out


class FMIndexProvider:
    """``ConstraintProvider`` over one FM-index: state ``[lo, hi)`` (``state_width = 2``).

    ``step`` answers the whole batch with one device->host and one host->device transfer;
    candidates are the distinct next tokens of each state's interval, with their counts.
    ``is_terminal`` is True for any non-empty key that occurs (every n-gram is a valid key).
    """

    state_width = 2

    def __init__(self, index: FMIndex):
        self.index = index

    def root(self, n: int, device: Any = None):
        import torch

        states = torch.zeros((n, 2), dtype=torch.int64, device=device)
        states[:, 1] = self.index.n
        return states

    def step(self, states):
        """``states [N, 2]`` -> Candidates(tokens [N, F], next_states [N, F, 2], counts [N, F])."""
        import torch

        from genseek.kernels.constraints import Candidates

        host = states.detach().to("cpu").numpy()
        nt = self.index.next_tokens(host[:, 0], host[:, 1])
        _, (tokens, nxt, counts) = pad_candidates(
            host.shape[0], nt.rid, [nt.token, np.stack([nt.lo, nt.hi], axis=1), nt.count],
            [-1, -1, 0])
        dev = states.device
        return Candidates(torch.from_numpy(tokens).to(dev), torch.from_numpy(nxt).to(dev),
                          torch.from_numpy(counts).to(dev))

    def is_terminal(self, states):
        lo, hi = states[:, 0], states[:, 1]
        return (hi > lo) & ~((lo == 0) & (hi == self.index.n))

    def state_counts(self, states):
        """Occurrences of each state's key: int64 ``[N]`` (the root counts every row)."""
        return fm_state_counts(states)


def fm_state_counts(states):
    """Occurrences of each key from FM states ``[N, 2k]`` (k segments side by side): ``[N]``.

    Sums ``max(hi - lo, 0)`` over the segments, so it also reads ``UnionProvider`` states of
    FM-index segments (dead segments hold ``[-1, -1)`` and add 0).
    """
    pairs = states.reshape(states.shape[0], -1, 2)
    return (pairs[..., 1] - pairs[..., 0]).clamp(min=0).sum(dim=1)


def below_count_threshold(counts, threshold: int):
    """Stop rule of SEAL: True where a key occurs at most ``threshold`` times (and at least once).

    ``counts``: int tensor or array of any shape (``Candidates.counts`` or a provider's
    ``state_counts``); padding entries (count 0) are False.
    """
    return (counts > 0) & (counts <= threshold)
