"""A two-node Ray cluster on this machine, with ``genseek index --ray HOST:PORT`` on it.

The head (``ray start --head``, 127.0.0.3) and a worker node (127.0.0.2) run as two
``ray start --block`` processes, each on its own loopback address (Ray replaces a node address
of 127.0.0.1 by the machine's interface address, and a node on 127.0.0.1 cannot be joined),
with its own temporary folder, its own free ports, one CPU, and token authentication with a
token of this test's own. Both advertise one ``genseek_encoder``, so the two encoder actors,
which need one each, land one per node. The driver is the real CLI in a subprocess.

Checked: an encoder actor ran on each node (the actor processes are descendants of each
node's ``ray start``); every TCP connection of every Ray process (by PID, with ``ss``) has both
ends on 127.0.0.0/8, and no socket is bound to an address outside it; killing the worker
node's raylet (SIGKILL, by PID) after the first committed batch ends with the same collection
as the uninterrupted run. Ray 2.60 binds its gRPC servers (GCS, raylet, object manager, core
workers) and the autoscaler's metrics server to the wildcard address for any node address
other than 127.0.0.1; the test lists those listeners and allows only them (see
ARCHITECTURE.md, "Running on Ray"). Every process started here is stopped by its PID (never
``ray stop``, which kills by name), whatever happens; every wait is bounded (the launcher,
shared with ``benchmarks/scale.py``, is :mod:`genseek.localcluster`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'genseek[ray]')")
psutil = pytest.importorskip("psutil")

from _compare import assert_same_collection  # noqa: E402

from genseek.collection import Collection  # noqa: E402
from genseek.data.readers import read_corpus, read_queries  # noqa: E402
from genseek.localcluster import Tree, loopback_cluster, wait  # noqa: E402

pytestmark = pytest.mark.slow

HEAD_IP, WORKER_IP = "127.0.0.3", "127.0.0.2"
BIN = Path(sys.executable).parent
SPECS = {"bm25": "bm25", "dense": "dense"}
START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 420
WILDCARD_OWNERS = ("gcs_server", "raylet", "ray::", "python", "genseek")
"""Processes Ray 2.60 lets listen on the wildcard address (gRPC servers of GCS, raylet and
core workers, the driver's, ``genseek``, among them; the autoscaler's metrics server)."""


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[dict]:
    """The head on 127.0.0.3 and a worker on 127.0.0.2 (genseek.localcluster); stopped by
    PID at the end, failing if anything is left running."""
    nodes = [(HEAD_IP, {"head_node": 1, "genseek_encoder": 1}),
             (WORKER_IP, {"worker_node": 1, "genseek_encoder": 1})]
    with loopback_cluster(nodes, timeout=START_TIMEOUT_S) as cluster:
        head, worker = cluster.nodes
        yield {"address": cluster.address, "head": head, "worker": worker, "env": cluster.env,
               "temp": cluster.temp, "cluster": cluster,
               "start_seconds": cluster.start_seconds}


def _sockets(pids: set[int]) -> list[tuple[str, str, str, str]]:
    """``(state, local, peer, owner)`` of every TCP socket of ``pids`` (listening included)."""
    out = subprocess.run(["ss", "-tanpH"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            fields = line.split()
            names = re.findall(r'\(\("([^"]*)"', line)
            found.append((fields[0], fields[3], fields[4], names[0] if names else "?"))
    return found


def _host(endpoint: str) -> str:
    return endpoint.rsplit(":", 1)[0].strip("[]").split("%")[0]


def _loopback(endpoint: str) -> bool:
    host = _host(endpoint)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return isinstance(address, ipaddress.IPv4Address) and address.is_loopback


def _wildcard(endpoint: str) -> bool:
    return _host(endpoint) in ("*", "0.0.0.0", "::")


def _committed(collection: Path) -> int:
    """The last line the store has committed (0 before the first batch)."""
    try:
        db = sqlite3.connect(f"file:{collection / 'docs.sqlite'}?mode=ro", uri=True,
                             timeout=1)
        try:
            row = db.execute("SELECT value FROM meta WHERE key LIKE 'ingest:%'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return 0
    return int(json.loads(row[0])["line"]) if row else 0


def _index(nodes: dict, collection: Path, corpus: Path, log: Path) -> Tree:
    argv = [str(BIN / "genseek"), "index", str(collection), "--from", str(corpus),
            "--index", "bm25", "--index", "dense", "--batch-size", "20",
            "--ray", nodes["address"], "--ray-actors", "2", "--ray-resource", "genseek_encoder",
            "--no-progress", "--json"]
    return nodes["cluster"].run("genseek index", argv, log)


def _summary(log: Path) -> dict:
    """The CLI's --json summary among the lines of its log."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        with contextlib.suppress(ValueError):
            found = json.loads(line)
            if isinstance(found, dict) and "read" in found:
                return found
    raise AssertionError(f"no summary in {log}: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, datasets_root) -> Path:
    source = datasets_root / "scifact" / "corpus.jsonl"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    out = tmp_path_factory.mktemp("corpus") / "scifact100.jsonl"
    with open(source, encoding="utf-8") as fh:
        out.write_text("".join(next(fh) for _ in range(100)), encoding="utf-8")
    return out


def test_two_nodes_index_and_survive_losing_one(two_nodes, corpus, datasets_root, tmp_path):
    head, worker = two_nodes["head"], two_nodes["worker"]
    queries = list(read_queries(datasets_root / "scifact").values())[:20]
    reference = tmp_path / "single"
    stat = corpus.stat()  # the CLI's resume key, so that the stores are equal row for row
    key = f"ingest:{corpus.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    with Collection.create(reference, SPECS) as c:
        c.ingest(read_corpus(corpus), source_key=key, batch_size=20)

    def rss(procs: list[psutil.Process]) -> int:
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _wait(what: str, check, timeout: float, trees: list[Tree]) -> None:
        try:
            wait(what, check, timeout, trees)
        except (RuntimeError, TimeoutError) as err:
            raise AssertionError(str(err)) from None

    idle = {"head_mib": rss(head.note()) >> 20, "worker_mib": rss(worker.note()) >> 20}

    # 1. One encoder actor on each node; the sockets of every Ray process mid-job.
    path = tmp_path / "ray"
    job = _index(two_nodes, path, corpus, tmp_path / "index.log")
    _wait("an encoder actor on each node and a committed batch",
          lambda: bool(head.named("Encode")) and bool(worker.named("Encode"))
          and _committed(path) > 0, JOB_TIMEOUT_S, [job, head, worker])
    pids = {p.pid for tree in (head, worker, job) for p in tree.note()}
    sockets = _sockets(pids)
    busy = {"head_mib": rss(head.note()) >> 20, "worker_mib": rss(worker.note()) >> 20,
            "actor_mib": [rss([p]) >> 20 for tree in (head, worker) for p in tree.named("Encode")],
            "driver_mib": rss(job.note()) >> 20}
    assert job.proc.wait(timeout=JOB_TIMEOUT_S) == 0, job.log.read_text()[-3000:]
    summary = _summary(job.log)
    assert (summary["read"], summary["upserted"]) == (100, 100)
    assert sockets
    connections = [s for s in sockets if s[0] != "LISTEN"]
    listening = [s for s in sockets if s[0] == "LISTEN"]
    assert connections and all(_loopback(s[1]) and _loopback(s[2]) for s in connections), \
        [s for s in connections if not (_loopback(s[1]) and _loopback(s[2]))]
    outside = [s for s in listening if not _loopback(s[1]) and not _wildcard(s[1])]
    assert not outside, f"listening off 127.0.0.0/8: {outside}"
    wildcard = [s for s in listening if _wildcard(s[1])]
    assert all(s[3].startswith(WILDCARD_OWNERS) for s in wildcard), wildcard
    assert any(_host(s[1]) == HEAD_IP for s in listening)
    assert any(_host(s[1]) == WORKER_IP for s in listening)
    print(json.dumps({"cluster_start_seconds": round(two_nodes["start_seconds"], 1),
                      "rss_idle": idle, "rss_mid_job": busy, "sockets": len(sockets),
                      "wildcard_listeners": sorted({s[3] for s in wildcard})}))
    assert_same_collection(reference, path, queries)

    # 2. The worker node's raylet killed after the first committed batch: the driver notices
    #    the lost node, restarts the Dataset at the batch it was waiting for with the actor
    #    the head holds, and ends with the same collection.
    path2 = tmp_path / "ray-killed"
    job2 = _index(two_nodes, path2, corpus, tmp_path / "index-killed.log")
    _wait("the first committed batch", lambda: _committed(path2) > 0, JOB_TIMEOUT_S,
          [job2, head, worker])
    raylets = worker.named("raylet")
    assert raylets, "no raylet on the worker node"
    worker.note()  # its workers: orphaned by the kill, then they exit (or are stopped here)
    os.kill(raylets[0].pid, signal.SIGKILL)
    assert job2.proc.wait(timeout=JOB_TIMEOUT_S) == 0, job2.log.read_text()[-3000:]
    log = job2.log.read_text()
    assert "lost Ray node" in log and "restarting the job at line" in log, log[-3000:]
    assert _summary(job2.log)["read"] == 100
    assert_same_collection(path, path2, queries)
    _wait("the worker node's processes to exit", lambda: not worker.alive(), 60, [])
