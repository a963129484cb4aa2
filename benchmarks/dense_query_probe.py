"""Where a single dense query's time goes: query encoding vs faiss vs both in turn.

torch and faiss-cpu each bring their own OpenMP runtime (two ``libgomp`` copies);
after a parallel region, each runtime's worker threads keep spinning for a while.
Alternating torch (encode) and faiss (search) per query, as ``DenseIndex.search``
does, makes the two thread pools compete for the cores. This probe times, per query
(batch 1) on a collection with a ``dense`` index (default: the cached collection of
``--dataset``, ``$GENSEEK_CACHE/collections/DATASET``, built with ``genseek index`` when
missing):

- ``encode only``: ``DenseIndex.encode_queries([q])``;
- ``encode + faiss``: the same, then ``search_vectors`` with a fixed vector;
- ``dense.search``: the real call.

Run it as is and with ``OMP_WAIT_POLICY=PASSIVE`` to see the spinning's share:

    python benchmarks/dense_query_probe.py
    OMP_WAIT_POLICY=PASSIVE python benchmarks/dense_query_probe.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as C


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("collection", nargs="?", default=None,
                   help="a collection with an index named dense (default: the cached "
                        "collection of --dataset, built when missing)")
    p.add_argument("--dataset", default="scifact", help="whose test queries to use")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    C.quiet_libraries()
    from genseek.collection import Collection

    _, queries, _ = C.judged_queries(C.dataset_dir(args.dataset))
    path = C.collection_option(None if args.collection is None else Path(args.collection),
                               args.dataset, ("dense",), "COLLECTION")
    out: dict[str, Any] = {"benchmark": "dense_query_probe", "machine": C.machine(),
                           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                           "queries": len(queries), "k": args.k, "rounds": []}
    with Collection.open(path) as coll:
        dense = coll.index("dense")
        fixed = dense.encode_queries(queries[:1])
        cases = {
            "encode only": lambda q: dense.encode_queries([q]),
            "encode + faiss": lambda q: (dense.encode_queries([q]),
                                         dense.search_vectors(fixed, args.k)),
            "dense.search": lambda q: dense.search([q], args.k),
        }
        for _ in range(args.rounds):
            measured = {}
            for name, fn in cases.items():
                for q in queries[:20]:  # warm-up
                    fn(q)
                times = []
                with C.Phase() as phase:
                    for q in queries:
                        start = time.perf_counter()
                        fn(q)
                        times.append(time.perf_counter() - start)
                measured[name] = {"p50_ms": C.percentile(times, 50) * 1e3,
                                  "p99_ms": C.percentile(times, 99) * 1e3,
                                  "cpu_ratio": round(phase.cpu_ratio, 2),
                                  "other_cpu_share": phase.other_cpu_share}
            out["rounds"].append(measured)
    if args.json:
        C.dump_json(out)
        return 0
    C.print_machine(out["machine"])
    print(f"OMP_WAIT_POLICY={out['omp_wait_policy'] or '(unset)'}; {len(queries)} queries, "
          f"batch 1, k={args.k}; milliseconds per query")
    rows = [(f"round {i}: {name}", m["p50_ms"], m["p99_ms"], m["cpu_ratio"],
             "-" if m["other_cpu_share"] is None else f"{100 * m['other_cpu_share']:.0f}%")
            for i, r in enumerate(out["rounds"], start=1) for name, m in r.items()]
    C.table(["case", "p50 ms", "p99 ms", "cpu/wall", "others' cpu"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
