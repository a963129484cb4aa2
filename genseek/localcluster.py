"""A Ray cluster of several nodes on one machine, each node on its own loopback address.

For trying a cluster without one, and for the tests and benchmarks that need real separate
nodes (``tests/integration/test_ray_cluster.py``, ``benchmarks/scale.py``)::

    from genseek.localcluster import loopback_cluster

    with loopback_cluster([("127.0.0.3", {"genseek_encoder": 1}),
                           ("127.0.0.2", {"genseek_encoder": 1})]) as cluster:
        subprocess.run(["genseek", "index", "c", "--from", "corpus.jsonl",
                        "--ray", cluster.address, "--ray-resource", "genseek_encoder"],
                       env=cluster.env)

The first node is the head (``ray start --head``), each other one a ``ray start --address``
node; every node is a ``ray start --block`` process with its own address, temporary folder,
free ports, CPUs and custom resources, and token authentication with a token of this cluster's
own (``cluster.env`` carries it to the processes that join). Ray replaces a node address of
127.0.0.1 by the machine's interface address, and a node on 127.0.0.1 cannot be joined, so use
other 127.0.0.x addresses. Ray 2.60 binds its gRPC servers to the wildcard address for any
node address other than 127.0.0.1 (see ARCHITECTURE.md, "Running on Ray").

Every process started here is stopped by its PID (never ``ray stop``, which kills by name),
whatever happens: the processes of each node's tree are remembered by (PID, start time), and
strays are found by a mark in their environment. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MARK = "GENSEEK_LOOPBACK_CLUSTER"
"""The environment variable whose value marks every process a cluster here started."""
START_TIMEOUT_S = 120.0


def free_ports(ip: str, n: int) -> list[int]:
    """``n`` ports free on ``ip`` now (bound then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((ip, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_range(ip: str, width: int = 40) -> int:
    """The first of ``width`` consecutive free ports (a node's worker port range)."""
    for _ in range(200):
        start = free_ports(ip, 1)[0]
        if start + width > 65535:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(start, start + width):
                s = socket.socket()
                held.append(s)
                s.bind((ip, port))
            return start
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no {width} consecutive free ports on {ip}")


class Tree:
    """A process started here and every process it started, remembered by (PID, start time)
    so that they are stopped by PID even once orphaned."""

    def __init__(self, name: str, argv: list[str], log: Path, env: Mapping[str, str]):
        self.name = name
        self.log = log
        self.seen: dict[int, float] = {}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=dict(env))
        self.note()

    def note(self) -> list[psutil.Process]:
        """The tree's processes now (remembered)."""
        procs: list[psutil.Process] = []
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                self.seen.setdefault(p.pid, p.create_time())
        return procs

    def named(self, part: str) -> list[psutil.Process]:
        """The tree's processes whose command line contains ``part`` (or named ``part``)."""
        out = []
        for p in self.note():
            with contextlib.suppress(psutil.NoSuchProcess):
                if part in " ".join(p.cmdline()) or p.name() == part:
                    out.append(p)
        return out

    def alive(self) -> list[psutil.Process]:
        """The remembered processes still running (the same PID and start time)."""
        out = []
        for pid, created in self.seen.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                p = psutil.Process(pid)
                if abs(p.create_time() - created) < 0.01 and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
        return out

    def rss(self) -> int:
        """Resident bytes of the tree's processes now."""
        total = 0
        for p in self.note():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def stop(self) -> None:
        """SIGTERM every remembered process, SIGKILL what is left after 15 s; by PID."""
        self.note()
        procs = self.alive()
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, left = psutil.wait_procs(procs, timeout=15)
        for p in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(left, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def wait(what: str, check: Callable[[], bool], timeout: float,
         trees: Sequence[Tree] = ()) -> None:
    """Poll ``check`` until true; an error naming ``what`` after ``timeout`` seconds, or at
    once when one of ``trees`` exits (with the end of its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for tree in trees:
            if tree.proc.poll() is not None:
                raise RuntimeError(f"{tree.name} exited ({tree.proc.returncode}): "
                                   f"{tree.log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def marked(mark: str) -> list[psutil.Process]:
    """The running processes whose environment holds ``MARK=mark``."""
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.environ().get(MARK) == mark and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


def node_args(ip: str, temp: Path, resources: Mapping[str, float], cpus: int = 1,
              object_store_mib: int = 300, avoid: Sequence[int] = ()) -> list[str]:
    """``ray start`` options of a node on ``ip``: its own ports (none in ``avoid``, none in its
    worker port range), temporary folder, CPUs and custom resources."""
    low = free_range(ip)
    for _ in range(100):
        if not any(low <= p < low + 40 for p in avoid):
            break
        low = free_range(ip)
    for _ in range(100):  # Ray refuses a node whose ports collide with its worker port range
        ports = free_ports(ip, 6)
        if not any(low <= p < low + 40 or p in avoid for p in ports) \
                and len(set(ports)) == len(ports):
            break
    else:
        raise RuntimeError(f"no free ports on {ip} outside {low}..{low + 39}")
    return ["--node-ip-address", ip, "--num-cpus", str(cpus),
            "--resources", json.dumps(dict(resources)),
            "--temp-dir", str(temp), "--object-store-memory", str(object_store_mib * 2**20),
            "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
            "--dashboard-agent-listen-port", str(ports[2]),
            "--dashboard-agent-grpc-port", str(ports[3]),
            "--runtime-env-agent-port", str(ports[4]), "--metrics-export-port", str(ports[5]),
            "--min-worker-port", str(low), "--max-worker-port", str(low + 39),
            "--disable-usage-stats", "--block"]


@dataclass
class LoopbackCluster:
    """A running cluster: the head's ``address``, the ``env`` of the processes that join it
    (its token, the mark), one :class:`Tree` per node (``nodes[0]`` is the head), every other
    tree started for it (``trees``), and its ``temp`` folder."""

    address: str
    env: dict[str, str]
    nodes: list[Tree]
    temp: Path
    mark: str
    start_seconds: float
    trees: list[Tree] = field(default_factory=list)

    def run(self, name: str, argv: list[str], log: Path) -> Tree:
        """Start ``argv`` (e.g. a ``genseek`` command with ``--ray self.address``) with the
        cluster's environment; stopped with the cluster."""
        tree = Tree(name, argv, log, self.env)
        self.trees.append(tree)
        return tree


@contextlib.contextmanager
def loopback_cluster(nodes: Sequence[tuple[str, Mapping[str, float]]],
                     cpus_per_node: int = 1, ray_bin: Path | None = None,
                     timeout: float = START_TIMEOUT_S) -> Iterator[LoopbackCluster]:
    """Start a head on ``nodes[0]``'s address and a node on each other one (``(ip,
    custom resources)``), each with ``cpus_per_node`` CPUs; stop every process by PID at the
    end and fail if any is left running."""
    if not nodes:
        raise ValueError("a cluster needs at least one node")
    ray = str((ray_bin or Path(sys.executable).parent) / "ray")
    temp = Path(tempfile.mkdtemp(prefix="gs-ray-", dir="/tmp"))  # short: Ray's socket paths
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    mark = secrets.token_hex(8)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token), "TOKENIZERS_PARALLELISM": "false", MARK: mark}
    env.pop("RAY_ADDRESS", None)
    started_trees: list[Tree] = []
    cluster: LoopbackCluster | None = None
    try:
        head_ip, head_resources = nodes[0]
        port, metrics = free_ports(head_ip, 2)
        started = time.perf_counter()
        head = Tree("head", [ray, "start", "--head", "--port", str(port),
                             "--include-dashboard=false",
                             *node_args(head_ip, temp / "head", head_resources, cpus_per_node,
                                        avoid=(port, metrics))],
                    temp / "head.log", {**env, "AUTOSCALER_METRIC_PORT": str(metrics)})
        started_trees.append(head)
        wait("the head", lambda: "Ray runtime started" in head.log.read_text(errors="replace"),
             timeout, started_trees)
        address = f"{head_ip}:{port}"
        for i, (ip, resources) in enumerate(nodes[1:], start=1):
            node = Tree(f"node {i}", [ray, "start", "--address", address,
                                      *node_args(ip, temp / f"node{i}", resources,
                                                 cpus_per_node)],
                        temp / f"node{i}.log", env)
            started_trees.append(node)
            wait(f"node {i} ({ip})",
                 lambda node=node: "Ray runtime started" in node.log.read_text(errors="replace"),
                 timeout, started_trees)
        cluster = LoopbackCluster(address, env, list(started_trees), temp, mark,
                                  time.perf_counter() - started)
        yield cluster
    finally:
        everything = started_trees + (cluster.trees if cluster else [])
        for tree in reversed(everything):
            tree.stop()
        leftover = [(t.name, p.pid) for t in everything for p in t.alive()]
        strays = marked(mark)  # started here but never seen in a tree (orphaned early)
        stray_names = []
        for p in strays:
            with contextlib.suppress(psutil.Error):
                stray_names.append((p.pid, p.name()))
        for p in strays:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(strays, timeout=10)
        shutil.rmtree(temp, ignore_errors=True)
        if leftover or strays:
            raise RuntimeError(f"processes left running: {leftover} {stray_names}")
