"""The API over the wire: ``genseek serve`` in a subprocess, driven through GenseekClient.

Covers what the in-process tests cannot: a real uvicorn on 127.0.0.1, chunked
uploads over a socket, the serve command's key handling, and graceful shutdown
(SIGTERM right after acknowledged writes: every write is applied before exit and
is there after a restart).
"""

from __future__ import annotations

import signal
import sqlite3
import threading
from contextlib import closing

import httpx
import pytest
from _apiserver import ServerProcess, free_port
from _synth import make_docs, unique_token

from genseek.client import GenseekClient, GenseekClientError
from genseek.pipeline import Fusion, Pipeline, Rerank, Stage


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("server")
    proc = ServerProcess(base / "root", base / "server.log",
                         env={"GENSEEK_API_KEYS": "rk:read,wk:write"})
    yield proc
    assert proc.stop() == 0, proc.output()


@pytest.fixture(scope="module")
def client(server):
    with GenseekClient(server.url, api_key="wk", timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def reader(server):
    with GenseekClient(server.url, api_key="rk", timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def docs():
    return make_docs(25, seed=11)


@pytest.fixture(scope="module")
def coll(client, docs):
    created = client.create_collection("c1", {"bm25": "bm25", "dense": "dense"})
    assert created["name"] == "c1" and created["documents"] == 0
    result = client.upsert("c1", docs, refresh=True)
    assert result.refreshed and result.upserted == 25 and result.seq == 25
    return "c1"


def test_collections_and_documents(client, reader, coll, docs):
    assert "c1" in reader.list_collections()
    stats = reader.collection_stats("c1")
    assert stats["documents"] == 25 and stats["lag"] == 0
    assert set(stats["indexes"]) == {"bm25", "dense"}
    doc = reader.get_document("c1", "d3")
    assert (doc.doc_id, doc.title, doc.text, dict(doc.metadata)) == (
        "d3", docs[3].title, docs[3].text, dict(docs[3].metadata))
    assert doc.version == 4
    with pytest.raises(GenseekClientError) as info:
        reader.get_document("c1", "nope")
    assert info.value.status == 404 and info.value.type == "not_found"
    r = client.upsert("c1", [{"id": "odd/id?#", "text": "zeppelin airship"}], refresh=True)
    assert r.refreshed
    assert reader.get_document("c1", "odd/id?#").text == "zeppelin airship"
    bm25 = Pipeline(retrieve=[Stage(index="bm25")])
    assert [x.doc_id for x in reader.search("c1", "zeppelin", bm25)] == ["odd/id?#"]
    d = client.delete("c1", ["odd/id?#", "missing"], refresh=True)
    assert (d.deleted, d.missing, d.refreshed) == (1, 1, True)
    assert reader.search("c1", "zeppelin", bm25) == []


def test_search_pipelines(reader, coll, docs):
    results = reader.search("c1", unique_token(5))
    assert results[0].doc_id == "d5" and len(results) == 10
    rrf = Pipeline(retrieve=[Stage(index="bm25", k=50), Stage(index="dense", k=50)],
                   fusion=Fusion(method="rrf", k=60), k=5, fields=["title", "text"])
    results = reader.search("c1", unique_token(9), rrf)
    assert results[0].doc_id == "d9" and results[0].text == docs[9].text and len(results) == 5
    linear = Pipeline(retrieve=[Stage(index="bm25"), Stage(index="dense")],
                      fusion=Fusion(method="linear", weights=[0.3, 0.7]), k=3)
    assert len(reader.search("c1", "wing lift", linear)) == 3
    topic = docs[0].metadata["topic"]
    filtered = Pipeline(retrieve=[Stage(index="dense", k=25)], k=25, filter={"topic": topic},
                        fields=["metadata"])
    results = reader.search("c1", "anything", filtered)
    assert results and all(r.metadata == {"topic": topic} for r in results)
    assert {r.doc_id for r in results} == {d.doc_id for d in docs if d.metadata["topic"] == topic}
    reranked = Pipeline(retrieve=[Stage(index="bm25", k=10)], k=2,
                        rerank=Rerank(reranker="biencoder", depth=10))
    results = reader.search("c1", docs[2].contents, reranked)
    assert results[0].doc_id == "d2" and results[0].score == pytest.approx(1.0, abs=1e-3)
    batch = reader.search_batch("c1", [unique_token(i) for i in range(4)],
                                Pipeline(retrieve=[Stage(index="bm25")], k=1))
    assert [[r.doc_id for r in rs] for rs in batch] == [["d0"], ["d1"], ["d2"], ["d3"]]
    # a pipeline may also be given as a dict
    assert reader.search("c1", unique_token(1), {"retrieve": [{"index": "bm25"}], "k": 1})[0] \
        .doc_id == "d1"


def test_models(reader):
    vectors = reader.embeddings(["wing lift", "cell membrane"])
    assert len(vectors) == 2 and len(vectors[0]) == 384
    assert len(reader.embeddings("one text")) == 1
    sparse = reader.sparse_embeddings(["aircraft wing"], top_k=8)
    assert len(sparse) == 1 and 0 < len(sparse[0]) <= 8 and all(w > 0 for w in sparse[0].values())
    ranked = reader.rerank("wing lift", ["cell membrane", "wing lift and drag"], top_n=2)
    assert [i for i, _ in ranked] == [1, 0] and ranked[0][1] > ranked[1][1]


def test_errors_carry_status_and_message(server, client, reader, coll):
    with pytest.raises(GenseekClientError) as info:
        reader.search("nosuch", "x")
    assert info.value.status == 404 and "nosuch" in info.value.message
    with pytest.raises(GenseekClientError) as info:
        reader.search("c1", "x", Pipeline(retrieve=[Stage(index="nope")]))
    assert info.value.status == 404
    with pytest.raises(GenseekClientError) as info:
        reader.upsert("c1", [{"id": "x"}])
    assert info.value.status == 403 and info.value.type == "forbidden"
    with GenseekClient(server.url) as anonymous, pytest.raises(GenseekClientError) as info:
        anonymous.list_collections()
    assert info.value.status == 401
    with GenseekClient(server.url, api_key="wrong") as bad, pytest.raises(GenseekClientError) as info:
        bad.list_collections()
    assert info.value.status == 401
    with pytest.raises(GenseekClientError) as info:
        client.upsert("c1", [{"id": f"x{i}"} for i in range(1001)])
    assert info.value.status == 422
    with pytest.raises(GenseekClientError) as info:
        reader.request("POST", "/collections/c1/search",
                       {"query": "x", "pipeline": {"retrieve": [{"index": "bm25"}], "k": 5000}})
    assert info.value.status == 422 and info.value.details
    with pytest.raises(GenseekClientError) as info:
        reader.search("c1", "   ")
    assert info.value.status == 422
    with pytest.raises(GenseekClientError) as info:
        client.create_collection("../escape", {"bm25": "bm25"})
    assert info.value.status == 422
    assert not (server.root.parent / "escape").exists()
    with pytest.raises(GenseekClientError) as info:
        client.create_collection("c1")
    assert info.value.status == 409
    with GenseekClient(f"http://127.0.0.1:{free_port()}") as nowhere, \
            pytest.raises(GenseekClientError) as info:
        nowhere.health()
    assert info.value.status == 0


def test_oversized_bodies_on_the_wire(server, coll):
    headers = {"X-API-Key": "wk", "content-type": "application/json"}
    url = f"{server.url}/collections/c1/documents"
    limit = 16 * 1024 * 1024
    big = b'{"documents": [{"id": "big", "text": "' + b"x" * limit + b'"}]}'
    r = httpx.post(url, content=big, headers=headers, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"

    def chunks(n, size=1024 * 1024):
        yield b'{"documents": [{"id": "big", "text": "'
        for _ in range(n):
            yield b"x" * size
        yield b'"}]}'

    r = httpx.post(url, content=chunks(20), headers=headers, timeout=60)
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    # a chunked body under the limit goes through
    r = httpx.post(url, content=chunks(2, 1000), headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    assert httpx.post(f"{url}/delete", json={"ids": ["big"]}, headers=headers).status_code == 200


def test_metrics_and_ready(client, coll):
    client.search("c1", "wing")
    text = client.metrics()
    for needle in ("genseek_requests_total{", "genseek_request_seconds_bucket{",
                   'genseek_search_seconds_count{collection="c1",index="dense"}',
                   'genseek_index_documents{collection="c1",index="bm25"}',
                   'genseek_index_disk_bytes{collection="c1",index="dense"}',
                   'genseek_update_lag_ops{collection="c1",index="bm25"}'):
        assert needle in text, needle
    ready = client.ready()
    # catching_up: the previous test's delete may still be applying (no refresh)
    assert ready["status"] in ("ready", "catching_up") and "c1" in ready["collections"]


def test_searches_keep_being_served_during_writes(client, reader, coll):
    """Writes are applied by the background applier while searches are answered."""
    errors: list[BaseException] = []
    done = threading.Event()

    def write():
        try:
            for b in range(4):
                client.upsert("c1", make_docs(50, seed=20 + b, start=1000 + 50 * b, prefix="w"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=write)
    t.start()
    answered = 0
    while not done.is_set() or answered < 3:
        assert reader.search("c1", unique_token(3))[0].doc_id == "d3"
        answered += 1
    t.join()
    assert not errors, errors
    client.delete("c1", [f"w{i}" for i in range(1000, 1200)], refresh=True)
    assert reader.collection_stats("c1")["documents"] == 25


@pytest.mark.slow
def test_graceful_shutdown_keeps_acknowledged_writes(tmp_path):
    """SIGTERM right after writes acknowledged without refresh: the server applies them
    before it exits (its indexes are current on disk), and after a restart every
    document is there and searchable. This server has no API keys: loopback only."""
    root, log = tmp_path / "root", tmp_path / "server.log"
    server = ServerProcess(root, log)
    try:
        assert "bound to loopback" in server.output()
        docs = make_docs(240, seed=4)
        with GenseekClient(server.url) as c:  # no key needed
            c.create_collection("g", {"bm25": "bm25", "dense": "dense"})
            last = None
            for i in range(0, len(docs), 60):
                last = c.upsert("g", docs[i:i + 60])
            assert last is not None and last.seq == 240
    finally:
        rc = server.stop(signal.SIGTERM)
    out = server.output()
    assert rc == 0, out
    assert "shut down cleanly" in out
    # the dense index committed every write before the process exited
    with closing(sqlite3.connect(root / "g" / "indexes" / "dense" / "vectors.sqlite")) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0] == "240"
        assert db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 240

    again = ServerProcess(root, log)
    try:
        with GenseekClient(again.url) as c:
            stats = c.collection_stats("g")
            assert stats["documents"] == 240 and stats["lag"] == 0
            bm25 = Pipeline(retrieve=[Stage(index="bm25")], k=1)
            dense = Pipeline(retrieve=[Stage(index="dense")], k=1)
            for i in (0, 59, 60, 181, 239):
                assert c.search("g", unique_token(i), bm25)[0].doc_id == f"d{i}"
                assert c.search("g", docs[i].contents, dense)[0].doc_id == f"d{i}"
    finally:
        assert again.stop() == 0, again.output()
