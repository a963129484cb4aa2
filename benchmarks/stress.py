"""Concurrency and crash stress on the HTTP API: writers, readers and kill -9 of the server.

``genseek serve`` runs in a subprocess on 127.0.0.1 over a fresh folder with three collections:

- ``s1``: ``bm25``, ``dense``, ``impact`` and ``spann`` (every encoder the server has);
- ``s2``: ``bm25``; ``s3``: ``bm25`` and ``dense``.

For ``--seconds`` of load, ``--writers`` threads (spread over the collections) send batches of
new documents, replacements of their own earlier documents and deletes, and every few batches
``refresh: true`` and then check read-your-writes (the new version found first by bm25, the
replaced version and the deleted document not found); ``--readers`` threads search the
collections with the default RRF pipeline, bm25 alone and dense alone, and check every list
(no document twice, no document of another collection). The server is killed with SIGKILL
``--kills`` times and restarted on the same folder and port; the load runs ``--seconds`` in all,
in equal stretches between the kills, each stretch starting once every collection is open
again (opening loads the models and catches the indexes up; the load goes on meanwhile).
Requests that meet the dead server are retried and counted as "refused during restart", not
as errors.

At the end the load stops, each collection is waited for until every index has caught up
(``GET /collections/{name}/ready``), and the whole state is checked against what the server
acknowledged: every acknowledged live document is there with its last acknowledged version
(``lost`` otherwise), every acknowledged delete is gone, the batch in flight at each kill is
there entirely or not at all, each index holds exactly the store's documents (``duplicates``
otherwise), bm25 finds each live document's current version first and never a replaced one
(``stale``), and no collection returns another's documents (``leaked``). Any HTTP 5xx at any
time counts.

    python benchmarks/stress.py --quick        # 30 s, 2 kills (< 5 min with the checks)
    python benchmarks/stress.py                # 60 s, 5 kills
    python benchmarks/stress.py --json         # one JSON object on stdout

Every loop is bounded in time and count; the only traffic is to the server on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as C

COLLECTIONS = {
    "s1": {"bm25": "bm25", "dense": "dense", "impact": "impact", "spann": "spann"},
    "s2": {"bm25": "bm25"},
    "s3": {"bm25": "bm25", "dense": "dense"},
}
NEW_PER_BATCH = {"s1": 2, "s2": 6, "s3": 3}  # the encoders of s1 are what limits the rate
PAUSE = {"s1": 0.6, "s2": 0.05, "s3": 0.3}  # seconds between a writer's batches
MAX_BATCHES = 5000  # per writer, whatever the duration
WORDS = ["wing", "lift", "drag", "pressure", "shock", "nozzle", "cell", "protein", "gene", "enzyme", "membrane", "library", "catalog", "citation", "journal", "algorithm", "memory", "cache", "network", "energy", "photon", "wave"]
REFUSED = "refused"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def token(coll: str, writer: int, n: int, version: int) -> str:
    """A word that occurs in exactly one document version (letters only: one bm25 term)."""
    def letters(x: int) -> str:
        out = ""
        while True:
            out = chr(ord("a") + x % 26) + out
            x //= 26
            if x == 0:
                return out
    return f"zq{coll}x{letters(writer)}x{letters(n)}x{letters(version)}"


class Server:
    """``genseek serve`` on a fixed loopback port; :meth:`kill` is SIGKILL, by PID."""

    def __init__(self, root: Path, log: Path):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.root, self.log_path = root, log
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts: list[float] = []

    def start(self, timeout: float = 240) -> float:
        import httpx

        env = {k: v for k, v in os.environ.items() if not k.startswith("GENSEEK_API_KEYS")}
        env.update({"TOKENIZERS_PARALLELISM": "false", "GENSEEK_REQUEST_TIMEOUT_S": "120"})
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "genseek.cli", "serve", "--root", str(self.root),
                 "--host", "127.0.0.1", "--port", str(self.port)], stdout=log, stderr=log,
                env=env, cwd=C.REPO)
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                sys.exit(f"error: the server exited with {self.proc.returncode}; see "
                         f"{self.log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    self.starts.append(time.monotonic() - t0)
                    return self.starts[-1]
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        sys.exit(f"error: the server did not start in {timeout:.0f} s; see {self.log_path}")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(180)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Counters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    values: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, n: int = 1, example: str | None = None) -> None:
        with self.lock:
            self.values[name] = self.values.get(name, 0) + n
            if example is not None and len(self.examples.setdefault(name, [])) < 5:
                self.examples[name].append(example)

    def get(self, name: str) -> int:
        return self.values.get(name, 0)


class Client:
    """One httpx client; a request that meets a dead server is retried until ``stop``."""

    def __init__(self, url: str, counters: Counters, stop: threading.Event):
        import httpx

        self.http = httpx.Client(base_url=url, timeout=180)
        self.counters, self.stop = counters, stop

    def call(self, method: str, path: str, body: Any = None, retry: bool = True) -> Any:
        import httpx

        while True:
            try:
                r = self.http.request(method, path, json=body)
            except httpx.TransportError:
                self.counters.add("refused_during_restart")
                if not retry or self.stop.is_set():
                    return REFUSED
                time.sleep(0.2)
                continue
            if r.status_code >= 500:
                self.counters.add("http_5xx", example=f"{method} {path}: {r.status_code} "
                                  f"{r.text[:200]}")
                if retry and not self.stop.is_set() and r.status_code == 503:
                    time.sleep(0.2)  # e.g. a collection still opening after the restart
                    continue
            return r

    def close(self) -> None:
        self.http.close()


@dataclass
class WriterState:
    coll: str
    writer: int
    live: dict[str, int] = field(default_factory=dict)  # id -> acknowledged version
    gone: set[str] = field(default_factory=set)  # acknowledged deletes (never reused)
    replaced: dict[str, list[int]] = field(default_factory=dict)  # id -> superseded versions
    uncertain: list[dict[str, Any]] = field(default_factory=list)  # batches in flight at a kill
    sent: dict[str, int] = field(default_factory=dict)  # id -> highest version ever sent
    batches: int = 0
    next_n: int = 0


def text_of(coll: str, writer: int, n: int, version: int, rng: random.Random) -> str:
    return " ".join(rng.sample(WORDS, 6) + [token(coll, writer, n, version)])


def bm25_ids(client: Client, coll: str, query: str, k: int = 10) -> list[str] | None:
    r = client.call("POST", f"/collections/{coll}/search", {
        "query": query, "pipeline": {"retrieve": [{"index": "bm25", "k": k}], "k": k}})
    if r is REFUSED or r.status_code != 200:
        return None
    return [h["doc_id"] for h in r.json()["results"]]


def writer_loop(state: WriterState, url: str, counters: Counters, stop: threading.Event,
                seed: int) -> None:
    rng = random.Random(seed)
    client = Client(url, counters, stop)
    coll, w = state.coll, state.writer
    try:
        while not stop.is_set() and state.batches < MAX_BATCHES:
            docs: list[dict[str, Any]] = []
            versions: dict[str, int] = {}
            for _ in range(NEW_PER_BATCH[coll]):
                doc_id = f"{coll}-w{w}-{state.next_n}"
                versions[doc_id] = 0
                docs.append({"id": doc_id, "title": "", "text": text_of(
                    coll, w, state.next_n, 0, rng)})
                state.next_n += 1
            replace = rng.choice(sorted(state.live)) if state.live and rng.random() < 0.5 \
                else None
            if replace is not None:  # versions only grow, also past a batch lost at a kill
                n = int(replace.rsplit("-", 1)[1])
                version = state.sent.get(replace, 0) + 1
                state.sent[replace] = version
                versions[replace] = version
                docs.append({"id": replace, "text": text_of(coll, w, n, version, rng)})
            candidates = sorted(set(state.live) - {replace} if replace else set(state.live))
            delete = rng.choice(candidates) if candidates and rng.random() < 0.3 else None
            refresh = state.batches % 3 == 2
            batch = {"docs": versions, "delete": delete}
            r = client.call("POST", f"/collections/{coll}/documents",
                            {"documents": docs, "refresh": refresh}, retry=False)
            ok = r is not REFUSED and r.status_code == 200
            deleted_version = state.live.get(delete) if delete is not None else None
            if ok and delete is not None:
                r2 = client.call("POST", f"/collections/{coll}/documents/delete",
                                 {"ids": [delete], "refresh": refresh}, retry=False)
                if r2 is REFUSED or r2.status_code != 200:
                    state.uncertain.append({"docs": {}, "delete": delete})
                    delete = None
                    if r2 is REFUSED:
                        counters.add("batches_in_flight_at_a_kill")
                        client.call("GET", "/health")  # wait for the restart
            if not ok:
                if r is REFUSED:
                    state.uncertain.append(batch)
                    counters.add("batches_in_flight_at_a_kill")
                    client.call("GET", "/health")  # wait for the restart
                else:
                    counters.add("writes_refused", example=f"{r.status_code} {r.text[:200]}")
                continue
            state.batches += 1
            counters.add("acknowledged_documents", len(docs))
            for doc_id, version in versions.items():
                if doc_id in state.live:
                    state.replaced.setdefault(doc_id, []).append(state.live[doc_id])
                state.live[doc_id] = version
            if delete is not None:
                state.live.pop(delete, None)
                state.gone.add(delete)
                counters.add("acknowledged_deletes")
            if refresh and r.json().get("refreshed"):
                check_read_your_writes(client, state, versions, replace,
                                       (delete, deleted_version) if delete else None, counters,
                                       r.json()["seq"])
            time.sleep(PAUSE[coll])
    finally:
        client.close()


def check_read_your_writes(client: Client, state: WriterState, versions: dict[str, int],
                           replaced: str | None, deleted: tuple[str, int | None] | None,
                           counters: Counters, seq: int = -1) -> None:
    coll, w = state.coll, state.writer
    for doc_id, version in versions.items():
        n = int(doc_id.rsplit("-", 1)[1])
        got = bm25_ids(client, coll, token(coll, w, n, version))
        if got is None:
            continue
        counters.add("read_your_writes_checks")
        if got[:1] != [doc_id]:
            time.sleep(2.0)  # stale (found later) or lost (never)?
            later = bm25_ids(client, coll, token(coll, w, n, version))
            stats = client.call("GET", f"/collections/{coll}")
            lags = {} if stats is REFUSED else {
                i: x.get("applied_seq") for i, x in stats.json()["indexes"].items()}
            counters.add("read_your_writes_failures", example=(
                f"{doc_id} v{version} (write seq {seq}): {got}; 2 s later {later}; applied "
                f"{lags}; {time.strftime('%H:%M:%S')}"))
    if replaced is not None:
        n = int(replaced.rsplit("-", 1)[1])
        for old in state.replaced.get(replaced, [])[-1:]:
            got = bm25_ids(client, coll, token(coll, w, n, old))
            if got is not None and replaced in got:
                counters.add("stale_versions", example=f"{replaced} v{old} after refresh")
    if deleted is not None and deleted[1] is not None:
        doc_id, version = deleted
        n = int(doc_id.rsplit("-", 1)[1])
        found = bm25_ids(client, coll, token(coll, w, n, version), k=3)
        if found is not None and doc_id in found:
            counters.add("deleted_visible_after_refresh", example=f"{doc_id} v{version}")


def reader_loop(coll: str, url: str, states: list[WriterState], counters: Counters,
                stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    client = Client(url, counters, stop)
    pipelines = [None, {"retrieve": [{"index": "bm25", "k": 20}], "k": 20}]
    if "dense" in COLLECTIONS[coll]:
        pipelines.append({"retrieve": [{"index": "dense", "k": 20}], "k": 20})
    own = [s for s in states if s.coll == coll]
    try:
        while not stop.is_set():
            pool = [d for s in own for d in list(s.live)[-20:]]
            if pool and rng.random() < 0.5:
                doc_id = rng.choice(pool)
                coll_, w, n = doc_id.split("-")
                query = token(coll, int(w[1:]), int(n), 0) + " " + rng.choice(WORDS)
            else:
                query = " ".join(rng.sample(WORDS, 3))
            body: dict[str, Any] = {"query": query}
            pipeline = rng.choice(pipelines)
            if pipeline is not None:
                body["pipeline"] = pipeline
            r = client.call("POST", f"/collections/{coll}/search", body)
            if r is REFUSED or r.status_code != 200:
                continue
            counters.add("searches")
            ids = [h["doc_id"] for h in r.json()["results"]]
            if len(ids) != len(set(ids)):
                counters.add("duplicates", example=f"{coll} {query!r}: {ids}")
            foreign = [d for d in ids if not d.startswith(f"{coll}-")]
            if foreign:
                counters.add("leaked_across_collections", len(foreign),
                             example=f"{coll}: {foreign[:3]}")
    finally:
        client.close()


def open_all(url: str, timeout: float) -> float:
    """Seconds until every collection answers after a restart (it opens on first use: the
    models load and the indexes catch up); the load goes on meanwhile."""
    import httpx

    start = time.monotonic()
    with httpx.Client(base_url=url, timeout=timeout) as http:
        for coll in COLLECTIONS:
            while time.monotonic() - start < timeout:
                try:
                    if http.get(f"/collections/{coll}").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
    return round(time.monotonic() - start, 1)


def wait_caught_up(client: Client, timeout: float) -> dict[str, float]:
    start, out = time.monotonic(), {}
    for coll in COLLECTIONS:
        while True:
            r = client.call("GET", f"/collections/{coll}/ready")
            if r is not REFUSED and r.status_code == 200:
                out[coll] = round(time.monotonic() - start, 1)
                break
            if time.monotonic() - start > timeout:
                out[coll] = float("nan")
                break
            time.sleep(1.0)
    return out


def final_checks(client: Client, states: list[WriterState], counters: Counters) -> None:
    """Every acknowledged document, delete and version against the server's state."""
    for s in states:
        for batch in s.uncertain:  # all or nothing
            docs = batch["docs"]
            present = []
            for doc_id, version in docs.items():
                if s.live.get(doc_id, -1) > version or doc_id in s.gone:
                    continue  # replaced or deleted by a later acknowledged write
                r = client.call("GET", f"/collections/{s.coll}/documents/{doc_id}")
                n = int(doc_id.rsplit("-", 1)[1])
                present.append(r.status_code == 200
                               and token(s.coll, s.writer, n, version) in r.json()["text"])
            if present and len(set(present)) > 1:
                counters.add("torn_batches", example=f"{s.coll}: {docs}")
            if present and all(present):  # the server stored it before the kill
                counters.add("in_flight_batches_stored")
                for doc_id, version in docs.items():
                    if doc_id in s.gone:
                        continue
                    if doc_id in s.live and s.live[doc_id] > version:  # replaced again later
                        s.replaced.setdefault(doc_id, []).append(version)
                        continue
                    if doc_id in s.live:
                        s.replaced.setdefault(doc_id, []).append(s.live[doc_id])
                    s.live[doc_id] = version
            if batch["delete"] is not None:
                r = client.call("GET", f"/collections/{s.coll}/documents/{batch['delete']}")
                if r.status_code == 404:
                    s.live.pop(batch["delete"], None)
                    s.gone.add(batch["delete"])
        for doc_id, version in s.live.items():
            r = client.call("GET", f"/collections/{s.coll}/documents/{doc_id}")
            n = int(doc_id.rsplit("-", 1)[1])
            counters.add("checked_documents")
            if r.status_code != 200 or token(s.coll, s.writer, n, version) not in r.json()["text"]:
                counters.add("lost", example=f"{doc_id} v{version}: {r.status_code}")
                continue
            got = bm25_ids(client, s.coll, token(s.coll, s.writer, n, version), k=5)
            if got is not None and got[:1] != [doc_id]:
                counters.add("not_found_by_bm25", example=f"{doc_id}: {got}")
            for old in s.replaced.get(doc_id, []):
                got = bm25_ids(client, s.coll, token(s.coll, s.writer, n, old), k=5)
                counters.add("checked_replaced_versions")
                if got is not None and doc_id in got:
                    counters.add("stale_versions", example=f"{doc_id} v{old}")
        for doc_id in s.gone:
            r = client.call("GET", f"/collections/{s.coll}/documents/{doc_id}")
            if r.status_code != 404:
                counters.add("deletes_lost", example=doc_id)
    for coll in COLLECTIONS:
        stats = client.call("GET", f"/collections/{coll}").json()
        expected = sum(len(s.live) for s in states if s.coll == coll)
        if stats["documents"] != expected:
            counters.add("lost" if stats["documents"] < expected else "duplicates",
                         abs(stats["documents"] - expected),
                         example=f"{coll}: store {stats['documents']} vs {expected}")
        for name, ix in stats["indexes"].items():
            if ix.get("documents") != stats["documents"]:
                counters.add("duplicates" if (ix.get("documents") or 0) > stats["documents"]
                             else "lost", example=f"{coll}/{name}: {ix.get('documents')} vs "
                             f"{stats['documents']}")
        for other in COLLECTIONS:  # another collection's ids are never there
            if other == coll:
                continue
            for s in [s for s in states if s.coll == other][:1]:
                for doc_id in list(s.live)[:20]:
                    r = client.call("GET", f"/collections/{coll}/documents/{doc_id}")
                    if r.status_code != 404:
                        counters.add("leaked_across_collections", example=f"{doc_id} in {coll}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    C.quiet_libraries()
    info = C.machine()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="genseek-stress-"))
    root = work / "root"
    if root.exists() and any(root.iterdir()):
        sys.exit(f"error: {root} is not empty; give a new --work folder")
    root.mkdir(parents=True, exist_ok=True)
    server = Server(root, work / "server.log")
    counters, stop = Counters(), threading.Event()
    _log(f"starting the server on {server.url} (log {work / 'server.log'})")
    server.start()
    with httpx.Client(base_url=server.url, timeout=600) as http:
        for name, indexes in COLLECTIONS.items():
            r = http.post("/collections", json={"name": name, "indexes": indexes})
            if r.status_code != 201:
                sys.exit(f"error: creating {name}: {r.status_code} {r.text[:300]}")
    names = list(COLLECTIONS)
    states = [WriterState(names[i % len(names)], i) for i in range(args.writers)]
    threads = [threading.Thread(target=writer_loop, args=(s, server.url, counters, stop, i))
               for i, s in enumerate(states)]
    threads += [threading.Thread(target=reader_loop, args=(names[i % len(names)], server.url,
                                                           states, counters, stop, 1000 + i))
                for i in range(args.readers)]
    _log(f"load: {args.writers} writers, {args.readers} readers for {args.seconds:.0f} s, "
         f"{args.kills} kill -9 / restart cycles")
    with C.Phase() as load:
        for t in threads:
            t.start()
        restarts, reopens = [], []
        segment = args.seconds / (args.kills + 1)  # load between kills, collections open
        for i in range(args.kills):
            time.sleep(segment)
            server.kill()
            _log(f"kill -9 #{i + 1} (pid gone); restarting")
            restarts.append(round(server.start(), 1))
            reopens.append(open_all(server.url, args.catch_up_timeout))
            _log(f"serving again; every collection open after {reopens[-1]} s")
        time.sleep(segment)
        stop.set()
        for t in threads:
            t.join(300)
    _log("load stopped; waiting for every index to catch up")
    client = Client(server.url, counters, threading.Event())
    caught_up = wait_caught_up(client, args.catch_up_timeout)
    _log("checking every acknowledged document")
    with C.Phase() as check:
        final_checks(client, states, counters)
    client.close()
    server.stop()
    v = counters.values
    result = {
        "machine": info, "work": str(work), "seconds": args.seconds, "kills": args.kills,
        "writers": args.writers, "readers": args.readers, "restart_seconds": restarts,
        "reopen_seconds": reopens,
        "catch_up_seconds": caught_up, "load": load.as_dict(), "check": check.as_dict(),
        "counts": dict(sorted(v.items())), "examples": counters.examples,
        "per_collection": {c: {"live": sum(len(s.live) for s in states if s.coll == c),
                               "deleted": sum(len(s.gone) for s in states if s.coll == c),
                               "batches": sum(s.batches for s in states if s.coll == c)}
                           for c in COLLECTIONS},
    }
    bad = ("lost", "deletes_lost", "leaked_across_collections", "duplicates", "stale_versions",
           "http_5xx", "torn_batches", "read_your_writes_failures",
           "deleted_visible_after_refresh", "not_found_by_bm25", "writes_refused")
    result["failures"] = {k: v.get(k, 0) for k in bad}
    result["ok"] = not any(result["failures"].values())
    return result


def report(r: dict[str, Any]) -> None:
    C.print_machine(r["machine"])
    print(f"\n{r['seconds']:.0f} s of load, {r['writers']} writers, {r['readers']} readers, "
          f"{r['kills']} kill -9 / restart cycles (the server answered after "
          f"{r['restart_seconds']} s, every collection was open after "
          f"{r.get('reopen_seconds')} s; load ran between them); "
          f"load average {r['load']['load1_before']} -> {r['load']['load1_after']}")
    c = r["counts"]
    C.table(["figure", "count"], [
        ["acknowledged documents (upserts)", c.get("acknowledged_documents", 0)],
        ["acknowledged deletes", c.get("acknowledged_deletes", 0)],
        ["live documents checked at the end", c.get("checked_documents", 0)],
        ["replaced versions checked", c.get("checked_replaced_versions", 0)],
        ["searches checked", c.get("searches", 0)],
        ["read-your-writes checks (refresh)", c.get("read_your_writes_checks", 0)],
        ["batches in flight at a kill", c.get("batches_in_flight_at_a_kill", 0)],
        ["  of them stored (all or nothing)", c.get("in_flight_batches_stored", 0)],
        ["requests refused during restarts", c.get("refused_during_restart", 0)],
    ])
    print()
    C.table(["must be 0", "count"], [[k, n] for k, n in r["failures"].items()])
    for k, ex in r["examples"].items():
        if k in r["failures"] and r["failures"][k]:
            print(f"  {k}: {ex}")
    print(f"\ncaught up after the load (s): {r['catch_up_seconds']}")
    print("per collection:", r["per_collection"])
    print("\nRESULT:", "OK" if r["ok"] else "FAILED")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="30 s of load and 2 kills")
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of load")
    p.add_argument("--kills", type=int, default=5, help="kill -9 / restart cycles")
    p.add_argument("--writers", type=int, default=6, help="writer threads")
    p.add_argument("--readers", type=int, default=24, help="reader threads")
    p.add_argument("--catch-up-timeout", type=float, default=600.0,
                   help="seconds to wait for every index to catch up after the load")
    p.add_argument("--work", help="a new folder for the server's collections (default: a "
                   "temporary folder)")
    args = C.parse_args(p, argv, report)
    if args is None:
        return 0
    if args.quick:
        args.seconds, args.kills = min(args.seconds, 30.0), min(args.kills, 2)
    result = run(args)
    C.emit(result, args.json, report)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
