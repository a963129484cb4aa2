"""Tune SEAL's scoring on held-out *train* queries of a fine-tuned model, never on test.

``genseek train seal --holdout N`` keeps N random train queries out of training and writes
their ids to the model's ``genseek_model.json``. This benchmark:

1. builds a SEAL index over the whole SciFact corpus with that model;
2. decodes the keys of the held-out queries once (``--beams``, with up to 100 unigram keys
   and 128 query keys, so that smaller settings are prefixes), cached in ``--keys`` so that a
   re-run skips decoding;
3. scores them under each setting of the scoring parameters (alpha, beta, rare_threshold,
   unigrams, max_query_keys), by coordinate ascent from the defaults: each parameter in turn
   takes the grid value with the best dev nDCG@10, for ``--rounds`` passes;
4. prints every setting tried, bm25 and dense on the same dev queries, and the best setting
   as ``k=v,...`` for ``generative.py --seal-params``;
5. tunes RRF weights on the same dev queries (bm25 fixed at 1, the others from
   ``WEIGHT_GRID``) for bm25 + dense and for bm25 + dense + SEAL at its best setting, so
   that both fusions get the same tuning; ``generative.py --dev-fusion`` applies them on test.

    python benchmarks/seal_dev.py --model $GENSEEK_CACHE/generative/seal-ft-800 --json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import _common as C

CACHED = C.cache("collections", "scifact")
GRID: dict[str, list[float]] = {
    "alpha": [0.5, 1.0, 1.5, 2.0, 3.0],
    "beta": [0.0, 0.5, 1.0],
    "rare_threshold": [200, 500, 2000, 8000, 32000],
    "unigrams": [0, 10, 20, 50, 100],
    "max_query_keys": [0, 8, 16, 32, 64, 128],
}
START = {"alpha": 2.0, "beta": 1.0, "rare_threshold": 2000, "unigrams": 20,
         "max_query_keys": 32}


def holdout(model_dir: Path) -> tuple[str, list[str]]:
    """``(split, query ids)`` kept out of training by ``genseek train --holdout``."""
    from genseek.errors import GenseekError

    meta_file = model_dir / "genseek_model.json"
    if not meta_file.is_file():
        raise GenseekError(f"{model_dir}: no genseek_model.json (not a genseek train output)")
    meta = json.loads(meta_file.read_text())
    held = meta.get("holdout") or {}
    if not held.get("queries"):
        raise GenseekError(f"{meta_file}: no held-out queries; train with --holdout N")
    return str(held.get("split", "train")), [str(q) for q in held["queries"]]


def save_keys(path: Path, keysets: list[Any], qids: list[str], beams: int) -> None:
    from genseek.atomic import atomic_write_json

    atomic_write_json(path, {"beams": beams, "queries": {q: {
        "beam": [[list(k), lp] for k, lp in ks.beam.items()],
        "unigrams": [[list(k), lp] for k, lp in ks.unigrams],
        "query": [[list(k), lp] for k, lp in ks.query]} for q, ks in zip(qids, keysets,
                                                                         strict=True)}})


def load_keys(path: Path, qids: list[str], beams: int) -> list[Any] | None:
    from genseek.retrievers.seal import KeySet

    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("beams") != beams or set(data.get("queries", {})) != set(qids):
        return None

    def pairs(rows: list) -> list[tuple[tuple[int, ...], float]]:
        return [(tuple(int(t) for t in k), float(lp)) for k, lp in rows]

    return [KeySet(dict(pairs(data["queries"][q]["beam"])), pairs(data["queries"][q]["unigrams"]),
                   pairs(data["queries"][q]["query"])) for q in qids]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path, help="a genseek train seal output")
    ap.add_argument("--beams", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2,
                    help="coordinate-ascent passes (0: score --start only)")
    ap.add_argument("--start", type=C.key_numbers, default={},
                    help="scoring parameters to start from as k=v,... (default: SEAL's "
                         "defaults); with --rounds 0 the setting that is scored and fused")
    ap.add_argument("--keys", type=Path, default=None,
                    help="decoded keys cache (default: MODEL/dev_keys_b{beams}.json)")
    ap.add_argument("--collection", type=Path, default=None,
                    help=f"SciFact collection with bm25 + dense (copied; default {CACHED}, "
                         "built there when missing)")
    ap.add_argument("--out", type=Path,
                    default=C.REPO / "benchmarks" / "results" / "seal_dev.json")
    ap.add_argument("--json", action="store_true", help="print the JSON result last")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.start) - set(GRID))
    if unknown:
        ap.error(f"--start: unknown parameter(s) {', '.join(unknown)}; expected {', '.join(GRID)}")
    # whole numbers as ints: the search schema is strict (rare_threshold=8000, not 8000.0)
    start = {**START, **{k: int(v) if v.is_integer() else v for k, v in args.start.items()}}
    C.quiet_libraries()
    import torch

    from genseek.errors import GenseekError

    torch.set_num_threads(2)
    try:
        split, dev = holdout(args.model)
    except GenseekError as exc:
        print(f"error: --model {exc}", file=sys.stderr)
        return 2
    info = C.machine()
    C.print_machine(info)
    folder = C.dataset_dir("scifact")
    from genseek.collection import Collection
    from genseek.data.readers import read_corpus, read_qrels, read_queries
    from genseek.evaluation import evaluate
    from genseek.models import load_lm
    from genseek.retrievers.seal import SealIndex
    from genseek.types import ChangeSet, Document, Hit

    qrels_all = read_qrels(folder, split)
    texts = read_queries(folder)
    qids = [q for q in dev if q in qrels_all and q in texts]
    qtexts = [texts[q] for q in qids]
    qrels = {q: qrels_all[q] for q in qids}
    keys_file = args.keys or args.model / f"dev_keys_b{args.beams}.json"
    collection = C.collection_option(args.collection)
    tmp = Path(tempfile.mkdtemp(prefix="genseek-seal-dev-"))
    runs: dict[str, dict[str, list[Hit]]] = {}
    timings: dict[str, Any] = {}
    try:
        shutil.copytree(collection, tmp / "scifact",
                        ignore=shutil.ignore_patterns("collection.lock"))
        with Collection.open(tmp / "scifact") as coll:
            for name in ("bm25", "dense"):
                runs[name] = dict(zip(qids, coll.index(name).search(qtexts, 100), strict=True))
        docs = tuple(Document(d.doc_id, d.title, d.text, version=i + 1)
                     for i, (_, d) in enumerate(read_corpus(folder / "corpus.jsonl")))
        lm = load_lm(str(args.model))
        with C.Phase() as ph:
            ix = SealIndex(tmp / "seal", {"model": str(args.model), "num_beams": args.beams},
                           lm=lm)
            ix.apply(ChangeSet(0, len(docs), docs))
            ix.commit(len(docs))
        timings["build"] = ph.as_dict()
        keysets = load_keys(keys_file, qids, args.beams)
        if keysets is None:
            keysets = []
            with C.Phase() as ph:
                for s in range(0, len(qtexts), 8):
                    keysets.extend(ix.decode(qtexts[s:s + 8], {
                        "unigrams": max(GRID["unigrams"]),
                        "max_query_keys": max(GRID["max_query_keys"])}))
                    print(f"decoded {len(keysets)}/{len(qtexts)}", file=sys.stderr)
            timings["decode"] = {**ph.as_dict(), "per_query_s": ph.seconds / len(qtexts)}
            save_keys(keys_file, keysets, qids, args.beams)
        tried: dict[str, float] = {}

        def score(setting: dict[str, float]) -> float:
            name = ",".join(f"{k}={setting[k]:g}" for k in GRID)
            if name not in tried:
                run = dict(zip(qids, ix.rank(keysets, 100, setting), strict=True))
                tried[name] = evaluate(run, qrels)["nDCG@10"]
                runs[name] = run
                print(f"{name}: {tried[name]:.4f}", file=sys.stderr)
            return tried[name]

        best = dict(start)
        best_score = score(best)
        for _ in range(args.rounds):
            for param, values in GRID.items():
                for v in values:
                    cand = {**best, param: v}
                    sc = score(cand)
                    if sc > best_score + 1e-9:
                        best, best_score = cand, sc
        ix.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    start_name = ",".join(f"{k}={start[k]:g}" for k in GRID)
    best_name = ",".join(f"{k}={best[k]:g}" for k in GRID)
    metrics = {n: evaluate(runs[n], qrels) for n in ("bm25", "dense", start_name, best_name)}
    # 5. fusion weights on the same dev queries, for the baseline and the SEAL fusion alike
    ranked = {n: [[(h.doc_id, h.score) for h in runs[n][q]] for q in qids]
              for n in ("bm25", "dense", best_name)}
    ranked["seal"] = ranked.pop(best_name)
    fusion: dict[str, Any] = {"grid": list(C.WEIGHT_GRID), "rrf_k": 60, "depth": 100}
    for label, names in (("bm25+dense", ["bm25", "dense"]),
                         ("seal+bm25+dense", ["bm25", "dense", "seal"])):
        weights, tuned, equal = C.best_rrf_weights(ranked, names, qids, qrels)
        fusion[label] = {"weights": dict(zip(names, weights, strict=True)),
                         "nDCG@10_tuned": tuned, "nDCG@10_equal_weights": equal}
    print(f"\nSciFact {split}, {len(qids)} held-out queries, beams {args.beams}, "
          f"model {args.model}")
    C.table(["setting", "dev nDCG@10"], sorted(tried.items(), key=lambda x: -x[1])[:15])
    print()
    ref = metrics["bm25"]["nDCG@10"]
    C.table(["run", "nDCG@10", "R@100", "vs bm25"],
            [(n, m["nDCG@10"], m["R@100"], m["nDCG@10"] / max(ref, 1e-9))
             for n, m in metrics.items()])
    print()
    C.table(["dev fusion (RRF k 60)", "weights", "equal weights", "tuned weights"],
            [(label, " ".join(f"{n}={w:g}" for n, w in fusion[label]["weights"].items()),
              fusion[label]["nDCG@10_equal_weights"], fusion[label]["nDCG@10_tuned"])
             for label in ("bm25+dense", "seal+bm25+dense")])
    print(f"\nbest: --seal-params {best_name}")
    result = {"benchmark": "seal-dev", "model": str(args.model), "split": split,
              "queries": len(qids), "beams": args.beams, "machine": info, "grid": GRID,
              "start": start, "best": best, "tried": tried, "metrics": metrics,
              "fusion": fusion, "timings": timings}
    from genseek.atomic import atomic_write_json

    atomic_write_json(args.out, result)
    if args.json:
        C.dump_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
