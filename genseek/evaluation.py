"""Evaluation with ir-measures: nDCG@10, R@100 and RR@10 by default.

Averages are over the queries that have judgements (as trec_eval does); a judged
query for which a system returned nothing counts as 0 rather than being dropped,
so a system cannot gain by abstaining. ``per_query`` gives the values behind a mean and
``randomization_test`` the paired significance of a difference between two runs.

:func:`experiment` is the one evaluation loop (the ``genseek eval`` command, the benchmarks
and the integration tests run it), in the manner of ``pyterrier.Experiment``: systems x topics
x qrels x measures in, an :class:`ExperimentResult` out (the runs, the mean of each measure per
system, the per-query values behind them, and the paired significance against a baseline)::

    result = experiment({"bm25": coll.index("bm25"), "rrf": coll.retriever()}, topics, qrels,
                        k=100, baseline="bm25")
    result.metrics["rrf"]["nDCG@10"], result.significance["rrf"]["nDCG@10"]["p_value"]
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from genseek.protocols import Retriever
from genseek.types import Hit

DEFAULT_MEASURES = ("nDCG@10", "R@100", "RR@10")
QUERY_BATCH = 64
"""Queries per ``search`` call in :func:`experiment`."""


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
    return _means(per_query(run, qrels, measures))


def _means(values: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
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


def paired_comparison(values: Mapping[str, float], baseline: Mapping[str, float],
                      trials: int = 10_000, seed: int = 0) -> dict[str, float | int]:
    """One measure of a system against a baseline, both ``{query_id: value}`` over the same
    queries: ``delta`` (mean of system - baseline), ``p_value`` (:func:`randomization_test`)
    and the queries it ``wins``, ``ties`` and ``losses`` on."""
    if set(values) != set(baseline):
        raise ValueError("paired_comparison: the two systems are scored on different queries")
    a = [values[q] for q in baseline]
    b = list(baseline.values())
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    return {"delta": sum(diffs) / len(diffs) if diffs else 0.0,
            "p_value": randomization_test(a, b, trials, seed),
            "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
            "losses": sum(d < 0 for d in diffs)}


@dataclass
class ExperimentResult:
    """What :func:`experiment` measured; every field is plain data (``runs`` holds
    :class:`~genseek.types.Hit` lists: :meth:`to_dict` turns them into ``[doc_id, score]``).

    - ``runs[system][query_id]``: the ranked hits, queries in topic order;
    - ``metrics[system][measure]``: the mean over the judged queries;
    - ``per_query[system][measure][query_id]``: the values behind that mean;
    - ``seconds[system]``: wall time of the searches (not of the scoring);
    - ``significance[system][measure]``: :func:`paired_comparison` against ``baseline``, for
      every system but the baseline (empty without a baseline).
    """

    measures: list[str]
    k: int
    query_ids: list[str]
    runs: dict[str, dict[str, list[Hit]]] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    per_query: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    baseline: str | None = None
    significance: dict[str, dict[str, dict[str, float | int]]] = field(default_factory=dict)

    def queries_per_s(self) -> dict[str, float]:
        """Searched queries per second of each system (left out where no time was measured)."""
        return {name: len(self.query_ids) / s for name, s in self.seconds.items() if s > 0}

    def to_dict(self, runs: bool = False) -> dict[str, Any]:
        """JSON-ready; the runs (``{system: {query_id: [[doc_id, score], ...]}}``) only with
        ``runs``."""
        out: dict[str, Any] = {
            "measures": list(self.measures), "k": self.k, "queries": len(self.query_ids),
            "metrics": self.metrics, "per_query": self.per_query, "seconds": self.seconds,
            "baseline": self.baseline, "significance": self.significance}
        if runs:
            out["runs"] = {name: {q: [[h.doc_id, h.score] for h in hits]
                                  for q, hits in run.items()} for name, run in self.runs.items()}
        return out


def experiment(systems: Mapping[str, Retriever], topics: Mapping[str, str],
               qrels: Mapping[str, Mapping[str, int]],
               measures: Sequence[str] = DEFAULT_MEASURES, *, k: int = 100,
               batch_size: int = QUERY_BATCH, baseline: str | None = None,
               trials: int = 10_000, progress: bool = False) -> ExperimentResult:
    """Search ``topics`` (``{query_id: text}``, in their order, ``batch_size`` at a time, to
    depth ``k``) with each of ``systems`` (``{name: retriever}``, in their order) and score
    the runs against ``qrels`` with ``measures`` (ir-measures names; none: only the runs).

    The scored queries are the judged queries of ``qrels`` (:func:`per_query`): one missing
    from ``topics`` counts 0, so pass the qrels of the topics to score a subset. With
    ``baseline`` (one of the names), every other system gets the paired significance of its
    per-query differences (:func:`paired_comparison`, ``trials`` sign flips). ``progress``
    shows one meter per system on stderr, as ``genseek eval`` does.
    """
    from genseek.progress import Meter

    if k < 1 or batch_size < 1:
        raise ValueError(f"experiment: k and batch_size must be >= 1, not {k} and {batch_size}")
    if baseline is not None and baseline not in systems:
        raise ValueError(f"experiment: baseline {baseline!r} is not one of the systems "
                         f"({', '.join(systems)})")
    qids, texts = list(topics), list(topics.values())
    result = ExperimentResult(list(measures), k, qids, baseline=baseline)
    for name, system in systems.items():
        start = time.perf_counter()
        hits: list[list[Hit]] = []
        with Meter(len(texts), f"eval {name}", unit="query", enabled=progress) as meter:
            for i in range(0, len(texts), batch_size):
                batch = texts[i:i + batch_size]
                got = system.search(batch, k)
                if len(got) != len(batch):
                    raise ValueError(f"experiment: system {name!r} returned {len(got)} ranked "
                                     f"lists for {len(batch)} queries")
                hits += got
                meter.update(len(batch))
        result.seconds[name] = time.perf_counter() - start
        result.runs[name] = dict(zip(qids, hits, strict=True))
        values = per_query(result.runs[name], qrels, measures) if measures else {}
        result.per_query[name] = values
        result.metrics[name] = _means(values)
    if baseline is not None:
        base = result.per_query[baseline]
        result.significance = {
            name: {m: paired_comparison(values[m], base[m], trials) for m in values}
            for name, values in result.per_query.items() if name != baseline}
    return result
