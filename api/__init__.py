"""The HTTP query API: one FastAPI service over a folder of collections.

Start it with ``genseek serve --root DIR [--host 127.0.0.1 --port 8080]``; OpenAPI
docs are at ``/docs``. In Python: ``genseek.api.app.create_app(settings)`` returns
the ASGI app, ``genseek.api.settings.Settings`` configures it.

Routes (request and response bodies are JSON):

=========================================  ======  ================================================
route                                      scope   does
=========================================  ======  ================================================
GET  /health                               none    the process is up: ``{"status": "ok"}``
GET  /ready                                none    200 while serving: ``status`` ready, catching_up
                                                   or degraded (an index failed); 503 shutting
                                                   down; with the read scope per-index details
                                                   and ``models`` (loaded, loading, preload)
GET  /metrics                              read    Prometheus text format (none with
                                                   ``GENSEEK_PUBLIC_METRICS=1``)
GET  /collections                          read    ``{"collections": [names]}``
POST /collections                          write   ``{"name", "indexes": {name: spec}}`` -> 201
GET  /collections/{name}                   read    stats (documents, seq, per-index applied_seq, lag)
GET  /collections/{name}/ready             read    200 when every index is current, else 503
                                                   naming the indexes behind or failed
DELETE /collections/{name}                 write   drop a collection and its folder
POST /collections/{name}/documents         write   ``{"documents": [{"id","title","text","metadata"}],
                                                   "refresh": false|true}`` -> ``{"seq",
                                                   "upserted", "unchanged", "refreshed"}``
POST /collections/{name}/documents/delete  write   ``{"ids": [...], "refresh"}`` -> ``{"seq",
                                                   "deleted", "missing", "refreshed"}``
GET  /collections/{name}/documents/{id}    read    the stored document, 404 if absent
POST /collections/{name}/search            read    ``{"query": str, "pipeline": Pipeline?}`` ->
                                                   ``{"results": [{"doc_id","score",...}],
                                                   "took_ms"}``; ``"explain": true`` adds
                                                   ``stages`` (each stage's own hits) and
                                                   ``timings``
POST /collections/{name}/search/batch      read    ``{"queries": [str], "pipeline"}`` ->
                                                   ``{"results": [[...], ...], "took_ms"}``
GET  /datasets                             read    the BEIR folders of the datasets folder:
                                                   ``{"root", "datasets": [{"name", "splits",
                                                   "queries", "documents"}]}``
POST /collections/{name}/evaluate          read    ``{"dataset"?, "split", "queries"?, "qrels"?,
                                                   "qrels_tsv"?, "pipelines": {name: Pipeline},
                                                   "max_queries"?}`` -> nDCG@10 / R@100 per
                                                   pipeline and query, and each against the
                                                   first (wins/ties/losses, p-value)
GET  /ui/                                  none    the browser console (static files; the page
                                                   asks for the key)
POST /v1/embeddings                        read    OpenAI shape: ``{"input": str|[str],
                                                   "model"?}`` -> ``{"object": "list", "data":
                                                   [{"object": "embedding", "index", "embedding"}],
                                                   "model", "usage"}``
POST /v1/sparse-embeddings                 read    ``{"input": str|[str], "top_k"?,
                                                   "token_format"?: "raw"|"elasticsearch"}`` -> ``{"data":
                                                   [{"index", "embedding": [{"token",
                                                   "weight"}]}], "model"}``
POST /v1/rerank                            read    Cohere/Jina shape: ``{"query", "documents":
                                                   [str], "top_n"?}`` -> ``{"results": [{"index",
                                                   "relevance_score"}], "model"}``
=========================================  ======  ================================================

Writes are acknowledged once the document store has committed them; indexes are
updated in the background by one applier thread per index, so searches keep being
served while updates are applied and a cheap index (bm25) never waits behind an
expensive one (dense encoding). ``"refresh": true`` makes the request wait (bounded by
the request timeout) until every index has applied the write, so the client reads
its own writes. The pipeline is :class:`genseek.pipeline.Pipeline` in JSON form;
when omitted, the default is RRF over all indexes of the collection, k = 10.

Time: a request gets ``GENSEEK_REQUEST_TIMEOUT_S`` (30 s) or a 504 that says whether it was
a read or a write; time while a model or the JVM is being loaded is not counted. At start the
server opens every collection and loads the ``/v1`` models and the configured rerankers in
the background (``GENSEEK_PRELOAD``: ``all``, ``collections`` or ``none``).

Security: API keys with ``read`` and ``write`` scopes (``write`` implies read),
from ``GENSEEK_API_KEYS`` (``key1:read,key2:write``) or a JSON file
(``{"keys": [{"key": "...", "scopes": ["read"]}]}``), sent as
``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. A missing or unknown key is
401, a key without the scope is 403. With no key configured the server refuses to
bind to anything but loopback and says so. Bodies over ``max_body_bytes`` are 413;
batches, k and queries are bounded (422 past the bounds); collection names are
validated and no endpoint reads or writes a path the client names. CORS is off
unless origins are configured.
"""
