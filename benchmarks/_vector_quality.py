"""Vector-index quality on SciFact: RepCONC (48-byte PQ) and MUVERA (multi-vector FDE search).

Called by benchmarks/vector_indexes.py (``run_repconc(args)``, ``run_muvera(args)``, each a
list of result rows) and runnable on its own::

    python benchmarks/_vector_quality.py [--quick] [--json] [--only repconc|muvera]

RepCONC: nDCG@10 on SciFact test of faiss Flat (exact MiniLM), plain PQ and OPQ of the same
size and RepCONC (trained by ``genseek train repconc`` on SciFact *train*; trained here once
and cached when the model folder is missing), all from the same stored MiniLM document vectors
(the dense index of ``$GENSEEK_CACHE/collections/scifact``, built there when missing).

MUVERA: MiniLM token vectors of SciFact (cached once as fp16 .npy + offsets under
``$GENSEEK_CACHE/muvera/scifact``); per candidate count, recall of the
exact Chamfer top-10 and mean per-query latency of FDE search + exact rerank against
brute-force Chamfer over every document, on a subset of the test queries (brute force is
slow here); nDCG@10 of MUVERA over all test queries against single-vector MiniLM (Flat).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from genseek.atomic import atomic_write_text
from genseek.cache import cache_root

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

CACHE = cache_root()
TOKEN_CACHE = CACHE / "muvera" / "scifact"
REPCONC_MODEL = CACHE / "repconc" / "scifact48"
FLAT_REFERENCE = 0.6451  # SciFact test nDCG@10 of MiniLM Flat (RULES.md)


# -- shared data -------------------------------------------------------------------------------

def scifact_vectors() -> Path:
    """The stored MiniLM vectors of SciFact (the cached collection, built when missing)."""
    path = _common.scifact_collection() / "indexes" / "dense" / "vectors.sqlite"
    if not path.is_file():
        sys.exit(f"error: no stored SciFact MiniLM vectors at {path}")
    return path


def _doc_vectors() -> tuple[list[str], np.ndarray]:
    from genseek.indexers.repconc_train import read_vectors

    return read_vectors(scifact_vectors())


def _test_queries() -> tuple[list[str], list[str], dict]:
    return _common.judged_queries(_common.dataset_dir("scifact"), "test")


def _query_vectors(qids: list[str], texts: list[str]) -> np.ndarray:
    """MiniLM test-query vectors ``[nq, 384]``, cached next to the token cache."""
    path = TOKEN_CACHE / "test_queries_minilm.npy"
    ids_path = TOKEN_CACHE / "test_queries_minilm.json"
    if path.is_file() and ids_path.is_file() and json.loads(ids_path.read_text()) == qids:
        return np.load(path, allow_pickle=False)
    from genseek.encoders import shared_encoder

    vecs = shared_encoder("all-MiniLM-L6-v2", None).encode(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    ids_path.write_text(json.dumps(qids))
    return vecs


def _ndcg(run: dict[str, list], qrels: dict, qids: list[str]) -> float:
    from genseek.evaluation import evaluate

    return evaluate(run, {q: qrels[q] for q in qids}, ("nDCG@10",))["nDCG@10"]


def _hits(doc_ids: list[str], scores: np.ndarray, ids: np.ndarray) -> list:
    from genseek.types import Hit

    return [Hit(doc_ids[int(i)], float(s)) for s, i in zip(scores, ids, strict=True) if i >= 0]


# -- RepCONC -------------------------------------------------------------------------------------

def _train_repconc(max_minutes: float) -> dict[str, Any]:
    from genseek.indexers import repconc_train

    argv = ["--vectors", str(scifact_vectors()), "--dataset", str(_common.dataset_dir("scifact")),
            "--out", str(REPCONC_MODEL), "--max-minutes", str(max_minutes), "--json"]
    started = time.perf_counter()
    if repconc_train.main(argv) != 0:
        sys.exit("error: RepCONC training failed")
    return {"trained_now": True, "train_seconds": round(time.perf_counter() - started, 1)}


def run_repconc(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows: Flat, PQ48, OPQ48 and RepCONC (IVF-PQ, 48 bytes) nDCG@10 on SciFact test."""
    import faiss

    from genseek.indexers.repconc import RepconcIndex

    faiss.omp_set_num_threads(2)
    doc_ids, docs = _doc_vectors()
    qids, texts, qrels = _test_queries()
    queries = _query_vectors(qids, texts)
    m = 48
    rows: list[dict[str, Any]] = []

    def measure(name: str, index: Any, query_vecs: np.ndarray, train_s: float,
                code_bytes: int, note: str) -> None:
        started = time.perf_counter()
        scores, ids = index.search(np.ascontiguousarray(query_vecs, np.float32), 10)
        ms = 1000 * (time.perf_counter() - started) / len(qids)
        run = {q: _hits(doc_ids, s, i) for q, s, i in zip(qids, scores, ids, strict=True)}
        rows.append({"part": "repconc", "method": name, "bytes_per_doc": code_bytes,
                     "ndcg10": round(_ndcg(run, qrels, qids), 4), "train_s": round(train_s, 1),
                     "ms_per_query": round(ms, 3), "queries": len(qids), "note": note})

    flat = faiss.IndexFlatIP(docs.shape[1])
    flat.add(docs)
    measure("Flat (MiniLM, exact)", flat, queries, 0.0, 4 * docs.shape[1], "float32 vectors")
    for name, factory in (("PQ48", f"PQ{m}"), ("OPQ48 (20 rounds)", f"OPQ{m},PQ{m}")):
        started = time.perf_counter()
        index = faiss.index_factory(docs.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        if factory.startswith("OPQ"):  # faiss's default 50 rounds take too long here
            faiss.downcast_VectorTransform(index.chain.at(0)).niter = 20
        index.train(docs)
        index.add(docs)
        measure(name, index, queries, time.perf_counter() - started, m,
                "faiss, trained on the documents")

    info: dict[str, Any] = {"trained_now": False}
    if not (REPCONC_MODEL / "config.json").is_file():
        info = _train_repconc(3.0 if args.quick else 10.0)
    config = json.loads((REPCONC_MODEL / "config.json").read_text())
    # the trained query projection without quantisation: how much comes from W alone
    from genseek.indexers.repconc_train import load_model

    model = load_model(REPCONC_MODEL)
    proj_flat = faiss.IndexFlatIP(docs.shape[1])
    proj_flat.add(np.ascontiguousarray(docs @ model["rotation"].T, np.float32))
    measure("Flat + RepCONC query projection", proj_flat, queries @ model["query_proj"].T, 0.0,
            4 * docs.shape[1], "float32 R x scored with W q (no quantisation)")
    with tempfile.TemporaryDirectory(prefix="repconc-bench-") as tmp:
        for nprobe in (None, 4):
            index = RepconcIndex(Path(tmp) / f"r{nprobe}", {"model": str(REPCONC_MODEL),
                                                            "reuse": "", "nprobe": nprobe},
                                 encoder=_Dim(docs.shape[1]))
            index.add_vectors(list(enumerate(doc_ids, start=1)), docs)
            index.commit(1)
            started = time.perf_counter()
            hits = index.search_vectors(queries, 10)
            ms = 1000 * (time.perf_counter() - started) / len(qids)
            stats = index.stats()
            index.close()
            lists = stats.params["nlist"]
            rows.append({
                "part": "repconc",
                "method": f"RepCONC IVF{lists}-PQ{m} nprobe {nprobe or lists}",
                "bytes_per_doc": m, "ndcg10": round(_ndcg(dict(zip(qids, hits, strict=True)),
                                                          qrels, qids), 4),
                "train_s": float(config.get("seconds", 0.0)), "ms_per_query": round(ms, 3),
                "queries": len(qids),
                "note": (f"model {REPCONC_MODEL} (best epoch {config.get('best_epoch')}, "
                         f"dev nDCG@10 {config.get('dev_ndcg10')} vs OPQ start "
                         f"{config.get('epoch0_dev_ndcg10')}); index RAM "
                         f"{stats.memory_bytes:,} B"),
                **({"train": info} if info["trained_now"] else {})})
    return rows


class _Dim:
    """Stands in for the text encoder where vectors are given (only ``dim`` is read)."""

    def __init__(self, dim: int):
        self.dim = dim

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        raise RuntimeError("benchmark indexes receive vectors, never texts")


# -- MUVERA --------------------------------------------------------------------------------------

def ensure_token_cache() -> Path:
    """Compute the SciFact token cache once: ``{docs,queries}_{tokens,offsets}.npy`` + ids."""
    if (TOKEN_CACHE / "docs_offsets.npy").is_file() and (TOKEN_CACHE / "queries_offsets.npy"
                                                         ).is_file():
        return TOKEN_CACHE
    from tqdm import tqdm

    from genseek.data.readers import read_queries
    from genseek.encoders import TokenEncoder

    folder = _common.dataset_dir("scifact")
    TOKEN_CACHE.mkdir(parents=True, exist_ok=True)
    encoder = TokenEncoder(max_length=256)
    queries = read_queries(folder)
    docs = []
    with open(folder / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            title, text = obj.get("title", ""), obj.get("text", "")
            docs.append((str(obj["_id"]), f"{title} {text}" if title and text else title or text))
    for name, ids, texts in (("queries", list(queries), list(queries.values())),
                             ("docs", [d for d, _ in docs], [t for _, t in docs])):
        vecs: list[np.ndarray] = []
        for lo in tqdm(range(0, len(texts), 64), desc=f"token vectors ({name})", unit="batch"):
            vecs.extend(encoder.encode(texts[lo:lo + 64]))
        offsets = np.concatenate([[0], np.cumsum([len(v) for v in vecs])]).astype(np.int64)
        np.save(TOKEN_CACHE / f"{name}_tokens.npy", np.concatenate(vecs).astype(np.float16))
        (TOKEN_CACHE / f"{name}_ids.json").write_text(json.dumps(ids))
        np.save(TOKEN_CACHE / f"{name}_offsets.npy", offsets)  # written last: marks complete
    return TOKEN_CACHE


def run_muvera(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows: brute-force Chamfer, MUVERA at several candidate counts, and nDCG@10 rows."""
    import faiss
    import torch

    from genseek.indexers.muvera import MuveraIndex
    from genseek.kernels.chamfer import chamfer_flat
    from genseek.params import MuveraSearchParams

    # One thread for both sides: on this oversubscribed machine a second OpenMP thread makes
    # small per-query kernels ~3x slower (spin-waiting), which would flatter neither method.
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    cache = ensure_token_cache()
    doc_tok = np.load(cache / "docs_tokens.npy", mmap_mode="r")
    doc_off = np.load(cache / "docs_offsets.npy")
    doc_ids = json.loads((cache / "docs_ids.json").read_text())
    q_tok = np.load(cache / "queries_tokens.npy")
    q_off = np.load(cache / "queries_offsets.npy")
    q_row = {q: i for i, q in enumerate(json.loads((cache / "queries_ids.json").read_text()))}
    qids, texts, qrels = _test_queries()
    q_sets = [q_tok[q_off[q_row[q]]:q_off[q_row[q] + 1]].astype(np.float32) for q in qids]
    n_exact = 20 if args.quick else 60
    exact_q = list(range(0, len(qids), max(1, len(qids) // n_exact)))[:n_exact]
    params = {"k_sim": 4, "d_proj": 16, "r_reps": 20}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="muvera-bench-") as tmp:
        # 1. build: token vectors -> fp16 segments + FDEs in faiss
        index = MuveraIndex(Path(tmp) / "m", params, encoder=_Dim(doc_tok.shape[1]))
        started = time.perf_counter()
        chunk = 500
        for lo in range(0, len(doc_ids), chunk):
            hi = min(lo + chunk, len(doc_ids))
            sets = [np.asarray(doc_tok[doc_off[i]:doc_off[i + 1]], dtype=np.float32)
                    for i in range(lo, hi)]
            index.add_token_vectors([(i + 1, doc_ids[i]) for i in range(lo, hi)], sets)
            index.commit(hi)
        build_s = time.perf_counter() - started
        stats = index.stats()
        # 2. brute force: every document's tokens in RAM as float32, one query at a time
        all_tok = torch.from_numpy(np.asarray(doc_tok, dtype=np.float32))
        all_off = torch.from_numpy(doc_off)
        truth, started = [], time.perf_counter()
        for j in exact_q:
            scores = chamfer_flat(torch.from_numpy(q_sets[j]), all_tok, all_off)
            top = torch.topk(scores, 10)
            truth.append(top)
        brute_ms = 1000 * (time.perf_counter() - started) / len(exact_q)
        exact_run = {qids[j]: _hits(doc_ids, t.values.numpy(), t.indices.numpy())
                     for j, t in zip(exact_q, truth, strict=True)}
        sub = [qids[j] for j in exact_q]
        exact_ndcg = _ndcg(exact_run, qrels, sub)
        del all_tok
        rows.append({"part": "muvera", "method": "brute-force Chamfer (all documents)",
                     "candidates": len(doc_ids), "recall10": 1.0,
                     "ms_per_query": round(brute_ms, 1), "speedup": 1.0,
                     "queries": len(exact_q), "ndcg10_subset": round(exact_ndcg, 4)})
        truth_ids = [{doc_ids[int(i)] for i in t.indices} for t in truth]
        # 3. MUVERA: FDE top-c, exact rerank, one query at a time
        for cand in ((50, 100, 150, 200) if args.quick else (50, 100, 150, 200, 400)):
            got, started = [], time.perf_counter()
            for j in exact_q:
                got.append(index.search_vectors([q_sets[j]], 10, MuveraSearchParams(
                    candidates=cand))[0])
            ms = 1000 * (time.perf_counter() - started) / len(exact_q)
            recall = float(np.mean([len({h.doc_id for h in g} & t) / 10
                                    for g, t in zip(got, truth_ids, strict=True)]))
            rows.append({"part": "muvera", "method": f"MUVERA FDE + rerank c={cand}",
                         "candidates": cand, "recall10": round(recall, 4),
                         "ms_per_query": round(ms, 1), "speedup": round(brute_ms / ms, 1),
                         "queries": len(exact_q),
                         "ndcg10_subset": round(_ndcg(dict(zip(sub, got, strict=True)),
                                                      qrels, sub), 4)})
        # 4. nDCG@10 on every test query: MUVERA vs single-vector MiniLM
        cand = 200
        started = time.perf_counter()
        full = index.search_vectors(q_sets, 10, MuveraSearchParams(candidates=cand))
        ms = 1000 * (time.perf_counter() - started) / len(qids)
        rows.append({"part": "muvera-ndcg", "method": f"MUVERA (c={cand}) all test queries",
                     "ndcg10": round(_ndcg(dict(zip(qids, full, strict=True)), qrels, qids), 4),
                     "queries": len(qids), "ms_per_query": round(ms, 1),
                     "build_s": round(build_s, 1), "fde_dim": stats.details["fde_dim"],
                     "fde_ram_bytes": stats.memory_bytes, "disk_bytes": stats.disk_bytes,
                     "token_vectors": stats.details["token_vectors"], "params": params})
        index.close()
    dense_ids, docs = _doc_vectors()
    flat = faiss.IndexFlatIP(docs.shape[1])
    flat.add(docs)
    scores, ids = flat.search(_query_vectors(qids, texts), 10)
    run = {q: _hits(dense_ids, s, i) for q, s, i in zip(qids, scores, ids, strict=True)}
    rows.append({"part": "muvera-ndcg", "method": "single-vector MiniLM (Flat)",
                 "ndcg10": round(_ndcg(run, qrels, qids), 4), "queries": len(qids)})
    return rows


# -- report --------------------------------------------------------------------------------------

def report(result: dict[str, Any]) -> None:
    _common.print_machine(result["machine"])
    rep = [r for r in result["rows"] if r["part"] == "repconc"]
    if rep:
        flat = next(r["ndcg10"] for r in rep if r["method"].startswith("Flat"))
        print("\nRepCONC on SciFact test (nDCG@10; 48 bytes per document)")
        _common.table(["method", "bytes/doc", "nDCG@10", "vs Flat (pts)", "train s", "ms/query"],
                      [[r["method"], r["bytes_per_doc"], r["ndcg10"],
                        round(100 * (r["ndcg10"] - flat), 2), r["train_s"], r["ms_per_query"]]
                       for r in rep])
    mv = [r for r in result["rows"] if r["part"] == "muvera"]
    if mv:
        print("\nMUVERA on SciFact (recall of the exact Chamfer top-10; one query at a time)")
        _common.table(["method", "candidates", "recall@10", "ms/query", "speedup", "nDCG@10*"],
                      [[r["method"], r["candidates"], r["recall10"], r["ms_per_query"],
                        r["speedup"], r["ndcg10_subset"]] for r in mv])
        print(f"* on the {mv[0]['queries']} test queries where brute force ran")
    nd = [r for r in result["rows"] if r["part"] == "muvera-ndcg"]
    if nd:
        print("\nMulti-vector vs single-vector, all SciFact test queries")
        _common.table(["method", "nDCG@10", "queries"],
                      [[r["method"], r["ndcg10"], r["queries"]] for r in nd])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer brute-force queries")
    parser.add_argument("--only", choices=("repconc", "muvera"))
    _common.add_output_options(parser)
    args = parser.parse_args(argv)
    if args.report:
        return _common.emit(_common.load_json(args.report), False, report)
    _common.quiet_libraries()
    result: dict[str, Any] = {"machine": _common.machine(), "rows": []}
    with _common.Phase() as phase:
        if args.only in (None, "repconc"):
            result["rows"] += run_repconc(args)
        if args.only in (None, "muvera"):
            result["rows"] += run_muvera(args)
    result["phase"] = phase.as_dict()
    result["uptime"] = os.popen("uptime").read().strip()
    out = _common.REPO / "benchmarks" / "results" / (
        f"vector_quality{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.only and out.is_file():  # keep the other part's rows (and its machine record)
        old = json.loads(out.read_text())
        kept = [r for r in old.get("rows", []) if not r["part"].startswith(args.only)]
        result["rows"] = kept + result["rows"]
        result["earlier_runs"] = old.get("earlier_runs", []) + [
            {k: old.get(k) for k in ("machine", "phase", "uptime", "only")}]
    result["only"] = args.only
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    return _common.emit(result, args.json, report)


if __name__ == "__main__":
    sys.exit(main())
