"""Property-based fuzzing of the HTTP API from its own OpenAPI spec (schemathesis + hypothesis).

The app runs in-process (FastAPI TestClient, lifespan on) over one small collection
with a ``bm25`` and a ``dense`` index. For every operation of ``/openapi.json``,
schemathesis generates requests that fit the spec (positive) and requests that do
not (negative: wrong types, missing fields, out-of-range numbers, bad path
parameters); hypothesis mixes in a valid API key most of the time, the real
collection name, real index and reranker names and real document ids, so the
generated requests reach the search, write and model code instead of stopping at
the 401 or the 404. Every answer must be:

- never a 5xx (no internal error, no timeout: a request that hangs past the app's
  ``request_timeout_s`` would be a 504), and answered within ``HANG_S``;
- a 4xx with the JSON error body ``{"error": {"type", "message"}}``;
- a 2xx whose JSON body conforms to the response schema of the spec.

The number of examples is bounded (``GENSEEK_FUZZ_EXAMPLES``, default 40 per
operation, no shrinking, no example database) so the module runs in about half a
minute on two cores; ``pytest -s`` prints the status codes each operation got, and
``GENSEEK_FUZZ_SHOW=1`` also each 400/404 with a curl command. The explicit cases below pin the answers for malformed JSON, wrong
types, a huge ``k``, unknown collections, indexes, rerankers and models, empty
queries and a 50 MB body.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from _synth import make_docs, unique_token
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from genseek.api.app import create_app  # noqa: E402
from genseek.api.settings import Settings  # noqa: E402

KEYS = {"rk": {"read"}, "wk": {"write"}}
COLL = "fuzz"
INDEXES = ("bm25", "dense")
MAX_EXAMPLES = int(os.environ.get("GENSEEK_FUZZ_EXAMPLES", "40"))
HANG_S = 30.0  # no single request may take longer (the app's own timeout is 20 s)
REQUEST_TIMEOUT_S = 20.0

# Every operation of the contract (genseek/api/__init__.py); test_spec_lists_exactly_these
# fails when a route is added without being fuzzed here.
OPERATIONS = [
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/collections"),
    ("POST", "/collections"),
    ("GET", "/collections/{name}"),
    ("GET", "/collections/{name}/ready"),
    ("DELETE", "/collections/{name}"),
    ("POST", "/collections/{name}/documents"),
    ("POST", "/collections/{name}/documents/delete"),
    ("GET", "/collections/{name}/documents/{doc_id}"),
    ("POST", "/collections/{name}/search"),
    ("POST", "/collections/{name}/search/batch"),
    ("GET", "/datasets"),
    ("POST", "/collections/{name}/evaluate"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/sparse-embeddings"),
    ("POST", "/v1/rerank"),
]
_AUTH_HEADERS = ("authorization", "x-api-key")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "root"
    datasets = tmp_path_factory.mktemp("fuzz-datasets")  # no dataset: only uploaded qrels
    return create_app(Settings(root=root, api_keys=KEYS, max_batch_docs=20, max_queries=8,
                               request_timeout_s=REQUEST_TIMEOUT_S, datasets_root=datasets,
                               max_eval_queries=50))


@pytest.fixture(scope="module")
def client(app):
    # raise_server_exceptions=False: a 500 comes back as a response the test reports
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def docs():
    return make_docs(12, seed=3)


@pytest.fixture(scope="module")
def coll(client, docs):
    w = {"Authorization": "Bearer wk"}
    r = client.post("/collections", headers=w,
                    json={"name": COLL, "indexes": {n: n for n in INDEXES}})
    assert r.status_code == 201, r.text
    body = {"documents": [{"id": d.doc_id, "title": d.title, "text": d.text,
                           "metadata": dict(d.metadata)} for d in docs], "refresh": True}
    r = client.post(f"/collections/{COLL}/documents", headers=w, json=body)
    assert r.status_code == 200 and r.json()["refreshed"], r.text
    return COLL


@pytest.fixture(scope="module")
def schema(client):
    spec = client.get("/openapi.json").json()
    return schemathesis.openapi.from_dict(spec)


def error_of(response, status: int, type_: str | None = None) -> dict:
    """The ``error`` object of a JSON error answer with ``status``."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error.get("type"), str) and error["type"], body
    assert isinstance(error.get("message"), str) and error["message"].strip(), body
    if type_ is not None:
        assert error["type"] == type_, body
    return error


# -- the fuzzing -----------------------------------------------------------------------------


def test_spec_lists_exactly_these_operations(schema):
    found = set()
    for result in schema.get_all_operations():
        op = result.ok()
        found.add((op.method.upper(), op.path))
    assert found == set(OPERATIONS)


def _has_inputs(op) -> bool:
    return bool(len(op.body) or len(op.path_parameters) or len(op.query))


def _steer(case, data, docs) -> None:
    """Point a generated case at things that exist, part of the time."""
    headers = case.headers if case.headers is not None else {}
    if data.draw(st.integers(0, 9), label="auth") < 8:  # mostly a valid key
        for name in [h for h in headers if h.lower() in _AUTH_HEADERS]:
            del headers[name]
        headers["Authorization"] = "Bearer " + data.draw(st.sampled_from(["wk", "wk", "rk"]),
                                                         label="key")
    case.headers = headers
    params = case.path_parameters if case.path_parameters is not None else {}
    if "name" in params:
        if case.method.upper() == "DELETE":
            if params["name"] == COLL:  # never drop the collection under test
                params["name"] = COLL + "x"
        elif data.draw(st.integers(0, 3), label="real collection") > 0:
            params["name"] = COLL
    if "doc_id" in params and data.draw(st.booleans(), label="real doc"):
        params["doc_id"] = data.draw(st.sampled_from([d.doc_id for d in docs]), label="id")
    body = case.body
    if not isinstance(body, dict):
        return
    pipelines = [body.get("pipeline")]
    if isinstance(body.get("pipelines"), dict):  # an evaluation's named pipelines
        pipelines += list(body["pipelines"].values())
    for pipeline in pipelines:
        if not isinstance(pipeline, dict) or data.draw(st.integers(0, 4),
                                                       label="real indexes") == 0:
            continue
        stages = pipeline.get("retrieve")
        if isinstance(stages, list):
            for stage in stages:
                if isinstance(stage, dict) and "index" in stage:
                    stage["index"] = data.draw(st.sampled_from(INDEXES), label="index")
        rerank = pipeline.get("rerank")
        if isinstance(rerank, dict) and "reranker" in rerank:
            rerank["reranker"] = "biencoder"
    if case.path.endswith("/search") and data.draw(st.booleans(), label="real query"):
        body["query"] = unique_token(data.draw(st.integers(0, len(docs) - 1), label="doc"))


def _check(case, response, seconds: float) -> None:
    label = f"{case.method} {case.formatted_path}"
    where = f"{label}: {response.status_code} {response.text[:800]}\n{case.as_curl_command()}"
    assert response.status_code < 500, where
    assert seconds < HANG_S, f"{label} took {seconds:.1f}s\n{where}"
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, where
        assert isinstance(body["error"].get("type"), str), where
        assert isinstance(body["error"].get("message"), str) and body["error"]["message"], where
        return
    if case.path == "/metrics":
        assert response.headers["content-type"].startswith("text/plain"), where
        return
    assert response.headers["content-type"].startswith("application/json"), where
    response.json()
    case.validate_response(response, checks=[response_schema_conformance])


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz_operation(client, coll, docs, schema, method, path):
    op = schema[path][method]
    modes = [GenerationMode.POSITIVE]
    if _has_inputs(op):
        modes.append(GenerationMode.NEGATIVE)
    strategy = st.one_of(*[op.as_strategy(generation_mode=m) for m in modes])
    counts: dict[int, int] = {}

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              phases=[Phase.explicit, Phase.reuse, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy, data=st.data())
    def run(case, data):
        _steer(case, data, docs)
        kwargs = case.as_transport_kwargs(base_url=str(client.base_url))
        kwargs.pop("cookies", None)
        if isinstance(kwargs.get("data"), (bytes, str)):  # a raw (non-JSON) body
            kwargs["content"] = kwargs.pop("data")
        start = time.perf_counter()
        response = client.request(**kwargs)
        seconds = time.perf_counter() - start
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
        if os.environ.get("GENSEEK_FUZZ_SHOW") and response.status_code in (400, 404):
            print(case.method, case.formatted_path, response.status_code, response.text[:200],
                  case.as_curl_command()[:400])
        _check(case, response, seconds)

    run()
    print(f"{method} {path}: status counts {dict(sorted(counts.items()))}")
    # the steering reached past authentication and into the routes
    assert sum(n for s, n in counts.items() if s not in (401, 403)) > 0, counts
    # the fixture's collection is still there and searchable
    r = client.post(f"/collections/{COLL}/search", headers={"X-API-Key": "rk"},
                    json={"query": unique_token(1),
                          "pipeline": {"retrieve": [{"index": "bm25"}], "k": 3}})
    assert r.status_code == 200, r.text


_HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
          phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(auth=st.one_of(st.none(), _HEADER_TEXT, _HEADER_TEXT.map("Bearer ".__add__),
                      st.sampled_from(["Bearer wk", "Bearer rk", "bearer  wk ", "Basic wk"])),
       key=st.one_of(st.none(), _HEADER_TEXT, st.sampled_from(["wk", "rk", " rk", "WK"])),
       route=st.sampled_from([("GET", "/collections"), ("POST", f"/collections/{COLL}/search"),
                              ("POST", f"/collections/{COLL}/documents/delete")]))
def test_fuzz_credentials(client, coll, auth, key, route):
    """Arbitrary Authorization / X-API-Key values: 200, 401 or 403, never a 5xx."""
    headers = {name: value for name, value in (("Authorization", auth), ("X-API-Key", key))
               if value is not None}
    method, url = route
    body = {"query": "wing"} if url.endswith("search") else {"ids": ["nope"]}
    r = client.request(method, url, headers=headers, json=None if method == "GET" else body)
    assert r.status_code in (200, 401, 403), (headers, r.status_code, r.text)
    if r.status_code != 200:
        error_of(r, r.status_code)


# -- explicit cases --------------------------------------------------------------------------

R = {"X-API-Key": "rk"}
W = {"Authorization": "Bearer wk"}
SEARCH = f"/collections/{COLL}/search"


@pytest.mark.parametrize("raw", [
    b'{"query": ',
    b'{"query": "wing",}',
    b"{'query': 'wing'}",
    b"query=wing",
    b"\xff\xfe\x00garbage",
    b'{"query": "wing"} trailing',
])
def test_malformed_json_is_400(client, coll, raw):
    r = client.post(SEARCH, content=raw, headers={**R, "content-type": "application/json"})
    error_of(r, 400, "invalid_json")


@pytest.mark.parametrize("raw", [b"\x80\x81", b'{"query": "\xc3\x28"}', b"\xed\xa0\x80"])
def test_body_that_is_not_utf8_is_400(client, coll, raw):
    # FastAPI answers these before JSON parsing ("There was an error parsing the body"),
    # so the type is bad_request rather than invalid_json; either way a JSON 400.
    r = client.post(SEARCH, content=raw, headers={**R, "content-type": "application/json"})
    e = error_of(r, 400)
    assert e["type"] in ("invalid_json", "bad_request"), e


@pytest.mark.parametrize(("url", "body"), [
    (SEARCH, None),
    (SEARCH, []),
    (SEARCH, "wing"),
    (SEARCH, {"query": 5}),
    (SEARCH, {"query": ["wing"]}),
    (SEARCH, {"query": None}),
    (SEARCH, {"query": "wing", "pipeline": "bm25"}),
    (SEARCH, {"query": "wing", "pipeline": {"retrieve": "bm25"}}),
    (SEARCH, {"query": "wing", "pipeline": {"retrieve": [{"index": "bm25"}], "k": "10"}}),
    (SEARCH, {"query": "wing", "pipeline": {"retrieve": [{"index": "bm25"}], "k": 2.5}}),
    (SEARCH, {"query": "wing", "pipeline": {"retrieve": [{"index": 7}]}}),
    (SEARCH, {"query": "wing", "pipeline": {"retrieve": [{"index": "bm25"}],
                                            "fusion": {"method": "max"}}}),
    (SEARCH, {"query": "wing", "unknown_field": 1}),
    (f"/collections/{COLL}/search/batch", {"queries": "wing"}),
    (f"/collections/{COLL}/search/batch", {"queries": [1, 2]}),
    (f"/collections/{COLL}/documents", {"documents": "d1"}),
    (f"/collections/{COLL}/documents", {"documents": [{"id": 5}]}),
    (f"/collections/{COLL}/documents", {"documents": [{"id": "a", "title": 3}]}),
    (f"/collections/{COLL}/documents", {"documents": [{"id": "a", "metadata": []}]}),
    (f"/collections/{COLL}/documents", {"documents": [{"id": "a"}], "refresh": "yes"}),
    (f"/collections/{COLL}/documents/delete", {"ids": [1, 2]}),
    (f"/collections/{COLL}/documents/delete", {"ids": "d1"}),
    ("/collections", {"name": 5}),
    ("/collections", {"name": "x", "indexes": ["bm25"]}),
    ("/v1/embeddings", {"input": 5}),
    ("/v1/embeddings", {"input": ["a", 5]}),
    ("/v1/rerank", {"query": "q", "documents": "a"}),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": "2"}),
    ("/v1/sparse-embeddings", {"input": "a", "top_k": "3"}),
])
def test_wrong_types_are_422(client, coll, url, body):
    r = client.post(url, headers={**W, "content-type": "application/json"},
                    content=json.dumps(body).encode())
    e = error_of(r, 422, "validation_error")
    assert e.get("details"), e


@pytest.mark.parametrize("pipeline", [
    {"retrieve": [{"index": "bm25"}], "k": 10**9},
    {"retrieve": [{"index": "bm25", "k": 10**9}]},
    {"retrieve": [{"index": "bm25"}], "k": 10**30},
    {"retrieve": [{"index": "bm25"}], "k": -(10**9)},
    {"retrieve": [{"index": "bm25"}], "k": 0},
    {"retrieve": [{"index": "bm25"}], "rerank": {"reranker": "biencoder", "depth": 10**9}},
    {"retrieve": [{"index": "bm25"}], "fusion": {"k": 1e300}},
    {"retrieve": [{"index": "bm25"}] * 17},
])
def test_huge_k_and_out_of_range_numbers_are_422(client, coll, pipeline):
    r = client.post(SEARCH, headers=R, json={"query": "wing", "pipeline": pipeline})
    error_of(r, 422, "validation_error")
    r = client.post(f"/collections/{COLL}/search/batch", headers=R,
                    json={"queries": ["wing"], "pipeline": pipeline})
    error_of(r, 422, "validation_error")


def test_huge_numbers_elsewhere(client, coll):
    error_of(client.post("/v1/sparse-embeddings", headers=R,
                         json={"input": "wing", "top_k": 10**9}), 422)
    # top_n only trims the answer: a huge one is the whole list
    r = client.post("/v1/rerank", headers=R,
                    json={"query": "wing", "documents": ["a", "wing lift"], "top_n": 10**9})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 2
    # NaN / Infinity are not JSON; Python's parser takes them, the bounds must not
    raw = (b'{"query": "wing", "pipeline": {"retrieve": [{"index": "bm25"}, {"index": "dense"}],'
           b' "fusion": {"method": "linear", "weights": [NaN, 1]}}}')
    r = client.post(SEARCH, headers={**R, "content-type": "application/json"}, content=raw)
    assert 400 <= r.status_code < 500, r.text
    error_of(r, r.status_code)
    raw = b'{"query": "wing", "pipeline": {"retrieve": [{"index": "bm25"}], "k": Infinity}}'
    r = client.post(SEARCH, headers={**R, "content-type": "application/json"}, content=raw)
    assert 400 <= r.status_code < 500, r.text
    error_of(r, r.status_code)


def test_unknown_collection_is_404_everywhere(client, coll):
    name = "nosuchcollection"
    for method, url, body in [
        ("GET", f"/collections/{name}", None),
        ("DELETE", f"/collections/{name}", None),
        ("POST", f"/collections/{name}/search", {"query": "wing"}),
        ("POST", f"/collections/{name}/search/batch", {"queries": ["wing"]}),
        ("POST", f"/collections/{name}/documents", {"documents": [{"id": "a"}]}),
        ("POST", f"/collections/{name}/documents/delete", {"ids": ["a"]}),
        ("GET", f"/collections/{name}/documents/a", None),
    ]:
        e = error_of(client.request(method, url, headers=W, json=body), 404, "not_found")
        assert name in e["message"], (url, e)
    assert not (client.app.state.genseek.manager.root / name).exists()


def test_unknown_index_reranker_model_or_document_is_404(client, coll):
    e = error_of(client.post(SEARCH, headers=R, json={
        "query": "wing", "pipeline": {"retrieve": [{"index": "bm25"}, {"index": "nope"}]}}),
        404, "not_found")
    assert "nope" in e["message"]
    error_of(client.post(f"/collections/{COLL}/search/batch", headers=R, json={
        "queries": ["wing"], "pipeline": {"retrieve": [{"index": "nope"}]}}), 404)
    e = error_of(client.post(SEARCH, headers=R, json={
        "query": "wing", "pipeline": {"retrieve": [{"index": "bm25"}],
                                      "rerank": {"reranker": "nope"}}}), 404)
    assert "nope" in e["message"]
    error_of(client.post("/v1/rerank", headers=R, json={
        "query": "wing", "documents": ["a"], "model": "nope"}), 404)
    error_of(client.post("/v1/embeddings", headers=R, json={"input": "a", "model": "nope"}), 404)
    error_of(client.get(f"/collections/{COLL}/documents/nope", headers=R), 404, "not_found")


def test_unknown_or_reserved_search_parameters_are_422(client, coll):
    for index in INDEXES:
        for params in ({"bogus": 1}, {"k": 5}, {"queries": "x"}):
            r = client.post(SEARCH, headers=R, json={
                "query": "wing", "pipeline": {"retrieve": [{"index": index, "params": params}]}})
            error_of(r, 422, "invalid_parameter")


@pytest.mark.parametrize(("url", "body"), [
    (SEARCH, {"query": ""}),
    (SEARCH, {"query": "   \t\n"}),
    (SEARCH, {}),
    (f"/collections/{COLL}/search/batch", {"queries": []}),
    (f"/collections/{COLL}/search/batch", {"queries": ["wing", ""]}),
    (f"/collections/{COLL}/search/batch", {"queries": ["wing", "  "]}),
    (f"/collections/{COLL}/documents", {"documents": []}),
    (f"/collections/{COLL}/documents", {"documents": [{"id": ""}]}),
    (f"/collections/{COLL}/documents/delete", {"ids": []}),
    ("/v1/rerank", {"query": "", "documents": ["a"]}),
    ("/v1/rerank", {"query": "q", "documents": []}),
    ("/v1/embeddings", {"input": []}),
])
def test_empty_inputs_are_422(client, coll, url, body):
    error_of(client.post(url, headers=W, json=body), 422, "validation_error")


def test_search_for_a_stop_word_or_punctuation_is_an_empty_list(client, coll):
    for query in ("the", "?!", "\u2603"):
        r = client.post(SEARCH, headers=R, json={
            "query": query, "pipeline": {"retrieve": [{"index": "bm25"}]}})
        assert r.status_code == 200, r.text
        assert isinstance(r.json()["results"], list)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_50mb_body_is_413(client, coll, chunked):
    size = 50 * 1024 * 1024
    head, tail = b'{"documents": [{"id": "big", "text": "', b'"}]}'
    headers = {**W, "content-type": "application/json"}
    if chunked:
        def body():
            yield head
            block = b"x" * (1024 * 1024)
            for _ in range(50):
                yield block
            yield tail

        content = body()
    else:
        content = head + b"x" * size + tail
    start = time.perf_counter()
    r = client.post(f"/collections/{COLL}/documents", headers=headers, content=content)
    assert time.perf_counter() - start < HANG_S
    e = error_of(r, 413, "payload_too_large")
    assert "limit" in e["message"]
    r = client.get(f"/collections/{COLL}/documents/big", headers=R)
    error_of(r, 404)
    # and the server still answers normally afterwards
    assert client.post(SEARCH, headers=R, json={"query": "wing"}).status_code == 200
