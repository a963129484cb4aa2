"""Effectiveness on BEIR datasets: nDCG@10, R@100 and RR@10 of bm25, dense and their RRF.

For each dataset, a collection with the CLI's default indexes (``bm25`` and
``dense``) is built in ``--work/DATASET`` (default ``$GENSEEK_CACHE/collections``, the
collections the other benchmarks read) by ``genseek index`` (the CLI, in a child process,
its progress on stderr), or reused (and resumed, without re-encoding anything already
stored) when it already exists. Evaluation follows
``genseek eval`` exactly (both run ``genseek.evaluation.experiment``): judged test queries
in ``queries.jsonl`` order, searched in batches of 64 to depth k=100 by each index and by
the RRF of all indexes (``Collection.retriever``: rrf_k 60, depth 100). With
``--check-cli`` the CLI itself (``genseek eval --json``) is run too and its
numbers must be identical.

    python benchmarks/beir_eval.py --quick                  # cisi only
    python benchmarks/beir_eval.py --datasets scifact,cranfield,cisi
    python benchmarks/beir_eval.py --datasets scifact --work "$TMPDIR"/beir-work --json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as C

K = 100
RRF_K = 60.0
QUERY_BATCH = 64
INDEXES = {"bm25": "bm25", "dense": "dense"}  # genseek index's default

# Reference nDCG@10 / R@100 on the test split; see benchmarks/RESULTS.md for sources.
REFERENCES: dict[str, dict[str, dict[str, float]]] = {
    "scifact": {
        "bm25": {"nDCG@10": 0.6789, "R@100": 0.9253},  # pyserini BEIR flat, measured here
        "dense": {"nDCG@10": 0.6451},  # MiniLM-L6-v2 + faiss Flat, measured here
        "rrf": {"nDCG@10": 0.7178},  # RRF of the two runs above, measured here
    },
    "cranfield": {"bm25": {"nDCG@10": 0.3515, "R@100": 0.7256}},  # bm25s, PROVENANCE.md
    "cisi": {"bm25": {"nDCG@10": 0.3669, "R@100": 0.4185}},  # bm25s, PROVENANCE.md
}
REFERENCE_SOURCE = {
    "scifact": "pyserini BM25 flat / MiniLM + faiss Flat / their RRF (measured on this machine)",
    "cranfield": "bm25s k1=0.9 b=0.4 (cranfield/PROVENANCE.md)",
    "cisi": "bm25s k1=0.9 b=0.4, 76 judged queries (cisi/PROVENANCE.md)",
}
# Goals on nDCG@10; "max" means at least the best single index of this run.
GOALS: dict[str, dict[str, float | str]] = {
    "scifact": {"bm25": 0.665, "dense": 0.63, "rrf": "max"},
}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_or_reuse(path: Path, name: str) -> dict[str, Any]:
    """Build, resume or reuse the collection of dataset ``name`` at ``path`` with ``genseek
    index`` (``_common.build_collection``): nothing runs when it is complete."""
    built = C.build_collection(name, tuple(INDEXES), path)
    cli = built["cli"] or {}
    from genseek.collection import Collection

    upserted = int(cli.get("upserted", 0))
    return {"path": str(path), "reused": not built["built"], "documents": built["documents"],
            "indexes": {n: d["spec"] for n, d in Collection.describe(path)["indexes"].items()},
            "gaps": built["gaps"], "read": int(cli.get("read", 0)), "upserted": upserted,
            "unchanged": int(cli.get("unchanged", 0)),
            "resumed_after_line": int(cli.get("resumed_after_line", 0)),
            "seconds": built["seconds"], "cpu_seconds": built["cpu_seconds"],
            "cpu_ratio": round(built["cpu_seconds"] / built["seconds"], 2)
            if built["seconds"] else None,
            "load1_before": built.get("load1_before"), "load1_after": built.get("load1_after"),
            "other_cpu_share": built["other_cpu_share"],
            "docs_per_s": round(upserted / built["seconds"], 1) if upserted else None}


def evaluate_collection(path: Path, folder: Path, split: str) -> dict[str, Any]:
    """What ``genseek eval`` computes, plus the search time of each system."""
    from genseek.collection import Collection
    from genseek.evaluation import experiment

    qids, texts, qrels = C.judged_queries(folder, split)
    with Collection.open(path) as collection:
        systems: dict[str, Any] = {name: collection.index(name) for name in collection.indexes}
        if len(systems) > 1:
            systems["rrf"] = collection.retriever(list(systems), rrf_k=RRF_K, depth=max(K, 100))
        result = experiment(systems, dict(zip(qids, texts, strict=True)), qrels, k=K,
                            batch_size=QUERY_BATCH)
    return {"judged_queries": len(qids), "qrels_queries": len(qrels), "metrics": result.metrics,
            "search_seconds": {n: round(s, 2) for n, s in result.seconds.items()},
            "queries_per_s": {n: round(q, 1) for n, q in result.queries_per_s().items()}}


def cli_eval(path: Path, folder: Path, split: str, runs: Path) -> dict[str, Any]:
    """``genseek eval COLLECTION --dataset FOLDER --split SPLIT --json``, in-process."""
    from genseek.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["eval", str(path), "--dataset", str(folder), "--split", split,
                   "--runs", str(runs), "--no-progress", "--json"])
    if rc != 0:
        raise RuntimeError(f"genseek eval exited with {rc}")
    return json.loads(out.getvalue())


def goal_check(dataset: str, metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    for system, goal in GOALS.get(dataset, {}).items():
        if system not in metrics:
            continue
        value = metrics[system]["nDCG@10"]
        if goal == "max":
            target = max(v["nDCG@10"] for n, v in metrics.items() if n != system)
        else:
            target = float(goal)
        checks[system] = {"nDCG@10": value, "goal": target, "ok": value >= target,
                          "goal_rule": "max of the single indexes" if goal == "max" else ">="}
    return checks


def run(args: argparse.Namespace) -> dict[str, Any]:
    C.quiet_libraries()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"benchmark": "beir_eval", "machine": C.machine(), "work": str(work),
                           "settings": {"k": K, "rrf_k": RRF_K, "rrf_depth": 100,
                                        "query_batch": QUERY_BATCH, "indexes": INDEXES,
                                        "split": args.split},
                           "datasets": {}}
    for name in args.datasets:
        folder = C.dataset_dir(name)
        path = work / name
        _log(f"{name}: {'checking' if (path / 'collection.json').exists() else 'building'} "
             f"{path}")
        build = build_or_reuse(path, name)
        _log(f"{name}: evaluating")
        entry: dict[str, Any] = {"path": str(folder), "build": build,
                                 **evaluate_collection(path, folder, args.split)}
        if args.check_cli:
            _log(f"{name}: genseek eval (CLI) cross-check")
            cli = cli_eval(path, folder, args.split,
                           C.cache("runs", "beir_eval", f"{name}-{args.split}"))
            entry["cli_metrics"] = cli
            entry["cli_identical"] = cli == entry["metrics"]
        entry["references"] = REFERENCES.get(name, {})
        entry["reference_source"] = REFERENCE_SOURCE.get(name)
        entry["goals"] = goal_check(name, entry["metrics"])
        out["datasets"][name] = entry
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def report(r: dict[str, Any]) -> None:
    C.print_machine(r["machine"])
    s = r["settings"]
    print(f"collections in {r['work']}; indexes {s['indexes']}; runs to depth {s['k']}, "
          f"rrf = RRFusion(all indexes, rrf_k={s['rrf_k']:g}, depth={s['rrf_depth']}); "
          f"split {s['split']}")
    for name, e in r["datasets"].items():
        b = e["build"]
        how = ("reused" if b["reused"] else "built") + f" in {b['seconds']:.1f}s"
        if b["upserted"]:
            how += f", {b['upserted']:,} documents indexed ({b['docs_per_s']} docs/s"
            if b.get("other_cpu_share") is not None:
                how += f"; other processes used {100 * b['other_cpu_share']:.0f}% of the machine"
            how += ")"
        else:
            how += ", nothing re-encoded"
        print(f"\n{name}: {b['documents']:,} documents ({how}); "
              f"{e['judged_queries']} judged queries")
        refs = e["references"]
        rows = []
        for system, m in e["metrics"].items():
            ref = refs.get(system, {})
            goal = e["goals"].get(system)
            rows.append((system, m["nDCG@10"], m["R@100"], m["RR@10"],
                         ref.get("nDCG@10"), m["nDCG@10"] / ref["nDCG@10"] if ref else None,
                         ref.get("R@100"),
                         None if goal is None else
                         f"{'ok' if goal['ok'] else 'MISSED'} (>= {goal['goal']:.4f})",
                         e["queries_per_s"][system]))
        C.table(["system", "nDCG@10", "R@100", "RR@10", "ref nDCG@10", "ratio", "ref R@100",
                 "goal", "q/s"], rows)
        if e.get("reference_source"):
            print(f"references: {e['reference_source']}")
        if "cli_identical" in e:
            print("genseek eval --json gives "
                  + ("identical numbers" if e["cli_identical"] else f"DIFFERENT numbers: "
                     f"{e['cli_metrics']}"))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="cisi only (--datasets cisi)")
    p.add_argument("--datasets", default=None,
                   help="comma-separated BEIR folder names under $GENSEEK_DATASETS "
                        "(default scifact,cranfield,cisi; cisi with --quick)")
    p.add_argument("--split", default="test")
    p.add_argument("--work", default=None,
                   help="folder for one collection per dataset, reused when present "
                        "(default: $GENSEEK_CACHE/collections)")
    p.add_argument("--check-cli", action=argparse.BooleanOptionalAction, default=True,
                   help="also run genseek eval --json and compare (default: on)")
    args = C.parse_args(p, argv, report)
    if args is None:
        return 0
    if args.datasets is None:
        args.datasets = "cisi" if args.quick else "scifact,cranfield,cisi"
    if args.work is None:
        args.work = str(C.cache("collections"))
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    result = run(args)
    return C.emit(result, args.json, report)


if __name__ == "__main__":
    sys.exit(main())
