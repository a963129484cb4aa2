"""Evaluation with ir-measures on hand-checkable runs."""

from __future__ import annotations

import json
import math

import pytest

from genseek.evaluation import (
    DEFAULT_MEASURES,
    evaluate,
    experiment,
    paired_comparison,
    per_query,
    randomization_test,
)
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


# -- the experiment runner on a small synthetic collection ------------------------------------

DOCS = {f"d{i}": f"topic{i} common words" for i in range(10)}
TOPICS = {f"q{i}": f"topic{i}" for i in range(10)}
QRELS = {f"q{i}": {f"d{i}": 1} for i in range(10)}  # one relevant document per query


class WordOverlap:
    """Scores every document by the words it shares with the query (ties: by id); records
    the calls it gets."""

    def __init__(self, docs):
        self.docs = {d: set(text.split()) for d, text in docs.items()}
        self.calls = []

    def search(self, queries, k):
        self.calls.append((len(queries), k))
        out = []
        for q in queries:
            words = set(q.split())
            ranked = sorted(self.docs, key=lambda d: (-len(words & self.docs[d]), d))
            out.append([Hit(d, float(len(words & self.docs[d]))) for d in ranked[:k]])
        return out


class Reversed:
    """The whole ranking of ``inner`` upside down: its best document comes last (scores
    descend down the list: the measures rank by score)."""

    def __init__(self, inner):
        self.inner = inner

    def search(self, queries, k):
        full = self.inner.search(queries, len(DOCS))
        return [[Hit(h.doc_id, float(len(hits) - i)) for i, h in enumerate(reversed(hits))][:k]
                for hits in full]


def test_experiment_perfect_and_reversed_systems():
    result = experiment({"overlap": WordOverlap(DOCS), "reversed": Reversed(WordOverlap(DOCS))},
                        TOPICS, QRELS)
    assert result.metrics["overlap"] == {m: pytest.approx(1.0) for m in DEFAULT_MEASURES}
    # the relevant document is 10th of 10: RR 1/10, nDCG 1/log2(11), still recalled
    assert result.metrics["reversed"] == {"nDCG@10": pytest.approx(1 / math.log2(11)),
                                          "R@100": pytest.approx(1.0),
                                          "RR@10": pytest.approx(0.1)}
    assert list(result.runs) == ["overlap", "reversed"]
    assert list(result.runs["overlap"]) == list(TOPICS)  # topic order
    assert [h.doc_id for h in result.runs["overlap"]["q3"]][:2] == ["d3", "d0"]
    assert result.runs["reversed"]["q3"][-1].doc_id == "d3"
    assert set(result.seconds) == {"overlap", "reversed"}
    assert result.significance == {}  # no baseline


def test_experiment_per_query_values_are_behind_the_means():
    result = experiment({"overlap": WordOverlap(DOCS), "reversed": Reversed(WordOverlap(DOCS))},
                        TOPICS, QRELS, ["nDCG@10", "MRR@10", "P@1"])
    for name, by_measure in result.per_query.items():
        assert list(by_measure) == ["nDCG@10", "MRR@10", "P@1"]  # the names asked for
        assert evaluate(result.runs[name], QRELS, result.measures) == result.metrics[name]
        for m, values in by_measure.items():
            assert set(values) == set(QRELS)
            assert result.metrics[name][m] == pytest.approx(sum(values.values()) / len(values))
    assert result.per_query["reversed"]["P@1"] == dict.fromkeys(QRELS, 0.0)
    assert result.per_query["reversed"]["MRR@10"]["q0"] == pytest.approx(0.1)


def test_experiment_depth_cuts_the_runs():
    result = experiment({"reversed": Reversed(WordOverlap(DOCS))}, TOPICS, QRELS, k=5)
    assert all(len(hits) == 5 for hits in result.runs["reversed"].values())
    # the relevant document was 10th: cut off at depth 5, every measure is 0
    assert result.metrics["reversed"] == dict.fromkeys(DEFAULT_MEASURES, 0.0)


def test_experiment_significance_against_a_baseline():
    better = WordOverlap(DOCS)
    result = experiment({"reversed": Reversed(WordOverlap(DOCS)), "overlap": better}, TOPICS,
                        QRELS, baseline="reversed", trials=2000)
    assert result.baseline == "reversed"
    assert set(result.significance) == {"overlap"}  # every system but the baseline
    ndcg = result.significance["overlap"]["nDCG@10"]
    assert ndcg["delta"] == pytest.approx(1 - 1 / math.log2(11))
    assert ndcg["delta"] == pytest.approx(result.metrics["overlap"]["nDCG@10"]
                                          - result.metrics["reversed"]["nDCG@10"])
    assert (ndcg["wins"], ndcg["ties"], ndcg["losses"]) == (10, 0, 0)
    assert ndcg["p_value"] < 0.01  # 10 queries, all better: about 2 / 2**10
    recall = result.significance["overlap"]["R@100"]  # both recall everything
    assert (recall["delta"], recall["p_value"], recall["ties"]) == (0.0, 1.0, 10)
    assert json.loads(json.dumps(result.to_dict()))["significance"] == result.significance


def test_paired_comparison_of_mixed_gains():
    base = {f"q{i}": 0.5 for i in range(20)}
    mixed = {q: 0.6 if i % 2 else 0.4 for i, q in enumerate(base)}
    got = paired_comparison(mixed, base, trials=2000)
    assert (got["wins"], got["ties"], got["losses"]) == (10, 0, 10)
    assert got["delta"] == pytest.approx(0.0)
    assert got["p_value"] > 0.5
    with pytest.raises(ValueError, match="different queries"):
        paired_comparison({"q0": 1.0}, {"q1": 1.0})


def test_experiment_batches_the_queries():
    system = WordOverlap(DOCS)
    result = experiment({"overlap": system}, TOPICS, QRELS, k=7, batch_size=3)
    assert system.calls == [(3, 7), (3, 7), (3, 7), (1, 7)]
    once = experiment({"overlap": WordOverlap(DOCS)}, TOPICS, QRELS, k=7, batch_size=64)
    assert once.runs == result.runs


def test_experiment_scores_the_judged_queries():
    topics = {**{q: t for q, t in TOPICS.items() if q != "q9"}, "extra": "topic1"}
    result = experiment({"overlap": WordOverlap(DOCS)}, topics, QRELS, ["RR@10"])
    assert "extra" in result.runs["overlap"]  # searched, but it has no judgements
    values = result.per_query["overlap"]["RR@10"]
    assert set(values) == set(QRELS)
    assert values["q9"] == 0.0  # judged but not searched: counts 0
    assert result.metrics["overlap"]["RR@10"] == pytest.approx(0.9)


def test_experiment_without_measures_only_runs():
    result = experiment({"overlap": WordOverlap(DOCS)}, TOPICS, QRELS, [])
    assert result.metrics == {"overlap": {}}
    assert len(result.runs["overlap"]) == len(TOPICS)


def test_experiment_json_and_progress(capsys):
    result = experiment({"overlap": WordOverlap(DOCS)}, TOPICS, QRELS, k=2, progress=True)
    assert "genseek: eval overlap: 10/10 queries" in capsys.readouterr().err
    out = json.loads(json.dumps(result.to_dict(runs=True)))
    assert out["metrics"] == result.metrics
    assert out["runs"]["overlap"]["q4"] == [["d4", 1.0], ["d0", 0.0]]
    assert "runs" not in result.to_dict()
    assert set(result.queries_per_s()) <= {"overlap"}


def test_experiment_refuses_bad_input():
    with pytest.raises(ValueError, match="baseline 'bm25' is not one of the systems"):
        experiment({"overlap": WordOverlap(DOCS)}, TOPICS, QRELS, baseline="bm25")

    class Short:
        def search(self, queries, k):
            return [[]] * (len(queries) - 1)

    with pytest.raises(ValueError, match="returned 2 ranked lists for 3 queries"):
        experiment({"short": Short()}, dict(list(TOPICS.items())[:3]), QRELS)
    with pytest.raises(ValueError, match="k and batch_size"):
        experiment({"overlap": WordOverlap(DOCS)}, TOPICS, QRELS, k=0)
