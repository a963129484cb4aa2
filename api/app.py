"""The FastAPI app: :func:`create_app` builds one over a :class:`Settings`.

Every route of the contract in :mod:`genseek.api` is here. Blocking work (the
document store, Lucene, faiss, torch) runs in worker threads, so the event loop
keeps accepting requests (and searches keep being served while a collection's
background applier updates its indexes). Everything the app owns hangs off
``app.state.genseek`` (:class:`ApiState`); nothing is global.
"""

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
import numpy as np
from fastapi import FastAPI, Path, Request
from fastapi.openapi.utils import get_openapi
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from genseek.api import errors, schemas
from genseek.api.errors import JSON
from genseek.api.manager import CollectionManager, ModelHub, Preloader
from genseek.api.metrics import CONTENT_TYPE, Metrics
from genseek.api.middleware import (
    PUBLIC_PATHS,
    AuthMiddleware,
    BodyLimitMiddleware,
    ObserveMiddleware,
    TimeoutMiddleware,
)
from genseek.api.schemas import NAME_PATTERN
from genseek.api.settings import Settings
from genseek.collection import Collection
from genseek.errors import GenseekError, InputError, NotFoundError
from genseek.models import MODELS
from genseek.pipeline import Pipeline, PipelineRetriever, Result, Trace, run_pipeline
from genseek.protocols import Reranker, Retriever
from genseek.types import Document

log = logging.getLogger("genseek.api")

T = TypeVar("T")

CollectionName = Annotated[str, Path(pattern=NAME_PATTERN, min_length=1, max_length=64,
                                     description="a collection name")]
DocIdPath = Annotated[str, Path(min_length=1, max_length=schemas.MAX_ID_CHARS)]

UI_DIR = FilePath(__file__).resolve().parent / "ui"
"""The console's static files, served at ``/ui/`` (shipped as package data)."""
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
EVAL_MEASURES = ("nDCG@10", "R@100")
"""What ``POST /collections/{name}/evaluate`` measures (each pipeline runs to depth 100)."""
EVAL_DEPTH = 100
COUNT_LIMIT_BYTES = 64 * 1024 * 1024
"""``GET /datasets`` counts a corpus's documents only up to this size (else null)."""


@dataclass
class ApiState:
    """What one app owns: ``app.state.genseek``."""

    settings: Settings
    manager: CollectionManager
    models: ModelHub
    metrics: Metrics
    _wait_limiter: Any = field(default=None, repr=False)
    _line_counts: dict[tuple[str, int, int], int] = field(default_factory=dict, repr=False)
    _counts_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_lines(self, path: FilePath, limit: int | None = None) -> int | None:
        """Lines of ``path`` (cached while its size and mtime stay), None when it is absent
        or over ``limit`` bytes."""
        from genseek.data.readers import count_lines

        try:
            stat = path.stat()
        except OSError:
            return None
        if limit is not None and stat.st_size > limit:
            return None
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._counts_lock:
            if key in self._line_counts:
                return self._line_counts[key]
        count = count_lines(path)
        with self._counts_lock:
            self._line_counts[key] = count
        return count

    @property
    def wait_limiter(self) -> anyio.CapacityLimiter:
        """Threads that only wait (``refresh``), apart from the search/write pool."""
        if self._wait_limiter is None:
            self._wait_limiter = anyio.CapacityLimiter(64)
        return self._wait_limiter


def _err(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "bad request", 401: "no or unknown API key", 403: "the key lacks the scope",
            404: "not found", 409: "conflict", 413: "body too large",
            422: "invalid request body or parameters", 503: "unavailable",
            504: "over the request timeout"}
    return {c: {"model": schemas.ErrorBody, "description": text[c]} for c in codes}


_COMMON = (400, 401, 403, 413, 422, 504)


def create_app(settings: Settings) -> FastAPI:
    """The ASGI app serving the collections under ``settings.root``."""
    manager = CollectionManager(settings.root, drain_timeout=settings.request_timeout_s)
    hub = ModelHub(settings)
    preloader = Preloader(manager, hub, settings.preload)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        manager.reopen()
        log.info("serving collections in %s", manager.root)
        preloader.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(preloader.stop)
            await anyio.to_thread.run_sync(manager.close)
            log.info("closed every collection")

    app = FastAPI(title="genseek", version=_version(),
                  description="Search collections of lexical (bm25, learned-sparse), vector "
                  "(dense, SPANN, RepCONC, MUVERA) and generative (GENRE, SEAL, DSI) indexes: "
                  "pipelines with fusion, filters and reranking; embeddings and reranking "
                  "endpoints.",
                  lifespan=lifespan, default_response_class=JSON)
    st = ApiState(settings, manager, hub, Metrics(manager))
    app.state.genseek = st
    s = schemas.build(settings.max_batch_docs, settings.max_queries, settings.max_eval_queries)
    errors.install(app)

    # Added innermost first: each add_middleware wraps what is already there.
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(TimeoutMiddleware, timeout=settings.request_timeout_s)
    public = PUBLIC_PATHS | ({"/metrics"} if settings.public_metrics else set())
    app.add_middleware(AuthMiddleware, api_keys=settings.api_keys, public=frozenset(public))
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"],
                           expose_headers=["X-Request-ID"], max_age=600)
    app.add_middleware(ObserveMiddleware, routes=app.router.routes, metrics=st.metrics)

    _service_routes(app, st, preloader)
    _collections_routes(app, st)
    _documents_routes(app, st, s)
    _search_routes(app, st, s)
    _evaluation_routes(app, st, s)
    _models_routes(app, st, s)
    _console_routes(app)
    _install_openapi(app)
    return app


# -- routes -------------------------------------------------------------------------------


async def blocking(fn: Callable[[], T], limiter: anyio.CapacityLimiter | None = None) -> T:
    """Run blocking ``fn`` in a worker thread (the store, Lucene, faiss, torch)."""
    # abandon_on_cancel: a request past its timeout answers 504 at once; the thread
    # finishes on its own (holding its collection reference until then).
    return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=limiter)


def _service_routes(app: FastAPI, st: ApiState, preloader: Preloader) -> None:
    """Routes: health, readiness and metrics."""
    settings, manager = st.settings, st.manager


    @app.get("/health", response_model=schemas.HealthOut, tags=["service"])
    async def health() -> Response:
        """The process is up."""
        return JSON({"status": "ok"})

    @app.get("/ready", response_model=schemas.ReadyOut, tags=["service"],
             responses={503: {"model": schemas.ReadyOut, "description": "shutting down"}})
    async def ready(request: Request) -> Response:
        """200 while the server serves: ``status`` is ``ready`` (every index of every open
        collection current), ``catching_up`` (some index behind) or ``degraded`` (some index
        failed: it answers its own searches with 503, the others keep serving); 503 only
        while shutting down. Per collection and index details need the read scope (or a
        server without keys)."""
        if manager.closed:
            return JSON({"status": "shutting_down"}, status_code=503)

        def work() -> dict[str, Any]:
            return {name: _health(coll) for name, coll in manager.open_collections()}

        collections = await blocking(work)
        worst = _worst(c["state"] for c in collections.values())
        body: dict[str, Any] = {"status": "degraded" if worst == "failed" else worst}
        if _may_read(request, settings):
            body["collections"] = collections
            loads = MODELS.status()
            body["models"] = {"loaded": sorted(loads["loaded"]),
                              "loading": sorted(loads["loading"]),
                              "preload": preloader.status()}
        return JSON(body)

    @app.get("/metrics", tags=["service"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}})
    async def metrics() -> Response:
        """Prometheus metrics (text format)."""
        body = await blocking(st.metrics.render)
        return Response(body, media_type=CONTENT_TYPE)


def _collections_routes(app: FastAPI, st: ApiState) -> None:
    """Routes: create, list, describe, check and drop collections."""
    settings, manager = st.settings, st.manager


    @app.get("/collections", response_model=schemas.CollectionList, tags=["collections"],
             responses=_err(401, 403, 504))
    async def list_collections() -> Response:
        """Every collection in the server's folder."""
        return JSON({"collections": await blocking(manager.names)})

    @app.post("/collections", status_code=201, response_model=schemas.CollectionStats,
              tags=["collections"], responses=_err(*_COMMON, 409))
    async def create_collection(body: schemas.CreateCollection) -> Response:
        """Create a collection with the given indexes (default: bm25 and dense)."""
        _check_specs(body.indexes, settings)

        def work() -> dict[str, Any]:
            manager.create(body.name, dict(body.indexes), body.shards)
            with manager.use(body.name) as coll:
                return _stats(body.name, coll)

        return JSON(await blocking(work), status_code=201)

    @app.get("/collections/{name}", response_model=schemas.CollectionStats,
             tags=["collections"], responses=_err(401, 403, 404, 422, 504))
    async def collection_stats(name: CollectionName) -> Response:
        """Documents, sequence numbers and per-index state (applied_seq, lag)."""
        def work() -> dict[str, Any]:
            with manager.use(name) as coll:
                return _stats(name, coll)

        return JSON(await blocking(work))

    @app.get("/collections/{name}/ready", response_model=schemas.CollectionReady,
             tags=["collections"], responses={**_err(401, 403, 404, 422, 504), 503: {
                 "model": schemas.CollectionReady, "description": "an index is behind or failed"}})
    async def collection_ready(name: CollectionName) -> Response:
        """200 when every index of the collection has applied every write; 503 naming the
        indexes that are behind (``catching_up``) or ``failed``, with their errors."""
        def work() -> dict[str, Any]:
            with manager.use(name) as coll:
                return _health(coll)

        health = await blocking(work)
        ok = health["state"] == "ready"
        return JSON({"name": name, **health}, status_code=200 if ok else 503)

    @app.delete("/collections/{name}", response_model=schemas.Dropped, tags=["collections"],
                responses=_err(401, 403, 404, 409, 422, 504))
    async def delete_collection(name: CollectionName) -> Response:
        """Drop a collection and its folder (waits for the requests using it)."""
        await blocking(lambda: manager.drop(name))
        return JSON({"name": name, "dropped": True})


def _documents_routes(app: FastAPI, st: ApiState, s: Any) -> None:
    """Routes: write, delete and read documents."""
    settings, manager = st.settings, st.manager


    async def _refresh(request: Request, name: str, seq: int, wait: bool) -> bool:
        def check() -> bool:
            with manager.use(name) as coll:
                return coll.applied_seq >= seq

        if not wait:
            return await blocking(check)
        deadline = request.scope.get("state", {}).get("deadline")
        margin = min(1.0, settings.request_timeout_s * 0.1)
        left = (deadline - anyio.current_time() - margin) if deadline is not None \
            else settings.request_timeout_s - margin

        def work() -> bool:
            with manager.use(name) as coll:
                return coll.wait_for(seq, timeout=max(0.0, left))

        return await blocking(work, st.wait_limiter)

    @app.post("/collections/{name}/documents", response_model=schemas.WriteOut,
              tags=["documents"], responses=_err(*_COMMON, 404))
    async def upsert_documents(name: CollectionName, body: s.UpsertRequest,  # type: ignore[name-defined]
                               request: Request) -> Response:
        """Add or replace documents. Acknowledged once the document store has committed
        them; ``refresh: true`` also waits until every index has applied them."""
        docs = [Document(d.id, d.title, d.text, d.metadata) for d in body.documents]

        def work():
            with manager.use(name) as coll:
                return coll.write(docs, sync=False)

        result = await blocking(work)
        refreshed = await _refresh(request, name, result.seq, body.refresh)
        return JSON({"seq": result.seq, "upserted": result.upserted,
                     "unchanged": result.unchanged, "refreshed": refreshed})

    @app.post("/collections/{name}/documents/delete", response_model=schemas.DeleteOut,
              tags=["documents"], responses=_err(*_COMMON, 404))
    async def delete_documents(name: CollectionName, body: s.DeleteRequest,  # type: ignore[name-defined]
                               request: Request) -> Response:
        """Delete documents by id (ids not in the collection count as ``missing``)."""
        def work():
            with manager.use(name) as coll:
                return coll.write(deletes=list(body.ids), sync=False)

        result = await blocking(work)
        refreshed = await _refresh(request, name, result.seq, body.refresh)
        return JSON({"seq": result.seq, "deleted": result.deleted, "missing": result.missing,
                     "refreshed": refreshed})

    @app.get("/collections/{name}/documents/{doc_id:path}", response_model=schemas.DocumentOut,
             tags=["documents"], responses=_err(401, 403, 404, 422, 504))
    async def get_document(name: CollectionName, doc_id: DocIdPath) -> Response:
        """The stored document (404 if absent)."""
        def work() -> Document | None:
            with manager.use(name) as coll:
                return coll.get([doc_id]).get(doc_id)

        doc = await blocking(work)
        if doc is None:
            raise NotFoundError(f"no document {doc_id!r} in collection {name!r}")
        return JSON({"id": doc.doc_id, "title": doc.title, "text": doc.text,
                     "metadata": dict(doc.metadata), "version": doc.version})


@dataclass
class _Plan:
    """A pipeline ready to run on an open collection (:func:`_plan`)."""

    pipeline: Pipeline
    indexes: dict[str, Retriever]
    rerankers: dict[str, Reranker] | None
    warnings: list[str]


def _plan(st: ApiState, name: str, coll: Collection, pipeline: Pipeline | None) -> _Plan:
    """``pipeline`` (None: the default, every serving index, with a warning per index left
    out) with its indexes as serving now (timed in ``genseek_search_seconds``) and its reranker:
    what a search and an evaluation both run."""
    warnings: list[str] = []
    if pipeline is None:  # every serving index; say which ones were left out
        p = _default_pipeline(name, coll)
        warnings = [f"index {n!r} is unavailable and was left out: {error}"
                    for n, error in sorted(coll.unavailable().items())]
    else:
        p = pipeline
    # a named index that does not exist is a 404, one that is failing a 503
    indexes = {stage.index: coll.serving(stage.index) for stage in p.retrieve}
    rerankers = None
    if p.rerank is not None:
        rerankers = {p.rerank.reranker: st.models.reranker(p.rerank.reranker)}
    timed = {n: st.metrics.timed(name, n, index) for n, index in indexes.items()}
    return _Plan(p, timed, rerankers, warnings)


def _search_routes(app: FastAPI, st: ApiState, s: Any) -> None:
    """Routes: one query or a batch through a pipeline."""
    manager = st.manager


    async def _search(name: str, queries: list[str], pipeline: Pipeline | None,
                      trace: Trace | None = None,
                      ) -> tuple[list[list[Result]], float, list[str]]:
        def work() -> tuple[list[list[Result]], list[str]]:
            with manager.use(name) as coll:
                plan = _plan(st, name, coll, pipeline)
                return run_pipeline(plan.pipeline, queries, plan.indexes, coll.get,
                                    plan.rerankers, coll.search_params, trace), plan.warnings

        start = time.perf_counter()
        results, warnings = await blocking(work)
        return results, round((time.perf_counter() - start) * 1000, 3), warnings

    def _search_body(results: list[Any], took: float, warnings: list[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"results": results, "took_ms": took}
        if warnings:
            body["warnings"] = warnings
        return body

    @app.post("/collections/{name}/search", response_model=schemas.SearchOut, tags=["search"],
              responses=_err(*_COMMON, 404))
    async def search(name: CollectionName, body: schemas.SearchRequest) -> Response:
        """Search one query with a pipeline (default: RRF over every index, k = 10).
        An empty or whitespace-only query is a 422. ``explain: true`` adds ``stages`` (each
        retrieval stage's own top k before fusion, in pipeline order) and ``timings``."""
        trace = Trace() if body.explain else None
        results, took, warnings = await _search(name, [body.query], body.pipeline, trace)
        out = _search_body([r.to_dict() for r in results[0]], took, warnings)
        if trace is not None:
            out.update(trace.to_dict(0))
        return JSON(out)

    @app.post("/collections/{name}/search/batch", response_model=schemas.BatchSearchOut,
              tags=["search"], responses=_err(*_COMMON, 404))
    async def search_batch(name: CollectionName, body: s.BatchSearchRequest) -> Response:  # type: ignore[name-defined]
        """Search a batch of queries with one pipeline; one result list per query."""
        results, took, warnings = await _search(name, list(body.queries), body.pipeline)
        return JSON(_search_body([[r.to_dict() for r in rs] for rs in results], took, warnings))


def _dataset_folder(settings: Settings, name: str) -> tuple[FilePath, list[str]]:
    """The folder and splits of dataset ``name`` of the server's datasets folder, or a 404
    naming the datasets there (only what :func:`genseek.data.readers.list_datasets` lists)."""
    from genseek.data.readers import list_datasets

    if settings.datasets_root is None:
        raise NotFoundError("dataset: this server reads no datasets (GENSEEK_API_DATASETS=off); "
                            "upload queries and qrels instead")
    found = {n: (folder, splits) for n, folder, splits
             in list_datasets(settings.datasets_root, NAME_PATTERN)}
    if name not in found:
        raise NotFoundError(f"dataset: no dataset {name!r} in the server's datasets folder "
                            f"(datasets: {', '.join(found) or 'none'})")
    return found[name]


def _eval_inputs(settings: Settings, body: Any) -> tuple[dict[str, str],
                                                          dict[str, dict[str, int]]]:
    """The topics and qrels an evaluation runs: from the request where it gives them, else
    from its dataset; only the judged queries, the first ``max_queries`` of them."""
    from genseek.data.readers import parse_qrels, read_queries

    folder = None
    if body.dataset is not None:
        folder, splits = _dataset_folder(settings, body.dataset)
    if body.qrels is not None and body.qrels_tsv is not None:
        raise InputError("qrels, qrels_tsv: give one of them, not both")
    if body.qrels is not None:
        qrels: dict[str, dict[str, int]] = {q: dict(d) for q, d in body.qrels.items()}
    elif body.qrels_tsv is not None:
        qrels = parse_qrels(body.qrels_tsv.splitlines(), "qrels_tsv")
    elif folder is not None:
        if body.split not in splits:
            raise NotFoundError(f"split: dataset {body.dataset!r} has no split {body.split!r} "
                                f"(splits: {', '.join(splits)})")
        where = f"{body.dataset}/qrels/{body.split}.tsv"
        with open(folder / "qrels" / f"{body.split}.tsv", encoding="utf-8", newline="") as fh:
            qrels = parse_qrels(fh, where)
    else:
        raise InputError("dataset: give a dataset, or qrels (qrels or qrels_tsv) with queries")
    if body.queries is not None:
        queries: Mapping[str, str] = body.queries
    elif folder is not None:
        queries = read_queries(folder)
    else:
        raise InputError("queries: uploaded qrels need their queries (or a dataset to take "
                         "them from)")
    judged = [q for q, docs in qrels.items() if docs]
    if not judged:
        raise InputError("qrels: no judged queries (no query has a judged document)")
    missing = [q for q in judged if q not in queries]
    if missing:
        source = "queries" if body.queries is not None else f"{body.dataset}/queries.jsonl"
        raise InputError(f"qrels: judged query {missing[0]!r} has no text in {source} "
                         f"({len(missing)} of {len(judged)} judged queries have none)")
    if body.max_queries is not None:
        judged = judged[:body.max_queries]
    if len(judged) > settings.max_eval_queries:
        raise InputError(f"max_queries: {len(judged)} judged queries, and this server evaluates "
                         f"at most {settings.max_eval_queries} at a time "
                         "(GENSEEK_MAX_EVAL_QUERIES): set max_queries")
    return {q: queries[q] for q in judged}, {q: qrels[q] for q in judged}


def _evaluation_routes(app: FastAPI, st: ApiState, s: Any) -> None:
    """Routes: the datasets the server can read, and evaluating pipelines on judged queries."""
    settings, manager = st.settings, st.manager


    @app.get("/datasets", response_model=schemas.DatasetList, tags=["evaluation"],
             responses=_err(401, 403, 504))
    async def datasets() -> Response:
        """The BEIR datasets of the server's datasets folder (``GENSEEK_API_DATASETS``, by
        default ``$GENSEEK_DATASETS``): each direct sub-folder with ``queries.jsonl`` and
        ``qrels/<split>.tsv``, its splits and counts (``documents`` null when the corpus is
        absent or large)."""
        from genseek.data.readers import list_datasets

        root = settings.datasets_root
        if root is None:
            return JSON({"root": None, "datasets": []})

        def work() -> list[dict[str, Any]]:
            return [{"name": name, "splits": splits,
                     "queries": st.count_lines(folder / "queries.jsonl") or 0,
                     "documents": st.count_lines(folder / "corpus.jsonl", COUNT_LIMIT_BYTES)}
                    for name, folder, splits in list_datasets(root, NAME_PATTERN)]

        return JSON({"root": str(root), "datasets": await blocking(work)})

    @app.post("/collections/{name}/evaluate", response_model=schemas.EvaluateOut,
              tags=["evaluation"], responses=_err(*_COMMON, 404))
    async def evaluate(name: CollectionName, body: s.EvaluateRequest) -> Response:  # type: ignore[name-defined]
        """Run the judged queries of a dataset (or of uploaded qrels) through 1-4 named
        pipelines, each to depth 100 (its final k raised to at least 100), and score them
        with nDCG@10 and R@100 (genseek.evaluation): the means, the per-query values, and each
        pipeline against the first (mean difference, wins/ties/losses, paired randomisation
        test p-value)."""
        from genseek.evaluation import experiment

        def work() -> dict[str, Any]:
            topics, qrels = _eval_inputs(settings, body)
            with manager.use(name) as coll:
                systems: dict[str, Retriever] = {}
                for system, pipeline in body.pipelines.items():
                    try:
                        plan = _plan(st, name, coll, pipeline)
                        systems[system] = PipelineRetriever(plan.pipeline, plan.indexes,
                                                            coll.get, plan.rerankers,
                                                            coll.search_params)
                    except GenseekError as exc:
                        raise type(exc)(f"pipelines.{system}: {exc}") from None
                baseline = next(iter(systems))
                result = experiment(systems, topics, qrels, EVAL_MEASURES, k=EVAL_DEPTH,
                                    baseline=baseline)
            return _evaluation_body(result, topics, qrels)

        start = time.perf_counter()
        out = await blocking(work)
        out["took_ms"] = round((time.perf_counter() - start) * 1000, 3)
        return JSON(out)


def _evaluation_body(result: Any, topics: dict[str, str],
                     qrels: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The answer of ``POST .../evaluate`` from an :class:`~genseek.evaluation.ExperimentResult`."""
    measures = list(result.measures)
    return {
        "measures": measures,
        "systems": result.metrics,
        "per_query": {system: {q: {m: values[m][q] for m in measures} for q in result.query_ids}
                      for system, values in result.per_query.items()},
        "comparison": {"baseline": result.baseline, "against": {
            system: {m: {"mean_difference": c["delta"], "wins": c["wins"], "ties": c["ties"],
                         "losses": c["losses"], "p_value": c["p_value"]}
                     for m, c in by_measure.items()}
            for system, by_measure in result.significance.items()}},
        "queries": topics, "qrels": qrels}


class ConsoleFiles(StaticFiles):
    """The console's static files with the security headers of :data:`UI_HEADERS`; no
    directory listing, nothing outside :data:`UI_DIR` (Starlette's own checks)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(UI_HEADERS)
        return response


def _console_routes(app: FastAPI) -> None:
    """The browser console: ``/ui/`` (public: the page asks for the API key)."""

    @app.get("/ui", include_in_schema=False)
    async def console_redirect() -> Response:
        return RedirectResponse("/ui/", status_code=308, headers=UI_HEADERS)

    app.mount("/ui", ConsoleFiles(directory=UI_DIR, html=True, check_dir=False), name="ui")


def _models_routes(app: FastAPI, st: ApiState, s: Any) -> None:
    """Routes: the OpenAI/Cohere-shaped model endpoints: embeddings, sparse embeddings, rerank."""
    settings = st.settings


    @app.post("/v1/embeddings", response_model=schemas.EmbeddingsOut, tags=["models"],
              responses=_err(*_COMMON, 404))
    async def embeddings(body: s.EmbeddingsRequest) -> Response:  # type: ignore[name-defined]
        """Dense embeddings in OpenAI's shape (``encoding_format``: float or base64)."""
        model = settings.embedding_model
        if body.model not in (None, model):
            raise NotFoundError(f"model {body.model!r} is not served here; use {model!r}")
        texts = [body.input] if isinstance(body.input, str) else list(body.input)

        def work() -> tuple[np.ndarray, int]:
            encoder = st.models.encoder()
            return encoder.encode(texts), _count_tokens(encoder, texts)

        vectors, tokens = await blocking(work)
        data = []
        for i, vec in enumerate(vectors):
            if body.encoding_format == "base64":
                value: Any = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
            else:
                value = [float(x) for x in vec]
            data.append({"object": "embedding", "index": i, "embedding": value})
        return JSON({"object": "list", "data": data, "model": model,
                     "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    @app.post("/v1/sparse-embeddings", response_model=schemas.SparseEmbeddingsOut,
              tags=["models"], responses=_err(*_COMMON, 404))
    async def sparse_embeddings(body: s.SparseEmbeddingsRequest) -> Response:  # type: ignore[name-defined]
        """SPLADE sparse embeddings: ``{token, weight}`` terms, heaviest first."""
        model = settings.sparse_model
        if body.model not in (None, model):
            raise NotFoundError(f"model {body.model!r} is not served here; use {model!r}")
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        encoded = await blocking(lambda: st.models.sparse().encode(texts, top_k=body.top_k))
        if body.token_format == "elasticsearch":
            from genseek.api.elastic import es_feature_name

            encoded = [{es_feature_name(t): w for t, w in terms.items()} for terms in encoded]
        data = [{"object": "sparse_embedding", "index": i,
                 "embedding": [{"token": t, "weight": w}
                               for t, w in sorted(terms.items(), key=lambda kv: (-kv[1], kv[0]))]}
                for i, terms in enumerate(encoded)]
        return JSON({"object": "list", "data": data, "model": model})

    @app.post("/v1/rerank", response_model=schemas.RerankOut, tags=["models"],
              responses=_err(*_COMMON, 404))
    async def rerank(body: s.RerankRequest) -> Response:  # type: ignore[name-defined]
        """Rerank texts for a query (Cohere/Jina shape), best first, ``top_n`` of them."""
        names = st.models.reranker_names()
        name = body.model or (names[0] if names else None)
        if name is None:
            raise NotFoundError("no reranker is configured on this server")
        docs = list(body.documents)
        scores = await blocking(
            lambda: st.models.reranker(name).rank_batch([body.query], [docs])[0])
        order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))[:body.top_n]
        results = []
        for i in order:
            item: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
            if body.return_documents:
                item["document"] = {"text": docs[i]}
            results.append(item)
        return JSON({"results": results, "model": name})


# -- helpers ------------------------------------------------------------------------------


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("genseek")
    except Exception:  # noqa: BLE001 - not installed: a source checkout
        return "0"


def _worst(states: Iterable[str]) -> str:
    """``failed`` over ``catching_up`` over ``ready`` (``ready`` for none)."""
    found = set(states)
    return next((s for s in ("failed", "catching_up") if s in found), "ready")


def _health(coll: Collection) -> dict[str, Any]:
    """A collection's state (the worst of its indexes') and each index's."""
    indexes = coll.health()
    lag = max((i["lag"] or 0 for i in indexes.values()), default=0)
    return {"state": _worst(i["state"] for i in indexes.values()), "lag": lag,
            "indexes": indexes}


def _may_read(request: Request, settings: Settings) -> bool:
    """Whether the caller may see details: no keys configured, or a key with a scope."""
    if not settings.api_keys:
        return True
    return bool(request.scope.get("state", {}).get("scopes"))


def _stats(name: str, coll: Collection) -> dict[str, Any]:
    raw = coll.stats()
    seq = raw["seq"]
    indexes = raw["indexes"]
    seqs = [i["applied_seq"] for i in indexes.values() if i.get("applied_seq") is not None]
    return {"name": name, "documents": raw["documents"], "seq": seq,
            "applied_seq": min(seqs, default=seq),
            "lag": max((i.get("lag") or 0 for i in indexes.values()), default=0),
            "state": _worst(i.get("state", "ready") for i in indexes.values()),
            "sync_error": coll.sync_error, "disk_bytes": raw.get("disk_bytes"),
            "store_bytes": raw.get("store_bytes"), "indexes": indexes}


def _default_pipeline(name: str, coll: Collection) -> Pipeline:
    names = coll.default_indexes()  # IndexUnavailable if none is serving
    if not names:
        raise GenseekError(f"collection {name!r} has no indexes to search")
    return Pipeline.default(names)


def _count_tokens(encoder: Any, texts: list[str]) -> int:
    """Tokens the encoder reads (its tokenizer, truncated), else whitespace words."""
    tokenizer = getattr(getattr(encoder, "_model", None), "tokenizer", None)
    if tokenizer is not None:
        try:
            limit = int(getattr(encoder, "max_length", 512))
            ids = tokenizer(texts, truncation=True, max_length=limit)["input_ids"]
            return sum(len(x) for x in ids)
        except Exception:  # noqa: BLE001 - usage is informational
            pass
    return sum(len(t.split()) for t in texts)


_PATH_CHARS = ("/", "\\")


def _check_specs(indexes: dict[str, str], settings: Settings) -> None:
    """Index specs from clients may not name files, folders or unserved models."""
    from genseek.spec import IndexSpec

    allowed_models = {settings.embedding_model, "all-MiniLM-L6-v2"}
    for name, text in indexes.items():
        spec = IndexSpec.parse(text)
        for key, value in spec.params.items():
            if not isinstance(value, str):
                continue
            if key == "model" and value not in allowed_models:
                raise GenseekError(f"index {name!r}: model {value!r} is not served here; "
                                   f"use {' or '.join(sorted(allowed_models))}")
            if any(c in value for c in _PATH_CHARS) or value.startswith(("~", ".")):
                raise GenseekError(f"index {name!r}: parameter {key}={value!r} looks like a "
                                   "path; the API accepts no paths")


def _install_openapi(app: FastAPI) -> None:
    """Declare the two API key schemes and which operations need them."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        for path, ops in schema.get("paths", {}).items():
            if path in PUBLIC_PATHS:
                continue
            for op in ops.values():
                if isinstance(op, dict):
                    op["security"] = [{"bearer": []}, {"apiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["ApiState", "create_app"]
