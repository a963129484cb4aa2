"""Evaluation with ir-measures on hand-checkable runs."""

from __future__ import annotations

import math

import pytest

from genseek.evaluation import DEFAULT_MEASURES, evaluate
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
