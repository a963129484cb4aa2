"""``biencoder``: rerank by the cosine of query and passage embeddings.

A light reranker for ``/v1/rerank`` and pipeline rerank stages until the listwise
LLM rerankers arrive. It encodes the passages it is given (the request's texts),
so in a pipeline its cost is ``depth`` passage encodings per query.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from genseek.encoders import DEFAULT_MODEL, shared_encoder
from genseek.params import BiEncoderParams


class BiEncoderReranker:
    def __init__(self, model: str = DEFAULT_MODEL, max_length: int | None = None,
                 batch_size: int = 32):
        self.encoder = shared_encoder(model, max_length)
        self.batch_size = batch_size

    Params = BiEncoderParams

    @classmethod
    def open(cls, params: dict[str, Any]) -> BiEncoderReranker:
        return cls(**BiEncoderParams.resolve(params))

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        q = self.encoder.encode([query])
        d = self.encoder.encode(list(texts), self.batch_size)
        return [float(x) for x in d @ q[0]]
