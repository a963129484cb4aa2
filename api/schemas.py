"""Request and response bodies of the HTTP API (pydantic models, shown in ``/docs``).

Request models are strict about types (``"k": "10"`` or ``"title": 3`` is a 422)
and forbid unknown fields, so a misspelt option fails loudly instead of being
ignored. Bounds that come from :class:`~genseek.api.settings.Settings` (documents
per batch, queries per batch) are baked into per-app models by :func:`build`.
The search pipeline is :class:`genseek.pipeline.Pipeline` itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from genseek.pipeline import Pipeline
from genseek.sharded import MAX_SHARDS
from genseek.types import MAX_ID_CHARS, id_problem, metadata_problem, text_problem

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
"""Collection and index names (:func:`genseek.spec.validate_name`)."""
MAX_QUERY_CHARS = 10_000
MAX_SPEC_CHARS = 1000
MAX_INDEXES = 16
DEFAULT_INDEXES = {"bm25": "bm25", "dense": "dense"}

def _rule(check):
    def validate(value):
        problem = check(value)
        if problem:
            raise ValueError(problem)
        return value
    return AfterValidator(validate)


Name = Annotated[str, Field(pattern=NAME_PATTERN, min_length=1, max_length=64)]
DocId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS,
                             description="1-512 characters without whitespace or control "
                             "characters (the same rule as the CLI's and the store's)"),
                  _rule(id_problem)]
AnyDocId = Annotated[str, Field(min_length=1, max_length=4 * MAX_ID_CHARS), _rule(text_problem)]
"""An id to delete: any stored id (also one written before the id rule)."""
Text = Annotated[str, _rule(text_problem)]
LongText = Annotated[str, Field(max_length=1_000_000), _rule(text_problem)]
"""An input text to encode or rerank (at most a million characters)."""
Query = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS,
                             description="non-blank text"), _rule(text_problem)]
Metadata = Annotated[dict[str, Any], _rule(metadata_problem)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("the query is empty (only whitespace)")
    return value


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- errors ----------------------------------------------------------------------------------


class ErrorDetail(_Out):
    type: str = Field(description="machine-readable: not_found, validation_error, ...")
    message: str = Field(description="one human-readable line")
    details: list[dict[str, Any]] | None = None


class ErrorBody(_Out):
    error: ErrorDetail


# -- service ---------------------------------------------------------------------------------


class HealthOut(_Out):
    status: Literal["ok"]


IndexState = Literal["ready", "catching_up", "failed"]


class IndexHealth(_Out):
    state: IndexState = Field(description="ready: current; catching_up: behind the store; "
                              "failed: it could not open or applying writes fails")
    lag: int | None = Field(None, description="operations behind the store (None: never "
                            "opened)")
    error: str | None = None


class CollectionHealth(_Out):
    state: IndexState = Field(description="the worst of its indexes'")
    lag: int
    indexes: dict[str, IndexHealth]


class CollectionReady(CollectionHealth):
    name: str


class ReadyOut(_Out):
    status: Literal["ready", "catching_up", "degraded", "shutting_down"]
    collections: dict[str, CollectionHealth] | None = Field(
        None, description="per collection and index (needs the read scope when keys are set)")
    models: dict[str, Any] | None = Field(
        None, description="models (and the JVM) loaded and loading in the process, and the "
        "start-up preload's state and failures (needs the read scope when keys are set)")


# -- collections -----------------------------------------------------------------------------


class CreateCollection(_In):
    name: Name
    indexes: dict[Name, Annotated[str, Field(min_length=1, max_length=MAX_SPEC_CHARS)]] = Field(
        default_factory=lambda: dict(DEFAULT_INDEXES), min_length=1, max_length=MAX_INDEXES,
        description="index name -> spec, e.g. {\"bm25\": \"bm25\", \"dense\": \"dense\"} "
                    "(the default); a spec the server cannot build is a 400",
        examples=[{"bm25": "bm25"}, {"bm25": "bm25", "dense": "dense"}],
        json_schema_extra={"additionalProperties": False})
    shards: int | None = Field(
        default=None, ge=1, le=MAX_SHARDS,
        description="create a sharded collection of this many shards (documents routed by a "
                    "hash of their id; searched, written and reported like any collection); "
                    "none: one unsharded collection")


class CollectionList(_Out):
    collections: list[str]


class IndexStats(_Out):
    spec: str
    state: IndexState
    documents: int | None = None
    applied_seq: int | None = None
    lag: int | None = None
    error: str | None = None
    disk_bytes: int | None = None


class CollectionStats(_Out):
    name: str
    documents: int
    seq: int
    applied_seq: int
    lag: int
    state: IndexState
    sync_error: str | None = None
    disk_bytes: int | None = None
    indexes: dict[str, IndexStats]


class Dropped(_Out):
    name: str
    dropped: bool


# -- documents -------------------------------------------------------------------------------


class DocumentIn(_In):
    id: DocId
    title: Text = ""
    text: Text = ""
    metadata: Metadata = Field(default_factory=dict, description="a JSON object, nested at "
                               "most 32 levels deep")


class DocumentOut(_Out):
    id: str
    title: str
    text: str
    metadata: dict[str, Any]
    version: int


class WriteOut(_Out):
    seq: int
    upserted: int
    unchanged: int
    refreshed: bool = Field(description="every index has applied the write")


class DeleteOut(_Out):
    seq: int
    deleted: int
    missing: int
    refreshed: bool


# -- search ----------------------------------------------------------------------------------


class ResultOut(_Out):
    doc_id: str
    score: float | None
    title: str | None = None
    text: str | None = None
    metadata: dict[str, Any] | None = None


class StageHit(_Out):
    doc_id: str
    score: float | None


class StageOut(_Out):
    index: str = Field(description="the stage's index")
    took_ms: float | None = Field(description="the time of the stage's search")
    hits: list[StageHit] = Field(description="the stage's own top k, in rank order, before "
                                 "fusion")


class TimingsOut(_Out):
    retrieve_ms: float | None = Field(description="every stage's search")
    fusion_ms: float | None = Field(description="fusing the stages' lists")
    rerank_ms: float | None = Field(None, description="null without a rerank stage")
    fetch_ms: float | None = Field(description="reading stored documents (for a filter, a "
                                   "rerank or the fields asked for)")


class SearchOut(_Out):
    results: list[ResultOut]
    took_ms: float
    warnings: list[str] | None = Field(None, description="e.g. an index left out of the "
                                       "default pipeline because it is unavailable")
    stages: list[StageOut] | None = Field(None, description="with explain: every retrieval "
                                          "stage of the pipeline run, in pipeline order")
    timings: TimingsOut | None = Field(None, description="with explain: the time of each step")


class BatchSearchOut(_Out):
    results: list[list[ResultOut]]
    took_ms: float
    warnings: list[str] | None = None


def _finite_weights(pipeline: Pipeline | None) -> Pipeline | None:
    weights = pipeline.fusion.weights if pipeline is not None else None
    if weights and not all(math.isfinite(w) for w in weights):
        raise ValueError("fusion.weights must be finite numbers")
    return pipeline


CheckedPipeline = Annotated[Pipeline, AfterValidator(_finite_weights)]


class _WithPipeline(_In):
    pipeline: CheckedPipeline | None = Field(
        None, description="default: RRF over every index of the collection, k = 10")


class SearchRequest(_WithPipeline):
    query: Query
    explain: bool = Field(False, description="also answer each retrieval stage's own hits "
                          "(stages) and the time of each step (timings)")

    _blank = field_validator("query")(_not_blank)


# -- datasets and evaluation -----------------------------------------------------------------

SYSTEM_PATTERN = r"^[A-Za-z0-9_ -]{1,64}$"
"""Names of the pipelines compared by an evaluation."""
MAX_SYSTEMS = 4


class DatasetOut(_Out):
    name: str
    splits: list[str] = Field(description="the qrels/<split>.tsv files")
    queries: int = Field(description="lines of queries.jsonl")
    documents: int | None = Field(None, description="lines of corpus.jsonl (null when absent "
                                  "or too large to count on request)")


class DatasetList(_Out):
    root: str | None = Field(description="the server's datasets folder (null: reading "
                             "datasets is turned off)")
    datasets: list[DatasetOut]


class ComparisonValues(_Out):
    mean_difference: float = Field(description="mean of system - baseline over the queries")
    wins: int
    ties: int
    losses: int
    p_value: float = Field(description="paired randomisation test, two-sided")


class ComparisonOut(_Out):
    baseline: str = Field(description="the first pipeline")
    against: dict[str, dict[str, ComparisonValues]] = Field(
        description="pipeline -> measure -> its difference from the baseline")


class EvaluateOut(_Out):
    measures: list[str]
    systems: dict[str, dict[str, float]] = Field(description="pipeline -> measure -> mean")
    per_query: dict[str, dict[str, dict[str, float]]] = Field(
        description="pipeline -> query id -> measure -> value")
    comparison: ComparisonOut
    queries: dict[str, str] = Field(description="the evaluated queries")
    qrels: dict[str, dict[str, int]] = Field(description="their judgements")
    took_ms: float


# -- models ----------------------------------------------------------------------------------


class EmbeddingData(_Out):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class Usage(_Out):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsOut(_Out):
    object: Literal["list"]
    data: list[EmbeddingData]
    model: str
    usage: Usage


class SparseTerm(_Out):
    token: str
    weight: float


class SparseData(_Out):
    object: Literal["sparse_embedding"]
    index: int
    embedding: list[SparseTerm]


class SparseEmbeddingsOut(_Out):
    object: Literal["list"]
    data: list[SparseData]
    model: str


class RerankDocument(_Out):
    text: str


class RerankResult(_Out):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankOut(_Out):
    results: list[RerankResult]
    model: str


@dataclass(frozen=True)
class Schemas:
    """The request models whose bounds depend on the settings."""

    UpsertRequest: type[BaseModel]
    DeleteRequest: type[BaseModel]
    BatchSearchRequest: type[BaseModel]
    EvaluateRequest: type[BaseModel]
    EmbeddingsRequest: type[BaseModel]
    SparseEmbeddingsRequest: type[BaseModel]
    RerankRequest: type[BaseModel]


def build(max_batch_docs: int, max_queries: int, max_eval_queries: int = 2000) -> Schemas:
    """Request models with ``max_batch_docs``, ``max_queries`` and ``max_eval_queries`` as
    their bounds."""
    Texts = Annotated[list[LongText], Field(min_length=1, max_length=max_batch_docs)]
    Input = LongText | Texts

    class UpsertRequest(_In):
        documents: list[DocumentIn] = Field(min_length=1, max_length=max_batch_docs)
        refresh: bool = Field(False, description="wait until every index has applied the "
                              "write (bounded by the request timeout)")

    class DeleteRequest(_In):
        ids: list[AnyDocId] = Field(min_length=1, max_length=max_batch_docs)
        refresh: bool = False

    class BatchSearchRequest(_WithPipeline):
        queries: list[Query] = Field(min_length=1, max_length=max_queries)

        @field_validator("queries")
        @classmethod
        def _blank(cls, queries: list[str]) -> list[str]:
            for i, q in enumerate(queries):
                if not q.strip():
                    raise ValueError(f"query {i} is empty (only whitespace)")
            return queries

    class EvaluateRequest(_In):
        dataset: Name | None = Field(None, description="a dataset of GET /datasets: its "
                                     "queries.jsonl and qrels/<split>.tsv")
        split: Name = Field("test", description="the dataset's qrels split")
        queries: dict[Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)], Query] | None \
            = Field(None, description="query id -> text (default: the dataset's)")
        qrels: dict[Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)],
                    dict[Annotated[str, Field(min_length=1, max_length=4 * MAX_ID_CHARS)],
                         int]] | None = Field(
            None, description="query id -> document id -> grade (default: the dataset's)")
        qrels_tsv: Annotated[str, Field(max_length=64 * 1024 * 1024)] | None = Field(
            None, description="qrels as text: BEIR TSV (header optional), 'qid docid grade' "
            "or TREC 'qid 0 docid grade' lines")
        pipelines: dict[Annotated[str, Field(pattern=SYSTEM_PATTERN)], CheckedPipeline] = Field(
            min_length=1, max_length=MAX_SYSTEMS,
            description="name -> pipeline; the first is the baseline of the comparison")
        max_queries: int | None = Field(None, ge=1, le=max_eval_queries,
                                        description="evaluate only the first judged queries")

    class EmbeddingsRequest(_In):
        input: Input
        model: str | None = Field(None, max_length=200)
        encoding_format: Literal["float", "base64"] = "float"
        user: str | None = Field(None, max_length=200, description="ignored")

    class SparseEmbeddingsRequest(_In):
        input: Input
        model: str | None = Field(None, max_length=200)
        top_k: int | None = Field(None, ge=1, le=100_000,
                                  description="keep only the heaviest terms")
        token_format: Literal["raw", "elasticsearch"] = Field(
            "raw", description="elasticsearch: tokens as valid Elasticsearch feature names "
            "('%' -> '%25', '.' -> '%2E'; see genseek.api.elastic.es_feature_name)")

    class RerankRequest(_In):
        query: Query
        documents: list[LongText] = Field(min_length=1, max_length=max_batch_docs)
        top_n: int | None = Field(None, ge=1)
        model: str | None = Field(None, max_length=64, description="a configured reranker "
                                  "name (default: the first one)")
        return_documents: bool = False

        _blank = field_validator("query")(_not_blank)

    return Schemas(UpsertRequest, DeleteRequest, BatchSearchRequest, EvaluateRequest,
                   EmbeddingsRequest, SparseEmbeddingsRequest, RerankRequest)
