"""Defects found by trying genseek as a new user and as an attacker would: a broken index is
isolated, an interrupted create resumes, bad input is one line or a 4xx and nothing is
created, one id rule everywhere, honest messages."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from _synth import make_docs, write_jsonl
from fastapi.testclient import TestClient

from genseek import Collection
from genseek.api.app import create_app
from genseek.api.settings import Settings
from genseek.cli import main, shutdown_line
from genseek.data.readers import read_corpus
from genseek.errors import ConflictError, InputError, NotFoundError

KEYS = {"rk": {"read"}, "wk": {"write"}}
R = {"X-API-Key": "rk"}
W = {"X-API-Key": "wk"}


def error_of(response, status, type_=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and "\n" not in error["message"]
    if type_:
        assert error["type"] == type_, error
    return error


def bm25_collection(path, names=("x", "y"), n=20):
    with Collection.create(path, {name: "bm25" for name in names}) as c:
        c.write(make_docs(n, seed=1))


def break_lucene(folder):
    """Overwrite every Lucene commit point of ``folder`` with garbage."""
    for segments in folder.glob("segments_*"):
        segments.write_bytes(b"not a Lucene commit")


# -- one broken index ------------------------------------------------------------------------


def test_a_broken_index_does_not_take_down_the_others(tmp_path):
    root = tmp_path / "root"
    bm25_collection(root / "a")
    bm25_collection(root / "b", names=("x",))
    break_lucene(root / "a" / "indexes" / "y")
    app = create_app(Settings(root=root, api_keys=KEYS))
    with TestClient(app) as client:
        def search(coll, pipeline=None):
            body = {"query": "wing"} if pipeline is None else {"query": "wing",
                                                              "pipeline": pipeline}
            return client.post(f"/collections/{coll}/search", headers=R, json=body)

        e = error_of(search("a", {"retrieve": [{"index": "y"}]}), 503, "index_unavailable")
        assert "index 'y'" in e["message"] and "could not open" in e["message"]
        assert search("a", {"retrieve": [{"index": "x"}]}).status_code == 200
        r = search("a")  # the default pipeline leaves the failed index out, and says so
        assert r.status_code == 200 and r.json()["results"]
        assert any("'y'" in w for w in r.json()["warnings"])
        assert search("b").status_code == 200 and "warnings" not in search("b").json()
        r = client.get("/ready", headers=R)
        assert r.status_code == 200 and r.json()["status"] == "degraded"
        assert r.json()["collections"]["a"]["indexes"]["y"]["state"] == "failed"
        assert r.json()["collections"]["b"]["state"] == "ready"
        assert client.get("/collections/a/ready", headers=R).status_code == 503
        assert client.get("/collections/b/ready", headers=R).status_code == 200
        stats = client.get("/collections/a", headers=R).json()
        assert stats["state"] == "failed" and stats["indexes"]["x"]["documents"] == 20
        assert stats["indexes"]["y"]["state"] == "failed" and stats["indexes"]["y"]["error"]
        # writes are still acknowledged and reach the healthy index
        r = client.post("/collections/a/documents", headers=W, json={
            "documents": [{"id": "new", "text": "zeppelin"}], "refresh": True})
        assert r.status_code == 200 and r.json()["refreshed"] is True
        r = client.post("/collections/a/search", headers=R, json={
            "query": "zeppelin", "pipeline": {"retrieve": [{"index": "x"}]}})
        assert [h["doc_id"] for h in r.json()["results"]] == ["new"]


def test_failing_index_on_the_cli_is_a_warning_not_a_crash(tmp_path, capsys):
    bm25_collection(tmp_path / "c")
    break_lucene(tmp_path / "c" / "indexes" / "y")
    assert main(["search", str(tmp_path / "c"), "wing"]) == 0
    captured = capsys.readouterr()
    assert "index 'y' is unavailable" in captured.err and "rank" in captured.out
    assert main(["search", str(tmp_path / "c"), "wing", "--index", "y"]) == 1
    assert "index 'y'" in capsys.readouterr().err
    assert main(["stats", str(tmp_path / "c")]) == 0
    assert "failed" in capsys.readouterr().out


# -- an interrupted create --------------------------------------------------------------------

KILLED_CREATE = textwrap.dedent('''
    import os, signal, sys
    import genseek.collection as C
    real, calls = C.atomic_write_json, []

    def dying(path, value):  # the second manifest write (creation done) never happens
        calls.append(path)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, value)

    C.atomic_write_json = dying
    from genseek.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def test_an_interrupted_create_resumes_with_the_same_command(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(12))
    coll = tmp_path / "kc"
    argv = ["index", str(coll), "--from", str(corpus), "--index", "bm25", "--index",
            "other=bm25(k1=1.2)", "--no-progress"]
    proc = subprocess.run([sys.executable, "-c", KILLED_CREATE, *argv], capture_output=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert (coll / "indexes" / "bm25").is_dir() and (coll / "indexes" / "other").is_dir()
    assert not Collection.exists(coll) and Collection.interrupted(coll) is not None
    with pytest.raises(NotFoundError, match="interrupted"):
        Collection.open(coll)
    # other specs are refused with one line, the folder untouched
    assert main(["index", str(coll), "--from", str(corpus), "--index", "bm25",
                 "--no-progress"]) == 2
    assert "interrupted creation" in capsys.readouterr().err
    # the same command finishes it
    assert main(argv + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["documents"] == 12
    with Collection.open(coll) as c:
        assert set(c.indexes) == {"bm25", "other"} and len(c) == 12


def test_the_api_finishes_an_interrupted_create(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    specs = {"bm25": "bm25"}
    (root / "kc").mkdir()
    (root / "kc" / "collection.json").write_text(json.dumps(
        {"format": "genseek-collection", "version": 1, "indexes": specs, "state": "creating"}))
    with TestClient(create_app(Settings(root=root, api_keys=KEYS))) as client:
        assert client.get("/collections", headers=R).json()["collections"] == []
        error_of(client.post("/collections", headers=W,
                             json={"name": "kc", "indexes": {"d": "bm25"}}), 409, "conflict")
        r = client.post("/collections", headers=W, json={"name": "kc", "indexes": specs})
        assert r.status_code == 201, r.text
        assert client.get("/collections", headers=R).json()["collections"] == ["kc"]
    with pytest.raises(ConflictError, match="already a collection"):
        Collection.create(root / "kc", specs)


# -- bad input: a 4xx or one line, and nothing created ---------------------------------------


def deep(levels):
    text = '{"a": ' * levels + "1" + "}" * levels
    return text


@pytest.mark.parametrize("line, message", [
    ('{"_id": "a", "text": "bad \\ud800 text"}', "unpaired surrogate"),
    ('{"_id": "a", "text": "t", "metadata": ' + deep(100_000) + "}", "nested too deeply"),
    ('{"_id": "a", "text": "t", "metadata": ' + deep(40) + "}", "nested more than 32"),
    ('{"_id": "a b", "text": "t"}', "without whitespace"),
    ('{"_id": "a\\u0000b", "text": "t"}', "without whitespace or control"),
])
def test_bad_corpus_lines_are_one_line_and_leave_nothing(tmp_path, capsys, line, message):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "ok", "text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=message):
        list(read_corpus(corpus))
    rc = main(["index", str(tmp_path / "coll"), "--from", str(corpus), "--index", "bm25",
               "--no-progress", "--batch-size", "1000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{corpus}:2:" in err[0] and message in err[0], err
    assert not (tmp_path / "coll").exists()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("iso") / "root"
    with TestClient(create_app(Settings(root=root, api_keys=KEYS))) as c:
        assert c.post("/collections", headers=W,
                      json={"name": "c", "indexes": {"bm25": "bm25"}}).status_code == 201
        yield c


@pytest.mark.parametrize("document, where", [
    ({"id": "a", "text": "bad \ud800"}, "text"),
    ({"id": "a", "title": "\udfff"}, "title"),
    ({"id": "a b"}, "id"),
    ({"id": "a\nb"}, "id"),
    ({"id": "a\u0000b"}, "id"),
    ({"id": "x" * 513}, "id"),
    ({"id": "a", "metadata": json.loads(deep(40))}, "metadata"),
    ({"id": "a", "metadata": {"k": "\ud800"}}, "metadata"),
])
def test_bad_documents_are_422_and_nothing_is_stored(client, document, where):
    body = json.dumps({"documents": [document]}, ensure_ascii=True)  # "\ud800" as an escape
    r = client.post("/collections/c/documents", headers={**W, "content-type":
                                                         "application/json"}, content=body)
    e = error_of(r, 422, "validation_error")
    assert where in e["message"]
    assert client.get("/collections/c", headers=R).json()["documents"] == 0


def test_very_deep_json_is_a_4xx(client):
    body = '{"documents": [{"id": "a", "metadata": ' + deep(100_000) + "}]}"
    r = client.post("/collections/c/documents", headers={**W, "content-type":
                                                         "application/json"}, content=body)
    assert 400 <= r.status_code < 500 and "error" in r.json()
    assert client.get("/health").status_code == 200


def test_queries_with_lone_surrogates_are_refused(client, tmp_path, capsys):
    body = json.dumps({"query": "wing \ud800"}, ensure_ascii=True)
    r = client.post("/collections/c/search", headers={**R, "content-type": "application/json"},
                    content=body)
    error_of(r, 422, "validation_error")
    bm25_collection(tmp_path / "c", names=("bm25",))
    assert main(["search", str(tmp_path / "c"), "wing \ud800"]) == 2
    assert "unpaired surrogate" in capsys.readouterr().err


def test_stored_ids_the_old_rule_allowed_can_still_be_deleted(client):
    r = client.post("/collections/c/documents/delete", headers=W, json={"ids": ["a b", "x"]})
    assert r.status_code == 200 and r.json()["missing"] == 2


# -- smaller ones ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-5", "x"])
def test_batch_size_must_be_positive(tmp_path, capsys, value):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(3))
    with pytest.raises(SystemExit) as exc:
        main(["index", str(tmp_path / "coll"), "--from", str(corpus), "--batch-size", value])
    assert exc.value.code == 2 and "--batch-size" in capsys.readouterr().err
    assert not (tmp_path / "coll").exists()


def test_empty_results_say_why_only_when_it_is_known(tmp_path, capsys):
    bm25_collection(tmp_path / "c", names=("bm25",))
    assert main(["search", str(tmp_path / "c"), "zzzunknownword"]) == 0
    assert capsys.readouterr().out.strip() == "no results"
    assert main(["search", str(tmp_path / "c"), "the of and"]) == 0
    assert "only stop words" in capsys.readouterr().out


def test_the_shutdown_line_says_what_is_true():
    assert "every acknowledged write is applied" in shutdown_line({})
    line = shutdown_line({"papers": {"dense": 12}})
    assert "papers/dense (12 operations)" in line and "every acknowledged write is applied" \
        not in line


def test_readiness_details_and_metrics_need_a_key(tmp_path):
    root = tmp_path / "root"
    bm25_collection(root / "secret-name", names=("bm25",))
    for public_metrics in (False, True):
        app = create_app(Settings(root=root, api_keys=KEYS, public_metrics=public_metrics))
        with TestClient(app) as client:
            client.get("/collections/secret-name", headers=R)  # opens it
            r = client.get("/ready")
            assert r.status_code == 200 and "secret-name" not in r.text
            assert "secret-name" in client.get("/ready", headers=R).text
            assert client.get("/ready", headers={"X-API-Key": "wrong"}).json() == {
                "status": "ready"}
            assert client.get("/health").json() == {"status": "ok"}
            r = client.get("/metrics")
            assert r.status_code == (200 if public_metrics else 401)
            assert client.get("/metrics", headers=R).status_code == 200
