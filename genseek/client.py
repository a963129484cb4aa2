"""A thin typed client for the HTTP API (:mod:`genseek.api`), over httpx.

Pipelines are the same :class:`genseek.pipeline.Pipeline` objects the server
runs; results come back as :class:`genseek.pipeline.Result`::

    from genseek.client import GenseekClient
    from genseek.pipeline import Pipeline, Stage

    with GenseekClient("http://127.0.0.1:8080", api_key="...") as client:
        client.create_collection("docs", {"bm25": "bm25", "dense": "dense"})
        client.upsert("docs", [{"id": "d1", "title": "Wings", "text": "lift and drag"}],
                      refresh=True)
        for r in client.search("docs", "lift", Pipeline(retrieve=[Stage(index="bm25")])):
            print(r.doc_id, r.score)

Every non-2xx answer raises :class:`GenseekClientError` with the status and the
server's one-line message; transport failures (refused connection, timeout)
raise it too, with ``status`` 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from genseek.errors import GenseekError
from genseek.pipeline import Pipeline, Result
from genseek.registry import check_spec
from genseek.types import Document

DocumentLike = Document | Mapping[str, Any]


class GenseekClientError(GenseekError):
    """A request the server refused or that never got an answer (``status`` 0)."""

    def __init__(self, status: int, message: str, type: str = "error",
                 details: list[dict[str, Any]] | None = None):
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.type = type
        self.details = details or []


@dataclass(frozen=True)
class WriteResult:
    """The answer to an upsert or a delete."""

    seq: int
    refreshed: bool
    upserted: int = 0
    unchanged: int = 0
    deleted: int = 0
    missing: int = 0


def _doc_json(doc: DocumentLike) -> dict[str, Any]:
    if isinstance(doc, Document):
        return {"id": doc.doc_id, "title": doc.title, "text": doc.text,
                "metadata": dict(doc.metadata)}
    out = dict(doc)
    if "id" not in out and "doc_id" in out:
        out["id"] = out.pop("doc_id")
    return out


def _result(item: Mapping[str, Any]) -> Result:
    return Result(item["doc_id"], item["score"], title=item.get("title"),
                  text=item.get("text"), metadata=item.get("metadata"))


def _pipeline_json(pipeline: Pipeline | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if pipeline is None:
        return None
    if isinstance(pipeline, Pipeline):
        return pipeline.model_dump(mode="json")
    return Pipeline.model_validate(pipeline).model_dump(mode="json")


class GenseekClient:
    """One connection pool to a genseek server; use as a context manager or ``close()``."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None,
                 headers: Mapping[str, str] | None = None):
        all_headers = {"User-Agent": "genseek-client", **(headers or {})}
        if api_key:
            all_headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout,
                                  headers=all_headers, transport=transport)

    # -- plumbing -------------------------------------------------------------------------

    def request(self, method: str, path: str, json: Any = None,
                expect: tuple[int, ...] = (200,)) -> Any:
        """Send one request; the decoded JSON answer, or GenseekClientError."""
        try:
            response = self._http.request(method, path, json=json)
        except httpx.TimeoutException as exc:
            raise GenseekClientError(0, f"no answer from {self._http.base_url} in time: "
                                     f"{exc}", "timeout") from None
        except httpx.TransportError as exc:
            raise GenseekClientError(0, f"cannot reach {self._http.base_url}: {exc}",
                                     "connection") from None
        if response.status_code not in expect:
            raise self._error(response)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    @staticmethod
    def _error(response: httpx.Response) -> GenseekClientError:
        try:
            error = response.json().get("error", {})
            return GenseekClientError(response.status_code, str(error.get("message", "")),
                                      str(error.get("type", "error")), error.get("details"))
        except (ValueError, AttributeError):
            return GenseekClientError(response.status_code, response.text[:500] or
                                      response.reason_phrase)

    @staticmethod
    def _name(name: str) -> str:
        return quote(name, safe="")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GenseekClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- service --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health")

    def ready(self) -> dict[str, Any]:
        """``{"status": "ready"|"catching_up"|"degraded"|"shutting_down", "collections":
        {name: {"state", "lag", "indexes": {...}}}}`` (never raises on 503)."""
        return self.request("GET", "/ready", expect=(200, 503))

    def collection_ready(self, name: str) -> dict[str, Any]:
        """``{"name", "state", "lag", "indexes": {index: {"state", "lag", "error"}}}``: state
        ``ready`` when every index is current (never raises on 503)."""
        return self.request("GET", f"/collections/{name}/ready", expect=(200, 503))

    def metrics(self) -> str:
        return self.request("GET", "/metrics")

    # -- collections ----------------------------------------------------------------------

    def create_collection(self, name: str, indexes: Mapping[str, str] | None = None,
                          exist_ok: bool = False) -> dict[str, Any]:
        """Create ``name`` with ``{index name: spec}`` (server default: bm25 and dense).

        With ``exist_ok``, an existing collection with the same indexes is no error (its
        stats are returned), so a script can be run twice; different indexes still are (409).
        """
        body: dict[str, Any] = {"name": name}
        if indexes is not None:
            body["indexes"] = dict(indexes)
        try:
            return self.request("POST", "/collections", body, expect=(201,))
        except GenseekClientError as exc:
            if not exist_ok or exc.status != 409:
                raise
            stats = self.collection_stats(name)
            have = {n: s["spec"] for n, s in stats["indexes"].items()}
            want = None if indexes is None else {n: str(check_spec(s)) for n, s in indexes.items()}
            if want is not None and have != want:
                raise GenseekClientError(409, f"collection {name!r} exists with indexes "
                                         f"{have}, not {want}", "conflict") from None
            return stats

    def list_collections(self) -> list[str]:
        return list(self.request("GET", "/collections")["collections"])

    def collection_stats(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/collections/{self._name(name)}")

    def delete_collection(self, name: str) -> None:
        self.request("DELETE", f"/collections/{self._name(name)}")

    # -- documents ------------------------------------------------------------------------

    def upsert(self, name: str, docs: Iterable[DocumentLike], refresh: bool = False) -> WriteResult:
        """Add or replace documents (``Document`` objects or ``{"id", "title", "text",
        "metadata"}`` dicts); ``refresh`` waits until every index has applied them."""
        out = self.request("POST", f"/collections/{self._name(name)}/documents",
                           {"documents": [_doc_json(d) for d in docs], "refresh": refresh})
        return WriteResult(out["seq"], out["refreshed"], upserted=out["upserted"],
                           unchanged=out["unchanged"])

    def delete(self, name: str, ids: Iterable[str], refresh: bool = False) -> WriteResult:
        out = self.request("POST", f"/collections/{self._name(name)}/documents/delete",
                           {"ids": list(ids), "refresh": refresh})
        return WriteResult(out["seq"], out["refreshed"], deleted=out["deleted"],
                           missing=out["missing"])

    def get_document(self, name: str, doc_id: str) -> Document:
        """The stored document; GenseekClientError with status 404 if absent."""
        out = self.request("GET", f"/collections/{self._name(name)}/documents/"
                           f"{quote(doc_id, safe='')}")
        return Document(out["id"], out["title"], out["text"], out["metadata"], out["version"])

    # -- search ---------------------------------------------------------------------------

    def search(self, name: str, query: str,
               pipeline: Pipeline | Mapping[str, Any] | None = None) -> list[Result]:
        """Results for one query (server default pipeline: RRF over all indexes, k = 10)."""
        body: dict[str, Any] = {"query": query}
        if pipeline is not None:
            body["pipeline"] = _pipeline_json(pipeline)
        out = self.request("POST", f"/collections/{self._name(name)}/search", body)
        return [_result(r) for r in out["results"]]

    def search_batch(self, name: str, queries: Sequence[str],
                     pipeline: Pipeline | Mapping[str, Any] | None = None) -> list[list[Result]]:
        body: dict[str, Any] = {"queries": list(queries)}
        if pipeline is not None:
            body["pipeline"] = _pipeline_json(pipeline)
        out = self.request("POST", f"/collections/{self._name(name)}/search/batch", body)
        return [[_result(r) for r in rs] for rs in out["results"]]

    # -- models ---------------------------------------------------------------------------

    def embeddings(self, texts: str | Sequence[str], model: str | None = None) -> list[list[float]]:
        """One dense vector per text (a single string gives a list of one)."""
        body: dict[str, Any] = {"input": texts if isinstance(texts, str) else list(texts)}
        if model is not None:
            body["model"] = model
        out = self.request("POST", "/v1/embeddings", body)
        return [d["embedding"] for d in sorted(out["data"], key=lambda d: d["index"])]

    def sparse_embeddings(self, texts: str | Sequence[str],
                          top_k: int | None = None) -> list[dict[str, float]]:
        """One ``{token: weight}`` dict per text."""
        body: dict[str, Any] = {"input": texts if isinstance(texts, str) else list(texts)}
        if top_k is not None:
            body["top_k"] = top_k
        out = self.request("POST", "/v1/sparse-embeddings", body)
        return [{t["token"]: t["weight"] for t in d["embedding"]}
                for d in sorted(out["data"], key=lambda d: d["index"])]

    def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None,
               model: str | None = None) -> list[tuple[int, float]]:
        """``(index into documents, relevance score)`` pairs, best first."""
        body: dict[str, Any] = {"query": query, "documents": list(documents)}
        if top_n is not None:
            body["top_n"] = top_n
        if model is not None:
            body["model"] = model
        out = self.request("POST", "/v1/rerank", body)
        return [(r["index"], r["relevance_score"]) for r in out["results"]]
