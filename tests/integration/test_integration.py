"""End-to-end effectiveness on the shared BEIR datasets (skipped when they are absent).

Floors sit below the reference figures in each dataset's PROVENANCE.md (bm25s, k1=0.9,
b=0.4, stop words and stemming), leaving room for Lucene's analyser differing from bm25s':

- cranfield: reference nDCG@10 0.3515 -> floor 0.33
- cisi: reference nDCG@10 0.3669 -> floor 0.33
"""

from __future__ import annotations

import pytest

from genseek import Collection
from genseek.data.readers import read_corpus, read_qrels, read_queries
from genseek.evaluation import experiment

pytestmark = pytest.mark.integration


def build(path, dataset, specs):
    coll = Collection.create(path, specs)
    try:
        report = coll.ingest(read_corpus(dataset), batch_size=2000)
    except BaseException:
        coll.close()
        raise
    return coll, report


def judged_topics(dataset):
    qrels = read_qrels(dataset, "test")
    queries = read_queries(dataset)
    return {q: text for q, text in queries.items() if qrels.get(q)}, qrels


@pytest.mark.parametrize("name, floor", [("cranfield", 0.33), ("cisi", 0.33)])
def test_bm25_effectiveness(beir_dataset, tmp_path, name, floor):
    dataset = beir_dataset(name)
    coll, report = build(tmp_path / name, dataset, {"bm25": "bm25"})
    with coll:
        raw = (dataset / "corpus.jsonl").read_bytes().splitlines()
        lines = sum(1 for line in raw if line.strip())
        assert report.read == lines == len(coll)
        topics, qrels = judged_topics(dataset)
        result = experiment({"bm25": coll.index("bm25")}, topics, qrels).metrics["bm25"]
    assert result["nDCG@10"] >= floor, result
    assert result["R@100"] >= result["nDCG@10"] * 0.5  # sanity: recall is not broken


@pytest.mark.slow
def test_cisi_fusion_is_no_worse_than_the_weaker_system(beir_dataset, tmp_path):
    dataset = beir_dataset("cisi")
    coll, _ = build(tmp_path / "cisi", dataset, {"bm25": "bm25", "dense": "dense"})
    with coll:
        topics, qrels = judged_topics(dataset)
        systems = {"bm25": coll.index("bm25"), "dense": coll.index("dense"),
                   "rrf": coll.retriever(["bm25", "dense"], depth=100)}
        result = experiment(systems, topics, qrels, baseline="bm25", trials=1000)
    scores = result.metrics
    assert scores["bm25"]["nDCG@10"] >= 0.33, scores
    assert scores["dense"]["nDCG@10"] > 0.1, scores  # a working encoder, far above random
    for measure in ("nDCG@10", "R@100"):
        weaker = min(scores["bm25"][measure], scores["dense"][measure])
        assert scores["rrf"][measure] >= weaker, (measure, scores)
    assert set(result.significance) == {"dense", "rrf"}
    assert 0 < result.significance["rrf"]["nDCG@10"]["p_value"] <= 1
