"""``bm25``: a Lucene index written and searched in-process through Anserini's classes.

Documents are indexed the way Anserini indexes a BEIR corpus "flat": field ``id``
(a stored keyword with binary doc values, which Anserini sorts ties by) and field ``contents``
= title + " " + text, analysed by Anserini's ``DefaultEnglishAnalyzer`` (Porter
stemmer, Lucene's English stop words). Queries are Anserini bags of words scored
with ``BM25Similarity(k1, b)`` by ``SimpleSearcher``, ties broken by id: the same
scores as ``pyserini`` on the same corpus.

Updates are real Lucene updates: ``updateDocument``/``deleteDocuments`` by the
``id`` term. Deleted documents keep counting in Lucene's term statistics until
their segments merge, so by default ``commit`` expunges deletes first
(``expunge_deletes=true``): scores then equal those of a fresh build exactly.

Spec parameters: ``k1`` (0.9), ``b`` (0.4), ``expunge_deletes`` (true),
``ram_buffer_mb`` (256), ``threads`` (search threads for batches, 2).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genseek.errors import GenseekError
from genseek.indexers.jvm import autoclass, java_exception
from genseek.protocols import dir_bytes
from genseek.types import ChangeSet, Hit

_SEQ_KEY = "genseek.seq"
_MAX_CLAUSES = 65536
_PARAMS = {"k1": 0.9, "b": 0.4, "expunge_deletes": True, "ram_buffer_mb": 256, "threads": 2}


class _Searcher:
    """A reference-counted ``SimpleSearcher`` generation, closed once retired and idle."""

    def __init__(self, searcher: Any):
        self.searcher = searcher
        self.users = 0
        self.retired = False


class BM25Index:
    """Lucene BM25 over title + text. See the module docstring for the spec."""

    def __init__(self, path: Path, params: dict[str, Any]):
        unknown = set(params) - set(_PARAMS)
        if unknown:
            raise GenseekError(
                f"bm25: unknown parameter(s) {', '.join(sorted(unknown))}; known: {', '.join(_PARAMS)}"
            )
        self.params = {**_PARAMS, **params}
        for key in ("k1", "b", "ram_buffer_mb", "threads"):  # fail here, not after a commit
            if isinstance(self.params[key], bool) or not isinstance(self.params[key], (int, float)):
                raise GenseekError(f"bm25: parameter {key} must be a number, "
                                   f"not {self.params[key]!r}")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        j = _Java()
        self._j = j
        j.IndexSearcher.setMaxClauseCount(_MAX_CLAUSES)  # long queries (e.g. a whole passage)
        self._analyzer = j.DefaultEnglishAnalyzer.newDefaultInstance()
        policy = j.TieredMergePolicy()
        policy.setForceMergeDeletesPctAllowed(0.0)
        config = j.IndexWriterConfig(self._analyzer)
        config.setOpenMode(j.OpenMode.CREATE_OR_APPEND)
        config.setSimilarity(j.BM25Similarity(float(self.params["k1"]), float(self.params["b"])))
        config.setRAMBufferSizeMB(float(self.params["ram_buffer_mb"]))
        config.setMergePolicy(policy)
        self._dir = j.FSDirectory.open(j.Paths.get(str(self.path.resolve())))
        try:
            self._writer = j.IndexWriter(self._dir, config)
        except j.JavaException as exc:
            raise GenseekError(f"bm25: cannot open the Lucene index at {self.path}: {exc}") from exc
        self._applied = self._read_seq()
        self._pending_deletes = False
        self._lock = threading.Lock()
        self._current: _Searcher | None = None
        if self._applied == 0 and self._writer.getDocStats().numDocs == 0:
            self._commit_data(0)  # an empty commit, so a reader can open the folder
        self._reopen()

    @classmethod
    def open(cls, path: Path, params: dict[str, Any]) -> BM25Index:
        return cls(path, params)

    # -- state ------------------------------------------------------------------------

    def _read_seq(self) -> int:
        j = self._j
        if not j.DirectoryReader.indexExists(self._dir):
            return 0
        data = j.SegmentInfos.readLatestCommit(self._dir).getUserData()
        value = data.get(_SEQ_KEY)
        return int(value) if value is not None else 0

    @property
    def applied_seq(self) -> int:
        return self._applied

    # -- writes -----------------------------------------------------------------------

    def apply(self, changes: ChangeSet) -> None:
        j = self._j
        for doc in changes.upserts:
            ldoc = j.Document()
            ldoc.add(j.StringField("id", doc.doc_id, j.Store.YES))
            ldoc.add(j.BinaryDocValuesField("id", j.BytesRef(doc.doc_id.encode("utf-8"))))
            ldoc.add(j.TextField("contents", doc.contents, j.Store.NO))
            self._writer.updateDocument(j.Term("id", doc.doc_id), ldoc)
        for doc_id in changes.deleted_ids:
            # deleteDocuments(Term...) and (Query...) are ambiguous to pyjnius: use the latter.
            self._writer.deleteDocuments(j.TermQuery(j.Term("id", doc_id)))
        if changes.removed or changes.deleted_ids:
            self._pending_deletes = True

    def _commit_data(self, seq: int) -> None:
        j = self._j
        data = j.HashMap()
        data.put(_SEQ_KEY, str(seq))
        self._writer.setLiveCommitData(data.entrySet())
        self._writer.commit()

    def commit(self, seq: int) -> None:
        if self._pending_deletes and self.params["expunge_deletes"]:
            self._writer.forceMergeDeletes(True)
        self._commit_data(seq)
        self._pending_deletes = False
        self._applied = seq
        self._reopen()

    def _reopen(self) -> None:
        j = self._j
        searcher = j.SimpleSearcher(str(self.path.resolve()), self._analyzer)
        searcher.set_bm25(float(self.params["k1"]), float(self.params["b"]))
        with self._lock:
            old, self._current = self._current, _Searcher(searcher)
        if old is not None:
            self._release(old, retire=True)

    def _acquire(self) -> _Searcher:
        with self._lock:
            if self._current is None:
                raise GenseekError("bm25: the index is closed")
            self._current.users += 1
            return self._current

    def _release(self, gen: _Searcher, retire: bool = False) -> None:
        with self._lock:
            if retire:
                gen.retired = True
            else:
                gen.users -= 1
            close = gen.retired and gen.users == 0
        if close:
            gen.searcher.close()

    # -- reads ------------------------------------------------------------------------

    def search(self, queries: Sequence[str], k: int, **params: Any) -> list[list[Hit]]:
        if params:
            raise GenseekError(f"bm25: no per-request search parameters (got "
                               f"{', '.join(sorted(params))}); k1 and b are set in the spec")
        if k <= 0 or not queries:
            return [[] for _ in queries]
        gen = self._acquire()
        try:
            s = gen.searcher
            if len(queries) == 1:
                return [[Hit(d.docid, float(d.score)) for d in s.search(queries[0], k)]]
            j = self._j
            qids = [str(i) for i in range(len(queries))]
            qs, ids = j.ArrayList(), j.ArrayList()
            for q, qid in zip(queries, qids, strict=True):
                qs.add(q)
                ids.add(qid)
            found = s.batch_search(qs, ids, k, int(self.params["threads"]))
            return [[Hit(d.docid, float(d.score)) for d in found.get(qid)] for qid in qids]
        finally:
            self._release(gen)

    def analyze(self, text: str) -> list[str]:
        """The terms Lucene indexes for ``text`` (empty for stop-word-only text)."""
        return list(self._j.AnalyzerUtils.analyze(self._analyzer, text).toArray())

    def stats(self) -> dict[str, Any]:
        gen = self._acquire()
        try:
            docs = int(gen.searcher.get_total_num_docs())
        finally:
            self._release(gen)
        return {
            "type": "bm25",
            "documents": docs,
            "applied_seq": self._applied,
            "disk_bytes": dir_bytes(self.path),
            # Lucene reads its files through mmap (the page cache); what it holds on the
            # heap is the writer's buffer plus the JVM heap shared by all Lucene indexes.
            "memory_bytes": int(self._writer.ramBytesUsed()) + _jvm_heap_used(self._j),
            "params": dict(self.params),
        }

    def close(self) -> None:
        with self._lock:
            gen, self._current = self._current, None
        if gen is not None:
            self._release(gen, retire=True)
        if self._writer.isOpen():
            self._writer.rollback()  # closes; drops anything applied but not committed


def _jvm_heap_used(j: _Java) -> int:
    runtime = j.Runtime.getRuntime()
    return int(runtime.totalMemory() - runtime.freeMemory())


class _Java:
    """The Java classes this module uses, resolved once per index."""

    def __init__(self) -> None:
        c = autoclass
        self.DefaultEnglishAnalyzer = c("io.anserini.analysis.DefaultEnglishAnalyzer")
        self.AnalyzerUtils = c("io.anserini.analysis.AnalyzerUtils")
        self.SimpleSearcher = c("io.anserini.search.SimpleSearcher")
        self.IndexWriter = c("org.apache.lucene.index.IndexWriter")
        self.IndexWriterConfig = c("org.apache.lucene.index.IndexWriterConfig")
        self.OpenMode = c("org.apache.lucene.index.IndexWriterConfig$OpenMode")
        self.TieredMergePolicy = c("org.apache.lucene.index.TieredMergePolicy")
        self.DirectoryReader = c("org.apache.lucene.index.DirectoryReader")
        self.SegmentInfos = c("org.apache.lucene.index.SegmentInfos")
        self.Term = c("org.apache.lucene.index.Term")
        self.TermQuery = c("org.apache.lucene.search.TermQuery")
        self.IndexSearcher = c("org.apache.lucene.search.IndexSearcher")
        self.Runtime = c("java.lang.Runtime")
        self.BM25Similarity = c("org.apache.lucene.search.similarities.BM25Similarity")
        self.FSDirectory = c("org.apache.lucene.store.FSDirectory")
        self.Paths = c("java.nio.file.Paths")
        self.Document = c("org.apache.lucene.document.Document")
        self.StringField = c("org.apache.lucene.document.StringField")
        self.TextField = c("org.apache.lucene.document.TextField")
        self.BinaryDocValuesField = c("org.apache.lucene.document.BinaryDocValuesField")
        self.Store = c("org.apache.lucene.document.Field$Store")
        self.BytesRef = c("org.apache.lucene.util.BytesRef")
        self.HashMap = c("java.util.HashMap")
        self.ArrayList = c("java.util.ArrayList")
        self.JavaException = java_exception()
