"""Encoder backends side by side on SciFact: torch float32, ONNX Runtime float32 and int8, and
torch bfloat16 autocast where the CPU has AMX or AVX512-BF16 (issue 21).

In one process, on the same documents (``Document.contents`` = title + " " + text):

- **dense** (the embedded all-MiniLM-L6-v2, ``TextEncoder(backend=...)``, 256 tokens, batch
  32): documents per second and process CPU seconds per document of the document encoding,
  nDCG@10 of exact inner-product retrieval over the encoded documents (the judged test queries
  encoded by the same backend), and the worst and mean document cosine against torch float32;
- **sparse** (SPLADE-tiny, ``SparseEncoder(backend=...)``, 256 tokens): the same, with nDCG@10 of
  the SPLADE dot product (document and query weights, unquantised, a scipy sparse product) and
  the worst cosine of the weight vectors.

Timing: the documents are cut into ``--rounds`` parts (default 2); in each round every backend
encodes that part, in alternating order (forward, then reversed), so every backend encodes every
document once and slow drifts of machine load hit them alike. A backend's docs/s is its documents
over its seconds, summed over the rounds; each round's rate is kept. Before the rounds each
backend is built (the ONNX export and quantisation at first use, cached under
``$GENSEEK_CACHE/onnx``: the build time and whether it exported are reported) and warmed up on 16
documents. Nothing else is timed.

**Decision rule**: a backend qualifies as default only if it is faster than torch float32 in
every round and overall, and its nDCG@10 is within 0.005 of torch float32's (|difference| <=
0.005). The script reports; it changes no default.

``--quick``: a fixed subset of 512 documents: the relevant documents of the first judged test
queries (up to half the subset, whole queries only, in file order) and then the corpus in file
order; only the queries whose relevant documents are all in the subset are evaluated.
``--docs N`` picks the same way with N documents.

    python benchmarks/encoder_backends.py --quick
    python benchmarks/encoder_backends.py --json > benchmarks/results/issue21_encoder_backends.json
    python benchmarks/encoder_backends.py --report benchmarks/results/issue21_encoder_backends.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _common as C
import numpy as np

BACKENDS = ("torch", "onnx", "onnx-int8", "torch-bf16")
NDCG_TOLERANCE = 0.005
QUICK_DOCS = 512
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
         "amx_tile")


def machine_flags() -> dict[str, bool]:
    """The CPU flags that decide these backends' speed (``/proc/cpuinfo``)."""
    from genseek.models import cpu_flags

    have = cpu_flags()
    return {flag: flag in have for flag in FLAGS}


# -- data ----------------------------------------------------------------------------------------


def load_data(folder: Path, limit: int | None) -> tuple[list[str], list[str], list[str],
                                                          list[str], dict]:
    """``(doc ids, doc texts, query ids, query texts, qrels)``: the whole corpus and every judged
    test query, or with ``limit`` the subset described in the module docstring."""
    from genseek.data.readers import read_corpus

    docs = [(d.doc_id, d.contents) for _, d in read_corpus(folder)]
    qids, texts, qrels = C.judged_queries(folder, "test")
    if limit is None or limit >= len(docs):
        return [d for d, _ in docs], [t for _, t in docs], qids, texts, qrels
    chosen: list[str] = []
    seen: set[str] = set()
    for qid in qids:
        rel = [d for d, grade in qrels[qid].items() if grade > 0 and d not in seen]
        if len(chosen) + len(rel) > limit // 2:
            break
        chosen += rel
        seen.update(rel)
    for doc_id, _ in docs:
        if len(chosen) >= limit:
            break
        if doc_id not in seen:
            chosen.append(doc_id)
            seen.add(doc_id)
    keep = set(chosen)
    subset = [(d, t) for d, t in docs if d in keep]  # corpus order
    judged = [i for i, q in enumerate(qids)
              if all(d in keep for d, g in qrels[q].items() if g > 0)
              and any(g > 0 for g in qrels[q].values())]
    return ([d for d, _ in subset], [t for _, t in subset], [qids[i] for i in judged],
            [texts[i] for i in judged], {qids[i]: qrels[qids[i]] for i in judged})


def ndcg10(scores: np.ndarray, doc_ids: Sequence[str], qids: Sequence[str], qrels: dict) -> float:
    """nDCG@10 of the top 10 of each row of ``scores`` ``[queries, docs]``."""
    from genseek.evaluation import evaluate
    from genseek.types import Hit

    k = min(10, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    run = {}
    for row, qid in enumerate(qids):
        cand = top[row][np.argsort(-scores[row, top[row]], kind="stable")]
        run[qid] = [Hit(doc_ids[j], float(scores[row, j])) for j in cand]
    return float(evaluate(run, qrels, ("nDCG@10",))["nDCG@10"])


def sparse_rows(pairs: Sequence[tuple[np.ndarray, np.ndarray]], vocab: int) -> Any:
    """SPLADE ``(ids, weights)`` pairs as a scipy CSR matrix ``[len(pairs), vocab]``."""
    from scipy.sparse import csr_matrix

    indptr = np.cumsum([0] + [len(ids) for ids, _ in pairs])
    ids = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, np.int64)
    weights = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, np.float32)
    return csr_matrix((weights.astype(np.float32), ids, indptr), shape=(len(pairs), vocab))


# -- one family of encoders ----------------------------------------------------------------------


class Family:
    """How to build, run and score one encoder family (dense or sparse) per backend."""

    def __init__(self, name: str, build: Callable[[str], Any],
                 encode_docs: Callable[[Any, list[str]], Any],
                 encode_queries: Callable[[Any, list[str]], Any],
                 merge: Callable[[list[Any]], Any],
                 score: Callable[[Any, Any], np.ndarray],
                 cosines: Callable[[Any, Any], np.ndarray]) -> None:
        self.name, self.build, self.encode_docs, self.encode_queries = (
            name, build, encode_docs, encode_queries)
        self.merge, self.score, self.cosines = merge, score, cosines


def dense_family(batch: int) -> Family:
    from genseek.encoders import TextEncoder

    def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(axis=1) / np.maximum(
            np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)

    return Family("dense (all-MiniLM-L6-v2)",
                  lambda b: TextEncoder(max_length=256, device="cpu", backend=b),
                  lambda e, t: e.encode(t, batch_size=batch),
                  lambda e, t: e.encode(t, batch_size=batch),
                  lambda parts: np.concatenate(parts),
                  lambda q, d: q @ d.T, cos)


def sparse_family(batch: int) -> Family:
    from genseek.encoders import SparseEncoder

    vocab: list[int] = []

    def build(backend: str) -> Any:
        enc = SparseEncoder(max_length=256, device="cpu", backend=backend)
        vocab[:] = [len(enc.vocab)]
        return enc

    def rows(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> Any:
        return sparse_rows(pairs, vocab[0])

    def cos(a: Any, b: Any) -> np.ndarray:
        dots = np.asarray(a.multiply(b).sum(axis=1)).ravel()
        na = np.sqrt(np.asarray(a.multiply(a).sum(axis=1)).ravel())
        nb = np.sqrt(np.asarray(b.multiply(b).sum(axis=1)).ravel())
        out = dots / np.maximum(na * nb, 1e-12)
        out[(na == 0) & (nb == 0)] = 1.0
        return out

    def merge(parts: list[Any]) -> Any:
        from scipy.sparse import vstack

        return vstack(parts).tocsr()

    return Family("sparse (SPLADE-tiny)", build,
                  lambda e, t: rows(e.encode_ids(t, batch_size=batch)),
                  lambda e, t: rows(e.encode_ids(t, batch_size=batch)),
                  merge, lambda q, d: np.asarray((q @ d.T).todense()), cos)


def run_family(family: Family, backends: Sequence[str], doc_ids: list[str], docs: list[str],
               qids: list[str], queries: list[str], qrels: dict, rounds: int) -> dict[str, Any]:
    """Build, warm up, time (interleaved rounds) and score each backend of ``family``."""
    from genseek import onnx_backend

    encoders: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for backend in backends:
        exports = sum(onnx_backend.EXPORTS.values())
        started = time.perf_counter()
        enc = family.build(backend)
        family.encode_docs(enc, docs[:16])  # warm-up: first-call allocations, lazy model load
        build_s = time.perf_counter() - started
        encoders[backend] = enc
        out[backend] = {"build_s": round(build_s, 2),
                        "exported": sum(onnx_backend.EXPORTS.values()) - exports,
                        "rounds": [], "seconds": 0.0, "cpu_seconds": 0.0, "docs": 0}
        C.log(f"{family.name} {backend}: built and warmed up in {build_s:.1f} s")
    bounds = np.linspace(0, len(docs), rounds + 1).astype(int)
    parts: dict[str, list[Any]] = {b: [] for b in backends}
    for r in range(rounds):
        lo, hi = int(bounds[r]), int(bounds[r + 1])
        order = list(backends) if r % 2 == 0 else list(reversed(backends))
        for backend in order:
            with C.Phase() as phase:
                vecs = family.encode_docs(encoders[backend], docs[lo:hi])
            parts[backend].append(vecs)
            row = out[backend]
            row["rounds"].append({"docs": hi - lo, **phase.as_dict(),
                                  "docs_per_s": round((hi - lo) / phase.seconds, 2)})
            row["seconds"] += phase.seconds
            row["cpu_seconds"] += phase.cpu_seconds
            row["docs"] += hi - lo
            C.log(f"{family.name} round {r + 1}/{rounds} {backend}: {hi - lo} docs in "
                  f"{phase.seconds:.1f} s ({(hi - lo) / phase.seconds:.1f} docs/s, "
                  f"cpu {phase.cpu_ratio:.2f}, others {phase.other_cpu_share or 0:.2f})")
    ref_docs = family.merge(parts[backends[0]])
    for backend in backends:
        row = out[backend]
        doc_vecs = family.merge(parts[backend])
        q_vecs = family.encode_queries(encoders[backend], queries)
        row["ndcg10"] = round(ndcg10(family.score(q_vecs, doc_vecs), doc_ids, qids, qrels), 4)
        cos = family.cosines(doc_vecs, ref_docs)
        row["worst_cos_vs_torch"] = round(float(cos.min()), 5)
        row["mean_cos_vs_torch"] = round(float(cos.mean()), 5)
        row["docs_per_s"] = round(row["docs"] / row["seconds"], 2)
        row["cpu_s_per_doc"] = round(row["cpu_seconds"] / row["docs"], 4)
        row["seconds"] = round(row["seconds"], 2)
        row["cpu_seconds"] = round(row["cpu_seconds"], 2)
    base = out[backends[0]]
    for backend in backends:
        row = out[backend]
        row["speed_vs_torch"] = round(row["docs_per_s"] / base["docs_per_s"], 3)
        row["round_speed_vs_torch"] = [round(a["docs_per_s"] / b["docs_per_s"], 3) for a, b in
                                       zip(row["rounds"], base["rounds"], strict=True)]
        row["ndcg10_delta"] = round(row["ndcg10"] - base["ndcg10"], 4)
        faster = row["speed_vs_torch"] > 1.0 and all(x > 1.0 for x in row["round_speed_vs_torch"])
        close = abs(row["ndcg10"] - base["ndcg10"]) <= NDCG_TOLERANCE + 1e-9
        row["faster"], row["ndcg_within_tolerance"] = bool(faster), bool(close)
        row["qualifies"] = bool(backend != backends[0] and faster and close)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from genseek.models import cpu_bf16

    C.quiet_libraries()
    folder = C.dataset_dir(args.dataset)
    info = C.machine()
    info["flags"] = machine_flags()
    info["onnxruntime"] = C._version("onnxruntime")
    info["onnx"] = C._version("onnx")
    limit = args.docs or (QUICK_DOCS if args.quick else None)
    doc_ids, docs, qids, queries, qrels = load_data(folder, limit)
    C.log(f"{args.dataset}: {len(docs):,} documents, {len(qids)} judged test queries")
    backends = [b for b in args.backends if b != "torch-bf16" or cpu_bf16()]
    skipped = {b: "the CPU has neither AMX nor AVX512-BF16" for b in args.backends
               if b not in backends}
    backends = ["torch"] + [b for b in backends if b != "torch"]  # the reference first
    result: dict[str, Any] = {
        "benchmark": "encoder_backends", "dataset": args.dataset,
        "mode": "quick" if args.quick else ("subset" if limit else "full"),
        "command": "python benchmarks/encoder_backends.py " + " ".join(sys.argv[1:]),
        "documents": len(docs), "queries": len(qids), "rounds": args.rounds,
        "batch_size": args.batch_size, "max_length": 256, "backends": backends,
        "skipped": skipped, "ndcg_tolerance": NDCG_TOLERANCE, "machine": info,
        "genseek_cache": str(C.cache()), "families": {}}
    families = {"dense": dense_family(args.batch_size), "sparse": sparse_family(args.batch_size)}
    for name in args.families:
        result["families"][name] = {
            "label": families[name].name,
            "backends": run_family(families[name], backends, doc_ids, docs, qids, queries,
                                   qrels, args.rounds)}
    result["qualifies_as_default"] = {
        name: [b for b, row in fam["backends"].items() if row["qualifies"]]
        for name, fam in result["families"].items()}
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def report(r: dict[str, Any]) -> None:
    info = r["machine"]
    C.print_machine(info)
    flags = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in info.get("flags", {}).items())
    print(f"cpu flags: {flags}")
    print(f"onnxruntime {info.get('onnxruntime')}, onnx {info.get('onnx')}")
    print(f"{r['dataset']} ({r['mode']}): {r['documents']:,} documents, {r['queries']} judged "
          f"test queries; {r['rounds']} interleaved rounds, batch {r['batch_size']}, "
          f"{r['max_length']} tokens")
    for backend, why in r.get("skipped", {}).items():
        print(f"{backend}: skipped ({why})")
    for fam in r["families"].values():
        print()
        print(fam["label"])
        rows = []
        for backend, row in fam["backends"].items():
            rows.append([backend, f"{row['docs_per_s']:.1f}",
                         f"{row['speed_vs_torch']:.2f}x",
                         " / ".join(f"{x:.2f}" for x in row["round_speed_vs_torch"]),
                         f"{row['cpu_s_per_doc']:.4f}", f"{row['ndcg10']:.4f}",
                         f"{row['ndcg10_delta']:+.4f}",
                         f"{row['worst_cos_vs_torch']:.5f}", f"{row['mean_cos_vs_torch']:.5f}",
                         f"{row['build_s']:.1f}{' (export)' if row['exported'] else ''}",
                         "yes" if row["qualifies"] else ("reference" if backend == "torch"
                                                         else "no")])
        C.table(["backend", "docs/s", "vs torch", "per round", "cpu s/doc", "nDCG@10",
                 "delta", "worst cos", "mean cos", "build s", "qualifies"], rows)
    print()
    print(f"decision rule: a backend qualifies as default only if it is faster than torch "
          f"float32 (every round and overall) and its nDCG@10 is within {r['ndcg_tolerance']} "
          f"of torch float32's")
    for name, winners in r["qualifies_as_default"].items():
        print(f"{name}: {', '.join(winners) if winners else 'none qualifies (keep torch)'}")
    print(f"load average at end {r['loadavg_end']}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="scifact",
                   help="BEIR folder name under $GENSEEK_DATASETS (default scifact)")
    p.add_argument("--quick", action="store_true",
                   help=f"a fixed subset of {QUICK_DOCS} documents and the test queries judged "
                        "within it (a few minutes)")
    p.add_argument("--docs", type=int,
                   help="a fixed subset of N documents, picked as --quick picks (default: all)")
    p.add_argument("--rounds", type=int, default=2,
                   help="interleaved timing rounds, order alternating (default 2)")
    p.add_argument("--batch-size", type=int, default=32, help="encoder batch size (default 32)")
    p.add_argument("--backends", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                   default=list(BACKENDS),
                   help=f"comma-separated (default {','.join(BACKENDS)}; torch is always run "
                        "as the reference, torch-bf16 only where the CPU supports it)")
    p.add_argument("--families", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                   default=["dense", "sparse"], help="dense, sparse or both (default both)")
    args = C.parse_args(p, argv, report)
    if args is None:
        return 0
    unknown = [b for b in args.backends if b not in BACKENDS]
    unknown += [f for f in args.families if f not in ("dense", "sparse")]
    if unknown or args.rounds < 1 or (args.docs is not None and args.docs < 16):
        p.error(f"bad --backends/--families/--rounds/--docs: {unknown or 'out of range'}")
    return C.emit(run(args), args.json, report)


if __name__ == "__main__":
    sys.exit(main())
