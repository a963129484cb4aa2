"""The Elasticsearch integration against genseek's real /v1 routes and a local ES stand-in.

CI has no real Elasticsearch: ``_fake_es`` implements the REST subset the
integration uses in Elasticsearch's documented formats, and the official
``elasticsearch`` client talks to it over HTTP on 127.0.0.1.

- Registration payloads are checked against the documented ``custom`` service
  request shape, and created through the client in the fake (which applies the
  checks Elasticsearch makes when an endpoint is created).
- For each task type, the request Elasticsearch would render from the template is
  sent to genseek's app (FastAPI TestClient; MiniLM, SPLADE-tiny and the biencoder
  reranker load locally), and the answer is parsed with the exact JSONPath
  expressions the registration sends, evaluated by jsonpath-ng and regrouped per
  ``[*]`` as Elasticsearch's extractor does (cross-checked with a direct
  implementation of that extractor).
- The sync connector: full, incremental, soft and tombstone deletes, resume after a
  failure injected mid-scan, ``--full`` hard-delete propagation, and bad input.
- Hybrid: an ES query fused with a genseek dense index by RRF.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from _fake_es import running
from _synth import make_docs
from elasticsearch import Elasticsearch, helpers
from fastapi.testclient import TestClient
from jsonpath_ng import parse as jsonpath
from jsonpath_ng.jsonpath import Child, Index

from genseek import Collection
from genseek.api import elastic
from genseek.api.app import create_app
from genseek.api.elastic import (
    JSON_PARSERS,
    EndpointOptions,
    endpoint_payload,
    es_feature_name,
    from_es_feature_name,
    render_headers,
    render_request,
)
from genseek.api.settings import Settings
from genseek.client import GenseekClient
from genseek.data.es_sync import SyncConfig, checkpoint_key, sync_index
from genseek.errors import GenseekError
from genseek.kernels import fusion as F
from genseek.retrievers.elastic import (
    ElasticRetriever,
    PipelineRetriever,
    hybrid,
    template_query,
)

KEY = "esreadkey"

# The documented request shape of PUT _inference/{task_type}/{id} for service "custom"
# (elasticsearch-specification: inference.put_custom, CustomServiceSettings).
SERVICE_SETTINGS_KEYS = {"url", "headers", "query_parameters", "request", "response",
                         "secret_parameters", "input_type", "batch_size", "rate_limit"}
TEXT_EMBEDDING_KEYS = {"similarity", "dimensions", "max_input_tokens"}
ES_PATH = re.compile(r"^\$(\.[^.\[]+|\[\*\])+$")  # Elasticsearch's JSONPath subset


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake():
    with running() as es_fake:
        yield es_fake


@pytest.fixture(scope="module")
def es(fake):
    client = Elasticsearch(fake.url, request_timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("es-api")
    app = create_app(Settings(root=root, api_keys={KEY: {"read"}}, request_timeout_s=300))
    with TestClient(app) as client:
        yield client


def in_process(api) -> GenseekClient:
    """A genseek client whose requests go to the test app (no socket)."""
    client = GenseekClient("http://testserver")
    client._http.close()
    client._http = TestClient(api.app, headers={"Authorization": f"Bearer {KEY}"})
    return client


def opts(**kw) -> EndpointOptions:
    base = {"genseek_url": "http://genseek:8080", "api_key": KEY, "dims": 384}
    base.update(kw)
    return EndpointOptions(**base)


# -- JSONPath as Elasticsearch evaluates it ---------------------------------------------------


def _indices(path) -> list[int]:
    out: list[int] = []

    def walk(p) -> None:
        if isinstance(p, Child):
            walk(p.left)
            walk(p.right)
        elif isinstance(p, Index):
            out.extend(p.indices)

    walk(path)
    return out


def es_jsonpath(data, expr: str):
    """``expr`` evaluated by jsonpath-ng, regrouped into one nested list per ``[*]``
    (Elasticsearch keeps inner lists where JSONPath flattens them)."""
    assert ES_PATH.match(expr), f"{expr} is outside Elasticsearch's JSONPath subset"
    depth = expr.count("[*]")
    matches = jsonpath(expr).find(data)
    assert matches, f"{expr} matched nothing"
    root: dict = {}
    for m in matches:
        idx = _indices(m.full_path)
        assert len(idx) == depth, (expr, str(m.full_path))
        node = root
        for i in idx[:-1]:
            node = node.setdefault(i, {})
        node[idx[-1]] = m.value

    def to_list(node):
        if not isinstance(node, dict):
            return node
        return [to_list(node[i]) for i in sorted(node)]

    return to_list(root)


def es_extract(data, expr: str):
    """A direct implementation of Elasticsearch's MapPathExtractor semantics."""
    rest = expr[1:]
    if not rest:
        return data
    m = re.match(r"^\.([^.\[]+)(.*)$", rest)
    if m:
        assert isinstance(data, dict) and m.group(1) in data, (m.group(1), expr)
        return es_extract(data[m.group(1)], "$" + m.group(2))
    m = re.match(r"^\[\*\](.*)$", rest)
    assert m and isinstance(data, list), expr
    return [es_extract(item, "$" + m.group(1)) for item in data]


def call(api, task_type: str, payload: dict, **values):
    """Send what Elasticsearch would send for ``payload`` to genseek; the decoded answer."""
    settings = payload["service_settings"]
    path = settings["url"].removeprefix("http://genseek:8080")
    r = api.post(path, content=render_request(payload, **values),
                 headers=render_headers(payload))
    assert r.status_code == 200, r.text
    return r.json()


def parse(task_type: str, payload: dict, body: dict) -> dict:
    parser = payload["service_settings"]["response"]["json_parser"]
    out = {}
    for name, expr in parser.items():
        got = es_jsonpath(body, expr)
        assert got == es_extract(body, expr)
        out[name] = got
    return out


# -- registration payloads ---------------------------------------------------------------------


@pytest.mark.parametrize("task_type", ["text_embedding", "sparse_embedding", "rerank"])
def test_payload_has_the_documented_shape(task_type):
    p = endpoint_payload(task_type, opts(reranker="biencoder"))
    assert p["service"] == "custom"
    assert set(p) <= {"service", "service_settings", "task_settings", "chunking_settings"}
    s = p["service_settings"]
    allowed = SERVICE_SETTINGS_KEYS | (TEXT_EMBEDDING_KEYS if task_type == "text_embedding"
                                       else set())
    assert set(s) <= allowed and {"url", "request", "response"} <= set(s)
    assert s["url"] == "http://genseek:8080" + elastic.ROUTES[task_type]
    assert s["headers"] == {"Content-Type": "application/json",
                            "Authorization": "Bearer ${api_key}"}
    assert s["secret_parameters"] == {"api_key": KEY}
    assert s["response"] == {"json_parser": JSON_PARSERS[task_type]}
    for expr in JSON_PARSERS[task_type].values():
        assert ES_PATH.match(expr)
    # templates are unquoted placeholders inside a JSON object
    assert "${input}" in s["request"] and '"${input}"' not in s["request"]
    if task_type == "rerank":
        assert "${query}" in s["request"] and "${top_n}" in s["request"]
        assert p["task_settings"] == {"parameters": {"top_n": elastic.DEFAULT_TOP_N}}
        assert json.loads(render_request(p, input=["a"], query="q"))["model"] == "biencoder"
    if task_type == "text_embedding":
        assert s["dimensions"] == 384 and s["similarity"] == "cosine"
    # no key: no secret, no Authorization header
    bare = endpoint_payload(task_type, opts(api_key=None))["service_settings"]
    assert "secret_parameters" not in bare and "Authorization" not in bare["headers"]


# Request examples from Elasticsearch's API specification (inference.put_custom examples:
# OpenAI embeddings, Cohere v2 rerank); the structure is what matters, not the values.
DOCUMENTED = {
    "text_embedding": {"service": "custom", "service_settings": {
        "secret_parameters": {"api_key": "<api key>"},
        "url": "https://api.openai.com/v1/embeddings",
        "headers": {"Authorization": "Bearer ${api_key}",
                    "Content-Type": "application/json;charset=utf-8"},
        "request": "{\"input\": ${input}, \"model\": \"text-embedding-3-small\"}",
        "response": {"json_parser": {"text_embeddings": "$.data[*].embedding[*]"}}}},
    "rerank": {"service": "custom", "service_settings": {
        "secret_parameters": {"api_key": "<api key>"},
        "url": "https://api.cohere.com/v2/rerank",
        "headers": {"Authorization": "bearer ${api_key}", "Content-Type": "application/json"},
        "request": "{\"documents\": ${input}, \"query\": ${query}, \"model\": \"rerank-v3.5\"}",
        "response": {"json_parser": {"reranked_index": "$.results[*].index",
                                     "relevance_score": "$.results[*].relevance_score"}}}},
}
OPTIONAL = {"dimensions", "similarity", "task_settings", "parameters", "top_n", "batch_size"}


def shape(node):
    return {k: shape(v) for k, v in node.items()} if isinstance(node, dict) else type(node)


def within(ours, documented, where="") -> None:
    for key, value in ours.items():
        if key in OPTIONAL:
            continue
        assert key in documented, f"{where}{key} is not in the documented request"
        if isinstance(value, dict) and key not in ("headers", "secret_parameters"):
            within(value, documented[key], f"{where}{key}.")
        else:
            assert value == documented[key] or key in ("headers", "secret_parameters"), key


@pytest.mark.parametrize("task_type", sorted(DOCUMENTED))
def test_payload_follows_the_documented_examples(task_type):
    ours = endpoint_payload(task_type, opts())
    within(shape(ours), shape(DOCUMENTED[task_type]))
    ours_parser = ours["service_settings"]["response"]["json_parser"]
    assert ours_parser == DOCUMENTED[task_type]["service_settings"]["response"]["json_parser"]


def test_endpoints_created_through_the_client_and_secrets_never_returned(fake, es):
    o = opts(prefix="shape")
    for task_type in elastic.TASK_TYPES:
        es.inference.put(task_type=task_type, inference_id=o.endpoint_id(task_type),
                         inference_config=endpoint_payload(task_type, o))
        got = es.inference.get(task_type=task_type, inference_id=o.endpoint_id(task_type))
        (ep,) = got["endpoints"]
        assert ep["service"] == "custom" and ep["task_type"] == task_type
        assert "secret_parameters" not in ep["service_settings"]
        assert KEY not in json.dumps(ep)
    # a template placeholder Elasticsearch cannot fill is refused at creation
    broken = endpoint_payload("rerank", o)
    del broken["task_settings"]
    with pytest.raises(Exception, match=r"top_n"):
        es.inference.put(task_type="rerank", inference_id="broken", inference_config=broken)


# -- genseek's answers through the registered parsers ------------------------------------------


def test_text_embedding_response_parsed_by_registered_path(api):
    p = endpoint_payload("text_embedding", opts())
    texts = ["wing flutter at supersonic speed", "gene expression in tumor cells"]
    body = call(api, "text_embedding", p, input=texts)
    (vectors,) = parse("text_embedding", p, body).values()
    assert len(vectors) == 2 and all(len(v) == p["service_settings"]["dimensions"]
                                     for v in vectors)
    ref = api.app.state.genseek.models.encoder().encode(texts)
    assert np.allclose(np.asarray(vectors, dtype=np.float32), ref, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


def test_sparse_response_parsed_by_registered_paths(api):
    p = endpoint_payload("sparse_embedding", opts(sparse_token_format="raw"))
    texts = ["version 2.0 of www.example.com ... etc.", "cell membrane receptor"]
    body = call(api, "sparse_embedding", p, input=texts)
    got = parse("sparse_embedding", p, body)
    tokens, weights = got["token_path"], got["weight_path"]
    assert len(tokens) == len(weights) == 2
    ref = api.app.state.genseek.models.sparse().encode(texts)
    for i in range(2):
        assert len(tokens[i]) == len(weights[i]) > 0
        assert dict(zip(tokens[i], weights[i], strict=True)) == pytest.approx(ref[i])
        assert all(w > 0 for w in weights[i])
    # the feature-name mapping: dot-free, reversible, identity on dot-free tokens
    dotted = [t for t in tokens[0] if "." in t]
    assert dotted, "the probe text should produce tokens with dots"
    for t in tokens[0] + tokens[1] + ["a%2Eb", "%", "..."]:
        name = es_feature_name(t)
        assert "." not in name and from_es_feature_name(name) == t
        if "." not in t and "%" not in t:
            assert name == t


def test_sparse_token_format_probe(api):
    """The registered template asks for ES feature names only if genseek supports them."""
    found = elastic.probe_genseek("http://testserver", KEY, ["sparse_embedding"],
                                  client=in_process(api))
    p = endpoint_payload("sparse_embedding", opts(sparse_token_format="elasticsearch"))
    r = api.post("/v1/sparse-embeddings", content=render_request(p, input=["e.g. x"]),
                 headers=render_headers(p))
    if found["sparse_token_format"] == "raw":
        assert r.status_code == 422  # this server predates token_format
    else:
        assert r.status_code == 200
        tokens = parse("sparse_embedding", p, r.json())["token_path"][0]
        assert tokens and not any("." in t for t in tokens)


def test_rerank_response_parsed_by_registered_paths(api):
    p = endpoint_payload("rerank", opts())
    docs = ["the wing stalls at high angle of attack", "tumor cells and immune response",
            "airflow over a wing creates lift", "library catalog classification"]
    body = call(api, "rerank", p, input=docs, query="how does a wing make lift", top_n=2)
    got = parse("rerank", p, body)
    scores, order = got["relevance_score"], got["reranked_index"]
    assert len(scores) == len(order) == 2
    assert set(order) <= {0, 2} and scores == sorted(scores, reverse=True)
    ref = api.app.state.genseek.models.reranker("biencoder").rank_batch(
        ["how does a wing make lift"], [docs])[0]
    assert scores == pytest.approx([ref[i] for i in order])
    # without top_n (as text_similarity_reranker may call), the endpoint default applies
    body = call(api, "rerank", p, input=docs, query="wing lift")
    assert sorted(parse("rerank", p, body)["reranked_index"]) == [0, 1, 2, 3]


def test_register_cli(fake, es, api, capsys, monkeypatch):
    real = elastic.probe_genseek
    monkeypatch.setattr(elastic, "probe_genseek", lambda url, key, tasks, reranker=None: real(
        "http://testserver", key, tasks, reranker, client=in_process(api)))
    args = ["register", "--es", fake.url, "--genseek", "http://genseek:8080",
            "--api-key", KEY, "--prefix", "cli", "--index", "semantic-docs", "--json"]
    assert elastic.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["endpoints"]) == {"cli-dense", "cli-sparse", "cli-rerank"}
    fmt = out["sparse_token_format"]
    assert fmt in ("raw", "elasticsearch") and bool(out["warnings"]) == (fmt == "raw")
    assert KEY not in json.dumps(out)
    mapping = es.indices.get_mapping(index="semantic-docs")["semantic-docs"]["mappings"]
    props = mapping["properties"]
    assert props["text_dense"] == {"type": "semantic_text", "inference_id": "cli-dense"}
    assert props["text_sparse"] == {"type": "semantic_text", "inference_id": "cli-sparse"}
    assert fake.inference["cli-dense"]["service_settings"]["dimensions"] == 384
    # again: the endpoints exist -> one clear line; --replace overwrites them
    assert elastic.main(args[:-3] + ["--json"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert elastic.main(args[:-3] + ["--replace"]) == 0
    # vectors style: explicit dense_vector / sparse_vector fields and an ingest pipeline
    assert elastic.main(["register", "--es", fake.url, "--genseek", "http://genseek:8080",
                         "--prefix", "vec", "--no-probe", "--dims", "384", "--index", "vec-docs",
                         "--mapping", "vectors"]) == 0
    props = es.indices.get_mapping(index="vec-docs")["vec-docs"]["mappings"]["properties"]
    assert props["text_embedding"]["type"] == "dense_vector" and props["text_embedding"][
        "dims"] == 384
    assert props["text_tokens"] == {"type": "sparse_vector"}
    assert [p["inference"]["model_id"] for p in fake.pipelines["vec-embeddings"]["processors"]
            ] == ["vec-dense", "vec-sparse"]


def test_probe_reads_dims_from_genseek(api):
    found = elastic.probe_genseek("http://testserver", KEY, list(elastic.TASK_TYPES),
                                  client=in_process(api))
    assert found["dims"] == 384 and found["sparse_token_format"] in ("raw", "elasticsearch")


# -- sync --------------------------------------------------------------------------------------


def put_docs(es, index: str, docs, start_ts: int, deleted=()):
    """Index docs with increasing timestamps (epoch ms as ISO strings)."""
    from datetime import datetime, timezone

    actions = []
    for i, d in enumerate(docs):
        ts = datetime.fromtimestamp((start_ts + i) / 1000, tz=timezone.utc)
        src = {"title": d.title, "text": d.text, "updated_at": ts.isoformat(),
               "lang": "en", "n": i}
        if d.doc_id in deleted:
            src["deleted"] = True
        actions.append({"_index": index, "_id": d.doc_id, "_source": src})
    helpers.bulk(es, actions, refresh=True)


def make_index(es, name: str):
    es.indices.create(index=name, mappings={"properties": {
        "updated_at": {"type": "date"}, "deleted": {"type": "boolean"}}})


def es_state(es, index: str) -> dict[str, tuple[str, str]]:
    res = es.search(index=index, size=10_000, query={"match_all": {}})
    return {h["_id"]: (h["_source"]["title"], h["_source"]["text"])
            for h in res["hits"]["hits"] if not h["_source"].get("deleted")}


def coll_state(path: Path) -> dict[str, tuple[str, str]]:
    with Collection.open(path) as coll:
        return {d.doc_id: (d.title, d.text) for d in coll.store.iter_docs()}


def test_sync_full_incremental_and_soft_deletes(es, fake, tmp_path):
    make_index(es, "sync-a")
    docs = make_docs(60, seed=3)
    put_docs(es, "sync-a", docs, 1_700_000_000_000)
    path = tmp_path / "a"
    cfg = SyncConfig(index="sync-a", batch_size=25)
    r1 = sync_index(es, path, cfg, create_indexes={})
    assert (r1.read, r1.upserted, r1.pages, r1.resumed) == (60, 60, 3, False)
    assert coll_state(path) == es_state(es, "sync-a")
    with Collection.open(path) as coll:
        d = coll.get(["d5"])["d5"]
        assert d.metadata["lang"] == "en" and d.metadata["_es_index"] == "sync-a"
        assert d.metadata["_es_ts"] == 1_700_000_000_005 and "title" not in d.metadata
        assert json.loads(coll.store.get_meta(checkpoint_key("sync-a")))["done"] is True
    # a second run with no changes re-reads only the last timestamp's documents
    r2 = sync_index(es, path, cfg)
    assert (r2.read, r2.upserted, r2.unchanged) == (1, 0, 1)
    # changes: 4 updated, 3 new, 2 soft-deleted, all with later timestamps
    changed = [d.__class__(d.doc_id, d.title + " revised", d.text) for d in docs[10:14]]
    new = make_docs(3, seed=9, start=100)
    gone = [docs[20], docs[21]]
    put_docs(es, "sync-a", changed + new + gone, 1_700_000_100_000,
             deleted={d.doc_id for d in gone})
    pit_opens = fake.count_requests("POST", r"/sync-a/_pit$")
    r3 = sync_index(es, path, cfg)
    assert fake.count_requests("POST", r"/sync-a/_pit$") == pit_opens + 1
    # the 9 changes, and the previous run's last document again (same timestamp: >=)
    assert (r3.read, r3.upserted, r3.unchanged, r3.deleted) == (10, 7, 1, 2)
    state = coll_state(path)
    assert state == es_state(es, "sync-a") and len(state) == 61
    assert state["d10"][0].endswith(" revised") and "d20" not in state


def test_sync_tombstones_respect_recreation(es, tmp_path):
    make_index(es, "sync-t")
    make_index(es, "sync-t-deleted")
    docs = make_docs(10, seed=4)
    put_docs(es, "sync-t", docs, 1_700_000_000_000)
    path = tmp_path / "t"
    cfg = SyncConfig(index="sync-t", tombstone_index="sync-t-deleted", batch_size=4)
    sync_index(es, path, cfg, create_indexes={})
    # d1, d2 hard-deleted with tombstones; d3 deleted, then re-created later
    for d in docs[1:4]:
        es.delete(index="sync-t", id=d.doc_id, refresh=True)
    tomb = [d.__class__(d.doc_id, "", "") for d in docs[1:4]]
    put_docs(es, "sync-t-deleted", tomb, 1_700_000_050_000)
    put_docs(es, "sync-t", [docs[3]], 1_700_000_060_000)
    r = sync_index(es, path, cfg)
    assert r.tombstones == 3 and r.deleted == 2
    state = coll_state(path)
    assert "d1" not in state and "d2" not in state and "d3" in state
    assert state == es_state(es, "sync-t")
    # the tombstones are not read again
    assert sync_index(es, path, cfg).tombstones == 1  # only the last timestamp's record


def test_sync_resumes_after_a_failure_mid_scan(es, fake, tmp_path):
    make_index(es, "sync-r")
    docs = make_docs(100, seed=5)
    put_docs(es, "sync-r", docs, 1_700_000_000_000)
    path = tmp_path / "r"
    cfg = SyncConfig(index="sync-r", batch_size=20)
    fake.fail("POST", r"^/_search$", after=2)  # the third page fails
    with pytest.raises(GenseekError, match=r"reading 'sync-r'.*500"):
        sync_index(es, path, cfg, create_indexes={})
    with Collection.open(path) as coll:
        assert len(coll) == 40  # two whole pages, each with its checkpoint
        ck = json.loads(coll.store.get_meta(checkpoint_key("sync-r")))
        assert ck["done"] is False and ck["ts"] == 1_700_000_000_039
    assert not fake.pits  # the failed scan closed its point in time
    r = sync_index(es, path, cfg)
    assert r.resumed and r.read == 61 and r.upserted == 60 and r.unchanged == 1
    assert coll_state(path) == es_state(es, "sync-r")


def test_sync_full_propagates_hard_deletes(es, tmp_path):
    make_index(es, "sync-f")
    docs = make_docs(12, seed=6)
    put_docs(es, "sync-f", docs, 1_700_000_000_000)
    path = tmp_path / "f"
    cfg = SyncConfig(index="sync-f", batch_size=5)
    sync_index(es, path, cfg, create_indexes={})
    for d in docs[:3]:
        es.delete(index="sync-f", id=d.doc_id, refresh=True)
    assert len(coll_state(path)) == 12  # incremental cannot see hard deletes
    r = sync_index(es, path, cfg, full=True)
    assert r.full and r.deleted == 3 and r.read == 9
    assert coll_state(path) == es_state(es, "sync-f")


def test_sync_bad_input_one_clear_error(es, tmp_path):
    path = tmp_path / "bad"
    with pytest.raises(GenseekError, match=r"index 'no-such-index' does not exist"):
        sync_index(es, path, SyncConfig(index="no-such-index"), create_indexes={})
    assert not path.exists()  # nothing created
    es.indices.create(index="sync-nots")
    helpers.bulk(es, [{"_index": "sync-nots", "_id": "x", "_source": {"text": "a"}}],
                 refresh=True)
    with pytest.raises(GenseekError, match=r"no mapped field 'updated_at'"):
        sync_index(es, path, SyncConfig(index="sync-nots"), create_indexes={})
    assert not path.exists()
    make_index(es, "sync-m")
    helpers.bulk(es, [{"_index": "sync-m", "_id": f"ok{i}", "_source": {
        "text": "fine", "updated_at": f"2025-01-01T00:00:0{i}Z"}} for i in range(3)]
        + [{"_index": "sync-m", "_id": "notext", "_source": {
            "body": "wrong field", "updated_at": "2025-01-01T00:00:05Z"}}], refresh=True)
    with pytest.raises(GenseekError, match=r"sync-m/_doc/notext: no 'title' or 'text' field"):
        sync_index(es, path, SyncConfig(index="sync-m", batch_size=2), create_indexes={})
    with Collection.open(path) as coll:
        assert sorted(d.doc_id for d in coll.store.iter_docs()) == ["ok0", "ok1"]
    with pytest.raises(GenseekError, match="batch size"):
        SyncConfig(index="x", batch_size=0)


def test_sync_cli(fake, es, tmp_path, capsys):
    make_index(es, "sync-cli")
    put_docs(es, "sync-cli", make_docs(7, seed=8), 1_700_000_000_000)
    path = tmp_path / "cli"
    argv = ["sync", "--es", fake.url, "--index", "sync-cli", str(path), "--json",
            "--no-progress", "--batch-size", "3", "--create-index", "dense"]
    assert elastic.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["read"], out["upserted"], out["pages"]) == (7, 7, 3)
    with Collection.open(path) as coll:
        assert list(coll.indexes) == ["dense"] and len(coll) == 7
        assert coll.index("dense").applied_seq == coll.store.seq


def test_sync_cli_errors_are_one_line(fake, tmp_path, capsys):
    code = elastic.main(["sync", "--es", fake.url, "--index", "nope", str(tmp_path / "c"),
                         "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not exist" in err[0]
    code = elastic.main(["sync", "--es", fake.url, "--index", "nope", str(tmp_path / "c"),
                         "--query", "[1]"])
    assert code == 2 and "expected a JSON object" in capsys.readouterr().err


def test_help_for_each_action(capsys):
    for action in ("register", "sync"):
        with pytest.raises(SystemExit) as exit_:
            elastic.main([action, "--help"])
        assert exit_.value.code == 0
        assert "--es" in capsys.readouterr().out


# -- hybrid ------------------------------------------------------------------------------------


def test_es_query_fused_with_a_genseek_index(es, tmp_path):
    make_index(es, "hybrid")
    docs = make_docs(30, seed=11)
    put_docs(es, "hybrid", docs, 1_700_000_000_000)
    path = tmp_path / "h"
    sync_index(es, path, SyncConfig(index="hybrid"), create_indexes={"dense": "dense"})
    query = docs[7].text.split()[0] + " " + docs[7].title.split()[0]
    es_stage = ElasticRetriever(es, "hybrid")
    with Collection.open(path) as coll:
        dense = coll.index("dense")
        fused = hybrid(es_stage, dense, depth=20).search([query], 10)[0]
        es_hits = es_stage.search([query], 20)[0]
        dense_hits = dense.search([query], 20)[0]
    expected = F.rrf([[(h.doc_id, h.score) for h in es_hits],
                      [(h.doc_id, h.score) for h in dense_hits]], 10, 60.0, None)
    assert [(h.doc_id, pytest.approx(h.score)) for h in fused] == expected
    assert es_hits and dense_hits and {h.doc_id for h in fused} <= \
        {h.doc_id for h in es_hits + dense_hits}
    # a whole pipeline (with a metadata filter) as the genseek side
    from genseek.pipeline import Pipeline, Stage

    with Collection.open(path) as coll:
        side = PipelineRetriever(Pipeline(retrieve=[Stage(index="dense", k=30)],
                                          filter={"n": [1, 3, 5, 7, 9]}), coll)
        only = side.search([query], 10)[0]
        assert only and {h.doc_id for h in only} <= {f"d{i}" for i in (1, 3, 5, 7, 9)}
        both = hybrid(es_stage, side, depth=10).search([query], 10)[0]
    assert {h.doc_id for h in only} <= {h.doc_id for h in both} or len(both) == 10
    with pytest.raises(GenseekError, match="does not exist|no such index"):
        ElasticRetriever(es, "no-such-index").search(["x"], 5)
    # a query template with a filter
    stage = ElasticRetriever(es, "hybrid", query={"match": {"text": "{{query}}"}},
                             filter={"range": {"n": {"lt": 5}}})
    hits = stage.search([docs[2].text], 10)[0]
    assert hits and all(int(h.doc_id[1:]) < 5 for h in hits)
    with pytest.raises(GenseekError, match="placeholder"):
        template_query({"match_all": {}})


def test_hybrid_is_built_by_the_one_fusion_builder():
    from genseek.errors import InvalidParameter
    from genseek.retrievers.fusion import RRFusion

    a, b = ElasticRetriever(object(), "x"), ElasticRetriever(object(), "y")  # never searched
    fused = hybrid(a, b, rrf_k=10, depth=7, weights=(2, 1))
    assert isinstance(fused, RRFusion)
    assert (fused.rrf_k, fused.depth, fused.weights, list(fused.stages)) == (10.0, 7, [2.0, 1.0],
                                                                            [a, b])
    with pytest.raises(InvalidParameter, match="2 stages needs 2 weights, not 3"):
        hybrid(a, b, weights=[1, 1, 1])
    with pytest.raises(InvalidParameter, match="hybrid: "):
        hybrid(a, b, rrf_k=-1)
    with pytest.raises(GenseekError, match="at least two"):
        hybrid(a)
    with pytest.raises(InvalidParameter, match="takes no search parameters"):
        a.search(["x"], 5, params=object())


def test_elasticsearch_errors_are_one_line():
    from elasticsearch import ConnectionError as ESConnectionError

    from genseek.data.elastic import connect, es_call

    down = connect("http://127.0.0.1:9", timeout=2)  # nothing listens on the discard port
    with pytest.raises(GenseekError, match=r"^searching 'docs': cannot reach Elasticsearch"):
        ElasticRetriever(down, "docs").search(["x"], 3)
    with pytest.raises(GenseekError, match=r"^doing it: cannot reach Elasticsearch: boom"), \
            es_call("doing it"):
        raise ESConnectionError("boom")
    with pytest.raises(ValueError, match="other errors pass"), es_call("doing it"):
        raise ValueError("other errors pass")
    with pytest.raises(GenseekError, match="--es 'not a url'"):
        connect("not a url")


ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_elasticsearch_code_layers_without_a_cycle():
    """data/ and retrievers/ never import api/ (the ES client and its errors live in
    genseek.data.elastic); api/elastic.py is the only ES module that imports the others."""
    for folder in ("data", "retrievers"):
        for path in sorted((ROOT / folder).glob("*.py")):
            wrong = {m for m in _imports(path) if m == "genseek.api"
                     or m.startswith("genseek.api.")}
            assert not wrong, f"{folder}/{path.name} imports {sorted(wrong)}"
    assert "genseek.data.elastic" in _imports(ROOT / "retrievers" / "elastic.py")
    assert "genseek.data.elastic" in _imports(ROOT / "data" / "es_sync.py")
    assert {"genseek.data.elastic", "genseek.data.es_sync"} <= _imports(ROOT / "api" /
                                                                         "elastic.py")


# -- end to end: Elasticsearch (stand-in) calls genseek over HTTP ----------------------------


@pytest.fixture(scope="module")
def genseek_http(tmp_path_factory):
    """genseek's app served by uvicorn on 127.0.0.1 (in this process: models are shared)."""
    import threading
    import time

    import uvicorn

    # a generous request timeout: the first calls load the models (slow on a busy machine)
    app = create_app(Settings(root=tmp_path_factory.mktemp("es-http"),
                              api_keys={KEY: {"read"}}, request_timeout_s=300))
    # port 0: the kernel picks a free port at bind time (no race with other processes)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


def test_registered_endpoints_called_by_elasticsearch(fake, es, genseek_http, capsys):
    """register (probing genseek over HTTP), then run each endpoint through the ES API."""
    code = elastic.main(["register", "--es", fake.url, "--genseek", genseek_http,
                         "--api-key", KEY, "--prefix", "e2e", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = json.loads(captured.out)
    assert out["dims"] == 384
    texts = ["airflow over a wing creates lift", "version 2.0 of www.example.com ... etc."]
    dense = es.inference.inference(task_type="text_embedding", inference_id="e2e-dense",
                                   input=texts)["text_embedding"]
    assert [len(d["embedding"]) for d in dense] == [384, 384]
    assert np.linalg.norm(dense[0]["embedding"]) == pytest.approx(1.0, abs=1e-4)
    sparse = es.inference.inference(task_type="sparse_embedding", inference_id="e2e-sparse",
                                    input=texts)["sparse_embedding"]
    assert len(sparse) == 2 and all(s["embedding"] for s in sparse)
    names = set(sparse[1]["embedding"])
    if out["sparse_token_format"] == "elasticsearch":
        assert not any("." in n for n in names) and "%2E" in names
    else:
        assert "." in names  # raw tokens: what the warning in the report is about
        assert out["warnings"]
    docs = ["tumor cells", "the wing produces lift from airflow", "library catalog"]
    ranked = es.inference.inference(task_type="rerank", inference_id="e2e-rerank",
                                    query="how does a wing make lift", input=docs)["rerank"]
    assert sorted(r["index"] for r in ranked) == [0, 1, 2] and ranked[0]["index"] == 1
    top = es.inference.rerank(inference_id="e2e-rerank", query="how does a wing make lift",
                              input=docs, top_n=1)
    assert [r["index"] for r in top["rerank"]] == [1]
    # a wrong key stored in Elasticsearch: genseek's 401 surfaces as an ES error
    es.inference.put(task_type="text_embedding", inference_id="e2e-badkey",
                     inference_config=endpoint_payload("text_embedding", opts(
                         genseek_url=genseek_http, api_key="wrong-key")))
    with pytest.raises(Exception, match="401"):
        es.inference.inference(task_type="text_embedding", inference_id="e2e-badkey",
                               input=["x"])
