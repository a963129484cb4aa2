"""Shards owned by Ray actors (one writer per shard): a local Ray pinned to 127.0.0.1, a
sharded collection whose two shards each live in their own actor process, written, searched
and reported like the in-process one, with the same results as one collection."""

from __future__ import annotations

import itertools
import json
import os
import time

import pytest

from genseek import cluster
from genseek.collection import Collection
from genseek.errors import CollectionLocked
from genseek.sharded import ShardedCollection, open_sharded
from genseek.types import Document

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    # every socket on 127.0.0.1; a custom resource for placing the shard actors
    cluster.init_local(num_cpus=2, log_to_driver=False, resources={"shard_box": 2})
    try:
        yield ray
    finally:
        cluster.shutdown()  # ray.shutdown, keeping the JVM's signal handlers


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
    coll = open_sharded(tmp_path / "sh", ray="local", cpus_per_shard=0.5,
                        resources={"shard_box": 1})
    try:
        assert coll.stats()["placement"] == "ray"
        # each shard's actor holds what it was placed with (Ray's view settles within seconds)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and ray.available_resources().get("shard_box", 0):
            time.sleep(0.2)
        held = ray.available_resources()
        assert held.get("shard_box", 0) == 0 and held.get("CPU", 0) <= 1.0, held
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


def test_cli_index_into_ray_owned_shards(tmp_path, beir_dataset):
    """``genseek index --shards 2 --ray local`` (a child process, as a user runs it: its own
    Ray, started and stopped by the command): the shards are Ray actors for the import (each
    runs its own indexes' model work), and the collection is an ordinary sharded one
    afterwards."""
    import subprocess
    import sys
    from pathlib import Path

    root = beir_dataset("scifact")
    corpus = tmp_path / "corpus.jsonl"
    with open(root / "corpus.jsonl", encoding="utf-8") as f:
        corpus.write_text("".join(itertools.islice(f, 80)), encoding="utf-8")
    script = Path(sys.executable).parent / "genseek"
    proc = subprocess.run(
        [str(script), "index", str(tmp_path / "c"), "--from", str(corpus), "--shards", "2",
         "--ray", "local", "--index", "bm25", "--no-progress", "--json"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["upserted"] == 80
    with open_sharded(tmp_path / "c") as coll:
        assert len(coll) == 80 and coll.n == 2
        assert sum(p["documents"] for p in coll.stats()["per_shard"]) == 80


SHUTDOWN_CHILD = """
import signal, sys, tempfile, pathlib
from genseek import cluster
from genseek.collection import Collection
from genseek.types import Document
root = pathlib.Path(tempfile.mkdtemp())

def jvm():
    c = Collection.create(root / "c", {"bm25": "bm25"})
    c.write([Document("a", "t", "cells and more cells")])
    return c

if sys.argv[1] == "jvm-first":
    c = jvm()
cluster.init_local(num_cpus=1, log_to_driver=False)
if sys.argv[1] == "ray-first":
    c = jvm()  # the JVM starts under Ray
assert "libjvm" in cluster._owner(int.from_bytes(cluster._fatal_handlers()[signal.SIGSEGV][:8], "little")) or sys.argv[1] == "ray-first"
for _ in range(100):
    if sys.argv[1] == "jvm-first":
        assert c.search("cells", k=1, index="bm25")[0].doc_id == "a"  # Lucene while Ray runs
cluster.shutdown()
handler = int.from_bytes(cluster._fatal_handlers()[signal.SIGSEGV][:8], "little")
assert "libjvm" in cluster._owner(handler), cluster._owner(handler)
for _ in range(200):  # Lucene after the shutdown: the JVM's own SIGSEGV use is handled
    assert c.search("cells", k=1, index="bm25")[0].doc_id == "a"
print("ok")
"""


@pytest.mark.parametrize("order", ["jvm-first", "ray-first"])
def test_shutdown_keeps_the_jvm_signal_handlers(order):
    """``ray.shutdown`` resets the fatal-signal handlers to the default, whether the JVM
    started before Ray or under it; :func:`genseek.cluster.shutdown` puts the JVM's back, so
    Lucene keeps working afterwards (a child process: a lost handler kills it with SIGSEGV)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", SHUTDOWN_CHILD, order], capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
