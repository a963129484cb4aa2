"""``genre``: GENRE-style retrieval by decoding a document title under a title trie.

GENRE (De Cao et al., 2021, "Autoregressive Entity Retrieval") generates the title of the
target document token by token, constrained by a prefix tree over the titles of the corpus,
and ranks titles by their sequence log-probability. Here:

1. each live document's title is tokenised (``" " + title``, no special tokens) into a key;
   duplicate titles share one trie leaf, which maps to *all* their documents;
2. a query is rendered with :func:`genseek.retrievers.prompts.build_prompt` (instruction + query,
   cue ``"Title:"``) and decoded with ``genseek.kernels.beam.constrained_beam_search`` under
   the union of the main trie and the delta trie (``UnionProvider``), EOS allowed at the end
   of a complete title;
3. hypotheses are ranked by ``score / length ** length_penalty`` (``length_penalty`` 1.0 by
   default, 0.0 = raw sum of log-probs), each expanded to its documents, tombstoned versions
   dropped.

Incremental: the titles are kept in a :class:`~genseek.indexers.trie_store.TrieStore` (main
trie + delta trie + tombstones, in ``path/store``). A document upserted after the main trie was
built goes into the delta trie (a new document is retrievable as soon as its title is in it, no
retraining); a replaced or deleted version becomes a tombstone, pruned from the constraint and
from every result. When the delta exceeds ``merge_docs`` documents (or tombstones exceed 20% of
the main trie), the update rebuilds the main trie from the live keys. ``keys.sqlite`` is the
source of truth (committed atomically with the applied sequence number); the store is committed
after it with the same number and rebuilt from it when they differ at open.

Documents without a title: ``missing_title=error`` (default) makes ``apply`` raise a
GenseekError naming the document (nothing of the change set is written);
``missing_title=skip`` leaves it out of the trie and counts it in ``stats()["skipped"]``.
A title that tokenises to no token at all is always an error.

Queries longer than the model's context are truncated (token level) so that the prompt
leaves room for ``max_new_tokens``; see ``build_prompt``.

This module also holds :class:`KeyTable`, the persisted ``(version, doc_id, key tokens)``
table, and :class:`KeyTableIndex`, the table + store + LM plumbing that the SEAL and DSI
indexes share.

Spec parameters: ``model`` (smollm2), ``num_beams`` (10), ``max_new_tokens`` (32),
``length_penalty`` (1.0), ``missing_title`` (error | skip), ``merge_docs`` (1000),
``batch_size`` (16 queries per decoding batch), ``instruction`` (the schema:
:class:`genseek.params.GenreParams`).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from genseek.errors import GenseekError
from genseek.indexers.labelstore import LabelStore
from genseek.indexers.trie_store import TrieStore
from genseek.params import (
    DsiParams,
    GenreParams,
    GenreSearchParams,
    NoSearchParams,
    SealParams,
)
from genseek.protocols import dir_bytes
from genseek.types import ChangeSet, Document, Hit, IndexStats

if TYPE_CHECKING:
    from genseek.indexers.fm_store import FMStore

# ---------------------------------------------------------------------------------------------
# the persisted key table (shared by genre, seal and dsi)


_KEY_COLUMNS = ("label INTEGER PRIMARY KEY", "doc_id TEXT NOT NULL", "key BLOB NOT NULL")


class KeyTable:
    """``keys.sqlite``: one row per indexed document version and the sequence number.

    Rows: ``label`` (the document version, unique), ``doc_id``, ``key`` (int32 token ids,
    little-endian bytes). Writes of one change set happen in one transaction that ``commit``
    closes together with the sequence number; ``rows`` mirrors the committed + applied state.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._store = LabelStore(self.path / "keys.sqlite", "keys", _KEY_COLUMNS)
        self.rows: dict[int, tuple[str, np.ndarray]] = {
            int(label): (doc_id, np.frombuffer(blob, dtype="<i4").astype(np.int64))
            for label, doc_id, blob in self._store.select("label, doc_id, key")}

    @property
    def applied_seq(self) -> int:
        return self._store.applied_seq

    def meta(self, key: str) -> str | None:
        return self._store.meta(key)

    def set_meta(self, key: str, value: str) -> None:
        """Set ``key`` in the change set's transaction (committed with the next seq)."""
        self._store.begin()
        self._store.write_meta({key: value})

    def write(self, removed: Iterable[int], added: Sequence[tuple[int, str, np.ndarray]]
              ) -> tuple[list[int], list[int]]:
        """Remove labels, add ``(label, doc_id, key)`` rows; returns (gone, new) labels."""
        gone = [v for v in removed if v in self.rows]
        new = [(v, d, k) for v, d, k in added if v not in self.rows]
        if not gone and not new:
            return [], []
        if gone:
            self._store.delete(gone)
        if new:
            self._store.insert([(v, d, np.asarray(k, dtype="<i4").tobytes()) for v, d, k in new])
        for v in gone:
            del self.rows[v]
        for v, d, k in new:
            self.rows[v] = (d, np.asarray(k, dtype=np.int64))
        return gone, [v for v, _, _ in new]

    def commit(self, seq: int) -> None:
        self._store.commit(seq)

    def close(self) -> None:
        self._store.rollback()
        self._store.close()


# ---------------------------------------------------------------------------------------------
# decoding + ranking shared by genre and dsi


def decode_keys(lm: Any, prompts: list[list[int]], provider: Any, *, num_beams: int,
                max_new_tokens: int, length_penalty: float, batch_size: int) -> list[list[Any]]:
    """Constrained beam search per query: ``[B]`` lists of Hypothesis, best first."""
    import torch

    from genseek.kernels.beam import constrained_beam_search
    from genseek.retrievers.prompts import left_pad

    out: list[list[Any]] = []
    for start in range(0, len(prompts), max(int(batch_size), 1)):
        chunk = prompts[start:start + max(int(batch_size), 1)]
        ids, mask = left_pad(chunk, lm.pad_id, lm.device)
        with torch.inference_mode():
            res = constrained_beam_search(
                lm.model, ids, mask, provider, num_beams=int(num_beams),
                max_new_tokens=int(max_new_tokens), eos_token_id=lm.eos_id,
                length_penalty=float(length_penalty),
                decoder_start_token_id=getattr(lm.model.config, "decoder_start_token_id", None))
        out.extend(res.hypotheses)
    return out


def hits_from_hypotheses(hyps: list[Any], store: TrieStore,
                         rows: dict[int, tuple[str, np.ndarray]], k: int) -> list[Hit]:
    """Hypotheses (best first) expanded to live documents; first occurrence of a doc wins."""
    hits: list[Hit] = []
    seen: set[str] = set()
    for h in hyps:
        for v in store.decode(h.state):
            doc_id = rows[v][0]
            if doc_id not in seen:
                seen.add(doc_id)
                hits.append(Hit(doc_id, float(h.normalized)))
        if len(hits) >= k:
            break
    return hits[:k]


# ---------------------------------------------------------------------------------------------
# what the generative index types share


def vocab_size(lm: Any) -> int:
    """Token ids range over ``[0, vocab_size)``: the larger of the model's and tokenizer's."""
    return max(int(getattr(lm.model.config, "vocab_size", 0) or 0), len(lm.tokenizer))


class KeyTableIndex:
    """An LM, a :class:`KeyTable` and a docid store under one lock: what genre, dsi and seal
    share.

    The store (``Store``: :class:`~genseek.indexers.trie_store.TrieStore` or
    :class:`~genseek.indexers.fm_store.FMStore`, in ``path/store``) holds the table's keys and
    is committed after it, stamped with the same sequence number; when the two disagree at
    open (a crash between the two commits, an unreadable store, an index made before the
    store was persisted) the store is rebuilt from the table. Subclasses set ``kind`` (the
    index type), ``cue`` (the prompt text decoding continues from), ``Params`` and
    ``SearchParams`` (the schemas of the spec and of the parameters a request may override,
    :mod:`genseek.params`), ``Store``, and write keys with :meth:`write_keys`.
    """

    kind = ""
    cue = ""
    Params: type[GenreParams] | type[SealParams] | type[DsiParams]
    SearchParams: type[NoSearchParams]
    Store: type[TrieStore] | type[FMStore]

    def __init__(self, path: Path, params: dict[str, Any], lm: Any = None):
        from genseek.models import load_lm

        self.params = self.Params.resolve(params)
        self.path = Path(path)
        self.lm = lm or load_lm(str(self.params["model"]))
        self._lock = threading.RLock()
        self.table = KeyTable(self.path)
        self.store = self._open_store()

    @classmethod
    def open(cls: type[K], path: Path, params: dict[str, Any]) -> K:
        return cls(path, params)

    def _open_store(self) -> TrieStore | FMStore:
        """The store of ``path/store`` when it holds the table's committed keys, else one
        rebuilt from the table (and committed)."""
        folder, vocab = self.path / "store", vocab_size(self.lm)
        merge = int(self.params["merge_docs"])
        try:
            store = self.Store.open(folder, vocab, merge_docs=merge)
            if store.seq == self.applied_seq and len(store) == len(self.table.rows):
                return store
        except GenseekError:  # unreadable, or made for another vocabulary: a cache, rebuilt
            shutil.rmtree(folder, ignore_errors=True)
            store = self.Store.open(folder, vocab, merge_docs=merge)
        store.reset((v, key) for v, (_, key) in self.table.rows.items())
        store.commit(self.applied_seq)
        return store

    @property
    def applied_seq(self) -> int:
        return self.table.applied_seq

    def write_keys(self, removed: Iterable[int], added: Sequence[tuple[int, str, np.ndarray]]
                   ) -> list[int]:
        """Remove labels and add ``(label, doc_id, key)`` rows in the table and the store
        (uncommitted); returns the labels removed."""
        gone, new = self.table.write(removed, added)
        if gone or new:
            rows = self.table.rows
            self.store.update([(v, rows[v][1]) for v in new], gone)
        return gone

    def commit(self, seq: int) -> None:
        with self._lock:
            self.table.commit(seq)
            self.store.commit(seq)

    def prompts(self, queries: Sequence[str]) -> list[list[int]]:
        """Token ids of each query's decoder input (instruction, query, then ``cue``)."""
        from genseek.retrievers.prompts import build_prompt

        return [build_prompt(self.lm, str(self.params["instruction"]), q, self.cue,
                             reserve=int(self.params["max_new_tokens"]) + 1) for q in queries]

    def _search_params(self, params: NoSearchParams | dict[str, Any] | None) -> dict[str, Any]:
        """The spec's values of the ``SearchParams`` fields with this request's overrides."""
        spec = {name: self.params[name] for name in self.SearchParams.model_fields}
        return {**spec, **self.SearchParams.overrides(params)}

    def details(self) -> dict[str, Any]:
        """The type's own facts for ``stats().details``, beside the store's."""
        return {}

    def stats(self) -> IndexStats:
        with self._lock:
            return IndexStats(type=self.kind, documents=len(self.table.rows),
                              applied_seq=self.applied_seq, disk_bytes=dir_bytes(self.path),
                              memory_bytes=self.store.nbytes(), params=dict(self.params),
                              details={**self.store.stats(), **self.details()})

    def close(self) -> None:
        with self._lock:
            self.table.close()


K = TypeVar("K", bound=KeyTableIndex)


# ---------------------------------------------------------------------------------------------
# the index type


def title_key(tokenizer: Any, doc: Document) -> list[int]:
    """Token ids of ``" " + title`` (no special tokens)."""
    return list(tokenizer.encode(" " + doc.title.strip(), add_special_tokens=False))


class GenreIndex(KeyTableIndex):
    """A title trie + an LM; see the module docstring for the spec and the behaviour."""

    kind = "genre"
    cue = "Title:"
    Params = GenreParams
    SearchParams = GenreSearchParams
    Store = TrieStore

    @property
    def skipped(self) -> int:
        """Documents left out for want of a title (``missing_title=skip``)."""
        return int(self.table.meta("skipped") or 0)

    # -- writes -------------------------------------------------------------------------------

    def make_key(self, doc: Document) -> list[int] | None:
        """The trie key of ``doc``; None to skip it (counted); GenseekError when invalid."""
        if not doc.title.strip():
            if self.params["missing_title"] == "skip":
                return None
            raise GenseekError(f"genre: document {doc.doc_id!r} has no title (GENRE decodes "
                               "titles; use genre(missing_title=skip) to leave such documents "
                               "out)")
        key = title_key(self.lm.tokenizer, doc)
        if not key:
            raise GenseekError(f"genre: the title of document {doc.doc_id!r} "
                               f"({doc.title[:60]!r}) tokenises to no token")
        return key

    def apply(self, changes: ChangeSet) -> None:
        with self._lock:
            new_docs = [d for d in changes.upserts if d.version not in self.table.rows]
            keyed = [(d, self.make_key(d)) for d in new_docs]  # validate before writing
            added = [(d.version, d.doc_id, np.asarray(k)) for d, k in keyed if k is not None]
            skipped = sum(1 for _, k in keyed if k is None)
            self.write_keys([v for _, v in changes.removed], added)
            if skipped:
                self.table.set_meta("skipped", str(self.skipped + skipped))

    # -- reads --------------------------------------------------------------------------------

    def search(self, queries: Sequence[str], k: int,
               params: GenreSearchParams | None = None) -> list[list[Hit]]:
        """Top-``k`` documents per query; ``num_beams`` / ``length_penalty`` per call."""
        p = self._search_params(params)
        if k <= 0 or not queries:
            return [[] for _ in queries]
        with self._lock:
            provider = self.store.provider(self.lm.device)
            if provider is None:
                return [[] for _ in queries]
            hyps = decode_keys(self.lm, self.prompts(queries), provider,
                               num_beams=max(int(p["num_beams"]), 1),
                               max_new_tokens=int(p["max_new_tokens"]),
                               length_penalty=float(p["length_penalty"]),
                               batch_size=int(p["batch_size"]))
            return [hits_from_hypotheses(h, self.store, self.table.rows, k) for h in hyps]

    def details(self) -> dict[str, Any]:
        return {"skipped": self.skipped}
