"""``impact``: learned sparse retrieval (SPLADE, inference-free) on a Lucene impact index.

Documents go through a SPLADE masked LM (:class:`genseek.encoders.SparseEncoder`), each
term weight ``w`` is quantised to the integer ``round(w * quant)`` (terms that round to 0
are dropped) and the document is indexed *pre-tokenised*: field ``contents`` holds
``term\\x01tf`` tokens split on whitespace, and Lucene's ``DelimitedTermFrequencyTokenFilter``
stores ``tf`` as the term's frequency (``DOCS_AND_FREQS``, no norms, no positions). A
query is a boolean OR of term queries, each boosted by the term's quantised weight, scored
with Anserini's ``ImpactSimilarity`` (``boost * tf``): the exact integer dot product
``sum_t q_t * d_t`` (exact in float32 below 2**24); hits report it divided by ``quant**2``,
ties broken by id as in ``bm25``.

The query is handed to Java as one string, ``"term"^w "term"^w ...``, parsed by Lucene's
classic ``QueryParser`` (quoted, so no token is read as an operator) and searched on a plain
``IndexSearcher``: a handful of JNI calls per query. (Anserini's ``SimpleImpactSearcher``
takes a ``Map`` — one JNI call per term — and then expands it into a string that repeats
each term ``w`` times and analyses it again, which cost more than the search itself.)

Two query modes:

- ``splade``: the query goes through the same model (a siamese SPLADE encoder).
- ``inference-free``: the query is its distinct tokenizer ids weighted by the IDF table
  stored with the model (``<model>/idf.json``, or ``idf=PATH``); no model runs at query
  time (Geng et al. 2024). ``genseek train sparse`` writes such a model folder.

Writes follow ``bm25``: ``updateDocument``/``deleteDocuments`` by the ``id`` term, the
sequence number in the Lucene commit's user data, a new searcher generation per commit.
Scores depend on no collection statistics, so deleted documents never change other scores.
The document-side settings (model, max_length, windows, top_k, threshold, quant) are kept in
``impact.json`` at creation; reopening with different ones is an error (rebuild instead).

Spec parameters: ``model`` (splade-tiny), ``mode`` (splade | inference-free), ``idf``
(path of the IDF table; default ``<model>/idf.json``), ``top_k`` (keep a document's k
heaviest terms, 0 = all), ``threshold`` (drop weights <= it, 0.0), ``quant`` (100),
``max_length`` (256 tokens per model window), ``windows`` (a document is encoded in up to
this many overlapping ``max_length`` windows, max-pooled; 1 cuts it at ``max_length``),
``batch_size`` (16), ``ram_buffer_mb`` (256). The queries of a batch are searched one after
another: Python threads gained nothing over that (the JNI calls hold the GIL).

As a :class:`~genseek.protocols.VectorSearch`, the query vectors are ``(token ids int64 [n],
weights float32 [n])`` pairs, one per query (:meth:`ImpactIndex.encode_queries`), quantised
by :meth:`ImpactIndex.search_vectors`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genseek.atomic import atomic_write_json
from genseek.docwork import DocumentWork, Payload, backend_option, payloads_for
from genseek.errors import GenseekError
from genseek.indexers._lucene import LuceneClasses, LuceneFolder, writer_config
from genseek.indexers._vectorindex import VectorIndex
from genseek.indexers.jvm import Shared, here
from genseek.params import ImpactParams, ImpactSearchParams
from genseek.types import ChangeSet, Document, Hit, IndexStats

_DELIM = "\x01"  # not whitespace for Lucene's WhitespaceTokenizer (U+001C..U+001F are)
_META = "impact.json"
MODES = ("splade", "inference-free")
_DOC_SIDE = ("model", "max_length", "windows", "top_k", "threshold", "quant", "backend")
_DOC_SIDE_BEFORE = {"backend": "torch"}  # what an index written before a key existed used

Vector = tuple[np.ndarray, np.ndarray]  # (token ids int64 [n], weights float32 [n])


def quantise(weights: np.ndarray, quant: float) -> np.ndarray:
    """Integer impacts ``round(w * quant)`` (int64, same shape as ``weights``)."""
    return np.rint(np.asarray(weights, dtype=np.float64) * quant).astype(np.int64)


def prune(vec: Vector, top_k: int, threshold: float) -> Vector:
    """Keep weights ``> threshold`` and then the ``top_k`` heaviest (0 = all), heaviest first."""
    ids, ws = vec
    keep = ws > threshold
    ids, ws = ids[keep], ws[keep]
    order = np.argsort(-ws, kind="stable")
    if top_k > 0:
        order = order[:top_k]
    return ids[order], ws[order]


class ImpactIndex(VectorIndex[list[Vector]]):
    """Lucene impact index of quantised SPLADE vectors. See the module docstring."""

    Params = ImpactParams
    SearchParams = ImpactSearchParams

    def __init__(self, path: Path, params: dict[str, Any], encoder: Any = None):
        self.params = ImpactParams.resolve(params)
        self.path = Path(path)
        self._check_meta(create=False)
        self.path.mkdir(parents=True, exist_ok=True)
        self._encoder = encoder
        self._own_encoder = encoder is None  # else document_work() cannot reproduce it
        self._enc_lock = threading.Lock()
        self._parsers = threading.local()
        if self.params["mode"] == "inference-free":
            self.encoder.idf  # noqa: B018 - fail at open, not at the first query
        j = _Java()
        self._j = j
        conf = j.HashMap()
        conf.put("delimiter", _DELIM)
        builder = here(here(j.CustomAnalyzer.builder()).withTokenizer("whitespace"))
        self._analyzer = here(builder.addTokenFilter("delimitedTermFrequency", conf)).build()
        ftype = j.FieldType()
        ftype.setTokenized(True)
        ftype.setOmitNorms(True)
        ftype.setIndexOptions(j.IndexOptions.DOCS_AND_FREQS)
        ftype.freeze()
        self._ftype = ftype
        config = writer_config(j, self._analyzer, j.ImpactSimilarity(),
                               self.params["ram_buffer_mb"])
        self._lucene = LuceneFolder("impact", self.path, j, config, self._open_searcher)
        self._check_meta(create=True)
        self._lucene.reopen()

    # -- configuration ---------------------------------------------------------------

    def _check_meta(self, create: bool) -> None:
        """Refuse to reopen an index whose documents were encoded differently."""
        file = self.path / _META
        want = {k: self.params[k] for k in _DOC_SIDE}
        if file.is_file():
            try:
                have = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise GenseekError(f"impact: cannot read {file}: {exc}") from None
            diff = [k for k in _DOC_SIDE if have.get(k, _DOC_SIDE_BEFORE.get(k)) != want[k]]
            if diff:
                raise GenseekError(
                    f"impact: {self.path} was built with "
                    + ", ".join(f"{k}={have.get(k)!r}" for k in diff)
                    + "; the spec asks for " + ", ".join(f"{k}={want[k]!r}" for k in diff)
                    + " (rebuild the index to change document-side settings)")
        elif create:
            atomic_write_json(file, want)

    @property
    def encoder(self):
        """The shared :class:`SparseEncoder` (created on first use)."""
        if self._encoder is None:
            from genseek.encoders import shared_sparse_encoder

            self._encoder = shared_sparse_encoder(self.params["model"], self.params["max_length"],
                                                  self.params["idf"], self.params["windows"],
                                                  str(self.params["backend"]))
        return self._encoder

    # -- state ------------------------------------------------------------------------

    @property
    def applied_seq(self) -> int:
        return self._lucene.applied_seq

    # -- writes -----------------------------------------------------------------------

    def _work(self) -> DocumentWork:
        return DocumentWork("sparse", str(self.params["model"]), int(self.params["max_length"]),
                            int(self.params["batch_size"]), windows=int(self.params["windows"]),
                            options=backend_option(str(self.params["backend"])))

    def document_work(self) -> DocumentWork | None:
        """The SPLADE encoder's work (:class:`~genseek.protocols.EncodesDocuments`): one
        unpruned ``(ids, weights)`` pair per document (pruning is this index's); None with an
        encoder object handed in."""
        return self._work() if self._own_encoder else None

    def _raw_vectors(self, docs: Sequence[Document],
                     encoded: Mapping[str, Payload]) -> list[Vector]:
        """Unpruned vectors of ``docs``: from ``encoded`` by id, the others encoded here."""
        with self._enc_lock:
            return payloads_for(self._work(), lambda: self.encoder, docs, encoded)

    def doc_vectors(self, docs: Sequence[Document]) -> list[Vector]:
        """Pruned float vectors of ``docs`` through the encoder (``[(ids, weights)]``)."""
        top_k, threshold = int(self.params["top_k"]), float(self.params["threshold"])
        return [prune(v, top_k, threshold) for v in self._raw_vectors(docs, {})]

    def apply(self, changes: ChangeSet) -> None:
        self.apply_encoded(changes, {})

    def apply_encoded(self, changes: ChangeSet, encoded: Mapping[str, Payload]) -> None:
        """:meth:`apply`, taking the unpruned vectors of some upserts from ``encoded``
        (``doc_id -> (ids, weights)``: the same model's encodings of the same contents, e.g.
        computed by Ray actors or a cache); the others are encoded."""
        top_k, threshold = int(self.params["top_k"]), float(self.params["threshold"])
        j = self._j
        raw = self._raw_vectors(changes.upserts, encoded)
        for doc, vec in zip(changes.upserts, raw, strict=True):
            vec = prune(vec, top_k, threshold)
            self._lucene.upsert(doc.doc_id, j.Field("contents", self._pretokenised(vec),
                                                    self._ftype, signature=_FIELD_SIG))
        for doc_id in changes.deleted_ids:
            self._lucene.delete(doc_id)

    def _pretokenised(self, vec: Vector) -> str:
        """``term\\x01tf`` tokens of the quantised vector (zero impacts dropped)."""
        names = self.encoder.term_names
        ids, ws = vec
        tfs = quantise(ws, float(self.params["quant"]))
        return " ".join(f"{names[i]}{_DELIM}{tf}"
                        for i, tf in zip(ids.tolist(), tfs.tolist(), strict=True) if tf > 0)

    def commit(self, seq: int) -> None:
        self._lucene.commit(seq)

    def _open_searcher(self) -> _Searcher:
        return _Searcher(self._j, self._lucene.directory)

    # -- reads ------------------------------------------------------------------------

    def encode_queries(self, queries: Sequence[str]) -> list[Vector]:
        """Float query vectors: the model's (``splade``) or IDF-weighted tokens
        (``inference-free``, no model)."""
        if self.params["mode"] == "inference-free":
            return self.encoder.query_ids_idf(queries)
        with self._enc_lock:
            return self.encoder.encode_ids(list(queries), batch_size=32)

    def quantised_query(self, vec: Vector) -> dict[str, int]:
        """``{term: integer weight}`` as searched (zero weights dropped)."""
        names = self.encoder.term_names
        ids, ws = vec
        tfs = quantise(ws, float(self.params["quant"]))
        return {names[i]: tf for i, tf in zip(ids.tolist(), tfs.tolist(), strict=True) if tf > 0}

    def _parser(self) -> Any:
        """This thread's ``QueryParser`` (they are not thread-safe; building one costs more
        than parsing a query)."""
        parser = getattr(self._parsers, "parser", None)
        if parser is None:
            parser = self._parsers.parser = self._j.QueryParser("contents", self._j.Whitespace())
        return parser

    def search_vectors(self, vectors: Sequence[Vector], k: int,
                       params: ImpactSearchParams | None = None) -> list[list[Hit]]:
        """Search float query vectors (quantised here); one ranked list per vector. There are
        no search parameters (``params`` must be None or empty): set them in the spec."""
        ImpactSearchParams.overrides(params)
        if k <= 0:
            return [[] for _ in vectors]
        scale = float(self.params["quant"]) ** 2
        texts = [query_string(self.quantised_query(v)) for v in vectors]
        live = [i for i, text in enumerate(texts) if text]
        out: list[list[Hit]] = [[] for _ in texts]
        if not live:
            return out
        with self._lucene.searcher() as s:
            parser = self._parser()
            for i in live:
                out[i] = [Hit(d, float(x) / scale) for d, x in s.search(parser.parse(texts[i]), k)]
        return out

    def stats(self) -> IndexStats:
        """Live documents, and ``max_doc`` (deleted ones not merged away yet included)."""
        return self._lucene.index_stats("impact", self.applied_seq, self.path, self.params)

    def close(self) -> None:
        self._lucene.close()


_FIELD_SIG = ("(Ljava/lang/String;Ljava/lang/CharSequence;"
              "Lorg/apache/lucene/index/IndexableFieldType;)V")


class _Java(LuceneClasses):
    """The Java classes this module uses (each thread gets its own, see ``JavaClasses``)."""

    NAMES = {
        **LuceneClasses.NAMES,
        "CustomAnalyzer": "org.apache.lucene.analysis.custom.CustomAnalyzer",
        "QueryParser": "org.apache.lucene.queryparser.classic.QueryParser",
        "Whitespace": "org.apache.lucene.analysis.core.WhitespaceAnalyzer",
        "ScoredDocs": "io.anserini.search.ScoredDocs",
        "Sort": "org.apache.lucene.search.Sort",
        "SortField": "org.apache.lucene.search.SortField",
        "SortType": "org.apache.lucene.search.SortField$Type",
        "ImpactSimilarity": "io.anserini.search.similarity.ImpactSimilarity",
        "IndexOptions": "org.apache.lucene.index.IndexOptions",
        "Field": "org.apache.lucene.document.Field",
        "FieldType": "org.apache.lucene.document.FieldType",
    }


def query_string(bag: Mapping[str, int]) -> str:
    """``"term"^w ...`` for Lucene's classic ``QueryParser``: every term quoted (so ``AND``,
    ``-`` or ``*`` stay terms), ``\\`` and ``"`` escaped; an empty bag gives ``""``."""
    return " ".join('"' + t.replace("\\", "\\\\").replace('"', '\\"') + f'"^{w}'
                    for t, w in bag.items())


class _Searcher:
    """One searcher generation: a reader of the latest commit and an ``IndexSearcher`` with
    ``ImpactSimilarity``; hits come sorted by score, then id (Anserini's tie-break)."""

    def __init__(self, j: _Java, directory: Any):
        self._j = j
        reader = j.DirectoryReader.open(directory)
        searcher = j.IndexSearcher(reader, signature="(Lorg/apache/lucene/index/IndexReader;)V")
        searcher.setSimilarity(j.ImpactSimilarity())
        self._reader, self._searcher = Shared(reader), Shared(searcher)  # used by every reader
        self.sort = j.Sort(j.SortField.FIELD_SCORE, j.SortField("id", j.SortType.STRING_VAL),
                           signature="([Lorg/apache/lucene/search/SortField;)V")

    def search(self, query: Any, k: int) -> list[tuple[str, float]]:
        """The top ``k`` ``(doc_id, score)``, by score then id.

        A sort on (score, id) turns off Lucene's block-max pruning and doubles the search
        time, so the top ``k + 1`` are fetched by score alone and ordered here; only when the
        ``k``-th and ``k + 1``-th scores tie (the id then decides which document is in the
        top ``k``) is the query searched again with the sort.
        """
        j, searcher = self._j, self._searcher.here()
        docs = j.ScoredDocs.fromTopDocs(searcher.search(query, k + 1), searcher)
        hits = list(zip(docs.docids, docs.scores, strict=True))
        if len(hits) > k and hits[k][1] == hits[k - 1][1]:
            top = searcher.search(query, k, self.sort, True)
            docs = j.ScoredDocs.fromTopDocs(top, searcher)
            return list(zip(docs.docids, docs.scores, strict=True))
        hits = hits[:k]
        hits.sort(key=lambda h: (-h[1], h[0]))
        return hits

    def close(self) -> None:
        self._reader.here().close()
