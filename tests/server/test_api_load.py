"""A bounded load test over loopback: writers and readers against a real uvicorn server.

``genseek serve`` runs in a subprocess on 127.0.0.1; ``WRITERS`` threads upsert
small batches of new documents with ``refresh: true`` and ``READERS`` threads
search (bm25, dense, the default RRF hybrid, batches) and read documents, for
``SECONDS`` seconds. The defaults are small for CI (2 writers, 4 readers, 8 s);
the documented full run is::

    GENSEEK_LOAD_WRITERS=8 GENSEEK_LOAD_READERS=32 GENSEEK_LOAD_SECONDS=60 \\
        .venv/bin/pytest -s tests/server/test_api_load.py

Asserted:

- zero errors: every request answers 2xx (no 5xx, no 504, no transport error);
- every write acknowledged with ``refresh: true`` says ``refreshed: true`` and is
  found at once by a bm25 search for its unique token (read-your-writes, checked by
  the writer right after the acknowledgement);
- readers always find the seed documents by their unique tokens (first place) and
  read them back unchanged while the writes go on;
- afterwards, every acknowledged document is found by bm25 (and a sample of them by
  dense, with their exact text), no result list holds a document twice, and each
  index holds exactly the store's documents.

The per-operation counts, QPS and p50/p99 latencies are printed (``-s`` shows them).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import defaultdict

import numpy as np
import pytest
from _apiserver import ServerProcess
from _synth import make_docs, make_queries, unique_token

from genseek.client import GenseekClient
from genseek.pipeline import Pipeline, Stage

WRITERS = int(os.environ.get("GENSEEK_LOAD_WRITERS", "2"))
READERS = int(os.environ.get("GENSEEK_LOAD_READERS", "4"))
SECONDS = float(os.environ.get("GENSEEK_LOAD_SECONDS", "8"))
BATCH = int(os.environ.get("GENSEEK_LOAD_BATCH", "4"))
COLL = "load"
SEED_DOCS = 60
BM25 = Pipeline(retrieve=[Stage(index="bm25", k=10)], k=10)
DENSE = Pipeline(retrieve=[Stage(index="dense", k=10)], k=10)
HYBRID = Pipeline.default(["bm25", "dense"])


class Recorder:
    """Latencies per operation and every error, shared by the threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []

    def timed(self, op: str, fn):
        start = time.perf_counter()
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - every failure is an error of the run
            with self.lock:
                self.errors.append(f"{op}: {type(exc).__name__}: {exc}")
            raise
        finally:
            seconds = time.perf_counter() - start
            with self.lock:
                self.latency[op].append(seconds)

    def fail(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)

    def summary(self, wall: float) -> list[tuple]:
        rows = []
        for op, values in sorted(self.latency.items()):
            a = np.asarray(values) * 1000
            rows.append((op, len(values), len(values) / wall, float(np.percentile(a, 50)),
                         float(np.percentile(a, 99)), float(a.max())))
        return rows


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("load")
    proc = ServerProcess(base / "root", base / "server.log")
    yield proc
    rc = proc.stop()
    assert rc == 0, proc.output()[-4000:]


def _writer(url: str, w: int, stop: threading.Event, rec: Recorder, acked: dict) -> None:
    n = 0
    with GenseekClient(url, timeout=120) as client:
        while not stop.is_set():
            docs = make_docs(BATCH, seed=w, start=n, version=w + 1, prefix=f"w{w}-")
            n += BATCH
            try:
                result = rec.timed("upsert(refresh)", lambda d=docs: client.upsert(COLL, d,
                                                                                   refresh=True))
            except Exception:  # noqa: BLE001 - recorded
                continue
            if not result.refreshed or result.upserted != BATCH:
                rec.fail(f"writer {w}: {result}")
                continue
            with rec.lock:
                acked.update((d.doc_id, d) for d in docs)
            # read-your-writes: found at once, through the other connection pool too
            try:
                found = rec.timed("search bm25 (own write)", lambda d=docs: client.search_batch(
                    COLL, [unique_token(int(x.doc_id.split("-")[1]), w + 1) for x in d], BM25))
            except Exception:  # noqa: BLE001 - recorded
                continue
            for doc, hits in zip(docs, found, strict=True):
                ids = [h.doc_id for h in hits]
                if not ids or ids[0] != doc.doc_id:
                    rec.fail(f"writer {w}: own write {doc.doc_id} not found first: {ids[:3]}")


def _reader(url: str, r: int, stop: threading.Event, rec: Recorder, seeds: list) -> None:
    rng = random.Random(r)
    queries = make_queries(50, seed=r)
    with GenseekClient(url, timeout=120) as client:
        while not stop.is_set():
            choice = rng.random()
            i = rng.randrange(len(seeds))
            try:
                if choice < 0.3:
                    hits = rec.timed("search bm25", lambda i=i: client.search(
                        COLL, unique_token(i), BM25))
                    if not hits or hits[0].doc_id != seeds[i].doc_id:
                        rec.fail(f"reader {r}: seed d{i} not first: {[h.doc_id for h in hits]}")
                elif choice < 0.5:
                    hits = rec.timed("search dense", lambda: client.search(
                        COLL, rng.choice(queries), DENSE))
                    if len({h.doc_id for h in hits}) != len(hits):
                        rec.fail(f"reader {r}: duplicate dense results")
                elif choice < 0.75:
                    hits = rec.timed("search hybrid", lambda: client.search(
                        COLL, rng.choice(queries), HYBRID))
                    if len({h.doc_id for h in hits}) != len(hits):
                        rec.fail(f"reader {r}: duplicate hybrid results")
                elif choice < 0.85:
                    rec.timed("search batch(4) hybrid", lambda: client.search_batch(
                        COLL, rng.sample(queries, 4), HYBRID))
                elif choice < 0.97:
                    doc = rec.timed("get document", lambda i=i: client.get_document(
                        COLL, seeds[i].doc_id))
                    if (doc.title, doc.text) != (seeds[i].title, seeds[i].text):
                        rec.fail(f"reader {r}: seed d{i} read back changed")
                else:
                    rec.timed("collection stats", lambda: client.collection_stats(COLL))
            except Exception:  # noqa: BLE001 - recorded
                time.sleep(0.05)


@pytest.mark.slow
def test_writers_and_readers_with_zero_errors(server):
    seeds = make_docs(SEED_DOCS, seed=9)
    with GenseekClient(server.url, timeout=120) as c:
        c.create_collection(COLL, {"bm25": "bm25", "dense": "dense"})
        assert c.upsert(COLL, seeds, refresh=True).refreshed
        c.search(COLL, "warm up", HYBRID)  # the encoder is loaded before the clock starts
    rec = Recorder()
    acked: dict = {}
    stop = threading.Event()
    threads = [threading.Thread(target=_writer, args=(server.url, w, stop, rec, acked))
               for w in range(WRITERS)]
    threads += [threading.Thread(target=_reader, args=(server.url, r, stop, rec, seeds))
                for r in range(READERS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(SECONDS)
    stop.set()
    for t in threads:
        t.join(180)
        assert not t.is_alive(), "a client thread hangs"
    wall = time.perf_counter() - start

    rows = rec.summary(wall)
    print(f"\nload: {WRITERS} writers (batches of {BATCH}, refresh=true), {READERS} readers, "
          f"{SECONDS:g}s (wall {wall:.1f}s), {len(acked)} documents written, "
          f"{len(rec.errors)} errors")
    print(f"{'operation':<26}{'count':>8}{'per s':>9}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for op, n, qps, p50, p99, top in rows:
        print(f"{op:<26}{n:>8}{qps:>9.1f}{p50:>10.1f}{p99:>10.1f}{top:>10.1f}")
    assert not rec.errors, rec.errors[:20]
    assert acked, "no write was acknowledged"
    assert sum(n for op, n, *_ in rows if not op.startswith(("upsert", "search bm25 (own"))) \
        >= READERS, "the readers did not get through"

    docs = list(acked.values())
    with GenseekClient(server.url, timeout=120) as c:
        stats = c.collection_stats(COLL)
        assert stats["documents"] == SEED_DOCS + len(acked), stats
        for name in ("bm25", "dense"):
            assert stats["indexes"][name]["documents"] == stats["documents"], stats
        for i in range(0, len(docs), 64):
            chunk = docs[i:i + 64]
            tokens = [next(w for w in d.text.split() if w.startswith("tok")) for d in chunk]
            for doc, hits in zip(chunk, c.search_batch(COLL, tokens, BM25), strict=True):
                ids = [h.doc_id for h in hits]
                assert ids and ids[0] == doc.doc_id, (doc.doc_id, ids[:3])
                assert len(ids) == len(set(ids)), ids
        sample = random.Random(0).sample(docs, min(64, len(docs)))
        for doc, hits in zip(sample, c.search_batch(COLL, [d.contents for d in sample], DENSE),
                             strict=True):
            ids = [h.doc_id for h in hits]
            assert doc.doc_id in ids, (doc.doc_id, ids[:3])
            assert len(ids) == len(set(ids)), ids
