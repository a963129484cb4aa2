"""``bm25``: a Lucene index written and searched in-process through Anserini's classes.

Documents are indexed the way Anserini indexes a BEIR corpus "flat": field ``id``
(a stored keyword with binary doc values, which Anserini sorts ties by) and field ``contents``
= title + " " + text, analysed by Anserini's ``DefaultEnglishAnalyzer`` (Porter
stemmer, Lucene's English stop words). Queries are Anserini bags of words scored
with ``BM25Similarity(k1, b)`` by ``SimpleSearcher``, ties broken by id: the same
scores as ``pyserini`` on the same corpus.

Updates are real Lucene updates: ``updateDocument``/``deleteDocuments`` by the
``id`` term. Deleted documents keep counting in Lucene's term statistics until
their segments merge, so by default ``commit`` expunges them right after committing
(``expunge_deletes=true``): scores then equal those of a fresh build exactly.

Spec parameters: :class:`genseek.params.BM25Params` (``k1`` 0.9, ``b`` 0.4,
``expunge_deletes`` true, ``ram_buffer_mb`` 256, ``threads`` 2 search threads for batches).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genseek.indexers._lucene import LuceneClasses, LuceneFolder, batch_search, writer_config
from genseek.indexers.jvm import here
from genseek.params import BM25Params, BM25SearchParams
from genseek.types import ChangeSet, Hit, IndexStats


class BM25Index:
    """Lucene BM25 over title + text. See the module docstring for the spec."""

    Params = BM25Params
    SearchParams = BM25SearchParams

    def __init__(self, path: Path, params: dict[str, Any]):
        self.params = BM25Params.resolve(params)
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        j = _Java()
        self._j = j
        self._analyzer = j.DefaultEnglishAnalyzer.newDefaultInstance()
        policy = j.TieredMergePolicy()
        policy.setForceMergeDeletesPctAllowed(0.0)
        similarity = j.BM25Similarity(float(self.params["k1"]), float(self.params["b"]))
        config = writer_config(j, self._analyzer, similarity, self.params["ram_buffer_mb"],
                               policy)
        self._lucene = LuceneFolder("bm25", self.path, j, config, self._open_searcher)
        if self.params["expunge_deletes"]:
            self._lucene.expunge_deletes()  # what a kill between commit and merge left
        self._lucene.reopen()

    @classmethod
    def open(cls, path: Path, params: dict[str, Any]) -> BM25Index:
        return cls(path, params)

    @property
    def applied_seq(self) -> int:
        return self._lucene.applied_seq

    # -- writes -----------------------------------------------------------------------

    def apply(self, changes: ChangeSet) -> None:
        j = self._j
        for doc in changes.upserts:
            self._lucene.upsert(doc.doc_id, j.TextField("contents", doc.contents, j.Store.NO))
        for doc_id in changes.deleted_ids:
            self._lucene.delete(doc_id)
        if changes.removed or changes.deleted_ids:
            self._lucene.pending_deletes = True

    def commit(self, seq: int) -> None:
        self._lucene.commit(seq, expunge_deletes=bool(self.params["expunge_deletes"]))

    def _open_searcher(self) -> Any:
        searcher = self._j.SimpleSearcher(str(self.path.resolve()), self._analyzer)
        searcher.set_bm25(float(self.params["k1"]), float(self.params["b"]))
        return searcher

    # -- reads ------------------------------------------------------------------------

    def search(self, queries: Sequence[str], k: int,
               params: BM25SearchParams | None = None) -> list[list[Hit]]:
        BM25SearchParams.overrides(params)  # none: k1 and b are set in the spec
        if k <= 0 or not queries:
            return [[] for _ in queries]
        with self._lucene.searcher() as s:
            if len(queries) == 1:
                return [[Hit(d.docid, float(d.score)) for d in s.search(queries[0], k)]]
            qids = [str(i) for i in range(len(queries))]
            found = batch_search(self._j, s, queries, qids, k, int(self.params["threads"]))
            return [[Hit(d.docid, float(d.score)) for d in hits] for hits in found]

    def analyze(self, text: str) -> list[str]:
        """The terms Lucene indexes for ``text`` (empty for stop-word-only text)."""
        return list(here(self._j.AnalyzerUtils.analyze(self._analyzer, text)).toArray())

    def stats(self) -> IndexStats:
        return self._lucene.index_stats("bm25", self.applied_seq, self.path, self.params)

    def close(self) -> None:
        self._lucene.close()


class _Java(LuceneClasses):
    """The Java classes this module uses (each thread gets its own, see ``JavaClasses``)."""

    NAMES = {
        **LuceneClasses.NAMES,
        "DefaultEnglishAnalyzer": "io.anserini.analysis.DefaultEnglishAnalyzer",
        "AnalyzerUtils": "io.anserini.analysis.AnalyzerUtils",
        "SimpleSearcher": "io.anserini.search.SimpleSearcher",
        "TieredMergePolicy": "org.apache.lucene.index.TieredMergePolicy",
        "BM25Similarity": "org.apache.lucene.search.similarities.BM25Similarity",
        "TextField": "org.apache.lucene.document.TextField",
    }
