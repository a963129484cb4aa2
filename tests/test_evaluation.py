"""Evaluation with ir-measures on hand-checkable runs."""

from __future__ import annotations

import math

import pytest

from genseek.evaluation import DEFAULT_MEASURES, evaluate, per_query, randomization_test
from genseek.types import Hit


def run_of(**queries):
    return {q: [Hit(d, float(len(ds) - i)) for i, d in enumerate(ds)] for q, ds in queries.items()}


def test_perfect_run():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}}
    result = evaluate(run_of(q1=["a", "x"], q2=["c", "b", "y"]), qrels)
    assert set(result) == set(DEFAULT_MEASURES)
    assert result == {"nDCG@10": pytest.approx(1.0), "R@100": pytest.approx(1.0),
                      "RR@10": pytest.approx(1.0)}


def test_values_by_hand():
    qrels = {"q1": {"a": 1}}
    result = evaluate(run_of(q1=["x", "y", "a"]), qrels)
    assert result["RR@10"] == pytest.approx(1 / 3)
    assert result["nDCG@10"] == pytest.approx(1 / math.log2(4))
    assert result["R@100"] == pytest.approx(1.0)


def test_graded_ndcg():
    qrels = {"q": {"a": 2, "b": 1}}
    result = evaluate(run_of(q=["b", "a"]), qrels, measures=["nDCG@10"])
    # trec_eval's nDCG: the gain is the grade itself, discounted by log2(rank + 1).
    dcg = 1 / math.log2(2) + 2 / math.log2(3)
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert result == {"nDCG@10": pytest.approx(dcg / ideal)}


def test_query_without_results_counts_as_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    full = evaluate(run_of(q1=["a"], q2=["b"]), qrels)
    half = evaluate(run_of(q1=["a"]), qrels)
    for m in DEFAULT_MEASURES:
        assert half[m] == pytest.approx(full[m] / 2)
    assert evaluate({}, qrels) == {m: 0.0 for m in DEFAULT_MEASURES}


def test_unjudged_queries_are_ignored():
    qrels = {"q1": {"a": 1}, "q2": {}}
    result = evaluate(run_of(q1=["a"], q2=["zzz"], q3=["a"]), qrels)
    assert result["nDCG@10"] == pytest.approx(1.0)
    assert evaluate(run_of(q1=["a"]), {}) == {m: 0.0 for m in DEFAULT_MEASURES}


def test_cutoffs_are_respected():
    qrels = {"q": {"rel": 1}}
    ids = [f"x{i}" for i in range(10)] + ["rel"]  # relevant at rank 11
    result = evaluate(run_of(q=ids), qrels)
    assert result["RR@10"] == 0.0
    assert result["nDCG@10"] == 0.0
    assert result["R@100"] == pytest.approx(1.0)


def test_per_query_values_average_to_evaluate():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    run = run_of(q1=["a"], q2=["x", "b"])
    values = per_query(run, qrels, ["nDCG@10", "RR@10"])
    assert values["RR@10"] == {"q1": 1.0, "q2": 0.5, "q3": 0.0}  # q3: no results, counts 0
    means = evaluate(run, qrels, ["nDCG@10", "RR@10"])
    for m, v in values.items():
        assert means[m] == pytest.approx(sum(v.values()) / 3)


def test_randomization_test():
    same = [0.1 * i for i in range(30)]
    assert randomization_test(same, same) == 1.0
    better = [x + 0.05 for x in same]
    assert randomization_test(better, same, trials=2000) < 0.001  # every query gains
    mixed = [x + (0.05 if i % 2 else -0.05) for i, x in enumerate(same)]
    assert randomization_test(mixed, same, trials=2000) > 0.5  # gains cancel losses
    assert randomization_test(better, same, trials=500, seed=3) == \
        randomization_test(better, same, trials=500, seed=3)
    with pytest.raises(ValueError, match="30 values against 2"):
        randomization_test(same, [1.0, 2.0])
