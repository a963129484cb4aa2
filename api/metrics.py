"""Prometheus metrics of one app, in a registry of its own (never the global one).

- ``genseek_requests_total{route,method,status}``: requests answered
- ``genseek_request_seconds{route}``: request latency (histogram)
- ``genseek_search_seconds{collection,index}``: time spent searching each index
- ``genseek_index_documents{collection,index}``, ``genseek_index_disk_bytes{...}`` and
  ``genseek_update_lag_ops{...}`` (store seq - index applied_seq), read from the open
  collections when scraped
- ``process_*``: the process collector (memory, CPU, open files)

``route`` is the route's template (``/collections/{name}/search``), or
``unmatched`` for paths no route serves, so label values stay few.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from genseek.params import Params
from genseek.sharded import ShardedCollection
from genseek.types import Hit

log = logging.getLogger("genseek.api")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _IndexCollector(Collector):
    def __init__(self, manager: Any):
        self.manager = manager

    def describe(self) -> list:
        return []  # collected at scrape time only

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["collection", "index"]
        docs = GaugeMetricFamily("genseek_index_documents",
                                 "Documents searchable in the index", labels=labels)
        disk = GaugeMetricFamily("genseek_index_disk_bytes",
                                 "Bytes the index occupies on disk", labels=labels)
        lag = GaugeMetricFamily("genseek_update_lag_ops", "Store operations the index has "
                                "not applied yet (store seq - index applied_seq)", labels=labels)
        for name, collection in self.manager.open_collections():
            try:
                seq = collection.seq if isinstance(collection, ShardedCollection) \
                    else collection.store.seq
                for index_name, index in list(collection.indexes.items()):
                    stats = index.stats()
                    docs.add_metric([name, index_name], float(stats.documents))
                    disk.add_metric([name, index_name], float(stats.disk_bytes))
                    lag.add_metric([name, index_name], float(seq - index.applied_seq))
            except Exception:  # noqa: BLE001 - a scrape never fails because of one collection
                log.exception("collecting metrics of collection %s", name)
        yield docs
        yield disk
        yield lag


class Metrics:
    """The app's registry and instruments."""

    def __init__(self, manager: Any):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("genseek_requests", "HTTP requests answered",
                                ["route", "method", "status"], registry=self.registry)
        self.request_seconds = Histogram("genseek_request_seconds", "HTTP request latency",
                                         ["route"], buckets=LATENCY_BUCKETS,
                                         registry=self.registry)
        self.search_seconds = Histogram("genseek_search_seconds",
                                        "Time searching one index for one request (a batch "
                                        "of queries counts once)", ["collection", "index"],
                                        buckets=LATENCY_BUCKETS, registry=self.registry)
        with contextlib.suppress(Exception):  # e.g. no /proc: metrics without process_*
            ProcessCollector(registry=self.registry)
        self.registry.register(_IndexCollector(manager))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def timed(self, collection: str, index_name: str, index: Any) -> TimedRetriever:
        return TimedRetriever(index, self.search_seconds.labels(collection, index_name))


class TimedRetriever:
    """An index whose searches are observed in ``genseek_search_seconds``."""

    def __init__(self, index: Any, histogram: Any):
        self.index = index
        self.histogram = histogram

    def search(self, queries: Sequence[str], k: int,
               params: Params | None = None) -> list[list[Hit]]:
        start = time.perf_counter()
        try:
            if params is None:
                return self.index.search(queries, k)
            return self.index.search(queries, k, params)
        finally:
            self.histogram.observe(time.perf_counter() - start)
