"""Fusion stages: combine any retrievers into one (and are retrievers themselves).

Build them with :func:`genseek.pipeline.fuse` (the one builder the collection, the pipelines and
the Elasticsearch hybrid share); the classes are public for code that fuses its own stages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from genseek.errors import InvalidParameter
from genseek.kernels import fusion as F
from genseek.params import Params
from genseek.protocols import Retriever
from genseek.types import Hit


def _gather(stages: Sequence[Retriever], queries: Sequence[str], depth: int,
            params: Params | None):
    if params is not None:
        raise InvalidParameter("a fusion takes no search parameters (its stages do)")
    per_stage = [stage.search(queries, depth) for stage in stages]
    for qi in range(len(queries)):
        yield [[(h.doc_id, h.score) for h in hits[qi]] for hits in per_stage]


@dataclass
class RRFusion:
    """Reciprocal rank fusion of ``stages``, each searched to ``depth`` (at least k)."""

    stages: Sequence[Retriever]
    rrf_k: float = 60.0
    depth: int = 100
    weights: Sequence[float] | None = None

    def search(self, queries: Sequence[str], k: int,
               params: Params | None = None) -> list[list[Hit]]:
        depth = max(self.depth, k)
        return [
            [Hit(d, s) for d, s in F.rrf(lists, k, self.rrf_k, self.weights)]
            for lists in _gather(self.stages, queries, depth, params)
        ]


@dataclass
class LinearFusion:
    """Weighted sum of normalised scores (``minmax`` by default) of ``stages``."""

    stages: Sequence[Retriever]
    weights: Sequence[float] | None = None
    normalization: str = "minmax"
    depth: int = 100

    def search(self, queries: Sequence[str], k: int,
               params: Params | None = None) -> list[list[Hit]]:
        depth = max(self.depth, k)
        return [
            [Hit(d, s) for d, s in F.linear(lists, k, self.weights, self.normalization)]
            for lists in _gather(self.stages, queries, depth, params)
        ]
