"""Incremental updates versus a from-scratch build of the same final corpus.

Collection A (``bm25`` + ``dense``, the CLI default) is built from a random 90%
of the corpus; then the remaining 10% are added, 100 documents deleted and 100
others updated (their last sentence replaced by a sentence taken from another
document). Collection B is built from scratch over the same final corpus (a new
folder: every document is encoded again, nothing is copied from A).

For every judged test query, top-100 of A and B are compared:

- bm25: fraction of queries whose rankings (ids in order) are identical, and the
  max |score difference| (same document in both lists);
- dense: max |score difference| and fraction of queries with identical top-10 ids
  (and top-100), since re-encoding in different batches may move scores by ~1e-7;
- rrf (bm25 + dense, depth 100): fraction with identical top-10 ids;

plus nDCG@10 of both, and the time to apply the increments versus the full build.

    python benchmarks/incremental.py --dataset scifact          # ~8 min on 2 cores
    python benchmarks/incremental.py --dataset scifact --quick  # first 1,000 docs
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as C

K = 100
INDEXES = {"bm25": "bm25", "dense": "dense"}
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE.split(text.strip()) if s]


def plan(docs: list, rng: random.Random, base_fraction: float, n_delete: int,
         n_update: int) -> dict[str, Any]:
    """Split ``docs`` into base / added, choose deletes and updates, make the updated texts."""
    from genseek.types import Document

    ids = [d.doc_id for d in docs]
    n_base = round(len(docs) * base_fraction)
    base_ids = set(rng.sample(ids, n_base))
    base = [d for d in docs if d.doc_id in base_ids]
    added = [d for d in docs if d.doc_id not in base_ids]
    changed = rng.sample(ids, n_delete + n_update)
    deleted, updated_ids = changed[:n_delete], changed[n_delete:]
    by_id = {d.doc_id: d for d in docs}
    donors = [d for d in docs if len(_sentences(d.text)) >= 2]
    updates = []
    for doc_id in updated_ids:
        doc = by_id[doc_id]
        donor = rng.choice(donors)
        while donor.doc_id == doc_id:
            donor = rng.choice(donors)
        kept = _sentences(doc.text)
        kept = kept[:-1] if len(kept) > 1 else kept
        borrowed = rng.choice(_sentences(donor.text))
        updates.append(Document(doc_id, doc.title, " ".join([*kept, borrowed]), doc.metadata))
    gone = set(deleted)
    new_text = {d.doc_id: d for d in updates}
    final = [new_text.get(d.doc_id, d) for d in docs if d.doc_id not in gone]
    return {"base": base, "added": added, "deleted": deleted, "updates": updates,
            "final": final}


class _Count:
    """Counts the texts the shared encoder is asked to encode (= documents re-embedded)."""

    def __init__(self, encoder: Any):
        self.encoder, self.inner, self.texts, self.seconds = encoder, encoder.encode, 0, 0.0

    def __enter__(self) -> _Count:
        def encode(texts, *a, **kw):
            start = time.perf_counter()
            try:
                return self.inner(texts, *a, **kw)
            finally:
                self.seconds += time.perf_counter() - start
                self.texts += len(texts)

        self.encoder.encode = encode
        return self

    def __exit__(self, *exc: object) -> None:
        del self.encoder.encode


def _ingest(collection, docs: list, batch: int):
    # (line number, Document) records, as read_corpus yields them.
    return collection.ingest(((i, d) for i, d in enumerate(docs, start=1)), batch_size=batch)


def compare(a: list, b: list) -> dict[str, Any]:
    """Agreement of two runs (lists of hit lists, one per query)."""
    same_all = same10 = same_set = 0
    max_diff = 0.0
    max_diff_rank = 0.0
    for ha, hb in zip(a, b, strict=True):
        ia, ib = [h.doc_id for h in ha], [h.doc_id for h in hb]
        same_all += ia == ib
        same10 += ia[:10] == ib[:10]
        same_set += set(ia) == set(ib)
        sb = {h.doc_id: h.score for h in hb}
        for h in ha:
            if h.doc_id in sb:
                max_diff = max(max_diff, abs(h.score - sb[h.doc_id]))
        for x, y in zip(ha, hb, strict=False):
            max_diff_rank = max(max_diff_rank, abs(x.score - y.score))
        if len(ha) != len(hb):
            max_diff_rank = float("inf")
    n = len(a)
    return {"queries": n, "identical_top100_fraction": same_all / n,
            "identical_top10_fraction": same10 / n, "same_top100_set_fraction": same_set / n,
            "max_abs_score_diff": max_diff, "max_abs_score_diff_by_rank": max_diff_rank}


def run(args: argparse.Namespace) -> dict[str, Any]:
    C.quiet_libraries()
    from genseek.collection import Collection
    from genseek.data.readers import read_corpus
    from genseek.encoders import shared_encoder
    from genseek.evaluation import experiment
    from genseek.indexers.jvm import jclass

    folder = C.dataset_dir(args.dataset)
    records = read_corpus(folder)
    docs = [d for _, d in (itertools.islice(records, args.docs) if args.docs else records)]
    rng = random.Random(args.seed)
    n_delete = args.delete if args.delete is not None else (50 if args.quick else 100)
    n_update = args.update if args.update is not None else (50 if args.quick else 100)
    p = plan(docs, rng, 0.9, n_delete, n_update)
    qids, queries, qrels = C.judged_queries(folder, "test")
    out: dict[str, Any] = {
        "benchmark": "incremental", "mode": "quick" if args.quick else "full",
        "dataset": args.dataset, "machine": C.machine(), "seed": args.seed,
        "corpus_docs": len(docs), "base_docs": len(p["base"]), "added_docs": len(p["added"]),
        "deleted_docs": len(p["deleted"]), "updated_docs": len(p["updates"]),
        "final_docs": len(p["final"]), "queries": len(queries), "k": K,
        "indexes": INDEXES, "ingest_batch": args.ingest_batch,
    }

    _log("loading the encoder and starting the JVM (not timed below)")
    encoder = shared_encoder("all-MiniLM-L6-v2", None)  # the dense index's cache key
    encoder.encode(queries[:32])
    jclass("java.lang.String")

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="genseek-incr-"))
    work.mkdir(parents=True, exist_ok=True)
    for sub in ("A", "B"):
        shutil.rmtree(work / sub, ignore_errors=True)
    a = b = None
    try:
        # -- A: 90% build, then the increments ------------------------------------------
        _log(f"A: building from {len(p['base']):,} documents")
        with C.Phase() as ph, _Count(encoder) as cnt:
            a = Collection.create(work / "A", INDEXES)
            _ingest(a, p["base"], args.ingest_batch)
        out["a_base_build"] = {**ph.as_dict(), "encoded": cnt.texts}

        steps: dict[str, Any] = {}
        _log(f"A: adding {len(p['added']):,} documents")
        with C.Phase() as ph, _Count(encoder) as cnt:
            rep = _ingest(a, p["added"], args.ingest_batch)
        steps["add"] = {**ph.as_dict(), "encoded": cnt.texts, "upserted": rep.upserted}
        _log(f"A: deleting {len(p['deleted'])} documents")
        with C.Phase() as ph, _Count(encoder) as cnt:
            res = a.delete(p["deleted"])
        steps["delete"] = {**ph.as_dict(), "encoded": cnt.texts, "deleted": res.deleted}
        _log(f"A: updating {len(p['updates'])} documents")
        with C.Phase() as ph, _Count(encoder) as cnt:
            res = a.upsert(p["updates"])
        steps["update"] = {**ph.as_dict(), "encoded": cnt.texts, "upserted": res.upserted}
        steps["total"] = {"seconds": round(sum(s["seconds"] for s in steps.values()), 3),
                          "encoded": sum(s["encoded"] for s in steps.values())}
        out["a_increments"] = steps
        out["a_documents"] = len(a)

        # -- B: from scratch over the final corpus -------------------------------------
        _log(f"B: building from scratch over {len(p['final']):,} documents")
        with C.Phase() as ph, _Count(encoder) as cnt:
            b = Collection.create(work / "B", INDEXES)
            _ingest(b, p["final"], args.ingest_batch)
        out["b_full_build"] = {**ph.as_dict(), "encoded": cnt.texts}
        out["b_documents"] = len(b)
        out["increments_over_rebuild_time"] = (steps["total"]["seconds"]
                                               / out["b_full_build"]["seconds"])

        # -- compare ----------------------------------------------------------------------
        assert out["a_documents"] == out["b_documents"] == len(p["final"])
        names = ("bm25", "dense", "rrf")
        results = {}
        for label, coll in (("A", a), ("B", b)):
            _log(f"searching {label}")
            systems = {"bm25": coll.index("bm25"), "dense": coll.index("dense"),
                       "rrf": coll.retriever(["bm25", "dense"], depth=100)}
            results[label] = experiment(systems, dict(zip(qids, queries, strict=True)), qrels,
                                        k=K)
        comparisons = {name: compare(*(list(r.runs[name].values()) for r in results.values()))
                       for name in names}
        metrics = {name: {label: r.metrics[name] for label, r in results.items()}
                   for name in names}
        out["comparison"] = comparisons
        out["metrics"] = metrics
        out["stats"] = {"A": a.stats(), "B": b.stats()}
    finally:
        for coll in (a, b):
            if coll is not None:
                coll.close()
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def report(r: dict[str, Any]) -> None:
    C.print_machine(r["machine"])
    print(f"dataset: {r['dataset']} ({r['mode']} mode, seed {r['seed']}): corpus "
          f"{r['corpus_docs']:,} documents; A = {r['base_docs']:,} base, then "
          f"+{r['added_docs']:,} added, -{r['deleted_docs']} deleted, {r['updated_docs']} updated "
          f"-> {r['final_docs']:,}; B = from scratch over the same {r['final_docs']:,}; "
          f"indexes {r['indexes']}")
    print()
    print("time (encoder loaded and JVM started beforehand)")
    steps = r["a_increments"]
    rows = [("A: base build (90%)", r["a_base_build"])]
    rows += [(f"A: {name}", s) for name, s in steps.items() if name != "total"]
    rows += [("A: all increments", steps["total"]), ("B: full build", r["b_full_build"])]
    C.table(["step", "seconds", "docs encoded", "cpu/wall", "others' cpu"],
            [(n, s["seconds"], s["encoded"], s.get("cpu_ratio"),
              "-" if s.get("other_cpu_share") is None else f"{100 * s['other_cpu_share']:.0f}%")
             for n, s in rows])
    print(f"increments / full rebuild time: {r['increments_over_rebuild_time']:.3f}")
    print()
    print(f"A vs B on {r['queries']} test queries, top-{r['k']}")
    c = r["comparison"]
    C.table(["index", "identical top-100", "identical top-10", "same top-100 set",
             "max |score diff|", "by rank"],
            [(n, v["identical_top100_fraction"], v["identical_top10_fraction"],
              v["same_top100_set_fraction"], f"{v['max_abs_score_diff']:.3g}",
              f"{v['max_abs_score_diff_by_rank']:.3g}") for n, v in c.items()])
    print()
    print("effectiveness of A and B (modified corpus, so not comparable to beir_eval.py)")
    rows = []
    for name, by in r["metrics"].items():
        for label, m in by.items():
            rows.append((f"{name} {label}", m["nDCG@10"], m["R@100"], m["RR@10"]))
    C.table(["run", "nDCG@10", "R@100", "RR@10"], rows)
    print(f"load average at end {r['loadavg_end']}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="scifact")
    p.add_argument("--quick", action="store_true",
                   help="first 1,000 documents, 50 deletes and 50 updates (under 5 minutes)")
    p.add_argument("--docs", type=int, help="use only the first N documents of the corpus")
    p.add_argument("--delete", type=int, help="documents to delete (100; quick 50)")
    p.add_argument("--update", type=int, help="documents to update (100; quick 50)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--ingest-batch", type=int, default=1000)
    p.add_argument("--work", help="folder for collections A and B (default: temporary)")
    p.add_argument("--keep", action="store_true", help="keep the temporary collections")
    args = C.parse_args(p, argv, report)
    if args is None:
        return 0
    if args.quick:
        args.docs = args.docs or 1000
    result = run(args)
    return C.emit(result, args.json, report)


if __name__ == "__main__":
    sys.exit(main())
