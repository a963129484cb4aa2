"""Evaluation with ir-measures: nDCG@10, R@100 and RR@10 by default.

Averages are over the queries that have judgements (as trec_eval does); a judged
query for which a system returned nothing counts as 0 rather than being dropped,
so a system cannot gain by abstaining.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from genseek.types import Hit

DEFAULT_MEASURES = ("nDCG@10", "R@100", "RR@10")


def evaluate(run: Mapping[str, Sequence[Hit]], qrels: Mapping[str, Mapping[str, int]],
             measures: Sequence[str] = DEFAULT_MEASURES) -> dict[str, float]:
    """Mean of each measure over the judged queries."""
    import ir_measures

    parsed = [ir_measures.parse_measure(m) for m in measures]
    judged = [q for q, docs in qrels.items() if docs]
    if not judged:
        return {m: 0.0 for m in measures}
    qrels_list = [ir_measures.Qrel(q, d, int(g)) for q in judged for d, g in qrels[q].items()]
    run_list = [ir_measures.ScoredDoc(q, h.doc_id, float(h.score))
                for q in judged for h in run.get(q, ())]
    totals = {str(m): 0.0 for m in parsed}
    for metric in ir_measures.iter_calc(parsed, qrels_list, run_list):
        totals[str(metric.measure)] += float(metric.value)
    by_name = dict(zip((str(m) for m in parsed), measures, strict=True))
    return {by_name[name]: total / len(judged) for name, total in totals.items()}
