"""Vector indexes side by side: recall@10 vs latency vs memory (RAM and disk), and updates.

Indexes: faiss Flat (exact), HNSW32, IVF-PQ (48 bytes), genseek SPANN (a sweep of
search settings) and Microsoft SPTAG's SPANN (Debian ``python3-sptag``; skipped with
the reason printed when it cannot be imported), on

(a) ``real``: the MiniLM vectors of every shared dataset (``--datasets``), read from
    ``$GENSEEK_CACHE/collections/NAME/indexes/dense/vectors.sqlite``: a collection that is
    missing is built there first (``genseek index``, bm25 + dense, once; never re-encoded
    afterwards); queries are all the datasets' queries, encoded once and cached under
    ``$GENSEEK_CACHE/vectors/``; and
(b) ``synthetic``: clustered 384-d vectors (three-level Gaussian mixture) generated
    with numpy — 1,000,000 by default, 100,000 with ``--quick``.

Ground truth is faiss Flat (exact, in batches). Every index is searched one query at
a time on one thread (faiss ``omp_set_num_threads(1)``), so latencies compare.
RAM is what each structure keeps in memory (faiss: the serialised index; SPANN: heads
+ directory + version map + label lookup; SPTAG: its head index files), disk is the
bytes each writes. Updates: build SPANN on a base set, insert 20% new vectors and
delete 10% of the base, and compare recall@10 with an index rebuilt on the final set.

Rows from ``benchmarks/_vector_quality.py`` (MUVERA, RepCONC) are included when that
module exists. Usage::

    python benchmarks/vector_indexes.py --quick --json > benchmarks/results/vector_indexes_quick.json
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common
import numpy as np

from genseek.atomic import atomic_write_text
from genseek.cache import cache_root

CACHE = cache_root() / "vectors"
DATASETS = ("scifact", "cisi", "cranfield", "cacm", "npl")
DIM = 384


# -- data ----------------------------------------------------------------------------------


def real_vectors(datasets: Sequence[str] = DATASETS) -> tuple[np.ndarray, list[str]]:
    """The stored MiniLM document vectors ``[n, 384]`` of ``datasets`` (each collection built
    in the cache first when it is missing) and the datasets used: those in the datasets
    folder; the others are left out with a note, and none at all is an error."""
    parts, names = [], []
    for name in datasets:
        if not (_common.datasets_root() / name / "corpus.jsonl").is_file():
            print(f"note: no dataset {name} in {_common.datasets_root()}; left out",
                  file=sys.stderr)
            continue
        db = _common.collection(name) / "indexes" / "dense" / "vectors.sqlite"
        if not db.is_file():
            sys.exit(f"error: {db} missing: the dense index of {name} stores no vectors")
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rows = con.execute("SELECT vec FROM vectors ORDER BY label").fetchall()
        con.close()
        if not rows:
            sys.exit(f"error: {db} holds no vectors")
        parts.append(np.frombuffer(b"".join(r[0] for r in rows), np.float32).reshape(-1, DIM))
        names.append(name)
    if not parts:
        sys.exit(f"error: none of the datasets {', '.join(datasets)} is in "
                 f"{_common.datasets_root()} (set GENSEEK_DATASETS, or choose --datasets)")
    return np.ascontiguousarray(np.concatenate(parts)), names


def real_queries(names: list[str]) -> np.ndarray:
    """MiniLM vectors ``[nq, 384]`` of all queries of the datasets, encoded once and cached."""
    from genseek.data.readers import read_queries
    from genseek.encoders import DEFAULT_MODEL, shared_encoder

    CACHE.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        path = CACHE / f"queries_{name}.npy"
        if not path.exists():
            queries = read_queries(_common.dataset_dir(name))
            texts = [queries[q] for q in queries]
            vecs = shared_encoder(DEFAULT_MODEL).encode(texts, 64)
            np.save(path, vecs)
            (CACHE / f"queries_{name}.json").write_text(json.dumps(list(queries)))
        out.append(np.load(path, allow_pickle=False))
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def real_set(datasets: Sequence[str], args: argparse.Namespace
             ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(vectors, queries, datasets used)`` of the real set; with ``--quick`` or
    ``--real-queries`` a fixed random sample of the queries (400 by default)."""
    x, names = real_vectors(datasets)
    q = real_queries(names)
    if args.real_queries or args.quick:
        q = q[np.random.default_rng(0).permutation(len(q))[:args.real_queries or 400]]
    return x, q, names


def synthetic(n: int, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered vectors ``[n, 384]`` and queries ``[nq, 384]`` (float32).

    Three levels: ``n / 1000`` top centres (sigma 1), 100 sub-centres per top centre
    (sigma 0.5), points around sub-centres (sigma 0.25); queries are drawn the same way.
    """
    rng = np.random.default_rng(seed)
    n_top = max(n // 1000, 10)
    top = rng.normal(size=(n_top, DIM)).astype(np.float32)
    sub = (np.repeat(top, 100, axis=0)
           + 0.5 * rng.normal(size=(n_top * 100, DIM)).astype(np.float32))

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, DIM), np.float32)
        for s in range(0, m, 100_000):
            e = min(m, s + 100_000)
            which = rng.integers(len(sub), size=e - s)
            out[s:e] = sub[which] + 0.25 * rng.normal(size=(e - s, DIM)).astype(np.float32)
        return out

    return draw(n), draw(nq)


def ground_truth(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    import faiss

    faiss.omp_set_num_threads(2)
    index = faiss.IndexFlatL2(x.shape[1])
    for s in range(0, len(x), 200_000):
        index.add(x[s:s + 200_000])
    out = []
    for s in range(0, len(q), 256):
        out.append(index.search(q[s:s + 256], k)[1])
    return np.concatenate(out)


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    hits = [len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth,
                                                                             strict=True)]
    return float(np.mean(hits) / k)


# -- measurement ---------------------------------------------------------------------------


def timed_search(search, q: np.ndarray, k: int) -> tuple[np.ndarray, dict[str, float]]:
    """Search one query at a time; ids ``[nq, k]`` and latency statistics in ms."""
    out = np.full((len(q), k), -1, np.int64)
    lat = []
    for i in range(len(q)):
        t = time.perf_counter()
        ids = search(q[i:i + 1], k)
        lat.append((time.perf_counter() - t) * 1000)
        out[i, :ids.shape[1]] = ids[0]
    return out, {"mean_ms": float(np.mean(lat)), "p50_ms": _common.percentile(lat, 50),
                 "p99_ms": _common.percentile(lat, 99)}


def row(dataset: str, method: str, setting: str, ids: np.ndarray, truth: np.ndarray,
        lat: dict[str, float], ram: int, disk: int, build_s: float, flat_ram: int) -> dict:
    r = {"dataset": dataset, "method": method, "setting": setting,
         "recall@10": round(recall_at(ids, truth), 4), **{k: round(v, 3) for k, v in lat.items()},
         "ram_bytes": int(ram), "disk_bytes": int(disk),
         "ram_vs_flat": round(ram / flat_ram, 4), "build_s": round(build_s, 1)}
    print(f"  {dataset:9s} {method:8s} {setting:28s} recall@10 {r['recall@10']:.4f} "
          f"{r['mean_ms']:8.3f} ms  RAM {ram / 2**20:8.1f} MiB ({r['ram_vs_flat']:.3f} x Flat)"
          f"  disk {disk / 2**20:8.1f} MiB  build {build_s:.1f} s", file=sys.stderr, flush=True)
    return r


def faiss_rows(dataset: str, x: np.ndarray, q: np.ndarray, truth: np.ndarray, quick: bool,
               skip_hnsw: bool, flat_only: bool = False) -> tuple[list[dict], int]:
    import faiss

    rows = []
    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    flat = faiss.IndexFlatL2(DIM)
    flat.add(x)
    build = time.perf_counter() - t
    flat_ram = int(faiss.serialize_index(flat).nbytes)
    faiss.omp_set_num_threads(1)
    ids, lat = timed_search(lambda v, k: flat.search(v, k)[1], q, 10)
    rows.append(row(dataset, "Flat", "exact", ids, truth, lat, flat_ram, flat_ram, build, flat_ram))
    flat.reset()
    if flat_only:
        return rows, flat_ram
    if not skip_hnsw:
        faiss.omp_set_num_threads(2)
        t = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(DIM, 32)
        hnsw.hnsw.efConstruction = 40
        hnsw.add(x)
        build = time.perf_counter() - t
        size = int(faiss.serialize_index(hnsw).nbytes)
        faiss.omp_set_num_threads(1)
        for ef in (16, 32, 64, 128):
            hnsw.hnsw.efSearch = ef
            ids, lat = timed_search(lambda v, k: hnsw.search(v, k)[1], q, 10)
            rows.append(row(dataset, "HNSW32", f"efSearch={ef}", ids, truth, lat, size, size,
                            build, flat_ram))
        hnsw.reset()
    faiss.omp_set_num_threads(2)
    nlist = int(4 * np.sqrt(len(x)))
    t = time.perf_counter()
    ivf = faiss.index_factory(DIM, f"IVF{nlist},PQ48")
    rng = np.random.default_rng(0)
    ivf.train(x[rng.choice(len(x), size=min(len(x), max(50 * nlist, 20_000)), replace=False)])
    ivf.add(x)
    build = time.perf_counter() - t
    size = int(faiss.serialize_index(ivf).nbytes)
    faiss.omp_set_num_threads(1)
    for nprobe in (8, 32, 128):
        ivf.nprobe = nprobe
        ids, lat = timed_search(lambda v, k: ivf.search(v, k)[1], q, 10)
        rows.append(row(dataset, "IVF-PQ", f"IVF{nlist},PQ48 nprobe={nprobe}", ids, truth, lat,
                        size, size, build, flat_ram))
    return rows, flat_ram


SPANN_SWEEP = ((8, 1.0), (16, 1.0), (32, 1.0), (64, 1.0), (32, 0.3), (64, 0.5))


def spann_rows(dataset: str, x: np.ndarray, q: np.ndarray, truth: np.ndarray, workdir: Path,
               flat_ram: int, codec: str = "fp16", sweep=SPANN_SWEEP) -> list[dict]:
    from genseek.indexers.spann import SpannEngine

    rows = []
    t = time.perf_counter()
    eng = SpannEngine(workdir / f"spann-{dataset}-{codec}", DIM,
                      {"codec": codec, "head_ratio": 0.1})
    eng.build(x, np.arange(len(x)))
    eng.save()
    build = time.perf_counter() - t
    ram, disk = eng.memory_bytes(), eng.disk_bytes()
    st = eng.stats()
    print(f"  spann {dataset}: {st['heads']} heads, {st['replicas_per_vector']:.2f} replicas "
          f"per vector, mean posting {st['mean_posting']:.1f}", file=sys.stderr)
    for nprobe, eps in sweep:
        ids, lat = timed_search(lambda v, k, p=nprobe, e=eps: eng.search(v, k, nprobe=p, eps=e)[1],
                                q, 10)
        rows.append(row(dataset, "SPANN", f"{codec} nprobe={nprobe} eps={eps}", ids, truth, lat,
                        ram, disk, build, flat_ram))
    eng.close()
    return rows


def sptag_rows(dataset: str, x: np.ndarray, q: np.ndarray, truth: np.ndarray, workdir: Path,
               flat_ram: int, max_n: int) -> tuple[list[dict], str | None]:
    import _sptag as sptag

    ok, reason = sptag.available()
    if not ok:
        return [], reason
    if len(x) > max_n:
        return [], (f"SPTAG's SPANN build is not run on {len(x):,} vectors: it took 263 s for "
                    f"22,673 384-d vectors on this 2-core machine (load average ~20), about "
                    f"{len(x) / 22673 * 263 / 60:.0f} min extrapolated linearly; raise --sptag-max "
                    "to force it")
    t = time.perf_counter()
    index = sptag.SptagSpann(workdir / f"sptag-{dataset}", DIM, head_ratio=0.1)
    index.build(x)
    build = time.perf_counter() - t
    rows = []
    for internal in (8, 16, 32, 64):
        ids, lat = timed_search(lambda v, k, n=internal: index.search(v, k, n), q, 10)
        rows.append(row(dataset, "SPTAG", f"SearchInternalResultNum={internal}", ids, truth, lat,
                        index.memory_bytes(), index.disk_bytes(), build, flat_ram))
    return rows, None


def record_dataset(result: dict[str, Any], dataset: str, rows: list[dict], x: np.ndarray,
                   q: np.ndarray, truth: np.ndarray, workdir: Path, flat_ram: int,
                   sptag_max: int, **facts: Any) -> None:
    """Add SPTAG's rows (or the note why it was skipped) to ``rows`` and record the
    dataset's rows, size, ``facts``, notes and goal line in ``result``."""
    sp, reason = sptag_rows(dataset, x, q, truth, workdir, flat_ram, sptag_max)
    rows += sp
    notes = [f"SPTAG skipped: {reason}"] if reason else []
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    result["rows"] += rows
    result["datasets"][dataset] = {"n": len(x), "nq": len(q), **facts, "notes": notes,
                                   "goal": goal_line(rows)}


def update_rows(dataset: str, x: np.ndarray, q: np.ndarray, workdir: Path, nprobe: int,
                eps: float) -> dict[str, Any]:
    """Build on 100/120 of ``x``, insert the other 20/120 (20%), delete 10% of the base."""
    from genseek.indexers.spann import SpannEngine

    n = len(x)
    n_base = int(n / 1.2)
    labels = np.arange(n)
    base, new = labels[:n_base], labels[n_base:]
    rng = np.random.default_rng(1)
    gone = rng.choice(base, size=n_base // 10, replace=False)
    final = np.setdiff1d(labels, gone)
    truth = final[ground_truth(x[final], q, 10)]
    eng = SpannEngine(workdir / f"upd-{dataset}", DIM, {"head_ratio": 0.1})
    eng.build(x[base], base)
    t = time.perf_counter()
    batch = 1000
    for s in range(0, len(new), batch):
        eng.insert(x[new[s:s + batch]], new[s:s + batch])
    ins_s = time.perf_counter() - t
    t = time.perf_counter()
    for s in range(0, len(gone), batch):
        eng.delete(gone[s:s + batch])
    del_s = time.perf_counter() - t
    ids, lat = timed_search(lambda v, k: eng.search(v, k, nprobe=nprobe, eps=eps)[1], q, 10)
    updated = recall_at(ids, truth)
    assert not np.isin(ids, gone).any(), "a deleted vector came back"
    st = eng.stats()
    eng.close()
    fresh = SpannEngine(workdir / f"fresh-{dataset}", DIM, {"head_ratio": 0.1})
    fresh.build(x[final], final)
    ids2, lat2 = timed_search(lambda v, k: fresh.search(v, k, nprobe=nprobe, eps=eps)[1], q, 10)
    rebuilt = recall_at(ids2, truth)
    fresh.close()
    out = {"dataset": dataset, "base": int(n_base), "inserted": int(len(new)),
           "deleted": int(len(gone)), "setting": f"nprobe={nprobe} eps={eps}",
           "recall_updated": round(updated, 4), "recall_rebuilt": round(rebuilt, 4),
           "delta_points": round(100 * (updated - rebuilt), 2),
           "insert_per_s": round(len(new) / ins_s, 1), "delete_per_s": round(len(gone) / del_s, 1),
           "mean_ms_updated": round(lat["mean_ms"], 3), "mean_ms_rebuilt": round(lat2["mean_ms"], 3),
           "splits": st["splits"], "reassigned": st["reassigned"]}
    print(f"  updates {dataset}: {out}", file=sys.stderr, flush=True)
    return out


# -- report --------------------------------------------------------------------------------


def report(result: dict[str, Any]) -> None:
    _common.print_machine(result["machine"])
    print(f"command: {result['command']}\n")
    for dataset in result["datasets"]:
        info = result["datasets"][dataset]
        print(f"== {dataset}: {info['n']:,} vectors x {DIM}, {info['nq']} queries ==")
        _common.table(["method", "setting", "recall@10", "mean ms", "p99 ms", "RAM MiB",
                       "RAM/Flat", "disk MiB", "build s"],
                      [[r["method"], r["setting"], r["recall@10"], r["mean_ms"], r["p99_ms"],
                        r["ram_bytes"] / 2**20, r["ram_vs_flat"], r["disk_bytes"] / 2**20,
                        r["build_s"]] for r in result["rows"] if r["dataset"] == dataset])
        for note in info.get("notes", []):
            print(f"note: {note}")
        goal = info.get("goal")
        if goal:
            print(f"goal: {goal}")
        print()
    if result["updates"]:
        print("== SPANN updates (insert 20%, delete 10%) vs a rebuilt index ==")
        _common.table(["dataset", "setting", "recall updated", "recall rebuilt", "delta pts",
                       "inserts/s", "deletes/s", "splits", "reassigned"],
                      [[u["dataset"], u["setting"], u["recall_updated"], u["recall_rebuilt"],
                        u["delta_points"], u["insert_per_s"], u["delete_per_s"], u["splits"],
                        u["reassigned"]] for u in result["updates"]])
        print()
    for name in ("repconc", "muvera"):
        if result.get(name):
            print(f"== {name} (benchmarks/_vector_quality.py) ==")
            keys = list(result[name][0])
            _common.table(keys, [[r.get(k) for k in keys] for r in result[name]])
            print()


def goal_line(rows: list[dict]) -> str:
    """SPANN's fastest setting with recall >= 0.90 vs SPTAG's fastest such setting."""
    ok = [r for r in rows if r["method"] == "SPANN" and r["recall@10"] >= 0.90]
    if not ok:
        return "SPANN reaches no recall@10 >= 0.90 in the sweep"
    best = min(ok, key=lambda r: r["mean_ms"])
    text = (f"SPANN {best['setting']}: recall@10 {best['recall@10']:.4f} at "
            f"{best['mean_ms']:.3f} ms, RAM {best['ram_vs_flat']:.3f} x Flat")
    sp = [r for r in rows if r["method"] == "SPTAG" and r["recall@10"] >= best["recall@10"] - 0.01]
    if sp:
        s = min(sp, key=lambda r: r["mean_ms"])
        text += (f"; SPTAG {s['setting']}: recall@10 {s['recall@10']:.4f} at {s['mean_ms']:.3f} ms"
                 f" ({s['mean_ms'] / best['mean_ms']:.2f}x SPANN's latency)")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="100k synthetic vectors, fewer queries (a few minutes)")
    parser.add_argument("--synthetic", type=int, default=None,
                        help="synthetic vectors (default 1,000,000; 100,000 with --quick)")
    parser.add_argument("--queries", type=int, default=None,
                        help="synthetic queries (default 500; 200 with --quick)")
    parser.add_argument("--real-queries", type=int, default=None,
                        help="real queries used (default all; 400 with --quick)")
    parser.add_argument("--sptag-max", type=int, default=30_000,
                        help="largest set SPTAG is built on (its build is slow here)")
    parser.add_argument("--skip-hnsw-above", type=int, default=2_000_000,
                        help="skip HNSW32 on sets larger than this")
    parser.add_argument("--only", choices=("real", "synthetic", "updates"),
                        default=None, help="one part only (updates: the update experiments)")
    parser.add_argument("--no-faiss-ann", action="store_true",
                        help="on the synthetic set, run only Flat of the faiss indexes")
    parser.add_argument("--no-quality", action="store_true",
                        help="leave out the MUVERA / RepCONC rows of _vector_quality.py")
    parser.add_argument("--workdir", default=None, help="where indexes are built (a temp dir)")
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help="datasets whose MiniLM vectors make the real set (each collection "
                             "is built in $GENSEEK_CACHE/collections when missing)")
    _common.add_output_options(parser)
    args = parser.parse_args(argv)
    if args.report:
        return _common.emit(_common.load_json(args.report), False, report)
    _common.quiet_libraries()
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    n_syn = args.synthetic or (100_000 if args.quick else 1_000_000)
    nq_syn = args.queries or (200 if args.quick else 500)
    result: dict[str, Any] = {"machine": _common.machine(), "command": " ".join(sys.argv),
                              "rows": [], "datasets": {}, "updates": []}
    tmp = tempfile.TemporaryDirectory(dir=args.workdir)
    work = Path(tmp.name)
    t0 = time.perf_counter()
    if args.only in (None, "real"):
        x, q, names = real_set(datasets, args)
        print(f"real: {len(x):,} vectors from {', '.join(names)}; {len(q)} queries",
              file=sys.stderr)
        truth = ground_truth(x, q, 10)
        rows, flat_ram = faiss_rows("real", x, q, truth, args.quick, False)
        rows += spann_rows("real", x, q, truth, work, flat_ram)
        if not args.quick:
            rows += spann_rows("real", x, q, truth, work, flat_ram, "int8",
                               ((32, 1.0), (64, 1.0)))
        record_dataset(result, "real", rows, x, q, truth, work, flat_ram, args.sptag_max,
                       sources=names)
        result["updates"].append(update_rows("real", x, q, work, 32, 1.0))
    if args.only in (None, "synthetic"):
        t = time.perf_counter()
        x, q = synthetic(n_syn, nq_syn)
        truth = ground_truth(x, q, 10)
        print(f"synthetic: {len(x):,} vectors, {len(q)} queries, generated + ground truth in "
              f"{time.perf_counter() - t:.0f} s", file=sys.stderr)
        rows, flat_ram = faiss_rows("synthetic", x, q, truth, args.quick,
                                    len(x) > args.skip_hnsw_above, args.no_faiss_ann)
        rows += spann_rows("synthetic", x, q, truth, work, flat_ram)
        record_dataset(result, "synthetic", rows, x, q, truth, work, flat_ram, args.sptag_max)
        n_upd = min(len(x), 120_000)
        result["updates"].append(update_rows("synthetic", x[:n_upd], q, work, 32, 1.0))
        del x
    if args.only == "updates":
        x, q, _ = real_set(datasets, args)
        result["updates"].append(update_rows("real", x, q, work, 32, 1.0))
        x, q = synthetic(n_syn, nq_syn)
        result["updates"].append(update_rows("synthetic", x[:120_000], q, work, 32, 1.0))
    if not args.no_quality and args.only is None and (_common.REPO / "benchmarks" / "_vector_quality.py").exists():
        import _vector_quality

        for name in ("repconc", "muvera"):
            try:
                result[name] = getattr(_vector_quality, f"run_{name}")(args)
            except Exception as exc:  # noqa: BLE001 - another module's failure is reported
                result[name] = [{"error": f"{type(exc).__name__}: {exc}"}]
    result["seconds"] = round(time.perf_counter() - t0, 1)
    tmp.cleanup()
    out = _common.REPO / "benchmarks" / "results" / \
        f"vector_indexes{'_quick' if args.quick else ''}{'_' + args.only if args.only else ''}.json"
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    return _common.emit(result, args.json, report)


if __name__ == "__main__":
    raise SystemExit(main())
