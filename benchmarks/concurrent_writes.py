"""bm25 write throughput with 1, 2 and 4 collections written at once, each by its own thread.

Since Lucene writers in one process no longer share pyjnius method descriptors (per-thread
proxy classes, ``genseek.indexers.jvm``), writers of different collections run concurrently.
The alternative fix is one process-wide lock around every write; both are measured here, side
by side in one process, against one collection written alone:

- ``concurrent``: N threads, each writing its own bm25 collection (``Collection.write`` of
  batches of ``--batch`` SciFact documents: store commit, Lucene apply, commit), as the server's
  appliers do;
- ``one lock``: the same, with every ``write`` holding one shared lock (the whole server
  serialised behind it).

Each collection gets the same ``--docs`` documents (its own copy; past SciFact's 5,183 the
corpus is repeated under new ids). The settings are interleaved and repeated, and the best run
of each is kept (the machine's speed drifts; the JVM warms up in a first, unreported run). Reported: aggregate documents
per second and the ratio to one collection alone. Every collection is checked afterwards: it
holds exactly its documents.

    python benchmarks/concurrent_writes.py --quick     # 1,000 docs per collection
    python benchmarks/concurrent_writes.py             # 20,000 per collection, 3 repeats
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as C


def load_docs(n: int) -> list[Any]:
    from genseek.data.readers import read_corpus
    from genseek.types import Document

    base = [doc for _, doc in read_corpus(C.dataset_dir("scifact"))]
    docs = []
    for i in range(n):  # past the corpus, its documents again under new ids
        d = base[i % len(base)]
        docs.append(d if i < len(base) else Document(f"{d.doc_id}r{i // len(base)}", d.title,
                                                     d.text))
    return docs


def one_run(work: Path, docs: list[Any], n_colls: int, batch: int, locked: bool
            ) -> dict[str, Any]:
    from genseek.collection import Collection
    from genseek.types import Document

    shutil.rmtree(work, ignore_errors=True)
    colls = [Collection.create(work / f"c{i}", {"bm25": "bm25"}) for i in range(n_colls)]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def write(i: int) -> None:
        coll = colls[i]
        mine = [Document(f"c{i}-{d.doc_id}", d.title, d.text) for d in docs]
        try:
            for start in range(0, len(mine), batch):
                with lock if locked else contextlib.nullcontext():
                    coll.write(mine[start:start + batch])
        except BaseException as exc:  # noqa: BLE001 - reported
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(n_colls)]
    with C.Phase() as phase:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    for i, coll in enumerate(colls):  # exactly its own documents
        stats = coll.index("bm25").stats()
        assert stats["documents"] == len(docs), (i, stats["documents"])
        hits = coll.search(docs[0].title or docs[0].text[:80], 50, index="bm25")
        assert all(h.doc_id.startswith(f"c{i}-") for h in hits), hits[:3]
        coll.close()
    total = n_colls * len(docs)
    return {"collections": n_colls, "locked": locked, "documents": total,
            "docs_per_second": round(total / phase.seconds, 1), **phase.as_dict()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    C.quiet_libraries()
    info = C.machine()
    docs = load_docs(args.docs)
    work = Path(tempfile.mkdtemp(prefix="genseek-cw-"))
    rows = []
    try:
        one_run(work / "warm", docs[:5000], 2, args.batch, False)  # JVM start, JIT warm-up
        for repeat in range(args.repeats):
            for n in (1, 2, 4):
                for locked in ((False,) if n == 1 else (False, True)):
                    r = one_run(work / "run", docs, n, args.batch, locked)
                    r["repeat"] = repeat
                    rows.append(r)
                    print(f"[{time.strftime('%H:%M:%S')}] {n} collections"
                          f"{' (one lock)' if locked else ''}: {r['docs_per_second']:,.0f} "
                          f"docs/s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best: dict[str, float] = {}
    for r in rows:
        key = f"{r['collections']}{'-locked' if r['locked'] else ''}"
        best[key] = max(best.get(key, 0.0), r["docs_per_second"])
    return {"machine": info, "docs_per_collection": len(docs), "batch": args.batch,
            "repeats": args.repeats, "runs": rows, "best_docs_per_second": best}


def report(r: dict[str, Any]) -> None:
    C.print_machine(r["machine"])
    print(f"\nbm25 writes: {r['docs_per_collection']:,} SciFact documents per collection, "
          f"batches of {r['batch']}, best of {r['repeats']}")
    b = r["best_docs_per_second"]
    alone = b["1"]
    rows = [["1 collection alone", b["1"], 1.0, "-"]]
    for n in (2, 4):
        rows.append([f"{n} collections, concurrent", b[str(n)], b[str(n)] / alone,
                     b[str(n)] / b[f"{n}-locked"]])
        rows.append([f"{n} collections, one lock", b[f"{n}-locked"], b[f"{n}-locked"] / alone,
                     1.0])
    C.table(["writers", "docs/s (all collections)", "x alone", "x one lock"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1,000 documents per collection")
    p.add_argument("--docs", type=int, default=20000, help="documents per collection")
    p.add_argument("--batch", type=int, default=500, help="documents per write")
    p.add_argument("--repeats", type=int, default=3, help="runs of each setting (best kept)")
    args = C.parse_args(p, argv, report)
    if args is None:
        return 0
    if args.quick:
        args.docs = min(args.docs, 1000)
    return C.emit(run(args), args.json, report)


if __name__ == "__main__":
    sys.exit(main())
