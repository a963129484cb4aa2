"""Mirror an Elasticsearch index into a genseek collection: incremental, resumable, with deletes.

How a sync reads (numbered as the code runs):

1. Check that the index exists and that its mapping has the timestamp field (a
   ``date`` or numeric field the writer sets on every create, update and soft delete,
   e.g. with an ingest pipeline's ``_ingest.timestamp``).
2. Open a point in time (PIT) on the index and page through it with ``search_after``,
   sorted by ``[timestamp asc, _shard_doc asc]``, ``batch_size`` hits a page. Without
   a checkpoint every document is read; with one, only documents whose timestamp is
   ``>=`` the checkpoint (minus ``overlap``). The PIT gives one consistent snapshot
   however long the scan takes.
3. Each page becomes one store transaction: upserts (``_id`` -> doc_id, the title
   and text fields, the other ``_source`` fields as metadata plus ``_es_index`` and
   ``_es_ts``), deletes for documents whose ``deleted_field`` is true, and the
   checkpoint ``{"ts": last timestamp of the page, "done": false}`` in the store's
   meta table under ``es-sync:INDEX``. A crash leaves whole pages and their
   checkpoint, never a page without its checkpoint.
4. Tombstones (optional): the same scan over ``tombstone_index`` (documents whose
   ``_id`` is a deleted document's id, with the same timestamp field), with its own
   checkpoint ``tombstone_ts``. A tombstone deletes the document only if the stored
   copy is not newer than the tombstone (``_es_ts`` <= its timestamp), so a document
   re-created after its deletion survives whatever order the two scans see them in.
5. ``full``: after a scan without checkpoint, collection documents from this index
   that the scan did not see are deleted (a hard-deleted document leaves nothing to
   read, so this is how hard deletes without tombstones propagate).
6. The checkpoint is marked ``done`` and the collection's indexes catch up.

Resuming: a new run starts from the checkpoint's timestamp with ``>=``: documents
that share the last timestamp are read again, and the store skips unchanged content,
so nothing is lost or written twice. Documents must get a timestamp not older than
any already visible (use the ingest time, not a client clock); ``overlap`` re-reads
a margin for writes that become searchable late (refresh interval).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from genseek.collection import Collection
from genseek.data.elastic import es_call
from genseek.errors import GenseekError
from genseek.store import WriteResult
from genseek.types import Document

CHECKPOINT_VERSION = 1
NUMERIC_TYPES = frozenset({"long", "integer", "short", "byte", "double", "float", "half_float",
                           "scaled_float", "unsigned_long", "date", "date_nanos"})


def checkpoint_key(index: str) -> str:
    """The store meta key holding the sync checkpoint of ``index``."""
    return f"es-sync:{index}"


@dataclass(frozen=True)
class SyncConfig:
    """Which index to read and how its documents map onto genseek documents."""

    index: str
    timestamp_field: str = "updated_at"
    title_field: str | None = "title"
    text_field: str = "text"
    metadata_fields: tuple[str, ...] | None = None  # None: every other _source field
    deleted_field: str | None = "deleted"
    tombstone_index: str | None = None
    batch_size: int = 500
    overlap: float = 0.0
    query: Mapping[str, Any] | None = None  # an extra filter (ES query DSL)
    keep_alive: str = "2m"

    def __post_init__(self) -> None:
        if not self.index or not isinstance(self.index, str):
            raise GenseekError("sync: an Elasticsearch index name is required")
        if not 1 <= int(self.batch_size) <= 10_000:
            raise GenseekError(f"sync: batch size must be 1..10000 (an ES page), not "
                               f"{self.batch_size}")
        if self.overlap < 0:
            raise GenseekError("sync: overlap must be >= 0")


@dataclass
class SyncReport:
    index: str
    collection: str
    read: int = 0
    upserted: int = 0
    unchanged: int = 0
    deleted: int = 0
    tombstones: int = 0
    pages: int = 0
    resumed: bool = False
    full: bool = False
    since: float | None = None
    checkpoint: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def add(self, result: WriteResult) -> None:
        """Count one store write of the sync."""
        self.upserted += result.upserted
        self.unchanged += result.unchanged
        self.deleted += result.deleted
        self.seq = result.seq


# -- reading Elasticsearch -------------------------------------------------------------------


def field_type(es: Any, index: str, name: str) -> str | None:
    """The mapped type of ``name`` in ``index`` (None if unmapped); errors for a missing index."""
    from elasticsearch import NotFoundError

    with es_call(f"reading the mapping of {index!r}"):
        try:
            mappings = es.indices.get_mapping(index=index).body
        except NotFoundError:
            raise GenseekError(f"Elasticsearch index {index!r} does not exist") from None
    found = None
    for body in mappings.values():
        props = (body.get("mappings") or {}).get("properties") or {}
        node: Any = {"properties": props}
        for part in name.split("."):
            node = (node.get("properties") or {}).get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict) and node.get("type"):
            found = node["type"]
    return found


def scan(es: Any, index: str, ts_field: str, ts_type: str, since: float | None,
         extra: Mapping[str, Any] | None, size: int, keep_alive: str,
         ) -> Iterator[list[dict[str, Any]]]:
    """Pages of hits from a PIT over ``index``, by ``(ts_field, _shard_doc)`` ascending."""
    filters: list[dict[str, Any]] = []
    if since is not None:
        rng: dict[str, Any] = {"gte": since}
        if ts_type in ("date", "date_nanos"):
            rng = {"gte": int(since), "format": "epoch_millis"}
        filters.append({"range": {ts_field: rng}})
    if extra:
        filters.append(dict(extra))
    query = {"bool": {"filter": filters}} if filters else {"match_all": {}}
    # date_nanos sorts in milliseconds too, so sort values and the epoch_millis range agree
    sort_opts: dict[str, Any] = {"order": "asc"}
    if ts_type == "date_nanos":
        sort_opts["numeric_type"] = "date"
    with es_call(f"opening a point in time on {index!r}"):
        pit = es.open_point_in_time(index=index, keep_alive=keep_alive).body["id"]
    after: list[Any] | None = None
    try:
        while True:
            body: dict[str, Any] = {
                "pit": {"id": pit, "keep_alive": keep_alive}, "size": size, "query": query,
                "sort": [{ts_field: sort_opts}, {"_shard_doc": "asc"}],
                "track_total_hits": False}
            if after is not None:
                body["search_after"] = after
            with es_call(f"reading {index!r}"):
                res = es.search(body=body).body
            pit = res.get("pit_id", pit)
            hits = res["hits"]["hits"]
            if not hits:
                return
            yield hits
            after = hits[-1]["sort"]
            if len(hits) < size:
                return
    finally:
        with contextlib.suppress(Exception):  # else it expires by itself (keep_alive)
            es.close_point_in_time(id=pit)


def count(es: Any, index: str, query: Mapping[str, Any] | None) -> int | None:
    try:
        return int(es.count(index=index, query=dict(query) if query else {"match_all": {}})
                   .body["count"])
    except Exception:  # noqa: BLE001 - only the progress bar's total
        return None


# -- converting hits ---------------------------------------------------------------------------


def _text(src: Mapping[str, Any], name: str | None, where: str) -> str | None:
    if not name:
        return None
    node: Any = src
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if node is None:
        return None
    if isinstance(node, list) and all(isinstance(x, str) for x in node):
        return "\n".join(node)
    if not isinstance(node, str):
        raise GenseekError(f"{where}: field {name!r} is a {type(node).__name__}, expected text")
    return node


def _ts_value(hit: Mapping[str, Any], ts_field: str, where: str) -> float:
    value = hit.get("sort", [None])[0]
    src = hit.get("_source") or {}
    node: Any = src
    for part in ts_field.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    if node is None or value is None or isinstance(value, str):
        raise GenseekError(f"{where}: no {ts_field!r} timestamp; every document needs one for "
                           "incremental sync (set --timestamp-field)")
    return value


def convert(hits: Sequence[Mapping[str, Any]], cfg: SyncConfig, index: str,
            ) -> tuple[list[Document], list[str], Any]:
    """``(upserts, deleted ids, last timestamp)`` of one page; any bad hit fails the page."""
    upserts: list[Document] = []
    deletes: list[str] = []
    last = None
    skip = {cfg.title_field, cfg.text_field, cfg.deleted_field}
    for hit in hits:
        doc_id = hit["_id"]
        where = f"{index}/_doc/{doc_id}"
        src = hit.get("_source") or {}
        last = _ts_value(hit, cfg.timestamp_field, where)
        if cfg.deleted_field and src.get(cfg.deleted_field) is True:
            deletes.append(doc_id)
            continue
        title = _text(src, cfg.title_field, where)
        text = _text(src, cfg.text_field, where)
        if title is None and text is None:
            fields = " or ".join(repr(f) for f in (cfg.title_field, cfg.text_field) if f)
            raise GenseekError(f"{where}: no {fields} field (set --text-field / --title-field)")
        if cfg.metadata_fields is None:
            meta = {k: v for k, v in src.items() if k not in skip}
        else:
            meta = {k: src[k] for k in cfg.metadata_fields if k in src}
        meta["_es_index"] = hit.get("_index", index)
        meta["_es_ts"] = last
        upserts.append(Document(doc_id, title or "", text or "", meta))
    return upserts, deletes, last


# -- the sync ------------------------------------------------------------------------------


def load_checkpoint(coll: Collection, index: str) -> dict[str, Any] | None:
    raw = coll.store.get_meta(checkpoint_key(index))
    if not raw:
        return None
    try:
        ck = json.loads(raw)
    except ValueError:
        raise GenseekError(f"{coll.path}: unreadable sync checkpoint for {index!r}; "
                           "run with --full") from None
    if not isinstance(ck, dict) or ck.get("version") != CHECKPOINT_VERSION:
        raise GenseekError(f"{coll.path}: unknown sync checkpoint format for {index!r}; "
                           "run with --full")
    return ck


def _open(path: Path, create_indexes: Mapping[str, str] | None) -> Collection:
    if Collection.exists(path):
        return Collection.open(path)
    specs = dict(create_indexes) if create_indexes is not None else {"bm25": "bm25",
                                                                     "dense": "dense"}
    return Collection.create(path, specs)


def sync_index(es: Any, path: Path, cfg: SyncConfig, *,
               create_indexes: Mapping[str, str] | None = None, full: bool = False,
               progress: bool = False,
               on_page: Callable[[SyncReport], None] | None = None) -> SyncReport:
    """Bring the collection at ``path`` up to date with ``cfg.index`` (see the module doc);
    ``on_page(report)`` after each committed page."""
    start = time.perf_counter()
    ts_type, tomb_type = timestamp_types(es, cfg)  # 1. before anything is opened or written
    coll = _open(Path(path), create_indexes)
    report = SyncReport(cfg.index, str(path), full=full)
    try:
        run = _Run(coll, cfg, report, _start_state(coll, cfg, full, report), on_page)
        seen = run.copy_index(es, ts_type, progress, track_seen=full)  # 2-3.
        if cfg.tombstone_index:
            run.apply_tombstones(es, cfg.tombstone_index, tomb_type or "date")  # 4.
        if seen is not None:
            run.delete_unseen(seen)  # 5.
        run.state["done"] = True  # 6.
        run.commit((), ())
        report.checkpoint = run.state
        coll.sync()
    finally:
        coll.close()
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def timestamp_types(es: Any, cfg: SyncConfig) -> tuple[str, str | None]:
    """The mapped types of the timestamp field in ``cfg.index`` and in the tombstone index
    (None without one); a GenseekError unless both are dates or numbers."""
    ts_type = field_type(es, cfg.index, cfg.timestamp_field)
    if ts_type is None:
        raise GenseekError(f"Elasticsearch index {cfg.index!r} has no mapped field "
                           f"{cfg.timestamp_field!r}; set --timestamp-field to a date or "
                           "numeric field that every write sets")
    if ts_type not in NUMERIC_TYPES:
        raise GenseekError(f"{cfg.index}: timestamp field {cfg.timestamp_field!r} is "
                           f"{ts_type}; expected a date or numeric field")
    tomb_type = None
    if cfg.tombstone_index:
        tomb_type = field_type(es, cfg.tombstone_index, cfg.timestamp_field)
        if tomb_type not in NUMERIC_TYPES:
            raise GenseekError(f"tombstone index {cfg.tombstone_index!r}: no date or numeric "
                               f"field {cfg.timestamp_field!r}")
    return ts_type, tomb_type


def _start_state(coll: Collection, cfg: SyncConfig, full: bool,
                 report: SyncReport) -> dict[str, Any]:
    """The checkpoint this run starts from and commits as it goes (from the stored one,
    unless ``full``); sets ``report.resumed`` and ``report.since``."""
    ck = None if full else load_checkpoint(coll, cfg.index)
    if ck and ck.get("timestamp_field") != cfg.timestamp_field:
        raise GenseekError(f"{coll.path}: {cfg.index!r} was synced by "
                           f"{ck.get('timestamp_field')!r}, not {cfg.timestamp_field!r}; "
                           "run with --full to start over")
    report.resumed = bool(ck) and not ck.get("done", False)
    state: dict[str, Any] = {"version": CHECKPOINT_VERSION, "index": cfg.index,
                             "timestamp_field": cfg.timestamp_field,
                             "ts": (ck or {}).get("ts"), "tombstone_index": cfg.tombstone_index,
                             "tombstone_ts": (ck or {}).get("tombstone_ts"), "done": False}
    report.since = _since(state["ts"], cfg)
    return state


def _since(ts: float | None, cfg: SyncConfig) -> float | None:
    """Where a scan resumes: the checkpoint's timestamp minus the overlap (None: from the
    start)."""
    return None if ts is None else ts - cfg.overlap


@dataclass
class _Run:
    """One sync in progress: the collection it writes, the checkpoint ``state`` that every
    write commits with it, and the report it counts into."""

    coll: Collection
    cfg: SyncConfig
    report: SyncReport
    state: dict[str, Any]
    on_page: Callable[[SyncReport], None] | None

    def commit(self, upserts: Sequence[Document], deletes: Sequence[str]) -> None:
        """One store transaction: the page's changes and the checkpoint together."""
        meta = {checkpoint_key(self.cfg.index): json.dumps(self.state)}
        self.report.add(self.coll.write(upserts, deletes, meta=meta, sync=False))

    def page_done(self) -> None:
        self.report.pages += 1
        if self.on_page is not None:
            self.on_page(self.report)

    def copy_index(self, es: Any, ts_type: str, progress: bool, track_seen: bool,
                   ) -> set[str] | None:
        """Steps 2-3: every page of the index since the checkpoint, each committed with the
        checkpoint at its last timestamp; with ``track_seen``, returns the ids read (and not
        deleted)."""
        cfg, since = self.cfg, self.report.since
        seen: set[str] | None = set() if track_seen else None
        with self._bar(es, progress) as bar:
            for hits in scan(es, cfg.index, cfg.timestamp_field, ts_type, since, cfg.query,
                             cfg.batch_size, cfg.keep_alive):
                upserts, deletes, self.state["ts"] = convert(hits, cfg, cfg.index)
                if seen is not None:
                    seen.update(h["_id"] for h in hits if h["_id"] not in deletes)
                self.commit(upserts, deletes)
                self.report.read += len(hits)
                if bar is not None:
                    bar.update(len(hits))
                self.page_done()
        return seen

    def _bar(self, es: Any, progress: bool) -> contextlib.AbstractContextManager[Any]:
        """A tqdm bar over the documents to read (their count only for a scan from the
        start), or a context giving None."""
        if not progress:
            return contextlib.nullcontext()
        from tqdm import tqdm

        total = count(es, self.cfg.index, self.cfg.query) if self.report.since is None else None
        return tqdm(total=total, unit="doc", desc=f"sync {self.cfg.index}", dynamic_ncols=True)

    def apply_tombstones(self, es: Any, index: str, ts_type: str) -> None:
        """Step 4: each tombstone in ``index`` deletes its document, unless the stored copy
        is newer than the tombstone."""
        cfg = self.cfg
        for hits in scan(es, index, cfg.timestamp_field, ts_type,
                         _since(self.state["tombstone_ts"], cfg), None, cfg.batch_size,
                         cfg.keep_alive):
            stamps = {h["_id"]: _ts_value(h, cfg.timestamp_field, f"{index}/_doc/{h['_id']}")
                      for h in hits}
            stored = self.coll.get(list(stamps))
            doomed = [i for i, t in stamps.items() if i in stored
                      and _older_or_equal(stored[i].metadata.get("_es_ts"), t)]
            self.state["tombstone_ts"] = max(stamps.values())
            self.commit((), doomed)
            self.report.tombstones += len(hits)
            self.page_done()

    def delete_unseen(self, seen: set[str]) -> None:
        """Step 5 (``full``): delete the documents of this index that the scan did not see."""
        stale = [d.doc_id for d in self.coll.store.iter_docs()
                 if d.metadata.get("_es_index") == self.cfg.index and d.doc_id not in seen]
        for i in range(0, len(stale), 1000):
            self.report.add(self.coll.write((), stale[i:i + 1000], sync=False))


def _older_or_equal(stored: Any, tombstone: Any) -> bool:
    if not isinstance(stored, (int, float)):
        return True  # not from a sync of this index: the tombstone wins
    return stored <= tombstone
