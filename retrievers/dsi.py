"""``dsi``: Differentiable Search Index — decode a document identifier under the docid trie.

DSI (Tay et al., 2022, "Transformer Memory as a Differentiable Search Index") trains a model
to map document text and queries to document identifiers; retrieval is beam search over the
identifiers (constrained here by a CSR trie, ``genseek.kernels.trie``). DSI++ (Mehta et al.,
2023) adds documents by continual training with replay; see ``generative_train``.

Docid schemes (``scheme`` parameter):

- ``naive``: the document's own id string, tokenised (``tokenizer.encode(doc_id)``);
- ``atomic``: one token per document: the ``i``-th document gets token id ``V - 1 - i``
  (existing vocabulary rows re-purposed as unstructured identifiers, so no embedding
  resizing is needed; the mapping is fixed by the trained model's ``docids.json``);
- ``semantic``: hierarchical k-means over the MiniLM embeddings of the documents (``k = 10``
  clusters per level, leaves of at most ``leaf_size = 100`` documents): the id is the cluster
  path (one digit token per level) followed by the document's position in its leaf as two
  digit tokens. A document unknown to the model is placed by descending the stored
  centroids (nearest centroid per level) and takes the next free position of that leaf.

The mapping of a trained model lives in ``MODEL/docids.json`` (``{"scheme", "ids": {doc_id:
[token ids]}, "centroids": {path: [[float]*dim]*k}, "next_atomic"}``); documents it does not
know get new ids as above (decodable at once, but the model has not learned them until it is
trained on them: DSI's known limitation that DSI++ addresses).

Decoding and incremental behaviour are GENRE's (``genseek.retrievers.genre``): a
``TrieStore`` of main + delta tries over the keys of ``keys.sqlite``, tombstones hidden inside
the constraint, EOS after a complete id.

Spec parameters: ``model`` (a folder from ``genseek train dsi``; default smollm2),
``scheme`` (naive | atomic | semantic; default: the model's, else naive), ``num_beams``
(10), ``max_new_tokens`` (12), ``length_penalty`` (0.0), ``merge_docs`` (1000),
``batch_size`` (16), ``instruction``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from genseek.errors import GenseekError
from genseek.params import DsiParams, DsiSearchParams
from genseek.retrievers.genre import GenreIndex, vocab_size
from genseek.types import Document

SCHEMES = ("naive", "atomic", "semantic")
DOCIDS_FILE = "docids.json"


def digit_ids(tokenizer: Any) -> list[int]:
    """Token ids of ``"0"`` .. ``"9"`` (each must be a single token)."""
    out = []
    for d in range(10):
        ids = tokenizer.encode(str(d), add_special_tokens=False)
        if len(ids) != 1:
            raise GenseekError(f"dsi: the tokenizer splits the digit {d} into {len(ids)} tokens;"
                               " the semantic scheme needs one token per digit")
        out.append(int(ids[0]))
    return out


def hierarchical_kmeans(vectors: np.ndarray, k: int = 10, leaf_size: int = 100,
                        seed: int = 0) -> tuple[list[list[int]], dict[str, list[list[float]]]]:
    """Semantic ids of ``vectors`` (float32 ``[n, d]``): digit paths and centroids.

    Returns ``(paths, centroids)``: ``paths[i]`` = cluster digits then the two position
    digits; ``centroids[path]`` = the ``k`` centroids (``[k, d]``) used to split ``path``.
    """
    import faiss

    n = vectors.shape[0]
    paths: list[list[int]] = [[] for _ in range(n)]
    centroids: dict[str, list[list[float]]] = {}
    stack: list[tuple[list[int], np.ndarray]] = [([], np.arange(n))]
    while stack:
        prefix, idx = stack.pop()
        if idx.size <= leaf_size:
            for pos, i in enumerate(idx.tolist()):
                paths[i] = prefix + [pos // 10, pos % 10]
            continue
        x = np.ascontiguousarray(vectors[idx], dtype=np.float32)
        km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed + len(centroids), verbose=False)
        km.train(x)
        _, assign = km.index.search(x, 1)
        assign = assign[:, 0]
        if len(np.unique(assign)) < 2:  # degenerate (identical vectors): split evenly
            assign = np.arange(idx.size) % k
        centroids["".join(map(str, prefix))] = km.centroids.tolist()
        for c in range(k):
            sub = idx[assign == c]
            if sub.size:
                stack.append((prefix + [c], sub))
    return paths, centroids


class DocidMap:
    """Docid assignment of one scheme: the model's known ids + new ids for unknown docs."""

    def __init__(self, scheme: str, tokenizer: Any, vocab: int, data: dict[str, Any] | None):
        if scheme not in SCHEMES:
            raise GenseekError(f"dsi: unknown docid scheme {scheme!r}; known: "
                               f"{', '.join(SCHEMES)}")
        self.scheme = scheme
        self.tokenizer = tokenizer
        self.vocab = int(vocab)
        data = data or {}
        self.ids: dict[str, list[int]] = {str(k): list(v) for k, v in data.get("ids", {}).items()}
        self.centroids = {p: np.asarray(c, dtype=np.float32)
                          for p, c in data.get("centroids", {}).items()}
        self.next_atomic = int(data.get("next_atomic", len(self.ids)))
        self.digits = digit_ids(tokenizer) if scheme == "semantic" else []
        self.used = {tuple(v) for v in self.ids.values()}
        self._encoder: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "ids": self.ids, "next_atomic": self.next_atomic,
                "centroids": {p: c.tolist() for p, c in self.centroids.items()}}

    def key(self, doc: Document) -> list[int]:
        """The docid tokens of ``doc`` (assigned and remembered when new)."""
        known = self.ids.get(doc.doc_id)
        if known is not None:
            return known
        if self.scheme == "naive":
            key = list(self.tokenizer.encode(doc.doc_id, add_special_tokens=False))
            if not key:
                raise GenseekError(f"dsi: document id {doc.doc_id!r} tokenises to no token")
        elif self.scheme == "atomic":
            while (self.vocab - 1 - self.next_atomic,) in self.used:
                self.next_atomic += 1  # taken by a document indexed earlier
            tok = self.vocab - 1 - self.next_atomic
            if tok < 16:
                raise GenseekError(f"dsi: atomic docids exhausted the vocabulary ({self.vocab})")
            self.next_atomic += 1
            key = [tok]
        else:
            key = self._semantic(doc)
        self.ids[doc.doc_id] = key
        self.used.add(tuple(key))
        return key

    def _semantic(self, doc: Document) -> list[int]:
        if self._encoder is None:
            from genseek.encoders import shared_encoder

            self._encoder = shared_encoder("all-MiniLM-L6-v2", None)
        vec = self._encoder.encode([doc.contents])[0]
        path: list[int] = []
        while "".join(map(str, path)) in self.centroids:
            cents = self.centroids["".join(map(str, path))]
            path.append(int(np.argmax(cents @ vec)))
        digits = self.digits
        prefix = [digits[c] for c in path]
        pos = 0
        while True:
            tail = [digits[int(ch)] for ch in f"{pos:02d}"]
            if tuple(prefix + tail) not in self.used:
                return prefix + tail
            pos += 1


def load_docid_data(model: str) -> dict[str, Any] | None:
    path = Path(model).expanduser() / DOCIDS_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError as exc:
            raise GenseekError(f"{path}: unreadable docid map: {exc}") from None
    return None


def docid_scheme(params: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """``(scheme, the model's docid map or None)`` for a spec: the spec's scheme, else the
    model's, else naive. The spec is checked before the model folder is read."""
    DsiParams.check(params)
    data = load_docid_data(str(params.get("model", "smollm2")))
    scheme = str(params.get("scheme") or (data or {}).get("scheme") or "naive")
    if scheme not in SCHEMES:
        raise GenseekError(f"dsi: unknown docid scheme {scheme!r}; known: "
                           f"{', '.join(SCHEMES)}")
    if data is not None and data.get("scheme") != scheme:
        raise GenseekError(f"dsi: the model was trained with scheme {data.get('scheme')!r},"
                           f" not {scheme!r}")
    return scheme, data


class DsiIndex(GenreIndex):
    """Docid trie + a DSI-trained LM (GENRE's machinery with docids instead of titles)."""

    kind = "dsi"
    cue = "Docid:"
    Params = DsiParams
    SearchParams = DsiSearchParams

    def __init__(self, path: Path, params: dict[str, Any], lm: Any = None):
        scheme, data = docid_scheme(params)
        super().__init__(path, {**params, "scheme": scheme}, lm)
        self.docids = DocidMap(scheme, self.lm.tokenizer, vocab_size(self.lm), data)
        for _, key in self.table.rows.values():  # ids assigned earlier stay taken
            self.docids.used.add(tuple(int(t) for t in key))

    def make_key(self, doc: Document) -> list[int] | None:
        return self.docids.key(doc)
