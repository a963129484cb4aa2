"""What the Lucene indexes (``bm25``, ``impact``) share: one index folder written in-process.

:class:`LuceneFolder` holds a folder's ``IndexWriter`` and its searchers:

- documents are keyed by the ``id`` term (a stored ``StringField`` plus binary doc values,
  which Anserini sorts ties by): ``upsert`` is ``updateDocument``, ``delete`` is
  ``deleteDocuments``;
- each commit stores the applied sequence number in the commit's user data
  (``genseek.seq``), read back at open; a new folder gets an empty commit at once, so a
  reader can open it;
- every commit opens a new searcher generation (made by the index's own factory); readers
  hold a reference, and a retired generation is closed once its last reader is done;
- ``close`` rolls the writer back, dropping anything applied but not committed.

What differs per index stays in it: the analyzer, similarity and merge policy (given to
:func:`writer_config`), the contents field, the searcher class and the query construction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from genseek.errors import ServerError, UnavailableError
from genseek.indexers.jvm import Shared, here, java_exception, jclass
from genseek.protocols import dir_bytes
from genseek.types import IndexStats

SEQ_KEY = "genseek.seq"
"""The commit user-data key of the applied sequence number."""

MAX_CLAUSES = 65536
"""Lucene's boolean-clause limit while a Lucene index is open (long queries, e.g. passages)."""


class JavaClasses:
    """Java classes by attribute: ``j.Document`` is the *calling thread's* proxy class of
    ``NAMES["Document"]`` (see :func:`genseek.indexers.jvm.jclass`), so one object can be used
    from any thread. A subclass adds the classes only its index uses to ``NAMES``."""

    NAMES: dict[str, str] = {}

    def __init__(self) -> None:
        self.JavaException = java_exception()  # also starts the JVM

    def __getattr__(self, attr: str) -> Any:
        try:
            name = type(self).NAMES[attr]
        except KeyError:
            raise AttributeError(attr) from None
        return jclass(name)


class LuceneClasses(JavaClasses):
    """The Java classes every Lucene index uses."""

    NAMES = {
        "IndexWriter": "org.apache.lucene.index.IndexWriter",
        "IndexWriterConfig": "org.apache.lucene.index.IndexWriterConfig",
        "OpenMode": "org.apache.lucene.index.IndexWriterConfig$OpenMode",
        "DirectoryReader": "org.apache.lucene.index.DirectoryReader",
        "SegmentInfos": "org.apache.lucene.index.SegmentInfos",
        "Term": "org.apache.lucene.index.Term",
        "TermQuery": "org.apache.lucene.search.TermQuery",
        "IndexSearcher": "org.apache.lucene.search.IndexSearcher",
        "Runtime": "java.lang.Runtime",
        "FSDirectory": "org.apache.lucene.store.FSDirectory",
        "Paths": "java.nio.file.Paths",
        "Document": "org.apache.lucene.document.Document",
        "StringField": "org.apache.lucene.document.StringField",
        "BinaryDocValuesField": "org.apache.lucene.document.BinaryDocValuesField",
        "Store": "org.apache.lucene.document.Field$Store",
        "BytesRef": "org.apache.lucene.util.BytesRef",
        "HashMap": "java.util.HashMap",
        "ArrayList": "java.util.ArrayList",
    }


def writer_config(j: LuceneClasses, analyzer: Any, similarity: Any, ram_buffer_mb: float,
                  merge_policy: Any = None) -> Any:
    """An ``IndexWriterConfig`` that creates the folder's index or appends to it."""
    config = j.IndexWriterConfig(analyzer)
    config.setOpenMode(j.OpenMode.CREATE_OR_APPEND)
    config.setSimilarity(similarity)
    config.setRAMBufferSizeMB(float(ram_buffer_mb))
    if merge_policy is not None:
        config.setMergePolicy(merge_policy)
    return config


def batch_search(j: LuceneClasses, searcher: Any, queries: Sequence[Any], qids: Sequence[str],
                 k: int, threads: int) -> list[Any]:
    """``searcher.batch_search`` over ``queries`` (ids ``qids``): each query's results, in order."""
    qs, ids = j.ArrayList(), j.ArrayList()
    for q, qid in zip(queries, qids, strict=True):
        qs.add(q)
        ids.add(qid)
    found = here(searcher.batch_search(qs, ids, k, threads))  # a Map: seen from this thread
    return [found.get(qid) for qid in qids]


class _Generation:
    """A reference-counted searcher, closed once retired and idle.

    ``searcher`` is a Java searcher (held as :class:`Shared`, each reader thread calls it
    through its own view) or a Python object that manages its own Java objects (it has
    ``close`` and is used as is)."""

    def __init__(self, searcher: Any):
        self.shared = Shared(searcher) if hasattr(type(searcher), "__javaclass__") else None
        self.searcher = searcher
        self.users = 0
        self.retired = False

    def view(self) -> Any:
        return self.shared.here() if self.shared is not None else self.searcher


class LuceneFolder:
    """A Lucene index folder: its writer, its applied sequence number and its searchers.

    ``kind`` names the index in error messages; ``open_searcher`` makes a searcher over the
    folder's latest commit (called at :meth:`reopen` and after every commit). The caller
    calls :meth:`reopen` once it is ready to serve reads.

    Any thread may call any method (the index's own locks decide who writes when): Java
    objects are reached through the calling thread's view (:mod:`genseek.indexers.jvm`).
    """

    def __init__(self, kind: str, path: Path, j: LuceneClasses, config: Any,
                 open_searcher: Callable[[], Any]):
        self.kind = kind
        self.path = path
        self._j = j
        self._open_searcher = open_searcher
        j.IndexSearcher.setMaxClauseCount(MAX_CLAUSES)
        self.directory = j.FSDirectory.open(j.Paths.get(str(path.resolve())))
        self._config = Shared(config)
        # The writer opens on first use: a folder that is only searched (a CLI search) never
        # pays for it (about a fifth of a bm25 open) nor takes Lucene's write lock.
        self._writer: Shared | None = None
        self._writer_lock = threading.Lock()
        self.pending_deletes = False  # set by the index: a commit may expunge them
        self._lock = threading.Lock()
        self._current: _Generation | None = None
        if not j.DirectoryReader.indexExists(self.directory):
            self._commit_data(0)  # an empty commit, so a reader can open the folder
        self.applied_seq = self._read_seq()

    @property
    def writer(self) -> Any:
        """The ``IndexWriter`` (opened now if it is not yet), seen from the calling thread."""
        if self._writer is None:
            with self._writer_lock:
                if self._writer is None:
                    j = self._j
                    try:
                        self._writer = Shared(j.IndexWriter(self.directory, self._config.here()))
                    except j.JavaException as exc:
                        raise ServerError(f"{self.kind}: cannot open the Lucene index at "
                                          f"{self.path}: {exc}") from exc
        return self._writer.here()

    def _commit_infos(self) -> list[Any]:
        """The segments of the latest commit (``SegmentCommitInfo``, this thread's view)."""
        infos = here(self._j.SegmentInfos.readLatestCommit(self.directory))
        return [here(infos.info(i)) for i in range(int(infos.size()))]

    def doc_counts(self) -> tuple[int, int]:
        """``(live documents, maxDoc)``: the writer's when it is open, else the last commit's."""
        if self._writer is not None:
            stats = self.writer.getDocStats()
            return int(stats.numDocs), int(stats.maxDoc)
        infos = self._commit_infos()
        max_doc = sum(int(here(info.info).maxDoc()) for info in infos)
        return max_doc - sum(int(info.getDelCount()) for info in infos), max_doc

    def index_stats(self, type_name: str, applied_seq: int, folder: Path,
                    params: Mapping[str, Any]) -> IndexStats:
        """The :class:`~genseek.types.IndexStats` of a Lucene-backed index in ``folder``:
        live documents, and ``max_doc`` (with deleted ones not merged away yet: they still
        count in BM25's statistics)."""
        live, max_doc = self.doc_counts()
        return IndexStats(type_name, live, applied_seq, dir_bytes(folder), self.memory_bytes(),
                          dict(params), {"max_doc": max_doc})

    def has_deletions(self) -> bool:
        """Whether deleted documents are still in the index (not merged away)."""
        if self._writer is not None:
            return bool(self.writer.hasDeletions())
        return any(int(info.getDelCount()) > 0 for info in self._commit_infos())

    # -- state ------------------------------------------------------------------------

    def _read_seq(self) -> int:
        j = self._j
        if not j.DirectoryReader.indexExists(self.directory):
            return 0
        infos = here(j.SegmentInfos.readLatestCommit(self.directory))
        value = here(infos.getUserData()).get(SEQ_KEY)
        return int(value) if value is not None else 0

    def memory_bytes(self) -> int:
        """The writer's buffer plus the JVM heap in use (shared by all Lucene indexes).

        Lucene reads its files through mmap (the page cache), which is not counted.
        """
        runtime = here(self._j.Runtime.getRuntime())
        buffered = int(self.writer.ramBytesUsed()) if self._writer is not None else 0
        return buffered + int(runtime.totalMemory() - runtime.freeMemory())

    # -- writes -----------------------------------------------------------------------

    def upsert(self, doc_id: str, contents: Any) -> None:
        """Add or replace the document ``doc_id`` whose indexed field is ``contents``."""
        j = self._j
        ldoc = j.Document()
        ldoc.add(j.StringField("id", doc_id, j.Store.YES))
        ldoc.add(j.BinaryDocValuesField("id", j.BytesRef(doc_id.encode("utf-8"))))
        ldoc.add(contents)
        self.writer.updateDocument(j.Term("id", doc_id), ldoc)

    def delete(self, doc_id: str) -> None:
        """Delete the document ``doc_id`` (if present)."""
        j = self._j
        # deleteDocuments(Term...) and (Query...) are ambiguous to pyjnius: use the latter.
        self.writer.deleteDocuments(j.TermQuery(j.Term("id", doc_id)))

    def _commit_data(self, seq: int) -> None:
        data = self._j.HashMap()
        data.put(SEQ_KEY, str(seq))
        writer = self.writer
        writer.setLiveCommitData(data.entrySet())
        writer.commit()

    def commit(self, seq: int, expunge_deletes: bool = False) -> None:
        """Commit with ``seq`` in the user data, then serve reads from a new searcher.

        With ``expunge_deletes`` and :attr:`pending_deletes` set, segments holding deleted
        documents are merged away after the commit (their terms stop counting in collection
        statistics).
        """
        self._commit_data(seq)
        if self.pending_deletes and expunge_deletes:
            # After the commit: a batch's buffered deletes (by query) reach their segments only
            # as it is written, and forceMergeDeletes merges away only deletes already there
            # (before, a batch that both replaced and deleted documents kept them in maxDoc and
            # in the term statistics).
            self.expunge_deletes()
        self.pending_deletes = False
        self.reopen()
        # only now: a reader that waited for ``seq`` (``refresh``) must find the new searcher
        self.applied_seq = seq

    def expunge_deletes(self) -> None:
        """Merge away every deleted document, then commit (the sequence number unchanged).

        Also run at open: a process killed after a commit but before its merge leaves deleted
        documents that no later catch-up would touch."""
        if not self.has_deletions():  # the usual case: no writer needed to know it
            return
        writer = self.writer
        for _ in range(3):  # a merge may leave deletes that arrived during it
            if not writer.hasDeletions():
                return
            writer.forceMergeDeletes(True)
            writer.commit()

    # -- searchers --------------------------------------------------------------------

    def reopen(self) -> None:
        """Serve reads from a new searcher; the previous one closes when its readers are done."""
        searcher = self._open_searcher()
        with self._lock:
            old, self._current = self._current, _Generation(searcher)
        if old is not None:
            self._release(old, retire=True)

    def _acquire(self) -> _Generation:
        with self._lock:
            if self._current is None:
                raise UnavailableError(f"{self.kind}: the index is closed")
            self._current.users += 1
            return self._current

    def _release(self, gen: _Generation, retire: bool = False) -> None:
        with self._lock:
            if retire:
                gen.retired = True
            else:
                gen.users -= 1
            close = gen.retired and gen.users == 0
        if close:
            gen.view().close()

    @contextmanager
    def searcher(self) -> Iterator[Any]:
        """The current searcher, held open for the ``with`` block."""
        gen = self._acquire()
        try:
            yield gen.view()
        finally:
            self._release(gen)

    def close(self) -> None:
        """Retire the searcher and roll the writer back (uncommitted changes are dropped)."""
        with self._lock:
            gen, self._current = self._current, None
        if gen is not None:
            self._release(gen, retire=True)
        if self._writer is not None and self.writer.isOpen():
            self.writer.rollback()  # closes; drops anything applied but not committed
