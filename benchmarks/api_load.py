"""The HTTP query API under load: QPS and latency through ``genseek serve`` vs in-process.

On a SciFact collection with ``bm25`` and ``dense`` (built in ``--work`` through
``Collection.create`` + ``Collection.ingest`` over ``read_corpus``, or reused):

1. in-process: the same pipelines called directly (``run_pipeline`` over the open
   ``Collection``'s indexes, ``Collection.get`` as the fetch), closed loop with 1, 8
   and 32 threads for ``--seconds`` each: QPS, p50, p99;
2. over HTTP: ``genseek serve --root WORK`` in a subprocess on 127.0.0.1 (real
   uvicorn), ``POST /collections/NAME/search`` from 1, 8 and 32 concurrent httpx
   (async) clients, the same queries and pipelines; the API-overhead ratio is HTTP
   mean latency / in-process mean latency at concurrency 1 (goal <= 1.3), and the
   results of both paths are checked to be the same documents;
3. search behind a write: search latency at concurrency 1 while a writer upserts
   batches of new documents (``refresh: true``, so each batch is encoded and
   applied to both indexes before the next one) vs the same searches idle; the
   written documents are deleted again afterwards.

Systems: ``bm25`` (k=10), ``dense`` (k=10) and ``hybrid`` (RRF of both, each stage
to depth 100, k=10: the server's default pipeline). The in-process phase runs
before the server starts and once more at concurrency 1 after it stops (the
collection is locked by one process at a time); the ratio uses their mean.

    python benchmarks/api_load.py --quick      # first 600 docs, 100 queries (< 5 min)
    python benchmarks/api_load.py              # all of SciFact, 300 queries (~6 min + first build)
    python benchmarks/api_load.py --json       # one JSON object on stdout
    python benchmarks/api_load.py --report FILE

The client runs on the same machine as the server and shares its cores (two here),
so at concurrency 8 and 32 both compete for CPU: the numbers are for loopback on
this machine, not a capacity figure for a server with its own cores.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _common as C

SYSTEMS = ("bm25", "dense", "hybrid")
OVERHEAD_GOAL = 1.3
WRITE_BATCH = 16
WRITE_PREFIX = "apiload-w"
MAX_WRITES = 5000  # ids apiload-w0 .. apiload-w4999 at most; all deleted afterwards


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pipelines() -> dict[str, Any]:
    from genseek.pipeline import Pipeline, Stage

    return {"bm25": Pipeline(retrieve=[Stage(index="bm25", k=10)], k=10),
            "dense": Pipeline(retrieve=[Stage(index="dense", k=10)], k=10),
            "hybrid": Pipeline.default(["bm25", "dense"])}


# -- the collection ------------------------------------------------------------------------


def build_or_reuse(path: Path, folder: Path, limit: int | None) -> dict[str, Any]:
    """Create (or reopen and resume) the collection of the first ``limit`` documents."""
    from genseek.collection import Collection
    from genseek.data.readers import corpus_file, read_corpus

    reused = Collection.exists(path)
    start = time.perf_counter()
    collection = Collection.open(path) if reused else Collection.create(
        path, {"bm25": "bm25", "dense": "dense"})
    with collection:
        _delete_leftovers(collection)
        file = corpus_file(folder)
        stat = file.stat()
        key = f"ingest:{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"  # as beir_eval.py
        if limit is not None:
            key += f":first{limit}"
        skip = collection.resume_point(key)
        records = read_corpus(file, skip_lines=skip)
        if limit is not None:
            records = itertools.takewhile(lambda r: r[0] <= limit, records)
        report = collection.ingest(records, source_key=key, skip_lines=skip)
        docs = len(collection)
    seconds = time.perf_counter() - start
    return {"path": str(path), "reused": reused, "documents": docs,
            "upserted": report.upserted, "seconds": round(seconds, 2)}


def _delete_leftovers(collection: Any) -> None:
    """Documents a write phase left behind (an interrupted run)."""
    ids = [f"{WRITE_PREFIX}{i}" for i in range(MAX_WRITES)]
    present = collection.get(ids)
    if present:
        collection.write(deletes=list(present), sync=True)
        _log(f"deleted {len(present)} documents left by an interrupted write phase")


def read_some_docs(folder: Path, skip: int, n: int) -> list[Any]:
    """``n`` corpus documents after the first ``skip`` (texts for the write phase)."""
    from genseek.data.readers import read_corpus

    out = []
    for line, doc in read_corpus(folder):
        if line > skip:
            out.append(doc)
        if len(out) >= n:
            break
    if len(out) < n:  # a small corpus: reuse texts from the start
        out += [doc for _, doc in itertools.islice(read_corpus(folder), n - len(out))]
    return out


# -- measuring --------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


QUIET = {"wait_s": 0.0, "threshold": 0.15}  # set from --wait-quiet


def external_share(server_pid: int | None, seconds: float = 1.0) -> float | None:
    """The share of the machine's CPU that processes other than this one and the
    server used over the next ``seconds``."""
    busy0, own0 = C.busy_cpu_seconds(), time.process_time()
    srv0 = process_cpu_seconds(server_pid) if server_pid else 0.0
    start = time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - start
    busy1, own1 = C.busy_cpu_seconds(), time.process_time()
    srv1 = process_cpu_seconds(server_pid) if server_pid else 0.0
    if busy0 is None or busy1 is None or srv0 is None or srv1 is None:
        return None
    other = busy1 - busy0 - (own1 - own0) - (srv1 - srv0)
    return max(0.0, other) / (wall * (os.cpu_count() or 1))


def wait_quiet(server_pid: int | None) -> dict[str, Any] | None:
    """With ``--wait-quiet S``: wait (at most S seconds) until other processes use less
    than ``QUIET["threshold"]`` of the machine for one second."""
    if QUIET["wait_s"] <= 0:
        return None
    start = time.perf_counter()
    share = external_share(server_pid)
    while share is not None and share >= QUIET["threshold"] \
            and time.perf_counter() - start < QUIET["wait_s"]:
        share = external_share(server_pid)
    waited = time.perf_counter() - start
    quiet = share is not None and share < QUIET["threshold"]
    if not quiet:
        _log(f"the machine is still busy after {waited:.0f}s (other processes use "
             f"{share:.2f} of it); measuring anyway")
    return {"waited_s": round(waited, 1), "quiet": quiet,
            "probe_share": None if share is None else round(share, 3)}


class Cell:
    """``C.Phase`` plus the server's CPU time, so the share of the machine that neither
    this process nor the server used (``external_cpu_share``) is known."""

    def __init__(self, server_pid: int | None = None):
        self.pid = server_pid

    def __enter__(self) -> Cell:
        self.wait = wait_quiet(self.pid)
        self.server_before = process_cpu_seconds(self.pid) if self.pid else None
        self.phase = C.Phase().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.phase.__exit__(*exc)
        after = process_cpu_seconds(self.pid) if self.pid else None
        self.server_cpu = (after - self.server_before
                           if after is not None and self.server_before is not None else 0.0)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = self.phase.as_dict()
        ph = self.phase
        other = ph.other_cpu_share
        if self.pid:
            out["server_cpu_seconds"] = round(self.server_cpu, 3)
            out["server_cpu_ratio"] = round(self.server_cpu / ph.seconds, 2) if ph.seconds else 0
            if other is not None and ph.seconds > 0:
                other = max(0.0, other - self.server_cpu / (ph.seconds * (os.cpu_count() or 1)))
        out["external_cpu_share"] = None if other is None else round(other, 3)
        if self.wait is not None:
            out["wait_quiet"] = self.wait
        return out


def stats(latencies: Sequence[float], wall: float, errors: int = 0) -> dict[str, Any]:
    ms = [x * 1000 for x in latencies]
    n = len(ms)
    return {"requests": n, "errors": errors, "seconds": round(wall, 2),
            "qps": round(n / wall, 2) if wall > 0 else 0.0,
            "mean_ms": round(sum(ms) / n, 3) if n else None,
            "p50_ms": round(C.percentile(ms, 50), 3) if n else None,
            "p99_ms": round(C.percentile(ms, 99), 3) if n else None}


def closed_loop_threads(call: Callable[[str], Any] | None, queries: Sequence[str],
                        concurrency: int, seconds: float,
                        call_factory: Callable[[], Callable[[str], Any]] | None = None
                        ) -> dict[str, Any]:
    """``concurrency`` threads calling ``call(query)`` back to back for ``seconds``
    (``call_factory()`` gives each thread its own ``call``, e.g. its own connection)."""
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    start = time.perf_counter()
    stop_at = start + seconds

    def worker() -> None:
        mine = []
        fn = call_factory() if call_factory is not None else call
        while time.perf_counter() < stop_at:
            q = queries[next(counter) % len(queries)]
            t = time.perf_counter()
            try:
                fn(q)
            except Exception:  # noqa: BLE001 - counted
                with lock:
                    errors[0] += 1
                continue
            mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stats(latencies, time.perf_counter() - start, errors[0])


def in_process(path: Path, queries: Sequence[str], concurrencies: Sequence[int],
               seconds: float, systems: Sequence[str]) -> tuple[dict, dict]:
    """In-process QPS/latency per system and concurrency, and results for the check."""
    from genseek.collection import Collection
    from genseek.pipeline import run_pipeline

    out: dict[str, dict[str, Any]] = {}
    results: dict[str, list[list[str]]] = {}
    pipes = pipelines()
    with Collection.open(path) as coll:
        for system in systems:
            p = pipes[system]

            def call(q: str, p=p) -> Any:
                return run_pipeline(p, [q], coll.indexes, coll.get)

            for q in queries[:3]:
                call(q)  # warm-up: encoder, JVM, caches
            results[system] = [[r.doc_id for r in call(q)[0]] for q in queries[:20]]
            out[system] = {}
            for c in concurrencies:
                with Cell() as cell:
                    r = closed_loop_threads(call, queries, c, seconds)
                r["phase"] = cell.as_dict()
                out[system][str(c)] = r
                _log(f"in-process {system} c={c}: {r['qps']} q/s, p50 {r['p50_ms']} ms, "
                     f"p99 {r['p99_ms']} ms")
    return out, results


# -- the server -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``genseek serve --root ROOT`` on 127.0.0.1 (no keys: loopback only)."""

    def __init__(self, root: Path, log: Path):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GENSEEK_API_KEYS")}
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "genseek.cli", "serve", "--root", str(root), "--port",
             str(self.port)], stdout=self.log, stderr=self.log, env=env, cwd=C.REPO)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"error: the server exited with {self.proc.returncode}; see {log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                sys.exit(f"error: the server did not start; see {log}")
            time.sleep(0.2)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


async def _http_loop(url: str, name: str, body_of: Callable[[str], dict], queries: Sequence[str],
                     concurrency: int, seconds: float) -> dict[str, Any]:
    import httpx

    counter = itertools.count()
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        start = time.perf_counter()
        stop_at = start + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                q = queries[next(counter) % len(queries)]
                t = time.perf_counter()
                try:
                    r = await client.post(f"/collections/{name}/search", json=body_of(q))
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return stats(latencies, time.perf_counter() - start, errors)


def _raw_loop(url: str, name: str, body_of: Callable[[str], dict], queries: Sequence[str],
              concurrency: int, seconds: float) -> dict[str, Any]:
    """The same closed loop with a lean client: one keep-alive ``http.client`` connection
    per thread, JSON encoded and decoded with the standard library. It measures what
    the server and loopback cost, without httpx's own per-request work."""
    import http.client
    import json
    from urllib.parse import urlsplit

    host, port = urlsplit(url).hostname, urlsplit(url).port
    path = f"/collections/{name}/search"
    headers = {"Content-Type": "application/json"}

    def call_factory() -> Callable[[str], Any]:
        conn = http.client.HTTPConnection(host, port, timeout=120)

        def call(q: str) -> Any:
            conn.request("POST", path, json.dumps(body_of(q)).encode(), headers)
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}")
            return json.loads(data)

        return call

    return closed_loop_threads(None, queries, concurrency, seconds, call_factory=call_factory)


# A FastAPI + uvicorn (httptools, uvloop) app with the search route's shape that does no
# work: the least any FastAPI server can cost per request on this machine.
FLOOR_APP = """
import sys, uvicorn
from typing import Any
from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel
app = FastAPI()
class Body(BaseModel):
    query: str
    pipeline: dict[str, Any] | None = None
@app.post("/collections/{name}/search")
async def search(name: str, body: Body) -> Response:
    return Response(b'{"results": [], "took_ms": 0.0}', media_type="application/json")
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            loop="uvloop", http="httptools")
"""


def http_floor(queries: Sequence[str], seconds: float) -> dict[str, Any]:
    """The closed ``http.client`` loop at concurrency 1 against FLOOR_APP."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", FLOOR_APP, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.post(f"http://127.0.0.1:{port}/collections/x/search",
                           json={"query": "q"}, timeout=2).raise_for_status()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the floor app did not start") from None
                time.sleep(0.2)
        with Cell(proc.pid) as cell:
            r = _raw_loop(f"http://127.0.0.1:{port}", "x", lambda q: {"query": q}, queries, 1,
                          seconds)
        r["phase"] = cell.as_dict()
    finally:
        proc.terminate()
        proc.wait(30)
    _log(f"http floor (no-op FastAPI route, http.client) c=1: p50 {r['p50_ms']} ms, "
         f"mean {r['mean_ms']} ms")
    return r


def over_http(server: Server, name: str, queries: Sequence[str], concurrencies: Sequence[int],
              seconds: float, systems: Sequence[str]) -> tuple[dict, dict]:
    import httpx

    out: dict[str, dict[str, Any]] = {}
    results: dict[str, list[list[str]]] = {}
    pipes = {s: p.model_dump(mode="json") for s, p in pipelines().items()}
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for system in systems:
            def body(q: str, p=pipes[system]) -> dict:
                return {"query": q, "pipeline": p}

            for q in queries[:3]:  # warm-up
                client.post(f"/collections/{name}/search", json=body(q)).raise_for_status()
            results[system] = []
            for q in queries[:20]:
                r = client.post(f"/collections/{name}/search", json=body(q))
                r.raise_for_status()
                results[system].append([x["doc_id"] for x in r.json()["results"]])
            out[system] = {}
            for c in concurrencies:
                with Cell(server.proc.pid) as cell:
                    r = asyncio.run(_http_loop(server.url, name, body, queries, c, seconds))
                r["phase"] = cell.as_dict()
                out[system][str(c)] = r
                _log(f"http {system} c={c}: {r['qps']} q/s, p50 {r['p50_ms']} ms, "
                     f"p99 {r['p99_ms']} ms, errors {r['errors']}")
            with Cell(server.proc.pid) as cell:  # concurrency 1 again, lean client
                r = _raw_loop(server.url, name, body, queries, 1, seconds)
            r["phase"] = cell.as_dict()
            out[system]["1-raw"] = r
            _log(f"http {system} c=1 (http.client): {r['qps']} q/s, p50 {r['p50_ms']} ms, "
                 f"p99 {r['p99_ms']} ms, errors {r['errors']}")
    return out, results


def behind_writes(server: Server, name: str, queries: Sequence[str], texts: list[Any],
                  seconds: float, systems: Sequence[str]) -> dict[str, Any]:
    """Search latency (c=1) idle vs while a writer upserts batches with refresh."""
    import httpx

    pipes = {s: p.model_dump(mode="json") for s, p in pipelines().items()}
    out: dict[str, Any] = {"batch": WRITE_BATCH, "refresh": True, "systems": {}}
    writes: list[float] = []
    written: list[str] = []
    stop = threading.Event()
    writer_errors = [0]

    def writer() -> None:
        n = 0
        with httpx.Client(base_url=server.url, timeout=120) as client:
            while not stop.is_set() and n + WRITE_BATCH <= MAX_WRITES:
                batch = []
                for i in range(WRITE_BATCH):
                    src = texts[(n + i) % len(texts)]
                    batch.append({"id": f"{WRITE_PREFIX}{n + i}", "title": src.title,
                                  "text": src.text})
                t = time.perf_counter()
                r = client.post(f"/collections/{name}/documents",
                                json={"documents": batch, "refresh": True})
                if r.status_code != 200 or not r.json().get("refreshed"):
                    writer_errors[0] += 1
                else:
                    writes.append(time.perf_counter() - t)
                    written.extend(d["id"] for d in batch)
                n += WRITE_BATCH

    for system in systems:
        def body(q: str, p=pipes[system]) -> dict:
            return {"query": q, "pipeline": p}

        with Cell(server.proc.pid) as cell:
            idle = asyncio.run(_http_loop(server.url, name, body, queries, 1, seconds))
        idle["phase"] = cell.as_dict()
        stop.clear()
        t = threading.Thread(target=writer)
        n_before = len(written)
        wall = time.perf_counter()
        t.start()
        time.sleep(min(1.0, seconds / 4))  # the writer is under way
        with Cell(server.proc.pid) as cell:
            busy = asyncio.run(_http_loop(server.url, name, body, queries, 1, seconds))
        busy["phase"] = cell.as_dict()
        stop.set()
        t.join()
        wall = time.perf_counter() - wall
        docs = len(written) - n_before
        out["systems"][system] = {
            "idle": idle, "writing": busy,
            "p50_ratio": round(busy["p50_ms"] / idle["p50_ms"], 2),
            "p99_ratio": round(busy["p99_ms"] / idle["p99_ms"], 2),
            "extra_p50_ms": round(busy["p50_ms"] - idle["p50_ms"], 2),
            "docs_written": docs, "docs_per_s": round(docs / wall, 1)}
        _log(f"behind writes {system}: p50 {idle['p50_ms']} -> {busy['p50_ms']} ms, p99 "
             f"{idle['p99_ms']} -> {busy['p99_ms']} ms, {docs} docs written")
        if written:
            with httpx.Client(base_url=server.url, timeout=300) as client:
                r = client.post(f"/collections/{name}/documents/delete",
                                json={"ids": written, "refresh": True})
                r.raise_for_status()
            written.clear()
    out["upsert"] = stats(writes, sum(writes) or 1.0, writer_errors[0])
    out["upsert"].pop("qps")
    return out


# -- the run -------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    C.quiet_libraries()
    info = C.machine()
    folder = C.dataset_dir(args.dataset)
    limit = args.limit
    name = args.dataset if limit is None else f"{args.dataset}-{limit}"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = work / name
    _log(f"collection {path} ({'all' if limit is None else limit} documents)")
    with C.Phase() as ph:
        build = build_or_reuse(path, folder, limit)
    build["phase"] = ph.as_dict()
    _log(f"collection ready: {build['documents']} documents ({build['seconds']} s, "
         f"reused {build['reused']})")
    _, texts, _ = C.judged_queries(folder, "test")
    queries = texts[:args.queries]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    systems = [s for s in args.systems.split(",") if s]

    inproc, in_results = in_process(path, queries, concurrencies, args.seconds, systems)
    server = Server(work, work / "server.log")
    try:
        http, http_results = over_http(server, name, queries, concurrencies, args.seconds,
                                       systems)
        write_texts = read_some_docs(folder, build["documents"], 2000)
        writes = behind_writes(server, name, queries, write_texts, args.write_seconds, systems)
    finally:
        rc = server.stop()
    if rc != 0:
        _log(f"warning: the server exited with {rc}; see {work / 'server.log'}")
    again, _ = in_process(path, queries, [1], args.seconds, systems)
    floor = http_floor(queries, args.seconds)

    overhead = {}
    for system in systems:
        one = http[system]["1"]
        raw = http[system]["1-raw"]
        before, after = inproc[system]["1"], again[system]["1"]
        base_mean = (before["mean_ms"] + after["mean_ms"]) / 2
        base_p50 = (before["p50_ms"] + after["p50_ms"]) / 2
        ratio = one["mean_ms"] / base_mean
        overhead[system] = {
            "http_mean_ms": one["mean_ms"], "inprocess_mean_ms": round(base_mean, 3),
            "inprocess_mean_ms_before_after": [before["mean_ms"], after["mean_ms"]],
            "ratio_mean": round(ratio, 3), "ratio_p50": round(one["p50_ms"] / base_p50, 3),
            "extra_ms": round(one["mean_ms"] - base_mean, 3),
            "raw_http_mean_ms": raw["mean_ms"],
            "raw_ratio_mean": round(raw["mean_ms"] / base_mean, 3),
            "raw_ratio_p50": round(raw["p50_ms"] / base_p50, 3),
            "goal": OVERHEAD_GOAL, "ok": ratio <= OVERHEAD_GOAL,
            "raw_ok": raw["mean_ms"] / base_mean <= OVERHEAD_GOAL,
            "floor_ms": floor["mean_ms"],
            "best_possible_ratio": round((base_mean + floor["mean_ms"]) / base_mean, 3),
            "same_results": in_results[system] == http_results[system]}
    return {"benchmark": "api_load", "machine": info,
            "config": {"dataset": args.dataset, "limit": limit, "queries": len(queries),
                       "concurrency": concurrencies, "seconds": args.seconds,
                       "write_seconds": args.write_seconds, "systems": systems,
                       "wait_quiet_s": QUIET["wait_s"],
                       "quick": args.quick, "work": str(work)},
            "build": build, "inprocess": inproc, "inprocess_after": again, "http": http,
            "overhead": overhead, "http_floor": floor, "behind_writes": writes}


def _x(value: float) -> str:
    return f"{value:.2f}x"


def _share(cell: dict[str, Any]) -> str:
    value = cell.get("phase", {}).get("external_cpu_share")
    return "-" if value is None else f"{value:.2f}" + ("*" if value >= 0.15 else "")


def _ratio(cell: dict[str, Any], key: str) -> str:
    value = cell.get("phase", {}).get(key)
    return "-" if value is None else f"{value:.2f}"


def report(r: dict[str, Any]) -> None:
    C.print_machine(r["machine"])
    cfg = r["config"]
    b = r["build"]
    print(f"collection: {cfg['dataset']}, {b['documents']:,} documents "
          f"({'reused' if b['reused'] else 'built'} in {b['seconds']} s), bm25 + dense; "
          f"{cfg['queries']} test queries; {cfg['seconds']} s per cell"
          + (f"; waited up to {cfg['wait_quiet_s']:g} s for a quiet machine before each cell"
             if cfg.get("wait_quiet_s") else ""))
    print()
    print("QPS and latency, in-process (run_pipeline) vs HTTP (genseek serve, httpx async)")
    rows = []
    for system in cfg["systems"]:
        for c in cfg["concurrency"]:
            i, h = r["inprocess"][system][str(c)], r["http"][system][str(c)]
            rows.append((system, c, i["qps"], i["p50_ms"], i["p99_ms"], h["qps"], h["p50_ms"],
                         h["p99_ms"], _x(i["qps"] / h["qps"]) if h["qps"] else None,
                         h["errors"], _share(i), _share(h), _ratio(h, "server_cpu_ratio")))
    C.table(["system", "conc", "in q/s", "in p50 ms", "in p99 ms", "http q/s", "http p50 ms",
             "http p99 ms", "in/http q/s", "errors", "ext cpu in", "ext cpu http",
             "server cpu"], rows)
    print("ext cpu: share of the machine used by other processes during the cell (0 = quiet, "
          "1 = both cores taken; * = 0.15 or more: the cell was disturbed); server cpu: "
          "server CPU seconds per second")
    print()
    print(f"API overhead at concurrency 1 (HTTP mean latency / in-process mean latency, "
          f"in-process measured before and after the server; goal <= {OVERHEAD_GOAL})")
    rows = []
    for system, o in r["overhead"].items():
        rows.append((system, "httpx (async)", o["inprocess_mean_ms"], o["http_mean_ms"],
                     o["extra_ms"], _x(o["ratio_mean"]), _x(o["ratio_p50"]),
                     "ok" if o["ok"] else "MISSED", "yes" if o["same_results"] else "NO"))
        if "raw_http_mean_ms" in o:
            rows.append((system, "http.client", o["inprocess_mean_ms"], o["raw_http_mean_ms"],
                         round(o["raw_http_mean_ms"] - o["inprocess_mean_ms"], 3),
                         _x(o["raw_ratio_mean"]), _x(o["raw_ratio_p50"]),
                         "ok" if o["raw_ok"] else "MISSED", ""))
    C.table(["system", "client", "in-process ms", "http ms", "extra ms", "ratio (mean)",
             "ratio (p50)", "goal", "same results"], rows)
    print("httpx: the async httpx client of the load cells; http.client: one keep-alive "
          "standard-library connection, which adds less client-side time per request")
    if "http_floor" in r:
        f = r["http_floor"]
        print(f"floor: a no-op FastAPI route of the same shape costs {f['mean_ms']} ms per "
              f"request (mean; p50 {f['p50_ms']} ms) with http.client on this machine, so the "
              "best ratio any FastAPI server could reach is (in-process + floor) / in-process:")
        C.table(["system", "in-process ms", "floor ms", "best possible ratio",
                 "genseek http.client ms", "genseek above floor ms"],
                [(system, o["inprocess_mean_ms"], o["floor_ms"], _x(o["best_possible_ratio"]),
                  o["raw_http_mean_ms"],
                  round(o["raw_http_mean_ms"] - o["inprocess_mean_ms"] - o["floor_ms"], 3))
                 for system, o in r["overhead"].items() if "floor_ms" in o])
    print()
    w = r["behind_writes"]
    print(f"search latency (concurrency 1, HTTP) idle vs while a writer upserts batches of "
          f"{w['batch']} new documents with refresh=true")
    rows = []
    for system, s in w["systems"].items():
        rows.append((system, s["idle"]["p50_ms"], s["writing"]["p50_ms"], _x(s["p50_ratio"]),
                     s["idle"]["p99_ms"], s["writing"]["p99_ms"], _x(s["p99_ratio"]),
                     s["docs_per_s"], s["writing"]["errors"], _share(s["idle"]),
                     _share(s["writing"])))
    C.table(["system", "idle p50 ms", "writing p50 ms", "ratio", "idle p99 ms",
             "writing p99 ms", "ratio", "docs/s written", "errors", "ext cpu idle",
             "ext cpu writing"], rows)
    u = w["upsert"]
    print(f"upsert of {w['batch']} docs with refresh=true: {u['requests']} requests, p50 "
          f"{u['p50_ms']} ms, p99 {u['p99_ms']} ms, errors {u['errors']}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="scifact")
    p.add_argument("--quick", action="store_true",
                   help="first 600 documents, 100 queries, 2.5 s per cell (< 5 minutes)")
    p.add_argument("--limit", type=int, help="index only the first N corpus documents")
    p.add_argument("--queries", type=int, help="test queries to cycle through (300)")
    p.add_argument("--seconds", type=float, help="seconds per measurement cell (10)")
    p.add_argument("--write-seconds", type=float, help="seconds per write-phase cell (10)")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--work", default=str(C.cache("api-load")),
                   help="folder holding the collection (reused when present; the write phase "
                   "changes it, so it is not the shared $GENSEEK_CACHE/collections) and the "
                   "server log (default: %(default)s)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="before each measurement, wait up to S seconds until other "
                   "processes use less than 15%% of the machine (default: don't wait)")
    args = C.parse_args(p, argv, report)
    if args is None:
        return 0
    quick = {"limit": 600, "queries": 100, "seconds": 2.5, "write_seconds": 3.0}
    full = {"limit": None, "queries": 300, "seconds": 10.0, "write_seconds": 10.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = set(args.systems.split(",")) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown system(s) {', '.join(sorted(unknown))}; use {', '.join(SYSTEMS)}")
    QUIET["wait_s"] = args.wait_quiet
    result = run(args)
    return C.emit(result, args.json, report)


if __name__ == "__main__":
    sys.exit(main())
