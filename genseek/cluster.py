"""Batch indexing on Ray: the model work of a corpus import runs in a Ray Data actor pool,
the collection stays with the driver.

:func:`ingest` is :meth:`Collection.ingest <genseek.collection.Collection.ingest>` with the
encoders elsewhere. The driver (this process) holds the collection's lock, reads the corpus
with the same reader, writes each batch to the document store in one transaction (with its
resume point, so the store stays the source of truth and an interrupted import resumes
exactly as a single-process one) and then applies and commits it to every index, as
:meth:`~genseek.collection.Collection.write` always does. The only difference: each index that
:class:`~genseek.protocols.EncodesDocuments` gets the batch's payloads precomputed
(``apply_encoded``) instead of running its model. Every distinct
:class:`~genseek.docwork.DocumentWork` of the collection's indexes (``dense``, ``spann`` and
``repconc`` on one MiniLM share one) is computed once per document, by Ray actors.

How the records reach Ray: a custom datasource (:mod:`genseek._raywork`). The corpus file is
cut into pieces of consecutive lines (byte offsets found by one pass over the bytes, after the
resume point), one read task per piece, and each read task parses its lines with genseek's own
reader and yields ``(line, doc_id, contents)``. The read tasks run on the driver's node only,
so the file need not be on the other nodes (a file on the driver's disk is all a cluster needs),
and they take a quarter of a CPU each. Why not the alternatives: ``read_json`` would parse the
file with other rules than genseek's reader (field names, id checks, size limits, TSV) and
lose the line numbers that resuming and the error messages need; putting ordered chunks from
the driver into the object store would either materialise the corpus or need one Dataset per
chunk, and a Dataset's actor pool loads its models again each time. Here one Dataset runs the
whole job, so each actor loads its models once.

The actors: ``map_batches`` with a callable class (:class:`genseek._raywork.Encode`), a fixed
pool of ``actors``, each reserving ``cpus_per_actor`` CPUs (fractional by default: an actor
holding a whole CPU on a 2-CPU node would leave the read tasks nothing, and the job would wait
forever), ``gpus_per_actor`` GPUs and any custom ``resources`` (placement: start nodes with
``--resources '{"genseek_encoder": 1}'`` and pass ``resources={"genseek_encoder": 1}`` to place
one actor on each such node). Each runs ``max(1, round(cpus_per_actor))`` torch threads. The
payloads travel back as ``.npy`` bytes (:func:`genseek.docwork.pack`), no pickle.

Order and memory: the Dataset runs with ``preserve_order``, so blocks come back in file order;
the driver checks every row against the record it read itself (doc id and line) and fails
loudly on a mismatch. Ray Data streams with back-pressure (a bounded number of blocks in
flight) and the driver holds one batch of documents and payloads at a time, so a corpus of any
size runs in bounded memory. Input errors: a read task stops at a line it cannot parse; the
driver's reader raises the usual one-line ``file:line`` error when it reaches that line, so the
batches before it are committed and nothing of its batch is written, exactly as without Ray.

Faults: Ray Data restarts a killed actor and retries its task (a killed worker process costs a
model load). If a node is lost (the driver checks the cluster's nodes while it waits), the job
fails with a Ray error, or no result arrives for ``stall_timeout`` seconds, the driver stops
the Dataset, and when it owns the Ray connection (``local``, ``auto``, ``HOST:PORT``; not a Ray
the caller had initialised) it disconnects, reconnects and starts a new Dataset at the first
line of the batch it was waiting for (batches before it are committed), with as many actors as
the surviving nodes can hold, up to ``retries`` times. Otherwise it raises a one-line
:class:`~genseek.errors.UnavailableError`; running the same import again resumes it. Either
way the collection ends as an uninterrupted run would: a batch is written only with all of its
payloads, and every payload is a pure function of the document's contents.

Loopback: Ray 2.60 puts the machine's interface address in place of a node address of
127.0.0.1 and lets its gRPC servers listen on every interface for any other node address;
``local`` therefore starts Ray in its local-only mode (:data:`LOCAL_ONLY`), where every socket
is on 127.0.0.1. A cluster on 127.0.0.x (x > 1) keeps its connections on the loopback, but
its servers listen on all interfaces (ARCHITECTURE.md, "Running on Ray").

Costs measured here: Ray starts in 5-8 s, a node takes 0.4-0.65 GiB idle, each actor about
0.85 GiB with MiniLM, and Ray Data's own actors about 0.5 GiB while a Dataset runs (figures
in ARCHITECTURE.md, "Running on Ray"). The driver still opens every
index, so it loads the models too (for their dimensions and for queries) without running them
on the documents. A document whose content is unchanged is encoded by the actors and then
skipped by the store (the single-process path skips it before encoding).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import ipaddress
import logging
import math
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genseek.collection import Collection, Encoded, IngestReport, Progress
from genseek.docwork import DocumentWork, unpack
from genseek.errors import GenseekError, ServerError, UnavailableError
from genseek.protocols import EncodesDocuments
from genseek.types import Document

log = logging.getLogger("genseek.cluster")

INSTALL = "pip install 'genseek[ray]'"
LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for a local-only Ray (its default on macOS and Windows). Ray 2.60 replaces a
node address of 127.0.0.1 by the machine's interface address unless it is ``0``, and its gRPC
servers listen on every interface for any node address other than 127.0.0.1; with it, every
socket of a ``local`` Ray is on 127.0.0.1."""
READ_CPUS = 0.25
"""CPUs each read task reserves (on the driver's node)."""
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def import_ray() -> Any:
    """The ``ray`` module (with Ray Data); usage statistics and Ray's automatic ``ray.init``
    off unless the environment says otherwise (``RAY_USAGE_STATS_ENABLED``,
    ``RAY_ENABLE_AUTO_CONNECT``, set before the first import). A one-line error naming the
    extra when it is not installed."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # No Ray call of a stopped job may start a Ray of its own after a disconnect.
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    try:
        import ray
        import ray.data  # noqa: F401 - the extra installs both
    except ImportError:
        raise GenseekError(f"Ray is not installed; install the extra: {INSTALL}") from None
    return ray


def parse_address(address: str) -> tuple[str, int] | str:
    """``"local"``, ``"auto"``, or ``(host, port)`` of ``HOST:PORT`` (``[v6]:PORT`` for an
    IPv6 address); a one-line :class:`GenseekError` for anything else."""
    text = str(address).strip()
    if text in ("local", "auto"):
        return text
    if "://" in text:
        raise GenseekError(f"--ray {address!r}: use local, auto or HOST:PORT of the cluster's "
                           "head (Ray Client ray:// addresses are not supported: run genseek "
                           "on a node of the cluster)")
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        valid = _is_ip(host, 6)
    else:
        valid = _is_ip(host, 4) or (bool(_HOST.match(host))
                                    and not host.rsplit(".", 1)[-1].isdigit())
    if not sep or not valid or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise GenseekError(f"--ray {address!r}: expected local, auto or HOST:PORT (a host "
                           "name or IP address and a port 1-65535)")
    return host, int(port)


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


_FATAL_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE")


def _fatal_handlers() -> dict[int, bytes]:
    """The C-level handlers of the fatal signals (raw ``struct sigaction``s, via libc)."""
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    out: dict[int, bytes] = {}
    for name in _FATAL_SIGNALS:
        sig = int(getattr(signal, name))
        buf = ctypes.create_string_buffer(512)  # larger than any libc's struct sigaction
        if libc.sigaction(sig, None, buf) == 0:
            out[sig] = buf.raw
    return out


def _owner(address: int) -> str:
    """The file mapped at ``address`` in this process (``/proc/self/maps``), or ""."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if lo <= address < hi:
                    return parts[5] if len(parts) > 5 else ""
    except OSError:
        pass
    return ""


def _jvm_handlers() -> dict[int, bytes]:
    """The fatal-signal handlers installed now that belong to a JVM (inside ``libjvm``)."""
    out = {}
    for sig, raw in _fatal_handlers().items():
        handler = int.from_bytes(raw[:8], "little")
        if handler > 1 and "libjvm" in _owner(handler):
            out[sig] = raw
    return out


_JVM_HANDLERS: dict[int, bytes] = {}
"""A JVM's fatal-signal handlers as seen before ``ray.init`` or ``ray.shutdown`` (signal
handlers are the process's, so this record is too; a JVM installs them once)."""


def _remember_jvm_handlers() -> None:
    _JVM_HANDLERS.update(_jvm_handlers())


def shutdown() -> None:
    """``ray.shutdown()``, then a JVM's fatal-signal handlers put back.

    ``ray.init`` installs Ray's handlers for SIGSEGV, SIGBUS, SIGILL and SIGFPE over what was
    there, and ``ray.shutdown`` resets them to the default. A JVM (bm25, through pyjnius)
    relies on its own (it uses SIGSEGV for its own null checks): with the default back, a later
    Lucene call killed the process (measured: the SIGSEGV handler read 0x0 after
    ``ray.shutdown``, whether the JVM started before Ray or under it). So the JVM's handlers,
    recorded before ``ray.init`` (:func:`init_local`, :func:`connect`) and again just before
    the shutdown, are put back after it."""

    ray = import_ray()
    _remember_jvm_handlers()
    try:
        ray.shutdown()
    finally:
        _restore_jvm_handlers()


def _restore_jvm_handlers() -> None:
    """Put the recorded JVM handlers back (after ``ray.init``, which installs Ray's over them,
    and after ``ray.shutdown``, which resets them to the default)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for sig, raw in _JVM_HANDLERS.items():
        buf = ctypes.create_string_buffer(raw, len(raw))
        libc.sigaction(sig, buf, None)


@dataclass
class Connection:
    """A connection of this process to Ray. ``owned``: :func:`connect` called ``ray.init``
    (it calls ``ray.shutdown`` at the end, and may reconnect); ``started``: the Ray cluster
    itself was started here (``local``) and ends with the connection."""

    address: str
    owned: bool
    started: bool
    timeout: float = 30.0
    init_seconds: float = 0.0

    def reconnect(self) -> None:
        """Disconnect (which ends this driver's actors and tasks) and connect again."""
        if not self.owned:
            raise ServerError("cannot reconnect a Ray connection genseek did not open")
        shutdown()
        self.init_seconds = _init(self.address, self.timeout)


def _probe(host: str, port: int, timeout: float) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise UnavailableError(f"Ray cluster at {host}:{port} is not reachable: "
                               f"{exc.strerror or exc}") from None


def init_local(num_cpus: int | None = None, **kwargs: Any) -> None:
    """``ray.init(address="local", num_cpus=..., include_dashboard=False)`` with the node on
    127.0.0.1 and every socket of the Ray it starts on 127.0.0.1 (see :data:`LOCAL_ONLY`;
    usage statistics off). ``num_cpus`` defaults to the machine's; ``kwargs`` go to
    ``ray.init``."""
    ray = import_ray()
    from ray._private import ray_constants  # the driver's copy of the switch, read at import

    saved_env, saved = os.environ.get(LOCAL_ONLY), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOCAL_ONLY] = "0"  # for the processes Ray starts (they read it at start)
    ray_constants.ENABLE_RAY_CLUSTER = False
    _remember_jvm_handlers()  # ray.init installs Ray's over them: put back below
    try:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                 include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)
        _restore_jvm_handlers()  # a JVM already running keeps its own (see shutdown())
    finally:  # the node's address is fixed now; a later connection to a cluster is as usual
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(LOCAL_ONLY, None)
        else:
            os.environ[LOCAL_ONLY] = saved_env


def _init(address: str, timeout: float) -> float:
    """``ray.init`` for ``address``; its seconds. One-line errors."""
    ray = import_ray()
    target = parse_address(address)
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    started = time.perf_counter()
    if target == "local":
        try:
            init_local(**kwargs)
        except Exception as exc:  # noqa: BLE001 - one line for the user
            raise UnavailableError(f"cannot start a local Ray: {_first_line(exc)}") from None
        return time.perf_counter() - started
    if target == "auto":
        kwargs.update(address="auto")
    else:
        host, port = target
        _probe(host, port, timeout)
        kwargs["address"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host).is_loopback and host != "127.0.0.1":
                kwargs["_node_ip_address"] = host  # a cluster on this machine's loopback
    _remember_jvm_handlers()  # Ray's own handlers replace them: put back below
    error = _bounded(lambda: ray.init(**kwargs), shutdown, timeout + 30.0)
    _restore_jvm_handlers()
    if error is not None:
        raise UnavailableError(f"cannot connect to Ray at {address}: {error}") from None
    return time.perf_counter() - started


def _bounded(call: Callable[[], Any], undo: Callable[[], Any], seconds: float) -> str | None:
    """Run ``call`` (``ray.init``: against something that accepts connections but is no Ray
    cluster, it retries for minutes) for at most ``seconds``; None when it succeeded, else
    why not in one line. If it succeeds after the caller gave up, ``undo`` runs."""
    lock = threading.Lock()
    state: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            call()
            outcome = None
        except Exception as exc:  # noqa: BLE001 - reported as one line
            outcome = _first_line(exc)
        with lock:
            state["outcome"] = outcome
            done.set()
            late = state.get("gave_up", False)
        if late and outcome is None:
            undo()

    # ray.init off the main thread warns that it cannot set its SIGTERM handler: a driver
    # that only connects has no processes of its own to stop
    quiet = logging.getLogger("ray._private.worker")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        threading.Thread(target=run, name="genseek-ray-init", daemon=True).start()
        done.wait(seconds)
    finally:
        quiet.setLevel(level)
    with lock:
        if not done.is_set():
            state["gave_up"] = True
            return f"no answer as a Ray cluster within {seconds:g} s"
    return state["outcome"]


@contextlib.contextmanager
def connect(address: str, *, timeout: float = 30.0) -> Iterator[Connection]:
    """Connect this process to Ray for the ``with`` block.

    ``address``: ``local`` starts a Ray in-process (:func:`init_local`: all the machine's
    CPUs, no dashboard, every socket on 127.0.0.1) and stops it at the end; ``auto`` joins
    the cluster running on this machine; ``HOST:PORT`` joins the cluster whose head (GCS)
    listens there, after checking within ``timeout`` seconds that it accepts connections (on
    a loopback address other than 127.0.0.1 the driver pins its node address to it, so a
    cluster on 127.0.0.x is found). Joining takes at most ``timeout`` + 30 seconds. A Ray
    this process has already initialised is used as it is, and left running.
    """
    target = parse_address(address)
    ray = import_ray()
    if ray.is_initialized():
        yield Connection(address, owned=False, started=False, timeout=timeout)
        return
    from genseek.progress import stage

    conn = Connection(address, owned=True, started=target == "local", timeout=timeout)
    if target == "local":
        stage("starting Ray in this process")
    else:
        stage("connecting to Ray at %s", address)
    conn.init_seconds = _init(address, timeout)
    try:
        yield conn
    finally:
        shutdown()


# -- the job ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayIngestReport(IngestReport):
    """:class:`~genseek.collection.IngestReport` with what Ray did: the works computed
    (``DocumentWork.key``), documents encoded per node (by node id), the nodes' addresses,
    the actor processes that encoded (``(node id, pid)``), the Dataset restarts, and the
    seconds ``ray.init`` took (0 for a Ray initialised by the caller)."""

    works: tuple[str, ...] = ()
    encoded_by_node: Mapping[str, int] = field(default_factory=dict)
    node_addresses: Mapping[str, str] = field(default_factory=dict)
    actor_processes: tuple[tuple[str, int], ...] = ()
    restarts: int = 0
    ray_init_seconds: float = 0.0


def document_works(collection: Collection) -> dict[str, DocumentWork]:
    """The distinct model works of the collection's open indexes, by key."""
    works: dict[str, DocumentWork] = {}
    for index in collection.indexes.values():
        if isinstance(index, EncodesDocuments):
            work = index.document_work()
            if work is not None:
                works.setdefault(work.key, work)
    return works


class _JobLost(Exception):
    """The Ray job cannot go on (a node lost, a system failure, no progress)."""


def _node_ips(ray: Any) -> dict[str, str]:
    return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes()}


def _alive(ray: Any) -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def actor_capacity(ray: Any, cpus: float, gpus: float, resources: Mapping[str, float],
                   driver_node: str | None) -> tuple[int, int]:
    """``(actors that fit, default count)`` on the alive nodes: what each node's total
    resources hold for an actor (CPU less the read tasks' share on the driver's node); the
    default is one actor per whole CPU (per GPU with GPUs) where they fit."""
    need = {"CPU": float(cpus), "GPU": float(gpus), **{k: float(v) for k, v in resources.items()}}
    need = {k: v for k, v in need.items() if v > 0}
    fit = default = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        have = dict(node.get("Resources") or {})
        if node["NodeID"] == driver_node:
            have["CPU"] = have.get("CPU", 0.0) - READ_CPUS
        n = min((math.floor(have.get(k, 0.0) / v + 1e-9) for k, v in need.items()),
                default=1)
        n = max(n, 0)
        per = have.get("GPU", 0.0) if gpus > 0 else have.get("CPU", 0.0) + (
            READ_CPUS if node["NodeID"] == driver_node else 0.0)
        fit += n
        default += min(n, max(1, math.floor(per + 1e-9)))
    return fit, default


class _RayEncoder:
    """The ``encode`` step of an ingest on Ray: runs the Dataset and hands each batch's
    payloads to the collection in order (see the module docstring)."""

    def __init__(self, conn: Connection, file: Path, works: Sequence[DocumentWork], *,
                 actors: int | None, cpus_per_actor: float, gpus_per_actor: float,
                 resources: Mapping[str, float], encode_batch_size: int, max_doc_bytes: int,
                 retries: int, stall_timeout: float):
        self.ray = import_ray()
        self.conn = conn
        self.file = file
        self.works = list(works)
        self.keys = [w.key for w in self.works]
        self.actors = actors
        self.cpus = float(cpus_per_actor)
        self.gpus = float(gpus_per_actor)
        self.resources = dict(resources)
        self.encode_batch_size = int(encode_batch_size)
        self.max_doc_bytes = int(max_doc_bytes)
        self.retries = int(retries)
        self.stall_timeout = float(stall_timeout)
        self.lines: collections.deque[int] = collections.deque()  # lines read, not encoded
        self.by_node: collections.Counter[str] = collections.Counter()
        self.processes: set[tuple[str, int]] = set()
        self.restarts = 0
        self._queue: queue.Queue[tuple[str, Any]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ds: Any = None
        self._rows: collections.deque[tuple[int, str, str, int, list[bytes]]] = \
            collections.deque()
        self._nodes: set[str] = set()
        self.ips: dict[str, str] = {}

    def tap(self, records: Iterator[tuple[int, Document]]) -> Iterator[tuple[int, Document]]:
        """``records``, noting each record's line (to check the rows against)."""
        for line, doc in records:
            self.lines.append(line)
            yield line, doc

    # -- the Dataset --------------------------------------------------------------------------

    def start(self, skip_lines: int) -> None:
        """Start a Dataset over the corpus after line ``skip_lines``."""
        from genseek import _raywork
        from genseek.data.readers import corpus_chunks

        ray = self.ray
        driver_node = ray.get_runtime_context().get_node_id()
        fit, default = actor_capacity(ray, self.cpus, self.gpus, self.resources, driver_node)
        if fit < 1:
            need = ", ".join(f"{k} {v:g}" for k, v in {"CPU": self.cpus, "GPU": self.gpus,
                                                        **self.resources}.items() if v)
            raise UnavailableError(f"no node of the Ray cluster can hold an encoder actor "
                                   f"needing {need} (cluster: {ray.cluster_resources()})")
        actors = min(self.actors or default, fit)
        if self.actors and actors < self.actors:
            log.warning("ray: %d of the %d encoder actors asked for fit on the cluster now",
                        actors, self.actors)
        pieces = list(corpus_chunks(self.file, skip_lines, self.encode_batch_size))
        actors = max(1, min(actors, len(pieces)))  # an actor with no piece to encode is idle
        self._rows.clear()
        self._nodes = _alive(ray)
        self.ips = _node_ips(ray)
        if not pieces:
            self._queue = queue.Queue()
            self._queue.put(("end", None))
            return
        from ray.data import DataContext

        context = DataContext.get_current()
        saved = (context.execution_options.preserve_order, context.enable_progress_bars,
                 context.print_on_execution_start)
        try:
            context.execution_options.preserve_order = True
            context.enable_progress_bars = False
            context.print_on_execution_start = False
            ds = ray.data.read_datasource(
                _raywork.CorpusDatasource(str(self.file), pieces, self.max_doc_bytes),
                num_cpus=READ_CPUS, override_num_blocks=len(pieces))
            ds = ds.map_batches(
                _raywork.Encode, fn_constructor_args=(self.works, max(1, round(self.cpus))),
                batch_size=self.encode_batch_size, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=self.cpus,
                num_gpus=self.gpus or None,
                resources=self.resources or None)
        finally:
            (context.execution_options.preserve_order, context.enable_progress_bars,
             context.print_on_execution_start) = saved
        _quiet_ray_data()
        self._ds = ds
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=4)
        self._thread = threading.Thread(target=self._pump, args=(ds, self._stop, self._queue),
                                        name="genseek-ray-results", daemon=True)
        self._thread.start()
        from genseek.progress import stage

        stage("ray: %d encoder actor%s (%s), %d read tasks from line %d", actors,
              "s" if actors > 1 else "", ", ".join(self.keys), len(pieces), skip_lines + 1)

    @staticmethod
    def _pump(ds: Any, stop: threading.Event, out: queue.Queue[tuple[str, Any]]) -> None:
        """Move the Dataset's blocks to ``out`` (in order), then ``end`` or ``error``."""

        def put(item: tuple[str, Any]) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False

        blocks = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow",
                                      prefetch_batches=1))
        try:
            for block in blocks:
                if not put(("block", block)):
                    return
            put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the driver's thread
            put(("error", exc))
        finally:
            close = getattr(blocks, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    def stop(self) -> None:
        """Stop the Dataset: its executor is shut down (which ends its actors and read tasks
        and wakes the results thread, which then ends)."""
        self._stop.set()
        ds, self._ds = self._ds, None
        # Ray Data keeps the running executor on the Dataset; shutting it down here, not only
        # when the results generator is closed, also stops one stuck waiting for a lost node.
        executor = getattr(ds, "_current_executor", None)
        if executor is not None:
            try:
                executor.shutdown(force=True)
            except Exception as exc:  # noqa: BLE001 - stopping anyway
                log.warning("ray: stopping the Dataset: %s", _first_line(exc))
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
            if thread.is_alive():  # blocked inside Ray: ray.shutdown() ends it
                log.warning("ray: the Dataset did not stop within 5 s")

    # -- rows -----------------------------------------------------------------------------------

    def _next_block(self) -> None:
        waited = 0.0
        last_check = time.monotonic()
        assert self._queue is not None
        while True:
            try:
                kind, item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                waited += 1.0
                if time.monotonic() - last_check >= 2.0:
                    last_check = time.monotonic()
                    lost = self._nodes - _alive(self.ray)
                    if lost:
                        raise _JobLost("lost Ray node(s) " + ", ".join(
                            self.ips.get(n, n) for n in sorted(lost))) from None
                if waited >= self.stall_timeout:
                    raise _JobLost(f"no result from the encoder actors for "
                                   f"{self.stall_timeout:g} s") from None
        if kind == "end":
            raise _JobLost("the Dataset ended before the corpus did")
        if kind == "error":
            raise _classify(item)
        table = item
        works = [table.column(f"w{i}").to_pylist() for i in range(len(self.works))]
        for r, (line, doc_id, node, pid) in enumerate(zip(
                table.column("line").to_pylist(), table.column("doc_id").to_pylist(),
                table.column("node").to_pylist(), table.column("pid").to_pylist(),
                strict=True)):
            self._rows.append((line, doc_id, node, pid, [w[r] for w in works]))

    def _take(self, docs: Sequence[Document]) -> Encoded:
        encoded: dict[str, dict[str, Any]] = {key: {} for key in self.keys}
        by_node: collections.Counter[str] = collections.Counter()
        processes: set[tuple[str, int]] = set()
        lines = list(self.lines)[:len(docs)]
        for line, doc in zip(lines, docs, strict=True):
            while not self._rows:
                self._next_block()
            row_line, doc_id, node, pid, payloads = self._rows.popleft()
            if row_line != line or doc_id != doc.doc_id:
                raise ServerError(f"ray: results out of step with the corpus: line {line} "
                                  f"({doc.doc_id!r}) got line {row_line} ({doc_id!r})")
            for key, data in zip(self.keys, payloads, strict=True):
                encoded[key][doc.doc_id] = unpack(data)  # a later copy of an id wins
            by_node[node] += 1
            processes.add((node, int(pid)))
        self.by_node.update(by_node)
        self.processes |= processes
        return encoded

    def __call__(self, docs: Sequence[Document]) -> Encoded:
        """The payloads of the next batch (the records just read, in order)."""
        if not docs:
            return {}
        if len(self.lines) < len(docs):
            raise ServerError("ray: a batch of documents the corpus reader did not read")
        first_line = self.lines[0]
        while True:
            try:
                encoded = self._take(docs)
                break
            except _JobLost as exc:
                self.stop()
                if not self.conn.owned or self.restarts >= self.retries:
                    raise UnavailableError(
                        f"ray: {exc}; the documents before line {first_line:,} of "
                        f"{self.file} are committed: run the same import again to resume "
                        "there") from None
                self.restarts += 1
                log.warning("ray: %s; restarting the job at line %d (restart %d of %d)", exc,
                            first_line, self.restarts, self.retries)
                self.conn.reconnect()
                self.start(first_line - 1)
        for _ in docs:
            self.lines.popleft()
        return encoded


def _quiet_ray_data() -> None:
    """Ray Data's console says only warnings and errors (genseek shows its own progress):
    its INFO lines (an execution started, finished) go to its log file only, and the warning
    that progress bars are off, which genseek turned off, is not printed."""
    from ray.util.debug import log_once

    log_once("ray_data_progress_manager_disabled")  # marks the one-time warning as said
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and handler.level < logging.WARNING:
            handler.setLevel(logging.WARNING)


def _classify(exc: BaseException) -> BaseException:
    """A Ray failure as :class:`_JobLost` (a system failure: retried) or a one-line
    :class:`GenseekError` (the encoder failed: retrying would fail again)."""
    import ray.exceptions as rex

    system = tuple(getattr(rex, name) for name in (
        "RayActorError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError",
        "OwnerDiedError", "RaySystemError", "ObjectFetchTimedOutError", "ActorUnavailableError",
        "LocalRayletDiedError", "ObjectReconstructionFailedError") if hasattr(rex, name))
    if isinstance(exc, system):
        return _JobLost(f"{type(exc).__name__}: {_first_line(exc)}")
    if isinstance(exc, GenseekError):
        return exc
    cause = exc
    while getattr(cause, "cause", None) is not None or cause.__cause__ is not None:
        cause = getattr(cause, "cause", None) or cause.__cause__
    if isinstance(cause, GenseekError):
        return type(cause)(str(cause))
    return UnavailableError(f"ray: the encoder job failed: {type(cause).__name__}: "
                            f"{_first_line(cause)}")


def _first_line(exc: BaseException) -> str:
    lines = [x for x in str(exc).splitlines() if x.strip()]
    return (lines[-1] if lines else type(exc).__name__).strip()[:300]


def _fields(report: IngestReport) -> dict[str, Any]:
    return {f.name: getattr(report, f.name) for f in dataclasses.fields(IngestReport)}


def ingest(collection: Collection, source: Path | str, *, address: str = "local",
           source_key: str | None = None, skip_lines: int | None = None,
           batch_size: int = 1000, max_doc_bytes: int | None = None,
           on_batch: Callable[[int], None] | None = None, on_apply: Progress | None = None,
           actors: int | None = None, cpus_per_actor: float = 0.5, gpus_per_actor: float = 0.0,
           resources: Mapping[str, float] | None = None, encode_batch_size: int | None = None,
           retries: int = 2, stall_timeout: float = 600.0,
           connect_timeout: float = 30.0) -> RayIngestReport:
    """Import the corpus at ``source`` into ``collection`` with the model work on Ray.

    The collection (open, eagerly) stays in this process; see the module docstring for the
    design. ``source_key``, ``batch_size``, ``on_batch`` and ``on_apply`` are
    :meth:`Collection.ingest <genseek.collection.Collection.ingest>`'s; ``skip_lines``
    defaults to the resume point recorded under ``source_key`` (0 without one).
    ``address``: ``local``, ``auto`` or ``HOST:PORT`` (:func:`connect`). ``actors``: the
    encoder actors (default: one per whole CPU of each node, or per GPU with
    ``gpus_per_actor``, as far as they fit), each reserving ``cpus_per_actor`` CPUs,
    ``gpus_per_actor`` GPUs and ``resources`` (custom resources, for placement);
    ``encode_batch_size`` documents per read task and per actor call (default: the
    ``batch_size``, at most 256). A lost node, a Ray system failure or
    ``stall_timeout`` seconds without a result restart the job at the batch being encoded, at
    most ``retries`` times (only on a connection opened here).

    With no index that needs model work, or no line left to read, the import runs as
    :meth:`Collection.ingest` (Ray is not started).
    """
    from genseek.data.readers import MAX_DOC_BYTES, corpus_file, read_corpus

    parse_address(address)
    import_ray()  # a one-line error naming the extra before anything is read
    if not isinstance(collection, Collection):
        raise GenseekError(f"--ray batch indexing needs one collection, not a "
                           f"{type(collection).__name__} (a sharded collection indexes its "
                           "shards itself)")
    if not cpus_per_actor > 0 or gpus_per_actor < 0 or (actors is not None and actors < 1):
        raise GenseekError("ray: cpus_per_actor must be > 0, gpus_per_actor >= 0 and actors "
                           ">= 1")
    for name, amount in (resources or {}).items():
        if not isinstance(name, str) or not name or not float(amount) > 0:
            raise GenseekError(f"ray: custom resource {name!r}: a name and an amount > 0")
    file = corpus_file(Path(source))
    limit = int(max_doc_bytes or MAX_DOC_BYTES)
    skip = int(skip_lines) if skip_lines is not None else (
        collection.resume_point(source_key) if source_key else 0)
    from genseek.data.readers import corpus_chunks

    works = document_works(collection)
    if not works or next(corpus_chunks(file, skip, 1), None) is None:
        log.info("ray: no index of %s needs model work, or nothing is left to read; "
                 "importing without Ray", collection.path)
        report = collection.ingest(read_corpus(file, skip, limit), source_key=source_key,
                                   batch_size=batch_size, on_batch=on_batch, skip_lines=skip,
                                   on_apply=on_apply)
        return RayIngestReport(**_fields(report))
    with connect(address, timeout=connect_timeout) as conn:
        encoder = _RayEncoder(conn, file, list(works.values()), actors=actors,
                              cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor,
                              resources=resources or {},
                              encode_batch_size=encode_batch_size or min(batch_size, 256),
                              max_doc_bytes=limit, retries=retries, stall_timeout=stall_timeout)
        try:
            encoder.start(skip)
            report = collection.ingest(encoder.tap(read_corpus(file, skip, limit)),
                                       source_key=source_key, batch_size=batch_size,
                                       on_batch=on_batch, skip_lines=skip, on_apply=on_apply,
                                       encode=encoder)
        finally:
            encoder.stop()
        return RayIngestReport(**_fields(report), works=tuple(works),
                               encoded_by_node=dict(encoder.by_node),
                               node_addresses={n: encoder.ips.get(n, "?")
                                               for n in encoder.by_node},
                               actor_processes=tuple(sorted(encoder.processes)),
                               restarts=encoder.restarts, ray_init_seconds=conn.init_seconds)
