"""Streaming readers for corpora, queries and qrels.

Corpus formats (picked from the path):

- a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``);
- a ``.jsonl`` file, one object per line: ``_id`` (or ``id``/``docid``), optional
  ``title``, ``text`` (or ``contents``), optional ``metadata`` object;
- a ``.tsv`` file: ``id<TAB>text`` or ``id<TAB>title<TAB>text`` per line.

Every problem is reported as one :class:`~genseek.errors.InputError` naming the
file, the line and what was expected. Readers yield ``(line_number, Document)``
so an import can resume after its last committed line.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from genseek.errors import InputError
from genseek.types import Document, id_problem, text_problem

MAX_DOC_BYTES = 16 * 1024 * 1024
"""Default cap on one document's UTF-8 size (title + text); larger ones are an error."""

def check_id(value: object, path: str, line: int, field: str = "_id") -> str:
    """A valid document or query id as a string (:func:`genseek.types.id_problem`: the rule
    of the API and the store too), or an InputError saying why not."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"field {field!r} must be a string or integer, got {type(value).__name__}",
                         path=path, line=line)
    text = str(value)
    problem = id_problem(text)
    if problem:
        raise InputError(f"field {field!r} = {text[:40]!r} {problem}", path=path, line=line)
    return text


def corpus_file(path: Path) -> Path:
    """The file holding the corpus at ``path`` (a BEIR folder, JSONL or TSV file)."""
    path = Path(path)
    if path.is_dir():
        corpus = path / "corpus.jsonl"
        if not corpus.is_file():
            raise InputError("folder has no corpus.jsonl (expected a BEIR dataset folder)",
                             path=str(path))
        return corpus
    if not path.exists():
        raise InputError("no such file or folder", path=str(path))
    if path.suffix not in (".jsonl", ".tsv", ".json"):
        raise InputError("unknown corpus format: expected a BEIR folder, .jsonl or .tsv",
                         path=str(path))
    return path


def _lines(path: Path, skip: int = 0, first: int = 1, offset: int = 0,
           count: int | None = None) -> Iterator[tuple[int, str]]:
    """Decoded lines with 1-based numbers, blank lines skipped; strict UTF-8. ``first``,
    ``offset``: the number and byte offset of the line to start at; ``count``: how many
    lines to read from there (all when None)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        for number, raw in enumerate(fh, start=first):
            if count is not None and number >= first + count:
                break
            if number <= skip:
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"invalid UTF-8 at byte {exc.start} of the line",
                                 path=str(path), line=number) from None
            if line.strip():
                yield number, line.rstrip("\r\n")


def _check_size(doc: Document, path: str, line: int, max_bytes: int) -> Document:
    size = len(doc.title.encode("utf-8")) + len(doc.text.encode("utf-8"))
    if size > max_bytes:
        raise InputError(f"document {doc.doc_id!r} is {size:,} bytes, over the limit of "
                         f"{max_bytes:,} (max_doc_bytes)", path=path, line=line)
    return doc


def _text_field(obj: dict, names: tuple[str, ...], path: str, line: int) -> str:
    for name in names:
        if name in obj and obj[name] is not None:
            if not isinstance(obj[name], str):
                raise InputError(f"field {name!r} must be a string, got "
                                 f"{type(obj[name]).__name__}", path=path, line=line)
            return obj[name]
    return ""


def parse_json_doc(text: str, path: str, line: int) -> Document:
    """One corpus JSON object as a Document (no size check)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"bad JSON at column {exc.colno}: {exc.msg}", path=path,
                         line=line) from None
    except RecursionError:
        raise InputError("the JSON is nested too deeply to read", path=path, line=line) from None
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=line)
    for key in ("_id", "id", "docid"):
        if key in obj:
            doc_id = check_id(obj[key], path, line, key)
            break
    else:
        raise InputError("missing field '_id' (the document id)", path=path, line=line)
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise InputError("field 'metadata' must be a JSON object", path=path, line=line)
    doc = Document(doc_id, _text_field(obj, ("title",), path, line),
                   _text_field(obj, ("text", "contents"), path, line), metadata)
    problem = doc.problem()
    if problem:
        raise InputError(problem, path=path, line=line)
    return doc


def _tsv_doc(line: str, name: str, number: int) -> Document:
    cols = line.split("\t")
    if len(cols) not in (2, 3):
        raise InputError(f"expected 2 or 3 tab-separated columns (id, [title,] text), "
                         f"got {len(cols)}", path=name, line=number)
    doc_id = check_id(cols[0], name, number, "id")
    title, text = (cols[1], cols[2]) if len(cols) == 3 else ("", cols[1])
    return Document(doc_id, title, text)


def _documents(file: Path, lines: Iterator[tuple[int, str]],
               max_doc_bytes: int) -> Iterator[tuple[int, Document]]:
    name = str(file)
    parse = _tsv_doc if file.suffix == ".tsv" else parse_json_doc
    for number, line in lines:
        yield number, _check_size(parse(line, name, number), name, number, max_doc_bytes)


def read_corpus(path: Path, skip_lines: int = 0,
                max_doc_bytes: int = MAX_DOC_BYTES) -> Iterator[tuple[int, Document]]:
    """Stream ``(line_number, Document)`` from a corpus, after the first ``skip_lines`` lines."""
    file = corpus_file(path)
    yield from _documents(file, _lines(file, skip_lines), max_doc_bytes)


def corpus_chunks(file: Path, skip_lines: int = 0,
                  lines: int = 1000) -> Iterator[tuple[int, int, int]]:
    """Consecutive pieces of a corpus file after its first ``skip_lines`` lines, as
    ``(first line number, byte offset of that line, line count)`` with ``lines`` lines each
    (the last one fewer), for :func:`read_corpus_chunk`. One pass over the bytes, nothing
    decoded."""
    number, offset, start = 0, 0, None
    with open(file, "rb") as fh:
        for raw in fh:
            number += 1
            if number > skip_lines:
                if start is None:
                    start = (number, offset)
                if number - start[0] + 1 == lines:
                    yield start[0], start[1], lines
                    start = None
            offset += len(raw)
    if start is not None:
        yield start[0], start[1], number - start[0] + 1


def read_corpus_chunk(file: Path, first: int, offset: int, count: int,
                      max_doc_bytes: int = MAX_DOC_BYTES) -> Iterator[tuple[int, Document]]:
    """:func:`read_corpus` of the ``count`` lines from line ``first`` (at byte ``offset``) of
    a corpus file (a piece given by :func:`corpus_chunks`): the same documents and errors."""
    file = Path(file)
    yield from _documents(file, _lines(file, 0, first, offset, count), max_doc_bytes)


def read_queries(path: Path) -> dict[str, str]:
    """Queries from a BEIR ``queries.jsonl`` (or a folder holding one), or a TSV ``id<TAB>text``."""
    path = Path(path)
    file = path / "queries.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise InputError("no such queries file", path=str(file))
    queries: dict[str, str] = {}
    for number, line in _lines(file):
        if file.suffix == ".tsv":
            qid, tab, text = line.partition("\t")
            if not tab:
                raise InputError("expected id<TAB>query text", path=str(file), line=number)
        else:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"bad JSON at column {exc.colno}: {exc.msg}", path=str(file),
                                 line=number) from None
            except RecursionError:
                raise InputError("the JSON is nested too deeply to read", path=str(file),
                                 line=number) from None
            if not isinstance(obj, dict) or "_id" not in obj:
                raise InputError("expected an object with '_id' and 'text'", path=str(file),
                                 line=number)
            qid, text = obj["_id"], obj.get("text", "")
        problem = text_problem(str(text))
        if problem:
            raise InputError(f"field 'text' {problem}", path=str(file), line=number)
        queries[check_id(qid, str(file), number)] = str(text)
    return queries


def read_qrels(path: Path, split: str = "test") -> dict[str, dict[str, int]]:
    """Relevance judgements ``{query_id: {doc_id: grade}}`` from a BEIR folder or TSV file.

    Accepts BEIR's ``query-id<TAB>corpus-id<TAB>score`` (header optional) and TREC's
    ``qid 0 docid grade`` (:func:`parse_qrels`).
    """
    path = Path(path)
    file = path / "qrels" / f"{split}.tsv" if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"no qrels for split {split!r}", path=str(file))
    with open(file, encoding="utf-8", newline="") as fh:
        return parse_qrels(fh, str(file))


def parse_qrels(lines: Iterable[str], where: str = "qrels") -> dict[str, dict[str, int]]:
    """Qrels from lines of text (a file, or qrels pasted into the console): BEIR's
    ``query-id<TAB>corpus-id<TAB>score`` (header optional), whitespace-separated
    ``qid docid grade`` or TREC's ``qid 0 docid grade``; a bad line is an InputError naming
    ``where`` and the line."""
    qrels: dict[str, dict[str, int]] = {}
    for number, row in enumerate(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE),
                                 start=1):
        if len(row) == 1:
            row = row[0].split()
        if not row or (number == 1 and row[0] == "query-id"):
            continue
        if len(row) == 4:
            row = [row[0], row[2], row[3]]
        if len(row) != 3:
            raise InputError("expected query-id, corpus-id, score", path=where, line=number)
        try:
            grade = int(float(row[2]))
        except (ValueError, OverflowError):
            raise InputError(f"score {row[2]!r} is not a number", path=where,
                             line=number) from None
        qrels.setdefault(row[0], {})[row[1]] = grade
    return qrels


def count_lines(path: Path) -> int:
    """Newline-terminated lines of ``path`` (plus a last line without one), read in 1 MiB
    chunks."""
    count, last = 0, b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def datasets_root(environ: Mapping[str, str] | None = None) -> Path:
    """The folder of BEIR datasets (``scifact/``, ...): ``$GENSEEK_DATASETS``, else
    ``../shared/datasets`` beside the genseek checkout (the benchmarks, the tests, the
    training recipes and the API server's ``GET /datasets`` all read this one)."""
    env = os.environ if environ is None else environ
    raw = env.get("GENSEEK_DATASETS")
    return Path(raw) if raw else Path(__file__).resolve().parent.parent.parent / "shared" / \
        "datasets"


def list_datasets(root: Path, name_pattern: str) -> list[tuple[str, Path, list[str]]]:
    """``(name, folder, splits)`` of each BEIR dataset directly under ``root``: a folder whose
    name matches ``name_pattern`` and that holds ``queries.jsonl`` and ``qrels/<split>.tsv``
    files (the splits, sorted, are those whose names match too). Nothing that resolves outside
    ``root`` (a symlink out of it) is listed; a missing ``root`` lists nothing."""
    pattern = re.compile(name_pattern)
    try:
        base = Path(root).resolve(strict=True)
        entries = sorted(base.iterdir())
    except OSError:
        return []
    out = []
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        try:
            folder = entry.resolve(strict=True)
            if folder.parent != base or not (folder / "queries.jsonl").is_file():
                continue
            qrels = folder / "qrels"
            splits = sorted(f.stem for f in qrels.iterdir() if f.suffix == ".tsv"
                            and pattern.fullmatch(f.stem) and f.is_file()
                            and f.resolve().parent == qrels.resolve())
        except OSError:
            continue
        if splits:
            out.append((entry.name, folder, splits))
    return out
