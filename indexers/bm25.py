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

Sharded collections score with the collection's global statistics, as Elasticsearch's DFS
mode does: :meth:`BM25Index.corpus_stats` gives one shard's document count, token count and
query-term document frequencies (:class:`CorpusStats`, summed over the shards), and
:meth:`BM25Index.search_with_stats` scores one shard's documents with the summed ones. Lucene
takes its statistics from the shard and cannot be given others, so the search rewrites the
query instead: each term's boost becomes ``qtf * idf_global / idf_shard`` (BM25 is linear in a
term's weight), and the shard's similarity gets ``k1' = k1 (1 - b) + k1 b r`` and
``b' = k1 b r / k1'`` with ``r = avgdl_shard / avgdl_global``, which makes the shard's length
normalisation ``k1' ((1 - b') + b' dl / avgdl_shard)`` equal the global
``k1 ((1 - b) + b dl / avgdl_global)`` for every document length. Scores then equal the
unsharded index's to float32 rounding (about 1e-7 relative); :func:`anserini_scores` applies
Anserini's final step (scores rounded to 1e-4, ties perturbed by 1e-6) to the merged list, so
the hits and their scores are those of one index over all the documents.

Spec parameters: :class:`genseek.params.BM25Params` (``k1`` 0.9, ``b`` 0.4,
``expunge_deletes`` true, ``ram_buffer_mb`` 256, ``threads`` 2 search threads for batches).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genseek.indexers._lucene import LuceneClasses, LuceneFolder, batch_search, writer_config
from genseek.indexers.jvm import here
from genseek.params import BM25Params, BM25SearchParams
from genseek.types import ChangeSet, Hit, IndexStats

FIELD = "contents"

Bag = list[tuple[str, float]]
"""A bag-of-words query: ``(term, query term frequency)`` pairs in clause order."""


@dataclass(frozen=True)
class CorpusStats:
    """BM25's collection statistics of one shard, or of several summed (``+``): ``documents``
    with a non-empty contents field (Lucene's ``docCount``), their ``tokens`` (the field's
    ``sumTotalTermFreq``) and ``df``, the document frequency of each query term asked for."""

    documents: int = 0
    tokens: int = 0
    df: Mapping[str, int] = field(default_factory=dict)

    def __add__(self, other: CorpusStats) -> CorpusStats:
        df = dict(self.df)
        for term, n in other.df.items():
            df[term] = df.get(term, 0) + n
        return CorpusStats(self.documents + other.documents, self.tokens + other.tokens, df)

    def to_dict(self) -> dict[str, Any]:
        return {"documents": self.documents, "tokens": self.tokens, "df": dict(self.df)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CorpusStats:
        return cls(int(raw["documents"]), int(raw["tokens"]),
                   {str(t): int(n) for t, n in dict(raw["df"]).items()})


def _idf(documents: int, df: int) -> float:
    """Lucene's BM25 idf, rounded to float32 as Lucene keeps it."""
    return float(np.float32(math.log(1.0 + (documents - df + 0.5) / (df + 0.5))))


def shard_similarity(k1: float, b: float, shard: CorpusStats,
                     whole: CorpusStats) -> tuple[float, float]:
    """``(k1', b')`` that make a shard's BM25 length normalisation the collection's: see the
    module docstring. ``shard`` and ``whole`` need only ``documents`` and ``tokens``."""
    if k1 == 0.0 or b == 0.0 or not shard.documents or not whole.tokens:
        return k1, b
    ratio = (shard.tokens / shard.documents) / (whole.tokens / whole.documents)
    k1s = k1 * (1.0 - b) + k1 * b * ratio
    return k1s, k1 * b * ratio / k1s


def anserini_scores(hits: Sequence[Hit]) -> list[Hit]:
    """Anserini's last step (its ``ScoreTiesAdjusterReranker``) on hits sorted by raw score
    then id: each float32 score rounded half up to 1e-4 in double precision and stored as
    float32, and a run of scores within 1e-4 of the previous one lowered by 1e-6 per tie, so
    the order is the scores' order."""
    out: list[Hit] = []
    f = np.float32
    prev = f(0)
    dup = 0
    for i, hit in enumerate(hits):
        score = f(math.floor(float(f(hit.score)) * 1e4 + 0.5) / 1e4)
        if i == 0 or prev - score > f(1e-4):
            dup = 0
        else:
            dup += 1
            score = f(score - f(1e-6) * f(dup))
        prev = score
        out.append(Hit(hit.doc_id, float(score)))
    return out


TIE = 1e-6
"""Relative difference below which two shards' raw scores count as tied: a shard's score with
global statistics equals the unsharded one to float32 rounding (about 1e-7), so scores
within ``TIE`` are ties in one index over all documents, broken by id as Lucene breaks them."""


def by_raw_score(hits: Iterable[Hit], k: int) -> list[Hit]:
    """The ``k`` best of several shards' raw hits in Lucene's order: by score, and scores
    within :data:`TIE` of each other (the same score up to float32 rounding) by id."""
    ranked = sorted(hits, key=lambda h: (-h.score, h.doc_id))
    out: list[Hit] = []
    run: list[Hit] = []
    for hit in ranked:
        if run and run[-1].score - hit.score > TIE * max(abs(hit.score), 1e-30):
            out.extend(sorted(run, key=lambda h: h.doc_id))
            run = []
            if len(out) >= k:
                break
        run.append(hit)
    out.extend(sorted(run, key=lambda h: h.doc_id))
    return out[:k]


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

    def bags_of_words(self, queries: Sequence[str]) -> list[Bag]:
        """Each query as Anserini's bag-of-words query: ``(term, query term frequency)`` in its
        clause order, the order scores add up in (so one shard's scores are the unsharded
        index's bit for bit). Read from the query's text form ``(contents:TERM)^QTF ...``
        (one JNI call per query; analysed terms hold no spaces)."""
        gen = self._j.BagOfWordsQueryGenerator()
        out: list[Bag] = []
        prefix = f"({FIELD}:"
        for query in queries:
            bag: Bag = []
            for clause in str(gen.buildQuery(FIELD, self._analyzer, query).toString()).split():
                if clause.startswith(prefix) and ")^" in clause:
                    cut = clause.rindex(")^")
                    bag.append((clause[len(prefix):cut], float(clause[cut + 2:])))
                elif clause.startswith(f"{FIELD}:"):
                    bag.append((clause[len(FIELD) + 1:], 1.0))
                else:  # not a plain term clause: the analysed terms, in order of first use
                    counts: dict[str, int] = {}
                    for t in self.analyze(query):
                        counts[t] = counts.get(t, 0) + 1
                    bag = [(t, float(n)) for t, n in counts.items()]
                    break
            out.append(bag)
        return out

    def corpus_stats(self, terms: Iterable[str]) -> CorpusStats:
        """This index's :class:`CorpusStats`, with the document frequency of ``terms``."""
        j = self._j
        with self._lucene.searcher() as s:
            reader = here(s.reader)
            return CorpusStats(int(reader.getDocCount(FIELD)),
                               int(reader.getSumTotalTermFreq(FIELD)),
                               {t: int(reader.docFreq(j.Term(FIELD, t))) for t in sorted(set(terms))})

    def search_with_stats(self, bags: Sequence[Bag], k: int,
                          whole: CorpusStats) -> list[list[Hit]]:
        """Each query's (a :meth:`bags_of_words` bag) ``k`` best hits scored with the
        collection statistics ``whole`` (the sum of every shard's :meth:`corpus_stats`, this
        one's included), by raw score then id, scores not yet rounded (:func:`anserini_scores`
        does that after the merge)."""
        if k <= 0 or not bags:
            return [[] for _ in bags]
        j = self._j
        out: list[list[Hit]] = []
        with self._lucene.searcher() as s:
            reader = here(s.reader)
            mine = CorpusStats(int(reader.getDocCount(FIELD)),
                               int(reader.getSumTotalTermFreq(FIELD)))
            k1s, bs = shard_similarity(float(self.params["k1"]), float(self.params["b"]),
                                       mine, whole)
            searcher = j.IndexSearcher(reader)
            searcher.setSimilarity(j.BM25Similarity(float(k1s), float(bs)))
            ties_by_id = j.SimpleSearcher.BREAK_SCORE_TIES_BY_DOCID
            for bag in bags:
                builder = j.BooleanQueryBuilder()
                clauses = 0
                for text, qtf in bag:
                    term = j.Term(FIELD, text)
                    local = int(reader.docFreq(term))
                    if not local:
                        continue
                    boost = qtf * _idf(whole.documents, int(whole.df.get(text, local))) \
                        / _idf(mine.documents, local)
                    builder.add(j.BoostQuery(j.TermQuery(term), float(boost)), j.Occur.SHOULD)
                    clauses += 1
                if not clauses:
                    out.append([])
                    continue
                # ties at the cut go by id, as the unsharded searcher cuts them
                top = searcher.search(builder.build(), int(k), ties_by_id, True)
                found = here(j.ScoredDocs.fromTopDocs(top, searcher))  # ids read in Java
                out.append(by_raw_score([Hit(str(d), float(sc)) for d, sc in
                                         zip(found.docids, found.scores, strict=True)], k))
        return out

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
        "BoostQuery": "org.apache.lucene.search.BoostQuery",
        "BagOfWordsQueryGenerator": "io.anserini.search.query.BagOfWordsQueryGenerator",
        "ScoredDocs": "io.anserini.search.ScoredDocs",
        "BooleanQueryBuilder": "org.apache.lucene.search.BooleanQuery$Builder",
        "Occur": "org.apache.lucene.search.BooleanClause$Occur",
    }
