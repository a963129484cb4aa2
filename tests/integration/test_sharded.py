"""Sharded collections: routing, writes, read-your-writes, and sharded results equal to one
collection's (bm25 with global statistics, dense Flat, their fusion), through the Python API,
the CLI and the HTTP API (shards in this process; the Ray-owned shards are in
test_ray_cluster.py)."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from genseek.api.app import create_app
from genseek.api.settings import Settings
from genseek.cli import main
from genseek.collection import Collection
from genseek.errors import CollectionLocked, GenseekError
from genseek.indexers.bm25 import anserini_scores, by_raw_score
from genseek.sharded import ShardedCollection, open_sharded, shard_of
from genseek.types import Document, Hit

pytestmark = pytest.mark.slow

N_DOCS = 400
N_QUERIES = 120


@pytest.fixture(scope="module")
def scifact(beir_dataset):
    root = beir_dataset("scifact")
    with open(root / "corpus.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in itertools.islice(f, N_DOCS)]
    docs = [Document(r["_id"], r.get("title", ""), r.get("text", "")) for r in rows]
    with open(root / "queries.jsonl", encoding="utf-8") as f:
        queries = [json.loads(line)["text"] for line in itertools.islice(f, N_QUERIES)]
    return docs, queries


@pytest.fixture(scope="module")
def built(tmp_path_factory, scifact):
    """One collection and sharded ones of 1, 2 and 4 shards, all of the same documents."""
    docs, _ = scifact
    root = tmp_path_factory.mktemp("sharded")
    specs = {"bm25": "bm25", "dense": "dense"}
    full = Collection.create(root / "full", specs)
    full.write(docs)
    sharded = {}
    for n in (1, 2, 4):
        sharded[n] = ShardedCollection.create(root / f"s{n}", specs, n)
        sharded[n].write(docs)
    yield full, sharded
    full.close()
    for s in sharded.values():
        s.close()


def ids(hits):
    return [h.doc_id for h in hits]


def test_routing_is_stable_and_spreads():
    assert [shard_of("doc-1", 4)] * 3 == [shard_of("doc-1", 4) for _ in range(3)]
    counts = [0] * 4
    for i in range(4000):
        counts[shard_of(f"d{i}", 4)] += 1
    assert min(counts) > 850  # about 1000 each
    assert shard_of("é", 3) == shard_of("é", 3) and 0 <= shard_of("", 3) < 3


@pytest.mark.parametrize("n", [1, 2, 4])
def test_sharded_bm25_equals_one_index(built, scifact, n):
    """Global statistics (DFS): the same rankings to depth 100; scores equal up to float32
    rounding, which Anserini's rounding to 1e-4 turns into at most one 1e-4 step; with one
    shard, every score is the same float."""
    full, sharded = built
    _, queries = scifact
    want = full.retriever("bm25").search(queries, 100)
    got = sharded[n].retriever("bm25").search(queries, 100)
    worst = 0.0
    for w, g in zip(want, got, strict=True):
        assert ids(g) == ids(w)
        for a, b in zip(w, g, strict=True):
            worst = max(worst, abs(a.score - b.score))
    if n == 1:
        assert worst == 0.0
    else:
        assert worst <= 1.01e-4


def test_each_shard_alone_would_rank_differently(built, scifact):
    """The control: without the global statistics (each shard's own BM25), the merged
    scores are not the collection's, so the equality above is the DFS step's doing."""
    full, sharded = built
    _, queries = scifact
    four = sharded[4]
    local = four.shards.call("search", [("bm25", queries, 10, None)] * 4)
    want = full.retriever("bm25").search(queries, 10)
    differ = 0
    for q, w in enumerate(want):
        merged = sorted((h for part in local for h in part[q]), key=lambda h: -h.score)[:10]
        differ += [round(h.score, 3) for h in merged] != [round(h.score, 3) for h in w]
    assert differ > len(queries) // 2


def test_sharded_dense_flat_and_fusion_equal_one_collection(built, scifact):
    full, sharded = built
    _, queries = scifact
    want = full.retriever("dense").search(queries, 50)
    for n in (2, 4):
        got = sharded[n].retriever("dense").search(queries, 50)
        for w, g in zip(want, got, strict=True):
            assert ids(g) == ids(w)
            assert max(abs(a.score - b.score) for a, b in zip(w, g, strict=True)) <= 1e-6
        fused_want = full.search(queries, 10)
        fused_got = sharded[n].search(queries, 10)
        assert [ids(h) for h in fused_got] == [ids(h) for h in fused_want]


def test_merge_helpers_follow_lucene_and_anserini():
    # ties (within float32 rounding) go by id, whichever shard they came from
    hits = [Hit("b", 2.0), Hit("a", 2.0 * (1 - 1e-7)), Hit("c", 3.0), Hit("d", 1.0)]
    assert ids(by_raw_score(hits, 3)) == ["c", "a", "b"]
    # Anserini: rounded to 1e-4, a tie lowered by 1e-6 per earlier tie
    out = anserini_scores([Hit("x", 1.23456), Hit("y", 1.23456), Hit("z", 1.0)])
    assert [round(h.score, 6) for h in out] == [1.2346, 1.234599, 1.0]


def test_writes_route_and_read_your_writes(tmp_path, scifact):
    docs, _ = scifact
    coll = ShardedCollection.create(tmp_path / "c", {"bm25": "bm25"}, 3)
    try:
        coll.start_background_sync()
        first = coll.write(docs[:60], sync=False)
        assert first.upserted == 60 and len(first.shard_seqs) == 3
        assert coll.wait_for(first.seq, timeout=60)
        assert coll.applied_seq >= first.seq and len(coll) == 60
        # each document is in exactly the shard its id routes to
        per_shard = coll.shards.call("get", [([d.doc_id for d in docs[:60]],)] * 3)
        for i, found in enumerate(per_shard):
            assert set(found) == {d.doc_id for d in docs[:60] if shard_of(d.doc_id, 3) == i}
        changed = Document(docs[0].doc_id, docs[0].title, "zyxwvut quokka unique words")
        second = coll.write([changed], deletes=[docs[1].doc_id, "no-such-id"], sync=False)
        assert (second.seq, second.upserted, second.deleted, second.missing) == \
            (first.seq + 1, 1, 1, 1)
        assert coll.wait_for(second.seq, timeout=60)
        hits = coll.search("quokka zyxwvut", k=3, index="bm25")
        assert hits and hits[0].doc_id == docs[0].doc_id
        assert docs[1].doc_id not in coll.get([docs[1].doc_id]) and len(coll) == 59
        assert coll.get([docs[0].doc_id])[docs[0].doc_id].text == changed.text
        stats = coll.stats()
        assert stats["documents"] == 59 and stats["seq"] == second.seq and stats["shards"] == 3
        assert stats["indexes"]["bm25"]["documents"] == 59
        assert coll.index("bm25").stats().documents == 59
    finally:
        coll.close()
    # reopened: the sequence numbers and the documents are still there; one writer at a time
    again = open_sharded(tmp_path / "c")
    try:
        assert again.seq == second.seq and again.wait_for(first.seq, timeout=10)
        assert len(again) == 59
        with pytest.raises(CollectionLocked):
            open_sharded(tmp_path / "c")
    finally:
        again.close()


def test_bad_creation_leaves_nothing(tmp_path):
    with pytest.raises(GenseekError):
        ShardedCollection.create(tmp_path / "bad", {"x": "nosuchindex"}, 2)
    with pytest.raises(GenseekError, match="--shards"):
        ShardedCollection.create(tmp_path / "bad", {"bm25": "bm25"}, 0)
    assert list(tmp_path.iterdir()) == []


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def test_cli_index_search_stats_delete_sharded(tmp_path, scifact):
    docs, queries = scifact
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text})
                              + "\n" for d in docs[:120]), encoding="utf-8")
    coll = tmp_path / "c"
    rc, out, err = run("index", coll, "--from", corpus, "--shards", "3", "--index", "bm25",
                       "--no-progress", "--json")
    assert rc == 0, err
    assert json.loads(out)["upserted"] == 120 and json.loads(out)["documents"] == 120
    rc, out, _ = run("search", coll, queries[0], "-k", "5", "--json")
    hits = json.loads(out)["hits"]
    with Collection.create(tmp_path / "one", {"bm25": "bm25"}) as one:
        one.write(docs[:120])
        want = one.search(queries[0], k=5, index="bm25")
    assert [h["doc_id"] for h in hits] == ids(want)
    rc, out, _ = run("delete", coll, docs[0].doc_id, "--json")
    assert rc == 0 and json.loads(out)["deleted"] == 1
    rc, out, _ = run("stats", coll, "--json")
    stats = json.loads(out)
    assert stats["documents"] == 119 and stats["shards"] == 3
    assert stats["indexes"]["bm25"]["applied_seq"] == stats["seq"]
    rc, _, err = run("index", coll, "--from", corpus, "--shards", "2")
    assert rc != 0 and "different number of shards" in err
    rc, _, err = run("index", tmp_path / "one", "--from", corpus, "--shards", "2")
    assert rc != 0 and "unsharded" in err


def test_http_api_sharded_collection(tmp_path, scifact):
    docs, queries = scifact
    app = create_app(Settings(root=tmp_path / "root"))
    with TestClient(app) as client:
        r = client.post("/collections", json={"name": "sh", "indexes": {"bm25": "bm25"},
                                              "shards": 2})
        assert r.status_code == 201, r.text
        body = [{"id": d.doc_id, "title": d.title, "text": d.text} for d in docs[:80]]
        r = client.post("/collections/sh/documents", json={"documents": body, "refresh": True})
        assert r.status_code == 200 and r.json()["refreshed"] is True, r.text
        r = client.post("/collections/sh/search", json={"query": queries[3]})
        assert r.status_code == 200, r.text
        got = [h["doc_id"] for h in r.json()["results"]]
        r = client.get("/collections/sh")
        assert r.status_code == 200 and r.json()["documents"] == 80, r.text
        assert r.json()["applied_seq"] == r.json()["seq"]
        r = client.post("/collections", json={"name": "bad", "shards": 0})
        assert r.status_code == 422
        assert "sh" in client.get("/collections").json()["collections"]
    with Collection.create(tmp_path / "one", {"bm25": "bm25"}) as one:
        one.write(docs[:80])
        assert got == ids(one.search(queries[3], k=len(got), index="bm25"))
    assert Path(tmp_path / "root" / "sh" / "sharded.json").is_file()
