"""``genseek train repconc``: RepCONC product quantisation trained for retrieval.

Zhan et al., "Learning Discrete Representations via Constrained Clustering for Effective
and Efficient Dense Retrieval" (WSDM 2022), on CPU, with the document encoder frozen (the
stored MiniLM document vectors are reused, never re-encoded):

1. warm start: faiss OPQ (rotation ``R [d, d]``) + PQ codebooks ``C [M, K, d/M]`` on the
   document vectors; ``M`` = bytes per document (8-bit codes, ``K = 256``);
2. per epoch, assign every rotated document ``y = R x`` to one centroid per subspace under
   the uniform-clustering constraint (Sinkhorn optimal transport, kernels/sinkhorn.py);
3. train the codebooks jointly with a query-side linear projection ``W [d, d]`` (initialised
   to ``R``) with a contrastive loss: softmax over every document of the corpus (the
   positives from the train qrels against all in-corpus negatives) of
   ``<W q, sum_m C[m, code_m(d)]> / tau``, plus ``mse_weight`` times the reconstruction
   error ``||R x - quantised(x)||^2`` that keeps centroids near their members;
4. select the epoch by nDCG@10 on held-out train queries (the test split is never read),
   scoring documents encoded as the index will encode them (nearest centroid);
5. write the model folder: ``config.json``, ``rotation.npy``, ``codebooks.npy``,
   ``query_proj.npy`` (+ ``training.json``), which ``repconc(model=FOLDER)`` names.

Time is bounded by ``--max-minutes`` (default 10): training stops after the epoch that
passes it. The loop is :mod:`genseek.training`'s (checkpoints in ``OUT/checkpoint``,
``--resume``, ``--device auto``: a GPU when there is one). Typical SciFact run (809 train
queries, 5,183 documents, 48 bytes): see benchmarks/RESULTS.md section 11.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genseek.errors import GenseekError

if TYPE_CHECKING:
    from genseek.training import Checkpoint

MODEL_FILES = ("config.json", "rotation.npy", "codebooks.npy", "query_proj.npy")


# -- model folder ------------------------------------------------------------------------------

def save_model(folder: Path, rotation: np.ndarray, codebooks: np.ndarray,
               query_proj: np.ndarray, config: dict[str, Any], *,
               log: list[dict[str, Any]] | None = None, keep_checkpoint: bool = False) -> None:
    """Write a model folder atomically (files to a temp folder, then one rename:
    :func:`genseek.training.save_folder`).

    ``rotation``: ``[d, d]`` (document side, ``y = x @ rotation.T``); ``codebooks``:
    ``[M, K, d / M]``; ``query_proj``: ``[d, d]`` (``q' = q @ query_proj.T``); ``log``: the
    training log, written as ``training.json``; ``keep_checkpoint``: keep the old folder's
    checkpoint (a run its time budget stopped).
    """
    from genseek.training import save_folder, write_meta

    def write(tmp: Path) -> None:
        np.save(tmp / "rotation.npy", rotation.astype(np.float32))
        np.save(tmp / "codebooks.npy", codebooks.astype(np.float32))
        np.save(tmp / "query_proj.npy", query_proj.astype(np.float32))
        write_meta(tmp, "config.json", config)
        if log is not None:
            write_meta(tmp, "training.json", log)

    save_folder(Path(folder), write, keep_checkpoint=keep_checkpoint)


def load_model(folder: Path) -> dict[str, Any]:
    """``{"config", "rotation" [d, d], "codebooks" [M, K, dsub], "query_proj" [d, d]}``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GenseekError(f"repconc: model folder {folder} does not exist")
    for name in MODEL_FILES:
        if not (folder / name).is_file():
            raise GenseekError(f"repconc: model folder {folder} lacks {name}")
    try:
        config = json.loads((folder / "config.json").read_text())
        arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False)
                  for name in ("rotation", "codebooks", "query_proj")}
    except (ValueError, OSError, EOFError) as exc:
        raise GenseekError(f"repconc: cannot read model folder {folder}: {exc}") from None
    dim, m = int(config.get("dim", -1)), int(config.get("bytes", -1))
    rot, cb, qp = arrays["rotation"], arrays["codebooks"], arrays["query_proj"]
    if (m <= 0 or dim <= 0 or dim % m or rot.shape != (dim, dim) or qp.shape != (dim, dim)
            or cb.shape != (m, 256, dim // m)):
        raise GenseekError(f"repconc: model folder {folder} is inconsistent: config dim={dim} "
                           f"bytes={m}, rotation {list(rot.shape)}, codebooks {list(cb.shape)}, "
                           f"query_proj {list(qp.shape)}")
    for name, arr in arrays.items():
        if not np.all(np.isfinite(arr)):
            raise GenseekError(f"repconc: {folder / (name + '.npy')} holds NaN or infinite values")
    return {"config": config, **arrays}


# -- warm start and quantisation ----------------------------------------------------------------

def opq_warm_start(x: np.ndarray, m: int, seed: int = 0,
                   iters: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """faiss OPQ (``iters`` rounds) on ``x [n, d]``: ``(rotation [d, d], codebooks [m, 256, d/m])``.

    faiss uses its own thread count (OMP_NUM_THREADS): nothing is forced here.
    """
    import faiss

    d = x.shape[1]
    if d % m:
        raise GenseekError(f"repconc: bytes per document ({m}) must divide the dimension ({d})")
    if len(x) < 256:
        raise GenseekError(f"repconc: training needs at least 256 document vectors, got {len(x)}")
    opq = faiss.OPQMatrix(d, m)
    opq.niter = iters
    opq.verbose = False
    inner = faiss.ProductQuantizer(d, m, 8)  # OPQ's own PQ; kept referenced while training
    inner.cp.min_points_per_centroid = 1  # small corpora are expected: no warning per subspace
    inner.cp.seed = seed
    opq.pq = inner
    pq = faiss.ProductQuantizer(d, m, 8)
    pq.cp.min_points_per_centroid = 1
    opq.train(np.ascontiguousarray(x, dtype=np.float32))
    rotation = faiss.vector_to_array(opq.A).reshape(d, d)
    y = np.ascontiguousarray(x @ rotation.T, dtype=np.float32)
    pq.cp.seed = seed
    pq.train(y)
    codebooks = faiss.vector_to_array(pq.centroids).reshape(m, 256, d // m)
    return rotation.astype(np.float32), codebooks.astype(np.float32)


def nearest_codes(y, codebooks):
    """Nearest-centroid codes ``[n, M]`` of rotated vectors ``y [n, d]`` (torch tensors)."""
    import torch

    m, k, dsub = codebooks.shape
    ys = y.reshape(len(y), m, dsub).transpose(0, 1)  # [M, n, dsub]
    dist = torch.cdist(ys, codebooks)  # [M, n, K]
    return dist.argmin(dim=-1).T.contiguous()  # [n, M]


def balanced_codes(y, codebooks, epsilon: float, iters: int):
    """Codes ``[n, M]`` under the uniform-clustering constraint (Sinkhorn per subspace)."""
    import torch

    from genseek.kernels.sinkhorn import balanced_assign

    m, k, dsub = codebooks.shape
    ys = y.reshape(len(y), m, dsub).transpose(0, 1)  # [M, n, dsub]
    dist2 = torch.cdist(ys, codebooks).pow(2)  # [M, n, K]
    scale = dist2.std(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return balanced_assign(-dist2 / scale, epsilon, iters).T.contiguous()  # [n, M]


def quantise(codes, codebooks):
    """Reconstructions ``[n, d]`` from codes ``[n, M]`` and codebooks ``[M, K, dsub]``."""
    import torch

    m = codebooks.shape[0]
    parts = codebooks[torch.arange(m, device=codes.device)[None, :], codes]  # [n, M, dsub]
    return parts.reshape(len(codes), -1)


# -- data ----------------------------------------------------------------------------------------

def read_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    """``(doc ids, vectors [n, d])`` from a dense index's vectors.sqlite (label order)."""
    if not Path(path).is_file():
        raise GenseekError(f"repconc: no vectors file at {path}")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        rows = db.execute("SELECT doc_id, vec FROM vectors ORDER BY label").fetchall()
        dim_row = db.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()
        db.close()
    except sqlite3.Error as exc:
        raise GenseekError(f"repconc: cannot read {path}: {exc}") from None
    if not rows or dim_row is None:
        raise GenseekError(f"repconc: {path} holds no vectors")
    dim = int(dim_row[0])
    vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(-1, dim)
    return [r[0] for r in rows], vecs.copy()


def _ndcg10(scores: np.ndarray, qrels: list[dict[int, int]]) -> float:
    """Mean nDCG@10 of score rows ``[nq, n]`` against per-query ``{row: grade}``."""
    top = np.argsort(-scores, axis=1)[:, :10]
    total = 0.0
    for row, rel in zip(top, qrels, strict=True):
        dcg = sum(rel.get(int(d), 0) / math.log2(r + 2) for r, d in enumerate(row))
        ideal = sorted(rel.values(), reverse=True)[:10]
        idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
        total += dcg / idcg if idcg > 0 else 0.0
    return total / max(len(qrels), 1)


# -- training ------------------------------------------------------------------------------------

def train(doc_vecs: np.ndarray, query_vecs: np.ndarray, positives: list[dict[int, int]],
          m: int = 48, epochs: int = 30, lr: float = 1e-3, tau: float = 0.05,
          mse_weight: float = 1.0, epsilon: float = 0.05, sinkhorn_iters: int = 10,
          batch_size: int = 64, dev_fraction: float = 0.15, max_seconds: float = 600.0,
          seed: int = 0, progress: bool = True, opq_iters: int = 25, device: str | None = None,
          checkpoint: Checkpoint | None = None, every: int = 0) -> dict[str, Any]:
    """Train RepCONC on ``doc_vecs [n, d]``, ``query_vecs [nq, d]``, ``positives`` per query.

    Returns ``{"rotation", "codebooks", "query_proj", "log", "best_epoch", "dev_ndcg10", ...,
    "stopped_by"}``; epoch 0 is the OPQ warm start (its dev score is logged for comparison).
    The loop is :class:`genseek.training.Trainer` (Adam: AdamW without weight decay), epoch
    by epoch, on ``device`` (:func:`genseek.models.placement`; None: a GPU when present);
    ``checkpoint`` / ``every``: resumable checkpoints. The dev queries are
    :func:`genseek.training.holdout_rows`: the first ``dev_fraction`` of a permutation drawn
    from the training generator (seeded by ``seed``), as this recipe has always drawn them,
    so its recorded results stay reproducible.
    """
    import torch

    from genseek.models import placement
    from genseek.training import Batches, Trainer, holdout_rows

    where = placement(device, "float32")
    dev_t = where.torch_device()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    start = time.monotonic()
    # 1. OPQ warm start
    rotation, codebooks0 = opq_warm_start(doc_vecs, m, seed, opq_iters)
    y = torch.from_numpy(doc_vecs @ rotation.T).float().to(dev_t)  # [n, d] rotated documents
    q_all = torch.from_numpy(query_vecs).float().to(dev_t)  # [nq, d]
    dev, fit = holdout_rows(len(query_vecs), dev_fraction, rng)
    dev_rows = torch.as_tensor(dev, device=dev_t)
    pairs = [(int(qi), int(d)) for qi in fit for d in positives[qi]]  # (query, positive doc)
    if not pairs:
        raise GenseekError("repconc: no training pairs (queries with positive documents)")
    codebooks = torch.nn.Parameter(torch.from_numpy(codebooks0.copy()).to(dev_t))
    query_proj = torch.nn.Parameter(torch.from_numpy(rotation.copy()).to(dev_t))

    def dev_score() -> float:
        with torch.no_grad():
            recon = quantise(nearest_codes(y, codebooks.detach()), codebooks.detach())
            scores = (q_all[dev_rows] @ query_proj.detach().T) @ recon.T
        return _ndcg10(scores.cpu().numpy(), [positives[i] for i in dev])

    # the best epoch so far, this epoch's assignment, and the log: resumable with the loop
    best = {"epoch": 0, "dev": dev_score(), "codebooks": codebooks.detach().clone(),
            "query_proj": query_proj.detach().clone()}
    now: dict[str, Any] = {"codes": None, "used": 0.0, "total": 0.0}
    log: list[dict[str, Any]] = [{"epoch": 0, "dev_ndcg10": round(best["dev"], 4),
                                  "seconds": round(time.monotonic() - start, 1)}]

    def epoch_start(epoch: int) -> None:
        # 2. constrained assignment for this epoch
        with torch.no_grad():
            codes = balanced_codes(y, codebooks.detach(), epsilon, sinkhorn_iters)  # [n, M]
        now["codes"], now["total"] = codes, 0.0
        now["used"] = float(torch.stack([torch.bincount(codes[:, j], minlength=256).gt(0)
                                         .float().mean() for j in range(m)]).mean())

    def loss(idx: list[int], step: int) -> tuple[Any, dict[str, float]]:
        # 3. contrastive + reconstruction updates
        batch = [pairs[i] for i in idx]
        qi = torch.tensor([p[0] for p in batch], device=dev_t)
        pos = torch.tensor([p[1] for p in batch], device=dev_t)
        recon = quantise(now["codes"], codebooks)  # [n, d]
        logits = (q_all[qi] @ query_proj.T) @ recon.T / tau  # [b, n]
        mask = torch.zeros_like(logits, dtype=torch.bool)  # other positives are not negatives
        for row, (q, p) in enumerate(batch):
            others = [d for d in positives[q] if d != p]
            if others:
                mask[row, others] = True
        logits = logits.masked_fill(mask, float("-inf"))
        value = torch.nn.functional.cross_entropy(logits, pos)
        value = value + mse_weight * (y - recon).pow(2).sum(dim=1).mean()
        now["total"] += float(value.detach()) * len(batch)
        return value, {}

    def epoch_end(epoch: int) -> None:
        # 4. model selection on held-out train queries
        score = dev_score()
        log.append({"epoch": epoch, "loss": round(now["total"] / len(pairs), 4),
                    "dev_ndcg10": round(score, 4), "centroids_used": round(now["used"], 3),
                    "seconds": round(time.monotonic() - start, 1)})
        if score > best["dev"]:
            best.update(epoch=epoch, dev=score, codebooks=codebooks.detach().clone(),
                        query_proj=query_proj.detach().clone())

    def get_state() -> tuple[dict[str, Any], dict[str, Any]]:
        return ({"used": now["used"], "total": now["total"], "best_epoch": best["epoch"],
                 "best_dev": best["dev"], "log": log},
                {"codes": now["codes"].cpu(), "best_codebooks": best["codebooks"].cpu(),
                 "best_query_proj": best["query_proj"].cpu()})

    def set_state(saved: dict[str, Any], tensors: dict[str, Any]) -> None:
        now.update(used=saved["used"], total=saved["total"],
                   codes=tensors["codes"].to(dev_t))
        best.update(epoch=saved["best_epoch"], dev=saved["best_dev"],
                    codebooks=tensors["best_codebooks"].to(dev_t),
                    query_proj=tensors["best_query_proj"].to(dev_t))
        log[:] = saved["log"]

    per_epoch = (len(pairs) + batch_size - 1) // batch_size
    result = Trainer([codebooks, query_proj], steps=epochs * per_epoch, lr=lr, weight_decay=0.0,
                     batches=Batches(len(pairs), batch_size, rng), where=where,
                     max_seconds=max_seconds, started=start, per_epoch=True,
                     checkpoint=checkpoint, every=every, on_epoch_start=epoch_start,
                     on_epoch_end=epoch_end, extra_state=(get_state, set_state),
                     desc="train repconc", progress=progress).run(loss)
    return {"rotation": rotation, "codebooks": best["codebooks"].cpu().numpy(),
            "query_proj": best["query_proj"].cpu().numpy(), "log": log,
            "best_epoch": best["epoch"], "dev_ndcg10": best["dev"], "dev_queries": len(dev),
            "train_pairs": len(pairs), "seconds": round(time.monotonic() - start, 1),
            "stopped_by": result.stopped_by}


def _parser() -> argparse.ArgumentParser:
    """The parser of ``genseek train repconc``."""
    from genseek.cliutil import positive
    from genseek.training import add_options, recipe_parser

    parser = recipe_parser(
        "repconc",
        description="RepCONC recipe: train product-quantisation codebooks and a query-side "
                    "projection for retrieval (Zhan et al., WSDM 2022) on a dense index's "
                    "stored document vectors (never re-encoded) and a BEIR dataset's train "
                    "qrels, on CPU: an OPQ warm start, then per epoch a uniform-clustering "
                    "assignment (Sinkhorn) and a contrastive loss over the whole corpus plus "
                    "--mse-weight times the reconstruction error. The epoch with the best "
                    "nDCG@10 on held-out train queries is kept; repconc(model=OUT) names the "
                    "result.",
        epilog="example:\n"
               "  genseek train repconc --vectors COLLECTION/indexes/dense/vectors.sqlite \\\n"
               "      --dataset ../shared/datasets/scifact --out repconc-48")
    parser.add_argument("--vectors", required=True, type=Path, metavar="FILE",
                        help="a dense index's vectors.sqlite (document vectors, reused)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2",
                        help="query encoder (must be the one that encoded the documents)")
    parser.add_argument("--bytes", type=positive, default=48, metavar="M",
                        help="bytes per document = PQ subspaces (8-bit codes); must divide "
                             "the vector dimension")
    parser.add_argument("--epochs", type=int, default=30, metavar="N",
                        help="training epochs after the warm start (0: the OPQ warm start "
                             "only)")
    parser.add_argument("--tau", type=float, default=0.05,
                        help="softmax temperature of the contrastive loss, > 0")
    parser.add_argument("--mse-weight", type=float, default=1.0, metavar="WEIGHT",
                        help="weight of the reconstruction error that keeps centroids near "
                             "their members, >= 0")
    parser.add_argument("--epsilon", type=float, default=0.05,
                        help="entropy weight of the Sinkhorn assignment, > 0")
    parser.add_argument("--opq-iters", type=positive, default=15, metavar="N",
                        help="OPQ warm-start rounds")
    parser.add_argument("--sinkhorn-iters", type=positive, default=10, metavar="N",
                        help="Sinkhorn iterations per assignment")
    add_options(parser, dataset_help="BEIR folder with queries.jsonl and qrels/SPLIT.tsv",
                max_minutes=10.0, lr=1e-3, lr_help="Adam learning rate, > 0",
                split_help="qrels split to train on",
                minutes_help="stop after the epoch that passes this wall time in minutes, "
                             "> 0, save the best epoch and a checkpoint that --resume "
                             "continues",
                seed_help="random seed of the warm start, the dev split and training")
    return parser


def main(argv: list[str]) -> int:
    """``genseek train repconc --vectors FILE --dataset DIR --out FOLDER [...]``."""
    if argv and argv[0] == "repconc":
        argv = argv[1:]
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("tau", "epsilon"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, not {getattr(args, name):g}")
    if args.epochs < 0 or args.mse_weight < 0:
        parser.error("--epochs and --mse-weight must be >= 0")

    from genseek.data.readers import read_qrels, read_queries
    from genseek.encoders import shared_encoder
    from genseek.training import claim_out, run_config

    try:
        # an existing OUT is replaced (as it always was), unless --resume continues it
        checkpoint = claim_out(args.out, "repconc", run_config(args), resume=args.resume,
                               replace=True)
        doc_ids, doc_vecs = read_vectors(args.vectors)
        row_of = {d: i for i, d in enumerate(doc_ids)}
        qrels = read_qrels(args.dataset, args.split)
        queries = read_queries(args.dataset)
        qids = [q for q in queries if q in qrels]
        positives = [{row_of[d]: int(g) for d, g in qrels[q].items() if g > 0 and d in row_of}
                     for q in qids]
        keep = [i for i, p in enumerate(positives) if p]
        qids, positives = [qids[i] for i in keep], [positives[i] for i in keep]
        if not qids:
            raise GenseekError(f"repconc: no {args.split} queries of {args.dataset} have "
                               "positive documents among the vectors")
        encoder = shared_encoder(args.model, None)
        if encoder.dim != doc_vecs.shape[1]:
            raise GenseekError(f"repconc: encoder {args.model} makes {encoder.dim}-d vectors; "
                               f"{args.vectors} holds {doc_vecs.shape[1]}-d ones")
        query_vecs = encoder.encode([queries[q] for q in qids])
        result = train(doc_vecs, query_vecs, positives, m=args.bytes, epochs=args.epochs,
                       lr=args.lr, tau=args.tau, mse_weight=args.mse_weight,
                       epsilon=args.epsilon, max_seconds=60 * args.max_minutes, seed=args.seed,
                       progress=not args.json, opq_iters=args.opq_iters,
                       sinkhorn_iters=args.sinkhorn_iters, device=args.device,
                       checkpoint=checkpoint, every=args.checkpoint_every)
        config = {"dim": int(doc_vecs.shape[1]), "bytes": args.bytes, "nbits": 8,
                  "encoder": args.model, "trained_on": str(args.dataset), "split": args.split,
                  "documents": len(doc_ids), "queries": len(qids),
                  "best_epoch": result["best_epoch"],
                  "dev_ndcg10": round(result["dev_ndcg10"], 4),
                  "epoch0_dev_ndcg10": result["log"][0]["dev_ndcg10"],
                  "seconds": result["seconds"], "opq_iters": args.opq_iters,
                  "sinkhorn_iters": args.sinkhorn_iters, "epochs_run": len(result["log"]) - 1,
                  "format": "repconc-v1"}
        save_model(args.out, result["rotation"], result["codebooks"], result["query_proj"],
                   config, log=result["log"], keep_checkpoint=result["stopped_by"] == "time")
    except GenseekError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {**config, "out": str(args.out), "log": result["log"]}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {args.out}: best epoch {result['best_epoch']} "
              f"(dev nDCG@10 {result['dev_ndcg10']:.4f}; OPQ warm start "
              f"{result['log'][0]['dev_ndcg10']:.4f}) in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
