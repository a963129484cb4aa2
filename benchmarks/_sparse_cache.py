"""Encoded-corpus cache for benchmarks/sparse.py: SPLADE document vectors, never re-encoded.

A cache is a folder ``$GENSEEK_CACHE/sparse/<key>/`` holding ``part-NNNNN.npz`` files (numpy,
no pickle) with ``doc_ids`` (unicode ``[n]``), ``offsets`` (int64 ``[n + 1]``), ``ids``
(int32 ``[nnz]``) and ``weights`` (float32 ``[nnz]``): document ``i``'s terms are
``ids[offsets[i]:offsets[i + 1]]``, heaviest first, unpruned. Parts are written atomically
as encoding goes, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from genseek.cache import cache_root

CACHE_ROOT = cache_root() / "sparse"
PART = 256


def cache_key(model: str, max_length: int, dataset: str, windows: int = 1) -> str:
    name = Path(model).name if os.sep in model else model
    return f"{dataset}-{name}-L{max_length}" + (f"-W{windows}" if windows > 1 else "")


def corpus_idf_table(model: str, dataset: str, docs: Sequence) -> Path:
    """``CACHE_ROOT/<dataset>-<model>-idf.json``: the corpus IDF of ``docs`` (``Document``s)
    under ``model``'s tokenizer (``genseek.encoders.corpus_idf``, the table ``genseek train
    sparse`` starts from), computed once."""
    from genseek.encoders import corpus_idf, save_idf, shared_sparse_encoder

    name = Path(model).name if os.sep in model else model
    path = CACHE_ROOT / f"{dataset}-{name}-idf.json"
    if not path.is_file():
        print(f"computing the corpus IDF table {path} ({len(docs):,} documents)",
              file=sys.stderr, flush=True)
        enc = shared_sparse_encoder(model)
        save_idf(path, enc.vocab, corpus_idf(enc.tokenizer, [d.contents for d in docs]))
    return path


def _save_part(path: Path, doc_ids: Sequence[str],
               vecs: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
    offsets = np.zeros(len(vecs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(i) for i, _ in vecs])
    ids = np.concatenate([i for i, _ in vecs]).astype(np.int32) if vecs else np.zeros(0, np.int32)
    ws = np.concatenate([w for _, w in vecs]).astype(np.float32) if vecs else np.zeros(0, np.float32)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, doc_ids=np.asarray(list(doc_ids), dtype=str), offsets=offsets, ids=ids,
             weights=ws)
    os.replace(tmp, path)


def load_cache(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{doc_id: (ids int64 [n], weights float32 [n])}`` of every part in ``folder``."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for part in sorted(folder.glob("part-*.npz")):
        if part.name.endswith(".tmp.npz"):
            continue
        with np.load(part, allow_pickle=False) as z:
            doc_ids, offsets, ids, ws = z["doc_ids"], z["offsets"], z["ids"], z["weights"]
        for k, doc_id in enumerate(doc_ids.tolist()):
            a, b = int(offsets[k]), int(offsets[k + 1])
            out[doc_id] = (ids[a:b].astype(np.int64), ws[a:b])
    return out


def encode_cached(encoder, docs: Sequence[tuple[str, str]], folder: Path, batch_size: int = 16,
                  shard: tuple[int, int] = (0, 1)
                  ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """Vectors of ``docs`` (``(doc_id, text)``), encoding only those not cached yet.

    ``shard=(i, n)`` encodes only the missing documents ``j`` with ``j % n == i`` (parts
    named ``part-s<i>-...``), so ``n`` processes can fill one cache side by side.

    Returns the vectors and ``{"encoded": n, "seconds": s, "docs_per_s": r}`` for the
    documents encoded by this call (``encoded == 0`` when everything was cached).
    """
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / "meta.json"
    if not meta.exists():
        meta.write_text(json.dumps({"model": encoder.name, "max_length": encoder.max_length,
                                    "windows": encoder.windows}))
    have = load_cache(folder)
    todo = [(i, t) for j, (i, t) in enumerate(docs) if i not in have and j % shard[1] == shard[0]]
    prefix = "part-" if shard == (0, 1) else f"part-s{shard[0]}-"
    done, seconds = 0, 0.0
    if todo:
        from tqdm import tqdm

        n_parts = len(list(folder.glob(f"{prefix}*.npz")))
        bar = tqdm(total=len(todo), desc=f"encode {folder.name}", unit="doc", file=sys.stderr)
        for start in range(0, len(todo), PART):
            chunk = todo[start:start + PART]
            t0 = time.perf_counter()
            vecs = encoder.encode_ids([t for _, t in chunk], batch_size=batch_size)
            seconds += time.perf_counter() - t0
            _save_part(folder / f"{prefix}{n_parts:05d}.npz", [i for i, _ in chunk], vecs)
            n_parts += 1
            for (doc_id, _), v in zip(chunk, vecs, strict=True):
                have[doc_id] = v
            done += len(chunk)
            bar.update(len(chunk))
        bar.close()
    rate = done / seconds if seconds else None
    return have, {"encoded": done, "seconds": round(seconds, 2), "docs_per_s": rate}


def main(argv: list[str] | None = None) -> int:
    """Fill a cache from the command line, e.g. in several processes side by side::

        python benchmarks/_sparse_cache.py --model $GENSEEK_CACHE/sparse/if-scifact --shard 0/3
    """
    import argparse

    import _common as C

    from genseek.data.readers import read_corpus
    from genseek.encoders import SparseEncoder

    p = argparse.ArgumentParser(description="encode a BEIR corpus into the sparse cache")
    p.add_argument("--model", default="splade-tiny")
    p.add_argument("--dataset", default="scifact")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--windows", type=int, default=1,
                   help="max_length windows per document, max-pooled (1 = truncate)")
    p.add_argument("--shard", default="0/1", help="I/N: this process encodes shard I of N")
    args = p.parse_args(argv)
    i, n = (int(x) for x in args.shard.split("/"))
    docs = [(d.doc_id, d.contents) for _, d in read_corpus(C.dataset_dir(args.dataset))]
    enc = SparseEncoder(args.model, max_length=args.max_length, windows=args.windows)
    folder = CACHE_ROOT / cache_key(args.model, args.max_length, args.dataset, args.windows)
    vecs, info = encode_cached(enc, docs, folder, shard=(i, n))
    print(json.dumps({"cached": len(vecs), **info}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
