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

from pydantic import BaseModel, ConfigDict, Field, field_validator

from genseek.pipeline import Pipeline

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
"""Collection and index names (:func:`genseek.spec.validate_name`)."""
MAX_ID_CHARS = 1024
MAX_QUERY_CHARS = 10_000
MAX_SPEC_CHARS = 1000
MAX_INDEXES = 16
DEFAULT_INDEXES = {"bm25": "bm25", "dense": "dense"}

Name = Annotated[str, Field(pattern=NAME_PATTERN, min_length=1, max_length=64)]
DocId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
Query = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS,
                             description="non-blank text")]


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


class ReadyCollection(_Out):
    lag: int
    sync_error: str | None = None


class ReadyOut(_Out):
    status: Literal["ready", "not_ready"]
    collections: dict[str, ReadyCollection]


# -- collections -----------------------------------------------------------------------------


class CreateCollection(_In):
    name: Name
    indexes: dict[Name, Annotated[str, Field(min_length=1, max_length=MAX_SPEC_CHARS)]] = Field(
        default_factory=lambda: dict(DEFAULT_INDEXES), min_length=1, max_length=MAX_INDEXES,
        description="index name -> spec, e.g. {\"bm25\": \"bm25\", \"dense\": \"dense\"} "
                    "(the default); a spec the server cannot build is a 400",
        examples=[{"bm25": "bm25"}, {"bm25": "bm25", "dense": "dense"}],
        json_schema_extra={"additionalProperties": False})


class CollectionList(_Out):
    collections: list[str]


class IndexStats(_Out):
    spec: str
    documents: int
    applied_seq: int
    lag: int
    disk_bytes: int | None = None


class CollectionStats(_Out):
    name: str
    documents: int
    seq: int
    applied_seq: int
    lag: int
    sync_error: str | None = None
    disk_bytes: int | None = None
    indexes: dict[str, IndexStats]


class Dropped(_Out):
    name: str
    dropped: bool


# -- documents -------------------------------------------------------------------------------


class DocumentIn(_In):
    id: DocId
    title: str = ""
    text: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


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


class SearchOut(_Out):
    results: list[ResultOut]
    took_ms: float


class BatchSearchOut(_Out):
    results: list[list[ResultOut]]
    took_ms: float


class _WithPipeline(_In):
    pipeline: Pipeline | None = Field(
        None, description="default: RRF over every index of the collection, k = 10")

    @field_validator("pipeline")
    @classmethod
    def _finite_weights(cls, pipeline: Pipeline | None) -> Pipeline | None:
        weights = pipeline.fusion.weights if pipeline is not None else None
        if weights and not all(math.isfinite(w) for w in weights):
            raise ValueError("fusion.weights must be finite numbers")
        return pipeline


class SearchRequest(_WithPipeline):
    query: Query

    _blank = field_validator("query")(_not_blank)


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
    EmbeddingsRequest: type[BaseModel]
    SparseEmbeddingsRequest: type[BaseModel]
    RerankRequest: type[BaseModel]


def build(max_batch_docs: int, max_queries: int) -> Schemas:
    """Request models with ``max_batch_docs`` and ``max_queries`` as their list bounds."""
    Texts = Annotated[list[Annotated[str, Field(max_length=1_000_000)]],
                      Field(min_length=1, max_length=max_batch_docs)]
    Input = Annotated[str, Field(max_length=1_000_000)] | Texts

    class UpsertRequest(_In):
        documents: list[DocumentIn] = Field(min_length=1, max_length=max_batch_docs)
        refresh: bool = Field(False, description="wait until every index has applied the "
                              "write (bounded by the request timeout)")

    class DeleteRequest(_In):
        ids: list[DocId] = Field(min_length=1, max_length=max_batch_docs)
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
        documents: list[Annotated[str, Field(max_length=1_000_000)]] = Field(
            min_length=1, max_length=max_batch_docs)
        top_n: int | None = Field(None, ge=1)
        model: str | None = Field(None, max_length=64, description="a configured reranker "
                                  "name (default: the first one)")
        return_documents: bool = False

        _blank = field_validator("query")(_not_blank)

    return Schemas(UpsertRequest, DeleteRequest, BatchSearchRequest, EmbeddingsRequest,
                   SparseEmbeddingsRequest, RerankRequest)
