"""Crash safety over the wire: SIGKILL ``genseek serve`` while a client streams upserts.

A client thread sends small batches (``refresh: false``, so the answer comes as soon
as the document store has committed them and the indexes lag behind) and records
every id the server acknowledged. The server is killed with SIGKILL in the middle of
the stream (no graceful shutdown, the background applier mid-batch), restarted on the
same folder and port, and the test checks that

- every acknowledged document is there (GET) with the text that was sent;
- the batch that was in flight at the kill is there entirely or not at all;
- each index holds exactly the store's documents (collection stats), with no lag;
- every acknowledged document is found by bm25 (its unique token, first place), by
  dense (its exact text, among the top 10) and by the default RRF hybrid (first
  place), with no document twice in any result list.

This runs ``CYCLES`` kill/restart rounds (``GENSEEK_FAULT_CYCLES``, default 2) of
about ``PER_CYCLE`` acknowledged documents each; the second round writes on top of
a collection that was recovered from the first crash.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from _apiserver import ServerProcess
from _synth import make_docs

from genseek.client import GenseekClient, GenseekClientError
from genseek.pipeline import Pipeline, Stage

COLL = "crash"
BATCH = 5
PER_CYCLE = int(os.environ.get("GENSEEK_FAULT_DOCS", "100"))
CYCLES = int(os.environ.get("GENSEEK_FAULT_CYCLES", "2"))
STREAM_TIMEOUT = 180  # seconds to reach PER_CYCLE acknowledged documents
RECOVER_TIMEOUT = 180  # seconds for the restarted server to catch up
BM25 = Pipeline(retrieve=[Stage(index="bm25", k=10)], k=10)
DENSE = Pipeline(retrieve=[Stage(index="dense", k=10)], k=10)


class Streamer(threading.Thread):
    """Upserts batches of ``BATCH`` new documents until the server goes away."""

    def __init__(self, url: str, start_at: int, seed: int):
        super().__init__(daemon=True)
        self.url, self.next, self.seed = url, start_at, seed
        self.acked: dict[str, object] = {}  # id -> Document, acknowledged by the server
        self.in_flight: list = []  # the batch sent when the connection broke
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self.ended = threading.Event()

    def run(self) -> None:
        try:
            with GenseekClient(self.url, timeout=30) as client:
                while True:
                    batch = make_docs(BATCH, seed=self.seed, start=self.next, prefix="k")
                    try:
                        result = client.upsert(COLL, batch, refresh=False)
                    except GenseekClientError as exc:
                        if exc.status == 0:  # the server is gone: this batch is unknown
                            self.in_flight = batch
                            return
                        raise
                    assert result.upserted == BATCH and not result.unchanged, result
                    with self.lock:
                        self.acked.update((d.doc_id, d) for d in batch)
                    self.next += BATCH
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)
        finally:
            self.ended.set()

    def count(self) -> int:
        with self.lock:
            return len(self.acked)


def _wait_caught_up(client: GenseekClient) -> dict:
    """Collection stats once the restarted server has opened and caught up (lag 0)."""
    deadline = time.monotonic() + RECOVER_TIMEOUT
    last: object = None
    while time.monotonic() < deadline:
        try:
            stats = client.collection_stats(COLL)
            if stats["lag"] == 0 and not stats["sync_error"]:
                return stats
            last = stats
        except GenseekClientError as exc:  # 504/503 while the collection is replayed
            assert exc.status in (0, 503, 504), exc
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"the restarted server did not catch up in {RECOVER_TIMEOUT}s: {last}")


def _check_search(client: GenseekClient, docs: list, pipeline: Pipeline, query_of, depth: int):
    """Every doc is within the first ``depth`` results of its query; no duplicates."""
    misses = []
    for i in range(0, len(docs), 64):
        chunk = docs[i:i + 64]
        results = client.search_batch(COLL, [query_of(d) for d in chunk], pipeline)
        for doc, hits in zip(chunk, results, strict=True):
            ids = [h.doc_id for h in hits]
            assert len(ids) == len(set(ids)), f"duplicate results for {doc.doc_id}: {ids}"
            if doc.doc_id not in ids[:depth]:
                misses.append((doc.doc_id, ids[:3]))
    assert not misses, f"{len(misses)} acknowledged documents not found: {misses[:10]}"


def _token(doc) -> str:
    return next(w for w in doc.text.split() if w.startswith("tok"))


@pytest.mark.slow
def test_sigkill_mid_stream_keeps_every_acknowledged_write(tmp_path):
    root, log = tmp_path / "root", tmp_path / "server.log"
    server = ServerProcess(root, log)
    port = server.port
    acked: dict[str, object] = {}
    maybe: list[list] = []  # in-flight batches: all or nothing
    try:
        with GenseekClient(server.url, timeout=60) as c:
            c.create_collection(COLL, {"bm25": "bm25", "dense": "dense"})
        for cycle in range(CYCLES):
            streamer = Streamer(server.url, start_at=cycle * 5000, seed=cycle)
            streamer.start()
            deadline = time.monotonic() + STREAM_TIMEOUT
            lag_before_kill = None
            while streamer.count() < PER_CYCLE and not streamer.ended.is_set():
                assert time.monotonic() < deadline, "the stream is too slow"
                if lag_before_kill is None and streamer.count() >= PER_CYCLE // 2:
                    with GenseekClient(server.url, timeout=10) as c:
                        lag_before_kill = c.collection_stats(COLL)["lag"]
                time.sleep(0.01)
            assert not streamer.errors, streamer.errors
            assert not streamer.ended.is_set(), "the stream ended before the kill"
            rc = server.kill()  # mid-stream: the streamer is sending its next batch
            assert rc == -9, rc
            assert streamer.ended.wait(60), "the client did not notice the dead server"
            assert not streamer.errors, streamer.errors
            acked.update(streamer.acked)
            if streamer.in_flight:
                maybe.append(streamer.in_flight)
            print(f"cycle {cycle}: killed with {len(streamer.acked)} acknowledged this cycle, "
                  f"index lag {lag_before_kill} operations shortly before, in flight {len(streamer.in_flight)}")

            started = time.monotonic()
            server = ServerProcess(root, log, port=port)  # same folder, same port
            with GenseekClient(server.url, timeout=120) as c:
                stats = _wait_caught_up(c)
                print(f"cycle {cycle}: restarted and caught up in "
                      f"{time.monotonic() - started:.1f}s ({stats['documents']} documents)")
                # each index holds exactly the store's documents
                for name in ("bm25", "dense"):
                    assert stats["indexes"][name]["documents"] == stats["documents"], stats
                    assert stats["indexes"][name]["lag"] == 0, stats
                # acknowledged documents are there, unacknowledged batches all or nothing
                present_maybe = 0
                for batch in maybe:
                    there = []
                    for d in batch:
                        try:
                            c.get_document(COLL, d.doc_id)
                            there.append(d.doc_id)
                        except GenseekClientError as exc:
                            assert exc.status == 404, exc
                    assert len(there) in (0, len(batch)), f"a batch half-written: {there}"
                    present_maybe += len(there)
                assert stats["documents"] == len(acked) + present_maybe, \
                    (stats["documents"], len(acked), present_maybe)
                for doc_id, doc in acked.items():
                    got = c.get_document(COLL, doc_id)
                    assert (got.title, got.text) == (doc.title, doc.text), doc_id
                docs = list(acked.values())
                _check_search(c, docs, BM25, _token, depth=1)
                _check_search(c, docs, DENSE, lambda d: d.contents, depth=10)
                _check_search(c, docs, Pipeline.default(["bm25", "dense"]),
                              lambda d: d.contents, depth=1)
    finally:
        rc = server.stop()
    assert rc == 0, server.output()[-4000:]
    assert "Traceback" not in server.output(), server.output()[-4000:]


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-q", "-s"]))
