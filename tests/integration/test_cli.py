"""The genseek command line: help, errors (exit 2, one line), index/add/delete/search/eval/stats."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _synth import make_docs, unique_token, write_jsonl

from genseek import Collection
from genseek.cli import build_parser, main
from genseek.data.readers import read_qrels
from genseek.data.trec import read_run
from genseek.evaluation import evaluate

COMMANDS = ["index", "add", "delete", "search", "eval", "stats", "sync", "serve", "train", "es"]


def run(*args: str) -> tuple[int, str, str]:
    """Run ``genseek ARGS`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as exc:  # argparse: --help and usage errors
            rc = exc.code if isinstance(exc.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def genseek_command() -> list[str]:
    script = Path(sys.executable).parent / "genseek"
    return [str(script)] if script.exists() else [sys.executable, "-m", "genseek.cli"]


def progress_line(line: str) -> bool:
    """A stage or progress line (``genseek: reading ...``), not an error or a warning."""
    return line.startswith("genseek: ") and not line.startswith(
        ("genseek: error:", "genseek: warning:"))


def assert_one_line_error(rc: int, err: str, *fragments: str) -> str:
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not progress_line(line)]
    assert len(lines) == 1, err
    assert lines[0].startswith("genseek: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def store_count(path: Path) -> int:
    with Collection.open(path) as c:
        return len(c)


# -- help -------------------------------------------------------------------------------------


def test_every_subcommand_is_covered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)


@pytest.mark.parametrize("argv", [["--help"]] + [[c, "--help"] for c in COMMANDS])
def test_help(argv):
    rc, out, err = run(*argv)
    assert rc == 0
    assert out.startswith("usage: genseek")
    assert err == ""


def test_help_and_error_in_a_real_process(tmp_path, corpus):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(genseek_command() + ["--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0
    for command in COMMANDS:
        assert command in done.stdout
    done = subprocess.run(genseek_command() + ["index", str(tmp_path / "c"), "--from",
                                               str(corpus), "--index", "foo"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert_one_line_error(done.returncode, done.stderr, "unknown index type 'foo'")
    assert done.stdout == ""
    assert not (tmp_path / "c").exists()
    # A bad line found after the JVM has started, with progress bars left on.
    source = bad_corpus(tmp_path, 4, '{"_id": "d4", "text": ')
    done = subprocess.run(genseek_command() + ["index", str(tmp_path / "c"), "--from",
                                               str(source), "--index", "bm25"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert_one_line_error(done.returncode, done.stderr, f"{source}:4:")
    assert not Collection.exists(tmp_path / "c") or store_count(tmp_path / "c") == 0


def test_no_command_is_a_usage_error():
    rc, _, err = run()
    assert rc == 2
    assert "usage:" in err


# -- bad input ----------------------------------------------------------------------------------


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl(tmp_path / "corpus.jsonl", make_docs(30))


def bad_corpus(tmp_path: Path, line_no: int, bad: str) -> Path:
    lines = [json.dumps({"_id": f"d{i}", "text": f"text {i}"}) for i in range(1, 10)]
    lines[line_no - 1] = bad
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return f


@pytest.mark.parametrize("line_no, bad, fragment", [
    (3, '{"_id": "d3", "text": "unterminated', "bad JSON"),
    (2, '{"title": "no id", "text": "x"}', "'_id'"),
    (5, '{"_id": "has space", "text": "x"}', "whitespace"),
])
def test_bad_corpus_line_exits_2_and_writes_nothing(tmp_path, line_no, bad, fragment):
    source = bad_corpus(tmp_path, line_no, bad)
    path = tmp_path / "coll"
    rc, out, err = run("index", path, "--from", source, "--index", "bm25", "--no-progress")
    assert_one_line_error(rc, err, f"{source}:{line_no}:", fragment)
    assert out == ""
    assert not Collection.exists(path) or store_count(path) == 0


def test_invalid_utf8_exits_2(tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_bytes(b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "\xc3\x28"}\n')
    rc, _, err = run("index", tmp_path / "coll", "--from", source, "--index", "bm25",
                     "--no-progress")
    assert_one_line_error(rc, err, f"{source}:2:", "UTF-8")
    assert not Collection.exists(tmp_path / "coll") or store_count(tmp_path / "coll") == 0


def test_error_in_a_later_batch_keeps_the_committed_batches(tmp_path):
    docs = make_docs(25)
    lines = [json.dumps({"_id": d.doc_id, "text": d.text}) for d in docs]
    lines.insert(22, "{not json")  # line 23
    source = tmp_path / "c.jsonl"
    source.write_text("\n".join(lines) + "\n")
    path = tmp_path / "coll"
    rc, _, err = run("index", path, "--from", source, "--index", "bm25", "--batch-size", "10",
                     "--no-progress")
    assert_one_line_error(rc, err, f"{source}:23:")
    assert store_count(path) == 20  # two whole batches, nothing of the third


@pytest.mark.parametrize("extra, fragment", [
    (["--index", "foo"], "unknown index type 'foo'"),
    (["--index", "bm25(k1=abc)"], "k1"),
    (["--index", "bm25(k1"], "bad index spec"),
    (["--index", "../x=bm25"], "name"),
    (["--index", "bm25", "--index", "bm25(k1=1.2)"], "same name"),
])
def test_bad_index_option_leaves_no_collection(tmp_path, corpus, extra, fragment):
    path = tmp_path / "coll"
    rc, out, err = run("index", path, "--from", corpus, "--no-progress", *extra)
    assert_one_line_error(rc, err, fragment)
    assert not path.exists()


def test_missing_source_leaves_no_collection(tmp_path):
    path = tmp_path / "coll"
    rc, _, err = run("index", path, "--from", tmp_path / "missing.jsonl", "--index", "bm25",
                     "--no-progress")
    assert_one_line_error(rc, err, "missing.jsonl", "no such file")
    assert not path.exists()


def test_collection_path_is_a_file(tmp_path, corpus):
    f = tmp_path / "afile"
    f.write_text("keep me")
    rc, _, err = run("index", f, "--from", corpus, "--index", "bm25", "--no-progress")
    assert_one_line_error(rc, err, "is a file")
    assert f.read_text() == "keep me"
    for argv in (["search", f, "x"], ["stats", f], ["delete", f, "a"], ["add", f, "--from", corpus]):
        rc, _, err = run(*argv)
        assert_one_line_error(rc, err, "is a file")


def test_commands_on_a_missing_collection(tmp_path):
    for argv in (["search", tmp_path / "nope", "x"], ["stats", tmp_path / "nope"]):
        rc, _, err = run(*argv)
        assert_one_line_error(rc, err, "not a genseek collection")
    assert not (tmp_path / "nope").exists()


def test_too_large_document_is_rejected(tmp_path):
    source = tmp_path / "c.jsonl"
    source.write_text(json.dumps({"_id": "big", "text": "word " * 5000}) + "\n")
    rc, _, err = run("index", tmp_path / "coll", "--from", source, "--index", "bm25",
                     "--max-doc-bytes", "1000", "--no-progress")
    assert_one_line_error(rc, err, "'big'", "max_doc_bytes")


# -- a working collection -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def beir(tmp_path_factory):
    """A tiny BEIR folder: each judged query is the unique token of its relevant document."""
    root = tmp_path_factory.mktemp("beir") / "tiny"
    root.mkdir()
    docs = make_docs(40, seed=21)
    write_jsonl(root / "corpus.jsonl", docs)
    relevant = {f"q{i}": docs[i * 7].doc_id for i in range(5)}
    with open(root / "queries.jsonl", "w") as fh:
        for q, doc_id in relevant.items():
            fh.write(json.dumps({"_id": q, "text": f"{unique_token(int(doc_id[1:]))} study"}) + "\n")
        fh.write(json.dumps({"_id": "unjudged", "text": "wing lift"}) + "\n")
    (root / "qrels").mkdir()
    with open(root / "qrels" / "test.tsv", "w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for q, doc_id in relevant.items():
            fh.write(f"{q}\t{doc_id}\t1\n")
    return root, docs


@pytest.fixture(scope="module")
def indexed(beir, tmp_path_factory):
    root, docs = beir
    path = tmp_path_factory.mktemp("cli") / "coll"
    rc, out, err = run("index", path, "--from", root, "--no-progress", "--json")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["read"] == summary["upserted"] == summary["documents"] == 40
    assert summary["resumed_after_line"] == 0
    return path


def test_index_defaults_to_bm25_and_dense(indexed):
    rc, out, _ = run("stats", indexed, "--json")
    assert rc == 0
    stats = json.loads(out)
    assert set(stats["indexes"]) == {"bm25", "dense"}
    assert stats["documents"] == 40
    for s in stats["indexes"].values():
        assert s["documents"] == 40
        assert s["applied_seq"] == stats["seq"]
        assert s["disk_bytes"] > 0
    assert stats["disk_bytes"] >= sum(s["disk_bytes"] for s in stats["indexes"].values())
    rc, out, _ = run("stats", indexed)
    assert rc == 0
    assert "40 documents" in out
    assert "bm25" in out and "dense" in out


def test_search_linear_weights(indexed, beir):
    _, docs = beir
    query = f"{unique_token(3)} wing"

    def top(*extra):
        rc, out, err = run("search", indexed, query, "-k", "5", "--json", *extra)
        assert rc == 0, err
        return [(h["doc_id"], round(h["score"], 6)) for h in json.loads(out)["hits"]]

    bm25_only = top("--fusion", "linear", "--weights", "1,0")
    assert bm25_only[0][0] == docs[3].doc_id
    assert top("--fusion", "linear", "--weights", "0,1") != bm25_only  # the weights count
    rc, _, err = run("search", indexed, query, "--fusion", "linear", "--weights", "1,2,3")
    assert_one_line_error(rc, err, "needs 2 weights, not 3")
    rc, _, err = run("search", indexed, query, "--weights", "1,2")
    assert_one_line_error(rc, err, "--weights needs --fusion linear")
    rc, _, err = run("search", indexed, query, "--fusion", "linear", "--weights", "a,b")
    assert rc == 2 and "comma-separated numbers" in err


def test_search_json(indexed, beir):
    _, docs = beir
    target = docs[3]
    query = f"{unique_token(3)} wing"
    for extra in ([], ["--index", "bm25"], ["--index", "dense"], ["--fusion", "linear"],
                  ["--index", "bm25", "--index", "dense"]):
        rc, out, err = run("search", indexed, query, "-k", "5", "--json", *extra)
        assert rc == 0, err
        result = json.loads(out)
        assert set(result) == {"query", "hits"}
        assert result["query"] == query
        hits = result["hits"]
        assert 0 < len(hits) <= 5
        assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
        for h in hits:
            assert set(h) == {"rank", "doc_id", "score", "title"}
            assert isinstance(h["score"], float)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        assert len({h["doc_id"] for h in hits}) == len(hits)
        titles = {d.doc_id: d.title for d in docs}
        assert all(h["title"] == titles[h["doc_id"]] for h in hits)
        if extra == ["--index", "bm25"]:  # the token occurs in the target document only
            assert hits[0]["doc_id"] == target.doc_id


def test_search_text_output(indexed):
    rc, out, _ = run("search", indexed, "wing lift drag", "-k", "3")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["rank", "doc", "id"]
    assert len(lines) == 4


@pytest.mark.parametrize("query", ["", "   ", "\t \n"])
def test_empty_query_exits_2(indexed, query):
    rc, out, err = run("search", indexed, query)
    assert_one_line_error(rc, err, "empty")
    assert out == ""


@pytest.mark.parametrize("k", ["0", "-3", "10001"])
def test_bad_k(indexed, k):
    rc, _, err = run("search", indexed, "wing", "-k", k)
    assert_one_line_error(rc, err, "-k")


def test_stop_word_query(indexed):
    rc, out, err = run("search", indexed, "the of and", "--index", "bm25", "--json")
    assert rc == 0, err
    assert json.loads(out)["hits"] == []
    rc, out, _ = run("search", indexed, "the of and", "--index", "bm25")
    assert rc == 0 and "no results" in out
    rc, out, _ = run("search", indexed, "the of and", "--json", "-k", "4")
    assert rc == 0
    assert len(json.loads(out)["hits"]) == 4  # fused: dense still answers


def test_search_unknown_index(indexed):
    rc, _, err = run("search", indexed, "wing", "--index", "nope")
    assert_one_line_error(rc, err, "nope")


def test_eval_json_and_run_files(indexed, beir):
    root, _ = beir
    rc, out, err = run("eval", indexed, "--dataset", root, "--json", "--no-progress")
    assert rc == 0, err
    result = json.loads(out)
    assert set(result) == {"bm25", "dense", "rrf"}
    for name, values in result.items():
        assert set(values) == {"nDCG@10", "R@100", "RR@10"}, name
        assert all(0.0 <= v <= 1.0 for v in values.values())
    # By construction bm25 ranks each query's one relevant document first.
    assert result["bm25"] == {"nDCG@10": 1.0, "R@100": 1.0, "RR@10": 1.0}
    assert result["rrf"]["R@100"] >= min(result["bm25"]["R@100"], result["dense"]["R@100"])
    runs = indexed / "runs" / "tiny-test"
    qrels = read_qrels(root)
    for name in result:
        path = runs / f"{name}.trec"
        assert path.is_file()
        run_ = read_run(path)
        assert set(run_) == set(qrels)  # judged queries only
        assert all(0 < len(hits) <= 100 for hits in run_.values())
        for line in path.read_text().splitlines()[:3]:
            qid, q0, doc_id, rank, score, tag = line.split()
            assert q0 == "Q0" and tag == f"genseek-{name}" and int(rank) >= 1
        recomputed = evaluate(run_, qrels)
        for m, v in result[name].items():
            assert recomputed[m] == pytest.approx(v, abs=1e-4), (name, m)
    # text output and --runs
    rc, out, _ = run("eval", indexed, "--dataset", root, "--runs", indexed.parent / "myruns",
                     "-k", "10", "--no-progress")
    assert rc == 0
    assert "5 judged queries" in out
    assert (indexed.parent / "myruns" / "rrf.trec").is_file()


def test_eval_errors(indexed, beir, tmp_path):
    root, _ = beir
    rc, _, err = run("eval", indexed, "--dataset", root, "--split", "dev")
    assert_one_line_error(rc, err, "dev")
    bad = tmp_path / "bad"
    (bad / "qrels").mkdir(parents=True)
    (bad / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "x"}) + "\n")
    (bad / "qrels" / "test.tsv").write_text("q1\td1\t1\nq9\td2\t1\n")
    rc, _, err = run("eval", indexed, "--dataset", bad)
    assert_one_line_error(rc, err, "missing from queries.jsonl")


def test_runs_folder_that_is_a_file(indexed, beir, tmp_path):
    root, _ = beir
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    rc, _, err = run("eval", indexed, "--dataset", root, "--runs", blocker, "--no-progress")
    assert_one_line_error(rc, err)
    assert blocker.read_text() == "not a folder"


def test_locked_collection_in_another_process(indexed):
    with Collection.open(indexed):
        # stats reads what the collection committed: it works beside the owner
        done = subprocess.run(genseek_command() + ["stats", str(indexed), "--json"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["documents"] > 0
        # a command that opens it is refused with one line
        done = subprocess.run(genseek_command() + ["stats", str(indexed), "--open"],
                              capture_output=True, text=True, timeout=120)
    assert_one_line_error(done.returncode, done.stderr, "another process")


# -- changing a collection ------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path):
    docs = make_docs(30, seed=2)
    source = write_jsonl(tmp_path / "corpus.jsonl", docs)
    path = tmp_path / "coll"
    rc, _, err = run("index", path, "--from", source, "--index", "bm25", "--no-progress")
    assert rc == 0, err
    return path, docs


def test_delete(small, tmp_path):
    path, docs = small
    rc, out, err = run("delete", path, docs[0].doc_id, docs[1].doc_id, "nope", "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert (result["deleted"], result["missing"]) == (2, 1)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"{docs[2].doc_id}\n\n{docs[3].doc_id}\n")
    rc, out, _ = run("delete", path, "--ids-file", ids_file)
    assert rc == 0
    assert "deleted 2 documents" in out
    rc, out, _ = run("search", path, unique_token(0), "--json")
    assert json.loads(out)["hits"] == []
    rc, out, _ = run("stats", path, "--json")
    stats = json.loads(out)
    assert stats["documents"] == stats["indexes"]["bm25"]["documents"] == 26
    rc, _, err = run("delete", path)
    assert_one_line_error(rc, err, "ids")
    rc, _, err = run("delete", path, "--ids-file", tmp_path / "missing.txt")
    assert_one_line_error(rc, err, "missing.txt")


def test_add_updates_and_skips_unchanged(small, tmp_path):
    path, docs = small
    changed = [d.__class__(d.doc_id, d.title, d.text + " extra") for d in docs[:5]]
    new = make_docs(5, start=100)
    source = write_jsonl(tmp_path / "update.jsonl", changed + docs[5:10] + new)
    rc, out, err = run("add", path, "--from", source, "--json", "--no-progress")
    assert rc == 0, err
    summary = json.loads(out)
    assert (summary["read"], summary["upserted"], summary["unchanged"]) == (15, 10, 5)
    assert summary["documents"] == 35
    # The same command again: the import had finished, so nothing is read twice.
    rc, out, _ = run("add", path, "--from", source, "--json", "--no-progress")
    again = json.loads(out)
    assert again["resumed_after_line"] == 15
    assert again["upserted"] == 0
    assert again["documents"] == 35


def test_index_adds_a_new_index_to_an_existing_collection(small, tmp_path):
    path, docs = small
    source = write_jsonl(tmp_path / "more.jsonl", make_docs(3, start=200))
    rc, out, err = run("index", path, "--from", source, "--index", "lex=bm25(k1=1.2)",
                       "--json", "--no-progress")
    assert rc == 0, err
    rc, out, _ = run("stats", path, "--json")
    stats = json.loads(out)
    assert set(stats["indexes"]) == {"bm25", "lex"}
    assert stats["indexes"]["lex"]["documents"] == stats["documents"] == 33
    rc, out, _ = run("search", path, unique_token(1), "--index", "lex", "--json")
    assert [h["doc_id"] for h in json.loads(out)["hits"]] == [docs[1].doc_id]


def test_tsv_corpus_and_empty_documents(tmp_path):
    source = tmp_path / "c.tsv"
    source.write_text("a\tTitle A\talpha text\nb\tbeta text\ne1\t\t\n")
    rc, out, err = run("index", tmp_path / "coll", "--from", source, "--index", "bm25",
                       "--json", "--no-progress")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["documents"] == 3
    assert summary["empty_count"] == 1 and summary["empty_documents"] == ["e1"]
    rc, out, err = run("add", tmp_path / "coll", "--from", source, "--no-progress")
    assert rc == 0
