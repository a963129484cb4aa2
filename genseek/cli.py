"""The ``genseek`` command line: index, add, delete, search, eval, stats.

Every user error prints one line (``genseek: error: ...``) and exits with status 2,
with nothing half-written: the document store commits whole batches only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genseek.errors import GenseekError

DEFAULT_INDEXES = ("bm25", "dense")
EXAMPLES = """\
examples:
  genseek index scifact-coll --from ../shared/datasets/scifact
  genseek index coll --from corpus.jsonl --index bm25 --index 'hnsw=dense(factory=HNSW32)'
  genseek search scifact-coll "do statins reduce mortality" -k 5
  genseek eval scifact-coll --dataset ../shared/datasets/scifact --split test
"""


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)


# -- progress -------------------------------------------------------------------------------


class _SyncProgress:
    """Catch-up progress, one meter per index (in operations), shown from its first batch and
    closed when the index has caught up (also when a lazy collection opens it later)."""

    def __init__(self, enabled: bool):
        from genseek.progress import Meter

        self.enabled = enabled
        self.meters: dict[str, Meter] = {}

    def __call__(self, name: str, seq: int, target: int) -> None:
        from genseek.progress import Meter

        meter = self.meters.get(name)
        if meter is None:
            meter = self.meters[name] = Meter(target, f"catch-up {name}", unit="op",
                                              enabled=self.enabled, initial=seq)
        meter.set(seq, target)
        if seq >= target:
            self.meters.pop(name).close()

    def close(self) -> None:
        for meter in self.meters.values():
            meter.close()
        self.meters = {}


class _ApplyProgress:
    """The indexing meter moving while the indexes apply a batch: a batch's documents count
    as done in proportion to the share of the batch every index has applied."""

    def __init__(self, meter: Any, indexes: int, batch_size: int):
        self.meter, self.indexes, self.batch_size = meter, max(1, indexes), batch_size
        self.next_batch()

    def next_batch(self) -> None:
        self.base = self.meter.n
        left = (self.meter.total or 0) - self.base
        self.docs = min(self.batch_size, left) if left > 0 else self.batch_size
        self.starts: dict[str, int] = {}
        self.done: dict[str, float] = {}

    def __call__(self, name: str, seq: int, target: int) -> None:
        start = self.starts.setdefault(name, seq)
        self.done[name] = 1.0 if target <= start else (seq - start) / (target - start)
        share = sum(self.done.values()) / self.indexes
        self.meter.set(self.base + int(self.docs * share))

    def batch_done(self, n: int) -> None:
        self.meter.set(self.base + n)
        self.next_batch()


# -- commands -------------------------------------------------------------------------------


def _open(path: str, progress: bool, lazy: bool = False, ray: str | None = None,
          args: argparse.Namespace | None = None):
    """Open a collection; ``lazy``: each index opens (and catches up) when first used. A
    sharded one opens its shards here, or (``ray``, connected by :func:`_ray_for`) each in a
    Ray actor, placed as ``args`` say (:func:`_shard_placement`)."""
    from genseek.collection import Collection
    from genseek.progress import stage
    from genseek.sharded import is_sharded, open_sharded

    if is_sharded(Path(path)):
        stage("opening %s (sharded%s)", path, ", a Ray actor per shard" if ray else "")
        return open_sharded(Path(path), ray=ray, **_shard_placement(args))
    sync = _SyncProgress(progress)
    if lazy:
        return Collection.open(Path(path), progress=sync, lazy=True)
    stage("opening %s", path)
    try:
        return Collection.open(Path(path), progress=sync)
    finally:
        sync.close()


def _ingest(collection, source: Path, args: argparse.Namespace, started: float) -> dict[str, Any]:
    from genseek.data.readers import corpus_file, count_lines, read_corpus
    from genseek.progress import Meter, stage

    file = corpus_file(source)
    stat = file.stat()
    key = f"ingest:{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    skip = collection.resume_point(key)
    total = count_lines(file)
    stage("reading %s (%s lines)%s", file, f"{total:,}",
          f"; resuming after line {skip:,}, committed by an earlier run" if skip else "")
    meter = Meter(total, "indexing", enabled=not args.no_progress, initial=skip)
    applying = _ApplyProgress(meter, len(collection.indexes), args.batch_size)
    ingest_start = time.perf_counter()
    try:
        if getattr(args, "ray", None) and not hasattr(collection, "shards"):
            # the model work on Ray (genseek.cluster); a sharded collection's shards are Ray
            # actors already, each running its own indexes' model work
            from genseek import cluster

            report = cluster.ingest(
                collection, file, address=args.ray, source_key=key, skip_lines=skip,
                batch_size=args.batch_size, max_doc_bytes=args.max_doc_bytes,
                on_batch=applying.batch_done, on_apply=applying, actors=args.ray_actors,
                cpus_per_actor=args.ray_cpus_per_actor or ENCODER_CPUS,
                resources=dict(args.ray_resource or ()))
        else:
            records = read_corpus(file, skip_lines=skip, max_doc_bytes=args.max_doc_bytes)
            report = collection.ingest(records, source_key=key, batch_size=args.batch_size,
                                       on_batch=applying.batch_done, skip_lines=skip,
                                       on_apply=applying)
    finally:
        meter.close()
    now = time.perf_counter()
    elapsed = now - started  # the whole command: opening, catch-up and indexing
    return {
        "source": str(file), "read": report.read, "resumed_after_line": skip,
        "upserted": report.upserted, "unchanged": report.unchanged,
        "empty_documents": list(report.empty_ids[:20]), "empty_count": len(report.empty_ids),
        "documents": len(collection), "seq": report.seq, "seconds": round(elapsed, 2),
        "indexing_seconds": round(now - ingest_start, 2),
        "docs_per_second": round(report.read / elapsed, 1) if elapsed > 0 else None,
    }


def _print_ingest(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    skip = summary["resumed_after_line"]
    total = f"collection has {summary['documents']:,} documents (seq {summary['seq']:,})"
    if skip and not summary["read"]:
        print(f"nothing new in {summary['source']}: its {skip:,} lines were indexed by an "
              f"earlier run; {total}")
    else:
        resumed = f" after line {skip:,} (the lines before were indexed by an earlier run)" \
            if skip else ""
        print(f"{summary['read']:,} documents read from {summary['source']}{resumed} in "
              f"{summary['seconds']:.1f}s, opening and catch-up included "
              f"({summary['docs_per_second'] or 0:,.1f} docs/s): "
              f"{summary['upserted']:,} written, {summary['unchanged']:,} unchanged; {total}")
    if summary["empty_count"]:
        print(f"note: {summary['empty_count']} documents have neither title nor text and were "
              f"indexed as empty: {', '.join(summary['empty_documents'])}", file=sys.stderr)


def cmd_index(args: argparse.Namespace) -> int:
    from genseek.collection import Collection
    from genseek.sharded import is_sharded
    from genseek.spec import parse_named

    started = time.perf_counter()
    named = [parse_named(s) for s in (args.index or [])]
    path = Path(args.collection)
    shards = getattr(args, "shards", None)
    if shards is not None and Collection.exists(path):
        raise GenseekError(f"{path} is an unsharded collection: --shards applies only when "
                           "the collection is created")
    if shards is not None and is_sharded(path) and \
            json.loads((path / "sharded.json").read_text("utf-8"))["shards"] != shards:
        raise GenseekError(f"{path} already has a different number of shards")
    sharded = shards is not None or is_sharded(path)
    with _ray_for(args, sharded):
        return _index_into(args, path, named, shards, started,
                           args.ray if sharded and getattr(args, "ray", None) else None)


def _index_into(args: argparse.Namespace, path: Path, named: list[tuple[str, Any]],
                shards: int | None, started: float, ray: str | None) -> int:
    from genseek.collection import Collection
    from genseek.sharded import ShardedCollection, is_sharded

    progress = not args.no_progress
    if is_sharded(path) or Collection.exists(path):
        collection = _open(args.collection, progress, ray=ray, args=args)
        try:
            for name, spec in named:
                sync = _SyncProgress(progress)
                collection.add_index(name, spec, progress=sync)
                sync.close()
        except BaseException:
            collection.close()
            raise
        created = False
    else:
        specs = dict(named) if named else {n: n for n in DEFAULT_INDEXES}
        if len(specs) != len(named or specs):
            raise GenseekError("two --index options give the same name")
        from genseek.data.readers import corpus_file

        corpus_file(Path(args.source))  # a missing source fails before anything is created
        from genseek.progress import stage

        stage("creating %s with indexes %s%s", path, ", ".join(specs),
              f" in {shards} shards" if shards else "")
        collection = ShardedCollection.create(path, specs, shards, ray=ray,
                                              **_shard_placement(args)) if shards \
            else Collection.create(path, specs)
        created = True
    try:
        summary = _ingest(collection, Path(args.source), args, started)
    except GenseekError:
        nothing_written = created and _seq(collection) == 0
        collection.close()
        if nothing_written:  # the first batch failed: leave no empty collection behind
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        raise
    except BaseException:
        collection.close()
        raise
    collection.close()
    _print_ingest(summary, args.json)
    return 0


def _seq(collection: Any) -> int:
    """A collection's last sequence number (a sharded one's: its router's)."""
    from genseek.sharded import ShardedCollection

    return collection.seq if isinstance(collection, ShardedCollection) else collection.store.seq


ENCODER_CPUS = 0.5
"""CPUs an encoder actor of an unsharded import reserves unless ``--ray-cpus-per-actor`` says
otherwise."""


def _shard_placement(args: argparse.Namespace | None) -> dict[str, Any]:
    """Where a sharded collection's Ray actors go: ``--ray-cpus-per-actor`` and
    ``--ray-resource`` (a shard's actor runs its own indexes' model work, so the flags of the
    encoder actors apply to it)."""
    from genseek.sharded import SHARD_CPUS

    cpus = getattr(args, "ray_cpus_per_actor", None)
    return {"cpus_per_shard": SHARD_CPUS if cpus is None else cpus,
            "resources": dict(getattr(args, "ray_resource", None) or ())}


def _ray_for(args: argparse.Namespace, sharded: bool) -> Any:
    """The Ray connection a sharded import runs in (its shards become Ray actors); a null
    context otherwise (an unsharded import with ``--ray`` connects in ``cluster.ingest``)."""
    import contextlib

    if not sharded or not getattr(args, "ray", None):
        return contextlib.nullcontext()
    from genseek import cluster

    return cluster.connect(args.ray)


def cmd_add(args: argparse.Namespace) -> int:
    from genseek.sharded import is_sharded

    started = time.perf_counter()
    sharded = is_sharded(Path(args.collection))
    with _ray_for(args, sharded), _open(args.collection, not args.no_progress,
                                         ray=args.ray if sharded else None,
                                         args=args) as collection:
        _print_ingest(_ingest(collection, Path(args.source), args, started), args.json)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    ids = list(args.ids)
    if args.ids_file:
        try:
            text = Path(args.ids_file).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise GenseekError(f"{args.ids_file}: cannot read the ids file: {exc}") from None
        ids += [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        raise GenseekError("give document ids to delete (arguments or --ids-file)")
    with _open(args.collection, False) as collection:
        result = collection.delete(ids)
    out = {"deleted": result.deleted, "missing": result.missing, "seq": result.seq}
    print(json.dumps(out) if args.json else
          f"deleted {result.deleted} documents ({result.missing} ids were not in the collection)")
    return 0


def _check_query(query: str) -> str:
    from genseek.types import text_problem

    if not query.strip():
        raise GenseekError("the query is empty")
    problem = text_problem(query)
    if problem:
        raise GenseekError(f"the query {problem}")
    return query


def _check_k(k: int) -> int:
    if k < 1 or k > 10_000:
        raise GenseekError(f"-k must be between 1 and 10000, not {k}")
    return k


def cmd_search(args: argparse.Namespace) -> int:
    query = _check_query(args.query)
    k = _check_k(args.k)
    fusion_params = {"weights": args.weights} if args.weights else {}
    if args.weights and args.fusion != "linear":
        raise GenseekError("--weights needs --fusion linear")
    with _open(args.collection, False, lazy=True) as collection:
        if args.fusion == "rrf":
            fusion_params["rrf_k"] = args.rrf_k
        retriever = collection.retriever(args.index or None, args.fusion, **fusion_params)
        for name, error in sorted(collection.unavailable().items()) if not args.index else ():
            print(f"genseek: warning: index {name!r} is unavailable and is left out: {error}",
                  file=sys.stderr)
        hits = retriever.search([query], k)[0]
        docs = collection.get([h.doc_id for h in hits])
        why_empty = "" if hits else _why_no_results(collection, query, args.index)
    rows = [{"rank": r, "doc_id": h.doc_id, "score": h.score,
             "title": docs[h.doc_id].title if h.doc_id in docs else ""}
            for r, h in enumerate(hits, start=1)]
    if args.json:
        print(json.dumps({"query": query, "hits": rows}))
        return 0
    if not rows:
        print(f"no results{why_empty}")
        return 0
    width = max(len(r["doc_id"]) for r in rows)
    print(f"{'rank':>4}  {'doc id':<{width}}  {'score':>9}  title")
    for r in rows:
        print(f"{r['rank']:>4}  {r['doc_id']:<{width}}  {r['score']:>9.4f}  {r['title'][:80]}")
    return 0


def _why_no_results(collection: Any, query: str, names: list[str] | None) -> str:
    """`` (why)`` for an empty result list, when it can be told; else ``""``."""
    if len(collection) == 0:
        return " (the collection is empty)"
    searched = names or collection.default_indexes()
    lexical = [n for n in searched if hasattr(collection.index(n), "analyze")]
    if lexical and lexical == searched and not collection.index(lexical[0]).analyze(query):
        return " (the query has only stop words, which bm25 does not index)"
    return ""


def cmd_eval(args: argparse.Namespace) -> int:
    from genseek.data.readers import read_qrels, read_queries
    from genseek.data.trec import write_run
    from genseek.evaluation import experiment

    k = _check_k(args.k)
    dataset = Path(args.dataset)
    qrels = read_qrels(dataset, args.split)
    queries = read_queries(dataset)
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise GenseekError(f"{dataset}: {len(missing)} judged queries are missing from "
                           f"queries.jsonl (e.g. {missing[0]!r})")
    topics = {q: text for q, text in queries.items() if q in qrels}
    run_dir = Path(args.runs) if args.runs else Path(args.collection) / "runs" / (
        f"{dataset.name}-{args.split}")
    with _open(args.collection, not args.no_progress, lazy=True) as collection:
        names = args.index or collection.default_indexes()
        systems = {name: collection.serving(name) for name in names}
        if len(systems) > 1:
            systems["rrf"] = collection.retriever(list(systems), rrf_k=args.rrf_k,
                                                  depth=max(k, 100))
        result = experiment(systems, topics, qrels, k=k, progress=not args.no_progress)
    for name, run in result.runs.items():
        write_run(run_dir / f"{name}.trec", run, tag=f"genseek-{name}")
    if args.json:
        print(json.dumps(result.metrics))
        return 0
    qps = result.queries_per_s()
    print(f"{dataset.name} {args.split}: {len(topics)} judged queries; runs in {run_dir}")
    print(f"{'system':<12}" + "".join(f"{m:>10}" for m in result.measures) + f"{'q/s':>9}")
    for name, values in result.metrics.items():
        print(f"{name:<12}" + "".join(f"{values[m]:>10.4f}" for m in result.measures)
              + f"{qps.get(name, 0.0):>9.1f}")
    return 0


def _human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def cmd_stats(args: argparse.Namespace) -> int:
    from genseek.collection import Collection

    if args.open:
        with _open(args.collection, not args.no_progress) as collection:
            stats = collection.stats()
    else:
        from genseek.sharded import describe, is_sharded

        path = Path(args.collection)
        stats = describe(path) if is_sharded(path) else Collection.describe(path)
    if args.json:
        print(json.dumps(stats))
        return 0
    print(f"{stats['path']}: {stats['documents']:,} documents, seq {stats['seq']:,}, "
          f"{_human(stats['disk_bytes'])} on disk (store {_human(stats['store_bytes'])})")
    print(f"{'index':<12} {'spec':<40} {'state':<12} {'docs':>9} {'seq':>9} {'disk':>11} "
          f"{'memory':>11}")
    for name, s in stats["indexes"].items():
        docs, seq = s.get("documents"), s.get("applied_seq")
        print(f"{name:<12} {s['spec'][:40]:<40} {s.get('state', '-'):<12} "
              f"{'-' if docs is None else format(docs, ','):>9} "
              f"{'-' if seq is None else format(seq, ','):>9} "
              f"{_human(s.get('disk_bytes')):>11} {_human(s.get('memory_bytes')):>11}")
        if s.get("error"):
            print(f"  {name}: {s['error']}")
    if any(s.get("open") is False for s in stats["indexes"].values()):
        print("(read from what each index committed: docs as of its last close, memory only "
              "with --open)")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    with _open(args.collection, not args.no_progress) as collection:
        before = collection.health()
        seq = _seq(collection)
    out = {"seq": seq, "seconds": round(time.perf_counter() - start, 2),
           "indexes": {name: h["state"] for name, h in before.items()},
           "errors": {name: h["error"] for name, h in before.items() if h["error"]},
           "unapplied": collection.unapplied}
    if args.json:
        print(json.dumps(out))
    else:
        states = ", ".join(f"{n}: {s}" for n, s in out["indexes"].items()) or "no indexes"
        print(f"{args.collection}: seq {seq:,}; {states} ({out['seconds']:.1f}s)")
        for name, error in out["errors"].items():
            print(f"genseek: error: index {name!r}: {error}", file=sys.stderr)
    return 1 if collection.unapplied or any(
        s == "failed" for s in out["indexes"].values()) else 0


def cmd_serve(args: argparse.Namespace) -> int:
    import contextlib
    import signal
    import threading

    import uvicorn

    from genseek.api import logs
    from genseek.api.app import create_app
    from genseek.api.settings import Settings, is_loopback, load_api_keys_file

    settings = Settings.from_env(root=Path(args.root), host=args.host, port=args.port,
                                 cors_origins=tuple(args.cors_origin) if args.cors_origin else None)
    if args.api_keys_file:
        keys = {**settings.api_keys, **load_api_keys_file(args.api_keys_file)}
        settings = settings.with_changes(api_keys=keys)
    if not settings.api_keys:
        if not is_loopback(settings.host):
            raise GenseekError(f"refusing to listen on {settings.host}: no API key is configured "
                               "(set GENSEEK_API_KEYS or --api-keys-file), so only a loopback "
                               "address such as 127.0.0.1 is allowed")
        print(f"genseek: no API key is configured: bound to loopback ({settings.host}) only, "
              "and requests need no key", file=sys.stderr)
    logs.configure()
    # -Xrs: the JVM (started with the first bm25 index) leaves SIGTERM and SIGINT to us,
    # so they shut the server down gracefully instead of exiting the process at once.
    jvm_opts = os.environ.get("GENSEEK_JVM_OPTS", "-Xms256m -Xmx4g")
    if "-Xrs" not in jvm_opts.split():
        os.environ["GENSEEK_JVM_OPTS"] = f"{jvm_opts} -Xrs"

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # graceful on SIGTERM/SIGINT, then a normal exit
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def handle(sig: int, frame: Any) -> None:
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True  # a second Ctrl-C
                self.should_exit = True

            previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    app = create_app(settings)
    server = Server(uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None,
        access_log=False, server_header=False, lifespan="on",
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5))
    print(f"genseek: serving {settings.root} on http://{settings.host}:{settings.port} "
          "(docs at /docs; Ctrl-C or SIGTERM stops it gracefully)", file=sys.stderr)
    try:
        server.run()
    except SystemExit:
        if not server.started:
            raise GenseekError(f"cannot serve on {settings.host}:{settings.port} "
                               "(see the log line above)") from None
        raise
    if not server.started:
        raise GenseekError(f"the server did not start on {settings.host}:{settings.port} "
                           "(see the log lines above)")
    print(shutdown_line(app.state.genseek.manager.unapplied), file=sys.stderr)
    return 0


def shutdown_line(unapplied: dict[str, dict[str, int]]) -> str:
    """What the server says as it exits: true for the writes it could not apply."""
    if not unapplied:
        return "genseek: shut down cleanly; every acknowledged write is applied to every index"
    behind = ", ".join(f"{c}/{i} ({n:,} operations)" for c, lags in sorted(unapplied.items())
                       for i, n in sorted(lags.items()))
    return (f"genseek: shut down; every acknowledged write is stored, but these indexes had not "
            f"applied them all: {behind}; they catch up when their collection is next opened")


# -- parser -----------------------------------------------------------------------------------


# Sub-programs with their own argument parsers: module path and one line about each. Each
# module has ``main(argv: list[str]) -> int``; imported only when run.
TRAIN_RECIPES: dict[str, tuple[str, str]] = {
    "sparse": ("genseek.indexers.sparse_train",
               "inference-free sparse document encoder (IDF-aware FLOPS, ensemble distillation)"),
    "first": ("genseek.rerankers.first_train",
              "FIRST listwise reranker (LM loss + RankNet on first-token label logits)"),
    "repconc": ("genseek.indexers.repconc_train",
                "RepCONC: PQ codebooks + query projection under a uniform-clustering constraint"),
    "genre": ("genseek.retrievers.generative_train", "GENRE: query -> title"),
    "seal": ("genseek.retrievers.generative_train", "SEAL: query -> span of a relevant document"),
    "dsi": ("genseek.retrievers.generative_train", "DSI / DSI++: document or query -> docid"),
}
ES_PROGRAM = "genseek.api.elastic"


def _run_program(module: str, argv: list[str]) -> int:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise GenseekError(f"{module} is not available in this installation") from exc
        raise
    return int(mod.main(argv) or 0)


def cmd_train(args: argparse.Namespace) -> int:
    if args.recipe is None:
        args.train_parser.print_help()
        return 0
    module, _ = TRAIN_RECIPES[args.recipe]
    argv = list(args.args)
    if module.endswith("generative_train"):
        argv = [args.recipe, *argv]
    return _run_program(module, argv)


def cmd_es(args: argparse.Namespace) -> int:
    return _run_program(ES_PROGRAM, list(args.args))


def build_parser() -> argparse.ArgumentParser:
    from genseek import __version__
    from genseek.cliutil import (
        HelpFormatter,
        positive,
        positive_float,
        ray_address,
        resource,
        weights,
    )

    parser = argparse.ArgumentParser(
        prog="genseek", description="Index corpora into BM25, learned-sparse, dense, "
        "multi-vector and generative indexes at once, keep them current as documents change, "
        "search them alone or fused, evaluate on BEIR datasets, and serve them over HTTP.",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"genseek {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, about: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=about, description=description,
                              formatter_class=HelpFormatter)

    def collection_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("collection", metavar="COLLECTION", help="the collection folder")

    def json_flag(p: argparse.ArgumentParser, what: str = "print JSON instead of a table") -> None:
        p.add_argument("--json", action="store_true", help=what)

    def progress_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-progress", action="store_true",
                       help="no progress bars or progress lines on stderr")

    def ingest_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--from", dest="source", required=True, metavar="PATH",
                       help="a BEIR folder (corpus.jsonl), a .jsonl or a .tsv corpus")
        p.add_argument("--batch-size", type=positive, default=1000, metavar="N",
                       help="documents per committed batch (an interrupted run resumes after "
                       "the last one)")
        p.add_argument("--max-doc-bytes", type=positive, default=16 * 1024 * 1024,
                       metavar="BYTES", help="refuse a document larger than this")
        p.add_argument("--ray", type=ray_address, metavar="ADDRESS",
                       help="run the indexes' model work on Ray: local (a Ray started "
                       "in-process), auto (the cluster running on this machine) or HOST:PORT "
                       "of a cluster's head; the collection stays here (needs "
                       "pip install 'genseek[ray]')")
        p.add_argument("--ray-actors", type=positive, metavar="N",
                       help="encoder actors (default: one per CPU of each node, as far as "
                       "they fit)")
        p.add_argument("--ray-cpus-per-actor", type=positive_float, metavar="F",
                       help=f"CPUs each encoder actor reserves (fractional, so that read tasks "
                       f"still fit; default {ENCODER_CPUS}); of a sharded collection: each "
                       "shard's actor (default 0.25)")
        p.add_argument("--ray-resource", type=resource, action="append",
                       metavar="NAME[=AMOUNT]", help="a custom resource each encoder actor "
                       "(of a sharded collection: each shard's actor) needs, for placement on "
                       "the nodes that have it; repeatable")
        progress_flag(p)
        json_flag(p, "print a JSON summary instead of a sentence")

    p = command("index", "create a collection if needed and index a corpus",
                "Create COLLECTION (with the --index specs; bm25 and dense when none is given) "
                "if it does not exist, add any new --index to an existing one, and index the "
                "corpus. Rerunning an interrupted command resumes after the last committed "
                "batch; unchanged documents are not written again.")
    collection_arg(p)
    p.add_argument("--index", action="append", metavar="[NAME=]SPEC",
                   help="an index spec, e.g. bm25, 'bm25(k1=1.2,b=0.75)', "
                   "'hnsw=dense(factory=HNSW32)'; repeatable (default for a new collection: "
                   "bm25 and dense)")
    p.add_argument("--shards", type=positive, metavar="N",
                   help="create the collection as N shards, documents routed by a hash of "
                   "their id; search, add, delete, eval, stats and the HTTP API use it like "
                   "any collection (default: one unsharded collection)")
    ingest_options(p)
    p.set_defaults(func=cmd_index)

    p = command("add", "add or update documents in an existing collection",
                "Upsert the documents of a corpus into every index: new ids are added, "
                "existing ids replaced, identical documents skipped.")
    collection_arg(p)
    ingest_options(p)
    p.set_defaults(func=cmd_add)

    p = command("delete", "delete documents by id",
                "Delete documents from the store and every index.")
    collection_arg(p)
    p.add_argument("ids", nargs="*", metavar="ID", help="document ids")
    p.add_argument("--ids-file", metavar="F", help="a file with one document id per line")
    json_flag(p, "print a JSON summary")
    p.set_defaults(func=cmd_delete)

    p = command("search", "search a collection",
                "Search one index, or fuse several (every index by default). Only the "
                "indexes searched are opened: a bm25 search starts Java and loads no model. "
                "Generative indexes (genre, seal, dsi) decode with a language model: on a "
                "2-core CPU one GENRE query from the command line takes about 9 s (4 s to "
                "import torch and transformers and load the model, 4 s to decode with 10 "
                "beams); the first query of a GGUF model also converts it once into "
                "genseek's cache (about 20 s, 540 MB). A server keeps the model loaded "
                "(benchmarks/RESULTS.md, section 15).")
    collection_arg(p)
    p.add_argument("query", help="the query text")
    p.add_argument("-k", type=int, default=10, help="results to return (1-10000)")
    p.add_argument("--index", action="append", metavar="NAME",
                   help="search only this index; repeat to fuse several (default: every "
                   "index)")
    p.add_argument("--fusion", choices=("rrf", "linear"), default="rrf",
                   help="how several indexes are fused: reciprocal rank fusion, or a weighted "
                   "sum of min-max normalised scores")
    p.add_argument("--weights", type=weights, metavar="W1,W2,...",
                   help="--fusion linear: one weight per fused index, in --index order (or "
                   "the collection's order; default: equal weights)")
    p.add_argument("--rrf-k", type=float, default=60.0, help="RRF constant")
    json_flag(p)
    p.set_defaults(func=cmd_search)

    p = command("eval", "evaluate indexes and their RRF fusion on a BEIR dataset",
                "nDCG@10, R@100 and RR@10 (ir-measures) for each index and for the RRF fusion "
                "of all of them (named rrf); writes one TREC run file per system.")
    collection_arg(p)
    p.add_argument("--dataset", required=True, metavar="DIR",
                   help="BEIR folder with queries.jsonl and qrels/SPLIT.tsv")
    p.add_argument("--split", default="test", help="the qrels split to evaluate")
    p.add_argument("--index", action="append", metavar="NAME",
                   help="evaluate only this index; repeatable (default: every index)")
    p.add_argument("-k", type=int, default=100, help="depth of each run")
    p.add_argument("--rrf-k", type=float, default=60.0, help="RRF constant")
    p.add_argument("--runs", metavar="DIR",
                   help="folder for the run files (default: COLLECTION/runs/DATASET-SPLIT)")
    progress_flag(p)
    json_flag(p, 'print {"system": {"nDCG@10": ..., "R@100": ..., "RR@10": ...}, ...}')
    p.set_defaults(func=cmd_eval)

    p = command("stats", "documents, sequence numbers and sizes of a collection",
                "Documents, sequence numbers, state and disk size per index, read from what "
                "the collection has committed: no index is opened (no Java, no model), and it "
                "works while a server has the collection open. --open opens every index "
                "(catching it up) and also reports memory.")
    collection_arg(p)
    p.add_argument("--open", action="store_true",
                   help="open every index, catch it up, and report its memory too")
    progress_flag(p)
    json_flag(p)
    p.set_defaults(func=cmd_stats)

    p = command("sync", "bring every index of a collection up to date",
                "Open every index and apply the store operations it has not applied (an "
                "index catches up by itself when it is next used; this does all of them now, "
                "and records their state for 'genseek stats').")
    collection_arg(p)
    progress_flag(p)
    json_flag(p)
    p.set_defaults(func=cmd_sync)

    p = command("serve", "serve a folder of collections over HTTP",
                "Serve every collection under --root over HTTP (routes and docs at /docs). "
                "API keys come from GENSEEK_API_KEYS ('key1:read,key2:write') and/or "
                "--api-keys-file; without any, the server only binds to loopback. At start it "
                "opens the collections and loads the models they need in the background (/ready "
                "says which are loaded); a request's time limit (GENSEEK_REQUEST_TIMEOUT_S, "
                "default 30 s) never counts a model load. SIGTERM or Ctrl-C shuts it down "
                "gracefully.")
    p.add_argument("--root", required=True, metavar="DIR",
                   help="the folder holding the collections (created if missing)")
    p.add_argument("--host", help="address to bind (default: 127.0.0.1, or GENSEEK_HOST)")
    p.add_argument("--port", type=int, help="port (default: 8080, or GENSEEK_PORT)")
    p.add_argument("--api-keys-file", metavar="F",
                   help='JSON {"keys": [{"key": "...", "scopes": ["read"|"write"]}]}')
    p.add_argument("--cors-origin", action="append", metavar="O",
                   help="allow browser requests from this origin; repeatable (default: none)")
    p.set_defaults(func=cmd_serve)

    recipes = "\n".join(f"  {name:<8} {about}" for name, (_, about) in TRAIN_RECIPES.items())
    p = command("train", "train a model with one of the recipes",
                "Run a training recipe; each writes a model folder that an index or reranker "
                "spec can name.")
    p.epilog = f"recipes:\n{recipes}\n\n'genseek train RECIPE --help' lists a recipe's options."
    p.add_argument("recipe", nargs="?", choices=sorted(TRAIN_RECIPES), metavar="RECIPE",
                   help="one of: " + ", ".join(sorted(TRAIN_RECIPES)))
    p.add_argument("args", nargs=argparse.REMAINDER, help="the recipe's own options")
    p.set_defaults(func=cmd_train, train_parser=p)

    p = command("es", "Elasticsearch: register inference endpoints, sync an index",
                "'genseek es register ...' creates Elasticsearch inference endpoints backed by "
                "a genseek server; 'genseek es sync ...' mirrors an Elasticsearch index into a "
                "collection. 'genseek es ACTION --help' lists an action's options.")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ACTION ...",
                   help="register or sync, and its options")
    p.set_defaults(func=cmd_es)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    from genseek.progress import STAGE_LOGGER, stage_lines

    handler = stage_lines(not getattr(args, "no_progress", False) and args.command != "serve")
    try:
        return _run(args)
    finally:
        if handler is not None:
            handler.close()
            logging.getLogger(STAGE_LOGGER).removeHandler(handler)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except GenseekError as exc:
        print(f"genseek: error: {exc}", file=sys.stderr)
        return 1 if exc.status >= 500 else 2  # 1: genseek's side failed, 2: the input
    except KeyboardInterrupt:
        print("genseek: interrupted; committed batches are kept, rerun the same command to "
              "resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # the environment: a path that is a file, no permission, disk full
        print(f"genseek: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
