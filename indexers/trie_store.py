"""Docid stores of the generative retrievers (main + delta segments with tombstones), and the
CSR-trie store of GENRE and DSI. The FM-index store of SEAL (``fm_store.py``) is built on the
same :class:`SegmentStore`.

A store holds ``{label: token ids}``: a label is an int64 document version, its tokens are the
document's key (title, docid or document tokens). Like Lucene, it keeps at most two immutable
**segments** and a deletion mask:

- the **main** segment, made by a merge;
- the **delta** segment: the documents added since, rebuilt (it is small) by every update, so
  a new document is decodable as soon as ``update`` returns;
- the **tombstones**: main documents deleted or replaced since the merge (a bool mask over the
  main segment's document numbers), hidden from every answer.

``update`` tombstones the main documents it deletes or replaces, rebuilds the delta without
them, and adds the new documents to the delta. It **merges** instead (one new main segment from
the live documents; no delta, no tombstones) when there is no main segment yet, when the delta
would exceed ``merge_docs`` documents, or when the tombstones would exceed 20% of the main
segment. A query therefore reads at most two segments.

``commit(seq)`` makes the state durable: segments not yet on disk are written (each in a
temporary folder, fsynced, renamed into place), then ``store.json`` is replaced atomically,
naming the segments, the tombstones and ``seq`` (the caller's sequence number); files it no
longer names are removed afterwards. A crash leaves the last committed ``store.json`` intact.
The retrievers keep their key table (``keys.sqlite``) as the source of truth and rebuild the
store from it when the store's ``seq`` is not the table's (a crash between the two commits).
Nothing is pickled: ``.npy`` with ``allow_pickle=False``, and JSON.

Layout of a store folder::

    store.json               format, version, vocab_size, seq, generation, main, delta, tombstones
    main_000003/labels.npy   int64 [n], ascending: document number i is label labels[i]
    main_000003/...          the segment's own files (trie: header.json + arrays; FM: index/)
    delta_000005/...         the delta segment, laid out the same way
    dead_000005/dead.npy     int64, ascending: the main document numbers tombstoned (the FM
                             store adds index/, an FM-index over their tokens)

Not thread-safe: one writer, and readers only between writes (the retrievers hold their lock
around every call).

Trie segments (:class:`TrieStore`): a ``genseek.kernels.trie.Trie`` per segment, stored as its
arrays (``indptr``, ``term_ptr`` and ``term_docs`` as int32 when they fit) and a
``header.json``. ``provider()`` is a ``UnionProvider`` over the segments, the main one pruned by
its tombstones (``TrieConstraint(doc_live=...)``), so a deleted key is never offered;
``decode(state)`` maps a finished hypothesis' union state to the live labels ending there
(keys equal as token sequences share a terminal node: duplicate titles map to all their
documents).
"""

from __future__ import annotations

import json
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch

from genseek.atomic import atomic_write_json, read_json_header
from genseek.errors import GenseekError
from genseek.kernels.constraints import ConstraintProvider, UnionProvider
from genseek.kernels.fmindex import save_npy, write_folder  # FMIndex.save's atomic writes
from genseek.kernels.trie import Trie, TrieConstraint, build_trie_flat, trie_from_arrays

STORE_VERSION = 1
MANIFEST = "store.json"
TOMBSTONE_SHARE = 0.2  # tombstones above this share of the main segment trigger a merge
_PREFIXES = ("main_", "delta_", "dead_")

D = TypeVar("D")
S = TypeVar("S", bound="SegmentStore[Any]")


def load_npy(path: Path, what: str) -> np.ndarray:
    """Read one array written by :func:`save_npy`; a missing or bad file is a GenseekError."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise GenseekError(f"{path}: missing {what}") from None
    except (OSError, ValueError, EOFError) as exc:
        raise GenseekError(f"{path}: unreadable {what} ({exc})") from None


@dataclass
class Segment(Generic[D]):
    """One immutable segment: ``data`` (a Trie or an FMIndex) over documents ``0..n-1`` whose
    labels are ``labels`` (int64 ``[n]``, ascending); ``name`` is its folder once committed."""

    data: D
    labels: np.ndarray
    name: str | None = None

    @property
    def n_docs(self) -> int:
        return int(self.labels.shape[0])


class SegmentStore(ABC, Generic[D]):
    """Main + delta segments over ``{label: token ids}`` with tombstones, committed to a
    folder (see the module docstring). A subclass supplies the segment structure: how to
    build one from token sequences, read sequences back, save and load it."""

    FORMAT: ClassVar[str]
    WHAT: ClassVar[str]  # named in messages: "trie store", "FM store"

    def __init__(self, path: Path, vocab_size: int, merge_docs: int = 1000):
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int | np.integer) \
                or vocab_size < 1:
            raise GenseekError(f"{self.WHAT}: vocab_size must be a positive integer, "
                               f"not {vocab_size!r}")
        self.path = Path(path)
        self.vocab_size = int(vocab_size)
        self.merge_docs = int(merge_docs)
        self.seq = 0
        self.generation = 0
        self.main: Segment[D] | None = None
        self.delta: Segment[D] | None = None
        self.dead = np.zeros(0, dtype=bool)  # tombstones: bool [main.n_docs]
        self.tombstone_version = 0  # changes whenever ``dead`` or the main segment does
        self._dead_name: str | None = None  # the committed tombstones' folder
        self._dead_saved = True

    # -- the segment structure (subclasses) -----------------------------------------------------

    @abstractmethod
    def build(self, seqs: list[np.ndarray]) -> D:
        """The structure over documents ``0..len(seqs)-1`` (non-empty int64 token arrays)."""

    @abstractmethod
    def sequences(self, data: D, docs: np.ndarray) -> list[np.ndarray]:
        """Token ids of the documents numbered ``docs`` (int64 ``[M]``), in that order."""

    @staticmethod
    @abstractmethod
    def n_docs(data: D) -> int: ...

    @staticmethod
    @abstractmethod
    def data_nbytes(data: D) -> int: ...

    @staticmethod
    @abstractmethod
    def save_data(data: D, folder: Path) -> None:
        """Write ``data``'s files into the (new, empty) segment folder."""

    @staticmethod
    @abstractmethod
    def load_data(folder: Path, verify: bool) -> D:
        """Read what :meth:`save_data` wrote; bad files raise GenseekError."""

    def save_tombstone_data(self, folder: Path) -> None:
        """Extra files of the tombstones (the FM store's tombstone index); none by default."""

    def load_tombstone_data(self, folder: Path, verify: bool) -> None:
        """Read what :meth:`save_tombstone_data` wrote."""

    def changed(self) -> None:
        """Called after the segments or the tombstones changed: drop what was derived."""

    # -- segments on disk -----------------------------------------------------------------------

    @classmethod
    def save_segment(cls, folder: Path, segment: Segment[D]) -> Path:
        """Write ``segment`` as ``folder`` (``labels.npy`` + the structure's files) atomically."""

        def fill(tmp: Path) -> None:
            save_npy(tmp / "labels.npy", np.asarray(segment.labels, dtype=np.int64))
            cls.save_data(segment.data, tmp)

        return write_folder(folder, fill)

    @classmethod
    def load_segment(cls, folder: Path, *, verify: bool = False) -> Segment[D]:
        """Read a folder written by :meth:`save_segment`; bad files raise GenseekError."""
        folder = Path(folder)
        data = cls.load_data(folder, verify)
        labels = load_npy(folder / "labels.npy", "segment labels")
        if labels.dtype != np.int64 or labels.shape != (cls.n_docs(data),) \
                or np.any(np.diff(labels) <= 0):
            raise GenseekError(f"{folder / 'labels.npy'}: expected {cls.n_docs(data)} ascending "
                               f"int64 labels, found {labels.dtype} {labels.shape}")
        return Segment(data, labels, folder.name)

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    def open(cls: type[S], path: str | Path, vocab_size: int, *, merge_docs: int = 1000,
             verify: bool = False, **options: Any) -> S:
        """The store in ``path`` (created empty when there is none). ``verify`` checks the
        checksums the structure keeps (the FM-index's); ``options`` go to the constructor."""
        store = cls(Path(path), vocab_size, merge_docs, **options)
        head = store.path / MANIFEST
        if not head.exists():
            store.path.mkdir(parents=True, exist_ok=True)
            store._write_manifest(store.generation, None, None, None)
            return store
        manifest = read_json_header(head, cls.WHAT, cls.FORMAT, STORE_VERSION)
        try:
            if int(manifest["vocab_size"]) != store.vocab_size:
                raise GenseekError(f"{head}: vocab_size is {manifest['vocab_size']}, "
                                   f"not {store.vocab_size}")
            store.seq, store.generation = int(manifest["seq"]), int(manifest["generation"])
            names = {role: manifest[role] for role in ("main", "delta", "tombstones")}
        except (KeyError, TypeError, ValueError) as exc:
            raise GenseekError(f"{head}: malformed {cls.WHAT} manifest ({exc!r})") from None
        if names["main"] is None and (names["delta"] or names["tombstones"]):
            raise GenseekError(f"{head}: a delta or tombstones without a main segment")
        if names["main"] is not None:
            store.main = cls.load_segment(store.path / names["main"], verify=verify)
            store.dead = np.zeros(store.main.n_docs, dtype=bool)
        if names["delta"] is not None:
            store.delta = cls.load_segment(store.path / names["delta"], verify=verify)
        if names["tombstones"] is not None:
            store._load_tombstones(store.path / names["tombstones"], verify)
        store._collect_garbage()
        store.changed()
        return store

    def _load_tombstones(self, folder: Path, verify: bool) -> None:
        assert self.main is not None
        dead = load_npy(folder / "dead.npy", "tombstones")
        if dead.dtype != np.int64 or dead.ndim != 1 or (dead.size and (
                int(dead.min()) < 0 or int(dead.max()) >= self.main.n_docs)):
            raise GenseekError(f"{folder / 'dead.npy'}: tombstones out of range of the main "
                               f"segment ({self.main.n_docs} documents)")
        self.dead[dead] = True
        self._dead_name = folder.name
        self.load_tombstone_data(folder, verify)

    # -- reading --------------------------------------------------------------------------------

    @property
    def segments(self) -> list[tuple[Segment[D], np.ndarray | None]]:
        """``(segment, tombstone mask or None)`` of the main then the delta segment: the order
        of the columns of a union state."""
        out: list[tuple[Segment[D], np.ndarray | None]] = []
        if self.main is not None:
            out.append((self.main, self.dead if self.dead.any() else None))
        if self.delta is not None:
            out.append((self.delta, None))
        return out

    def __len__(self) -> int:
        main = self.main.n_docs - int(np.count_nonzero(self.dead)) if self.main else 0
        return main + (self.delta.n_docs if self.delta else 0)

    def __contains__(self, label: object) -> bool:
        if isinstance(label, bool) or not isinstance(label, int | np.integer):
            return False
        for seg, dead in self.segments:  # a replaced label: tombstoned in main, live in delta
            i = int(np.searchsorted(seg.labels, label))
            if i < seg.n_docs and seg.labels[i] == label and (dead is None or not dead[i]):
                return True
        return False

    def items(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(label, token ids)`` of every live document: main segment first, by label."""
        for seg, dead in self.segments:
            docs = np.arange(seg.n_docs) if dead is None else np.flatnonzero(~dead)
            yield from zip(seg.labels[docs].tolist(), self.sequences(seg.data, docs),
                           strict=True)

    def nbytes(self) -> int:
        """Bytes of the segments' arrays held (labels and tombstones included)."""
        return int(sum(self.data_nbytes(s.data) + s.labels.nbytes for s, _ in self.segments)
                   + self.dead.nbytes)

    def stats(self) -> dict[str, int]:
        return {"main_docs": self.main.n_docs if self.main else 0,
                "delta_docs": self.delta.n_docs if self.delta else 0,
                "tombstones": int(np.count_nonzero(self.dead))}

    # -- writing --------------------------------------------------------------------------------

    def update(self, upserts: Iterable[tuple[int, Sequence[int]]] = (),
               deletes: Iterable[int] = ()) -> None:
        """Delete the labels ``deletes``, then add ``(label, token ids)`` pairs (a label
        already live is replaced; the last copy wins). Unknown labels are ignored on delete.
        In memory: :meth:`commit` makes it durable. Everything is checked before anything
        changes (GenseekError)."""
        new = self._checked(upserts)
        gone = np.union1d(np.fromiter((self._label(x) for x in deletes), dtype=np.int64),
                          np.fromiter(new, dtype=np.int64, count=len(new)))
        dead = self.dead.copy()
        if self.main is not None and gone.size:
            dead |= np.isin(self.main.labels, gone)
        delta: dict[int, np.ndarray] = {}
        delta_changed = bool(new)
        if self.delta is not None:
            keep = ~np.isin(self.delta.labels, gone)
            delta_changed |= not keep.all()
            docs = np.flatnonzero(keep)
            delta = dict(zip(self.delta.labels[docs].tolist(),
                             self.sequences(self.delta.data, docs), strict=True))
        tombstoned = not np.array_equal(dead, self.dead)
        if not delta_changed and not tombstoned:
            return
        delta.update(new)
        n_main = self.main.n_docs if self.main is not None else 0
        if self.main is None or len(delta) > self.merge_docs \
                or np.count_nonzero(dead) > TOMBSTONE_SHARE * max(n_main, 1):
            self._replace({**self._main_items(dead), **delta})
            return
        if delta_changed:
            self.delta = self._segment(delta)
        if tombstoned:
            self.dead = dead
            self.tombstone_version += 1
            self._dead_saved = False
        self.changed()

    def reset(self, items: Iterable[tuple[int, Sequence[int]]]) -> None:
        """Replace the whole content by ``items``, as one main segment (in memory)."""
        self._replace(self._checked(items))

    def merge(self) -> None:
        """Fold the delta and the tombstones into one new main segment (in memory)."""
        if self.delta is not None or self.dead.any():
            self._replace(dict(self.items()))

    def commit(self, seq: int) -> None:
        """Write what is not on disk yet, then ``store.json`` with ``seq``: durable and atomic
        on return. Files no longer named are removed afterwards."""
        gen = self.generation + 1
        names: dict[str, str | None] = {}
        written: list[Path] = []
        try:
            for role, seg in (("main", self.main), ("delta", self.delta)):
                names[role] = None if seg is None else seg.name
                if seg is not None and seg.name is None:
                    names[role] = f"{role}_{gen:06d}"
                    written.append(self.save_segment(self.path / names[role], seg))
            names["tombstones"] = self._dead_name
            if not self._dead_saved:
                names["tombstones"] = None
                if self.dead.any():
                    names["tombstones"] = f"dead_{gen:06d}"
                    written.append(write_folder(self.path / names["tombstones"],
                                                self._fill_tombstones))
            self._write_manifest(gen, names["main"], names["delta"], names["tombstones"],
                                 seq=seq)
        except BaseException:
            for folder in written:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        for role, seg in (("main", self.main), ("delta", self.delta)):
            if seg is not None:
                seg.name = names[role]
        self._dead_name, self._dead_saved = names["tombstones"], True
        self.seq, self.generation = int(seq), gen
        self._collect_garbage()

    # -- internals ------------------------------------------------------------------------------

    def _label(self, label: Any) -> int:
        if isinstance(label, bool) or not isinstance(label, int | np.integer):
            raise GenseekError(f"{self.WHAT}: a label must be an integer, not {label!r}")
        return int(label)

    def _checked(self, upserts: Iterable[tuple[int, Sequence[int]]]) -> dict[int, np.ndarray]:
        """``{label: int64 tokens}`` (last copy wins), every pair checked."""
        out: dict[int, np.ndarray] = {}
        for i, item in enumerate(upserts):
            try:
                label, tokens = item
            except (TypeError, ValueError):
                raise GenseekError(f"{self.WHAT}: upsert #{i} must be a (label, token ids) "
                                   "pair") from None
            label = self._label(label)
            raw = np.asarray(tokens)
            if raw.size and not np.issubdtype(raw.dtype, np.integer):
                raise GenseekError(f"{self.WHAT}: label {label}: token ids must be integers, "
                                   f"not {raw.dtype}")
            arr = raw.astype(np.int64).reshape(-1)
            if arr.size == 0:
                raise GenseekError(f"{self.WHAT}: label {label} has no tokens")
            bad = arr[(arr < 0) | (arr >= self.vocab_size)]
            if bad.size:
                raise GenseekError(f"{self.WHAT}: label {label}: token id {int(bad[0])} is "
                                   f"outside [0, {self.vocab_size})")
            out[label] = arr
        return out

    def _main_items(self, dead: np.ndarray) -> dict[int, np.ndarray]:
        if self.main is None:
            return {}
        docs = np.flatnonzero(~dead)
        return dict(zip(self.main.labels[docs].tolist(), self.sequences(self.main.data, docs),
                        strict=True))

    def _segment(self, items: dict[int, np.ndarray]) -> Segment[D] | None:
        """A new (uncommitted) segment over ``items``, documents numbered by ascending label."""
        if not items:
            return None
        labels = np.asarray(sorted(items), dtype=np.int64)
        return Segment(self.build([items[int(v)] for v in labels]), labels)

    def _replace(self, items: dict[int, np.ndarray]) -> None:
        self.main, self.delta = self._segment(items), None
        self.dead = np.zeros(self.main.n_docs if self.main else 0, dtype=bool)
        self.tombstone_version += 1
        self._dead_saved = False
        self.changed()

    def _fill_tombstones(self, tmp: Path) -> None:
        save_npy(tmp / "dead.npy", np.flatnonzero(self.dead).astype(np.int64))
        self.save_tombstone_data(tmp)

    def _write_manifest(self, gen: int, main: str | None, delta: str | None,
                        tombstones: str | None, seq: int | None = None) -> None:
        atomic_write_json(self.path / MANIFEST, {
            "format": self.FORMAT, "version": STORE_VERSION, "vocab_size": self.vocab_size,
            "seq": int(self.seq if seq is None else seq), "generation": gen, "main": main,
            "delta": delta, "tombstones": tombstones})

    def _collect_garbage(self) -> None:
        """Remove segment and tombstone folders (and temporary files) not named by the
        committed manifest: what a replaced state or a crashed writer left."""
        keep = {MANIFEST, self._dead_name} | {s.name for s in (self.main, self.delta)
                                              if s is not None}
        for child in self.path.iterdir():
            bare = child.name.lstrip(".")
            if child.name in keep or not bare.startswith((*_PREFIXES, MANIFEST)):
                continue
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# the trie store

TRIE_SEGMENT_FORMAT = "genseek-trie-segment"
_TRIE_ARRAYS = ("indptr", "edge_token", "parent", "level_ptr", "term_nodes", "term_ptr",
                "term_docs")


class TrieStore(SegmentStore[Trie]):
    """Main + delta CSR tries with tombstones (see the module docstring)."""

    FORMAT = "genseek-trie-store"
    WHAT = "trie store"

    def __init__(self, path: Path, vocab_size: int, merge_docs: int = 1000):
        super().__init__(path, vocab_size, merge_docs)
        self._providers: dict[str, ConstraintProvider | None] = {}

    def build(self, seqs: list[np.ndarray]) -> Trie:
        lengths = np.fromiter((s.size for s in seqs), dtype=np.int64, count=len(seqs))
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return build_trie_flat(np.concatenate(seqs), offsets, self.vocab_size)

    def sequences(self, data: Trie, docs: np.ndarray) -> list[np.ndarray]:
        flat, off = data.sequences(data.doc_nodes()[docs])
        return np.split(flat, off[1:-1]) if docs.size else []

    @staticmethod
    def n_docs(data: Trie) -> int:
        return data.num_docs

    @staticmethod
    def data_nbytes(data: Trie) -> int:
        return data.nbytes()

    @staticmethod
    def save_data(data: Trie, folder: Path) -> None:
        """The arrays (int32 where the values fit; widened again on load) + ``header.json``."""
        arrays = {name: getattr(data, name) for name in _TRIE_ARRAYS}
        if data.num_nodes < 2**31:
            arrays["indptr"] = data.indptr.astype(np.int32)
            arrays["term_ptr"] = data.term_ptr.astype(np.int32)
        if data.num_docs < 2**31:
            arrays["term_docs"] = data.term_docs.astype(np.int32)
        for name, arr in arrays.items():
            save_npy(folder / f"{name}.npy", arr)
        header = {"format": TRIE_SEGMENT_FORMAT, "version": STORE_VERSION,
                  "vocab_size": data.vocab_size, "num_docs": data.num_docs,
                  "num_nodes": data.num_nodes, "depth": data.depth}
        with open(folder / "header.json", "w", encoding="utf-8") as fh:
            json.dump(header, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())

    @staticmethod
    def load_data(folder: Path, verify: bool) -> Trie:
        header = read_json_header(folder / "header.json", "trie segment", TRIE_SEGMENT_FORMAT,
                                  STORE_VERSION)
        arr = {name: load_npy(folder / f"{name}.npy", "trie array") for name in _TRIE_ARRAYS}
        try:
            n, nodes = int(header["num_docs"]), int(header["num_nodes"])
            vocab = int(header["vocab_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise GenseekError(f"{folder / 'header.json'}: malformed ({exc!r})") from None
        if arr["term_docs"].shape != (n,) or arr["indptr"].shape != (nodes + 1,) \
                or arr["parent"].shape != (nodes,) or arr["edge_token"].shape != (nodes - 1,):
            raise GenseekError(f"{folder}: array shapes disagree with header.json")
        return trie_from_arrays(vocab_size=vocab, **arr)

    def changed(self) -> None:
        self._providers.clear()

    def provider(self, device: torch.device | str = "cpu") -> ConstraintProvider | None:
        """The live keys' constraint on ``device`` (None for an empty store), cached until the
        next change: the main trie pruned by its tombstones, united with the delta trie."""
        key = str(torch.device(device))
        if key not in self._providers:
            parts = [TrieConstraint(seg.data, device, None if dead is None else ~dead)
                     for seg, dead in self.segments]
            self._providers[key] = (None if not parts else parts[0] if len(parts) == 1
                                    else UnionProvider(parts))
        return self._providers[key]

    def decode(self, state: Sequence[int]) -> list[int]:
        """Live labels whose key ends at a union state (one node id per segment, as
        :meth:`provider`'s), main segment first, ascending within a segment."""
        segments = self.segments
        if len(state) != len(segments):
            raise ValueError(f"state has {len(state)} columns, the store {len(segments)} "
                             "segments")
        out: list[int] = []
        for (seg, dead), node in zip(segments, state, strict=True):
            if int(node) < 0:
                continue
            docs = seg.data.docs_at(int(node))
            if dead is not None:
                docs = docs[~dead[docs]]
            out.extend(seg.labels[docs].tolist())
        return out
