"""Search pipelines as objects: retrieval stages, a fusion, an optional rerank, filters.

One shape for everything: the Python API builds these objects, the HTTP API
accepts their JSON form, and ``genseek.client`` sends them. A pipeline names
indexes and rerankers by their names in the collection, so any index type or
reranker added later is usable without changing this shape::

    Pipeline(
        retrieve=[Stage(index="bm25", k=100), Stage(index="dense", k=100)],
        fusion=Fusion(method="rrf", k=60),
        k=10,
        fields=["title"],
        filter={"year": [2020, 2021]},
    )
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from genseek.errors import InvalidParameter, NotFoundError
from genseek.params import Params
from genseek.protocols import Reranker, Retriever
from genseek.types import Document, Hit

MAX_K = 1000
"""Largest k a stage or a pipeline may ask for."""

FilterValue = str | int | float | bool | list[str | int | float | bool]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Stage(_Model):
    """Retrieve ``k`` candidates per query from one index."""

    index: str = Field(min_length=1, max_length=64)
    k: int = Field(100, ge=1, le=MAX_K)
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)


class Fusion(_Model):
    """How the stages' lists combine: ``rrf`` (with its ``k``) or ``linear``."""

    method: Literal["rrf", "linear"] = "rrf"
    k: float = Field(60.0, ge=0, le=1e6, description="the RRF constant")
    weights: list[float] | None = Field(None, description="one weight per stage")
    normalization: Literal["minmax", "zscore", "none"] = "minmax"


class Rerank(_Model):
    """Rerank the top ``depth`` fused candidates with a named reranker."""

    reranker: str = Field(min_length=1, max_length=64)
    depth: int = Field(100, ge=1, le=MAX_K)


class Pipeline(_Model):
    """A whole search request minus the queries."""

    retrieve: list[Stage] = Field(min_length=1, max_length=16)
    fusion: Fusion = Field(default_factory=Fusion)
    rerank: Rerank | None = None
    k: int = Field(10, ge=1, le=MAX_K)
    fields: list[Literal["title", "text", "metadata"]] = Field(default_factory=list)
    filter: dict[str, FilterValue] | None = Field(
        None, description="metadata key -> value (equality) or list of values (any of)")

    @model_validator(mode="after")
    def _weights_match(self) -> Pipeline:
        if self.fusion.weights is not None and len(self.fusion.weights) != len(self.retrieve):
            raise ValueError(f"fusion.weights has {len(self.fusion.weights)} entries for "
                             f"{len(self.retrieve)} retrieval stages")
        return self

    @classmethod
    def default(cls, indexes: Sequence[str], k: int = 10) -> Pipeline:
        """RRF over ``indexes``, each searched to depth 100."""
        return cls(retrieve=[Stage(index=name) for name in indexes], k=k)


def matches(metadata: dict[str, Any], where: dict[str, Any]) -> bool:
    """Whether ``metadata`` satisfies every ``key: value`` (or ``key: [values]``) of ``where``."""
    for key, wanted in where.items():
        value = metadata.get(key)
        options = wanted if isinstance(wanted, list) else [wanted]
        if isinstance(value, list):
            if not any(v in options for v in value):
                return False
        elif value not in options:
            return False
    return True


def check_indexes(pipeline: Pipeline, available: Sequence[str]) -> None:
    """Raise a NotFoundError naming the first stage whose index does not exist."""
    for stage in pipeline.retrieve:
        if stage.index not in available:
            raise NotFoundError(f"no index named {stage.index!r} (indexes: "
                               f"{', '.join(available) or 'none'})")


@dataclass(frozen=True, slots=True)
class Result:
    """One pipeline result: a hit plus the stored fields the pipeline asked for."""

    doc_id: str
    score: float
    title: str | None = None
    text: str | None = None
    metadata: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"doc_id": self.doc_id, "score": self.score}
        for name in ("title", "text", "metadata"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass
class StageTrace:
    """One retrieval stage as :func:`run_pipeline` ran it: its index, the seconds its search
    took and its own ranked hits per query (its top ``k``, before fusion)."""

    index: str
    seconds: float
    hits: list[list[Hit]]


@dataclass
class Trace:
    """What :func:`run_pipeline` fills in when given one (the search API's ``explain``): each
    retrieval stage in pipeline order, and the seconds spent retrieving (the stages' searches),
    fusing (the fused search less its stages), reranking (None without a rerank) and fetching
    stored documents (for a filter, a rerank or the requested fields)."""

    stages: list[StageTrace] = field(default_factory=list)
    retrieve_s: float = 0.0
    fusion_s: float = 0.0
    rerank_s: float | None = None
    fetch_s: float = 0.0

    def to_dict(self, query: int = 0) -> dict[str, Any]:
        """``{"stages": [{"index", "took_ms", "hits": [{"doc_id", "score"}]}], "timings":
        {"retrieve_ms", "fusion_ms", "rerank_ms", "fetch_ms"}}`` for the ``query``-th query."""
        def ms(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds * 1000, 3)

        return {
            "stages": [{"index": s.index, "took_ms": ms(s.seconds),
                        "hits": [{"doc_id": h.doc_id, "score": h.score} for h in s.hits[query]]}
                       for s in self.stages],
            "timings": {"retrieve_ms": ms(self.retrieve_s), "fusion_ms": ms(self.fusion_s),
                        "rerank_ms": ms(self.rerank_s), "fetch_ms": ms(self.fetch_s)}}


@dataclass(frozen=True)
class StageSearch:
    """An index searched to a fixed depth with per-request parameters (an instance of the
    index type's ``SearchParams``, already validated, or None): a stage of a fusion. With a
    ``trace``, each search is recorded there under ``name``."""

    index: Retriever
    depth: int
    params: Params | None = None
    name: str = ""
    trace: Trace | None = None

    def search(self, queries: Sequence[str], k: int,
               params: Params | None = None) -> list[list[Hit]]:
        if params is not None:
            raise InvalidParameter("a pipeline stage takes its search parameters from the "
                                   "pipeline, not from the fusion")
        start = time.perf_counter()
        if self.params is None:
            hits = self.index.search(queries, self.depth)
        else:
            hits = self.index.search(queries, self.depth, self.params)
        if self.trace is not None:
            seconds = time.perf_counter() - start
            self.trace.stages.append(StageTrace(self.name, seconds, [list(h) for h in hits]))
            self.trace.retrieve_s += seconds
        return hits


def fuse_named(serving: Callable[[str], Retriever], names: Sequence[str], fusion: str = "rrf",
               **fusion_params: Any) -> Retriever:
    """:func:`fuse` of the indexes ``names`` (each looked up with ``serving``) from the
    options a collection's ``retriever`` takes: ``fusion`` is ``rrf`` (``rrf_k``, ``weights``,
    ``depth``) or ``linear`` (``weights``, ``normalization``, ``depth``); a bad option is one
    :class:`~genseek.errors.InvalidParameter` line."""
    from pydantic import ValidationError

    from genseek.errors import GenseekError
    from genseek.params import describe

    if fusion not in ("rrf", "linear"):
        raise GenseekError(f"unknown fusion {fusion!r}: use rrf or linear")
    params = dict(fusion_params)
    depth = int(params.pop("depth", 100))
    if "rrf_k" in params:
        params["k"] = float(params.pop("rrf_k"))
    if params.get("weights") is not None:
        params["weights"] = [float(w) for w in params["weights"]]
    try:
        spec = Fusion(method=fusion, **params)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise InvalidParameter(f"{fusion} fusion: {describe(Fusion, exc)}") from None
    return fuse([serving(n) for n in names], spec, depth=depth, names=list(names))


def fuse(stages: Sequence[Retriever], fusion: Fusion | None = None, depth: int = 100,
         names: Sequence[str] | None = None) -> Retriever:
    """The one fusion builder (:meth:`Collection.search <genseek.collection.Collection.search>`,
    :func:`build_retriever` and the Elasticsearch hybrid use it): one stage is returned as it is;
    several are fused as ``fusion`` says (RRF by default), each searched to at least ``depth``.
    ``names`` (one per stage) go into the message of a weights mismatch."""
    from genseek.retrievers.fusion import LinearFusion, RRFusion

    f = fusion if fusion is not None else Fusion()
    if not stages:
        raise InvalidParameter("a fusion needs at least one stage")
    if f.weights is not None and len(f.weights) != len(stages):
        listed = f" ({', '.join(names)})" if names else ""
        raise InvalidParameter(f"{f.method} fusion of {len(stages)} stages{listed} needs "
                               f"{len(stages)} weights, not {len(f.weights)}")
    if len(stages) == 1:
        return stages[0]
    if f.method == "rrf":
        return RRFusion(list(stages), rrf_k=f.k, depth=depth, weights=f.weights)
    return LinearFusion(list(stages), weights=f.weights, normalization=f.normalization,
                        depth=depth)


def build_retriever(pipeline: Pipeline, indexes: Mapping[str, Retriever],
                    search_params: Callable[[str, dict[str, Any]], Params | None] | None = None,
                    trace: Trace | None = None) -> Retriever:
    """The retrieval and fusion part of ``pipeline`` as one Retriever.

    ``search_params(index_name, params)`` validates a stage's ``params`` into the index
    type's ``SearchParams`` (:meth:`Collection.search_params
    <genseek.collection.Collection.search_params>`); without it, a stage's params are checked
    by the ``SearchParams`` class of the index object. With a ``trace``, every stage's
    search is recorded there (:class:`Trace`).
    """
    check_indexes(pipeline, list(indexes))
    def check(name: str, params: dict[str, Any]) -> Params | None:
        if search_params is not None:
            return search_params(name, params)
        return _schema_of_index(indexes[name], name, params)

    stages = [StageSearch(indexes[s.index], s.k,
                          check(s.index, dict(s.params)) if s.params else None, s.index, trace)
              for s in pipeline.retrieve]
    return fuse(stages, pipeline.fusion, depth=1, names=[s.index for s in pipeline.retrieve])


def _schema_of_index(index: Retriever, name: str, params: dict[str, Any]) -> Params | None:
    schema = getattr(type(index), "SearchParams", None)
    if schema is None:
        raise InvalidParameter(f"index {name!r} takes no search parameters")
    try:
        return schema.check(params)
    except InvalidParameter as exc:
        raise InvalidParameter(f"index {name!r}: {exc}") from None


def _fused(pipeline: Pipeline, indexes: Mapping[str, Retriever],
           rerankers: Mapping[str, Reranker] | None,
           search_params: Callable[[str, dict[str, Any]], Params | None] | None,
           trace: Trace | None = None) -> Retriever:
    """The checked retrieval + fusion of ``pipeline``: a NotFoundError for an unknown index
    or reranker, an InvalidParameter for bad stage params, before any index is searched."""
    if pipeline.rerank is not None and pipeline.rerank.reranker not in (rerankers or {}):
        known = ", ".join(sorted(rerankers or {})) or "none"
        raise NotFoundError(f"no reranker named {pipeline.rerank.reranker!r} (rerankers: {known})")
    return build_retriever(pipeline, indexes, search_params, trace)


def run_pipeline(pipeline: Pipeline, queries: Sequence[str], indexes: Mapping[str, Retriever],
                 fetch: Callable[[Sequence[str]], Mapping[str, Document]],
                 rerankers: Mapping[str, Reranker] | None = None,
                 search_params: Callable[[str, dict[str, Any]], Params | None] | None = None,
                 trace: Trace | None = None) -> list[list[Result]]:
    """Run ``pipeline`` for a batch of queries.

    1. each stage searches its index to its own depth; 2. the lists are fused;
    3. the metadata filter drops candidates (so a selective filter can leave fewer
    than ``k``: raise the stages' ``k`` to search deeper); 4. the top ``depth``
    candidates are reranked; 5. the top ``k`` get the requested stored fields.
    ``fetch(ids)`` returns the live documents among ``ids`` (the collection's store);
    ``search_params`` validates a stage's params (see :func:`build_retriever`). Every stage's
    params are validated before any index is searched. A ``trace`` (:class:`Trace`) gets
    each stage's own hits and the time of each step.
    """
    retriever = _fused(pipeline, indexes, rerankers, search_params, trace)
    start = time.perf_counter()
    fused = retriever.search(queries, MAX_K)
    if trace is not None:
        trace.fusion_s = max(0.0, time.perf_counter() - start - trace.retrieve_s)
    need_docs = bool(pipeline.filter or pipeline.rerank or pipeline.fields)
    start = time.perf_counter()
    kept: list[tuple[list[Hit], Mapping[str, Document]]] = []
    for hits in fused:
        docs = fetch([h.doc_id for h in hits]) if need_docs else {}
        if pipeline.filter:
            hits = [h for h in hits if h.doc_id in docs
                    and matches(dict(docs[h.doc_id].metadata), pipeline.filter)]
        kept.append((hits, docs))
    if trace is not None:
        trace.fetch_s = time.perf_counter() - start
    if pipeline.rerank is not None:
        start = time.perf_counter()
        kept = _rerank(rerankers[pipeline.rerank.reranker], pipeline.rerank.depth, queries, kept)
        if trace is not None:
            trace.rerank_s = time.perf_counter() - start
    out: list[list[Result]] = []
    for hits, docs in kept:
        results = []
        for h in hits[:pipeline.k]:
            doc = docs.get(h.doc_id)
            want = set(pipeline.fields)
            results.append(Result(
                h.doc_id, h.score,
                title=doc.title if doc and "title" in want else None,
                text=doc.text if doc and "text" in want else None,
                metadata=dict(doc.metadata) if doc and "metadata" in want else None))
        out.append(results)
    return out


@dataclass
class PipelineRetriever:
    """A pipeline over a collection's indexes as a :class:`~genseek.protocols.Retriever`
    (what :func:`genseek.evaluation.experiment` runs): ``search(queries, k)`` runs
    :func:`run_pipeline` with the pipeline's final ``k`` raised to at least ``k`` (its stages
    keep their own depths) and without stored fields. The pipeline's indexes, reranker and
    stage params are checked when it is built, so a bad one fails before any search."""

    pipeline: Pipeline
    indexes: Mapping[str, Retriever]
    fetch: Callable[[Sequence[str]], Mapping[str, Document]]
    rerankers: Mapping[str, Reranker] | None = None
    search_params: Callable[[str, dict[str, Any]], Params | None] | None = None

    def __post_init__(self) -> None:
        _fused(self.pipeline, self.indexes, self.rerankers, self.search_params)

    def search(self, queries: Sequence[str], k: int,
               params: Params | None = None) -> list[list[Hit]]:
        if params is not None:
            raise InvalidParameter("a pipeline takes its search parameters from its stages")
        p = self.pipeline.model_copy(update={"k": max(self.pipeline.k, min(k, MAX_K)),
                                             "fields": []})
        results = run_pipeline(p, queries, self.indexes, self.fetch, self.rerankers,
                               self.search_params)
        return [[Hit(r.doc_id, r.score) for r in rs] for rs in results]


def _rerank(reranker: Reranker, depth: int, queries: Sequence[str],
            kept: list[tuple[list[Hit], Mapping[str, Document]]],
            ) -> list[tuple[list[Hit], Mapping[str, Document]]]:
    """Reorder each query's top ``depth`` hits by the reranker's scores (ties: input order).
    Every query goes to :meth:`Reranker.rank_batch` at once, so a listwise LLM batches its
    windows across queries."""
    heads = [hits[:depth] for hits, _ in kept]
    texts = [[docs[h.doc_id].contents if h.doc_id in docs else "" for h in head]
             for head, (_, docs) in zip(heads, kept, strict=True)]
    all_scores = reranker.rank_batch(list(queries), texts)
    out = []
    for head, scores, (hits, docs) in zip(heads, all_scores, kept, strict=True):
        if len(scores) != len(head):
            raise ValueError(f"reranker returned {len(scores)} scores for {len(head)} texts")
        order = sorted(range(len(head)), key=lambda i: (-scores[i], i))
        out.append(([Hit(head[i].doc_id, float(scores[i])) for i in order] + hits[depth:], docs))
    return out
