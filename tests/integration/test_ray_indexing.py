"""Batch indexing on a real local Ray (:mod:`genseek.cluster`) against the single-process path.

One Ray for the module, started as a user would (``ray.init(address="local", num_cpus=2,
include_dashboard=False)``, node address 127.0.0.1, usage statistics off); the Ray imports
reuse it. Each test indexes a corpus both ways and compares what was stored: the document
store row for row, the dense vectors within 1e-6 (muvera's float16 token vectors within one
float16 step), and every index's search results. Ray costs about 10 s to start and 0.8 GiB per
MiniLM actor, so the corpora are small and the tests few.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # before Ray is imported
ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'genseek[ray]')")

from _compare import assert_same_collection, store_dump  # noqa: E402

from genseek import cluster  # noqa: E402
from genseek.collection import Collection  # noqa: E402
from genseek.data.readers import read_corpus, read_queries  # noqa: E402
from genseek.errors import InputError  # noqa: E402

pytestmark = pytest.mark.slow

FULL = {"bm25": "bm25", "dense": "dense", "impact": "impact", "muvera": "muvera"}
SMALL = {"bm25": "bm25", "dense": "dense"}


@pytest.fixture(scope="module")
def ray_local():
    """``ray.init(address="local", num_cpus=2, include_dashboard=False)`` with the node on
    127.0.0.1 (:func:`genseek.cluster.init_local`: Ray would otherwise put the machine's
    interface address in its place), stopped with everything it started at the end; the
    environment variables Ray sets in this process are restored."""
    import psutil

    assert not ray.is_initialized()
    environ = dict(os.environ)
    started = time.perf_counter()
    cluster.init_local(num_cpus=2, log_to_driver=False)
    seconds = time.perf_counter() - started
    me = psutil.Process()
    try:
        assert [n["NodeManagerAddress"] for n in ray.nodes()] == ["127.0.0.1"]
        yield {"init_seconds": seconds}
    finally:
        cluster.shutdown()  # ray.shutdown, keeping the JVM's signal handlers
        left = [p for p in me.children(recursive=True) if p.is_running()]
        for proc in left:  # by PID: whatever ray.shutdown() left behind
            proc.kill()
        psutil.wait_procs(left, timeout=10)
        os.environ.clear()
        os.environ.update(environ)


def ray_sockets() -> list[tuple[str, str, str]]:
    """``(state, local, peer)`` of every TCP socket of this process and its descendants."""
    import psutil

    pids = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
    out = subprocess.run(["ss", "-tanpH"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    found = []
    for line in out.splitlines():
        if {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids:
            fields = line.split()
            found.append((fields[0], fields[3], fields[4]))
    return found


def on_loopback(endpoint: str) -> bool:
    host = endpoint.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
    return host.startswith("127.")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, datasets_root) -> Path:
    """The first 200 SciFact documents."""
    source = datasets_root / "scifact" / "corpus.jsonl"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    out = tmp_path_factory.mktemp("corpus") / "scifact200.jsonl"
    with open(source, encoding="utf-8") as fh:
        out.write_text("".join(next(fh) for _ in range(200)), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def small(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small") / "scifact120.jsonl"
    out.write_text("".join(corpus.read_text(encoding="utf-8").splitlines(True)[:120]),
                   encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def queries(datasets_root) -> list[str]:
    return list(read_queries(datasets_root / "scifact").values())[:20]


def _single(path: Path, source: Path, specs: dict[str, str], batch_size: int) -> None:
    with Collection.create(path, specs) as c:
        c.ingest(read_corpus(source), source_key="corpus", batch_size=batch_size)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "single"
    _single(path, corpus, FULL, 50)
    return path


@pytest.fixture(scope="module")
def small_reference(small, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref-small") / "single"
    _single(path, small, SMALL, 30)
    return path


def test_ray_equals_single_process(ray_local, corpus, reference, queries, tmp_path):
    """bm25, dense, impact and muvera indexed with the model work in two Ray actors equal
    the single-process collection; each document is encoded once per distinct work."""
    path = tmp_path / "ray"
    sockets: list[list[tuple[str, str, str]]] = []

    def look(n: int) -> None:  # mid-job: the actors are up and connected
        if not sockets:
            sockets.append(ray_sockets())

    with Collection.create(path, FULL) as c:
        report = cluster.ingest(c, corpus, address="local", source_key="corpus", batch_size=50,
                                actors=2, encode_batch_size=25, on_batch=look)
    assert (report.read, report.upserted, report.skipped_lines) == (200, 200, 0)
    assert sockets and sockets[0]
    off = [s for s in sockets[0] if not on_loopback(s[1])
           or not (on_loopback(s[2]) or s[0] == "LISTEN" and s[2].endswith(":*"))]
    assert not off, f"sockets off 127.0.0.0/8 (listening or connected): {off}"
    assert len(report.works) == 3  # dense's text vectors, muvera's tokens, impact's sparse
    assert list(report.encoded_by_node.values()) == [200]  # one node
    assert set(report.node_addresses.values()) == {"127.0.0.1"}
    assert len({pid for _, pid in report.actor_processes}) == 2
    assert report.restarts == 0
    assert_same_collection(reference, path, queries)


def test_interrupted_ray_run_resumes(ray_local, small, small_reference, queries, tmp_path):
    """An import stopped after two committed batches resumes after them and ends with the
    collection of an uninterrupted run."""
    path = tmp_path / "ray"

    class Stop(Exception):
        pass

    batches = []

    def stop_after_two(n: int) -> None:
        batches.append(n)
        if len(batches) == 2:
            raise Stop

    with Collection.create(path, SMALL) as c, pytest.raises(Stop):
        cluster.ingest(c, small, address="local", source_key="corpus", batch_size=30,
                       on_batch=stop_after_two, encode_batch_size=10)
    with Collection.open(path) as c:
        assert c.resume_point("corpus") == 60 and len(c) == 60
        report = cluster.ingest(c, small, address="local", source_key="corpus", batch_size=30,
                                encode_batch_size=10)
    assert (report.skipped_lines, report.read, report.upserted) == (60, 60, 60)
    assert_same_collection(small_reference, path, queries)


def test_killed_encoder_actor_is_replaced(ray_local, small, small_reference, queries,
                                          tmp_path):
    """An encoder actor's process killed (SIGKILL, by its PID) mid-job: Ray restarts it and
    retries its task; the import ends with the collection of an uninterrupted run."""
    import psutil

    path = tmp_path / "ray"
    killed: list[int] = []

    def kill_an_actor(n: int) -> None:
        if killed:
            return
        actors = [p for p in psutil.Process().children(recursive=True)
                  if "Encode" in " ".join(p.cmdline())]
        assert actors, "no encoder actor process found"
        os.kill(actors[0].pid, signal.SIGKILL)
        killed.append(actors[0].pid)

    with Collection.create(path, SMALL) as c:
        report = cluster.ingest(c, small, address="local", source_key="corpus", batch_size=30,
                                on_batch=kill_an_actor, actors=2, encode_batch_size=10)
    assert killed and report.read == 120
    assert_same_collection(small_reference, path, queries)


def test_bad_line_stops_at_it(ray_local, small, tmp_path):
    """A bad line gives the single-process path's file:line error; the batches before it are
    committed and nothing of its batch is written."""
    lines = small.read_text(encoding="utf-8").splitlines(True)[:90]
    lines[74] = '{"_id": "broken", "text": \n'
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(lines), encoding="utf-8")
    with Collection.create(tmp_path / "single", SMALL) as c, \
            pytest.raises(InputError) as single:
        c.ingest(read_corpus(bad), source_key="bad", batch_size=30)
    with Collection.create(tmp_path / "ray", SMALL) as c, pytest.raises(InputError) as on_ray:
        cluster.ingest(c, bad, address="local", source_key="bad", batch_size=30,
                       encode_batch_size=10)
    assert str(on_ray.value) == str(single.value)
    assert f"{bad}:75" in str(on_ray.value)
    with Collection.open(tmp_path / "ray") as c:
        assert c.resume_point("bad") == 60 and len(c) == 60
        assert c.indexes["dense"].stats().documents == 60
        assert c.indexes["bm25"].stats().documents == 60
    assert store_dump(tmp_path / "ray") == store_dump(tmp_path / "single")
