"""Evaluation with ir-measures: nDCG@10, R@100 and RR@10 by default.

Averages are over the queries that have judgements (as trec_eval does); a judged
query for which a system returned nothing counts as 0 rather than being dropped,
so a system cannot gain by abstaining. ``per_query`` gives the values behind a mean and
``randomization_test`` the paired significance of a difference between two runs.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from genseek.types import Hit

DEFAULT_MEASURES = ("nDCG@10", "R@100", "RR@10")


def per_query(run: Mapping[str, Sequence[Hit]], qrels: Mapping[str, Mapping[str, int]],
              measures: Sequence[str] = DEFAULT_MEASURES) -> dict[str, dict[str, float]]:
    """``{measure: {query_id: value}}`` over the judged queries (0 where the run has none)."""
    import ir_measures

    parsed = [ir_measures.parse_measure(m) for m in measures]
    judged = [q for q, docs in qrels.items() if docs]
    out: dict[str, dict[str, float]] = {m: dict.fromkeys(judged, 0.0) for m in measures}
    if not judged:
        return out
    qrels_list = [ir_measures.Qrel(q, d, int(g)) for q in judged for d, g in qrels[q].items()]
    run_list = [ir_measures.ScoredDoc(q, h.doc_id, float(h.score))
                for q in judged for h in run.get(q, ())]
    by_name = dict(zip((str(m) for m in parsed), measures, strict=True))
    for metric in ir_measures.iter_calc(parsed, qrels_list, run_list):
        out[by_name[str(metric.measure)]][metric.query_id] = float(metric.value)
    return out


def evaluate(run: Mapping[str, Sequence[Hit]], qrels: Mapping[str, Mapping[str, int]],
             measures: Sequence[str] = DEFAULT_MEASURES) -> dict[str, float]:
    """Mean of each measure over the judged queries."""
    values = per_query(run, qrels, measures)
    return {m: sum(v.values()) / len(v) if v else 0.0 for m, v in values.items()}


def randomization_test(a: Sequence[float], b: Sequence[float], trials: int = 10_000,
                       seed: int = 0) -> float:
    """Two-sided p-value of a paired randomisation (sign-flip) test on ``mean(a - b)``.

    ``a`` and ``b`` are one value per query, in the same query order. Each trial flips
    the sign of every per-query difference with probability 1/2; the p-value is the share
    of trials (plus the observed one) whose |mean| reaches the observed |mean|.
    """
    if len(a) != len(b):
        raise ValueError(f"randomization_test: {len(a)} values against {len(b)}")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    if not diffs:
        return 1.0
    observed = abs(sum(diffs)) - 1e-12
    rng = random.Random(seed)
    hits = 1
    for _ in range(trials):
        if abs(sum(d if rng.random() < 0.5 else -d for d in diffs)) >= observed:
            hits += 1
    return hits / (trials + 1)
