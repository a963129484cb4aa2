"""An Elasticsearch query as a pipeline stage, to fuse with genseek's indexes.

:class:`ElasticRetriever` is a :class:`~genseek.protocols.Retriever`: it runs one
Elasticsearch search per query and returns ``Hit(_id, _score)`` lists, so it fuses
with any genseek index or pipeline (:func:`hybrid`: RRF built by
:func:`genseek.pipeline.fuse`, ranks only; the two score scales never meet). Document ids
are Elasticsearch ``_id`` values, which is what ``genseek es sync`` stores as genseek ids.
The client and its errors come from :mod:`genseek.data.elastic` (nothing here imports
``genseek.api``)::

    from elasticsearch import Elasticsearch
    from genseek import Collection
    from genseek.pipeline import Pipeline, Stage, build_retriever
    from genseek.retrievers.elastic import ElasticRetriever, hybrid

    es = Elasticsearch("http://localhost:9200")
    with Collection.open("docs") as coll:
        pipeline = Pipeline(retrieve=[Stage(index="dense", k=100)])
        fused = hybrid(ElasticRetriever(es, "docs"), build_retriever(pipeline, coll.indexes))
        hits = fused.search(["wing flutter at supersonic speed"], k=10)[0]
        # a pipeline with a filter or a rerank stage: PipelineRetriever(pipeline, coll)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from genseek.data.elastic import es_call
from genseek.errors import GenseekError, InvalidParameter
from genseek.params import Params
from genseek.protocols import Retriever
from genseek.types import Hit

QueryBuilder = Callable[[str], Mapping[str, Any]]
PLACEHOLDER = "{{query}}"


def template_query(template: Mapping[str, Any]) -> QueryBuilder:
    """A query builder from ES query DSL in which ``"{{query}}"`` stands for the query text."""
    text = json.dumps(template)
    if PLACEHOLDER not in text:
        raise GenseekError(f"an Elasticsearch query template needs a {PLACEHOLDER} placeholder")

    def build(query: str) -> Mapping[str, Any]:
        return json.loads(text.replace(json.dumps(PLACEHOLDER)[1:-1],
                                       json.dumps(query)[1:-1]))

    return build


class ElasticRetriever:
    """Search ``index`` with ``query(text)`` (default: ``multi_match`` over ``fields``)."""

    def __init__(self, es: Any, index: str, query: QueryBuilder | Mapping[str, Any] | None = None,
                 fields: Sequence[str] = ("title", "text"),
                 filter: Mapping[str, Any] | None = None, timeout: float | None = None):
        self.es = es
        self.index = index
        if query is None:
            fields = list(fields)
            self._build: QueryBuilder = lambda q: {"multi_match": {"query": q, "fields": fields}}
        elif callable(query):
            self._build = query
        else:
            self._build = template_query(query)
        self.filter = dict(filter) if filter else None
        self.timeout = timeout

    def query(self, text: str) -> dict[str, Any]:
        """The ES query DSL sent for ``text`` (with the filter, if any)."""
        q = dict(self._build(text))
        if self.filter:
            return {"bool": {"must": [q], "filter": [self.filter]}}
        return q

    def search(self, queries: Sequence[str], k: int,
               params: Params | None = None) -> list[list[Hit]]:
        _no_params(params, "an Elasticsearch stage (its query says how to search)")
        out: list[list[Hit]] = []
        for text in queries:
            with es_call(f"searching {self.index!r}"):
                res = self.es.search(index=self.index, query=self.query(text), size=k,
                                     source=False, track_total_hits=False,
                                     **({"timeout": f"{self.timeout}s"} if self.timeout else {}))
            out.append([Hit(h["_id"], float(h["_score"] if h["_score"] is not None else 0.0))
                        for h in res.body["hits"]["hits"]])
        return out


class PipelineRetriever:
    """A whole genseek pipeline (stages, fusion, filter, rerank) as one Retriever.

    ``search(queries, k)`` runs ``pipeline`` with its final ``k`` set to ``k``; scores are
    the pipeline's (fused or reranked). Use it to fuse Elasticsearch with a pipeline
    that :func:`genseek.pipeline.build_retriever` cannot express (filters, rerankers).
    """

    def __init__(self, pipeline: Any, collection: Any,
                 rerankers: Mapping[str, Any] | None = None):
        self.pipeline = pipeline
        self.collection = collection
        self.rerankers = rerankers

    def search(self, queries: Sequence[str], k: int,
               params: Params | None = None) -> list[list[Hit]]:
        from genseek.pipeline import MAX_K, run_pipeline

        _no_params(params, "a pipeline stage (the pipeline's stages carry them)")
        p = self.pipeline.model_copy(update={"k": max(1, min(int(k), MAX_K)), "fields": []})
        results = run_pipeline(p, queries, self.collection.indexes, self.collection.get,
                               self.rerankers)
        return [[Hit(r.doc_id, float(r.score)) for r in rs] for rs in results]


def hybrid(*stages: Retriever, rrf_k: float = 60.0, depth: int = 100,
           weights: Sequence[float] | None = None) -> Retriever:
    """RRF over Elasticsearch retrievers and genseek indexes or pipelines, each searched to
    at least ``depth`` (:func:`genseek.pipeline.fuse`)."""
    from pydantic import ValidationError

    from genseek.params import describe
    from genseek.pipeline import Fusion, fuse

    if len(stages) < 2:
        raise GenseekError("hybrid: give at least two retrievers to fuse")
    try:
        fusion = Fusion(k=float(rrf_k),
                        weights=None if weights is None else [float(w) for w in weights])
    except ValidationError as exc:
        raise InvalidParameter(f"hybrid: {describe(Fusion, exc)}") from None
    return fuse(stages, fusion, depth=depth)


def _no_params(params: Params | None, stage: str) -> None:
    if params is not None:
        raise InvalidParameter(f"{stage} takes no search parameters")
