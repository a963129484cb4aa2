"""Indexing throughput and query latency, side by side with the raw encoder.

In one process, on the same documents (``Document.contents`` = title + " " + text):

1. raw encoder throughput: ``TextEncoder.encode(texts, batch_size)`` on all texts;
2. genseek indexing throughput of a fresh collection holding only ``dense``, then
   one holding only ``bm25``, through ``Collection.create`` + ``Collection.ingest``
   over ``read_corpus`` (what ``genseek index`` does), and the dense pipeline
   overhead ratio = raw docs/s / pipeline docs/s (goal <= 1.10);
3. query latency p50/p99 of bm25, dense and their RRF fusion (depth 100) at batch
   sizes 1 and 32 on the test queries.

The encoder is loaded once (``shared_encoder``, the cache the dense index uses) and
warmed up before anything is timed; model load and JVM start are reported apart.

    python benchmarks/indexing.py --quick        # 500 SciFact docs, 64 queries (~2 min)
    python benchmarks/indexing.py                # all of SciFact (~8 min on 2 cores)
    python benchmarks/indexing.py --json         # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _common as C

MODEL = "all-MiniLM-L6-v2"
OVERHEAD_GOAL = 1.10


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class _TimedEncode:
    """Wraps ``encoder.encode`` to add up the seconds the pipeline spends encoding."""

    def __init__(self, encode: Callable[..., Any]):
        self.inner = encode
        self.seconds = 0.0
        self.calls = 0
        self.texts = 0
        functools.update_wrapper(self, encode)

    def __call__(self, texts: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.inner(texts, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1
            self.texts += len(texts)


def _records(folder: Path, limit: int | None):
    from genseek.data.readers import corpus_file, read_corpus

    records = read_corpus(corpus_file(folder))
    return itertools.islice(records, limit) if limit else records


def _source_key(folder: Path) -> str:
    """The resume key the CLI records with each batch (same bookkeeping cost)."""
    from genseek.data.readers import corpus_file

    file = corpus_file(folder)
    stat = file.stat()
    return f"ingest:{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def build(path: Path, spec: dict[str, str], folder: Path, limit: int | None,
          ingest_batch: int):
    """Create a fresh collection with ``spec`` and ingest the corpus; returns (coll, report, phase)."""
    from genseek.collection import Collection

    if path.exists():
        shutil.rmtree(path)
    with C.Phase() as phase:
        collection = Collection.create(path, spec)
        report = collection.ingest(_records(folder, limit), source_key=_source_key(folder),
                                   batch_size=ingest_batch)
    return collection, report, phase


class _PairedRecords:
    """Records for ``Collection.ingest`` that raw-encode each batch just before yielding it.

    ``ingest`` commits a batch (store write, then the dense index encodes it) before it
    asks for the next record, so the raw encode of batch i and the pipeline's work on
    batch i run back to back: a paired comparison that slow drifts of machine speed
    (other processes) cannot bias. The raw encode calls the class's ``encode``, so
    they bypass the wrapper that times the pipeline's own encode calls.
    """

    def __init__(self, records, encoder: Any, batch: int, encode_batch: int):
        self.records, self.encoder = records, encoder
        self.batch, self.encode_batch = batch, encode_batch
        self.raw_seconds: list[float] = []
        self.pipeline_seconds: list[float] = []
        self._start = 0.0

    def __iter__(self):
        while True:
            chunk = list(itertools.islice(self.records, self.batch))
            if not chunk:
                return
            start = time.perf_counter()
            type(self.encoder).encode(self.encoder, [d.contents for _, d in chunk],
                                      self.encode_batch)
            self._start = time.perf_counter()
            self.raw_seconds.append(self._start - start)
            yield from chunk

    def batch_done(self, count: int) -> None:
        """``on_batch`` callback: the pipeline has committed the current batch."""
        now = time.perf_counter()
        if count == 0 and self.pipeline_seconds:
            # ingest's final empty flush (it records the resume point): part of the last batch
            self.pipeline_seconds[-1] += now - self._start
        else:
            self.pipeline_seconds.append(now - self._start)
        self._start = now


def paired_run(path: Path, spec: str, folder: Path, limit: int | None, ingest_batch: int,
               encoder: Any, encode_batch: int) -> dict[str, Any]:
    """One dense-only build with each batch's raw encode timed right before it."""
    from genseek.collection import Collection

    if path.exists():
        shutil.rmtree(path)
    records = _PairedRecords(_records(folder, limit), encoder, ingest_batch, encode_batch)
    timed = _TimedEncode(encoder.encode)
    encoder.encode = timed  # the pipeline's encode calls, timed
    try:
        with C.Phase() as phase, Collection.create(path, {"dense": spec}) as coll:
            report = coll.ingest(iter(records), source_key=_source_key(folder),
                                 batch_size=ingest_batch, on_batch=records.batch_done)
    finally:
        del encoder.encode
    raw, pipe = sum(records.raw_seconds), sum(records.pipeline_seconds)
    return {
        "docs": report.read, **phase.as_dict(), "batches": len(records.raw_seconds),
        "raw_seconds": round(raw, 3), "pipeline_seconds": round(pipe, 3),
        "pipeline_encode_seconds": round(timed.seconds, 3),
        "raw_docs_per_s": report.read / raw, "pipeline_docs_per_s": report.read / pipe,
        "ratio": pipe / raw,
        "per_batch_ratio": [round(pb / rb, 4) for pb, rb in
                            zip(records.pipeline_seconds, records.raw_seconds, strict=True)],
    }


def latency(system: Any, queries: Sequence[str], k: int, batch: int,
            min_batches: int = 20) -> dict[str, float]:
    """Per-call latency of ``system.search`` on batches of ``batch`` queries.

    Batch size 1 times every query once; larger batches cycle through the queries
    until at least ``min_batches`` batches were timed. Three untimed warm-up calls first.
    """
    n = len(queries)
    for i in range(3):  # warm-up: first calls pay for JIT, thread pools, allocations
        system.search([queries[(i * batch + j) % n] for j in range(batch)], k)
    if batch == 1:
        batches = [[q] for q in queries]
    else:
        count = max(math.ceil(n / batch), min_batches)
        batches = [[queries[(i * batch + j) % n] for j in range(batch)] for i in range(count)]
    times = []
    with C.Phase() as phase:
        for b in batches:
            start = time.perf_counter()
            system.search(b, k)
            times.append(time.perf_counter() - start)
    total = sum(times)
    return {
        "batch_size": batch, "calls": len(times),
        "p50_ms": C.percentile(times, 50) * 1e3, "p99_ms": C.percentile(times, 99) * 1e3,
        "mean_ms": total / len(times) * 1e3,
        "per_query_p50_ms": C.percentile(times, 50) * 1e3 / batch,
        "queries_per_s": len(times) * batch / total if total > 0 else 0.0,
        "cpu_ratio": round(phase.cpu_ratio, 2), "other_cpu_share": phase.other_cpu_share,
    }


def latency_sweep(bm25: Any, dense: Any, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Latency of bm25, dense and their RRF at batch 1 and 32, ``--latency-rounds`` times.

    With several rounds, the table shows for each (system, batch) the median round (by
    p50) among those in which other processes used under 5% of the machine (all rounds
    if none did); every round is kept under ``latency_rounds``.
    """
    from genseek.retrievers.fusion import RRFusion

    _, queries, _ = C.judged_queries(folder, "test")
    if args.queries:
        queries = queries[:args.queries]
    systems = {"bm25": bm25, "dense": dense, "rrf": RRFusion([bm25, dense], depth=100)}
    rounds: list[dict[str, dict[str, Any]]] = []
    for rnd in range(args.latency_rounds):
        measured: dict[str, dict[str, Any]] = {}
        for name, system in systems.items():
            for batch in (1, 32):
                _log(f"latency round {rnd + 1}/{args.latency_rounds}: {name} batch {batch}")
                measured.setdefault(name, {})[str(batch)] = latency(system, queries, args.k,
                                                                    batch)
        rounds.append(measured)
    def pick(runs: list[dict[str, Any]]) -> dict[str, Any]:
        quiet = [m for m in runs if (m["other_cpu_share"] or 0.0) < 0.05] or runs
        quiet = sorted(quiet, key=lambda m: m["p50_ms"])
        return quiet[(len(quiet) - 1) // 2]

    chosen = {name: {batch: pick([r[name][batch] for r in rounds]) for batch in by_batch}
              for name, by_batch in rounds[0].items()}
    return {"queries": len(queries), "latency": chosen, "latency_rounds": rounds}


def run_latency_only(args: argparse.Namespace) -> dict[str, Any]:
    """Latency on an existing collection that has indexes named bm25 and dense."""
    from genseek.collection import Collection

    C.quiet_libraries()
    folder = C.dataset_dir(args.dataset)
    result: dict[str, Any] = {
        "benchmark": "indexing-latency", "mode": "latency-only", "dataset": args.dataset,
        "collection": str(args.latency_only), "machine": C.machine(),
        "settings": {"k": args.k, "rrf_depth": 100, "model": MODEL,
                     "latency_rounds": args.latency_rounds},
    }
    with Collection.open(Path(args.latency_only)) as coll:
        result["docs"] = len(coll)
        result.update(latency_sweep(coll.index("bm25"), coll.index("dense"), folder, args))
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    C.quiet_libraries()
    folder = C.dataset_dir(args.dataset)
    limit = args.docs
    info = C.machine()
    result: dict[str, Any] = {
        "benchmark": "indexing", "mode": "quick" if args.quick else "full",
        "dataset": args.dataset, "dataset_path": str(folder), "machine": info,
        "settings": {"encoder_batch_size": args.batch_size, "ingest_batch_size": args.ingest_batch,
                     "k": args.k, "rrf_depth": 100, "model": MODEL},
    }

    # -- model load (not counted in any throughput) ----------------------------------------
    _log("loading the encoder")
    from genseek.encoders import shared_encoder

    with C.Phase() as load:
        # Positional arguments: the same lru_cache key the dense index uses.
        encoder = shared_encoder(MODEL, None)
    texts_all = [doc.contents for _, doc in _records(folder, limit)]
    with C.Phase() as warm:
        encoder.encode(texts_all[:64], args.batch_size)
    result["model_load_seconds"] = round(load.seconds, 2)
    result["encoder_warmup_seconds"] = round(warm.seconds, 2)
    result["docs"] = len(texts_all)
    result["max_length_tokens"] = encoder.max_length

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="genseek-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    dense_spec = "dense" if args.batch_size == 32 else f"dense(batch_size={args.batch_size})"
    open_collections = []
    try:
        # -- (a) raw encoder and (b) the dense pipeline, interleaved -----------------------
        # This machine's speed drifts by 5-15% between identical runs, so raw and pipeline
        # alternate ``repeats`` times and the ratio uses the best run of each.
        raws, chunks, denses = [], [], []
        dense_coll = None
        for rep in range(args.repeats):
            _log(f"[{rep + 1}/{args.repeats}] raw encoder on {len(texts_all):,} texts")
            with C.Phase() as raw:
                vecs = encoder.encode(texts_all, args.batch_size)
            assert vecs.shape[0] == len(texts_all)
            raws.append({"docs": len(texts_all), **raw.as_dict(),
                         "docs_per_s": len(texts_all) / raw.seconds})
            if args.chunked_raw:
                # The pipeline encodes one change set (<= ingest batch) per call, and
                # sentence-transformers sorts by length within a call: padding differs.
                _log(f"[{rep + 1}/{args.repeats}] raw encoder in chunks of {args.ingest_batch}")
                with C.Phase() as chunked:
                    for i in range(0, len(texts_all), args.ingest_batch):
                        encoder.encode(texts_all[i:i + args.ingest_batch], args.batch_size)
                chunks.append({"docs": len(texts_all), "chunk": args.ingest_batch,
                               **chunked.as_dict(), "docs_per_s": len(texts_all) / chunked.seconds})
            _log(f"[{rep + 1}/{args.repeats}] pipeline: dense-only collection")
            if dense_coll is not None:
                open_collections.remove(dense_coll)
                dense_coll.close()
            timed = _TimedEncode(encoder.encode)
            encoder.encode = timed  # instance attribute: the dense index calls this one
            try:
                dense_coll, rep_report, phase = build(work / "dense", {"dense": dense_spec},
                                                      folder, limit, args.ingest_batch)
            finally:
                del encoder.encode
            open_collections.append(dense_coll)
            denses.append({"docs": rep_report.read, "upserted": rep_report.upserted,
                           **phase.as_dict(), "docs_per_s": rep_report.read / phase.seconds,
                           "encode_seconds": round(timed.seconds, 3), "encode_calls": timed.calls,
                           "non_encode_seconds": round(phase.seconds - timed.seconds, 3)})

        def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
            return max(runs, key=lambda d: d["docs_per_s"])

        def median(runs: list[dict[str, Any]]) -> float:
            return C.percentile([d["docs_per_s"] for d in runs], 50)

        result["raw_encoder_runs"], result["pipeline_dense_runs"] = raws, denses
        result["raw_encoder"], result["pipeline_dense"] = best(raws), best(denses)
        if chunks:
            result["raw_encoder_chunked_runs"] = chunks
            result["raw_encoder_chunked"] = best(chunks)
        result["dense_overhead_ratio"] = best(raws)["docs_per_s"] / best(denses)["docs_per_s"]
        result["dense_overhead_ratio_median"] = median(raws) / median(denses)
        # CPU seconds barely change when other processes take cores away (wall time does).
        result["dense_overhead_ratio_cpu"] = (
            C.percentile([d["cpu_seconds"] for d in denses], 50)
            / C.percentile([d["cpu_seconds"] for d in raws], 50))
        # Machine-speed-independent view: pipeline wall time / time inside encode().
        result["dense_time_over_encode_time"] = (sum(d["seconds"] for d in denses)
                                                 / sum(d["encode_seconds"] for d in denses))
        if args.paired:
            _log("paired run: raw encode of each ingest batch right before the pipeline's")
            result["paired"] = paired_run(work / "paired", dense_spec, folder, limit,
                                          args.ingest_batch, encoder, args.batch_size)
        result["dense_overhead_goal"] = OVERHEAD_GOAL
        result["dense_overhead_ok"] = result["dense_overhead_ratio"] <= OVERHEAD_GOAL

        _log("starting the JVM")
        from genseek.indexers.jvm import jclass

        with C.Phase() as jvm:
            jclass("java.lang.String")
        result["jvm_start_seconds"] = round(jvm.seconds, 2)
        _log("pipeline: bm25-only collection")
        bm25_coll, report, phase = build(work / "bm25", {"bm25": "bm25"}, folder, limit,
                                         args.ingest_batch)
        open_collections.append(bm25_coll)
        result["pipeline_bm25"] = {"docs": report.read, "upserted": report.upserted,
                                   **phase.as_dict(), "docs_per_s": report.read / phase.seconds}

        if args.combined:
            _log("pipeline: bm25 + dense collection (the CLI default)")
            coll, report, phase = build(work / "both", {"bm25": "bm25", "dense": dense_spec},
                                        folder, limit, args.ingest_batch)
            coll.close()
            result["pipeline_bm25_dense"] = {"docs": report.read, **phase.as_dict(),
                                             "docs_per_s": report.read / phase.seconds}

        # -- (c) query latency ------------------------------------------------------------
        result.update(latency_sweep(bm25_coll.index("bm25"), dense_coll.index("dense"),
                                    folder, args))
    finally:
        for coll in open_collections:
            coll.close()
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def report(r: dict[str, Any]) -> None:
    C.print_machine(r["machine"])
    if "raw_encoder" not in r:  # --latency-only
        print(f"dataset: {r['dataset']}, collection {r['collection']} ({r['docs']:,} documents), "
              f"{r['queries']} test queries")
        print()
        report_latency(r)
        return
    s = r["settings"]
    print(f"dataset: {r['dataset']} ({r['mode']} mode), {r['docs']:,} documents, "
          f"{r['queries']} test queries; encoder {s['model']} (max {r['max_length_tokens']} "
          f"tokens), encode batch {s['encoder_batch_size']}, ingest batch {s['ingest_batch_size']}")
    print(f"not counted below: model load {r['model_load_seconds']:.1f}s, encoder warm-up "
          f"{r['encoder_warmup_seconds']:.1f}s, JVM start {r['jvm_start_seconds']:.1f}s")
    print()
    print("indexing throughput (raw encoder and dense pipeline alternate; best run of each "
          "is used for ratios)")
    raw_dps = r["raw_encoder"]["docs_per_s"]
    rows = []
    for i, (raw, dense) in enumerate(zip(r["raw_encoder_runs"], r["pipeline_dense_runs"],
                                         strict=True), start=1):
        rows.append((f"run {i}: raw encoder (encode all texts)", raw))
        if "raw_encoder_chunked_runs" in r:
            chunked = r["raw_encoder_chunked_runs"][i - 1]
            rows.append((f"run {i}: raw encoder (chunks of {chunked['chunk']})", chunked))
        rows.append((f"run {i}: genseek dense-only collection", dense))
    rows.append(("genseek bm25-only collection", r["pipeline_bm25"]))
    if "pipeline_bm25_dense" in r:
        rows.append(("genseek bm25+dense collection", r["pipeline_bm25_dense"]))
    C.table(["what", "docs", "seconds", "docs/s", "best raw/this", "cpu/wall", "others' cpu"],
            [(name, d["docs"], d["seconds"], d["docs_per_s"], raw_dps / d["docs_per_s"],
              d["cpu_ratio"], _pct(d.get("other_cpu_share"))) for name, d in rows])
    print("(cpu/wall: this process's CPU seconds per wall second, ~2.0 when it has both "
          "cores; others' cpu: share of the machine other processes used meanwhile)")
    d = r["pipeline_dense"]
    verdict = "meets" if r["dense_overhead_ok"] else "MISSES"
    print(f"\ndense pipeline overhead ratio (raw docs/s / pipeline docs/s): "
          f"{r['dense_overhead_ratio']:.3f} ({verdict} the goal <= {r['dense_overhead_goal']})")
    cpu_ratio = r.get("dense_overhead_ratio_cpu")  # absent from early saved results
    print(f"  median-based ratio {r['dense_overhead_ratio_median']:.3f}; CPU-seconds ratio "
          f"(pipeline / raw, medians) {'-' if cpu_ratio is None else f'{cpu_ratio:.3f}'}; "
          f"pipeline wall time / "
          f"time inside encode() {r['dense_time_over_encode_time']:.3f} (all runs)")
    if "paired" in r:
        pr = r["paired"]
        ratios = pr["per_batch_ratio"]
        print(f"  paired run ({pr['batches']} batches, others' cpu {_pct(pr['other_cpu_share'])}):"
              f" raw {pr['raw_docs_per_s']:.1f} docs/s, pipeline {pr['pipeline_docs_per_s']:.1f} "
              f"docs/s, ratio {pr['ratio']:.3f} (per batch {min(ratios):.3f}-{max(ratios):.3f})")
    disturbed = [d for d in (r["raw_encoder"], r["pipeline_dense"])
                 if (d.get("other_cpu_share") or 0.0) > 0.10]
    if disturbed:
        print("  WARNING: other processes used over 10% of the machine during a run this ratio "
              "uses: the ratio measures them, not genseek; rerun on a quiet machine")
    print(f"  best pipeline run: encoding {d['encode_seconds']:.1f}s in {d['encode_calls']} "
          f"calls (best raw encode of the same texts {r['raw_encoder']['seconds']:.1f}s), "
          f"everything else {d['non_encode_seconds']:.1f}s")
    print()
    report_latency(r)


def report_latency(r: dict[str, Any]) -> None:
    s = r["settings"]
    rounds = len(r.get("latency_rounds", [])) or 1
    if rounds > 1:
        print(f"{rounds} latency rounds; each row is the median round (by p50) among those "
              "in which other processes used < 5% of the machine")
    print(f"query latency (k={s['k']}; rrf = bm25 + dense fused, each searched to depth "
          f"{s['rrf_depth']}); milliseconds per search() call")
    rows = []
    for name, by_batch in r["latency"].items():
        for batch, m in by_batch.items():
            rows.append((name, int(batch), m["calls"], m["p50_ms"], m["p99_ms"],
                         m["per_query_p50_ms"], m["queries_per_s"], m["cpu_ratio"],
                         _pct(m.get("other_cpu_share"))))
    C.table(["index", "batch", "calls", "p50 ms", "p99 ms", "p50 ms/query", "queries/s",
             "cpu/wall", "others' cpu"], rows)
    lat = r["latency"]
    print(f"\nratios at batch 1 (p50): dense/bm25 {lat['dense']['1']['p50_ms'] / lat['bm25']['1']['p50_ms']:.2f}, "
          f"rrf/(bm25+dense) {lat['rrf']['1']['p50_ms'] / (lat['bm25']['1']['p50_ms'] + lat['dense']['1']['p50_ms']):.2f}; "
          f"batch 32 vs 1 throughput: " + ", ".join(
              f"{n} {lat[n]['32']['queries_per_s'] / lat[n]['1']['queries_per_s']:.1f}x"
              for n in lat))
    print(f"load average at end {r['loadavg_end']}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="scifact", help="BEIR folder name under $GENSEEK_DATASETS")
    p.add_argument("--quick", action="store_true",
                   help="first 500 documents and 64 test queries (under 5 minutes)")
    p.add_argument("--docs", type=int, help="index only the first N documents")
    p.add_argument("--queries", type=int, help="time only the first N test queries")
    p.add_argument("--batch-size", type=int, default=32, help="encoder batch size (default 32)")
    p.add_argument("--ingest-batch", type=int, default=1000,
                   help="documents per committed batch, as genseek index --batch-size (1000)")
    p.add_argument("-k", "--k", type=int, default=10, help="hits per query for latency (10)")
    p.add_argument("--repeats", type=int, default=2,
                   help="alternate raw encoder and dense pipeline this many times (2)")
    p.add_argument("--chunked-raw", action="store_true",
                   help="also time the raw encoder called once per ingest batch")
    p.add_argument("--latency-rounds", type=int, default=1,
                   help="measure latency this many times; report the median undisturbed round")
    p.add_argument("--latency-only", metavar="COLLECTION",
                   help="measure only query latency, on an existing collection with indexes "
                   "bm25 and dense (e.g. one beir_eval.py built)")
    p.add_argument("--paired", action="store_true",
                   help="also one build where each ingest batch's raw encode is timed just "
                   "before the pipeline's work on it (robust to machine-speed drift)")
    p.add_argument("--combined", action="store_true",
                   help="also build one bm25+dense collection (what genseek index makes)")
    p.add_argument("--work", help="folder for the collections (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the temporary collections")
    args = C.parse_args(p, argv, report)
    if args is None:
        return 0
    if args.quick:
        args.docs = args.docs or 500
        args.queries = args.queries or 64
    result = run_latency_only(args) if args.latency_only else run(args)
    return C.emit(result, args.json, report)


if __name__ == "__main__":
    sys.exit(main())
