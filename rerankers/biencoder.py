"""``biencoder``: rerank by the cosine of query and passage embeddings.

The light reranker (``/v1/rerank`` and pipeline rerank stages; the listwise LLM rerankers are
``first`` and ``listwise-gen``). It encodes the passages it is given, so in a pipeline its cost is
``depth`` passage encodings per query; every query and passage of a batch goes through the
encoder in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from genseek.encoders import DEFAULT_MODEL, shared_encoder
from genseek.params import BiEncoderParams


class BiEncoderReranker:
    """A :class:`~genseek.protocols.Reranker`: the cosine of MiniLM (or any encoder) vectors."""

    Params = BiEncoderParams

    def __init__(self, model: str = DEFAULT_MODEL, max_length: int | None = None,
                 batch_size: int = 32):
        self.encoder = shared_encoder(model, max_length)
        self.batch_size = batch_size

    @classmethod
    def open(cls, params: dict[str, Any]) -> BiEncoderReranker:
        return cls(**BiEncoderParams.resolve(params))

    def rank_batch(self, queries: Sequence[str],
                   texts: Sequence[Sequence[str]]) -> list[list[float]]:
        """Per query, the cosine of each candidate's vector with the query's."""
        if len(queries) != len(texts):
            raise ValueError(f"{len(queries)} queries but {len(texts)} candidate lists")
        flat = [t for group in texts for t in group]
        if not flat:
            return [[] for _ in queries]
        q = self.encoder.encode(list(queries), self.batch_size)  # [n_queries, dim]
        d = self.encoder.encode(flat, self.batch_size)  # [n_texts, dim]
        owner = np.repeat(np.arange(len(queries)), [len(g) for g in texts])
        sims = np.einsum("ij,ij->i", d, q[owner])  # [n_texts]
        out, start = [], 0
        for group in texts:
            out.append([float(x) for x in sims[start:start + len(group)]])
            start += len(group)
        return out
