"""Sharded collections: N ordinary collections behind one, documents routed by a hash of id.

A sharded collection's folder holds ``sharded.json`` (the shard count, the routing rule and
the index specs), ``router.sqlite`` (its sequence numbers) and ``shards/000`` ... each a
normal :class:`~genseek.collection.Collection` with the same indexes. A document lives in
shard ``blake2b-64(id) mod N``: the rule is stable (it depends on the id alone, never on the
order or the moment of a write), so an upsert, a delete and a get of one id always reach the
same shard and a re-import routes every document where it went the first time.

**One writer per shard.** Each shard is a collection with its own lock, opened either here in
the process (:class:`LocalShards`) or each inside one Ray actor that owns it
(:class:`RayShards`, :func:`open_sharded` with ``ray=ADDRESS``). Either way the shards answer
the same calls (:class:`ShardServer`), so the sharded collection does not know where they run.

**Writes and read-your-writes.** A write is split by shard and each part committed by its
shard's store; the write is then given the sharded collection's own sequence number, which
``router.sqlite`` maps to every shard's sequence number after it (committed before the write
is acknowledged). ``wait_for(seq)`` waits until each shard has applied its part, and
``applied_seq`` is the last number every shard has applied: one sequence number per shard,
tracked behind the single number a client sees. A write spanning shards is committed shard by
shard: a crash in between leaves it in some shards only, unacknowledged, and writing it again
(an idempotent upsert or delete) completes it; an interrupted import resumes from the line
every shard has committed.

**Search (scatter-gather).** Every shard returns each index's top ``depth``, the lists are
merged by score per index and then fused (:func:`genseek.pipeline.fuse`, as for one
collection). How close that is to one collection holding every document, per index type:

- ``bm25``: global statistics, as Elasticsearch's DFS mode: the shards' document counts,
  token counts and query-term document frequencies are gathered first and summed, and each
  shard scores with them (:meth:`genseek.indexers.bm25.BM25Index.search_with_stats`). Equal
  to the unsharded scores up to float32 rounding (about 1e-7 relative; exact with one shard);
  after Anserini's rounding of scores to 1e-4 a score can differ by one rounding step, and two
  documents whose raw scores are within float32 rounding of each other can swap.
- ``dense`` with a Flat index, ``impact`` (learned sparse: a document's weights do not depend
  on the others), exact ``muvera`` rescoring of the same candidates: a document's score does
  not depend on the rest of the collection, so the merged top ``k`` is the unsharded top ``k``
  (dense Flat: exactly, up to float ties).
- approximate indexes (dense IVF/HNSW/PQ, ``spann``, ``repconc``, ``muvera``'s candidate
  stage): each shard searches its own partition with its own trained structures (centroids,
  codebooks), so recall differs from one index over all documents, as it would between two
  builds; scores are comparable (the same encoder), so the merge is sound.
- generative (``genre``, ``seal``, ``dsi``): each shard decodes over its own docid store
  (trie, FM-index) and scores are the model's, comparable between shards, but a beam that is
  split into N beams and SEAL's n-gram frequencies of one shard are not the whole
  collection's: approximate.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genseek.collection import Searching
from genseek.errors import GenseekError, InvalidParameter
from genseek.spec import IndexSpec
from genseek.types import Document, Hit, IndexStats

SHARD_CPUS = 0.25
"""CPUs a shard's Ray actor reserves by default (fractional: the actors leave room for
other work)."""

MANIFEST = "sharded.json"
ROUTER = "router.sqlite"
FORMAT = "genseek-sharded-1"
MAX_SHARDS = 256
ROUTE = "blake2b-64 mod N"
VECTOR_TYPES = frozenset({"dense", "spann", "repconc", "muvera", "impact"})
"""Index types with :class:`~genseek.protocols.VectorSearch`: a sharded search encodes the
queries once (shard 0's encoder, the same model in every shard) and sends the vectors."""


def shard_of(doc_id: str, shards: int) -> int:
    """The shard of ``doc_id`` among ``shards``: blake2b (8 bytes, big-endian) mod N."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def is_sharded(path: Path) -> bool:
    """Whether ``path`` is a sharded collection's folder."""
    return (Path(path) / MANIFEST).is_file()


def _shard_folders(path: Path, n: int) -> list[Path]:
    return [Path(path) / "shards" / f"{i:03d}" for i in range(n)]


def read_manifest(path: Path) -> dict[str, Any]:
    """``sharded.json``, checked: one line naming the file and what is wrong."""
    file = Path(path) / MANIFEST
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GenseekError(f"{file}: cannot read the sharded collection's manifest: {exc}") \
            from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise GenseekError(f"{file}: field 'format': expected {FORMAT!r}")
    n = raw.get("shards")
    if not isinstance(n, int) or not 1 <= n <= MAX_SHARDS:
        raise GenseekError(f"{file}: field 'shards': expected an integer 1..{MAX_SHARDS}")
    if raw.get("route") != ROUTE:
        raise GenseekError(f"{file}: field 'route': expected {ROUTE!r}")
    if not isinstance(raw.get("indexes"), dict):
        raise GenseekError(f"{file}: field 'indexes': expected an object of index specs")
    return raw


# -- one shard's side ------------------------------------------------------------------------


class ShardServer:
    """One shard: a :class:`~genseek.collection.Collection` and the calls a sharded collection
    makes to it, with plain data in and out (so it runs in this process or in a Ray actor)."""

    def __init__(self, path: str, background: bool = False):
        from genseek.collection import Collection

        self.collection = Collection.open(Path(path))
        if background:
            self.collection.start_background_sync()

    def process(self) -> int:
        """The process this shard runs in (a Ray actor's worker, or this process)."""
        return os.getpid()

    def write(self, upserts: Sequence[Document], deletes: Sequence[str],
              meta: dict[str, str] | None, sync: bool) -> Any:
        return self.collection.write(upserts, deletes, meta, sync=sync)

    def index_types(self) -> dict[str, str]:
        return {n: IndexSpec.parse(s).type
                for n, s in self.collection.manifest["indexes"].items()}

    def search(self, name: str, queries: Sequence[str], k: int, params: Any) -> list[list[Hit]]:
        return self.collection.serving(name).search(list(queries), k, params)

    def bags_of_words(self, name: str, queries: Sequence[str]) -> list[Any]:
        return self.collection.serving(name).bags_of_words(list(queries))

    def corpus_stats(self, name: str, terms: Sequence[str]) -> Any:
        return self.collection.serving(name).corpus_stats(terms)

    def search_with_stats(self, name: str, bags: Sequence[Any], k: int,
                          whole: Any) -> list[list[Hit]]:
        return self.collection.serving(name).search_with_stats(bags, k, whole)

    def encode_queries(self, name: str, queries: Sequence[str]) -> Any:
        return self.collection.serving(name).encode_queries(list(queries))

    def search_vectors(self, name: str, vectors: Any, k: int, params: Any) -> list[list[Hit]]:
        return self.collection.serving(name).search_vectors(vectors, k, params)

    def analyze(self, name: str, text: str) -> list[str]:
        return list(self.collection.index(name).analyze(text))

    def index_applied_seq(self, name: str) -> int:
        return self.collection.index_applied_seq(name)

    def index_stats(self, name: str) -> IndexStats:
        return self.collection.index(name).stats()

    def search_params(self, name: str, params: dict[str, Any]) -> Any:
        return self.collection.search_params(name, params)

    def get(self, ids: Sequence[str]) -> dict[str, Document]:
        return self.collection.get(list(ids))

    def count(self) -> int:
        return len(self.collection)

    def seq(self) -> int:
        return self.collection.store.seq

    def applied_seq(self) -> int:
        return self.collection.applied_seq

    def wait_for(self, seq: int, timeout: float | None) -> bool:
        return self.collection.wait_for(seq, timeout=timeout)

    def resume_point(self, key: str) -> int:
        return self.collection.resume_point(key)

    def stats(self) -> dict[str, Any]:
        return self.collection.stats()

    def health(self) -> dict[str, dict[str, Any]]:
        return self.collection.health()

    def unavailable(self) -> dict[str, str]:
        return self.collection.unavailable()

    def default_indexes(self) -> list[str]:
        return self.collection.default_indexes()

    def sync_error(self) -> str | None:
        return self.collection.sync_error

    def sync(self) -> None:
        self.collection.sync()

    def add_index(self, name: str, spec: str) -> None:
        self.collection.add_index(name, spec)

    def drop_index(self, name: str) -> None:
        self.collection.drop_index(name)

    def start_background_sync(self, interval: float) -> None:
        self.collection.start_background_sync(interval)

    def close(self) -> dict[str, int]:
        """Close the shard; the operations its indexes had not applied (by index)."""
        self.collection.close()
        return dict(self.collection.unapplied)


class LocalShards:
    """The shards opened in this process, called in parallel from a thread pool."""

    where = "in-process"

    def __init__(self, folders: Sequence[Path], background: bool = False):
        self.servers: list[ShardServer] = []
        try:
            for folder in folders:
                self.servers.append(ShardServer(str(folder), background))
        except BaseException:
            self.close()
            raise
        self._pool = ThreadPoolExecutor(max_workers=min(8, len(self.servers)),
                                        thread_name_prefix="genseek-shard")

    def __len__(self) -> int:
        return len(self.servers)

    def call(self, method: str, args: Sequence[tuple[Any, ...]] | None = None) -> list[Any]:
        """``method(*args[i])`` on every shard ``i`` (``()`` for all when None), in parallel;
        the results in shard order (the first failure is raised)."""
        calls = args if args is not None else [()] * len(self.servers)
        found = self.call_at(method, dict(enumerate(calls)))
        return [found[i] for i in range(len(calls))]

    def call_at(self, method: str, calls: dict[int, tuple[Any, ...]]) -> dict[int, Any]:
        """``method(*calls[i])`` on each shard ``i`` named, in parallel."""
        if len(calls) == 1:
            (i, a), = calls.items()
            return {i: getattr(self.servers[i], method)(*a)}
        futures = {i: self._pool.submit(getattr(self.servers[i], method), *a)
                   for i, a in calls.items()}
        return {i: f.result() for i, f in futures.items()}

    def one(self, i: int, method: str, *args: Any) -> Any:
        return getattr(self.servers[i], method)(*args)

    def close(self) -> list[dict[str, int]]:
        """Close every shard (all are tried); each one's unapplied operations by index."""
        errors = []
        unapplied = []
        for server in self.servers:
            try:
                unapplied.append(server.close())
            except Exception as exc:  # noqa: BLE001 - close the rest, then report
                errors.append(exc)
        self.servers = []
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
        if errors:
            raise errors[0]
        return unapplied


class RayShards:
    """Each shard owned by one Ray actor (one writer per shard, as the lock requires): the
    actor opens the shard's collection and keeps it open; calls go to all actors at once.
    ``resources`` (e.g. ``{"shard_node": 0.01}``) place the actors; ``num_cpus`` is each
    actor's CPU share (fractional, so that the actors leave room for other work)."""

    where = "ray"

    def __init__(self, folders: Sequence[Path], num_cpus: float = SHARD_CPUS,
                 resources: dict[str, float] | None = None, background: bool = False):
        import ray

        self._ray = ray
        actor = ray.remote(ShardServer).options(num_cpus=num_cpus, resources=resources or {},
                                                max_concurrency=8)
        self.actors = [actor.remote(str(Path(f).resolve()), background) for f in folders]
        try:
            self.call("count")  # every shard opened (and its lock taken) before anything else
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self.actors)

    def call(self, method: str, args: Sequence[tuple[Any, ...]] | None = None) -> list[Any]:
        calls = args if args is not None else [()] * len(self.actors)
        found = self.call_at(method, dict(enumerate(calls)))
        return [found[i] for i in range(len(calls))]

    def call_at(self, method: str, calls: dict[int, tuple[Any, ...]]) -> dict[int, Any]:
        refs = {i: getattr(self.actors[i], method).remote(*a) for i, a in calls.items()}
        return {i: _unwrap(self._ray, r) for i, r in refs.items()}

    def one(self, i: int, method: str, *args: Any) -> Any:
        return _unwrap(self._ray, getattr(self.actors[i], method).remote(*args))

    def close(self) -> list[dict[str, int]]:
        ray = self._ray
        unapplied = []
        for actor in self.actors:
            with contextlib.suppress(Exception):  # the actor is killed below either way
                unapplied.append(ray.get(actor.close.remote(), timeout=60))
            ray.kill(actor)
        self.actors = []
        return unapplied


def _unwrap(ray: Any, ref: Any) -> Any:
    """``ray.get(ref)``, with a genseek error raised as itself (not as a RayTaskError)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.as_instanceof_cause()
        if isinstance(cause, GenseekError):
            raise cause from None
        raise


# -- the router's sequence numbers -------------------------------------------------------------


class _Router:
    """``router.sqlite``: for each write of the sharded collection, its sequence number and
    every shard's sequence number after it."""

    def __init__(self, path: Path, shards: int):
        self.shards = shards
        self._db = sqlite3.connect(str(path / ROUTER), check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS writes (seq INTEGER PRIMARY KEY, "
                         "shard_seqs TEXT NOT NULL)")
        self._lock = threading.Lock()
        self.applied = 0  # the last seq known applied by every shard

    def record(self, shard_seqs: Sequence[int]) -> int:
        """The sequence number of a write that left the shards at ``shard_seqs``: a new one,
        or the last one when no shard's number moved (a write of nothing new)."""
        raw = json.dumps(list(shard_seqs))
        with self._lock:
            last = self._db.execute("SELECT seq, shard_seqs FROM writes ORDER BY seq DESC "
                                    "LIMIT 1").fetchone()
            if last is not None and last[1] == raw:
                return int(last[0])
            cur = self._db.execute("INSERT INTO writes (shard_seqs) VALUES (?)", (raw,))
            return int(cur.lastrowid or 0)

    @property
    def seq(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(seq) FROM writes").fetchone()
        return int(row[0] or 0)

    def shard_seqs(self, seq: int) -> list[int] | None:
        """The shards' sequence numbers after write ``seq`` (None if there was no such write;
        the latest write at or before ``seq`` when ``seq`` falls between)."""
        with self._lock:
            row = self._db.execute("SELECT shard_seqs FROM writes WHERE seq <= ? "
                                   "ORDER BY seq DESC LIMIT 1", (seq,)).fetchone()
        return None if row is None else [int(s) for s in json.loads(row[0])]

    def applied_seq(self, shard_applied: Sequence[int], cache: bool = True) -> int:
        """The last write every shard has applied, given each shard's applied number
        (``cache``: these numbers are the whole collection's, remember the answer)."""
        start = self.applied if cache else 0
        with self._lock:
            rows = self._db.execute("SELECT seq, shard_seqs FROM writes WHERE seq > ? "
                                    "ORDER BY seq", (start,)).fetchall()
        best = start
        for seq, raw in rows:
            if all(a >= s for a, s in zip(shard_applied, json.loads(raw), strict=True)):
                best = int(seq)
            else:
                break
        if cache:
            self.applied = best
        return best

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- the sharded collection ------------------------------------------------------------------


@dataclass(frozen=True)
class ShardedWrite:
    """What one write of a sharded collection did (the fields of a store write's result)."""

    seq: int
    upserted: int
    unchanged: int
    deleted: int
    missing: int
    shard_seqs: tuple[int, ...]


class ShardedIndex:
    """One index across the shards, as a :class:`~genseek.protocols.Retriever`: each shard
    searches its part and the lists are merged by score (``bm25``: with the collection's
    global statistics, see the module docstring)."""

    def __init__(self, owner: ShardedCollection, name: str, type_name: str):
        self.owner, self.name, self.type = owner, name, type_name

    def search(self, queries: Sequence[str], k: int, params: Any = None) -> list[list[Hit]]:
        queries = list(queries)
        if k <= 0 or not queries:
            return [[] for _ in queries]
        shards = self.owner.shards
        n = self.owner.n
        if self.type == "bm25":
            from genseek.indexers.bm25 import anserini_scores, by_raw_score

            bags = shards.one(0, "bags_of_words", self.name, queries)  # one analyser for all
            terms = sorted({t for bag in bags for t, _ in bag})
            parts = shards.call("corpus_stats", [(self.name, terms)] * n)
            whole = parts[0]
            for part in parts[1:]:
                whole = whole + part
            found = shards.call("search_with_stats", [(self.name, bags, k, whole)] * n)
            return [anserini_scores(by_raw_score([h for f in found for h in f[q]], k))
                    for q in range(len(queries))]
        if self.type in VECTOR_TYPES:  # the queries are encoded once, not once per shard
            vectors = shards.one(0, "encode_queries", self.name, queries)
            found = shards.call("search_vectors", [(self.name, vectors, k, params)] * n)
        else:
            found = shards.call("search", [(self.name, queries, k, params)] * n)
        return [merge_by_score([f[q] for f in found], k) for q in range(len(queries))]

    @property
    def applied_seq(self) -> int:
        """The sharded collection's last write this index has applied in every shard."""
        return self.owner._router.applied_seq(
            self.owner.shards.call("index_applied_seq", [(self.name,)] * self.owner.n),
            cache=False)

    def stats(self) -> IndexStats:
        """The shards' :class:`~genseek.types.IndexStats` summed (``details``: per shard)."""
        parts = self.owner.shards.call("index_stats", [(self.name,)] * self.owner.n)
        memory = [p.memory_bytes for p in parts]
        return IndexStats(self.type, sum(p.documents for p in parts), self.applied_seq,
                          sum(p.disk_bytes for p in parts),
                          sum(memory) if all(isinstance(m, int) for m in memory) else None,
                          parts[0].params, {"shards": [p.to_dict() for p in parts]})

    @property
    def analyze(self) -> Callable[[str], list[str]]:
        """The terms a lexical index makes of a text (the same analyser in every shard);
        absent (AttributeError) for the other types, as on their own indexes."""
        if self.type != "bm25":
            raise AttributeError("analyze")
        return lambda text: self.owner.shards.one(0, "analyze", self.name, text)


def merge_by_score(lists: Iterable[Sequence[Hit]], k: int) -> list[Hit]:
    """The ``k`` best hits of several shards' lists, by score (higher first) then id."""
    return sorted((h for hits in lists for h in hits), key=lambda h: (-h.score, h.doc_id))[:k]


class ShardedCollection(Searching):
    """N shards that search, write, count and report as one collection (see the module
    docstring). Open with :func:`open_sharded`, create with :meth:`create`."""

    def __init__(self, path: Path, manifest: dict[str, Any], shards: LocalShards | RayShards,
                 lock_fd: int | None = None):
        self.path = Path(path)
        self.manifest = manifest
        self.shards = shards
        self._lock_fd = lock_fd
        self.unapplied: dict[str, int] = {}  # after close: index -> operations not applied
        self.n = int(manifest["shards"])
        self._router = _Router(self.path, self.n)
        self._write_lock = threading.Lock()
        self._types: dict[str, str] = {
            n: IndexSpec.parse(s).type for n, s in manifest["indexes"].items()}

    # -- creating and opening ----------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, indexes: dict[str, str], shards: int,
               ray: str | None = None, cpus_per_shard: float = SHARD_CPUS,
               resources: dict[str, float] | None = None) -> ShardedCollection:
        """A new sharded collection of ``shards`` empty shards with ``indexes``; the folder
        appears whole or not at all (built beside it, then renamed into place). Opened as
        :func:`open_sharded` opens it (``ray``, ``cpus_per_shard``, ``resources``)."""
        from genseek.collection import Collection

        path = Path(path)
        if not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
            raise InvalidParameter(f"--shards {shards}: expected an integer 1..{MAX_SHARDS}")
        if path.exists():
            raise GenseekError(f"{path}: already exists")
        specs = {n: str(s) for n, s in indexes.items()}
        for spec in specs.values():
            IndexSpec.parse(spec)  # a bad spec fails before anything is written
        tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        try:
            for folder in _shard_folders(tmp, shards):
                folder.parent.mkdir(parents=True, exist_ok=True)
                Collection.create(folder, specs).close()
            manifest = {"format": FORMAT, "shards": shards, "route": ROUTE, "indexes": specs}
            from genseek.atomic import atomic_write_json

            atomic_write_json(tmp / MANIFEST, manifest)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return open_sharded(path, ray=ray, cpus_per_shard=cpus_per_shard, resources=resources)

    # -- writes ------------------------------------------------------------------------------

    def write(self, upserts: Sequence[Document] = (), deletes: Iterable[str] = (),
              meta: dict[str, str] | None = None, *, sync: bool = True,
              progress: Any = None) -> ShardedWrite:
        """Split the batch by shard, commit each part (``meta`` goes to every shard), then
        record the write's sequence number. Acknowledged once all parts and the record are
        committed (see the module docstring for a crash in between)."""
        ups: list[list[Document]] = [[] for _ in range(self.n)]
        dels: list[list[str]] = [[] for _ in range(self.n)]
        for doc in upserts:
            ups[shard_of(doc.doc_id, self.n)].append(doc)
        for doc_id in deletes:
            dels[shard_of(doc_id, self.n)].append(doc_id)
        with self._write_lock:
            results = self.shards.call_at("write", {
                i: (ups[i], dels[i], meta, sync) for i in range(self.n)
                if ups[i] or dels[i] or meta})
            current = self.shards.call("seq") if len(results) < self.n else None
            seqs = tuple(int(results[i].seq if i in results else current[i])  # type: ignore[index]
                         for i in range(self.n))
            seq = self._router.record(seqs)  # (the last seq again if no shard moved)
        done = list(results.values())
        return ShardedWrite(seq, sum(r.upserted for r in done), sum(r.unchanged for r in done),
                            sum(r.deleted for r in done), sum(r.missing for r in done), seqs)

    def upsert(self, docs: Sequence[Document]) -> ShardedWrite:
        return self.write(upserts=docs)

    def delete(self, doc_ids: Iterable[str]) -> ShardedWrite:
        return self.write(deletes=list(doc_ids))

    def ingest(self, records: Iterator[tuple[int, Document]], source_key: str | None = None,
               batch_size: int = 1000, on_batch: Callable[[int], None] | None = None,
               skip_lines: int = 0, on_apply: Any = None) -> Any:
        """:meth:`Collection.ingest <genseek.collection.Collection.ingest>` across the shards:
        each batch is one sharded write whose ``meta`` (the last line committed) goes to every
        shard, so :meth:`resume_point` is the line all shards have committed."""
        from genseek.collection import ingest_batches

        return ingest_batches(records, lambda batch, meta: self.write(upserts=batch, meta=meta),
                              self.seq, source_key, batch_size, on_batch, skip_lines)

    def resume_point(self, source_key: str) -> int:
        """The last line of ``source_key`` that every shard has committed."""
        return min(self.shards.call("resume_point", [(source_key,)] * self.n))

    def sync(self, progress: Any = None) -> None:
        self.shards.call("sync")

    # -- sequence numbers --------------------------------------------------------------------

    @property
    def seq(self) -> int:
        """The sharded collection's last write."""
        return self._router.seq

    @property
    def applied_seq(self) -> int:
        """The last write every index of every shard has applied."""
        return self._router.applied_seq(self.shards.call("applied_seq"))

    def wait_for(self, seq: int, timeout: float | None = None) -> bool:
        """Block until every shard has applied its part of write ``seq``; False on timeout."""
        wanted = self._router.shard_seqs(seq)
        if wanted is None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        for i, s in enumerate(wanted):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self.shards.one(i, "wait_for", s, left):
                return False
        return True

    # -- reading -------------------------------------------------------------------------------

    @property
    def indexes(self) -> dict[str, ShardedIndex]:
        return {n: ShardedIndex(self, n, t) for n, t in self._types.items()}

    def index(self, name: str) -> ShardedIndex:
        if name not in self._types:
            raise GenseekError(f"collection {self.path.name!r} has no index {name!r} "
                               f"(it has {', '.join(self._types) or 'none'})")
        return ShardedIndex(self, name, self._types[name])

    def serving(self, name: str) -> ShardedIndex:
        return self.index(name)

    def search_params(self, name: str, params: dict[str, Any]) -> Any:
        self.index(name)
        return self.shards.one(0, "search_params", name, params)

    def unavailable(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for i, down in enumerate(self.shards.call("unavailable")):
            for name, why in down.items():
                out.setdefault(name, f"shard {i}: {why}")
        return out

    def default_indexes(self) -> list[str]:
        down = self.unavailable()
        return [n for n in self.manifest["indexes"] if n not in down]

    def get(self, doc_ids: Sequence[str]) -> dict[str, Document]:
        parts: list[list[str]] = [[] for _ in range(self.n)]
        for doc_id in doc_ids:
            parts[shard_of(doc_id, self.n)].append(doc_id)
        found: dict[str, Document] = {}
        for part in self.shards.call("get", [(p,) for p in parts]):
            found.update(part)
        return {d: found[d] for d in doc_ids if d in found}

    def __len__(self) -> int:
        return sum(self.shards.call("count"))

    @property
    def sync_error(self) -> str | None:
        errors = [f"shard {i}: {e}" for i, e in enumerate(self.shards.call("sync_error")) if e]
        return "; ".join(errors) or None

    def health(self) -> dict[str, dict[str, Any]]:
        """Per index, the worst shard's state, the summed lag and the first error."""
        order = {"ready": 0, "not_open": 1, "catching_up": 2, "failed": 3}
        out: dict[str, dict[str, Any]] = {}
        for i, part in enumerate(self.shards.call("health")):
            for name, h in part.items():
                cur = out.setdefault(name, {"state": "ready", "lag": 0, "error": None})
                if order.get(h["state"], 3) > order.get(cur["state"], 3):
                    cur["state"] = h["state"]
                cur["lag"] = None if cur["lag"] is None or h["lag"] is None \
                    else cur["lag"] + h["lag"]
                if h.get("error") and not cur["error"]:
                    cur["error"] = f"shard {i}: {h['error']}"
        return out

    def stats(self) -> dict[str, Any]:
        """A collection's stats, summed over the shards (``shards``: each shard's own)."""
        parts = self.shards.call("stats")
        health = self.health()
        indexes: dict[str, dict[str, Any]] = {}
        for name, spec in self.manifest["indexes"].items():
            entry: dict[str, Any] = {"spec": spec}
            for key in ("documents", "vectors", "disk_bytes", "memory_bytes"):
                values = [p["indexes"].get(name, {}).get(key) for p in parts]
                if all(isinstance(v, int) for v in values):
                    entry[key] = sum(values)
            entry.update(health.get(name, {}))
            entry["applied_seq"] = self.applied_seq
            indexes[name] = entry
        return {"path": str(self.path), "documents": sum(p["documents"] for p in parts),
                "seq": self.seq, "shards": self.n, "placement": self.shards.where,
                "disk_bytes": _total(parts, "disk_bytes"),
                "store_bytes": _total(parts, "store_bytes"), "indexes": indexes,
                "per_shard": [{"documents": p["documents"], "seq": p["seq"]} for p in parts]}

    def add_index(self, name: str, spec: str | IndexSpec, progress: Any = None) -> None:
        """Add index ``name`` to every shard (each builds it from its documents)."""
        from genseek.atomic import atomic_write_json

        if name in self._types:
            raise GenseekError(f"collection {self.path.name!r} already has an index {name!r}")
        text = str(spec)
        type_name = IndexSpec.parse(text).type
        self.shards.call("add_index", [(name, text)] * self.n)
        self.manifest = {**self.manifest, "indexes": {**self.manifest["indexes"], name: text}}
        atomic_write_json(self.path / MANIFEST, self.manifest)
        self._types[name] = type_name

    def drop_index(self, name: str) -> None:
        from genseek.atomic import atomic_write_json

        self.index(name)
        self.shards.call("drop_index", [(name,)] * self.n)
        indexes = {n: s for n, s in self.manifest["indexes"].items() if n != name}
        self.manifest = {**self.manifest, "indexes": indexes}
        atomic_write_json(self.path / MANIFEST, self.manifest)
        self._types.pop(name, None)

    def start_background_sync(self, interval: float = 1.0) -> None:
        self.shards.call("start_background_sync", [(interval,)] * self.n)

    def close(self) -> None:
        try:
            for part in self.shards.close():
                for name, ops in part.items():
                    self.unapplied[name] = self.unapplied.get(name, 0) + ops
        finally:
            self._router.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> ShardedCollection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _total(parts: Sequence[dict[str, Any]], key: str) -> int | None:
    """The sum of ``key`` over the shards' stats (None unless every shard has it)."""
    values = [p.get(key) for p in parts]
    return sum(values) if all(isinstance(v, int) for v in values) else None  # type: ignore[arg-type]


def open_sharded(path: Path, ray: str | None = None, background: bool = False,
                 cpus_per_shard: float = SHARD_CPUS,
                 resources: dict[str, float] | None = None) -> ShardedCollection:
    """Open a sharded collection: its shards in this process, or (``ray``, an address for
    :func:`genseek.cluster.connect`, already connected) each in a Ray actor reserving
    ``cpus_per_shard`` CPUs and the custom ``resources`` (placement on the nodes that have
    them)."""
    manifest = read_manifest(path)
    folders = _shard_folders(Path(path), int(manifest["shards"]))
    for folder in folders:
        if not folder.is_dir():
            raise GenseekError(f"{folder}: shard folder missing (the sharded collection is "
                               "incomplete)")
    lock = _lock(Path(path))
    shards: LocalShards | RayShards
    try:
        if ray:
            shards = RayShards(folders, cpus_per_shard, resources, background)
        else:
            shards = LocalShards(folders, background)
    except BaseException:
        os.close(lock)
        raise
    return ShardedCollection(Path(path), manifest, shards, lock)


def _lock(path: Path) -> int:
    """The sharded collection's own lock (``collection.lock``, as a collection's), held while
    it is open; each shard also takes its own."""
    import fcntl

    from genseek.errors import CollectionLocked

    fd = os.open(path / "collection.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CollectionLocked(f"collection {path} is open in another process; try again when "
                               "it has finished") from None
    return fd


def exists(path: Path) -> bool:
    """Whether ``path`` holds a collection, sharded or not."""
    from genseek.collection import Collection

    return is_sharded(path) or Collection.exists(Path(path))


def open_any(path: Path, *, lazy: bool = False, progress: Any = None,
             background: bool = False) -> Any:
    """The collection at ``path``: a :class:`ShardedCollection` (shards in this process) or a
    :class:`~genseek.collection.Collection` (``lazy``, ``progress`` as its ``open``)."""
    from genseek.collection import Collection

    if is_sharded(path):
        return open_sharded(path, background=background)
    collection = Collection.open(Path(path), progress=progress, lazy=lazy)
    if background:
        collection.start_background_sync()
    return collection


def describe(path: Path) -> dict[str, Any]:
    """:meth:`Collection.describe <genseek.collection.Collection.describe>` of a sharded
    collection (no lock, no JVM, no model): the shards' records summed."""
    from genseek.collection import Collection

    manifest = read_manifest(path)
    parts = [Collection.describe(f) for f in _shard_folders(Path(path), int(manifest["shards"]))]
    indexes: dict[str, dict[str, Any]] = {}
    for name, spec in manifest["indexes"].items():
        entry: dict[str, Any] = {"spec": spec}
        for key in ("documents", "disk_bytes"):
            values = [p["indexes"].get(name, {}).get(key) for p in parts]
            if all(isinstance(v, int) for v in values):
                entry[key] = sum(values)
        states = {p["indexes"].get(name, {}).get("state") for p in parts}
        entry["state"] = "ready" if states == {"ready"} else "catching_up" \
            if "catching_up" in states else next(iter(states - {"ready"}), "unknown")
        entry["open"] = False
        indexes[name] = entry
    try:
        router = _Router(Path(path), int(manifest["shards"]))
        try:
            seq: int | None = router.seq
            for name, entry in indexes.items():
                applied = [p["indexes"].get(name, {}).get("applied_seq") for p in parts]
                if all(isinstance(a, int) for a in applied):
                    entry["applied_seq"] = router.applied_seq(applied,  # type: ignore[arg-type]
                                                              cache=False)
        finally:
            router.close()
    except sqlite3.Error:
        seq = None
    return {"path": str(path), "documents": sum(p["documents"] for p in parts), "seq": seq,
            "shards": int(manifest["shards"]), "disk_bytes": _total(parts, "disk_bytes"),
            "store_bytes": _total(parts, "store_bytes"), "indexes": indexes,
            "per_shard": [{"documents": p["documents"], "seq": p["seq"]} for p in parts]}
