"""Learned sparse retrieval on SciFact: SPLADE-tiny and a trained inference-free encoder on
Lucene impact indexes, their RRF fusion with bm25 and dense, latency, size, throughput.

Every system runs in this one process on the same Lucene (Anserini's fat jar):

- ``bm25``, ``dense``: a copy of the genseek collection at ``--collection`` (default
  ``$GENSEEK_CACHE/collections/DATASET``, built there with ``genseek index`` when missing;
  copied to a temporary folder, never modified).
- ``splade``: ``impact(model=splade-tiny)``: documents and queries through SPLADE-tiny.
- ``inference-free``: ``impact(model=--if-model,mode=inference-free)``: documents through
  the trained encoder (``genseek train sparse``), queries = tokens weighted by the model's
  ``idf.json`` table (IDF or learned), no model.
- ``splade-docs+idf``: SPLADE-tiny documents with inference-free queries (the IDF table of
  ``--if-model``, or ``--idf``): what training adds over the starting point. Without either,
  the table is the corpus IDF (training's starting point), computed once into the sparse cache.

Without a trained model (``--if-model``, default ``$GENSEEK_CACHE/sparse/if-scifact``) the
``inference-free`` row is skipped and the reason printed; everything else is built when missing.

Document vectors come from ``$GENSEEK_CACHE/sparse`` (``_sparse_cache.py``): a corpus is encoded
once, ever; the impact indexes are built from the cached vectors (quantised x100, unpruned).
Effectiveness: judged test queries, depth 100, ``genseek.evaluation.evaluate`` (nDCG@10, R@100);
fusions are ``kernels.fusion.rrf`` (rrf_k 60) of depth-100 runs; ``--tune-fusion train``
adds the fusion of all first stages with RRF weights picked on the train queries. Latency: one
query at a time, k=10, systems interleaved per query (so machine load hits them alike), after a warm-up pass;
query encoding included. Throughput: documents/s of a fresh SPLADE-tiny encoding sample.

    python benchmarks/sparse.py --json > benchmarks/results/sparse.json
    python benchmarks/sparse.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C
import _sparse_cache as SC

from genseek.atomic import atomic_write_text

K = 100
RRF_K = 60.0
REFERENCE = {"bm25": 0.6789, "dense": 0.6451, "rrf(bm25,dense)": 0.7178, "splade": 0.6436}
GOALS = {"best_sparse_vs_bm25": "best sparse nDCG@10 >= bm25", "fusion_all": 0.72,
         "if_latency_ratio": 1.3}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_impact(path: Path, params: dict[str, Any], docs, cache_dir: Path,
                 encoder_model: str) -> tuple[Any, dict[str, Any]]:
    """An impact index over ``docs`` from cached vectors (encoding what is missing)."""
    from genseek.encoders import shared_sparse_encoder
    from genseek.indexers.impact import ImpactIndex
    from genseek.types import ChangeSet

    enc = shared_sparse_encoder(encoder_model, int(params.get("max_length", 256)), None,
                                int(params.get("windows", 1)))
    vecs, info = SC.encode_cached(enc, [(d.doc_id, d.contents) for d in docs], cache_dir)
    index = ImpactIndex(path, params, encoder=None)
    with C.Phase() as phase:
        for start in range(0, len(docs), 1000):
            chunk = tuple(docs[start:start + 1000])
            index.apply_encoded(ChangeSet(0, 1, upserts=chunk), vecs)
        index.commit(1)
    stats = index.stats()
    quant = float(index.params["quant"])
    terms = [int((SC_quant(vecs[d.doc_id][1], quant) > 0).sum()) for d in docs]
    return index, {"index_seconds": round(phase.seconds, 2), "disk_bytes": stats.disk_bytes,
                   "documents": stats.documents,
                   "terms_per_doc": round(sum(terms) / max(1, len(terms)), 1),
                   "encoding": info}


def SC_quant(weights, quant: float):  # noqa: N802 - tiny helper shared with the index
    from genseek.indexers.impact import quantise

    return quantise(weights, quant)


WEIGHT_GRID = C.WEIGHT_GRID


def fused_metrics(runs: dict[str, list], names: list[str], qids: list[str], qrels: dict,
                  measures: tuple[str, ...], weights: list[float] | None = None
                  ) -> dict[str, float]:
    """RRF (rrf_k 60, depth K) of ``runs[n]`` for ``n`` in ``names``, measured."""
    return C.fused_metrics(runs, names, qids, qrels, measures, weights, K, RRF_K)


def tune_rrf_weights(folder: Path, split: str, systems: dict[str, Any]
                     ) -> tuple[dict[str, Any], list[float]]:
    """RRF weights for ``systems`` (the first fixed at 1, the others from WEIGHT_GRID) that
    maximise nDCG@10 on the judged queries of ``split``: never the split that is reported."""
    qids, texts, qrels = C.judged_queries(folder, split)
    names = list(systems)
    runs = {n: pairs(systems[n].search(texts, K)) for n in names}
    weights, tuned, equal = C.best_rrf_weights(runs, names, qids, qrels, WEIGHT_GRID)
    return ({"split": split, "queries": len(qids), "grid": list(WEIGHT_GRID),
             "weights": dict(zip(names, weights, strict=True)),
             "nDCG@10_tuned": round(tuned, 4), "nDCG@10_equal_weights": round(equal, 4)},
            weights)


def pairs(hits: list[list[Any]]) -> list[list[tuple[str, float]]]:
    """Per query, the hits as ``(doc_id, score)`` pairs."""
    return [[(h.doc_id, h.score) for h in q] for q in hits]


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    from genseek.collection import Collection
    from genseek.data.readers import read_corpus
    from genseek.evaluation import evaluate
    from genseek.types import Hit

    folder = C.dataset_dir(args.dataset)
    qids, texts, qrels = C.judged_queries(folder, "test")
    docs = [d for _, d in read_corpus(folder)]
    info = C.machine()
    work = Path(tempfile.mkdtemp(prefix="genseek-sparse-"))
    result: dict[str, Any] = {"machine": info, "dataset": args.dataset, "queries": len(qids),
                              "documents": len(docs), "quick": args.quick, "systems": {},
                              "fusions": {}, "latency": {}, "indexes": {}}
    try:
        source = C.collection_option(args.collection, args.dataset)
        _log(f"copying the bm25 + dense collection {source}")
        shutil.copytree(source, work / "coll",
                        ignore=shutil.ignore_patterns("collection.lock"))
        coll = Collection.open(work / "coll")
        systems: dict[str, Any] = {"bm25": coll.indexes["bm25"], "dense": coll.indexes["dense"]}
        if_model = str(args.if_model)
        w = args.windows
        result["windows"] = w
        splade_cache = SC.CACHE_ROOT / SC.cache_key("splade-tiny", 256, args.dataset, w)
        if_cache = SC.CACHE_ROOT / SC.cache_key(if_model, 256, args.dataset, w)
        _log("impact index: splade-tiny")
        systems["splade"], result["indexes"]["splade"] = build_impact(
            work / "splade", {"model": "splade-tiny", "windows": w}, docs, splade_cache,
            "splade-tiny")
        has_if = (Path(if_model) / "idf.json").is_file() and not args.no_trained
        if args.idf is not None:
            idf, result["idf_source"] = args.idf, "--idf"
        elif (Path(if_model) / "idf.json").is_file():
            idf, result["idf_source"] = Path(if_model) / "idf.json", "the trained model"
        else:
            idf = SC.corpus_idf_table("splade-tiny", args.dataset, docs)
            result["idf_source"] = "corpus IDF (no trained model)"
        if idf.is_file():
            _log("impact index: splade-tiny documents + inference-free queries")
            systems["splade-docs+idf"], result["indexes"]["splade-docs+idf"] = build_impact(
                work / "splade-idf", {"model": "splade-tiny", "mode": "inference-free",
                                      "idf": str(idf), "windows": w},
                docs, splade_cache, "splade-tiny")
            result["idf_table"] = str(idf)
        if has_if:
            _log("impact index: trained inference-free encoder")
            systems["inference-free"], result["indexes"]["inference-free"] = build_impact(
                work / "if", {"model": if_model, "mode": "inference-free", "windows": w}, docs,
                if_cache, if_model)
            train_info = Path(if_model) / "train_info.json"
            if train_info.is_file():
                result["training"] = json.loads(train_info.read_text())
        else:
            reason = ("--no-trained" if args.no_trained else
                      f"no trained model at {if_model} (--if-model DIR: a `genseek train "
                      "sparse` output)")
            result["skipped"] = {"inference-free": reason}
            _log(f"trained encoder skipped: {reason}")
        result["indexes"]["bm25"] = {"disk_bytes": coll.indexes["bm25"].stats().disk_bytes}

        # effectiveness
        runs: dict[str, list[list[Hit]]] = {}
        for name, system in systems.items():
            _log(f"searching {name}")
            runs[name] = system.search(texts, K)
            result["systems"][name] = evaluate(dict(zip(qids, runs[name], strict=True)), qrels,
                                               ("nDCG@10", "R@100"))
        sparse = [n for n in ("splade", "inference-free", "splade-docs+idf") if n in runs][:2]
        combos = {"rrf(bm25,dense)": ["bm25", "dense"]}
        for n in sparse:
            combos[f"rrf(bm25,dense,{n})"] = ["bm25", "dense", n]
        if len(sparse) == 2:
            combos[f"rrf({sparse[0]},{sparse[1]})"] = sparse
            combos["rrf(all first stages)"] = ["bm25", "dense", *sparse]
        ranked = {n: pairs(hits) for n, hits in runs.items()}
        for label, names in combos.items():
            result["fusions"][label] = fused_metrics(ranked, names, qids, qrels,
                                                     ("nDCG@10", "R@100"))
        tuned_label = None
        if args.tune_fusion and len(sparse) == 2:
            names = ["bm25", "dense", *sparse]
            _log(f"tuning RRF weights of {', '.join(names)} on the {args.tune_fusion} queries")
            tuning, weights = tune_rrf_weights(folder, args.tune_fusion,
                                               {n: systems[n] for n in names})
            result["fusion_tuning"] = tuning
            tuned_label = f"rrf(all first stages, {args.tune_fusion}-tuned weights)"
            result["fusions"][tuned_label] = fused_metrics(ranked, names, qids, qrels,
                                                           ("nDCG@10", "R@100"), weights)

        # latency: one query at a time, interleaved
        lat_names = [n for n in ("bm25", "inference-free", "splade-docs+idf", "splade", "dense")
                     if n in systems]
        sample = texts[: 50 if args.quick else len(texts)]
        times: dict[str, list[float]] = {n: [] for n in lat_names}
        for rep in range(2):
            for q in sample:
                for n in lat_names:
                    t0 = time.perf_counter()
                    systems[n].search([q], 10)
                    if rep:
                        times[n].append((time.perf_counter() - t0) * 1000)
        base = sum(times["bm25"]) / len(times["bm25"])
        for n in lat_names:
            ms = times[n]
            mean = sum(ms) / len(ms)
            result["latency"][n] = {"mean_ms": round(mean, 3), "p50_ms": round(C.percentile(ms, 50), 3),
                                    "p95_ms": round(C.percentile(ms, 95), 3),
                                    "vs_bm25": round(mean / base, 3), "queries": len(ms)}

        # document encoding throughput (fresh sample, SPLADE-tiny architecture)
        from genseek.encoders import SparseEncoder

        n_tp = 32 if args.quick else 128
        sample_docs = [d.contents for d in docs[:n_tp]]
        for label, model in (("splade", "splade-tiny"), ("inference-free", if_model)):
            if label == "inference-free" and not has_if:
                continue
            enc = SparseEncoder(model, max_length=256, windows=w)
            enc.encode_ids(sample_docs[:4])  # load + warm up
            with C.Phase() as ph:
                enc.encode_ids(sample_docs, batch_size=16)
            result.setdefault("encoding", {})[label] = {
                "docs": n_tp, "docs_per_s": round(n_tp / ph.seconds, 2), **ph.as_dict()}
        coll.close()
        for name in ("splade", "splade-docs+idf", "inference-free"):
            if name in systems:
                systems[name].close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best_sparse = max((result["systems"][n]["nDCG@10"]
                       for n in ("splade", "inference-free", "splade-docs+idf")
                       if n in result["systems"]), default=0.0)
    fusion_all = result["fusions"].get("rrf(all first stages)", {}).get("nDCG@10")
    if_lat = (result["latency"].get("inference-free")
              or result["latency"].get("splade-docs+idf") or {}).get("vs_bm25")
    result["goals"] = {
        "best_sparse_ge_bm25": best_sparse >= result["systems"]["bm25"]["nDCG@10"],
        "fusion_all_ge_0.72": None if fusion_all is None else fusion_all >= 0.72,
        "fusion_all_tuned_ge_0.72": None if tuned_label is None
        else result["fusions"][tuned_label]["nDCG@10"] >= 0.72,
        "if_latency_le_1.3x_bm25": None if if_lat is None else if_lat <= 1.3,
    }
    result["reference"] = REFERENCE
    result["loadavg_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    return result


def report(r: dict[str, Any]) -> None:
    C.print_machine(r["machine"])
    print(f"\n{r.get('dataset', 'scifact')} test, {r['queries']} judged queries, {r['documents']} documents, depth {K}, "
          f"{r.get('windows', 1)} window(s) of 256 tokens per document")
    bm = r["systems"]["bm25"]["nDCG@10"]
    rows = [(n, m["nDCG@10"], m["R@100"], m["nDCG@10"] / bm, REFERENCE.get(n))
            for n, m in r["systems"].items()]
    rows += [(n, m["nDCG@10"], m["R@100"], m["nDCG@10"] / bm, REFERENCE.get(n))
             for n, m in r["fusions"].items()]
    C.table(["system", "nDCG@10", "R@100", "vs bm25", "reference"], rows)
    if r.get("idf_table"):
        print(f"splade-docs+idf queries: {r.get('idf_source') or 'IDF table'} {r['idf_table']}")
    for name, reason in (r.get("skipped") or {}).items():
        print(f"{name}: skipped, {reason}")
    print("\nquery latency (one query at a time, k=10, query encoding included)")
    C.table(["system", "mean ms", "p50 ms", "p95 ms", "vs bm25"],
            [(n, v["mean_ms"], v["p50_ms"], v["p95_ms"], v["vs_bm25"])
             for n, v in r["latency"].items()])
    print("\nindexes")
    C.table(["index", "MiB on disk", "terms/doc", "Lucene indexing s"],
            [(n, v["disk_bytes"] / 2**20, v.get("terms_per_doc"), v.get("index_seconds"))
             for n, v in r["indexes"].items()])
    if r.get("encoding"):
        print("\ndocument encoding throughput (CPU)")
        C.table(["encoder", "docs", "docs/s", "cpu ratio"],
                [(n, v["docs"], v["docs_per_s"], v["cpu_ratio"]) for n, v in r["encoding"].items()])
    if r.get("training"):
        t = r["training"]
        print(f"\ntraining: {t['steps']} steps in {t['train_seconds']} s "
              f"(stopped by {t['stopped_by']}), KL {t['kl_first']} -> {t['kl_last']}")
    if r.get("fusion_tuning"):
        t = r["fusion_tuning"]
        print(f"\nRRF weights tuned on {t['queries']} {t['split']} queries: {t['weights']} "
              f"(nDCG@10 there {t['nDCG@10_tuned']} vs {t['nDCG@10_equal_weights']} "
              "with equal weights)")
    print(f"\ngoals: {r['goals']}; load average at end {r['loadavg_end']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="latency on 50 queries, throughput on 32 documents")
    p.add_argument("--dataset", default="scifact")
    p.add_argument("--collection", type=Path, default=None,
                   help="genseek collection with bm25 + dense of the dataset (default "
                        "$GENSEEK_CACHE/collections/DATASET, built there when missing)")
    p.add_argument("--if-model", type=Path, default=SC.CACHE_ROOT / "if-scifact",
                   help="trained inference-free model folder (genseek train sparse)")
    p.add_argument("--idf", type=Path, default=None,
                   help="IDF table for splade-docs+idf (default: IF_MODEL/idf.json, else the "
                        "corpus IDF, computed once)")
    p.add_argument("--windows", type=int, default=1,
                   help="256-token windows per document, max-pooled (1 = cut at 256 tokens)")
    p.add_argument("--tune-fusion", metavar="SPLIT", default=None,
                   help="also fuse all first stages with RRF weights tuned on SPLIT's judged "
                        "queries (e.g. train; a grid of 0.5-2 per system, bm25 fixed at 1)")
    p.add_argument("--no-trained", action="store_true",
                   help="skip the trained encoder's index (its corpus encoding is the slow part)")
    args = C.parse_args(p, None, report)
    if args is None:
        return 0
    if args.idf is not None and not args.idf.is_file():
        p.error(f"--idf {args.idf}: no such file")
    C.quiet_libraries()
    result = run_all(args)
    out = C.REPO / "benchmarks" / "results" / f"sparse{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result) + "\n")  # one line: --report reads it back
    return C.emit(result, args.json, report)


if __name__ == "__main__":
    sys.exit(main())
