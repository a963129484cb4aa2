"""A small Elasticsearch stand-in on 127.0.0.1 for the tests (CI has no real Elasticsearch).

It implements, in Elasticsearch's documented request and response formats, the
subset of the REST API that genseek's integration uses, well enough for the
official ``elasticsearch`` Python client (every answer carries
``X-Elastic-Product: Elasticsearch`` and the client's compatible media type):

- ``GET /`` (cluster info, version 9.1.0), ``HEAD|PUT|DELETE /{index}``,
  ``GET /{index}/_mapping`` (explicit mappings plus dynamic mapping: booleans,
  long/float, ISO-8601 strings -> ``date``, other strings -> ``text`` + ``keyword``),
  ``PUT|POST /{index}/_doc/{id}``, ``DELETE /{index}/_doc/{id}``, ``POST [/{index}]/_bulk``
  (``index``, ``create``, ``update`` with ``doc``/``doc_as_upsert``, ``delete``),
  ``POST /{index}/_refresh``, ``POST /{index}/_count``;
- ``POST /{index}/_pit?keep_alive=`` and ``DELETE /_pit``: a point in time is a frozen
  snapshot that expires after ``keep_alive`` (renewed by each search that uses it);
- ``POST /_search`` with ``pit`` (no index in the path, as Elasticsearch requires) and
  ``POST /{index}/_search``: ``query`` (``match_all``, ``bool`` with must / filter /
  should / must_not, ``range`` with ``format: epoch_millis``, ``term``, ``terms``,
  ``exists``, ``ids``, ``match``, ``multi_match`` scored with BM25), ``sort`` (fields,
  ``_score``, ``_doc``, ``_shard_doc``; dates sort by epoch milliseconds; missing values
  last), ``search_after`` (a PIT search gets the implicit ``_shard_doc`` tiebreaker),
  ``size``, ``from``, ``_source``;
- ``PUT|GET|DELETE /_inference/{task_type}/{id}``: stores ``custom`` service endpoints
  after the checks Elasticsearch makes when one is created (known keys only, the
  required ``url``/``request``/``response.json_parser`` keys per task type, every
  ``${...}`` of the request template filled from the predefined parameters,
  ``secret_parameters`` and ``task_settings.parameters``), and never returns secrets;
  ``POST /_inference/{task_type}/{id}`` renders the request template, calls the service
  over HTTP and parses its answer with the endpoint's JSONPath parsers (Elasticsearch's
  subset, inner lists kept), answering in Elasticsearch's inference result shapes;
- ``PUT|GET /_ingest/pipeline/{id}``.

``FakeElasticsearch.fail(...)`` makes a later matching request fail (fault injection).
"""

from __future__ import annotations

import base64
import copy
import json
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

VERSION = "9.1.0"
LONG_MAX = 2**63 - 1
LONG_MIN = -(2**63)
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?$")
_TOKEN = re.compile(r"\w+")


class EsError(Exception):
    def __init__(self, status: int, type_: str, reason: str, **extra: Any):
        super().__init__(reason)
        self.status, self.type, self.reason, self.extra = status, type_, reason, extra

    def body(self) -> dict[str, Any]:
        cause = {"type": self.type, "reason": self.reason, **self.extra}
        return {"error": {"root_cause": [cause], **cause}, "status": self.status}


def _not_found(index: str) -> EsError:
    return EsError(404, "index_not_found_exception", f"no such index [{index}]",
                   **{"resource.type": "index_or_alias", "resource.id": index,
                      "index_uuid": "_na_", "index": index})


def to_millis(value: Any) -> int:
    """A date value (epoch millis or ISO-8601 text) as epoch milliseconds."""
    if isinstance(value, bool):
        raise EsError(400, "document_parsing_exception", f"failed to parse date [{value}]")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        if value.lstrip("-").isdigit():
            return int(value)
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise EsError(400, "document_parsing_exception",
                          f"failed to parse date field [{value}]") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return int(dt.timestamp() * 1000)
    raise EsError(400, "document_parsing_exception", f"failed to parse date [{value}]")


def _keep_alive(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", str(text))
    if not m:
        raise EsError(400, "illegal_argument_exception",
                      f"failed to parse setting [keep_alive] with value [{text}]")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _get(src: Any, path: str) -> Any:
    node = src
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, dict) and path in node:  # a dotted key
            return node[path]
        else:
            return None
    return node


# -- indices ---------------------------------------------------------------------------------


@dataclass
class Index:
    name: str
    properties: dict[str, Any] = field(default_factory=dict)
    docs: dict[str, tuple[int, dict[str, Any], int]] = field(default_factory=dict)  # id ->
    # (ordinal, source, version)
    next_ordinal: int = 0
    seq_no: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def field_type(self, path: str) -> str | None:
        node: Any = {"properties": self.properties}
        for part in path.split("."):
            node = (node.get("properties") or {}).get(part)
            if node is None:
                return None
        return node.get("type", "object")

    def _map_value(self, props: dict[str, Any], key: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, list):
            for item in value:
                self._map_value(props, key, item)
            return
        existing = props.get(key)
        if isinstance(value, dict):
            if existing is None:
                existing = props[key] = {"properties": {}}
            if existing.get("type") in (None, "object"):
                for k, v in value.items():
                    self._map_value(existing.setdefault("properties", {}), k, v)
            return
        if existing is not None:
            if existing.get("type") in ("date", "date_nanos"):
                to_millis(value)  # a bad date is a parsing error, as in Elasticsearch
            elif existing.get("type") == "sparse_vector" or existing.get("type") == "rank_features":
                pass
            return
        if isinstance(value, bool):
            props[key] = {"type": "boolean"}
        elif isinstance(value, int):
            props[key] = {"type": "long"}
        elif isinstance(value, float):
            props[key] = {"type": "float"}
        elif isinstance(value, str) and _ISO.match(value):
            props[key] = {"type": "date"}
        else:
            props[key] = {"type": "text",
                          "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}

    def put(self, doc_id: str, source: dict[str, Any]) -> tuple[str, int]:
        for key, value in source.items():
            self._check_features(key, value)
            self._map_value(self.properties, key, value)
        old = self.docs.get(doc_id)
        version = old[2] + 1 if old else 1
        self.docs[doc_id] = (self.next_ordinal, copy.deepcopy(source), version)
        self.next_ordinal += 1
        self.seq_no += 1
        return ("updated" if old else "created"), version

    def _check_features(self, key: str, value: Any) -> None:
        kind = (self.properties.get(key) or {}).get("type")
        if kind in ("rank_features",) and isinstance(value, dict):
            for feature in value:
                if "." in feature:
                    raise EsError(400, "document_parsing_exception",
                                  f"[{kind}] fields do not support dots in feature names but "
                                  f"found [{feature}]")

    def delete(self, doc_id: str) -> bool:
        self.seq_no += 1
        return self.docs.pop(doc_id, None) is not None


@dataclass
class Pit:
    snapshot: dict[str, Index]
    expires: float


# -- query evaluation ----------------------------------------------------------------------


def _tokens(text: Any) -> list[str]:
    if isinstance(text, list):
        return [t for x in text for t in _tokens(x)]
    return [t.lower() for t in _TOKEN.findall(str(text))] if text is not None else []


class Searcher:
    """Query matching and BM25 scoring over one frozen list of documents."""

    def __init__(self, index: Index, docs: list[tuple[int, str, dict[str, Any]]]):
        self.index = index
        self.docs = docs
        self._stats: dict[str, tuple[dict[str, int], float]] = {}

    def _field_stats(self, fld: str) -> tuple[dict[str, int], float]:
        if fld not in self._stats:
            df: dict[str, int] = {}
            total = 0
            for _, _, src in self.docs:
                toks = _tokens(_get(src, fld))
                total += len(toks)
                for t in set(toks):
                    df[t] = df.get(t, 0) + 1
            self._stats[fld] = (df, total / max(1, len(self.docs)))
        return self._stats[fld]

    def _bm25(self, fld: str, query: str, src: dict[str, Any]) -> float:
        toks = _tokens(_get(src, fld))
        if not toks:
            return 0.0
        df, avg = self._field_stats(fld)
        n = len(self.docs)
        score = 0.0
        for t in set(_tokens(query)):
            tf = toks.count(t)
            if not tf:
                continue
            idf = math.log(1 + (n - df.get(t, 0) + 0.5) / (df.get(t, 0) + 0.5))
            score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(toks) / max(avg, 1e-9)))
        return score

    def _value(self, fld: str, value: Any) -> Any:
        if self.index.field_type(fld) in ("date", "date_nanos") and value is not None:
            return to_millis(value)
        return value

    def evaluate(self, q: dict[str, Any], doc_id: str, src: dict[str, Any]) -> float | None:
        """The score of a matching document, None if it does not match."""
        if not isinstance(q, dict) or len(q) != 1:
            raise EsError(400, "parsing_exception", "query malformed, must start with an "
                          "object holding one query")
        (kind, body), = q.items()
        if kind == "match_all":
            return float(body.get("boost", 1.0)) if isinstance(body, dict) else 1.0
        if kind == "bool":
            score = 0.0
            for clause in _listify(body.get("must")):
                s = self.evaluate(clause, doc_id, src)
                if s is None:
                    return None
                score += s
            for clause in _listify(body.get("filter")):
                if self.evaluate(clause, doc_id, src) is None:
                    return None
            for clause in _listify(body.get("must_not")):
                if self.evaluate(clause, doc_id, src) is not None:
                    return None
            should = [self.evaluate(c, doc_id, src) for c in _listify(body.get("should"))]
            matched = [s for s in should if s is not None]
            minimum = body.get("minimum_should_match",
                               0 if body.get("must") or body.get("filter") else 1)
            if should and len(matched) < int(minimum):
                return None
            return score + sum(matched) if (body.get("must") or matched) else 0.0
        if kind == "range":
            (fld, cond), = body.items()
            value = _get(src, fld)
            if value is None:
                return None
            is_date = self.index.field_type(fld) in ("date", "date_nanos")
            values = value if isinstance(value, list) else [value]
            for v in values:
                v = to_millis(v) if is_date else v
                ok = True
                for op, bound in cond.items():
                    if op in ("format", "boost", "time_zone", "relation"):
                        continue
                    b = to_millis(bound) if is_date else bound
                    ok &= {"gte": v >= b, "gt": v > b, "lte": v <= b, "lt": v < b}.get(op, False)
                if ok:
                    return 1.0
            return None
        if kind in ("term", "terms"):
            (fld, cond), = ((k, v) for k, v in body.items() if k != "boost")
            wanted = cond if kind == "terms" else [cond.get("value") if isinstance(cond, dict)
                                                   else cond]
            base = fld[:-len(".keyword")] if fld.endswith(".keyword") else fld
            value = _get(src, base)
            values = value if isinstance(value, list) else [value]
            if self.index.field_type(base) in ("date", "date_nanos"):
                values = [to_millis(v) for v in values if v is not None]
                wanted = [to_millis(w) for w in wanted]
            return 1.0 if any(v in wanted for v in values) else None
        if kind == "exists":
            return 1.0 if _get(src, body["field"]) is not None else None
        if kind == "ids":
            return 1.0 if doc_id in body.get("values", []) else None
        if kind == "match":
            (fld, cond), = body.items()
            text = cond.get("query") if isinstance(cond, dict) else cond
            s = self._bm25(fld, str(text), src)
            return s if s > 0 else None
        if kind == "multi_match":
            fields = [f.split("^")[0] for f in body.get("fields", [])] or ["*"]
            if fields == ["*"]:
                fields = [k for k, v in self.index.properties.items() if v.get("type") == "text"]
            s = max((self._bm25(f, str(body["query"]), src) for f in fields), default=0.0)
            return s if s > 0 else None
        raise EsError(400, "parsing_exception", f"unknown query [{kind}]")


def _listify(x: Any) -> list[Any]:
    if x is None:
        return []
    return x if isinstance(x, list) else [x]


def _sort_spec(sort: Any) -> list[tuple[str, str, Any]]:
    """``[(field, order, missing)]`` from Elasticsearch's sort syntaxes."""
    out = []
    for item in _listify(sort):
        if isinstance(item, str):
            fld, order, missing = item, ("desc" if item == "_score" else "asc"), "_last"
        else:
            (fld, opts), = item.items()
            if isinstance(opts, str):
                order, missing = opts, "_last"
            else:
                order = opts.get("order", "desc" if fld == "_score" else "asc")
                missing = opts.get("missing", "_last")
        if order not in ("asc", "desc"):
            raise EsError(400, "parsing_exception", f"Unknown sort order [{order}]")
        out.append((fld, order, missing))
    return out


# -- the server ----------------------------------------------------------------------------


_ALLOWED_SERVICE = {"url", "headers", "query_parameters", "request", "response",
                    "secret_parameters", "input_type", "batch_size", "rate_limit"}
_TEXT_EMBEDDING_SERVICE = {"similarity", "dimensions", "max_input_tokens"}
_JSON_PARSER = {"text_embedding": ({"text_embeddings"}, {"embedding_type"}),
                "sparse_embedding": ({"token_path", "weight_path"}, set()),
                "rerank": ({"relevance_score"}, {"reranked_index", "document_text"}),
                "completion": ({"completion_result"}, set())}
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


class FakeElasticsearch:
    """The state and HTTP server; use :func:`running` or ``start()``/``stop()``."""

    def __init__(self) -> None:
        self.indices: dict[str, Index] = {}
        self.pits: dict[str, Pit] = {}
        self.inference: dict[str, dict[str, Any]] = {}  # id -> stored config (with secrets)
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.failures: list[dict[str, Any]] = []
        self.lock = threading.RLock()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeElasticsearch:
        fake = self

        class Handler(_Handler):
            es = fake

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def fail(self, method: str, path_regex: str, after: int = 0, status: int = 500,
             times: int = 1) -> None:
        """Answer ``status`` to matching requests number ``after + 1`` .. ``after + times``."""
        with self.lock:
            self.failures.append({"method": method, "re": re.compile(path_regex),
                                  "after": after, "status": status, "times": times})

    def count_requests(self, method: str, path_regex: str) -> int:
        rx = re.compile(path_regex)
        return sum(1 for m, p in self.requests if m == method and rx.search(p))

    # -- request routing --------------------------------------------------------------------

    def handle(self, method: str, path: str, params: dict[str, str], raw: bytes
               ) -> tuple[int, Any]:
        with self.lock:
            self.requests.append((method, path))
            for f in self.failures:
                if f["method"] == method and f["re"].search(path):
                    if f["after"] > 0:
                        f["after"] -= 1
                    elif f["times"] > 0:
                        f["times"] -= 1
                        raise EsError(f["status"], "exception", "injected failure")
            parts = [unquote(p) for p in path.strip("/").split("/") if p]
            body = self._body(raw, parts)
            return self._route(method, parts, params, body)

    @staticmethod
    def _body(raw: bytes, parts: list[str]) -> Any:
        if not raw.strip():
            return None
        if parts and parts[-1] == "_bulk":
            return raw.decode("utf-8")
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise EsError(400, "parsing_exception", f"request body is not JSON: {exc}") from None

    def _index(self, name: str) -> Index:
        if name not in self.indices:
            raise _not_found(name)
        return self.indices[name]

    def _route(self, method: str, parts: list[str], params: dict[str, str], body: Any
               ) -> tuple[int, Any]:
        if not parts:
            return 200, {"name": "fake-es", "cluster_name": "genseek-tests",
                         "cluster_uuid": "fake", "tagline": "You Know, for Search",
                         "version": {"number": VERSION, "build_flavor": "default",
                                     "lucene_version": "10.2.2",
                                     "minimum_wire_compatibility_version": "8.19.0",
                                     "minimum_index_compatibility_version": "8.0.0"}}
        head = parts[0]
        if head == "_inference":
            return self._inference(method, parts[1:], body)
        if head == "_ingest" and len(parts) == 3 and parts[1] == "pipeline":
            if method == "PUT":
                if not isinstance(body, dict) or not isinstance(body.get("processors"), list):
                    raise EsError(400, "parse_exception", "[processors] required property is "
                                  "missing")
                self.pipelines[parts[2]] = body
                return 200, {"acknowledged": True}
            if method == "GET":
                if parts[2] not in self.pipelines:
                    return 404, {}
                return 200, {parts[2]: self.pipelines[parts[2]]}
        if head == "_pit" and method == "DELETE":
            pit_id = (body or {}).get("id")
            freed = self.pits.pop(pit_id, None) is not None
            return (200 if freed else 404), {"succeeded": True, "num_freed": int(freed)}
        if head == "_search":
            return 200, self._search(None, params, body or {})
        if head == "_bulk":
            return 200, self._bulk(None, body or "", params)
        if head.startswith("_"):
            raise EsError(400, "invalid_index_name_exception",
                          f"Invalid index name [{head}], must not start with '_'.")
        name = head
        if len(parts) == 1:
            if method == "HEAD":
                return (200 if name in self.indices else 404), None
            if method == "PUT":
                return 200, self._create(name, body or {})
            if method == "DELETE":
                self._index(name)
                del self.indices[name]
                return 200, {"acknowledged": True}
            if method == "GET":
                idx = self._index(name)
                return 200, {name: {"mappings": {"properties": idx.properties},
                                    "settings": idx.settings, "aliases": {}}}
        op = parts[1]
        if op == "_mapping" and method == "GET":
            idx = self._index(name)
            return 200, {name: {"mappings": {"properties": copy.deepcopy(idx.properties)}}}
        if op == "_refresh":
            self._index(name)
            return 200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}
        if op == "_count":
            idx = self._index(name)
            docs = [(o, i, s) for i, (o, s, _) in idx.docs.items()]
            searcher = Searcher(idx, docs)
            q = (body or {}).get("query") or {"match_all": {}}
            n = sum(1 for _, i, s in docs if searcher.evaluate(q, i, s) is not None)
            return 200, {"count": n, "_shards": {"total": 1, "successful": 1, "skipped": 0,
                                                 "failed": 0}}
        if op == "_pit" and method == "POST":
            idx = self._index(name)
            keep = _keep_alive(params.get("keep_alive", ""))
            pit_id = base64.urlsafe_b64encode(os.urandom(24)).decode()
            snap = Index(idx.name, copy.deepcopy(idx.properties), copy.deepcopy(idx.docs))
            self.pits[pit_id] = Pit({name: snap}, time.monotonic() + keep)
            return 200, {"id": pit_id, "_shards": {"total": 1, "successful": 1, "skipped": 0,
                                                   "failed": 0}}
        if op == "_search":
            return 200, self._search(name, params, body or {})
        if op == "_bulk":
            return 200, self._bulk(name, body or "", params)
        if op in ("_doc", "_create") and len(parts) == 3:
            doc_id = parts[2]
            if method in ("PUT", "POST"):
                idx = self.indices.get(name) or self._create(name, {}, quiet=True)
                if op == "_create" and doc_id in idx.docs:
                    raise EsError(409, "version_conflict_engine_exception",
                                  f"[{doc_id}]: version conflict, document already exists")
                result, version = idx.put(doc_id, body or {})
                return (201 if result == "created" else 200), self._doc_reply(
                    name, doc_id, result, version, idx.seq_no)
            if method == "DELETE":
                idx = self._index(name)
                found = idx.delete(doc_id)
                return (200 if found else 404), self._doc_reply(
                    name, doc_id, "deleted" if found else "not_found", 1, idx.seq_no)
            if method == "GET":
                idx = self._index(name)
                if doc_id not in idx.docs:
                    return 404, {"_index": name, "_id": doc_id, "found": False}
                _, src, version = idx.docs[doc_id]
                return 200, {"_index": name, "_id": doc_id, "_version": version, "found": True,
                             "_source": src}
        raise EsError(400, "illegal_argument_exception",
                      f"no handler found for uri [/{'/'.join(parts)}] and method [{method}]")

    @staticmethod
    def _doc_reply(index: str, doc_id: str, result: str, version: int, seq: int
                   ) -> dict[str, Any]:
        return {"_index": index, "_id": doc_id, "_version": version, "result": result,
                "_shards": {"total": 1, "successful": 1, "failed": 0}, "_seq_no": seq,
                "_primary_term": 1}

    def _create(self, name: str, body: dict[str, Any], quiet: bool = False) -> Any:
        if name in self.indices:
            raise EsError(400, "resource_already_exists_exception",
                          f"index [{name}/fake] already exists", index=name)
        if name != name.lower() or name.startswith(("-", "+")):
            raise EsError(400, "invalid_index_name_exception",
                          f"Invalid index name [{name}], must be lowercase", index=name)
        props = copy.deepcopy(((body.get("mappings") or {}).get("properties")) or {})
        for fname, spec in props.items():
            if spec.get("type") == "semantic_text":
                endpoint = spec.get("inference_id")
                if endpoint and endpoint not in self.inference:
                    raise EsError(400, "illegal_argument_exception",
                                  f"Inference endpoint [{endpoint}] not found for field "
                                  f"[{fname}]")
            if spec.get("copy_to"):
                for target in _listify(spec["copy_to"]):
                    if target not in props:
                        raise EsError(400, "mapper_parsing_exception",
                                      f"copy_to target [{target}] is not mapped")
        idx = Index(name, props, settings=dict(body.get("settings") or {}))
        self.indices[name] = idx
        if quiet:
            return idx
        return {"acknowledged": True, "shards_acknowledged": True, "index": name}

    def _bulk(self, default: str | None, text: str, params: dict[str, str]) -> dict[str, Any]:
        lines = [ln for ln in text.split("\n") if ln.strip()]
        items = []
        errors = False
        i = 0
        while i < len(lines):
            action = json.loads(lines[i])
            (op, meta), = action.items()
            name = meta.get("_index", default)
            doc_id = meta.get("_id") or base64.urlsafe_b64encode(os.urandom(15)).decode()
            source = None
            if op != "delete":
                i += 1
                source = json.loads(lines[i])
            i += 1
            try:
                if name is None:
                    raise EsError(400, "action_request_validation_exception",
                                  "Validation Failed: 1: index is missing;")
                if op == "delete":
                    idx = self._index(name)
                    found = idx.delete(doc_id)
                    item = self._doc_reply(name, doc_id, "deleted" if found else "not_found",
                                           1, idx.seq_no)
                    item["status"] = 200 if found else 404
                else:
                    idx = self.indices.get(name) or self._create(name, {}, quiet=True)
                    if op == "create" and doc_id in idx.docs:
                        raise EsError(409, "version_conflict_engine_exception",
                                      f"[{doc_id}]: version conflict, document already exists "
                                      "(current version [1])", index=name)
                    if op == "update":
                        old = idx.docs.get(doc_id)
                        if old is None and not source.get("doc_as_upsert"):
                            raise EsError(404, "document_missing_exception",
                                          f"[{doc_id}]: document missing", index=name)
                        merged = dict(old[1]) if old else {}
                        merged.update(source.get("doc") or {})
                        source = merged
                    elif op not in ("index", "create"):
                        raise EsError(400, "illegal_argument_exception",
                                      f"Malformed action/metadata line [{op}]")
                    result, version = idx.put(doc_id, source)
                    item = self._doc_reply(name, doc_id, result, version, idx.seq_no)
                    item["status"] = 201 if result == "created" else 200
            except EsError as exc:
                errors = True
                item = {"_index": name, "_id": doc_id, "status": exc.status,
                        "error": {"type": exc.type, "reason": exc.reason}}
            items.append({op: item})
        return {"took": 1, "errors": errors, "items": items}

    def _search(self, name: str | None, params: dict[str, str], body: dict[str, Any]
                ) -> dict[str, Any]:
        pit = body.get("pit")
        if pit is not None:
            if name is not None:
                raise EsError(400, "action_request_validation_exception",
                              "Validation Failed: 1: [indices] cannot be used with point in "
                              "time. Do not specify any index with point in time.;")
            entry = self.pits.get(pit.get("id"))
            if entry is None or entry.expires < time.monotonic():
                self.pits.pop(pit.get("id"), None)
                raise EsError(404, "search_context_missing_exception",
                              "No search context found for id [fake]")
            if pit.get("keep_alive"):
                entry.expires = time.monotonic() + _keep_alive(pit["keep_alive"])
            (idx,) = entry.snapshot.values()
        else:
            if name is None:
                raise EsError(400, "illegal_argument_exception", "a search needs an index or "
                              "a point in time in this fake")
            idx = self._index(name)
        docs = sorted(((o, i, s) for i, (o, s, _) in idx.docs.items()), key=lambda t: t[0])
        searcher = Searcher(idx, docs)
        query = body.get("query") or {"match_all": {}}
        matched = []
        for ordinal, doc_id, src in docs:
            score = searcher.evaluate(query, doc_id, src)
            if score is not None:
                matched.append((ordinal, doc_id, src, score))
        spec = _sort_spec(body.get("sort")) if body.get("sort") else []
        if pit is not None and not any(f == "_shard_doc" for f, _, _ in spec):
            spec.append(("_shard_doc", "asc", "_last"))
        sorted_by_score = not spec or any(f == "_score" for f, _, _ in spec)
        if not spec:
            spec = [("_score", "desc", "_last"), ("_doc", "asc", "_last")]
            explicit = False
        else:
            explicit = True

        def values(entry: tuple[int, str, dict[str, Any], float]) -> list[Any]:
            ordinal, _, src, score = entry
            out = []
            for fld, order, _missing in spec:
                if fld == "_score":
                    out.append(score)
                elif fld in ("_doc", "_shard_doc"):
                    out.append(ordinal)
                else:
                    kind = idx.field_type(fld)
                    if kind == "text":
                        raise EsError(400, "illegal_argument_exception",
                                      f"Text fields are not optimised for operations that "
                                      f"require per-document field data like aggregations "
                                      f"and sorting, so these operations are disabled by "
                                      f"default. Please use a keyword field instead. "
                                      f"Alternatively, set fielddata=true on [{fld}] in order "
                                      f"to load field data by uninverting the inverted index.")
                    base = fld[:-len(".keyword")] if fld.endswith(".keyword") else fld
                    v = _get(src, base)
                    if isinstance(v, list):
                        v = min(v) if order == "asc" else max(v)
                    if v is None:
                        v = LONG_MAX if order == "asc" else LONG_MIN
                    elif kind in ("date", "date_nanos"):
                        v = to_millis(v)
                    out.append(v)
            return out

        def key(vals: list[Any]) -> tuple[Any, ...]:
            return tuple(_Desc(v) if order == "desc" else _Asc(v)
                         for v, (_, order, _) in zip(vals, spec, strict=True))

        rows = [(values(e), e) for e in matched]
        rows.sort(key=lambda r: key(r[0]))
        after = body.get("search_after")
        if after is not None:
            if len(after) != len(spec):
                raise EsError(400, "illegal_argument_exception",
                              f"search_after has {len(after)} value(s) but sort has "
                              f"{len(spec)}.")
            k_after = key(list(after))
            rows = [r for r in rows if key(r[0]) > k_after]
        start = int(body.get("from", params.get("from", 0)))
        size = int(body.get("size", params.get("size", 10)))
        page = rows[start:start + size]
        source_opt = body.get("_source", params.get("_source", True))
        if source_opt in ("false", False):
            source_opt = False
        hits = []
        for vals, (_, doc_id, src, score) in page:
            hit: dict[str, Any] = {"_index": idx.name, "_id": doc_id,
                                   "_score": score if sorted_by_score else None}
            if source_opt is not False:
                hit["_source"] = copy.deepcopy(src) if source_opt in (True, "true") else {
                    k: v for k, v in src.items() if k in _listify(source_opt)}
            if explicit:
                hit["sort"] = vals
            hits.append(hit)
        out: dict[str, Any] = {"took": 1, "timed_out": False,
                               "_shards": {"total": 1, "successful": 1, "skipped": 0,
                                           "failed": 0},
                               "hits": {"max_score": max((h["_score"] for h in hits
                                                          if h["_score"] is not None),
                                                         default=None),
                                        "hits": hits}}
        if body.get("track_total_hits", True) is not False:
            out["hits"]["total"] = {"value": len(rows), "relation": "eq"}
        if pit is not None:
            out["pit_id"] = pit["id"]
        return out

    # -- inference endpoints ------------------------------------------------------------------

    def _inference(self, method: str, parts: list[str], body: Any) -> tuple[int, Any]:
        if method == "GET":
            if not parts or parts == ["_all"]:
                return 200, {"endpoints": [self._public(e) for e in self.inference.values()]}
            endpoint_id = parts[-1]
            found = self.inference.get(endpoint_id)
            if found is None or (len(parts) == 2 and found["task_type"] != parts[0]):
                raise EsError(404, "resource_not_found_exception",
                              f"Inference endpoint not found [{endpoint_id}]")
            return 200, {"endpoints": [self._public(found)]}
        if method == "DELETE":
            endpoint_id = parts[-1]
            if self.inference.pop(endpoint_id, None) is None:
                raise EsError(404, "resource_not_found_exception",
                              f"Inference endpoint not found [{endpoint_id}]")
            return 200, {"acknowledged": True, "pipelines": [], "indexes": []}
        if method == "POST" and len(parts) in (1, 2):
            endpoint_id = parts[-1]
            stored = self.inference.get(endpoint_id)
            if stored is None or (len(parts) == 2 and stored["task_type"] != parts[0]):
                raise EsError(404, "resource_not_found_exception",
                              f"Inference endpoint not found [{endpoint_id}]")
            return 200, infer(stored, body or {})
        if method == "PUT" and len(parts) == 2:
            task_type, endpoint_id = parts
            if endpoint_id in self.inference:
                raise EsError(400, "status_exception",
                              f"Inference endpoint [{endpoint_id}] already exists")
            stored = self._validate_custom(task_type, endpoint_id, body)
            self.inference[endpoint_id] = stored
            return 200, self._public(stored)
        raise EsError(400, "illegal_argument_exception", "unsupported _inference request")

    @staticmethod
    def _public(stored: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(stored)
        out["service_settings"].pop("secret_parameters", None)
        return out

    def _validate_custom(self, task_type: str, endpoint_id: str, body: Any) -> dict[str, Any]:
        def bad(reason: str) -> EsError:
            return EsError(400, "validation_exception", f"Validation Failed: 1: {reason};")

        if task_type not in _JSON_PARSER:
            raise EsError(400, "status_exception", f"The [custom] service does not support "
                          f"task type [{task_type}]")
        if not isinstance(body, dict):
            raise bad("request body is required")
        unknown = set(body) - {"service", "service_settings", "task_settings",
                               "chunking_settings"}
        if unknown:
            raise EsError(400, "status_exception", f"Configuration contains settings "
                          f"{sorted(unknown)} unknown to the [custom] service")
        if body.get("service") != "custom":
            raise bad(f"this fake implements only the custom service, not "
                      f"[{body.get('service')}]")
        settings = body.get("service_settings")
        if not isinstance(settings, dict):
            raise bad("[service_settings] does not contain the required setting "
                      "[service_settings]")
        allowed = _ALLOWED_SERVICE | (_TEXT_EMBEDDING_SERVICE if task_type == "text_embedding"
                                      else set())
        extra = set(settings) - allowed
        if extra:
            raise EsError(400, "status_exception", f"Configuration contains settings "
                          f"{sorted(extra)} unknown to the [custom] service")
        for key in ("url", "request"):
            if not isinstance(settings.get(key), str) or not settings[key]:
                raise bad(f"[service_settings] does not contain the required setting [{key}]")
        if not re.match(r"^https?://", settings["url"]):
            raise bad(f"[service_settings] Invalid url [{settings['url']}] received")
        for k, v in (settings.get("headers") or {}).items():
            if not isinstance(v, str):
                raise bad(f"Map field [headers] has an entry that is not valid, [{k} => {v}]. "
                          "Value type is not one of [String].")
        response = settings.get("response")
        if not isinstance(response, dict) or not isinstance(response.get("json_parser"), dict):
            raise bad("[service_settings.response] does not contain the required setting "
                      "[json_parser]")
        if set(response) != {"json_parser"}:
            raise EsError(400, "status_exception", "Configuration contains unknown settings "
                          f"{sorted(set(response) - {'json_parser'})} in [response]")
        parser = response["json_parser"]
        required, optional = _JSON_PARSER[task_type]
        missing = required - set(parser)
        if missing:
            raise bad(f"[service_settings.response.json_parser] does not contain the required "
                      f"setting [{sorted(missing)[0]}]")
        if set(parser) - required - optional:
            raise EsError(400, "status_exception", "Configuration contains settings "
                          f"{sorted(set(parser) - required - optional)} unknown to the "
                          "[json_parser]")
        for k, path in parser.items():
            if k != "embedding_type" and not (isinstance(path, str) and path.startswith("$")):
                raise bad(f"Path [{path}] must start with a dollar sign ($)")
        task_settings = body.get("task_settings") or {}
        if set(task_settings) - {"parameters"}:
            raise EsError(400, "status_exception", "Configuration contains settings "
                          f"{sorted(set(task_settings) - {'parameters'})} unknown to the "
                          "[custom] service")
        params = task_settings.get("parameters") or {}
        for k, v in params.items():
            if not isinstance(v, (str, int, float, bool)):
                raise bad(f"Map field [parameters] has an entry that is not valid, [{k}]")
        # the templates, rendered with the mock inputs Elasticsearch uses at creation time
        known = set(params) | set(settings.get("secret_parameters") or {}) | {"input"}
        if task_type == "rerank":
            known |= {"query"}
        if settings.get("input_type"):
            known |= {"input_type"}
        for where, text in [("request", settings["request"]), ("url", settings["url"]),
                            *((f"header.{k}", v) for k, v in
                              (settings.get("headers") or {}).items())]:
            for name in _PLACEHOLDER.findall(text):
                if name not in known:
                    raise bad(f"Failed to validate model configuration: Found placeholder "
                              f"[${{{name}}}] in field [{where}] after replacement call, please "
                              f"check that all templates have a corresponding field definition.")
        stored = {"inference_id": endpoint_id, "task_type": task_type, "service": "custom",
                  "service_settings": copy.deepcopy(settings),
                  "task_settings": copy.deepcopy(task_settings)}
        if task_type in ("text_embedding", "sparse_embedding"):
            stored["chunking_settings"] = body.get("chunking_settings") or {
                "strategy": "sentence", "max_chunk_size": 250, "sentence_overlap": 1}
        return stored


# -- calling a custom service (what POST _inference/{task_type}/{id} does) ----------------------


def extract(data: Any, path: str) -> Any:
    """Elasticsearch's JSONPath subset (MapPathExtractor): ``$``, ``.field``, ``[*]``; each
    ``[*]`` keeps its own list level (where JSONPath would flatten)."""
    if not path.startswith("$"):
        raise EsError(400, "illegal_argument_exception",
                      f"Path [{path}] must start with a dollar sign ($)")
    rest = path[1:]
    if not rest:
        return data
    m = re.match(r"^\.([^.\[]+)(.*)$", rest)
    if m:
        if not isinstance(data, dict) or data.get(m.group(1)) is None:
            raise EsError(400, "illegal_argument_exception",
                          f"Unable to find field [{m.group(1)}] in map")
        return extract(data[m.group(1)], "$" + m.group(2))
    m = re.match(r"^\[\*\](.*)$", rest)
    if m and isinstance(data, list):
        return [extract(item, "$" + m.group(1)) for item in data]
    raise EsError(400, "illegal_argument_exception", f"Invalid path received [{rest}]")


def render(stored: dict[str, Any], values: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    """``(url, headers, body)`` of the HTTP request the custom service sends."""
    settings = stored["service_settings"]
    params = dict((stored.get("task_settings") or {}).get("parameters") or {})
    secrets = dict(settings.get("secret_parameters") or {})
    json_values = {k: json.dumps(v) for k, v in {**secrets, **params}.items()}
    json_values.update({k: json.dumps(v) for k, v in values.items() if v is not None})
    string_values = {k: str(v) for k, v in {**secrets, **params}.items()}

    def sub(text: str, table: dict[str, str]) -> str:
        def one(m: re.Match[str]) -> str:
            if m.group(1) not in table:
                raise EsError(400, "illegal_state_exception",
                              f"Found placeholder [${{{m.group(1)}}}] after replacement call")
            return table[m.group(1)]

        return _PLACEHOLDER.sub(one, text)

    headers = {"Content-Type": "application/json"}
    headers.update({k: sub(v, string_values) for k, v in (settings.get("headers") or {}).items()})
    return (sub(settings["url"], string_values), headers,
            sub(settings["request"], json_values).encode())


def infer(stored: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Call the endpoint's service and parse its answer as Elasticsearch does."""
    import urllib.error
    import urllib.request

    task_type = stored["task_type"]
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else list(texts or [])
    values: dict[str, Any] = {"input": texts}
    if task_type == "rerank":
        values.update(query=body.get("query"), top_n=body.get("top_n"))
    url, headers, data = render(stored, values)
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            payload = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        raise EsError(400, "status_exception", f"Received an unsuccessful status code for "
                      f"request from inference entity id [{stored['inference_id']}] status "
                      f"[{exc.code}]. Error message: [{exc.read().decode()[:300]}]") from None
    parser = stored["service_settings"]["response"]["json_parser"]
    if task_type == "text_embedding":
        vectors = extract(payload, parser["text_embeddings"])
        return {"text_embedding": [{"embedding": [float(x) for x in v]} for v in vectors]}
    if task_type == "sparse_embedding":
        tokens = extract(payload, parser["token_path"])
        weights = extract(payload, parser["weight_path"])
        if len(tokens) != len(weights):
            raise EsError(400, "illegal_state_exception", "The extracted tokens list is size "
                          f"[{len(tokens)}] but the weights list is size [{len(weights)}]")
        return {"sparse_embedding": [
            {"is_truncated": False,
             "embedding": {str(t): float(w) for t, w in zip(ts, ws, strict=True)}}
            for ts, ws in zip(tokens, weights, strict=True)]}
    scores = extract(payload, parser["relevance_score"])
    order = (extract(payload, parser["reranked_index"]) if "reranked_index" in parser
             else list(range(len(scores))))
    return {"rerank": [{"index": int(i), "relevance_score": float(s)}
                       for i, s in zip(order, scores, strict=True)]}


class _Asc:
    __slots__ = ("v",)

    def __init__(self, v: Any):
        self.v = v

    def __lt__(self, other: _Asc) -> bool:
        return _cmp(self.v, other.v) < 0

    def __gt__(self, other: _Asc) -> bool:
        return _cmp(self.v, other.v) > 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (_Asc, _Desc)) and _cmp(self.v, other.v) == 0


class _Desc(_Asc):
    def __lt__(self, other: _Asc) -> bool:
        return _cmp(self.v, other.v) > 0

    def __gt__(self, other: _Asc) -> bool:
        return _cmp(self.v, other.v) < 0


def _cmp(a: Any, b: Any) -> int:
    if a is None or b is None:
        return (a is None) - (b is None)
    if isinstance(a, str) != isinstance(b, str):
        a, b = str(a), str(b)
    return (a > b) - (a < b)


class _Handler(BaseHTTPRequestHandler):
    es: FakeElasticsearch
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(split.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            status, body = self.es.handle(method, split.path, params, raw)
        except EsError as exc:
            status, body = exc.status, exc.body()
        except Exception as exc:  # noqa: BLE001 - a 500 in ES's error shape
            status, body = 500, EsError(500, "exception", f"{type(exc).__name__}: {exc}").body()
        accept = self.headers.get("Accept", "")
        mime = ("application/vnd.elasticsearch+json;compatible-with=9"
                if "compatible-with" in accept else "application/json")
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Type", mime)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - stdlib names
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve("HEAD")


@contextmanager
def running() -> Iterator[FakeElasticsearch]:
    """A started fake on a free 127.0.0.1 port, stopped afterwards."""
    fake = FakeElasticsearch().start()
    try:
        yield fake
    finally:
        fake.stop()
