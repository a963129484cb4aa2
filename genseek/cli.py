"""The ``genseek`` command line: index, add, delete, search, eval, stats.

Every user error prints one line (``genseek: error: ...``) and exits with status 2,
with nothing half-written: the document store commits whole batches only.
"""

from __future__ import annotations

import argparse
import json
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


def _bar(total: int | None, desc: str, enabled: bool, unit: str = "doc"):
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, pipes, captured output)
    return tqdm(total=total, desc=desc, unit=unit, disable=None if enabled else True,
                dynamic_ncols=True,
                smoothing=0.1, file=sys.stderr)


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            count += chunk.count(b"\n")
    return count


class _SyncProgress:
    """Progress bars for index catch-up, one per index, in operations."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars: dict[str, Any] = {}

    def __call__(self, name: str, seq: int, target: int) -> None:
        bar = self.bars.get(name)
        if bar is None:
            bar = self.bars[name] = _bar(target, f"catch-up {name}", self.enabled, unit="op")
            bar.n = 0
        bar.total = target
        bar.update(seq - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


# -- commands -------------------------------------------------------------------------------


def _open(path: str, progress: bool):
    from genseek.collection import Collection

    sync = _SyncProgress(progress)
    try:
        return Collection.open(Path(path), progress=sync)
    finally:
        sync.close()


def _ingest(collection, source: Path, args: argparse.Namespace) -> dict[str, Any]:
    from genseek.data.readers import corpus_file, read_corpus

    file = corpus_file(source)
    stat = file.stat()
    key = f"ingest:{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    skip = collection.resume_point(key)
    total = _count_lines(file)
    bar = _bar(total, "indexing", not args.no_progress)
    bar.update(skip)
    if skip:
        bar.write(f"resuming {file} after line {skip:,} (committed by an earlier run)",
                  file=sys.stderr)  # tqdm.write defaults to stdout, which --json owns
    start = time.perf_counter()
    try:
        records = read_corpus(file, skip_lines=skip, max_doc_bytes=args.max_doc_bytes)
        report = collection.ingest(records, source_key=key, batch_size=args.batch_size,
                                   on_batch=bar.update, skip_lines=skip)
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    return {
        "source": str(file), "read": report.read, "resumed_after_line": skip,
        "upserted": report.upserted, "unchanged": report.unchanged,
        "empty_documents": list(report.empty_ids[:20]), "empty_count": len(report.empty_ids),
        "documents": len(collection), "seq": report.seq, "seconds": round(elapsed, 2),
        "docs_per_second": round(report.read / elapsed, 1) if elapsed > 0 else None,
    }


def _print_ingest(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    print(f"{summary['read']:,} documents read from {summary['source']} in "
          f"{summary['seconds']:.1f}s ({summary['docs_per_second'] or 0:,.1f} docs/s): "
          f"{summary['upserted']:,} written, {summary['unchanged']:,} unchanged; "
          f"collection has {summary['documents']:,} documents (seq {summary['seq']:,})")
    if summary["empty_count"]:
        print(f"note: {summary['empty_count']} documents have neither title nor text and were "
              f"indexed as empty: {', '.join(summary['empty_documents'])}", file=sys.stderr)


def cmd_index(args: argparse.Namespace) -> int:
    from genseek.collection import Collection
    from genseek.spec import parse_named

    named = [parse_named(s) for s in (args.index or [])]
    path = Path(args.collection)
    progress = not args.no_progress
    if Collection.exists(path):
        collection = _open(args.collection, progress)
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
        collection = Collection.create(path, specs)
        created = True
    try:
        summary = _ingest(collection, Path(args.source), args)
    except GenseekError:
        nothing_written = created and collection.store.seq == 0
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


def cmd_add(args: argparse.Namespace) -> int:
    with _open(args.collection, not args.no_progress) as collection:
        _print_ingest(_ingest(collection, Path(args.source), args), args.json)
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


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


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
    with _open(args.collection, False) as collection:
        for name, error in sorted(collection.unavailable().items()) if not args.index else ():
            print(f"genseek: warning: index {name!r} is unavailable and is left out: {error}",
                  file=sys.stderr)
        hits = collection.search(query, k, index=args.index or None, fusion=args.fusion)
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
    searched = names or list(collection.indexes)
    lexical = [n for n in searched if hasattr(collection.index(n), "analyze")]
    if lexical and lexical == searched and not collection.index(lexical[0]).analyze(query):
        return " (the query has only stop words, which bm25 does not index)"
    return ""


def cmd_eval(args: argparse.Namespace) -> int:
    from genseek.data.readers import read_qrels, read_queries
    from genseek.data.trec import write_run
    from genseek.evaluation import evaluate
    from genseek.retrievers.fusion import RRFusion

    k = _check_k(args.k)
    dataset = Path(args.dataset)
    qrels = read_qrels(dataset, args.split)
    queries = read_queries(dataset)
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise GenseekError(f"{dataset}: {len(missing)} judged queries are missing from "
                           f"queries.jsonl (e.g. {missing[0]!r})")
    qids = [q for q in queries if q in qrels]
    texts = [queries[q] for q in qids]
    run_dir = Path(args.runs) if args.runs else Path(args.collection) / "runs" / (
        f"{dataset.name}-{args.split}")
    results: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    with _open(args.collection, not args.no_progress) as collection:
        systems: dict[str, Any] = {name: collection.index(name) for name in collection.indexes}
        if len(systems) > 1:
            systems["rrf"] = RRFusion(list(collection.indexes.values()), rrf_k=args.rrf_k,
                                      depth=max(k, 100))
        for name, system in systems.items():
            start = time.perf_counter()
            hits: list = []
            for i in range(0, len(texts), 64):
                hits += system.search(texts[i:i + 64], k)
            timings[name] = time.perf_counter() - start
            run = dict(zip(qids, hits, strict=True))
            write_run(run_dir / f"{name}.trec", run, tag=f"genseek-{name}")
            results[name] = evaluate(run, qrels)
    if args.json:
        print(json.dumps(results))
        return 0
    measures = list(next(iter(results.values())))
    print(f"{dataset.name} {args.split}: {len(qids)} judged queries; runs in {run_dir}")
    print(f"{'system':<12}" + "".join(f"{m:>10}" for m in measures) + f"{'q/s':>9}")
    for name, values in results.items():
        qps = len(qids) / timings[name] if timings[name] > 0 else 0.0
        print(f"{name:<12}" + "".join(f"{values[m]:>10.4f}" for m in measures) + f"{qps:>9.1f}")
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
    with _open(args.collection, False) as collection:
        stats = collection.stats()
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
    return 0


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
    module, _ = TRAIN_RECIPES[args.recipe]
    argv = list(args.args)
    if module.endswith("generative_train"):
        argv = [args.recipe, *argv]
    return _run_program(module, argv)


def cmd_es(args: argparse.Namespace) -> int:
    return _run_program(ES_PROGRAM, list(args.args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genseek", description="Index corpora into Lucene BM25 and faiss dense indexes, "
        "search them alone or fused, and evaluate on BEIR datasets.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def ingest_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--from", dest="source", required=True, metavar="PATH",
                       help="a BEIR folder (corpus.jsonl), a .jsonl or a .tsv corpus")
        p.add_argument("--batch-size", type=_positive, default=1000,
                       help="documents per committed batch (default 1000)")
        p.add_argument("--max-doc-bytes", type=_positive, default=16 * 1024 * 1024,
                       help="reject a document larger than this (default 16 MiB)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("--json", action="store_true", help="print a JSON summary")

    p = sub.add_parser("index", help="create a collection if needed and index a corpus",
                       description="Create COLLECTION (with --index specs, default bm25 and "
                       "dense) if it does not exist, add any new --index, and index the corpus. "
                       "Rerunning an interrupted command resumes after the last committed batch.")
    p.add_argument("collection", help="collection folder")
    p.add_argument("--index", action="append", metavar="[NAME=]SPEC",
                   help="an index spec, e.g. bm25, 'bm25(k1=1.2,b=0.75)', "
                   "'hnsw=dense(factory=HNSW32)'; repeatable")
    ingest_options(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("add", help="add or update documents in an existing collection",
                       description="Upsert the documents of a corpus: new ids are added, "
                       "existing ids replaced, identical documents skipped.")
    p.add_argument("collection")
    ingest_options(p)
    p.set_defaults(func=cmd_add)

    p = sub.add_parser("delete", help="delete documents by id",
                       description="Delete documents from the store and every index.")
    p.add_argument("collection")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--ids-file", help="a file with one id per line")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("search", help="search a collection",
                       description="Search one index, or fuse several (all by default).")
    p.add_argument("collection")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=10, help="results to return (default 10)")
    p.add_argument("--index", action="append", metavar="NAME",
                   help="search only this index; repeat to fuse several (default: all)")
    p.add_argument("--fusion", choices=("rrf", "linear"), default="rrf")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("eval", help="evaluate every index and their RRF fusion",
                       description="nDCG@10, R@100 and RR@10 (ir-measures) for each index and "
                       "for the RRF fusion of all of them (named rrf); writes TREC run files.")
    p.add_argument("collection")
    p.add_argument("--dataset", required=True, help="BEIR folder with queries.jsonl and qrels/")
    p.add_argument("--split", default="test")
    p.add_argument("-k", type=int, default=100, help="depth of each run (default 100)")
    p.add_argument("--rrf-k", type=float, default=60.0, help="RRF constant (default 60)")
    p.add_argument("--runs", help="folder for the run files (default COLLECTION/runs/DATASET-SPLIT)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true",
                   help='print {"name": {"nDCG@10": ..., "R@100": ..., "RR@10": ...}, ...}')
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("stats", help="documents, sizes and memory of a collection",
                       description="Documents, sequence numbers, disk and memory per index.")
    p.add_argument("collection")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("serve", help="serve a folder of collections over HTTP",
                       description="Serve every collection under --root over HTTP (routes and "
                       "docs at /docs). API keys come from GENSEEK_API_KEYS ('key1:read,"
                       "key2:write') and/or --api-keys-file; without any, the server only "
                       "binds to loopback. SIGTERM or Ctrl-C shuts it down gracefully.")
    p.add_argument("--root", required=True, metavar="DIR",
                   help="the folder holding the collections (created if missing)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8080)")
    p.add_argument("--api-keys-file", metavar="F",
                   help='JSON {"keys": [{"key": "...", "scopes": ["read"|"write"]}]}')
    p.add_argument("--cors-origin", action="append", metavar="O",
                   help="allow browser requests from this origin; repeatable (default: none)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("train", help="train a model with one of the recipes",
                       description="Run a training recipe; each writes a model folder that an "
                       "index or reranker spec can name. Recipes: " + "; ".join(
                           f"{name}: {about}" for name, (_, about) in TRAIN_RECIPES.items())
                       + ". 'genseek train RECIPE --help' lists a recipe's options.")
    p.add_argument("recipe", choices=sorted(TRAIN_RECIPES), metavar="RECIPE",
                   help="one of: " + ", ".join(sorted(TRAIN_RECIPES)))
    p.add_argument("args", nargs=argparse.REMAINDER, help="the recipe's own options")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("es", help="Elasticsearch: register inference endpoints, sync an index",
                       description="'genseek es register ...' creates Elasticsearch inference "
                       "endpoints backed by a genseek server; 'genseek es sync ...' mirrors an "
                       "Elasticsearch index into a collection. 'genseek es ACTION --help' for "
                       "options.")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ACTION ...")
    p.set_defaults(func=cmd_es)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
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
