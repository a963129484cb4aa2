"""``genre``: GENRE-style retrieval by decoding a document title under a title trie.

GENRE (De Cao et al., 2021, "Autoregressive Entity Retrieval") generates the title of the
target document token by token, constrained by a prefix tree over the titles of the corpus,
and ranks titles by their sequence log-probability. Here:

1. each live document's title is tokenised (``" " + title``, no special tokens) into a key;
   duplicate titles share one trie leaf, which maps to *all* their documents;
2. a query is rendered with :func:`genseek.retrievers._lm.build_prompt` (instruction + query,
   cue ``"Title:"``) and decoded with ``genseek.kernels.beam.constrained_beam_search`` under
   the union of the main trie and the delta trie (``UnionProvider``), EOS allowed at the end
   of a complete title;
3. hypotheses are ranked by ``score / length ** length_penalty`` (``length_penalty`` 1.0 by
   default, 0.0 = raw sum of log-probs), each expanded to its documents, tombstoned versions
   dropped.

Incremental: a document upserted after the main trie was built goes into the delta trie (a
new document is retrievable as soon as its title is in it, no retraining); a replaced or
deleted version becomes a tombstone, filtered from every result. When the delta exceeds
``merge_docs`` documents (or tombstones exceed 20% of the main trie), ``commit`` rebuilds the
main trie from the live keys. Tries are built in memory from ``keys.sqlite`` (the source of
truth, committed atomically with the applied sequence number); the trie is a cache.

Documents without a title: ``missing_title=error`` (default) makes ``apply`` raise a
GenseekError naming the document (nothing of the change set is written);
``missing_title=skip`` leaves it out of the trie and counts it in ``stats()["skipped"]``.
A title that tokenises to no token at all is always an error.

Queries longer than the model's context are truncated (token level) so that the prompt
leaves room for ``max_new_tokens``; see ``build_prompt``.

This module also holds :class:`KeyTable`, the persisted ``(version, doc_id, key tokens)``
table that the SEAL and DSI indexes share.

Spec parameters: ``model`` (smollm2), ``num_beams`` (10), ``max_new_tokens`` (32),
``length_penalty`` (1.0), ``missing_title`` (error | skip), ``merge_docs`` (1000),
``batch_size`` (16 queries per decoding batch), ``instruction`` (the schema:
:class:`genseek.params.GenreParams`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genseek.errors import GenseekError
from genseek.indexers.labelstore import LabelStore
from genseek.params import (
    DsiParams,
    GenreParams,
    GenreSearchParams,
    NoSearchParams,
    SealParams,
)
from genseek.protocols import dir_bytes
from genseek.types import ChangeSet, Document, Hit

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
# main + delta segments with tombstones (tries here, FM-indexes in seal)


def build_segment(rows: dict[int, tuple[str, np.ndarray]], labels: Iterable[int],
                  build: Callable[[list[np.ndarray]], Any]) -> tuple[Any, np.ndarray] | None:
    """``(build(keys of labels), labels)`` with labels sorted (int64), or None for no label.

    A segment's doc numbers index its labels array: doc ``i`` is the document version
    ``labels[i]``, whose key is ``rows[labels[i]][1]``.
    """
    arr = np.asarray(sorted(labels), dtype=np.int64)
    if arr.size == 0:
        return None
    return build([rows[int(v)][1] for v in arr]), arr


def delta_or_merge(main_labels: set[int], live: Iterable[int], merge_docs: int) -> set[int] | None:
    """The live labels outside the main segment, which go to the delta segment; None when the
    main segment is to be rebuilt instead: more than ``merge_docs`` of them, or tombstones
    (main labels no longer live) over 20% of the main segment."""
    live = set(live)
    new = live - main_labels
    dead = len(main_labels - live)
    if len(new) > merge_docs or dead > 0.2 * max(len(main_labels), 1):
        return None
    return new


class TrieSegments:
    """Main + delta tries (``genseek.kernels.trie``) over ``{label: key}`` with tombstones.

    Each segment is a ``Trie`` whose doc numbers index its ``labels`` array (int64
    ``[n_seg]``, document versions). Tombstones are applied inside the constraint
    (``TrieConstraint(doc_live=...)``): a subtree without a live document is never offered,
    so a deleted document can be neither decoded nor returned. Keys equal as token sequences
    share a terminal node (duplicate titles map to all their documents).
    """

    def __init__(self, vocab_size: int, merge_docs: int):
        self.vocab_size = int(vocab_size)
        self.merge_docs = int(merge_docs)
        self.main: tuple[Any, np.ndarray] | None = None  # (trie, labels)
        self.delta: tuple[Any, np.ndarray] | None = None
        self.main_labels: set[int] = set()
        self.delta_labels: set[int] = set()

    def _build(self, rows: dict[int, tuple[str, np.ndarray]], labels: Iterable[int]
               ) -> tuple[Any, np.ndarray] | None:
        from genseek.kernels.trie import build_trie

        return build_segment(rows, labels, lambda keys: build_trie(keys, self.vocab_size))

    def rebuild(self, rows: dict[int, tuple[str, np.ndarray]]) -> None:
        self.main, self.delta = self._build(rows, rows), None
        self.main_labels, self.delta_labels = set(rows), set()

    def update(self, rows: dict[int, tuple[str, np.ndarray]]) -> None:
        """After a change: new labels go to the delta (rebuilt, small); merge when large."""
        new = delta_or_merge(self.main_labels, rows, self.merge_docs)
        if new is None:
            self.rebuild(rows)
            return
        self.delta, self.delta_labels = self._build(rows, new), new

    @property
    def segs(self) -> list[tuple[Any, np.ndarray]]:
        return [s for s in (self.main, self.delta) if s is not None]

    def provider(self, rows: dict[int, Any]) -> Any:
        """A ConstraintProvider over the live keys (None when there is none)."""
        from genseek.kernels.constraints import UnionProvider
        from genseek.kernels.trie import TrieConstraint

        parts = [TrieConstraint(trie, doc_live=np.fromiter((int(v) in rows for v in labels),
                                                           dtype=bool, count=labels.size))
                 for trie, labels in self.segs]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else UnionProvider(parts)

    def labels_of(self, state: Sequence[int], live: dict[int, Any]) -> list[int]:
        """Live labels whose key ends at ``state`` (a union state: one node per segment)."""
        out: list[int] = []
        for col, (trie, labels) in enumerate(self.segs):
            node = int(state[col])
            if node >= 0:
                out.extend(int(labels[d]) for d in trie.docs_at(node) if int(labels[d]) in live)
        return out

    def nbytes(self) -> int:
        return sum(int(t.nbytes()) + int(lab.nbytes) for t, lab in self.segs)


# ---------------------------------------------------------------------------------------------
# decoding + ranking shared by genre and dsi


def decode_keys(lm: Any, prompts: list[list[int]], provider: Any, *, num_beams: int,
                max_new_tokens: int, length_penalty: float, batch_size: int) -> list[list[Any]]:
    """Constrained beam search per query: ``[B]`` lists of Hypothesis, best first."""
    import torch

    from genseek.kernels.beam import constrained_beam_search
    from genseek.retrievers._lm import left_pad

    out: list[list[Any]] = []
    for start in range(0, len(prompts), max(int(batch_size), 1)):
        chunk = prompts[start:start + max(int(batch_size), 1)]
        ids, mask = left_pad(chunk, lm.pad_id)
        with torch.inference_mode():
            res = constrained_beam_search(
                lm.model, ids, mask, provider, num_beams=int(num_beams),
                max_new_tokens=int(max_new_tokens), eos_token_id=lm.eos_id,
                length_penalty=float(length_penalty),
                decoder_start_token_id=getattr(lm.model.config, "decoder_start_token_id", None))
        out.extend(res.hypotheses)
    return out


def hits_from_hypotheses(hyps: list[Any], segments: TrieSegments,
                         rows: dict[int, tuple[str, np.ndarray]], k: int) -> list[Hit]:
    """Hypotheses (best first) expanded to live documents; first occurrence of a doc wins."""
    hits: list[Hit] = []
    seen: set[str] = set()
    for h in hyps:
        for v in segments.labels_of(h.state, rows):
            doc_id = rows[v][0]
            if doc_id not in seen:
                seen.add(doc_id)
                hits.append(Hit(doc_id, float(h.normalized)))
        if len(hits) >= k:
            break
    return hits[:k]


# ---------------------------------------------------------------------------------------------
# what the generative index types share


class KeyTableIndex:
    """An LM and a :class:`KeyTable` under one lock: the part genre, dsi and seal share.

    Subclasses set ``kind`` (the index type), ``cue`` (the prompt text decoding continues
    from), ``Params`` and ``SearchParams`` (the schemas of the spec and of the parameters a
    request may override, :mod:`genseek.params`) and call ``__init__``.
    """

    kind = ""
    cue = ""
    Params: type[GenreParams] | type[SealParams] | type[DsiParams]
    SearchParams: type[NoSearchParams]

    def __init__(self, path: Path, params: dict[str, Any], lm: Any = None):
        from genseek.retrievers._lm import load_lm

        self.params = self.Params.resolve(params)
        self.path = Path(path)
        self.lm = lm or load_lm(str(self.params["model"]))
        self._lock = threading.RLock()
        self.table = KeyTable(self.path)

    @property
    def applied_seq(self) -> int:
        return self.table.applied_seq

    def commit(self, seq: int) -> None:
        with self._lock:
            self.table.commit(seq)

    def prompts(self, queries: Sequence[str]) -> list[list[int]]:
        """Token ids of each query's decoder input (instruction, query, then ``cue``)."""
        from genseek.retrievers._lm import build_prompt

        return [build_prompt(self.lm, str(self.params["instruction"]), q, self.cue,
                             reserve=int(self.params["max_new_tokens"]) + 1) for q in queries]

    def _search_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The spec's values of the ``SearchParams`` fields with this request's overrides."""
        spec = {name: self.params[name] for name in self.SearchParams.model_fields}
        return {**spec, **self.SearchParams.overrides(params)}

    def close(self) -> None:
        with self._lock:
            self.table.close()


# ---------------------------------------------------------------------------------------------
# the index type




def vocab_size(lm: Any) -> int:
    """Token ids range over ``[0, vocab_size)``: the larger of the model's and tokenizer's."""
    return max(int(getattr(lm.model.config, "vocab_size", 0) or 0), len(lm.tokenizer))


def title_key(tokenizer: Any, doc: Document) -> list[int]:
    """Token ids of ``" " + title`` (no special tokens)."""
    return list(tokenizer.encode(" " + doc.title.strip(), add_special_tokens=False))


class GenreIndex(KeyTableIndex):
    """A title trie + an LM; see the module docstring for the spec and the behaviour."""

    kind = "genre"
    cue = "Title:"
    Params = GenreParams
    SearchParams = GenreSearchParams

    def __init__(self, path: Path, params: dict[str, Any], lm: Any = None):
        super().__init__(path, params, lm)
        self.skipped = int(self.table.meta("skipped") or 0)
        self.segments = TrieSegments(vocab_size(self.lm), int(self.params["merge_docs"]))
        self.segments.rebuild(self.table.rows)

    @classmethod
    def open(cls, path: Path, params: dict[str, Any]) -> GenreIndex:
        return cls(path, params)

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
            gone, new = self.table.write([v for _, v in changes.removed], added)
            if skipped:
                self.skipped += skipped
                self.table.set_meta("skipped", str(self.skipped))
            if gone or new:
                self.segments.update(self.table.rows)

    # -- reads --------------------------------------------------------------------------------

    def search(self, queries: Sequence[str], k: int, **params: Any) -> list[list[Hit]]:
        """Top-``k`` documents per query; ``num_beams`` / ``length_penalty`` per call."""
        p = self._search_params(params)
        if k <= 0 or not queries:
            return [[] for _ in queries]
        with self._lock:
            provider = self.segments.provider(self.table.rows)
            rows = self.table.rows
            if provider is None:
                return [[] for _ in queries]
            hyps = decode_keys(self.lm, self.prompts(queries), provider,
                               num_beams=max(int(p["num_beams"]), 1),
                               max_new_tokens=int(p["max_new_tokens"]),
                               length_penalty=float(p["length_penalty"]),
                               batch_size=int(p["batch_size"]))
            return [hits_from_hypotheses(h, self.segments, rows, k) for h in hyps]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "type": self.kind,
                "documents": len(self.table.rows),
                "applied_seq": self.applied_seq,
                "disk_bytes": dir_bytes(self.path),
                "memory_bytes": self.segments.nbytes(),
                "main_docs": len(self.segments.main_labels),
                "delta_docs": len(self.segments.delta_labels),
                "tombstones": len(self.segments.main_labels - set(self.table.rows)),
                "skipped": self.skipped,
                "params": dict(self.params),
            }
