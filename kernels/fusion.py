"""Rank fusion arithmetic: pure functions over ranked lists of (doc id, score).

Each input is a list of ``(doc_id, score)`` pairs sorted best first. Outputs are
sorted by fused score (descending), ties broken by doc id so fusion is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Ranked = Sequence[tuple[str, float]]


def _sorted(scores: dict[str, float], k: int) -> list[tuple[str, float]]:
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def rrf(lists: Sequence[Ranked], k: int, rrf_k: float = 60.0,
        weights: Sequence[float] | None = None) -> list[tuple[str, float]]:
    """Reciprocal rank fusion (Cormack et al., 2009): ``sum_i w_i / (rrf_k + rank_i(d))``.

    Ranks start at 1. A document missing from a list contributes nothing from it.
    """
    if rrf_k < 0:
        raise ValueError("rrf_k must be >= 0")
    weights = weights if weights is not None else [1.0] * len(lists)
    fused: dict[str, float] = {}
    for ranked, w in zip(lists, weights, strict=True):
        for rank, (doc_id, _) in enumerate(ranked, start=1):
            fused[doc_id] = fused.get(doc_id, 0.0) + w / (rrf_k + rank)
    return _sorted(fused, k)


def normalize(ranked: Ranked, method: str = "minmax") -> list[tuple[str, float]]:
    """Scores mapped to a common scale: ``minmax`` to [0, 1], ``zscore``, or ``none``.

    A list whose scores are all equal maps to 1.0 each under ``minmax`` and 0.0
    under ``zscore`` (no information to spread).
    """
    if not ranked or method == "none":
        return list(ranked)
    scores = [s for _, s in ranked]
    if method == "minmax":
        lo, hi = min(scores), max(scores)
        span = hi - lo
        return [(d, (s - lo) / span if span > 0 else 1.0) for d, s in ranked]
    if method == "zscore":
        mean = sum(scores) / len(scores)
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
        return [(d, (s - mean) / std if std > 0 else 0.0) for d, s in ranked]
    raise ValueError(f"unknown normalisation {method!r}: use minmax, zscore or none")


def linear(lists: Sequence[Ranked], k: int, weights: Sequence[float] | None = None,
           method: str = "minmax") -> list[tuple[str, float]]:
    """Weighted sum of normalised scores; a document missing from a list gets 0 from it."""
    weights = weights if weights is not None else [1.0] * len(lists)
    fused: dict[str, float] = {}
    for ranked, w in zip(lists, weights, strict=True):
        for doc_id, s in normalize(ranked, method):
            fused[doc_id] = fused.get(doc_id, 0.0) + w * s
    return _sorted(fused, k)
