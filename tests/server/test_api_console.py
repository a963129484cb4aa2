"""What the browser console needs from the API: search ``explain``, ``GET /datasets``,
``POST /collections/{name}/evaluate`` and the static ``/ui/`` (public, with its security
headers, no traversal). In-process (FastAPI TestClient) over one small collection with two
bm25 indexes of different parameters, and a tiny BEIR folder written by the test."""

from __future__ import annotations

import json

import pytest
from _synth import make_docs, unique_token
from fastapi.testclient import TestClient
from test_api import error_of

from genseek.api import app as app_module
from genseek.api.app import EVAL_MEASURES, create_app
from genseek.api.settings import Settings
from genseek.evaluation import experiment
from genseek.pipeline import Pipeline
from genseek.types import Hit

KEYS = {"rk": {"read"}, "wk": {"write"}}
R = {"X-API-Key": "rk"}
W = {"Authorization": "Bearer wk"}
N_DOCS = 40
INDEXES = {"bm25": "bm25", "flat": "bm25(k1=1.6,b=0.9)"}
PIPE_A = {"retrieve": [{"index": "bm25", "k": 20}], "k": 5}
PIPE_B = {"retrieve": [{"index": "bm25", "k": 20}, {"index": "flat", "k": 15}], "k": 5}


@pytest.fixture(scope="module")
def docs():
    return make_docs(N_DOCS, seed=11)


def query_of(doc):
    """A query that finds ``doc`` (its unique token) and others (two of its words)."""
    words = [w for w in doc.text.split() if not w.startswith("tok")]
    token = next(w for w in doc.text.split() if w.startswith("tok"))
    return f"{words[0]} {words[-1]} {token}"


@pytest.fixture(scope="module")
def judged(docs):
    """12 queries, each judging its source document 2 and a neighbour 1."""
    queries = {f"q{i}": query_of(docs[i]) for i in range(12)}
    qrels = {f"q{i}": {docs[i].doc_id: 2, docs[(i + 1) % N_DOCS].doc_id: 1} for i in range(12)}
    return queries, qrels


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, docs, judged):
    """A datasets folder: ``tiny`` (test and train splits), plus folders that are no dataset."""
    root = tmp_path_factory.mktemp("datasets")
    queries, qrels = judged
    tiny = root / "tiny"
    (tiny / "qrels").mkdir(parents=True)
    (tiny / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (tiny / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text}) + "\n" for d in docs))
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q, ds in qrels.items()
                                               for d, g in ds.items()]
    (tiny / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    (tiny / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td_x\t1\n")
    (root / "noqrels").mkdir()
    (root / "noqrels" / "queries.jsonl").write_text('{"_id": "1", "text": "x"}\n')
    (root / "bad name").mkdir()
    (root / "README.md").write_text("not a dataset")
    outside = tmp_path_factory.mktemp("outside") / "secret"
    (outside / "qrels").mkdir(parents=True)
    (outside / "queries.jsonl").write_text('{"_id": "1", "text": "x"}\n')
    (outside / "qrels" / "test.tsv").write_text("1\td1\t1\n")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def ui_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ui")
    (folder / "index.html").write_text("<!doctype html><title>genseek</title>"
                                       '<script src="app.js"></script>')
    (folder / "app.js").write_text("console.log('genseek');\n")
    (folder / "style.css").write_text("body { margin: 0 }\n")
    (folder / "img").mkdir()
    (folder / "img" / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (folder.parent / "secret.txt").write_text("outside the console")
    return folder


@pytest.fixture(scope="module")
def client(tmp_path_factory, datasets, ui_dir):
    root = tmp_path_factory.mktemp("console") / "root"
    mp = pytest.MonkeyPatch()
    mp.setattr(app_module, "UI_DIR", ui_dir)
    app = create_app(Settings(root=root, api_keys=KEYS, datasets_root=datasets,
                              max_eval_queries=10))
    mp.undo()
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def coll(client, docs):
    r = client.post("/collections", headers=W, json={"name": "docs", "indexes": INDEXES})
    assert r.status_code == 201, r.text
    body = {"documents": [{"id": d.doc_id, "title": d.title, "text": d.text,
                           "metadata": dict(d.metadata)} for d in docs], "refresh": True}
    r = client.post("/collections/docs/documents", headers=W, json=body)
    assert r.status_code == 200 and r.json()["refreshed"], r.text
    return "docs"


def search(client, body, name="docs"):
    return client.post(f"/collections/{name}/search", headers=R, json=body)


# -- explain ---------------------------------------------------------------------------------


def test_explain_gives_each_stage_its_own_hits_and_the_timings(client, coll, docs):
    query = query_of(docs[3])
    plain = search(client, {"query": query, "pipeline": PIPE_B})
    assert plain.status_code == 200, plain.text
    assert "stages" not in plain.json() and "timings" not in plain.json()
    r = search(client, {"query": query, "pipeline": PIPE_B, "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"] == plain.json()["results"]
    assert [s["index"] for s in body["stages"]] == ["bm25", "flat"]
    for stage, spec in zip(body["stages"], PIPE_B["retrieve"], strict=True):
        alone = search(client, {"query": query, "pipeline": {
            "retrieve": [{"index": spec["index"], "k": spec["k"]}], "k": spec["k"]}})
        assert stage["hits"] == alone.json()["results"]
        assert 0 < len(stage["hits"]) <= spec["k"]
        assert stage["took_ms"] >= 0
    timings = body["timings"]
    assert set(timings) == {"retrieve_ms", "fusion_ms", "rerank_ms", "fetch_ms"}
    assert timings["rerank_ms"] is None
    assert all(timings[k] >= 0 for k in ("retrieve_ms", "fusion_ms", "fetch_ms"))
    assert timings["retrieve_ms"] == pytest.approx(sum(s["took_ms"] for s in body["stages"]),
                                                   abs=0.01)


def test_explain_on_the_default_pipeline_and_strict(client, coll, docs):
    r = search(client, {"query": query_of(docs[0]), "explain": True})
    assert r.status_code == 200, r.text
    assert [s["index"] for s in r.json()["stages"]] == list(INDEXES)
    e = error_of(search(client, {"query": "wing", "explain": "yes"}), 422, "validation_error")
    assert "explain" in e["message"]
    error_of(client.post("/collections/docs/search/batch", headers=R,
                         json={"queries": ["wing"], "explain": True}), 422)


def test_explained_searches_still_count_in_the_index_metrics(client, coll, docs):
    def observed():
        text = client.get("/metrics", headers=R).text
        line = next(x for x in text.splitlines() if x.startswith(
            'genseek_search_seconds_count{collection="docs",index="flat"}'))
        return float(line.split()[-1])

    before = observed()
    assert search(client, {"query": query_of(docs[1]), "pipeline": PIPE_B,
                           "explain": True}).status_code == 200
    assert observed() == before + 1


def test_openapi_shows_explain_and_the_new_routes(client):
    spec = client.get("/openapi.json").json()
    assert "/datasets" in spec["paths"] and "/collections/{name}/evaluate" in spec["paths"]
    assert "security" in spec["paths"]["/datasets"]["get"]
    schemas = spec["components"]["schemas"]
    assert "explain" in schemas["SearchRequest"]["properties"]
    assert {"stages", "timings"} <= set(schemas["SearchOut"]["properties"])
    assert not any(p.startswith("/ui") for p in spec["paths"])


# -- datasets --------------------------------------------------------------------------------


def test_datasets_lists_only_beir_folders_inside_the_root(client, datasets, judged):
    r = client.get("/datasets", headers=R)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["root"] == str(datasets)
    assert body["datasets"] == [{"name": "tiny", "splits": ["test", "train"],
                                 "queries": len(judged[0]), "documents": N_DOCS}]
    error_of(client.get("/datasets"), 401)


def test_datasets_of_a_missing_or_disabled_root(tmp_path):
    for where in (tmp_path / "absent", None):
        with TestClient(create_app(Settings(root=tmp_path / "r", datasets_root=where))) as c:
            r = c.get("/datasets")
            assert r.status_code == 200, r.text
            assert r.json() == {"root": None if where is None else str(where), "datasets": []}


def test_dataset_settings_from_env(tmp_path):
    env = {"GENSEEK_ROOT": str(tmp_path), "GENSEEK_DATASETS": str(tmp_path / "d")}
    assert Settings.from_env(env).datasets_root == tmp_path / "d"
    assert Settings.from_env({**env, "GENSEEK_API_DATASETS": "off"}).datasets_root is None
    assert Settings.from_env({**env, "GENSEEK_API_DATASETS": str(tmp_path / "e"),
                              "GENSEEK_MAX_EVAL_QUERIES": "7"}).datasets_root == tmp_path / "e"
    assert Settings.from_env({**env, "GENSEEK_MAX_EVAL_QUERIES": "7"}).max_eval_queries == 7


# -- evaluate --------------------------------------------------------------------------------


def _direct(client, queries, qrels, pipelines):
    """The same evaluation by genseek.evaluation itself, over the API's own searches."""

    class Over:
        def __init__(self, pipeline):
            self.pipeline = pipeline

        def search(self, texts, k):
            p = {**self.pipeline, "k": max(self.pipeline.get("k", 10), k)}
            r = client.post("/collections/docs/search/batch", headers=R,
                            json={"queries": list(texts), "pipeline": p})
            assert r.status_code == 200, r.text
            return [[Hit(h["doc_id"], h["score"]) for h in hits] for hits in r.json()["results"]]

    systems = {name: Over(Pipeline.model_validate(p).model_dump()) for name, p
               in pipelines.items()}
    return experiment(systems, queries, qrels, EVAL_MEASURES, k=100, batch_size=8,
                      baseline=next(iter(pipelines)))


def _check_against(body, direct, queries, qrels):
    assert body["measures"] == list(EVAL_MEASURES)
    assert body["queries"] == queries and body["qrels"] == qrels
    assert body["took_ms"] > 0
    for name in direct.metrics:
        assert body["systems"][name] == pytest.approx(direct.metrics[name])
        for q in queries:
            for m in EVAL_MEASURES:
                assert body["per_query"][name][q][m] == pytest.approx(
                    direct.per_query[name][m][q])
    assert body["comparison"]["baseline"] == "A"
    assert set(body["comparison"]["against"]) == set(direct.metrics) - {"A"}
    for name, by_measure in body["comparison"]["against"].items():
        for m, c in by_measure.items():
            want = direct.significance[name][m]
            assert c["mean_difference"] == pytest.approx(want["delta"])
            assert c["p_value"] == pytest.approx(want["p_value"])
            assert (c["wins"], c["ties"], c["losses"]) == (want["wins"], want["ties"],
                                                           want["losses"])
            assert c["wins"] + c["ties"] + c["losses"] == len(queries)


def test_evaluate_on_a_dataset(client, coll, judged):
    queries, qrels = judged
    pipelines = {"A": PIPE_A, "B two": PIPE_B}
    r = client.post("/collections/docs/evaluate", headers=R,
                    json={"dataset": "tiny", "split": "test", "pipelines": pipelines,
                          "max_queries": 10})
    assert r.status_code == 200, r.text
    first = dict(list(queries.items())[:10])
    first_qrels = {q: qrels[q] for q in first}
    _check_against(r.json(), _direct(client, first, first_qrels, pipelines), first, first_qrels)
    assert r.json()["systems"]["A"]["R@100"] > 0


def test_evaluate_with_uploaded_qrels_tsv(client, coll, judged):
    queries, qrels = judged
    chosen = ["q2", "q5", "q7"]
    # TREC, whitespace and BEIR lines mixed; one judged-only-0 query counts too
    text = "\n".join([f"q2 0 {d} {g}" for d, g in qrels["q2"].items()]
                     + [f"q5\t{d}\t{g}" for d, g in qrels["q5"].items()]
                     + [f"q7 {d} {g}" for d, g in qrels["q7"].items()]) + "\n"
    pipelines = {"A": PIPE_A, "B": PIPE_B, "C": {"retrieve": [{"index": "flat"}]}}
    up_queries = {q: queries[q] for q in chosen}
    r = client.post("/collections/docs/evaluate", headers=R,
                    json={"queries": up_queries, "qrels_tsv": text, "pipelines": pipelines})
    assert r.status_code == 200, r.text
    sub = {q: qrels[q] for q in chosen}
    _check_against(r.json(), _direct(client, up_queries, sub, pipelines), up_queries, sub)
    # uploaded qrels without queries take the dataset's; a JSON qrels object works alike
    r2 = client.post("/collections/docs/evaluate", headers=R,
                     json={"dataset": "tiny", "qrels": sub, "pipelines": pipelines})
    assert r2.status_code == 200, r2.text
    assert r2.json()["systems"] == r.json()["systems"]
    assert r2.json()["per_query"] == r.json()["per_query"]


BAD = [
    ({"dataset": "nope"}, 404, "dataset", "nope"),
    ({"dataset": "escape"}, 404, "dataset", "tiny"),
    ({"dataset": "noqrels"}, 404, "dataset", "noqrels"),
    ({"dataset": "../tiny"}, 422, "dataset", None),
    ({"dataset": "tiny", "split": "dev"}, 404, "split", "train"),
    ({"dataset": "tiny", "split": "../x"}, 422, "split", None),
    ({"qrels_tsv": "q1 d1 1\nq2 d2\n", "queries": {"q1": "a", "q2": "b"}}, 400,
     "qrels_tsv:2", None),
    ({"qrels_tsv": "q1 d1 high\n", "queries": {"q1": "a"}}, 400, "qrels_tsv:1", "high"),
    ({"qrels_tsv": "q1 d1 1\nq2 d3 1\n", "queries": {"q1": "a"}}, 400, "qrels", "'q2'"),
    ({"qrels_tsv": "q1 d1 1\n"}, 400, "queries", None),
    ({"qrels_tsv": "\n\n", "queries": {"q1": "a"}}, 400, "no judged queries", None),
    ({"qrels": {"q1": {}}, "queries": {"q1": "a"}}, 400, "no judged queries", None),
    ({"qrels": {"q1": {"d1": 1}}, "qrels_tsv": "q1 d1 1", "queries": {"q1": "a"}}, 400,
     "not both", None),
    ({}, 400, "dataset", None),
    ({"dataset": "tiny", "max_queries": 11}, 422, "max_queries", None),
    ({"dataset": "tiny", "max_queries": 0}, 422, "max_queries", None),
    ({"dataset": "tiny", "pipelines": {}}, 422, "pipelines", None),
    ({"dataset": "tiny", "pipelines": {f"p{i}": PIPE_A for i in range(5)}}, 422, "pipelines",
     None),
    ({"dataset": "tiny", "pipelines": {"bad/name": PIPE_A}}, 422, "pipelines", None),
    ({"dataset": "tiny", "pipelines": {"A": PIPE_A, "B": {"retrieve": [{"index": "nope"}]}}},
     404, "pipelines.B", "nope"),
    ({"dataset": "tiny", "pipelines": {"A": {**PIPE_A, "rerank": {"reranker": "nope"}}}},
     404, "pipelines.A", "nope"),
    ({"dataset": "tiny", "pipelines": {"A": {"retrieve": [{"index": "bm25",
                                                           "params": {"bogus": 1}}]}}},
     422, "pipelines.A", "bogus"),
    ({"dataset": "tiny", "unknown": 1}, 422, "unknown", None),
    ({"dataset": "tiny", "qrels": {"q1": {"d1": "1"}}}, 422, "qrels", None),
]


@pytest.mark.parametrize(("body", "status", "names", "also"), BAD,
                         ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_evaluations_are_one_readable_4xx(client, coll, body, status, names, also):
    full = {"pipelines": {"A": PIPE_A}, "max_queries": 3, **body}
    e = error_of(client.post("/collections/docs/evaluate", headers=R, json=full), status)
    assert names in e["message"], e
    if also is not None:
        assert also in e["message"], e


def test_too_many_judged_queries(client, coll):
    qrels = {f"q{i}": {"d1": 1} for i in range(11)}
    body = {"queries": {q: "wing" for q in qrels}, "qrels": qrels, "pipelines": {"A": PIPE_A}}
    e = error_of(client.post("/collections/docs/evaluate", headers=R, json=body), 400)
    assert "max_queries" in e["message"] and "at most 10" in e["message"], e
    r = client.post("/collections/docs/evaluate", headers=R, json={**body, "max_queries": 4})
    assert r.status_code == 200, r.text
    assert list(r.json()["queries"]) == ["q0", "q1", "q2", "q3"]


def test_evaluate_needs_read_and_an_existing_collection(client, coll):
    body = {"dataset": "tiny", "pipelines": {"A": PIPE_A}, "max_queries": 2}
    error_of(client.post("/collections/docs/evaluate", json=body), 401)
    assert client.post("/collections/docs/evaluate", headers=W, json=body).status_code == 200
    e = error_of(client.post("/collections/nosuch/evaluate", headers=R, json=body), 404)
    assert "nosuch" in e["message"]


# -- the console's static files --------------------------------------------------------------

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'")


def test_ui_is_public_with_its_headers_while_the_api_needs_a_key(client):
    r = client.get("/ui", follow_redirects=False)
    assert r.status_code in (301, 307, 308) and r.headers["location"] == "/ui/"
    r = client.get("/ui/")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "<title>genseek</title>" in r.text
    assert r.headers["content-security-policy"] == CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    for path, kind in (("/ui/app.js", "javascript"), ("/ui/style.css", "text/css"),
                       ("/ui/img/logo.svg", "image/svg+xml"), ("/ui/index.html", "text/html")):
        r = client.get(path)
        assert r.status_code == 200, (path, r.text)
        assert kind in r.headers["content-type"], (path, r.headers)
        assert r.headers["content-security-policy"] == CSP
    error_of(client.get("/collections"), 401)
    error_of(client.get("/datasets"), 401)
    assert client.get("/collections", headers=R).status_code == 200
    # a bad key sent to the console's files does not lock them
    assert client.get("/ui/", headers={"X-API-Key": "nope"}).status_code == 200


def raw_get(app, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as a server hands it to the app (percent-decoded, dots kept, as
    uvicorn does): an HTTP client would normalise the dots away before sending."""
    from urllib.parse import unquote

    import anyio

    sent = []

    async def run():
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": unquote(path),
                 "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 5000),
                 "server": ("testserver", 80)}

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)

    anyio.run(run)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("path", [
    "/ui/../secret.txt", "/ui/%2e%2e/secret.txt", "/ui/%2E%2E/secret.txt",
    "/ui/img/../../secret.txt", "/ui/..%2fsecret.txt", "/ui/%2e%2e%2fsecret.txt",
    "/ui/img/%2e%2e/%2e%2e/secret.txt", "/ui/nope.js", "/ui/img/", "/ui/../collections",
    "/ui/%2e%2e/collections", "/ui/..",
])
def test_ui_serves_nothing_outside_its_folder_and_lists_nothing(client, path):
    status, body = raw_get(client.app, path)
    assert status == 404, (path, status, body)
    assert b"outside the console" not in body and b"collections" not in body.split(b":")[0]
    assert json.loads(body)["error"]["type"] == "not_found"
    # and through an HTTP client (which may normalise the path first): never the file
    r = client.get(client.base_url.copy_with(raw_path=path.encode()), follow_redirects=False)
    assert r.status_code in (401, 404), (path, r.status_code, r.text)
    assert "outside the console" not in r.text


def test_ui_is_not_writable(client):
    assert client.post("/ui/index.html", content=b"x").status_code in (401, 405)
    assert client.delete("/ui/index.html").status_code in (401, 405)


def test_the_packaged_console_folder_is_what_is_served(tmp_path):
    assert app_module.UI_DIR.parent.name == "api"
    if not (app_module.UI_DIR / "index.html").is_file():
        pytest.skip("api/ui/index.html is not there yet")
    with TestClient(create_app(Settings(root=tmp_path))) as c:
        r = c.get("/ui/")
        assert r.status_code == 200 and r.headers["content-security-policy"] == CSP


def test_unique_token_search_finds_its_document(client, coll, docs):
    r = search(client, {"query": unique_token(7), "pipeline": PIPE_A, "explain": True})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["doc_id"] == docs[7].doc_id
    assert r.json()["stages"][0]["hits"][0]["doc_id"] == docs[7].doc_id
