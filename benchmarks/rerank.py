"""Listwise LLM reranking on SciFact: FIRST single-token vs full generation vs pointwise.

1. First stage: RRF(bm25, dense) top 100 of every judged test query, from the cached
   genseek collection (``--collection``, default $GENSEEK_CACHE/collections/scifact, built
   there with ``genseek index`` when missing; its indexes are copied and opened read-only),
   cached as JSON under ``--cache``.
2. The first ``--queries`` judged test queries (file order) have their top
   ``--depth`` reranked by each method, one query at a time (so the time is the
   latency per query): ``first`` (single-token, zero-shot), ``listwise-gen`` (full
   generation at the same windows), ``pointwise`` (yes/no log-odds) and
   ``first-ft`` (single-token with the fine-tuned model from ``genseek train first``,
   ``--finetuned``; skipped, with the reason printed, when the default folder has none).
3. nDCG@10 of the first stage and of each reranked run over the same queries (the
   reranked top ``depth`` followed by the rest of the first-stage top 100), with the
   per-query wins/ties/losses against the first stage and the p-value of a paired
   randomisation test (``genseek.evaluation.paired_comparison``), latency
   per query, the single-token speed-up over full generation, and Kendall's tau
   between the single-token and full-generation orderings.

Each method's result is cached under ``--cache`` as soon as it finishes, and its orders
so far after every query, so a run that is cut off resumes where it stopped (``--fresh``
starts over).

    python benchmarks/rerank.py --quick --json
    python benchmarks/rerank.py --queries 30 --depth 20 --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import _common as C

CACHE = C.cache("rerank")
COLLECTION = C.cache("collections", "scifact")
FINETUNED = CACHE / "first-smollm2-scifact"
PLAIN_SMOLLM2 = CACHE / "smollm2-135m-instruct-f32"
METHODS = ("first", "listwise-gen", "pointwise", "first-ft")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def kendall_tau(a: list[int], b: list[int]) -> float:
    """Kendall's tau between two orderings of the same items (no ties)."""
    pos = {x: i for i, x in enumerate(b)}
    seq = [pos[x] for x in a]
    n = len(seq)
    if n < 2:
        return 1.0
    concordant = sum(1 for i in range(n) for j in range(i + 1, n) if seq[i] < seq[j])
    pairs = n * (n - 1) // 2
    return (2 * concordant - pairs) / pairs


def _reranked_run(run, qids, orders, depth):
    """Hits per query: the reranked top ``depth`` then the first-stage rest."""
    from genseek.types import Hit

    out = {}
    for qid, order in zip(qids, orders, strict=True):
        hits = run[qid]
        head = [hits[i] for i in order]
        out[qid] = [Hit(d, 1000.0 + len(head) - r) for r, (d, _) in enumerate(head)] + \
            [Hit(d, s) for d, s in hits[depth:]]
    return out


def _model_arg(name: str) -> str:
    """The default SmolLM2 GGUF, or the float32 copy of it saved by ``first_train`` (same
    weights, loads in seconds instead of de-quantising the GGUF)."""
    if name == "smollm2" and (PLAIN_SMOLLM2 / "config.json").is_file():
        return str(PLAIN_SMOLLM2)
    return name


def run_method(method: str, args, queries: list[str], texts: list[list[str]],
               partial: Path | None = None) -> dict[str, Any]:
    """Rerank every query with ``method``; with ``partial``, the orders so far are saved
    there after each query and a rerun resumes after the last saved one."""
    from genseek.models import load_lm
    from genseek.rerankers.first import FirstReranker, GenerationReranker
    from genseek.rerankers.pointwise import PointwiseReranker

    model = str(args.finetuned) if method == "first-ft" else _model_arg(args.model)
    t0 = time.perf_counter()
    lm = load_lm(model, None, args.dtype)
    load_s = time.perf_counter() - t0
    common = {"max_passage_tokens": args.max_passage_tokens, "batch_size": args.batch_size}
    if method == "pointwise":
        rr = PointwiseReranker(lm, **common)
    else:
        cls = GenerationReranker if method == "listwise-gen" else FirstReranker
        rr = cls(lm, window=args.window, stride=args.stride, **common)
    orders: list[list[int]] = []
    latencies: list[float] = []
    gen_texts: list[str] = []
    if partial is not None and partial.is_file():
        done = json.loads(partial.read_text())
        orders, latencies = done["orders"], done["latency_s"]
        _log(f"{method}: resuming after {len(orders)} queries from {partial}")
    from tqdm import tqdm

    from genseek.atomic import atomic_write_json

    with C.Phase() as phase:
        for q, t in tqdm(list(zip(queries, texts, strict=True))[len(orders):], desc=method,
                         unit="query", file=sys.stderr, initial=len(orders),
                         total=len(queries)):
            start = time.perf_counter()
            if method == "pointwise":
                scores = rr.rank_batch([q], [t])[0]
                order = sorted(range(len(t)), key=lambda i: (-scores[i], i))
            else:
                order = rr.orders([q], [t])[0]
                if method == "listwise-gen":
                    gen_texts.append(rr.last_texts[-1] if rr.last_texts else "")
            latencies.append(time.perf_counter() - start)
            orders.append(order)
            if partial is not None:
                atomic_write_json(partial, {"orders": orders, "latency_s": latencies})
    return {"method": method, "model": model, "load_seconds": round(load_s, 1),
            "orders": orders, "latency_s": [round(x, 3) for x in latencies],
            "mean_latency_s": round(sum(latencies) / max(len(latencies), 1), 3),
            "phase": phase.as_dict(), "sample_generations": gen_texts[:3]}


def measure(args) -> dict[str, Any]:
    import torch

    from genseek.atomic import atomic_write_json
    from genseek.data.readers import read_qrels, read_queries
    from genseek.evaluation import evaluate, paired_comparison, per_query
    from genseek.rerankers.first_train import first_stage_run, load_texts
    from genseek.types import Hit

    torch.set_num_threads(args.threads)
    info = C.machine()
    dataset = C.dataset_dir("scifact")
    args.collection = C.collection_option(args.collection)
    _log("first stage (RRF of bm25 + dense, top 100)")
    run = first_stage_run(args.collection, dataset, "test", 100, args.cache)
    qrels = read_qrels(dataset, "test")
    queries_all = read_queries(dataset)
    qids = [q for q in queries_all if q in run][:args.queries]
    sub_qrels = {q: qrels[q] for q in qids}
    texts_by_id = load_texts(args.collection, [d for q in qids for d, _ in run[q][:args.depth]])
    queries = [queries_all[q] for q in qids]
    texts = [[texts_by_id.get(d, "") for d, _ in run[q][:args.depth]] for q in qids]
    first_stage = {q: [Hit(d, s) for d, s in run[q]] for q in qids}
    full_first = evaluate({q: [Hit(d, s) for d, s in h] for q, h in run.items()}, qrels,
                          ["nDCG@10"])["nDCG@10"]
    base_q = per_query(first_stage, sub_qrels, ["nDCG@10"])["nDCG@10"]
    base = sum(base_q.values()) / len(base_q)
    config = {k: getattr(args, k) for k in ("queries", "depth", "window", "stride",
                                            "max_passage_tokens", "batch_size", "threads",
                                            "model", "finetuned")}
    config["finetuned"] = str(config["finetuned"])
    if args.dtype not in (None, "auto", "float32"):  # older cache keys stay valid
        config["dtype"] = args.dtype
    key = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for method in args.methods:
        if method == "first-ft" and not (Path(args.finetuned) / "config.json").is_file():
            skipped[method] = (f"no fine-tuned model at {args.finetuned} (--finetuned DIR: a "
                               "`genseek train first` output)")
            _log(f"skip first-ft: {skipped[method]}")
            continue
        cached = args.cache / f"bench_{key}_{method}.json"
        if cached.is_file() and not args.fresh:
            results[method] = json.loads(cached.read_text())
            _log(f"{method}: cached result {cached}")
        else:
            _log(f"{method}: {len(qids)} queries x top {args.depth}")
            partial = cached.with_suffix(".partial.json")
            if args.fresh:
                partial.unlink(missing_ok=True)
            results[method] = run_method(method, args, queries, texts, partial)
            atomic_write_json(cached, results[method])
            partial.unlink(missing_ok=True)
        r = results[method]
        got = per_query(_reranked_run(run, qids, r["orders"], args.depth), sub_qrels,
                        ["nDCG@10"])["nDCG@10"]
        r["nDCG@10"] = sum(got.values()) / len(got)
        # paired randomisation test of the difference to the first stage, per query
        cmp = paired_comparison(got, base_q)
        r["p_vs_first_stage"] = round(cmp["p_value"], 4)
        r["wins_ties_losses"] = [cmp["wins"], cmp["ties"], cmp["losses"]]
        _log(f"{method}: nDCG@10 {r['nDCG@10']:.4f}, {r['mean_latency_s']:.2f} s/query")
    out: dict[str, Any] = {"benchmark": "rerank", "quick": args.quick, "config": config,
                           "machine": info, "dataset": "scifact test",
                           "first_stage": "rrf(bm25,dense) top 100",
                           "first_stage_ndcg10_all_300": round(full_first, 4),
                           "first_stage_ndcg10_subset": round(base, 4), "methods": {},
                           "skipped": skipped}
    for m, r in results.items():
        out["methods"][m] = {k: v for k, v in r.items() if k not in ("orders",)}
        out["methods"][m]["delta_vs_first_stage"] = round(r["nDCG@10"] - base, 4)
    if "first" in results and "listwise-gen" in results:
        taus = [kendall_tau(a, b) for a, b in zip(results["first"]["orders"],
                                                  results["listwise-gen"]["orders"], strict=True)]
        out["kendall_tau_first_vs_gen"] = round(sum(taus) / len(taus), 4)
        out["speedup_first_vs_gen"] = round(results["listwise-gen"]["mean_latency_s"]
                                            / results["first"]["mean_latency_s"], 2)
    if "first" in results and "pointwise" in results:
        out["speedup_first_vs_pointwise"] = round(results["pointwise"]["mean_latency_s"]
                                                  / results["first"]["mean_latency_s"], 2)
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def report(res: dict[str, Any]) -> None:
    C.print_machine(res["machine"])
    c = res["config"]
    print(f"\nSciFact test, first {c['queries']} judged queries, rerank top {c['depth']} of "
          f"{res['first_stage']} (window {c['window']}, stride {c['stride']}, "
          f"{c['max_passage_tokens']} tokens/passage)")
    print(f"first stage nDCG@10: {res['first_stage_ndcg10_subset']:.4f} on these queries, "
          f"{res['first_stage_ndcg10_all_300']:.4f} on all 300\n")
    rows = [["first stage (RRF)", res["first_stage_ndcg10_subset"], None, None, None, None,
             None]]
    for m, r in res["methods"].items():
        wtl = r.get("wins_ties_losses")
        rows.append([m, r["nDCG@10"], r["delta_vs_first_stage"], r.get("p_vs_first_stage"),
                     "/".join(map(str, wtl)) if wtl else None, r["mean_latency_s"],
                     r["phase"]["cpu_ratio"]])
    C.table(["method", "nDCG@10", "delta", "p (paired)", "win/tie/loss", "s/query",
             "cpu ratio"], rows)
    for m, reason in (res.get("skipped") or {}).items():
        print(f"{m}: skipped, {reason}")
    for k in ("speedup_first_vs_gen", "speedup_first_vs_pointwise", "kendall_tau_first_vs_gen"):
        if k in res:
            print(f"{k}: {res[k]}")
    print(f"load average at end: {res['loadavg_end']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="10 queries, top 10 (minutes)")
    p.add_argument("--queries", type=int, default=None, help="judged test queries (default 30)")
    p.add_argument("--depth", type=int, default=None, help="candidates reranked (default 20)")
    p.add_argument("--window", type=int, default=20)
    p.add_argument("--stride", type=int, default=10)
    p.add_argument("--max-passage-tokens", type=int, default=None,
                   help="tokens kept per passage (default 64; quick 48)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--dtype", default=None,
                   help="model dtype: auto (default: float32 on CPU, bfloat16 on GPU), "
                        "float32, bfloat16 (fast on CPUs with AMX/AVX512-BF16)")
    p.add_argument("--finetuned", type=Path, default=None,
                   help=f"first-ft's model, a genseek train first output (default {FINETUNED}; "
                        "first-ft is skipped when that has none)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--collection", type=Path, default=None,
                   help=f"SciFact collection with bm25 + dense (default {COLLECTION}, built "
                        "there when missing)")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--fresh", action="store_true", help="ignore cached method results")
    args = C.parse_args(p, argv, report)
    if args is None:
        return 0
    quick = {"queries": 10, "depth": 10, "max_passage_tokens": 48}
    full = {"queries": 30, "depth": 20, "max_passage_tokens": 64}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.finetuned is None:
        args.finetuned = FINETUNED
    elif not (args.finetuned / "config.json").is_file():
        p.error(f"--finetuned {args.finetuned}: no model there (no config.json)")
    args.methods = [m for m in args.methods.split(",") if m]
    bad = set(args.methods) - set(METHODS)
    if bad:
        p.error(f"unknown methods {sorted(bad)}; known: {', '.join(METHODS)}")
    C.quiet_libraries()
    res = measure(args)
    name = "rerank_quick.json" if args.quick else "rerank.json"
    (C.REPO / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (C.REPO / "benchmarks" / "results" / name).write_text(json.dumps(res, indent=1) + "\n")
    return C.emit(res, args.json, report)


if __name__ == "__main__":
    sys.exit(main())
