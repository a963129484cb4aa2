"""Corpus, query and qrels readers, and TREC run files."""

from __future__ import annotations

import json

import pytest

from genseek.data.readers import (
    MAX_DOC_BYTES,
    check_id,
    corpus_file,
    read_corpus,
    read_qrels,
    read_queries,
)
from genseek.data.trec import format_run, read_run, write_run
from genseek.errors import GenseekError, InputError
from genseek.types import Hit


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def docs(path, **kw):
    return [(n, d) for n, d in read_corpus(path, **kw)]


def test_jsonl_corpus(tmp_path):
    f = write_lines(tmp_path / "c.jsonl", [
        json.dumps({"_id": "a", "title": "T", "text": "hello", "metadata": {"y": 1}}),
        "",  # blank lines are skipped but still counted
        json.dumps({"id": 7, "contents": "seven"}),
        json.dumps({"docid": "x-1", "text": "ünïcödé ✓"}),
    ])
    got = docs(f)
    assert [n for n, _ in got] == [1, 3, 4]
    assert [d.doc_id for _, d in got] == ["a", "7", "x-1"]
    assert got[0][1].title == "T" and got[0][1].text == "hello"
    assert dict(got[0][1].metadata) == {"y": 1}
    assert got[1][1].text == "seven"
    assert got[2][1].text == "ünïcödé ✓"
    # skip_lines resumes after a line number
    assert [n for n, _ in read_corpus(f, skip_lines=3)] == [4]


def test_beir_folder(tmp_path):
    (tmp_path / "ds").mkdir()
    write_lines(tmp_path / "ds" / "corpus.jsonl", [json.dumps({"_id": "a", "text": "x"})])
    assert corpus_file(tmp_path / "ds") == tmp_path / "ds" / "corpus.jsonl"
    assert [d.doc_id for _, d in read_corpus(tmp_path / "ds")] == ["a"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="corpus.jsonl"):
        corpus_file(tmp_path / "empty")


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        list(read_corpus(tmp_path / "nope.jsonl"))
    bad = tmp_path / "corpus.csv"
    bad.write_text("a,b\n")
    with pytest.raises(InputError, match="unknown corpus format"):
        list(read_corpus(bad))


@pytest.mark.parametrize("line_no", [1, 4, 17])
def test_malformed_json_names_file_and_line(tmp_path, line_no):
    lines = [json.dumps({"_id": f"d{i}", "text": "ok"}) for i in range(1, 20)]
    lines[line_no - 1] = '{"_id": "broken", "text": "no closing brace"'
    f = write_lines(tmp_path / "corpus.jsonl", lines)
    with pytest.raises(InputError) as info:
        docs(f)
    msg = str(info.value)
    assert f"{f}:{line_no}:" in msg
    assert "JSON" in msg
    assert info.value.line == line_no
    assert info.value.path == str(f)
    assert "\n" not in msg
    assert isinstance(info.value, GenseekError)


@pytest.mark.parametrize("record, fragment", [
    ({"title": "no id", "text": "x"}, "_id"),
    ({"_id": "", "text": "x"}, "empty"),
    ({"_id": "has space", "text": "x"}, "whitespace"),
    ({"_id": "tab\there", "text": "x"}, "whitespace"),
    ({"_id": "new\nline", "text": "x"}, "whitespace"),
    ({"_id": "ctl\x01", "text": "x"}, "control"),
    ({"_id": " lead", "text": "x"}, "whitespace"),
    ({"_id": ["a"], "text": "x"}, "string or integer"),
    ({"_id": True, "text": "x"}, "string or integer"),
    ({"_id": None, "text": "x"}, "string or integer"),
    ({"_id": "x" * 513, "text": "x"}, "at most 512"),
    ({"_id": "a", "text": 5}, "'text' must be a string"),
    ({"_id": "a", "title": ["t"], "text": "x"}, "'title' must be a string"),
    ({"_id": "a", "text": "x", "metadata": [1]}, "metadata"),
])
def test_bad_records(tmp_path, record, fragment):
    f = write_lines(tmp_path / "corpus.jsonl", [json.dumps({"_id": "ok", "text": "fine"}),
                                                json.dumps(record)])
    with pytest.raises(InputError) as info:
        docs(f)
    assert fragment in str(info.value)
    assert f"{f}:2:" in str(info.value)


def test_non_object_json_line(tmp_path):
    f = write_lines(tmp_path / "corpus.jsonl", ['["a", "b"]'])
    with pytest.raises(InputError, match="expected a JSON object"):
        docs(f)


def test_invalid_utf8_names_line(tmp_path):
    f = tmp_path / "corpus.jsonl"
    f.write_bytes(b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "bad \xff\xfe byte"}\n')
    with pytest.raises(InputError) as info:
        docs(f)
    assert f"{f}:2:" in str(info.value)
    assert "UTF-8" in str(info.value)


def test_null_fields_and_empty_documents(tmp_path):
    f = write_lines(tmp_path / "corpus.jsonl", [
        json.dumps({"_id": "e1"}),
        json.dumps({"_id": "e2", "title": "", "text": ""}),
        json.dumps({"_id": "e3", "title": None, "text": None, "metadata": None}),
    ])
    got = [d for _, d in read_corpus(f)]
    assert [(d.doc_id, d.title, d.text, d.contents) for d in got] == [
        ("e1", "", "", ""), ("e2", "", "", ""), ("e3", "", "", "")]


def test_ten_megabyte_document(tmp_path):
    word = "lorem ipsum dolor sit amet "
    text = word * (10 * 1024 * 1024 // len(word) + 1)
    assert len(text.encode()) > 10 * 1024 * 1024
    f = write_lines(tmp_path / "big.jsonl", [json.dumps({"_id": "small", "text": "x"}),
                                             json.dumps({"_id": "big", "title": "B", "text": text})])
    assert len(text.encode()) < MAX_DOC_BYTES
    got = docs(f)  # accepted by default
    assert got[1][1].doc_id == "big"
    assert got[1][1].text == text
    with pytest.raises(InputError) as info:
        docs(f, max_doc_bytes=1024 * 1024)
    msg = str(info.value)
    assert f"{f}:2:" in msg
    assert "'big'" in msg
    assert "max_doc_bytes" in msg
    assert f"{1024 * 1024:,}" in msg  # says what the limit is


def test_size_limit_counts_utf8_bytes(tmp_path):
    f = write_lines(tmp_path / "c.jsonl", [json.dumps({"_id": "a", "text": "é" * 6})])  # 12 bytes
    assert len(docs(f, max_doc_bytes=12)) == 1
    with pytest.raises(InputError):
        docs(f, max_doc_bytes=11)


def test_tsv_two_and_three_columns(tmp_path):
    f = write_lines(tmp_path / "c.tsv", ["a\tjust text", "b\tTitle\tbody text", "c\t\t"])
    got = [d for _, d in read_corpus(f)]
    assert [(d.doc_id, d.title, d.text) for d in got] == [
        ("a", "", "just text"), ("b", "Title", "body text"), ("c", "", "")]


@pytest.mark.parametrize("line, fragment", [
    ("a", "got 1"), ("a\tb\tc\td", "got 4"), ("a b\ttext", "whitespace"), ("\ttext", "empty"),
])
def test_tsv_errors(tmp_path, line, fragment):
    f = write_lines(tmp_path / "c.tsv", ["ok\tfine", line])
    with pytest.raises(InputError) as info:
        docs(f)
    assert fragment in str(info.value)
    assert f"{f}:2:" in str(info.value)


def test_check_id():
    assert check_id("abc", "f", 1) == "abc"
    assert check_id(42, "f", 1) == "42"
    assert check_id("MED-10/2:x", "f", 1) == "MED-10/2:x"
    for bad in ("a b", "a\u00a0b", "a\tb", "", "x" * 513, 1.5, True):
        with pytest.raises(InputError):
            check_id(bad, "f", 1)


def test_read_queries(tmp_path):
    write_lines(tmp_path / "queries.jsonl", [json.dumps({"_id": "q1", "text": "first"}),
                                             json.dumps({"_id": 2, "text": "second"})])
    assert read_queries(tmp_path) == {"q1": "first", "2": "second"}
    tsv = write_lines(tmp_path / "q.tsv", ["q1\tfirst query", "q2\tsecond"])
    assert read_queries(tsv) == {"q1": "first query", "q2": "second"}
    bad = write_lines(tmp_path / "bad.jsonl", [json.dumps({"_id": "q1", "text": "x"}), "{oops"])
    with pytest.raises(InputError, match=":2:"):
        read_queries(bad)
    noid = write_lines(tmp_path / "noid.jsonl", [json.dumps({"text": "x"})])
    with pytest.raises(InputError, match=":1:"):
        read_queries(noid)
    with pytest.raises(InputError):
        read_queries(tmp_path / "missing")


def test_qrels_beir_with_and_without_header(tmp_path):
    (tmp_path / "qrels").mkdir()
    write_lines(tmp_path / "qrels" / "test.tsv",
                ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q1\td2\t2", "q2\td1\t0"])
    assert read_qrels(tmp_path, "test") == {"q1": {"d1": 1, "d2": 2}, "q2": {"d1": 0}}
    f = write_lines(tmp_path / "noheader.tsv", ["q1\td1\t1", "q3\td9\t1.0"])
    assert read_qrels(f) == {"q1": {"d1": 1}, "q3": {"d9": 1}}
    with pytest.raises(InputError, match="split 'dev'"):
        read_qrels(tmp_path, "dev")


def test_qrels_trec_format(tmp_path):
    f = write_lines(tmp_path / "qrels.txt", ["1 0 d1 1", "1 0 d2 0", "2 Q0 d3 3"])
    assert read_qrels(f) == {"1": {"d1": 1, "d2": 0}, "2": {"d3": 3}}
    f = write_lines(tmp_path / "qrels4.tsv", ["1\t0\td1\t2"])
    assert read_qrels(f) == {"1": {"d1": 2}}


@pytest.mark.parametrize("line, fragment", [
    ("q1\td1", "expected query-id"), ("q1\td1\tgood", "not a number"),
    ("query-id\tcorpus-id\tscore", "not a number"),  # a header is only allowed on line 1
])
def test_qrels_errors(tmp_path, line, fragment):
    f = write_lines(tmp_path / "q.tsv", ["q0\td0\t1", line])
    with pytest.raises(InputError) as info:
        read_qrels(f)
    assert fragment in str(info.value)
    assert ":2:" in str(info.value)


def test_trec_run_round_trip(tmp_path):
    run = {"q2": [Hit("d9", 3.5), Hit("d1", 1.25)], "q1": [Hit("d3", 0.5)], "q3": []}
    text = format_run(run, "tag")
    lines = text.splitlines()
    assert lines == ["q2 Q0 d9 1 3.500000 tag", "q2 Q0 d1 2 1.250000 tag",
                     "q1 Q0 d3 1 0.500000 tag"]
    path = write_run(tmp_path / "sub" / "run.trec", run, "tag")
    assert path.read_text() == text
    back = read_run(path)
    assert back == {"q2": [Hit("d9", 3.5), Hit("d1", 1.25)], "q1": [Hit("d3", 0.5)]}
    assert format_run({}, "t") == ""
    assert not list((tmp_path / "sub").glob(".*.tmp"))  # no temp file left behind
