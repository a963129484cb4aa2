"""The HTTP API in-process (FastAPI TestClient): routes, pipelines, errors, security, metrics.

One app and one small bm25 + dense collection are shared by the module; tests that
write use collections of their own. Empty queries are a 422 (documented in the
route), not an empty result list.
"""

from __future__ import annotations

import base64
import json
import logging
import time

import numpy as np
import pytest
from _synth import make_docs, unique_token
from fastapi.testclient import TestClient

from genseek import Collection
from genseek.api.app import create_app
from genseek.api.settings import Settings, load_api_keys_file, parse_api_keys
from genseek.errors import GenseekError
from genseek.pipeline import MAX_K

KEYS = {"rk": {"read"}, "wk": {"write"}, "rw": {"read", "write"}}
R = {"X-API-Key": "rk"}
W = {"Authorization": "Bearer wk"}
MAX_DOCS = 50
MAX_QUERIES = 8
MAX_BODY = 256 * 1024


def as_json(doc):
    return {"id": doc.doc_id, "title": doc.title, "text": doc.text, "metadata": dict(doc.metadata)}


def error_of(response, status, type_=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    if type_ is not None:
        assert body["error"]["type"] == type_, body
    return body["error"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("api") / "root"


@pytest.fixture(scope="module")
def app(root):
    return create_app(Settings(root=root, api_keys=KEYS, max_batch_docs=MAX_DOCS,
                               max_queries=MAX_QUERIES, max_body_bytes=MAX_BODY))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def docs():
    return make_docs(30, seed=5)


@pytest.fixture(scope="module")
def coll(client, docs):
    r = client.post("/collections", headers=W,
                    json={"name": "docs", "indexes": {"bm25": "bm25", "dense": "dense"}})
    assert r.status_code == 201, r.text
    r = client.post("/collections/docs/documents", headers=W,
                    json={"documents": [as_json(d) for d in docs], "refresh": True})
    assert r.status_code == 200, r.text
    assert r.json() == {"seq": 30, "upserted": 30, "unchanged": 0, "refreshed": True}
    return "docs"


def make_coll(client, name, indexes=None):
    r = client.post("/collections", headers=W,
                    json={"name": name, "indexes": indexes or {"bm25": "bm25"}})
    assert r.status_code == 201, r.text
    return name


def search(client, name, query, pipeline=None, headers=R):
    body = {"query": query}
    if pipeline is not None:
        body["pipeline"] = pipeline
    return client.post(f"/collections/{name}/search", json=body, headers=headers)


# -- service routes ----------------------------------------------------------------------


def test_health_docs_and_openapi_need_no_key(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/collections", "/collections/{name}", "/collections/{name}/documents",
                 "/collections/{name}/documents/delete", "/collections/{name}/search",
                 "/collections/{name}/search/batch", "/v1/embeddings", "/v1/sparse-embeddings",
                 "/v1/rerank", "/health", "/ready", "/metrics"):
        assert path in paths, path
    assert "bearer" in spec["components"]["securitySchemes"]
    assert "security" in paths["/collections"]["get"]
    assert "security" not in paths["/health"]["get"]


def test_unknown_route_is_a_json_404(client):
    error_of(client.get("/nope", headers=R), 404, "not_found")
    error_of(client.put("/collections", headers=W, json={}), 405, "method_not_allowed")


# -- security -----------------------------------------------------------------------------


def test_auth_401_403_and_scopes(client, coll):
    body = {"query": "wing"}
    url = "/collections/docs/search"
    e = error_of(client.post(url, json=body), 401, "unauthorized")
    assert "API key" in e["message"]
    assert client.post(url, json=body).headers["www-authenticate"].startswith("Bearer")
    error_of(client.post(url, json=body, headers={"X-API-Key": "nope"}), 401)
    error_of(client.post(url, json=body, headers={"Authorization": "Bearer "}), 401)
    error_of(client.post(url, json=body, headers={"Authorization": "Basic cms6"}), 401)
    # every credential sent must be valid: a bad one is not skipped for a good one
    error_of(client.post(url, json=body, headers={"Authorization": "Basic cms6", **R}), 401)
    error_of(client.post(url, json=body, headers={"Authorization": "Bearer nope", **R}), 401)
    error_of(client.post(url, json=body, headers={"Authorization": "Bearer wk", **R}), 401)
    assert client.post(url, json=body, headers={"Authorization": "Bearer rk", **R}) \
        .status_code == 200
    error_of(client.get("/collections"), 401)
    for headers in (R, W, {"Authorization": "Bearer rk"}, {"X-API-Key": "rw"}):
        assert client.post(url, json=body, headers=headers).status_code == 200  # write => read
    # read-only keys cannot write
    error_of(client.post("/collections", json={"name": "x1"}, headers=R), 403, "forbidden")
    error_of(client.delete("/collections/docs", headers=R), 403)
    error_of(client.post("/collections/docs/documents", headers=R,
                         json={"documents": [{"id": "x"}]}), 403)
    error_of(client.post("/collections/docs/documents/delete", headers=R,
                         json={"ids": ["x"]}), 403)
    assert client.get("/collections", headers=R).status_code == 200
    assert client.post("/v1/rerank", headers=R,
                       json={"query": "q", "documents": ["a"]}).status_code == 200
    assert not (client.app.state.genseek.manager.root / "x1").exists()


def test_no_cors_headers_unless_configured(client, tmp_path):
    origin = {"Origin": "https://ui.example"}
    assert "access-control-allow-origin" not in client.get("/health", headers=origin).headers
    app = create_app(Settings(root=tmp_path / "cors", api_keys=KEYS,
                              cors_origins=("https://ui.example",)))
    with TestClient(app) as c:
        r = c.options("/collections/docs/search", headers={
            **origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        r = c.get("/collections", headers={**origin, **R})
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        r = c.options("/collections", headers={"Origin": "https://evil.example",
                                               "Access-Control-Request-Method": "GET"})
        assert r.headers.get("access-control-allow-origin") != "https://evil.example"


def test_body_over_the_limit_is_413_before_parsing(client, coll):
    big = {"documents": [{"id": "big", "text": "x" * (MAX_BODY + 10)}]}
    e = error_of(client.post("/collections/docs/documents", json=big, headers=W), 413,
                 "payload_too_large")
    assert str(MAX_BODY) in e["message"]
    # not JSON at all, still 413 (the size is checked first)
    error_of(client.post("/collections/docs/search", content=b"{" * (MAX_BODY + 1),
                         headers={**R, "content-type": "application/json"}), 413)

    def chunks():  # no Content-Length: the streamed size is counted
        for _ in range(8):
            yield b" " * (MAX_BODY // 4)

    r = client.post("/collections/docs/documents", content=chunks(),
                    headers={**W, "content-type": "application/json"})
    error_of(r, 413, "payload_too_large")
    assert client.get("/collections/docs/documents/big", headers=R).status_code == 404

    def small():
        yield b'{"query": '
        yield b'"wing"}'

    r = client.post("/collections/docs/search", content=small(),
                    headers={**R, "content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_bad_content_length_is_400(client):
    r = client.post("/collections/docs/search", content=b"{}",
                    headers={**R, "content-length": "abc", "content-type": "application/json"})
    assert r.status_code == 400


# -- collections ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "", "-a", "a b", "x" * 65, "é",
                                  "a\x00b", "/abs"])
def test_invalid_collection_names_create_nothing(client, root, name):
    outside = sorted(p.name for p in root.parent.iterdir())
    inside = sorted(p.name for p in root.iterdir())
    r = client.post("/collections", headers=W, json={"name": name, "indexes": {"bm25": "bm25"}})
    assert 400 <= r.status_code < 500 and r.status_code != 413
    assert "error" in r.json()
    assert sorted(p.name for p in root.parent.iterdir()) == outside
    assert sorted(p.name for p in root.iterdir()) == inside


@pytest.mark.parametrize("path", ["/collections/..", "/collections/%2E%2E",
                                  "/collections/..%2Fx", "/collections/a%2Fb",
                                  "/collections/%2Fetc", "/collections/x%00"])
def test_invalid_names_in_paths_are_4xx(client, root, path):
    before = sorted(p.name for p in root.parent.iterdir())
    for method, body in (("GET", None), ("DELETE", None)):
        r = client.request(method, path, headers=W, json=body)
        assert 400 <= r.status_code < 500, (method, path, r.status_code)
    r = client.post(path + "/documents", headers=W, json={"documents": [{"id": "a"}]})
    assert 400 <= r.status_code < 500
    assert sorted(p.name for p in root.parent.iterdir()) == before


def test_create_errors(client, coll):
    error_of(client.post("/collections", headers=W, json={"name": "docs"}), 409, "conflict")
    error_of(client.post("/collections", headers=W,
                         json={"name": "bad1", "indexes": {"x": "nosuchtype"}}), 400)
    error_of(client.post("/collections", headers=W,
                         json={"name": "bad2", "indexes": {"x": "bm25(k1=abc)"}}), 422,
             "invalid_parameter")
    e = error_of(client.post("/collections", headers=W,
                             json={"name": "bad3", "indexes": {"d": "dense(model=/etc)"}}), 400)
    assert "not served" in e["message"]
    e = error_of(client.post("/collections", headers=W, json={
        "name": "bad4", "indexes": {"d": "dense(factory=../../x)"}}), 400)
    assert "path" in e["message"]
    error_of(client.post("/collections", headers=W,
                         json={"name": "bad5", "indexes": {"../i": "bm25"}}), 422)
    error_of(client.post("/collections", headers=W, json={"name": "bad6", "indexes": {}}), 422)
    error_of(client.post("/collections", headers=W, json={"name": "bad7", "extra": 1}), 422)
    names = client.get("/collections", headers=R).json()["collections"]
    assert not [n for n in names if n.startswith("bad")]
    root = client.app.state.genseek.manager.root
    assert not [p for p in root.iterdir() if p.name.startswith("bad")]


def test_stats_and_list(client, coll):
    r = client.get("/collections/docs", headers=R)
    assert r.status_code == 200
    s = r.json()
    assert s["name"] == "docs" and s["documents"] == 30 and s["seq"] == 30
    assert s["lag"] == 0 and s["applied_seq"] == 30 and s["sync_error"] is None
    assert set(s["indexes"]) == {"bm25", "dense"}
    for index in s["indexes"].values():
        assert index["documents"] == 30 and index["applied_seq"] == 30 and index["lag"] == 0
    assert "path" not in s  # no server paths in answers
    assert "docs" in client.get("/collections", headers=R).json()["collections"]
    error_of(client.get("/collections/nosuch", headers=R), 404, "not_found")


def test_drop_collection(client, root):
    make_coll(client, "dropme")
    assert (root / "dropme").is_dir()
    r = client.delete("/collections/dropme", headers=W)
    assert r.status_code == 200 and r.json() == {"name": "dropme", "dropped": True}
    assert not (root / "dropme").exists()
    error_of(client.get("/collections/dropme", headers=R), 404)
    error_of(client.delete("/collections/dropme", headers=W), 404)
    assert "dropme" not in client.get("/collections", headers=R).json()["collections"]
    make_coll(client, "dropme")  # the name is free again
    assert client.delete("/collections/dropme", headers=W).status_code == 200


def test_collection_open_elsewhere_is_409(client, root):
    held = Collection.create(root / "held", {"bm25": "bm25"})
    try:
        error_of(client.get("/collections/held", headers=R), 409, "conflict")
        error_of(client.delete("/collections/held", headers=W), 409)
    finally:
        held.close()
    assert client.get("/collections/held", headers=R).status_code == 200
    assert client.delete("/collections/held", headers=W).status_code == 200


# -- documents ------------------------------------------------------------------------------


def test_write_get_delete_roundtrip(client):
    name = make_coll(client, "rw1")
    docs = [{"id": "a", "title": "Wing", "text": "lift and drag", "metadata": {"y": 2020}},
            {"id": "b/c", "text": "cell membrane protein"}, {"id": "dup", "text": "v1"},
            {"id": "dup", "text": "v2"}]
    r = client.post(f"/collections/{name}/documents", headers=W,
                    json={"documents": docs, "refresh": True})
    assert r.json() == {"seq": 3, "upserted": 3, "unchanged": 0, "refreshed": True}
    got = client.get(f"/collections/{name}/documents/a", headers=R).json()
    assert got == {"id": "a", "title": "Wing", "text": "lift and drag",
                   "metadata": {"y": 2020}, "version": 1}
    assert client.get(f"/collections/{name}/documents/b%2Fc", headers=R).json()["id"] == "b/c"
    assert client.get(f"/collections/{name}/documents/dup", headers=R).json()["text"] == "v2"
    error_of(client.get(f"/collections/{name}/documents/zz", headers=R), 404, "not_found")
    # identical content is not written again
    r = client.post(f"/collections/{name}/documents", headers=W, json={"documents": docs[:1]})
    assert r.json()["unchanged"] == 1 and r.json()["upserted"] == 0
    hits = search(client, name, "membrane").json()["results"]
    assert [h["doc_id"] for h in hits] == ["b/c"]
    r = client.post(f"/collections/{name}/documents/delete", headers=W,
                    json={"ids": ["b/c", "nope"], "refresh": True})
    assert r.json() == {"seq": 4, "deleted": 1, "missing": 1, "refreshed": True}
    assert search(client, name, "membrane").json()["results"] == []
    error_of(client.get(f"/collections/{name}/documents/b%2Fc", headers=R), 404)
    assert client.get(f"/collections/{name}", headers=R).json()["documents"] == 2


def test_write_without_refresh_is_applied_in_the_background(client):
    name = make_coll(client, "bg1")
    r = client.post(f"/collections/{name}/documents", headers=W,
                    json={"documents": [{"id": f"d{i}", "text": f"word{i} shared"}
                                        for i in range(20)]})
    assert r.status_code == 200 and r.json()["seq"] == 20
    deadline = time.monotonic() + 20
    while client.get(f"/collections/{name}", headers=R).json()["lag"] and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert search(client, name, "word7").json()["results"][0]["doc_id"] == "d7"


@pytest.mark.parametrize("body", [
    {"documents": "abc"},
    {"documents": [{"id": 1}]},
    {"documents": [{"id": "a", "title": 3}]},
    {"documents": [{"id": "a", "metadata": []}]},
    {"documents": [{"text": "no id"}]},
    {"documents": [{"id": ""}]},
    {"documents": [{"id": "a", "extra": 1}]},
    {"documents": [{"id": "a"}], "refresh": "yes"},
    {"documents": []},
    {"documents": [{"id": f"d{i}"} for i in range(MAX_DOCS + 1)]},
    {},
    [],
])
def test_bad_write_bodies_are_422(client, coll, body):
    error_of(client.post("/collections/docs/documents", headers=W, json=body), 422,
             "validation_error")


def test_bad_delete_bodies_are_422(client, coll):
    for body in ({"ids": "a"}, {"ids": [1]}, {"ids": []},
                 {"ids": [f"d{i}" for i in range(MAX_DOCS + 1)]}):
        error_of(client.post("/collections/docs/documents/delete", headers=W, json=body), 422)


def test_malformed_json_is_400(client, coll):
    for raw in (b"{bad", b'{"query": "x"', b"\xff\xfe", b"[" * 5000 + b"]" * 5000):
        r = client.post("/collections/docs/search", content=raw,
                        headers={**R, "content-type": "application/json"})
        assert r.status_code in (400, 422), (raw[:10], r.status_code)
        assert "error" in r.json()
    e = error_of(client.post("/collections/docs/search", content=b"{bad",
                             headers={**R, "content-type": "application/json"}), 400)
    assert "JSON" in e["message"]


def test_writes_to_an_unknown_collection_are_404(client):
    error_of(client.post("/collections/nosuch/documents", headers=W,
                         json={"documents": [{"id": "a"}]}), 404)
    error_of(client.post("/collections/nosuch/documents/delete", headers=W,
                         json={"ids": ["a"]}), 404)
    error_of(client.get("/collections/nosuch/documents/a", headers=R), 404)
    assert not (client.app.state.genseek.manager.root / "nosuch").exists()


# -- search -----------------------------------------------------------------------------------


def test_default_search_fuses_every_index(client, coll, docs):
    r = search(client, "docs", unique_token(3))
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"results", "took_ms"} and body["took_ms"] >= 0
    results = body["results"]
    assert results[0]["doc_id"] == "d3" and len(results) == 10
    assert set(results[0]) == {"doc_id", "score"}
    scores = [x["score"] for x in results]
    assert scores == sorted(scores, reverse=True)


def test_pipelines(client, coll, docs):
    by_id = {d.doc_id: d for d in docs}
    bm25_only = {"retrieve": [{"index": "bm25", "k": 5}], "k": 3, "fields": ["title", "text"]}
    results = search(client, "docs", unique_token(7), bm25_only).json()["results"]
    assert [x["doc_id"] for x in results] == ["d7"]
    assert results[0]["text"] == by_id["d7"].text and results[0]["title"] == by_id["d7"].title
    assert "metadata" not in results[0]

    rrf = {"retrieve": [{"index": "bm25"}, {"index": "dense"}],
           "fusion": {"method": "rrf", "k": 10, "weights": [2.0, 1.0]}, "k": 5}
    results = search(client, "docs", "protein gene expression", rrf).json()["results"]
    assert len(results) == 5
    linear = {"retrieve": [{"index": "bm25"}, {"index": "dense"}],
              "fusion": {"method": "linear", "normalization": "zscore"}, "k": 4}
    results = search(client, "docs", "protein gene expression", linear).json()["results"]
    assert len(results) == 4
    assert [x["score"] for x in results] == sorted((x["score"] for x in results), reverse=True)

    bio = {d.doc_id for d in docs if d.metadata["topic"] == "bio"}
    filtered = {"retrieve": [{"index": "dense", "k": 30}], "k": 30,
                "filter": {"topic": "bio"}, "fields": ["metadata"]}
    results = search(client, "docs", "wing airflow", filtered).json()["results"]
    assert {x["doc_id"] for x in results} == bio
    assert all(x["metadata"] == {"topic": "bio"} for x in results)
    any_of = {**filtered, "filter": {"topic": ["bio", "aero"]}}
    results = search(client, "docs", "wing airflow", any_of).json()["results"]
    assert {x["metadata"]["topic"] for x in results} <= {"bio", "aero"}

    reranked = {"retrieve": [{"index": "bm25", "k": 20}], "k": 3,
                "rerank": {"reranker": "biencoder", "depth": 10}}
    results = search(client, "docs", by_id["d4"].contents, reranked).json()["results"]
    assert results[0]["doc_id"] == "d4"
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-3)  # cosine of identical texts
    # per-request dense parameters reach the index
    params = {"retrieve": [{"index": "dense", "params": {"nprobe": 4}}], "k": 2}
    assert len(search(client, "docs", "wing", params).json()["results"]) == 2
    error_of(search(client, "docs", "wing", {"retrieve": [{"index": "bm25",
                                                           "params": {"k1": 1}}]}), 422,
             "invalid_parameter")


def test_batch_search(client, coll):
    queries = [unique_token(i) for i in range(5)]
    r = client.post("/collections/docs/search/batch", headers=R, json={
        "queries": queries, "pipeline": {"retrieve": [{"index": "bm25"}], "k": 2}})
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == 5
    assert [rs[0]["doc_id"] for rs in results] == [f"d{i}" for i in range(5)]
    # the default pipeline, and the batch bound
    r = client.post("/collections/docs/search/batch", headers=R, json={"queries": ["wing"]})
    assert len(r.json()["results"]) == 1
    error_of(client.post("/collections/docs/search/batch", headers=R,
                         json={"queries": ["q"] * (MAX_QUERIES + 1)}), 422)
    error_of(client.post("/collections/docs/search/batch", headers=R, json={"queries": []}), 422)
    error_of(client.post("/collections/docs/search/batch", headers=R,
                         json={"queries": ["ok", "  "]}), 422)


@pytest.mark.parametrize("body", [
    {"query": ""},
    {"query": "   \n"},
    {"query": 5},
    {"query": ["a"]},
    {"query": None},
    {},
    {"query": "x", "pipeline": {"retrieve": "bm25"}},
    {"query": "x", "pipeline": {"retrieve": []}},
    {"query": "x", "pipeline": {"retrieve": [{"index": "bm25"}], "k": MAX_K + 1}},
    {"query": "x", "pipeline": {"retrieve": [{"index": "bm25", "k": MAX_K + 1}]}},
    {"query": "x", "pipeline": {"retrieve": [{"index": "bm25"}], "k": 0}},
    {"query": "x", "pipeline": {"retrieve": [{"index": "bm25"}], "k": "ten"}},
    {"query": "x", "pipeline": {"retrieve": [{"index": "bm25"}], "fusion": {"method": "max"}}},
    {"query": "x", "pipeline": {"retrieve": [{"index": "bm25"}],
                                "fusion": {"weights": [1.0, 2.0]}}},
    {"query": "x", "pipeline": {"retrieve": [{"index": "bm25"}], "fields": ["secret"]}},
    {"query": "x", "pipeline": {"retrieve": [{"index": "bm25"}], "rerank": {"depth": 5}}},
    {"query": "x", "unknown": 1},
    {"query": "x" * 10_001},
])
def test_bad_search_bodies_are_422(client, coll, body):
    error_of(client.post("/collections/docs/search", headers=R, json=body), 422,
             "validation_error")


def test_search_404s(client, coll):
    e = error_of(search(client, "docs", "x", {"retrieve": [{"index": "nope"}]}), 404,
                 "not_found")
    assert "nope" in e["message"] and "bm25" in e["message"]
    error_of(search(client, "docs", "x", {"retrieve": [{"index": "bm25"}],
                                          "rerank": {"reranker": "nope"}}), 404)
    error_of(search(client, "nosuch", "x"), 404)
    error_of(client.post("/collections/nosuch/search/batch", headers=R,
                         json={"queries": ["x"]}), 404)


def test_stop_word_query_gives_empty_bm25_results(client, coll):
    r = search(client, "docs", "the and of", {"retrieve": [{"index": "bm25"}]})
    assert r.status_code == 200 and r.json()["results"] == []


# -- models ---------------------------------------------------------------------------------


def test_embeddings(client):
    r = client.post("/v1/embeddings", headers=R, json={"input": "hello world"})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == "all-MiniLM-L6-v2"
    assert body["usage"]["prompt_tokens"] > 0
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"]
    [item] = body["data"]
    assert item["object"] == "embedding" and item["index"] == 0 and len(item["embedding"]) == 384
    assert np.linalg.norm(item["embedding"]) == pytest.approx(1.0, abs=1e-4)

    texts = ["a wing", "a cell", "a library"]
    floats = client.post("/v1/embeddings", headers=R,
                         json={"input": texts, "model": "all-MiniLM-L6-v2"}).json()["data"]
    assert [d["index"] for d in floats] == [0, 1, 2]
    packed = client.post("/v1/embeddings", headers=R,
                         json={"input": texts, "encoding_format": "base64"}).json()["data"]
    for f, p in zip(floats, packed, strict=True):
        vec = np.frombuffer(base64.b64decode(p["embedding"]), dtype="<f4")
        np.testing.assert_allclose(vec, f["embedding"], rtol=1e-6)
    error_of(client.post("/v1/embeddings", headers=R, json={"input": "x", "model": "gpt"}),
             404)
    for bad in ({"input": []}, {"input": 3}, {"input": ["x"] * (MAX_DOCS + 1)}, {},
                {"input": "x", "encoding_format": "int8"}):
        error_of(client.post("/v1/embeddings", headers=R, json=bad), 422)


def test_sparse_embeddings(client):
    r = client.post("/v1/sparse-embeddings", headers=R,
                    json={"input": ["aircraft wing lift", "protein folding"], "top_k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "splade-tiny" and len(body["data"]) == 2
    for i, item in enumerate(body["data"]):
        assert item["index"] == i
        terms = item["embedding"]
        assert 0 < len(terms) <= 5
        weights = [t["weight"] for t in terms]
        assert all(w > 0 for w in weights) and weights == sorted(weights, reverse=True)
        assert all(isinstance(t["token"], str) for t in terms)
    assert "wing" in {t["token"] for t in body["data"][0]["embedding"]}
    one = client.post("/v1/sparse-embeddings", headers=R, json={"input": "wing"}).json()
    assert len(one["data"]) == 1
    error_of(client.post("/v1/sparse-embeddings", headers=R, json={"input": "x", "top_k": 0}),
             422)


def test_rerank(client):
    docs = ["the cell membrane", "aircraft wing lift and drag", "library catalog"]
    r = client.post("/v1/rerank", headers=R, json={"query": "wing lift", "documents": docs})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "biencoder"
    results = body["results"]
    assert sorted(x["index"] for x in results) == [0, 1, 2]
    assert results[0]["index"] == 1
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    top = client.post("/v1/rerank", headers=R, json={
        "query": "wing lift", "documents": docs, "top_n": 1, "return_documents": True,
        "model": "biencoder"}).json()["results"]
    assert top == [{"index": 1, "relevance_score": scores[0], "document": {"text": docs[1]}}]
    error_of(client.post("/v1/rerank", headers=R,
                         json={"query": "q", "documents": ["a"], "model": "nope"}), 404)
    for bad in ({"query": "", "documents": ["a"]}, {"query": "q", "documents": []},
                {"query": "q", "documents": [1]}, {"query": "q", "documents": ["a"], "top_n": 0}):
        error_of(client.post("/v1/rerank", headers=R, json=bad), 422)


# -- readiness, timeouts, metrics, logs ------------------------------------------------------


def test_ready_reports_lag_and_sync_errors(client, app):
    name = make_coll(client, "lagging")
    manager = app.state.genseek.manager
    assert client.get("/ready").status_code == 200
    with manager.use(name) as c:
        c.stop_background_sync()
    r = client.post(f"/collections/{name}/documents", headers=W,
                    json={"documents": [{"id": "a", "text": "wing"}]})
    assert r.json()["refreshed"] is False
    seq = r.json()["seq"]
    assert set(client.get("/ready").json()) == {"status"}  # details need a key
    r = client.get("/ready", headers=R)  # the server serves: 200, saying what is behind
    assert r.status_code == 200 and r.json()["status"] == "catching_up"
    assert r.json()["collections"][name]["indexes"]["bm25"] == {
        "state": "catching_up", "lag": 1, "error": None}
    r = client.get(f"/collections/{name}/ready", headers=R)
    assert r.status_code == 503 and r.json()["state"] == "catching_up"
    with manager.use(name) as c:
        c.start_background_sync()
        assert c.wait_for(seq, timeout=20)
        c.sync_errors["bm25"] = "RuntimeError: disk on fire"
    r = client.get("/ready", headers=R)
    assert r.status_code == 200 and r.json()["status"] == "degraded"
    assert "fire" in r.json()["collections"][name]["indexes"]["bm25"]["error"]
    r = client.get(f"/collections/{name}/ready", headers=R)
    assert r.status_code == 503 and r.json()["indexes"]["bm25"]["state"] == "failed"
    error_of(search(client, name, "wing", {"retrieve": [{"index": "bm25"}]}), 503,
             "index_unavailable")
    with manager.use(name) as c:
        c.sync_errors.pop("bm25")
    r = client.get("/ready", headers=R)
    assert r.status_code == 200 and r.json()["status"] == "ready"
    assert r.json()["collections"][name]["indexes"]["bm25"] == {
        "state": "ready", "lag": 0, "error": None}
    assert client.get(f"/collections/{name}/ready", headers=R).status_code == 200
    assert client.delete(f"/collections/{name}", headers=W).status_code == 200


def test_slow_request_is_504(tmp_path):
    app = create_app(Settings(root=tmp_path / "slow", request_timeout_s=0.5))

    class Slow:
        def encode(self, texts):
            time.sleep(3)
            return np.zeros((len(texts), 4), dtype=np.float32)

    app.state.genseek.models.encoder = lambda: Slow()
    with TestClient(app) as c:
        start = time.monotonic()
        e = error_of(c.post("/v1/embeddings", json={"input": "x"}), 504, "timeout")
        assert time.monotonic() - start < 2.5
        assert "0.5s" in e["message"]
        assert "it was a read: nothing was changed" in e["message"]
        assert c.get("/health").status_code == 200


def test_a_model_load_does_not_count_against_the_timeout(tmp_path):
    from genseek.models import MODELS

    app = create_app(Settings(root=tmp_path / "slow", request_timeout_s=0.5))

    class FirstLoad:  # the first request pays for a model load, as a real one does
        def encode(self, texts):
            with MODELS.track(("test", "slow-model")):
                time.sleep(1.5)
            return np.zeros((len(texts), 4), dtype=np.float32)

    app.state.genseek.models.encoder = lambda: FirstLoad()
    with TestClient(app) as c:
        r = c.post("/v1/embeddings", json={"input": "x"})
        assert r.status_code == 200, r.text
    assert "(test, slow-model)" in MODELS.status()["loaded"]


def test_a_slow_write_is_504_saying_it_was_a_write(tmp_path):
    Collection.create(tmp_path / "root" / "w", {"bm25": "bm25"}).close()
    app = create_app(Settings(root=tmp_path / "root", request_timeout_s=1.0))
    with TestClient(app) as c:
        with app.state.genseek.manager.use("w") as coll:  # opened here, outside any request
            real = coll.write

            def slow(*args, **kwargs):
                time.sleep(4)
                return real(*args, **kwargs)

            coll.write = slow
        e = error_of(c.post("/collections/w/documents",
                            json={"documents": [{"id": "a", "text": "wing"}]}), 504, "timeout")
        assert "it was a write: it may still have been applied" in e["message"]


def test_preload_opens_collections_and_loads_models_at_start(tmp_path):
    root = tmp_path / "root"
    with Collection.create(root / "pre", {"bm25": "bm25"}) as c:
        c.write(make_docs(5))
    app = create_app(Settings(root=root, preload="all", rerankers={
        "biencoder": "biencoder", "broken": "first(model=/nonexistent/llm)"}))
    with TestClient(app) as client:
        deadline = time.monotonic() + 300
        while True:
            models = client.get("/ready").json()["models"]
            if models["preload"]["state"] == "done" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        body = client.get("/ready").json()
    assert body["models"]["preload"]["state"] == "done"
    assert "pre" in body["collections"]  # opened with no request naming it
    failed = body["models"]["preload"]["failed"]
    assert list(failed) == ["reranker broken"] and "nonexistent" in failed["reranker broken"]
    assert "java" in body["models"]["loaded"]
    assert any("all-MiniLM-L6-v2" in m for m in body["models"]["loaded"])


def test_metrics(client, coll):
    search(client, "docs", "wing", {"retrieve": [{"index": "bm25"}, {"index": "dense"}]})
    error_of(client.get("/metrics"), 401, "unauthorized")  # names collections: needs a key
    r = client.get("/metrics", headers=R)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert ('genseek_requests_total{method="POST",route="/collections/{name}/search",'
            'status="200"}') in text
    assert 'genseek_request_seconds_bucket{le="0.1",route="/collections/{name}/search"}' in text
    assert 'genseek_search_seconds_count{collection="docs",index="bm25"}' in text
    assert 'genseek_search_seconds_count{collection="docs",index="dense"}' in text
    assert 'genseek_index_documents{collection="docs",index="dense"} 30.0' in text
    assert 'genseek_index_disk_bytes{collection="docs",index="bm25"}' in text
    assert 'genseek_update_lag_ops{collection="docs",index="bm25"} 0.0' in text
    client.get("/no/such/path/123", headers=R)  # unknown paths share one label
    text = client.get("/metrics", headers=R).text
    assert "/no/such/path/123" not in text and 'route="unmatched"' in text


def test_one_json_log_line_per_request(client, coll, caplog):
    with caplog.at_level(logging.INFO, logger="genseek.api"):
        search(client, "docs", "wing")
        client.get("/collections/docs", headers={"X-API-Key": "bad"})
    lines = [json.loads(r.getMessage()) for r in caplog.records
             if r.name == "genseek.api" and r.getMessage().startswith("{")]
    requests = [x for x in lines if x.get("event") == "request"]
    assert len(requests) == 2
    ok, denied = requests
    assert ok["method"] == "POST" and ok["route"] == "/collections/{name}/search"
    assert ok["status"] == 200 and ok["collection"] == "docs" and ok["ms"] >= 0
    assert denied["status"] == 401 and denied["route"] == "/collections/{name}"


def test_searches_are_served_while_a_request_blocks_a_thread(client, coll, app):
    """A slow request occupies a worker thread, not the event loop."""
    import threading

    models = app.state.genseek.models
    original = models.reranker
    gate = threading.Event()

    class Blocking:
        def rank_batch(self, queries, texts):
            gate.wait(10)
            return [[0.0] * len(t) for t in texts]

    models.reranker = lambda name: Blocking()
    try:
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", client.post(
            "/v1/rerank", headers=R, json={"query": "q", "documents": ["a"]})))
        t.start()
        time.sleep(0.2)
        assert t.is_alive()
        start = time.monotonic()
        assert search(client, "docs", "wing").status_code == 200
        assert time.monotonic() - start < 5
        gate.set()
        t.join(10)
        assert out["r"].status_code == 200
    finally:
        models.reranker = original
        gate.set()


# -- settings -------------------------------------------------------------------------------


def test_settings_from_env(tmp_path):
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [{"key": "f1", "scopes": ["read", "write"]}]}))
    s = Settings.from_env({"GENSEEK_API_KEYS": "a:read, b:write,c:read+write",
                           "GENSEEK_API_KEYS_FILE": str(keys_file), "GENSEEK_PORT": "9000",
                           "GENSEEK_CORS_ORIGINS": "https://a.example, https://b.example"},
                          root=tmp_path)
    assert dict(s.api_keys) == {"a": {"read"}, "b": {"write"}, "c": {"read", "write"},
                                "f1": {"read", "write"}}
    assert s.port == 9000 and s.cors_origins == ("https://a.example", "https://b.example")
    assert s.root == tmp_path and s.auth_enabled
    assert not Settings.from_env({}, root=tmp_path).auth_enabled
    with pytest.raises(AttributeError):
        s.port = 1  # frozen


@pytest.mark.parametrize("text", ["a", "a:admin", "a:", ":read", "a:read,a:write", "a b:read"])
def test_bad_api_keys_are_one_line_errors(text):
    with pytest.raises(GenseekError) as info:
        parse_api_keys(text)
    assert "\n" not in str(info.value) and "GENSEEK_API_KEYS" in str(info.value)


def test_bad_settings(tmp_path):
    bad_file = tmp_path / "keys.json"
    for content in ("{", "[]", '{"keys": [{"key": "k"}]}', '{"keys": [{"key": "k", '
                    '"scopes": ["root"]}]}', '{"keys": [{"key": 5, "scopes": ["read"]}]}'):
        bad_file.write_text(content)
        with pytest.raises(GenseekError) as info:
            load_api_keys_file(bad_file)
        assert str(bad_file) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(GenseekError, match="cannot read"):
        load_api_keys_file(tmp_path / "missing.json")
    with pytest.raises(GenseekError, match="GENSEEK_ROOT"):
        Settings.from_env({})
    with pytest.raises(GenseekError, match="GENSEEK_PORT"):
        Settings.from_env({"GENSEEK_PORT": "http"}, root=tmp_path)
    for field, value in (("max_batch_docs", 0), ("max_body_bytes", -1), ("port", 70000),
                         ("request_timeout_s", 0), ("rerankers", {"../x": "biencoder"})):
        with pytest.raises(GenseekError):
            Settings(root=tmp_path, **{field: value})


def test_cli_refuses_a_public_host_without_keys(tmp_path, monkeypatch, capsys):
    from genseek.cli import main

    monkeypatch.delenv("GENSEEK_API_KEYS", raising=False)
    monkeypatch.delenv("GENSEEK_API_KEYS_FILE", raising=False)
    assert main(["serve", "--root", str(tmp_path / "r"), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "no API key" in err and "0.0.0.0" in err and len(err.strip().splitlines()) == 1


def test_serve_help():
    from genseek.cli import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0


def test_body_limit_counts_every_chunk_of_a_stream():
    """Raw ASGI: a chunked body in many messages is refused once it passes the limit,
    and one under the limit reaches the app whole."""
    import anyio

    from genseek.api.middleware import BodyLimitMiddleware

    seen = []

    async def inner(scope, receive, send):
        message = await receive()
        seen.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def call(chunks):
        messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                    for i, c in enumerate(chunks)]
        sent = []

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/x",
                 "headers": [(b"transfer-encoding", b"chunked")]}
        await BodyLimitMiddleware(inner, limit=100)(scope, receive, send)
        return sent[0]["status"], messages

    status, left = anyio.run(call, [b"a" * 40] * 5)
    assert status == 413 and not left  # refused, and the rest of the body was read
    assert seen == []
    status, _ = anyio.run(call, [b"a" * 40, b"b" * 40, b"c" * 20])
    assert status == 200 and seen == [b"a" * 40 + b"b" * 40 + b"c" * 20]


def test_refresh_is_bounded_by_the_request_timeout(tmp_path):
    """An index that cannot catch up in time: the write is still acknowledged (200),
    with refreshed false, before the 504 deadline."""
    Collection.create(tmp_path / "r" / "s", {"bm25": "bm25"}).close()
    app = create_app(Settings(root=tmp_path / "r", request_timeout_s=2.0))
    with TestClient(app) as c:
        with app.state.genseek.manager.use("s") as coll:
            coll.stop_background_sync()
            coll._sync_index = lambda *a, **k: None  # the applier is stuck
        start = time.monotonic()
        r = c.post("/collections/s/documents",
                   json={"documents": [{"id": "a", "text": "x"}], "refresh": True})
        assert r.status_code == 200 and r.json()["refreshed"] is False
        assert time.monotonic() - start < 2.0
        with app.state.genseek.manager.use("s") as coll:
            del coll._sync_index
            coll.start_background_sync()
            assert coll.wait_for(r.json()["seq"], timeout=20)


def test_drop_waits_for_running_searches(client, app):
    """A collection is never closed under a running request."""
    import threading

    name = make_coll(client, "busy")
    client.post(f"/collections/{name}/documents", headers=W,
                json={"documents": [{"id": "a", "text": "wing"}], "refresh": True})
    models = app.state.genseek.models
    original = models.reranker
    gate, entered = threading.Event(), threading.Event()

    class Blocking:
        def rank_batch(self, queries, texts):
            entered.set()
            gate.wait(10)
            return [[1.0] * len(t) for t in texts]

    models.reranker = lambda n: Blocking()
    out = {}
    try:
        pipeline = {"retrieve": [{"index": "bm25"}], "rerank": {"reranker": "biencoder"}}
        searcher = threading.Thread(target=lambda: out.setdefault(
            "search", search(client, name, "wing", pipeline)))
        searcher.start()
        assert entered.wait(10)
        dropper = threading.Thread(target=lambda: out.setdefault(
            "drop", client.delete(f"/collections/{name}", headers=W)))
        dropper.start()
        time.sleep(0.3)
        assert dropper.is_alive()  # waiting for the search
        gate.set()
        searcher.join(10)
        dropper.join(10)
    finally:
        gate.set()
        models.reranker = original
    assert out["search"].status_code == 200
    assert [x["doc_id"] for x in out["search"].json()["results"]] == ["a"]
    assert out["drop"].status_code == 200
    error_of(client.get(f"/collections/{name}", headers=R), 404)


def test_rerankers_from_the_environment(tmp_path):
    s = Settings.from_env({"GENSEEK_ROOT": str(tmp_path),
                           "GENSEEK_RERANKERS": "ft=first(model=/m,window=10);bi=biencoder"})
    assert dict(s.rerankers) == {"ft": "first(model=/m,window=10)", "bi": "biencoder"}
    assert list(Settings(root=tmp_path).rerankers)[0] == "biencoder"
    for bad in ("first", "=first", "x=", "../x=first", "x=first(("):
        with pytest.raises(GenseekError):
            Settings.from_env({"GENSEEK_ROOT": str(tmp_path), "GENSEEK_RERANKERS": bad})
