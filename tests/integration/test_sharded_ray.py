"""Shards owned by Ray actors (one writer per shard): a local Ray pinned to 127.0.0.1, a
sharded collection whose two shards each live in their own actor process, written, searched
and reported like the in-process one, with the same results as one collection."""

from __future__ import annotations

import itertools
import json
import os

import pytest

from genseek.collection import Collection
from genseek.errors import CollectionLocked
from genseek.sharded import ShardedCollection, open_sharded
from genseek.types import Document

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_owned_shards_equal_one_collection(local_ray, tmp_path, beir_dataset):
    root = beir_dataset("scifact")
    with open(root / "corpus.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in itertools.islice(f, 150)]
    docs = [Document(r["_id"], r.get("title", ""), r.get("text", "")) for r in rows]
    with open(root / "queries.jsonl", encoding="utf-8") as f:
        queries = [json.loads(line)["text"] for line in itertools.islice(f, 30)]
    ShardedCollection.create(tmp_path / "sh", {"bm25": "bm25"}, 2).close()
    with Collection.create(tmp_path / "one", {"bm25": "bm25"}) as one:
        one.write(docs)
        want = one.search(queries, k=20, index="bm25")
    coll = open_sharded(tmp_path / "sh", ray="local")
    try:
        assert coll.stats()["placement"] == "ray"
        pids = coll.shards.call("process")
        assert len(set(pids)) == 2 and os.getpid() not in pids  # each shard in its own actor
        written = coll.write(docs[:100])
        coll.write(docs[100:])
        assert coll.wait_for(written.seq, timeout=60) and len(coll) == 150
        got = coll.search(queries, k=20, index="bm25")
        assert [[h.doc_id for h in g] for g in got] == [[h.doc_id for h in w] for w in want]
        assert max(abs(a.score - b.score) for g, w in zip(got, want, strict=True)
                   for a, b in zip(g, w, strict=True)) <= 1.01e-4
        # the actors hold the shards' locks: nothing else may open a shard meanwhile
        with pytest.raises(CollectionLocked):
            Collection.open(tmp_path / "sh" / "shards" / "000")
    finally:
        coll.close()
    with open_sharded(tmp_path / "sh") as again:  # the actors let go of the shards
        assert len(again) == 150
