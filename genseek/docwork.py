"""The model work an index does on documents, described so that it can run elsewhere.

An index whose ``apply`` runs a model on the documents (``dense``, ``spann``, ``repconc``,
``muvera``, ``impact``) is :class:`~genseek.protocols.EncodesDocuments`: its
``document_work()`` is a :class:`DocumentWork`, a small frozen (picklable) description of that
work, and its ``apply_encoded(changes, encoded)`` applies a change set taking the payloads of
some documents from ``encoded`` (``doc_id -> payload``) and computing the others itself, with
the same :meth:`DocumentWork.run`. ``apply(changes)`` is ``apply_encoded(changes, {})``, so the
single-process path and a distributed one (:mod:`genseek.cluster`: the work runs in Ray actors
and the payloads come back to the driver) share one code path.

- :attr:`DocumentWork.key` names the computation: indexes whose works have the same key need
  the identical payloads (``dense``, ``spann`` and ``repconc`` on the same encoder and token
  limit), so a caller computes each key once and hands the payloads to all of them.
- :meth:`DocumentWork.load` returns a *worker*: the loaded model, through the model layer
  (:func:`genseek.encoders.shared_encoder`, :func:`~genseek.encoders.shared_sparse_encoder`,
  :class:`~genseek.encoders.TokenEncoder`; placement by :func:`genseek.models.placement`).
  Load it once per process (an actor keeps it for the whole job).
- :meth:`DocumentWork.run` turns texts (``Document.contents``) into one payload per text:

  =========  ======================================================  ====================
  kind       payload                                                 used by
  =========  ======================================================  ====================
  ``text``   ``float32 [dim]``, L2-normalised                        dense, spann, repconc
  ``tokens`` ``float16 [n_tokens, dim]`` token vectors (muvera         muvera
             stores float16, so nothing is lost)
  ``sparse`` ``(ids int64 [n], weights float32 [n])``, unpruned,     impact
             heaviest first
  =========  ======================================================  ====================

A payload is a numpy array or a tuple of numpy arrays, so it crosses process boundaries as
plain tensors: :func:`pack` writes it as ``.npy`` bytes (``allow_pickle=False``) and
:func:`unpack` reads them back, bit for bit; no Python object is pickled.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from genseek.types import Document

Payload = Any
"""What :meth:`DocumentWork.run` makes of one text: a numpy array or a tuple of them."""

Kind = Literal["text", "tokens", "sparse"]
KINDS: tuple[str, ...] = ("text", "tokens", "sparse")


@dataclass(frozen=True)
class DocumentWork:
    """One model computation over document texts (see the module docstring).

    ``options`` are extra keyword arguments of the loader, as sorted ``(name, value)`` pairs
    (part of the key): an index whose spec chooses e.g. an encoder ``backend`` puts it here,
    so that the actors load the same model and indexes on another backend do not share the
    payloads. ``batch_size`` is how many texts go through
    the model at once; it is not part of the key (indexes that differ only in it share one
    computation, made with the first one's).
    """

    kind: Kind
    model: str
    max_length: int | None = None
    batch_size: int = 32
    proj_dim: int | None = None  # tokens: a fixed random projection of the token vectors
    seed: int = 0  # tokens: the projection's seed
    windows: int = 1  # sparse: overlapping model windows per text, max-pooled
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown document work kind {self.kind!r} (one of {KINDS})")

    @property
    def key(self) -> str:
        """The computation's name: equal keys, identical payloads."""
        parts = [self.kind, str(self.model), f"max_length={self.max_length}"]
        if self.kind == "tokens":
            parts.append(f"proj_dim={self.proj_dim}")
            if self.proj_dim is not None:
                parts.append(f"seed={self.seed}")
        if self.kind == "sparse":
            parts.append(f"windows={self.windows}")
        parts += [f"{k}={v}" for k, v in self.options]
        return "|".join(parts)

    def load(self) -> Any:
        """The worker: the loaded model (shared within the process where the model layer
        shares it)."""
        from genseek import encoders

        options = dict(self.options)
        if self.kind == "text":
            return encoders.shared_encoder(str(self.model), self.max_length, **options)
        if self.kind == "tokens":
            return encoders.TokenEncoder(str(self.model), self.max_length, self.proj_dim,
                                         int(self.seed), **options)
        return encoders.shared_sparse_encoder(str(self.model), int(self.max_length or 256),
                                              None, int(self.windows), **options)

    def run(self, worker: Any, texts: Sequence[str]) -> list[Payload]:
        """One payload per text, in order (the table of the module docstring)."""
        texts = list(texts)
        if not texts:
            return []
        if self.kind == "text":
            vecs = worker.encode(texts, int(self.batch_size))
            return [np.ascontiguousarray(row, dtype=np.float32) for row in vecs]
        if self.kind == "tokens":
            return [np.ascontiguousarray(t, dtype=np.float16)
                    for t in worker.encode(texts, int(self.batch_size))]
        return [(np.asarray(ids, dtype=np.int64), np.asarray(ws, dtype=np.float32))
                for ids, ws in worker.encode_ids(texts, batch_size=int(self.batch_size))]


def backend_option(backend: str) -> tuple[tuple[str, str], ...]:
    """A work's ``options`` for an encoder ``backend``: none for torch (so the key is the one
    it always was, and dense, spann and repconc still share it), else ``backend`` (so the
    actors load the same backend and other backends' payloads are not shared)."""
    return () if backend == "torch" else (("backend", backend),)


def payloads_for(work: DocumentWork, worker: Callable[[], Any], docs: Sequence[Document],
                 encoded: Mapping[str, Payload]) -> list[Payload]:
    """The payloads of ``docs``, in order: from ``encoded`` (by ``doc_id``) where it has them,
    the others computed here by ``work.run(worker(), contents)`` (``worker`` is called only
    when something is missing, so a lazily loaded model stays unloaded)."""
    todo = [d for d in docs if d.doc_id not in encoded]
    fresh: dict[str, Payload] = {}
    if todo:
        fresh = dict(zip([d.doc_id for d in todo],
                         work.run(worker(), [d.contents for d in todo]), strict=True))
    return [fresh[d.doc_id] if d.doc_id in fresh else encoded[d.doc_id] for d in docs]


def stack(payloads: Sequence[np.ndarray], dim: int, what: str) -> np.ndarray:
    """``text`` payloads as one ``float32 [n, dim]`` array; a :class:`GenseekError` naming
    ``what`` (the index) for payloads of another shape."""
    from genseek.errors import GenseekError

    if not payloads:
        return np.zeros((0, dim), np.float32)
    shapes = {np.shape(p) for p in payloads}
    if shapes != {(dim,)}:
        raise GenseekError(f"{what}: document vectors must have shape [{dim}], got "
                           f"{', '.join(str(list(s)) for s in sorted(shapes))}")
    return np.ascontiguousarray(np.stack(payloads), dtype=np.float32)


def pack(payload: Payload) -> bytes:
    """A payload as bytes: one byte (0 for an array, else the tuple's length), then each
    array in ``.npy`` format (no pickle)."""
    parts = payload if isinstance(payload, tuple) else (payload,)
    if isinstance(payload, tuple) and not 0 < len(parts) < 256:
        raise ValueError(f"a payload tuple holds 1 to 255 arrays, not {len(parts)}")
    buf = io.BytesIO()
    buf.write(bytes([len(parts) if isinstance(payload, tuple) else 0]))
    for part in parts:
        np.save(buf, np.ascontiguousarray(part), allow_pickle=False)
    return buf.getvalue()


def unpack(data: bytes) -> Payload:
    """The payload :func:`pack` wrote (object arrays are refused)."""
    buf = io.BytesIO(data)
    count = buf.read(1)[0]
    arrays = [np.load(buf, allow_pickle=False) for _ in range(max(count, 1))]
    return tuple(arrays) if count else arrays[0]
