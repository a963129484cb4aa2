"""Past one machine: indexing on Ray, sharded collections, scatter-gather latency.

In one run, on SciFact:

1. **indexing** the first 1,000 documents (``--quick``: 300) with bm25 + dense with
   ``genseek index`` in a child process, once per mode: single-process, ``--ray local`` (a Ray
   started in the child), ``--ray HOST:PORT`` of a two-node cluster on loopback addresses
   that the benchmark starts and stops (:mod:`genseek.localcluster`, one CPU and one encoder
   actor per node), and of any running cluster given (``--ray local,127.0.0.5:6379``). Per mode: wall seconds, docs/s, machine-wide busy CPU
   seconds per document (every process: the driver and Ray's), Ray's overhead against
   single-process, and the dense vectors' max |diff| from the single-process ones;
2. **sharded = unsharded**: all documents (``--quick``: the first 600, and the test queries
   judged on them) in 2 and 4 shards (single-process); nDCG@10
   of bm25, dense and rrf(bm25, dense) on the judged queries next to the unsharded
   collection's, and how many queries have the very same ranking (depth 100);
3. **scatter-gather latency**: the 4-shard collection against the unsharded one, per query
   at batch 1 and 32, for bm25, dense and rrf, rounds interleaved.

    python benchmarks/scale.py --quick            # 300 and 600 documents (~10 min, 2 cores)
    python benchmarks/scale.py                    # 1,000 and all 5,183 (~45 min, 2 cores)
    python benchmarks/scale.py --no-ray --json    # part 1 without Ray

On one 2-core machine Ray cannot be faster than one process (it adds processes to the same
two cores): part 1 measures what Ray costs, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as C

QUICK_DOCS = 600
QUICK_INDEX_DOCS = 300
INDEX_DOCS = 1000
INDEXES = ("bm25", "dense")


def _corpus(docs: int | None) -> tuple[Path, set[str]]:
    """The corpus file (SciFact's, or its first ``docs`` lines written once under the cache)
    and its ids."""
    src = C.dataset_dir("scifact") / "corpus.jsonl"
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    if docs is not None and docs < len(lines):
        lines = lines[:docs]
        out = C.cache("scale", f"scifact-first-{docs}.jsonl")
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text("".join(lines), encoding="utf-8")
            os.replace(tmp, out)
        src = out
    return src, {json.loads(line)["_id"] for line in lines}


def _topics(ids: set[str]) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    qids, texts, qrels = C.judged_queries(C.dataset_dir("scifact"), "test")
    keep = {q: t for q, t in zip(qids, texts, strict=True)
            if any(d in ids and rel > 0 for d, rel in qrels[q].items())}
    return keep, {q: {d: r for d, r in qrels[q].items() if d in ids} for q in keep}


# -- 1. indexing ---------------------------------------------------------------------------


def _index(path: Path, corpus: Path, ray: str | None, shards: int | None = None,
           extra: Sequence[str] = (), env: dict[str, str] | None = None) -> dict:
    """``genseek index`` in a child process (``extra`` options, ``env``): its summary, wall
    seconds, busy CPU seconds."""
    shutil.rmtree(path, ignore_errors=True)
    cmd = [sys.executable, "-m", "genseek.cli", "index", str(path), "--from", str(corpus),
           *(a for n in INDEXES for a in ("--index", n)), "--json", "--no-progress"]
    if ray:
        cmd += ["--ray", ray]
    if shards:
        cmd += ["--shards", str(shards)]
    cmd += list(extra)
    env = {**(env or os.environ), "RAY_USAGE_STATS_ENABLED": "0"}
    busy, load = C.busy_cpu_seconds(), os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env=env, timeout=4 * 3600)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[2:])} exited with {proc.returncode}: "
                 f"{proc.stderr.strip().splitlines()[-1:]}")
    busy_after = C.busy_cpu_seconds()
    summary = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    docs = int(summary["upserted"])
    cpu = None if busy is None or busy_after is None else busy_after - busy
    return {"seconds": round(seconds, 2), "documents": docs,
            "docs_per_s": round(docs / seconds, 2),
            "busy_cpu_s_per_doc": None if cpu is None else round(cpu / docs, 4),
            "load1_before": round(load, 2), "load1_after": round(os.getloadavg()[0], 2)}


def _vectors(path: Path) -> dict[str, Any]:
    """``doc_id -> float32 vector`` of a collection's dense index."""
    from genseek.collection import Collection

    with Collection.open(path) as coll:
        docs = list(coll.store.iter_docs())
        found = coll.index("dense").stored_vectors([d.version for d in docs])
        return {d.doc_id: found[d.version] for d in docs if d.version in found}


def _max_diff(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    import numpy as np

    if set(a) != set(b):
        return None
    return float(max(np.abs(a[k] - b[k]).max() for k in a))


def indexing(corpus: Path, modes: Sequence[str], work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    single = work / "single"
    out["single"] = _index(single, corpus, None)
    if not modes:
        return out
    base = _vectors(single)
    for mode in modes:
        key = "ray_local" if mode == "local" else f"ray_{mode}"
        path = work / "ray"
        if mode == TWO_NODES:
            out[key] = _two_nodes(path, corpus)
        else:
            out[key] = _index(path, corpus, mode)
        out[key]["overhead_vs_single"] = round(out["single"]["docs_per_s"]
                                               / out[key]["docs_per_s"], 3)
        out[key]["vectors_max_abs_diff"] = _max_diff(base, _vectors(path))
        shutil.rmtree(path, ignore_errors=True)
    return out


TWO_NODES = "two-nodes"
NODES = (("127.0.0.3", {"genseek_encoder": 1}), ("127.0.0.2", {"genseek_encoder": 1}))


def _two_nodes(path: Path, corpus: Path) -> dict[str, Any]:
    """Index on a two-node cluster started here (genseek.localcluster: a head on 127.0.0.3
    and a node on 127.0.0.2, one CPU and one ``genseek_encoder`` each, so that one encoder
    actor runs on each node); the cluster's start is timed apart and not counted."""
    from genseek.localcluster import loopback_cluster

    with loopback_cluster(NODES) as cluster:
        C.log(f"   two loopback nodes up in {cluster.start_seconds:.1f} s ({cluster.address})")
        out = _index(path, corpus, cluster.address,
                     extra=["--ray-actors", "2", "--ray-resource", "genseek_encoder"],
                     env=cluster.env)
        out["node_rss_mib_after"] = [tree.rss() >> 20 for tree in cluster.nodes]
    out["cluster_start_s"] = round(cluster.start_seconds, 1)
    return out


# -- 2. sharded = unsharded; 3. latency ----------------------------------------------------------


def _systems(coll: Any) -> dict[str, Any]:
    return {"bm25": coll.retriever("bm25"), "dense": coll.retriever("dense"),
            "rrf": coll.retriever(list(INDEXES), depth=100)}


def equality(single: Path, sharded: dict[int, Path], topics: dict[str, str],
             qrels: dict) -> dict[str, Any]:
    from genseek.collection import Collection
    from genseek.evaluation import experiment
    from genseek.sharded import open_sharded

    out: dict[str, Any] = {}
    with Collection.open(single) as coll:
        base = experiment(_systems(coll), topics, qrels, ("nDCG@10", "R@100"), k=100)
    out["unsharded"] = base.metrics
    for n, path in sharded.items():
        with open_sharded(path) as coll:
            res = experiment(_systems(coll), topics, qrels, ("nDCG@10", "R@100"), k=100)
        same = {name: sum(ids_of(res.runs[name].get(q)) == ids_of(base.runs[name].get(q))
                          for q in topics) for name in res.runs}
        out[f"{n}_shards"] = {"metrics": res.metrics, "same_ranking": same,
                              "queries": len(topics)}
    return out


def ids_of(hits: Any) -> list[str]:
    return [h.doc_id for h in (hits or [])]


def latency(single: Path, sharded: Path, texts: list[str], rounds: int) -> dict[str, Any]:
    from genseek.collection import Collection
    from genseek.sharded import open_sharded

    times: dict[str, dict[str, list[float]]] = {}
    with Collection.open(single) as one, open_sharded(sharded) as four:
        sides = {"unsharded": _systems(one), "4_shards": _systems(four)}
        for side in sides.values():  # warm-up: models, JVM, caches
            for system in side.values():
                system.search(texts[:4], 10)
        for r in range(rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for side in order:
                for name, system in sides[side].items():
                    for batch in (1, 32):
                        key = f"{name} batch {batch}"
                        bucket = times.setdefault(key, {}).setdefault(side, [])
                        for i in range(0, len(texts), batch):
                            chunk = texts[i:i + batch]
                            start = time.perf_counter()
                            system.search(chunk, 10)
                            bucket.append((time.perf_counter() - start) * 1000 / len(chunk))
    out: dict[str, Any] = {}
    for key, sides_ in times.items():
        row = {side: {"mean_ms": round(sum(v) / len(v), 3),
                      "p50_ms": round(C.percentile(v, 50), 3),
                      "p95_ms": round(C.percentile(v, 95), 3)} for side, v in sides_.items()}
        row["ratio_mean"] = round(row["4_shards"]["mean_ms"] / row["unsharded"]["mean_ms"], 2)
        out[key] = row
    return out


def sizes(single: Path, sharded: Path, texts: list[str], n: int) -> dict[str, Any]:
    """What a sharded search sends to each shard and gets back (bytes of Ray's serialised
    arguments and results, measured with pickle on the real objects, per query), and each
    index's memory and disk per document (the unsharded collection's stats)."""
    import pickle

    from genseek.collection import Collection
    from genseek.sharded import open_sharded

    out: dict[str, Any] = {"per_query_per_shard": {}, "per_document": {}}

    def size(obj: Any) -> int:
        return len(pickle.dumps(obj, protocol=5))

    with open_sharded(sharded) as coll:
        shards = coll.shards
        for k in (10, 100):
            bags = shards.one(0, "bags_of_words", "bm25", texts)
            terms = [sorted({t for t, _ in bag}) for bag in bags]
            stats = [shards.one(0, "corpus_stats", "bm25", t) for t in terms]
            hits = shards.one(0, "search_with_stats", "bm25", bags, k, stats[0])
            sent = sum(size(("bm25", t)) + size(("bm25", [b], k, s))
                       for t, b, s in zip(terms, bags, stats, strict=True))
            back = sum(size(s) + size([h]) for s, h in zip(stats, hits, strict=True))
            out["per_query_per_shard"][f"bm25 k={k}"] = {
                "sent": round(sent / len(texts)), "received": round(back / len(texts))}
            vectors = shards.one(0, "encode_queries", "dense", texts)
            found = shards.one(0, "search_vectors", "dense", vectors, k, None)
            out["per_query_per_shard"][f"dense k={k}"] = {
                "sent": round(sum(size(("dense", vectors[i:i + 1], k, None))
                                  for i in range(len(texts))) / len(texts)),
                "received": round(sum(size([f]) for f in found) / len(texts))}
    with Collection.open(single) as one:
        docs = len(one)
        for name, index in one.indexes.items():
            st = index.stats()
            out["per_document"][name] = {
                "disk_bytes": round(st.disk_bytes / docs),
                "memory_bytes": None if st.memory_bytes is None else round(st.memory_bytes / docs)}
        out["per_document"]["store"] = {"disk_bytes": round(
            (single / "docs.sqlite").stat().st_size / docs)}
    out["shards"] = n
    return out


# -- report -------------------------------------------------------------------------------------


def report(result: dict[str, Any]) -> None:
    C.print_machine(result["machine"])
    print(f"documents: {result['index_documents']:,} indexed in part 1; "
          f"{result['documents']:,} in parts 2-4, with {result['queries']} judged test queries")
    if result.get("indexing"):
        rows = []
        for mode, r in result["indexing"].items():
            rows.append([mode, r["documents"], r["seconds"], r["docs_per_s"],
                         r["busy_cpu_s_per_doc"], r.get("overhead_vs_single", 1.0),
                         r.get("vectors_max_abs_diff", 0.0), f"{r['load1_before']}"])
        print("\n1. indexing bm25 + dense")
        C.table(["mode", "docs", "s", "docs/s", "busy CPU s/doc", "single/this docs/s",
                 "max |vec diff|", "load1"], rows)
    eq = result["equality"]
    rows = []
    for name in ("bm25", "dense", "rrf"):
        row = [name, f"{eq['unsharded'][name]['nDCG@10']:.4f}"]
        for n in result["shards"]:
            part = eq[f"{n}_shards"]
            row += [f"{part['metrics'][name]['nDCG@10']:.4f}",
                    f"{part['same_ranking'][name]}/{part['queries']}"]
        rows.append(row)
    head = ["system", "nDCG@10 unsharded"]
    for n in result["shards"]:
        head += [f"{n} shards", "same ranking"]
    print("\n2. sharded vs unsharded (nDCG@10; queries whose top 100 is identical)")
    C.table(head, rows)
    print("\n3. latency per query, 4 shards vs unsharded (ms)")
    C.table(["system", "unsharded mean", "p50", "p95", "4 shards mean", "p50", "p95",
             "4 shards / unsharded"],
            [[k, v["unsharded"]["mean_ms"], v["unsharded"]["p50_ms"], v["unsharded"]["p95_ms"],
              v["4_shards"]["mean_ms"], v["4_shards"]["p50_ms"], v["4_shards"]["p95_ms"],
              v["ratio_mean"]] for k, v in result["latency"].items()])
    if result.get("sizes"):
        sz = result["sizes"]
        print("\n4. bytes a sharded search exchanges with each shard, per query")
        C.table(["search", "sent", "received"],
                [[k, v["sent"], v["received"]] for k, v in sz["per_query_per_shard"].items()])
        print("\n   per document, unsharded collection")
        C.table(["index", "disk bytes", "memory bytes"],
                [[k, v["disk_bytes"], v.get("memory_bytes")] for k, v in
                 sz["per_document"].items()])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_INDEX_DOCS} documents for part 1, {QUICK_DOCS} for the "
                        "others")
    parser.add_argument("--index-docs", type=int, default=None,
                        help=f"part 1 indexes the first N documents (default {INDEX_DOCS})")
    parser.add_argument("--docs", type=int, default=None,
                        help="parts 2-4 use the first N documents (default: all of SciFact, "
                        "whose unsharded collection is the cached one most benchmarks use)")
    parser.add_argument("--shards", default="2,4", help="shard counts to compare")
    parser.add_argument("--ray", default=f"local,{TWO_NODES}",
                        help=f"Ray modes to index with, comma-separated: local (a Ray started "
                        f"by the command), {TWO_NODES} (a head on 127.0.0.3 and a node on "
                        "127.0.0.2 started by the benchmark, one CPU each) and/or HOST:PORT "
                        "of a running cluster")
    parser.add_argument("--no-ray", action="store_true", help="part 1 without Ray")
    parser.add_argument("--rounds", type=int, default=2, help="latency rounds per side")
    args = C.parse_args(parser, argv, report)
    if args is None:
        return 0
    C.quiet_libraries()
    index_docs = args.index_docs or (QUICK_INDEX_DOCS if args.quick else INDEX_DOCS)
    docs = args.docs if args.docs is not None else (QUICK_DOCS if args.quick else None)
    shards = sorted({int(s) for s in args.shards.split(",") if s} | {4})  # part 3: 4 shards
    work = C.cache("scale", "work")
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": C.machine(), "shards": shards}
    modes = [] if args.no_ray else [m for m in args.ray.split(",") if m]
    small, _ = _corpus(index_docs)
    C.log(f"1. indexing {index_docs:,} documents: single-process"
          + (f", then Ray ({', '.join(modes)})" if modes else ""))
    result["index_documents"] = index_docs
    result["indexing"] = indexing(small, modes, work)
    corpus, ids = _corpus(docs)
    topics, qrels = _topics(ids)
    result.update(documents=len(ids), queries=len(topics), corpus=str(corpus))
    if docs is None:
        single = C.scifact_collection(INDEXES)
    else:
        single = work / f"single-{docs}"
        _index(single, corpus, None)
    sharded = {}
    for n in shards:
        C.log(f"2. indexing {len(ids):,} documents into {n} shards")
        sharded[n] = work / f"shards-{n}"
        result["indexing"][f"{n}_shards ({len(ids)} docs)"] = _index(sharded[n], corpus, None, n)
    C.log("2. evaluating sharded against unsharded")
    result["equality"] = equality(single, sharded, topics, qrels)
    C.log("3. latency")
    result["latency"] = latency(single, sharded[4], list(topics.values()), args.rounds)
    result["sizes"] = sizes(single, sharded[4], list(topics.values()), 4)
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return C.emit(result, args.json, report)


if __name__ == "__main__":
    sys.exit(main())
