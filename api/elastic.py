"""genseek inside Elasticsearch: ``genseek es register`` and ``genseek es sync``.

``register`` creates Elasticsearch inference endpoints of the ``custom`` service
(Elasticsearch 8.19 and 9.1 or later) that call genseek's ``/v1`` model endpoints:

=================  =========================  ==============================================
ES task type       genseek route              response parser (ES JSONPath subset)
=================  =========================  ==============================================
text_embedding     POST /v1/embeddings        ``text_embeddings: $.data[*].embedding[*]``
sparse_embedding   POST /v1/sparse-embeddings ``token_path: $.data[*].embedding[*].token``,
                                              ``weight_path: $.data[*].embedding[*].weight``
rerank             POST /v1/rerank            ``relevance_score: $.results[*].relevance_score``,
                                              ``reranked_index: $.results[*].index``
=================  =========================  ==============================================

Elasticsearch fills the request template's ``${input}`` (a JSON array of strings),
``${query}`` (a JSON string) and ``${top_n}`` (a JSON integer, only when the caller
gives one; the endpoint's ``task_settings.parameters.top_n`` is the default, because
Elasticsearch renders the template without ``top_n`` when it validates the endpoint
and refuses a template with an unfilled placeholder). ``${api_key}`` comes from
``service_settings.secret_parameters``, which Elasticsearch stores encrypted and
never returns.

Sparse feature names: Elasticsearch's ``rank_features`` fields (and ``sparse_vector``
before 8.16) reject a feature name containing a dot, and SPLADE's vocabulary has
several (``.``, ``...``, ``##.``). :func:`es_feature_name` escapes ``%`` as ``%25``
and ``.`` as ``%2E`` (reversible: :func:`from_es_feature_name`); nothing else
changes. genseek applies it when the sparse request carries
``"token_format": "elasticsearch"``; ``register`` probes whether the server
understands that field and otherwise registers the raw-token template (and says so).

``sync`` mirrors an Elasticsearch index into a genseek collection; see
:mod:`genseek.data.es_sync`. The client and its error messages are
:mod:`genseek.data.elastic`'s: this module (endpoint registration and the ``genseek es``
command) imports ``data/``, and nothing in ``data/`` or ``retrievers/`` imports ``api/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from genseek.data.elastic import connect, es_call, es_error
from genseek.errors import GenseekError

TASK_TYPES = ("text_embedding", "sparse_embedding", "rerank")
ROUTES = {"text_embedding": "/v1/embeddings", "sparse_embedding": "/v1/sparse-embeddings",
          "rerank": "/v1/rerank"}
JSON_PARSERS: dict[str, dict[str, str]] = {
    "text_embedding": {"text_embeddings": "$.data[*].embedding[*]"},
    "sparse_embedding": {"token_path": "$.data[*].embedding[*].token",
                         "weight_path": "$.data[*].embedding[*].weight"},
    "rerank": {"relevance_score": "$.results[*].relevance_score",
               "reranked_index": "$.results[*].index"},
}
"""The response parsers sent for each task type (Elasticsearch's JSONPath subset)."""

DEFAULT_TOP_N = 1000
"""``task_settings.parameters.top_n``: the rerank ``top_n`` when a call gives none."""

SPARSE_TOKEN_FORMATS = ("auto", "elasticsearch", "raw")
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,199}$")


# -- sparse feature names -------------------------------------------------------------------


def es_feature_name(token: str) -> str:
    """A sparse token as a valid Elasticsearch feature name: ``%`` -> ``%25``, ``.`` -> ``%2E``."""
    return token.replace("%", "%25").replace(".", "%2E")


def from_es_feature_name(name: str) -> str:
    """The inverse of :func:`es_feature_name`."""
    return name.replace("%2E", ".").replace("%25", "%")


# -- inference endpoint payloads ------------------------------------------------------------


@dataclass(frozen=True)
class EndpointOptions:
    """What the three endpoint payloads depend on."""

    genseek_url: str
    api_key: str | None = None
    prefix: str = "genseek"
    reranker: str | None = None  # a reranker name configured on the genseek server
    dims: int | None = None  # the dense encoder's dimension (probed when None)
    similarity: str = "cosine"
    sparse_token_format: str = "elasticsearch"  # or "raw"
    sparse_top_k: int | None = None
    top_n: int = DEFAULT_TOP_N
    batch_size: int | None = None  # texts per embeddings call (ES default 10)

    def endpoint_id(self, task_type: str) -> str:
        suffix = {"text_embedding": "dense", "sparse_embedding": "sparse", "rerank": "rerank"}
        return f"{self.prefix}-{suffix[task_type]}"


def _request_template(fields: Sequence[tuple[str, str]]) -> str:
    """A JSON object template; values are raw JSON or ``${placeholder}`` (not quoted)."""
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in fields) + "}"


def endpoint_payload(task_type: str, opts: EndpointOptions) -> dict[str, Any]:
    """The body of ``PUT _inference/{task_type}/{id}`` for genseek's route of ``task_type``."""
    if task_type not in TASK_TYPES:
        raise GenseekError(f"unknown task type {task_type!r}; use one of {', '.join(TASK_TYPES)}")
    fields: list[tuple[str, str]]
    if task_type == "rerank":
        fields = [("query", "${query}"), ("documents", "${input}"), ("top_n", "${top_n}")]
        if opts.reranker:
            fields.append(("model", json.dumps(opts.reranker)))
    else:
        fields = [("input", "${input}")]
        if task_type == "sparse_embedding":
            if opts.sparse_token_format == "elasticsearch":
                fields.append(("token_format", json.dumps("elasticsearch")))
            if opts.sparse_top_k:
                fields.append(("top_k", str(int(opts.sparse_top_k))))
    headers = {"Content-Type": "application/json"}
    settings: dict[str, Any] = {"url": opts.genseek_url.rstrip("/") + ROUTES[task_type],
                                "headers": headers}
    if opts.api_key:
        headers["Authorization"] = "Bearer ${api_key}"
        settings["secret_parameters"] = {"api_key": opts.api_key}
    settings["request"] = _request_template(fields)
    settings["response"] = {"json_parser": dict(JSON_PARSERS[task_type])}
    if task_type == "text_embedding":
        if opts.dims:
            settings["dimensions"] = int(opts.dims)
        settings["similarity"] = opts.similarity
    if opts.batch_size and task_type != "rerank":
        settings["batch_size"] = int(opts.batch_size)
    payload: dict[str, Any] = {"service": "custom", "service_settings": settings}
    if task_type == "rerank":
        payload["task_settings"] = {"parameters": {"top_n": int(opts.top_n)}}
    return payload


def endpoint_payloads(opts: EndpointOptions,
                      task_types: Sequence[str] = TASK_TYPES) -> dict[str, dict[str, Any]]:
    """``{task_type: payload}`` for every requested task type."""
    return {t: endpoint_payload(t, opts) for t in task_types}


_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


def render_request(payload: Mapping[str, Any], *, input: Sequence[str],
                   query: str | None = None, top_n: int | None = None) -> str:
    """The HTTP body Elasticsearch sends for ``payload`` (its template substitution).

    JSON values replace ``${input}``, ``${query}``, ``${top_n}`` and the keys of
    ``task_settings.parameters`` and ``secret_parameters``; an unknown placeholder is
    an error, as in Elasticsearch.
    """
    settings = payload["service_settings"]
    values: dict[str, str] = {}
    for source in (settings.get("secret_parameters") or {},
                   (payload.get("task_settings") or {}).get("parameters") or {}):
        values.update({k: json.dumps(v) for k, v in source.items()})
    values["input"] = json.dumps(list(input))
    if query is not None:
        values["query"] = json.dumps(query)
    if top_n is not None:
        values["top_n"] = json.dumps(int(top_n))

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise GenseekError(f"request template: no value for ${{{m.group(1)}}}")
        return values[m.group(1)]

    return _PLACEHOLDER.sub(sub, settings["request"])


def render_headers(payload: Mapping[str, Any]) -> dict[str, str]:
    """The headers Elasticsearch sends (string substitution from ``secret_parameters``)."""
    settings = payload["service_settings"]
    secrets = {k: str(v) for k, v in (settings.get("secret_parameters") or {}).items()}
    return {k: _PLACEHOLDER.sub(lambda m: secrets[m.group(1)], v)
            for k, v in (settings.get("headers") or {}).items()}


# -- index mapping --------------------------------------------------------------------------


def index_body(dense_id: str | None, sparse_id: str | None, *, style: str = "semantic_text",
               dims: int | None = None, timestamp_field: str = "updated_at",
               deleted_field: str | None = "deleted") -> dict[str, Any]:
    """An index body whose documents (``title``, ``text``) get genseek's embeddings.

    ``semantic_text``: ``text`` is copied into ``text_dense`` / ``text_sparse``
    (``semantic_text`` fields bound to the endpoints; Elasticsearch calls genseek at
    ingest and at query time). ``vectors``: explicit ``dense_vector`` /
    ``sparse_vector`` fields filled by the ingest pipeline of :func:`ingest_pipeline`.
    The timestamp (and deleted flag) fields are what ``genseek es sync`` reads.
    """
    props: dict[str, Any] = {"title": {"type": "text"}, "text": {"type": "text"},
                             timestamp_field: {"type": "date"}}
    if deleted_field:
        props[deleted_field] = {"type": "boolean"}
    targets = []
    if style == "semantic_text":
        if dense_id:
            props["text_dense"] = {"type": "semantic_text", "inference_id": dense_id}
            targets.append("text_dense")
        if sparse_id:
            props["text_sparse"] = {"type": "semantic_text", "inference_id": sparse_id}
            targets.append("text_sparse")
        if targets:
            props["text"]["copy_to"] = targets
    elif style == "vectors":
        if dense_id:
            props["text_embedding"] = {"type": "dense_vector", "index": True,
                                       "similarity": "cosine"}
            if dims:
                props["text_embedding"]["dims"] = int(dims)
        if sparse_id:
            props["text_tokens"] = {"type": "sparse_vector"}
    else:
        raise GenseekError(f"unknown mapping style {style!r}; use semantic_text or vectors")
    return {"mappings": {"properties": props}}


def ingest_pipeline(dense_id: str | None, sparse_id: str | None) -> dict[str, Any]:
    """An ingest pipeline filling the ``vectors`` mapping from ``text`` (inference processors)."""
    processors = []
    for model_id, out in ((dense_id, "text_embedding"), (sparse_id, "text_tokens")):
        if model_id:
            processors.append({"inference": {
                "model_id": model_id,
                "input_output": [{"input_field": "text", "output_field": out}]}})
    return {"description": "genseek embeddings for the text field", "processors": processors}


# -- registering ----------------------------------------------------------------------------


@dataclass
class RegisterReport:
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {task_type, ...}
    index: str | None = None
    pipeline: str | None = None
    sparse_token_format: str | None = None
    dims: int | None = None
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"endpoints": self.endpoints, "index": self.index, "pipeline": self.pipeline,
                "sparse_token_format": self.sparse_token_format, "dims": self.dims,
                "warnings": self.warnings, "dry_run": self.dry_run}


def probe_genseek(genseek_url: str, api_key: str | None, task_types: Sequence[str],
                  reranker: str | None = None, client: Any = None) -> dict[str, Any]:
    """Call each genseek route once, as Elasticsearch will: dims, token format, reranker.

    ``client``: a :class:`~genseek.client.GenseekClient` to use instead of a new one.
    """
    from genseek.client import GenseekClient

    found: dict[str, Any] = {}
    own = client is None
    c = GenseekClient(genseek_url, api_key=api_key, timeout=120) if own else client
    try:
        if "text_embedding" in task_types:
            found["dims"] = len(c.embeddings(["dimension probe"])[0])
        if "sparse_embedding" in task_types:
            try:
                out = c.request("POST", "/v1/sparse-embeddings",
                                {"input": ["e.g. a probe"], "token_format": "elasticsearch"})
                tokens = [t["token"] for t in out["data"][0]["embedding"]]
                found["sparse_token_format"] = ("elasticsearch"
                                                if not any("." in t for t in tokens) else "raw")
            except GenseekError as exc:
                if getattr(exc, "status", None) != 422:
                    raise
                c.sparse_embeddings(["probe"])  # the route itself works
                found["sparse_token_format"] = "raw"
        if "rerank" in task_types:
            c.rerank("probe", ["a", "b"], top_n=1, model=reranker)
    finally:
        if own:
            c.close()
    return found


def register(es: Any, opts: EndpointOptions, task_types: Sequence[str] = TASK_TYPES, *,
             replace: bool = False, index: str | None = None, mapping: str = "semantic_text",
             dry_run: bool = False) -> RegisterReport:
    """Create the inference endpoints (and optionally an index using them) in ``es``."""
    from elasticsearch import ApiError, NotFoundError, TransportError

    report = RegisterReport(sparse_token_format=(opts.sparse_token_format
                                                 if "sparse_embedding" in task_types else None),
                            dims=opts.dims, dry_run=dry_run)
    payloads = endpoint_payloads(opts, task_types)
    for task_type, payload in payloads.items():
        endpoint = opts.endpoint_id(task_type)
        shown = json.loads(json.dumps(payload))
        if "secret_parameters" in shown["service_settings"]:
            shown["service_settings"]["secret_parameters"] = {"api_key": "<redacted>"}
        report.endpoints[endpoint] = {"task_type": task_type, "request": shown}
        if dry_run:
            continue
        try:
            if replace:
                with contextlib.suppress(NotFoundError):
                    es.inference.delete(task_type=task_type, inference_id=endpoint, force=True)
            es.inference.put(task_type=task_type, inference_id=endpoint, inference_config=payload)
            report.endpoints[endpoint]["created"] = True
        except (ApiError, TransportError) as exc:
            hint = " (use --replace to overwrite it)" if "exists" in str(exc) else ""
            raise es_error(exc, f"creating inference endpoint {endpoint!r}" + hint) from None
    if index:
        dense = opts.endpoint_id("text_embedding") if "text_embedding" in task_types else None
        sparse = opts.endpoint_id("sparse_embedding") if "sparse_embedding" in task_types else None
        body = index_body(dense, sparse, style=mapping, dims=opts.dims)
        report.index = index
        if mapping == "vectors":
            report.pipeline = f"{opts.prefix}-embeddings"
            body.setdefault("settings", {})["index.default_pipeline"] = report.pipeline
        if not dry_run:
            with es_call(f"creating index {index!r}"):
                if report.pipeline:
                    es.ingest.put_pipeline(id=report.pipeline, **ingest_pipeline(dense, sparse))
                es.indices.create(index=index, **body)
    return report


# -- command line ---------------------------------------------------------------------------


def _add_es_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Elasticsearch connection")
    g.add_argument("--es", required=True, metavar="URL",
                   help="the Elasticsearch URL, e.g. http://localhost:9200")
    g.add_argument("--es-api-key", metavar="KEY", help="an Elasticsearch API key (default: "
                   "$ES_API_KEY)")
    g.add_argument("--es-user", metavar="USER", help="basic auth user (default: $ES_USER)")
    g.add_argument("--es-password", metavar="PASSWORD", help="basic auth password "
                   "(default: $ES_PASSWORD)")
    g.add_argument("--es-ca-certs", metavar="PEM",
                   help="CA certificates file for https (default: the Python client's own)")
    g.add_argument("--es-insecure", action="store_true",
                   help="do not verify the server's TLS certificate")
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary instead of lines of text")


def _es_from_args(args: argparse.Namespace):
    import os

    return connect(args.es, args.es_api_key or os.environ.get("ES_API_KEY"),
                   args.es_user or os.environ.get("ES_USER"),
                   args.es_password or os.environ.get("ES_PASSWORD"),
                   verify_certs=not args.es_insecure, ca_certs=args.es_ca_certs)


def build_parser() -> argparse.ArgumentParser:
    from genseek.cliutil import HelpFormatter, positive

    parser = argparse.ArgumentParser(
        prog="genseek es", formatter_class=HelpFormatter,
        description="Use genseek from Elasticsearch: register genseek's encoders and "
        "rerankers as Elasticsearch inference endpoints, and mirror an Elasticsearch index "
        "into a genseek collection. 'genseek es ACTION --help' lists an action's options.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION",
                                help="register or sync")

    p = sub.add_parser(
        "register", help="create ES inference endpoints that call genseek's /v1 routes",
        formatter_class=HelpFormatter,
        description="Create Elasticsearch inference endpoints (custom service; ES 8.19, 9.1 "
        "or later) for text_embedding (/v1/embeddings), sparse_embedding "
        "(/v1/sparse-embeddings) and rerank (/v1/rerank), named PREFIX-dense, PREFIX-sparse "
        "and PREFIX-rerank, and optionally an index whose mapping uses them. The genseek URL "
        "must be reachable from the Elasticsearch nodes.")
    _add_es_options(p)
    p.add_argument("--genseek", required=True, metavar="URL",
                   help="genseek's base URL as Elasticsearch reaches it, e.g. http://genseek:8080")
    p.add_argument("--api-key", metavar="KEY", help="a genseek API key with the read scope, "
                   "stored by ES as a secret parameter (default: $GENSEEK_API_KEY, else none)")
    p.add_argument("--prefix", default="genseek",
                   help="endpoint id prefix: lowercase letters, digits, '_', '-', '.'")
    p.add_argument("--task", action="append", choices=TASK_TYPES, dest="tasks",
                   help="a task type to register; repeatable (default: all three)")
    p.add_argument("--reranker", metavar="NAME", help="a reranker configured on the genseek "
                   "server, e.g. first (default: the server's first reranker)")
    p.add_argument("--dims", type=positive, metavar="N",
                   help="dense vector dimension (default: asked from genseek)")
    p.add_argument("--similarity", default="cosine", choices=("cosine", "dot_product",
                                                             "l2_norm"),
                   help="the dense_vector similarity of the endpoint and the mapping")
    p.add_argument("--sparse-token-format", default="auto", choices=SPARSE_TOKEN_FORMATS,
                   help="elasticsearch: ask genseek for dot-free feature names ('.' -> %%2E); "
                   "raw: genseek's tokens as they are; auto: elasticsearch if the genseek "
                   "server supports it, else raw")
    p.add_argument("--sparse-top-k", type=positive, metavar="K",
                   help="keep only the heaviest K sparse terms (default: every term)")
    p.add_argument("--top-n", type=positive, default=DEFAULT_TOP_N, metavar="N",
                   help="rerank top_n when a query gives none")
    p.add_argument("--batch-size", type=positive, metavar="N",
                   help="texts per embeddings call (default: Elasticsearch's, 10)")
    p.add_argument("--index", metavar="NAME", help="also create this index with a mapping "
                   "that uses the endpoints (default: none)")
    p.add_argument("--mapping", default="semantic_text", choices=("semantic_text", "vectors"),
                   help="--index fields: semantic_text, or dense_vector + sparse_vector "
                   "fields filled by an ingest pipeline (vectors)")
    p.add_argument("--replace", action="store_true", help="delete endpoints of the same id "
                   "first (forced: indexes that use them keep working with the new ones)")
    p.add_argument("--no-probe", action="store_true",
                   help="do not call genseek first (to learn --dims and the token format)")
    p.add_argument("--dry-run", action="store_true", help="print the requests, send nothing")

    s = sub.add_parser(
        "sync", help="mirror an ES index into a genseek collection (incremental, resumable)",
        formatter_class=HelpFormatter,
        description="Copy the documents of an Elasticsearch index into a genseek collection "
        "(created with --create-index specs if absent), reading a point in time with "
        "search_after in timestamp order. Each batch is committed with its checkpoint in one "
        "transaction, so an interrupted sync resumes where it stopped and a later sync reads "
        "only documents whose timestamp is not older than the last one seen. Deletions come "
        "from a deleted flag field and/or a tombstone index (documents whose _id is the "
        "deleted id).")
    _add_es_options(s)
    s.add_argument("collection", metavar="COLLECTION", help="the genseek collection folder")
    s.add_argument("--index", required=True, metavar="NAME",
                   help="the Elasticsearch index (or alias) to read")
    s.add_argument("--timestamp-field", default="updated_at", metavar="FIELD",
                   help="a date or numeric field set on every write")
    s.add_argument("--title-field", default="title", metavar="FIELD",
                   help="the _source field of the title ('' for none)")
    s.add_argument("--text-field", default="text", metavar="FIELD",
                   help="the _source field of the text")
    s.add_argument("--metadata-field", action="append", dest="metadata_fields", metavar="F",
                   help="copy this _source field into metadata; repeatable (default: every "
                   "field but the title and text fields)")
    s.add_argument("--deleted-field", default="deleted", metavar="FIELD",
                   help="documents with this field true are deleted from the collection ('' "
                   "to disable)")
    s.add_argument("--tombstone-index", metavar="NAME", help="an index of deletion records "
                   "(_id = the deleted document's id, with the timestamp field; default: none)")
    s.add_argument("--query", metavar="JSON",
                   help="an extra filter query, ES query DSL (default: every document)")
    s.add_argument("--batch-size", type=positive, default=500, metavar="N",
                   help="documents per page and commit (at most 10000)")
    s.add_argument("--overlap", type=float, default=0, metavar="AMOUNT",
                   help="re-read this much before the checkpoint, in timestamp units (ms for "
                   "date fields), for late-visible writes; >= 0 (default: %(default)s)")
    s.add_argument("--create-index", action="append", dest="create_indexes",
                   metavar="[NAME=]SPEC", help="an index spec for a new collection; "
                   "repeatable (default: bm25 and dense)")
    s.add_argument("--full", action="store_true", help="ignore the checkpoint: read everything "
                   "and delete collection documents no longer in the index")
    s.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def cmd_register(args: argparse.Namespace) -> dict[str, Any]:
    import os

    tasks = tuple(dict.fromkeys(args.tasks or TASK_TYPES))
    api_key = args.api_key or os.environ.get("GENSEEK_API_KEY")
    if not args.genseek.startswith(("http://", "https://")):
        raise GenseekError(f"--genseek {args.genseek!r}: expected an http:// or https:// URL")
    if not _ID.match(args.prefix):
        raise GenseekError(f"--prefix {args.prefix!r}: use lowercase letters, digits, '_', "
                           "'-', '.' (an Elasticsearch inference id)")
    for name in ("dims", "sparse_top_k", "top_n", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise GenseekError(f"--{name.replace('_', '-')} must be a positive integer, "
                               f"not {value}")
    warnings: list[str] = []
    dims, token_format = args.dims, args.sparse_token_format
    if not args.no_probe:
        found = probe_genseek(args.genseek, api_key, tasks, args.reranker)
        dims = dims or found.get("dims")
        if token_format == "auto":
            token_format = found.get("sparse_token_format", "raw")
        elif token_format == "elasticsearch" and found.get("sparse_token_format") == "raw":
            raise GenseekError("--sparse-token-format elasticsearch: this genseek server does "
                               "not support token_format; use raw or upgrade genseek")
    elif token_format == "auto":
        token_format = "raw"
    if "sparse_embedding" in tasks and token_format == "raw":
        warnings.append("sparse tokens are registered raw: tokens containing '.' are refused "
                        "by rank_features fields and by sparse_vector before ES 8.16")
    opts = EndpointOptions(args.genseek, api_key, args.prefix, args.reranker, dims,
                           args.similarity, token_format, args.sparse_top_k, args.top_n,
                           args.batch_size)
    es = None if args.dry_run else _es_from_args(args)
    report = register(es, opts, tasks, replace=args.replace, index=args.index,
                      mapping=args.mapping, dry_run=args.dry_run)
    report.warnings += warnings
    return report.to_dict()


def cmd_sync(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from genseek.data.es_sync import SyncConfig, sync_index

    query = None
    if args.query:
        try:
            query = json.loads(args.query)
        except ValueError as exc:
            raise GenseekError(f"--query: not valid JSON: {exc}") from None
        if not isinstance(query, dict):
            raise GenseekError("--query: expected a JSON object (an ES query)")
    cfg = SyncConfig(index=args.index, timestamp_field=args.timestamp_field,
                     title_field=args.title_field or None, text_field=args.text_field,
                     metadata_fields=tuple(args.metadata_fields) if args.metadata_fields
                     else None, deleted_field=args.deleted_field or None,
                     tombstone_index=args.tombstone_index, batch_size=args.batch_size,
                     overlap=args.overlap, query=query)
    specs = None
    if args.create_indexes:
        specs = {}
        for item in args.create_indexes:
            name, sep, spec = item.partition("=")
            if not sep:
                name, spec = item.split("(")[0], item
            specs[name] = spec
    es = _es_from_args(args)
    report = sync_index(es, Path(args.collection), cfg, create_indexes=specs, full=args.full,
                        progress=not args.no_progress)
    return report.to_dict()


def main(argv: list[str] | None = None) -> int:
    """``genseek es register|sync ...``; 0 on success, 2 with one line on a user error."""
    args = build_parser().parse_args(argv)
    try:
        out = cmd_register(args) if args.action == "register" else cmd_sync(args)
    except GenseekError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    elif args.action == "register":
        verb = "would create" if out["dry_run"] else "created"
        for endpoint, info in out["endpoints"].items():
            print(f"{verb} {info['task_type']} endpoint {endpoint} -> "
                  f"{info['request']['service_settings']['url']}")
        if out["index"]:
            print(f"{verb} index {out['index']}")
        for w in out["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
    else:
        print(f"synced {out['index']} into {out['collection']}: read {out['read']}, upserted "
              f"{out['upserted']}, unchanged {out['unchanged']}, deleted {out['deleted']} "
              f"({out['seconds']:.1f} s{', resumed' if out['resumed'] else ''})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
