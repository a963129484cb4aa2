"""``genseek train sparse``: an inference-free SPLADE document encoder, distilled on CPU.

Recipe (after Geng et al. 2024, "Towards Competitive Search Relevance for Inference-Free
Learned Sparse Retrievers"), starting from SPLADE-tiny:

1. **IDF table**: BM25-style IDF of every token id over the corpus (the model's tokenizer),
   saved with the model as ``idf.json``. An inference-free query is its distinct token ids
   weighted by this table; no model runs at query time.
2. **Heterogeneous teacher**: for every training query (BEIR ``qrels/train.tsv``), bm25 and
   dense (MiniLM) each retrieve ``--depth`` candidates from a genseek collection holding both
   indexes; each teacher's scores are min-max normalised over the query's candidates (a
   candidate missing from one list gets 0 from it) and the two are summed: the normalised
   ensemble, ``t(q, d) in [0, 2]``.
3. **Student**: ``d = max_i log(1 + relu(MLM logits))`` (SPLADE pooling) and
   ``s(q, d) = sum_{t in q} idf_t * d_t``. Each step takes ``--batch-queries`` queries, each
   with one judged positive and ``--negatives`` hard negatives sampled from the teacher's top
   candidates, and minimises ``KL(softmax(beta * t) || softmax(c * s))`` over the query's
   list (plus ``--ce`` times the cross-entropy of the judged positive, if asked). With
   ``--pseudo N``, N sampled documents each add a pseudo-query (a random 16-token span of
   the document, which is its positive), labelled by the same teacher: training then
   touches far more of the corpus than the judged queries do. ``c`` is a
   learned scalar, initialised so that the student's score spread matches the teacher's
   over the first examples: without it, the cheapest way to lower the KL of a confidently
   wrong student (inference-free dot products reach 30-60, the teacher's logits span a few
   units) is to shrink every document weight, which prunes terms across the whole corpus
   and loses relevance (measured: 247 -> 84 terms per document and nDCG@10 0.65 -> 0.60
   after one epoch at lr 2e-5). ``--scale`` fixes ``c`` instead.
4. **IDF-aware FLOPS**: ``sum_t (mean_i idf_t * d_{i,t})^2`` over the batch's documents
   (FLOPS on the representation as the inference-free matching function sees it), weighted
   by ``--flops`` with a quadratic warm-up over the first third of the steps.
   With ``--query-weights learn`` the query side is learned too, still inference-free: the
   weight of token t is ``idf_t * exp(delta_t)``, ``delta`` a vocabulary-sized table that
   starts at 0 and moves only for tokens of training queries (a learned score per token,
   as in Li-LSR: Nardini et al. 2025, "Effective Inference-Free Retrieval for Learned
   Sparse Representations"); ``idf.json`` then holds the learned table.
   ``--freeze-encoder`` trains that table (and ``c``) alone, so the documents keep the
   base model's vectors and an existing corpus encoding stays valid.
5. The run stops after ``--epochs`` or ``--max-minutes`` (alias ``--minutes``), whichever
   comes first, and writes a standard Hugging Face model folder (safetensors + tokenizer)
   plus ``idf.json`` and ``train_info.json`` atomically (a temporary folder renamed into
   place). The loop is :mod:`genseek.training`'s: AdamW, checkpoints in ``OUT/checkpoint``
   and ``--resume``, ``--device auto`` (a GPU when there is one).

The defaults are the best recipe measured on SciFact (benchmarks/RESULTS.md section 12):
4 epochs at lr 2e-5, FLOPS 1e-5, ``--ce 0.5`` and learned query weights, 920 steps in
about 8 minutes on 2 CPU cores. Use the result as ``impact(model=OUT,mode=inference-free)``.

    genseek train sparse --dataset ../shared/datasets/scifact \\
        --collection $GENSEEK_CACHE/collections/scifact --out $GENSEEK_CACHE/sparse/if-scifact
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genseek.errors import GenseekError
from genseek.models import loading


def parse_args(argv: list[str]) -> argparse.Namespace:
    from genseek.cliutil import positive
    from genseek.training import add_options, recipe_parser

    p = recipe_parser(
        "sparse",
        description="Sparse recipe: train an inference-free sparse (SPLADE) document encoder on "
                    "CPU, with IDF-aware FLOPS regularisation and distillation from the "
                    "normalised bm25 + dense ensemble of a genseek collection. Queries stay "
                    "inference-free: a lookup of their tokens' weights (idf.json). The "
                    "defaults are the best recipe measured on SciFact (benchmarks/RESULTS.md "
                    "section 12). Use the result as impact(model=OUT,mode=inference-free).",
        epilog="example:\n"
               "  genseek train sparse --dataset ../shared/datasets/scifact \\\n"
               "      --collection $GENSEEK_CACHE/collections/scifact "
               "--out $GENSEEK_CACHE/sparse/if-scifact")
    p.add_argument("--collection", required=True, type=Path, metavar="DIR",
                   help="genseek collection of the same corpus with bm25 and dense indexes "
                        "(copied to a temporary folder, never modified)")
    p.add_argument("--base", default="splade-tiny",
                   help="starting masked LM: a genseek model alias, a folder or a Hugging "
                        "Face name")
    p.add_argument("--epochs", type=float, default=4.0, metavar="N",
                   help="passes over the queries, > 0 (fractions allowed)")
    p.add_argument("--batch-queries", type=positive, default=4, metavar="N",
                   help="queries per optimiser step")
    p.add_argument("--negatives", type=int, default=3, metavar="N",
                   help="hard negatives per query, >= 0")
    p.add_argument("--depth", type=positive, default=50, metavar="N",
                   help="teacher candidates retrieved per index (bm25, dense)")
    p.add_argument("--neg-pool", type=positive, default=20, metavar="N",
                   help="negatives are sampled from the teacher's top N non-positives")
    p.add_argument("--doc-max-length", type=positive, default=192, metavar="TOKENS",
                   help="document tokens the encoder sees")
    p.add_argument("--beta", type=float, default=10.0,
                   help="teacher logits = beta * normalised ensemble score; > 0")
    p.add_argument("--flops", type=float, default=1e-5, metavar="WEIGHT",
                   help="IDF-aware FLOPS weight, >= 0 (quadratic warm-up over the first third "
                        "of the steps)")
    p.add_argument("--scale", default="learn", metavar="{learn,C}",
                   help="student score scale c: 'learn' (learned, initialised from the data) "
                        "or a fixed number > 0 (1 = plain scores)")
    p.add_argument("--pseudo", type=int, default=0, metavar="N",
                   help="add N pseudo-queries, >= 0: a random 16-token span of each of N "
                        "sampled corpus documents, that document its positive (default: "
                        "%(default)s, none)")
    p.add_argument("--ce", type=float, default=0.5, metavar="WEIGHT",
                   help="weight of a cross-entropy term on the judged positive, >= 0")
    p.add_argument("--query-weights", choices=("idf", "learn"), default="learn",
                   help="query term weights: a table learned with the encoder, initialised "
                        "to the corpus IDF (learn), or the IDF table itself (idf); either way "
                        "queries stay inference-free (a lookup, saved as idf.json)")
    p.add_argument("--query-lr", type=float, default=5e-3, metavar="LR",
                   help="learning rate of the log query-weight offsets, > 0")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="train only the query weights (and the score scale): the documents "
                        "keep the base model's vectors, so an existing encoding is reused "
                        "(needs --query-weights learn)")
    p.add_argument("--teacher-cache", type=Path, default=None, metavar="FILE",
                   help="JSON file to reuse or store the teacher's candidate lists (default: "
                        "none, the teacher runs every time)")
    add_options(p, dataset_help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/train.tsv)",
                max_minutes=12.0, minutes_alias="--minutes", lr=2e-5, seed=0,
                replace="--force", out_help="output model folder",
                split_help="qrels split to train on",
                seed_help="random seed of sampling and initialisation")
    args = p.parse_args(argv)
    for key in ("epochs", "beta", "query_lr"):
        if not getattr(args, key) > 0:
            p.error(f"--{key.replace('_', '-')} must be > 0")
    if args.scale != "learn":
        try:
            args.scale = float(args.scale)
        except ValueError:
            p.error(f"--scale must be 'learn' or a number, not {args.scale!r}")
        if not args.scale > 0:
            p.error("--scale must be > 0")
    if args.negatives < 0 or args.flops < 0 or args.ce < 0 or args.pseudo < 0:
        p.error("--negatives, --flops, --ce and --pseudo must be >= 0")
    if args.freeze_encoder and args.query_weights != "learn":
        p.error("--freeze-encoder trains only the query weights: give --query-weights learn")
    return args


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def minmax(scores: dict[str, float]) -> dict[str, float]:
    """Scores rescaled to [0, 1] (all 1.0 when they are equal)."""
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    span = hi - lo
    return {d: (s - lo) / span if span > 0 else 1.0 for d, s in scores.items()}


def ensemble(bm25: dict[str, float], dense: dict[str, float]) -> dict[str, float]:
    """The normalised heterogeneous teacher: minmax(bm25) + minmax(dense) over the union
    of candidates (a candidate one teacher did not retrieve gets 0 from it)."""
    nb, nd = minmax(bm25), minmax(dense)
    return {d: nb.get(d, 0.0) + nd.get(d, 0.0) for d in set(bm25) | set(dense)}


def teacher_lists(args: argparse.Namespace, qids: list[str], texts: list[str]
                  ) -> dict[str, dict[str, float]]:
    """``{qid: {doc_id: ensemble score}}`` from bm25 and dense of a copied collection."""
    cache = args.teacher_cache
    if cache is not None and cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("depth") == args.depth and set(qids) <= set(data["lists"]):
            _log(f"teacher: reusing {cache}")
            return {q: data["lists"][q] for q in qids}
    from genseek.collection import Collection

    src = args.collection
    if not (src / "collection.json").is_file():
        raise GenseekError(f"--collection {src}: not a genseek collection (no collection.json)")
    with tempfile.TemporaryDirectory(prefix="genseek-teacher-") as tmp:
        copy = Path(tmp) / "collection"
        shutil.copytree(src, copy, ignore=shutil.ignore_patterns("collection.lock"))
        coll = Collection.open(copy)
        try:
            missing = {"bm25", "dense"} - set(coll.indexes)
            if missing:
                raise GenseekError(f"--collection {src}: needs indexes bm25 and dense "
                                   f"(missing {', '.join(sorted(missing))})")
            _log(f"teacher: bm25 and dense top-{args.depth} for {len(texts)} queries")
            hits_b = coll.search(texts, args.depth, index="bm25")
            hits_d = coll.search(texts, args.depth, index="dense")
        finally:
            coll.close()
    lists = {q: ensemble({h.doc_id: h.score for h in hb}, {h.doc_id: h.score for h in hd})
             for q, hb, hd in zip(qids, hits_b, hits_d, strict=True)}
    if cache is not None:
        from genseek.atomic import atomic_write_json

        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache, {"depth": args.depth, "lists": lists})
    return lists


def build_examples(qids: list[str], qrels: dict[str, dict[str, int]],
                   lists: dict[str, dict[str, float]], negatives: int, pool: int,
                   rng: random.Random) -> list[tuple[str, list[str], list[float]]]:
    """Per query and judged positive: ``(qid, [pos, neg...], teacher scores)``.

    A positive the teacher did not retrieve gets the best teacher score of the list (it is
    judged relevant); negatives are sampled from the top ``pool`` non-positive candidates.
    """
    out = []
    for q in qids:
        scores = lists.get(q, {})
        positives = [d for d, g in qrels[q].items() if g > 0]
        ranked = sorted((d for d in scores if d not in qrels[q]), key=lambda d: -scores[d])
        top = max(scores.values()) if scores else 1.0
        for pos in positives:
            negs = rng.sample(ranked[:pool], min(negatives, len(ranked[:pool])))
            docs = [pos] + negs
            out.append((q, docs, [scores.get(pos, top)] + [scores[d] for d in negs]))
    return out


def pool_for_training(model, input_ids, attention_mask):
    """SPLADE pooling with the cheap exact gradient: shape ``[batch, vocab]``.

    ``max_i log(1 + relu(l_{i,t}))`` only passes gradient to each term's arg-max position,
    and only where the max logit is > 0. So the ``[tokens, vocab]`` logits are computed
    without autograd to find, per document, the active terms and their arg-max positions,
    and only those ``(doc, term)`` logits are recomputed with autograd: the same values and
    gradients as :func:`genseek.encoders.splade_pool`, without a ``[tokens, vocab]`` graph.
    BERT masked LMs only (``model.bert`` + ``model.cls``); others use ``splade_pool``.
    """
    import torch

    from genseek.encoders import splade_pool

    base, cls = getattr(model, "bert", None), getattr(model, "cls", None)
    if base is None or cls is None:
        return splade_pool(model, input_ids, attention_mask)
    mask = attention_mask.bool()
    hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    states = cls.predictions.transform(hidden[mask])  # [tokens, hidden]
    decoder = cls.predictions.decoder
    weight = decoder.weight  # [vocab, hidden]
    bias = decoder.bias if decoder.bias is not None else cls.predictions.bias  # [vocab]
    lengths = attention_mask.sum(dim=1).tolist()
    with torch.no_grad():
        logits = torch.nn.functional.linear(states, weight, bias)  # [tokens, vocab]
        best, where = [], []
        start = 0
        for n in lengths:
            m, a = logits[start:start + n].max(dim=0)
            best.append(m)
            where.append(a + start)
            start += n
        best_t, where_t = torch.stack(best), torch.stack(where)  # [batch, vocab]
        docs, terms = torch.nonzero(best_t > 0, as_tuple=True)  # active (doc, term) pairs
        rows = where_t[docs, terms]  # [active]
    values = (states[rows] * weight[terms]).sum(dim=1) + bias[terms]  # [active]
    reps = torch.zeros(len(lengths), weight.shape[0], dtype=values.dtype, device=values.device)
    return reps.index_put((docs, terms), torch.log1p(torch.relu(values)))


@dataclass
class _Data:
    """What step 1-2 read and built: the judged (and pseudo) queries, the corpus, the teacher's
    lists as (query, docs, teacher scores) examples, and the IDF table."""

    queries: dict[str, str]
    qids: list[str]
    judged: int
    corpus: dict[str, str]
    examples: list[Any]
    base: Any  # SparseEncoder of the base model (tokenizer, vocab, IDF queries)
    idf: np.ndarray  # float32 [vocab]


def _read_data(args: argparse.Namespace, rng: random.Random) -> _Data:
    """1. data and the IDF table; 2. the heterogeneous teacher's lists."""
    from genseek.data.readers import read_corpus, read_qrels, read_queries
    from genseek.encoders import SparseEncoder, corpus_idf

    qrels = dict(read_qrels(args.dataset, args.split))
    queries = dict(read_queries(args.dataset))
    qids = [q for q in queries if q in qrels]
    if not qids:
        raise GenseekError(f"{args.dataset}: no judged {args.split} queries")
    corpus = {d.doc_id: d.contents for _, d in read_corpus(args.dataset)}
    base = SparseEncoder(args.base, max_length=args.doc_max_length)
    _log(f"IDF over {len(corpus)} documents")
    idf = corpus_idf(base.tokenizer, list(corpus.values()))
    judged = len(qids)
    if args.pseudo:  # span pseudo-queries of sampled documents (DSI-style generative memory)
        from genseek.retrievers.generative_train import pseudo_query

        for d in rng.sample(sorted(corpus), min(args.pseudo, len(corpus))):
            qid = f"pseudo:{d}"
            queries[qid] = pseudo_query(base.tokenizer, corpus[d], rng)
            qrels[qid] = {d: 1}
            qids.append(qid)
    lists = teacher_lists(args, qids, [queries[q] for q in qids])
    examples = build_examples(qids, qrels, lists, args.negatives, args.neg_pool, rng)
    examples = [e for e in examples if e[1][0] in corpus]
    base.set_idf(idf)
    return _Data(queries, qids, judged, corpus, examples, base, idf)


class _Student:
    """3-4. the SPLADE student, its query term weights ``w_t = idf_t * exp(delta_t)``
    (``delta`` = 0 unless learned), its score scale ``c`` and the loss: KL to the teacher's
    list distribution + ``ce`` x cross-entropy of the judged positive + IDF-aware FLOPS."""

    def __init__(self, args: argparse.Namespace, data: _Data, device: Any):
        import torch
        from transformers import AutoModelForMaskedLM

        from genseek.encoders import resolve_sparse_model

        self.args, self.data, self.device = args, data, device
        self.tokenizer = data.base.tokenizer
        self.idf_t = torch.from_numpy(data.idf).to(device)
        self.qvec_ids = {q: torch.from_numpy(ids).to(device) for q, (ids, _) in zip(
            data.qids, data.base.query_ids_idf([data.queries[q] for q in data.qids]),
            strict=True)}
        with loading():
            self.model = AutoModelForMaskedLM.from_pretrained(resolve_sparse_model(args.base),
                                                              use_safetensors=True)
        self.model.to(device)
        delta = torch.zeros(len(data.idf), device=device)
        self.delta = torch.nn.Parameter(delta) if args.query_weights == "learn" else delta
        self.scale0, self.log_scale = self._scale()

    def encode(self, batch: list[Any]) -> Any:
        """The batch's documents (each example's list, in order): ``[docs, vocab]``."""
        docs = [d for _, ds, _ in batch for d in ds]
        enc = self.tokenizer([self.data.corpus[d] for d in docs], padding=True,
                             truncation=True, max_length=self.args.doc_max_length,
                             return_tensors="pt")
        reps = pool_for_training(self.model, enc["input_ids"].to(self.device),
                                 enc["attention_mask"].to(self.device))
        return reps[:, :len(self.data.idf)]

    def scores(self, reps: Any, batch: list[Any]) -> list[Any]:
        """Per example, ``s(q, d) = sum_{t in q} w_t * d_t`` over its list: ``[len(ds)]``."""
        out, start = [], 0
        for q, ds, _ in batch:
            ids = self.qvec_ids[q]
            weights = self.idf_t[ids] * self.delta[ids].exp()
            out.append((reps[start:start + len(ds)][:, ids] * weights).sum(dim=1))
            start += len(ds)
        return out

    def _scale(self) -> tuple[float, Any]:
        """The score scale c: the teacher's logit spread over the student's, on the first
        lists (or the fixed ``--scale``); its log is learned with ``--scale learn``."""
        import torch

        args, examples = self.args, self.data.examples
        if args.scale == "learn":
            probe = examples[:32]
            with torch.no_grad():
                spread_s = float(np.mean([float(x.std()) for b in range(0, len(probe), 8)
                                          for x in self.scores(self.encode(probe[b:b + 8]),
                                                               probe[b:b + 8])]))
            spread_t = float(np.mean([args.beta * float(np.std(t, ddof=1))
                                      for _, _, t in probe]))
            scale0 = spread_t / spread_s if spread_s > 0 and spread_t > 0 else 1.0
            return scale0, torch.nn.Parameter(torch.tensor(float(np.log(scale0)),
                                                           device=self.device))
        scale0 = float(args.scale)
        return scale0, torch.tensor(float(np.log(scale0)), device=self.device)

    def param_groups(self) -> list[dict[str, Any]]:
        """What the optimiser trains (the encoder unless frozen; the scale and the query
        weights when learned)."""
        args, groups = self.args, []
        if args.freeze_encoder:
            self.model.eval()
            self.model.requires_grad_(False)
        else:
            self.model.train()
            groups.append({"params": list(self.model.parameters()), "lr": args.lr,
                           "weight_decay": 0.01})
        if args.scale == "learn":
            groups.append({"params": [self.log_scale], "lr": 1e-2, "weight_decay": 0.0})
        if args.query_weights == "learn":
            groups.append({"params": [self.delta], "lr": args.query_lr, "weight_decay": 0.0})
        return groups

    def loss(self, idx: list[int], step: int, warm: int) -> tuple[Any, dict[str, float]]:
        import torch

        args, device = self.args, self.device
        batch = [self.data.examples[i] for i in idx]
        reps = self.encode(batch)
        kl = torch.zeros((), device=device)
        ce = torch.zeros((), device=device)
        c = self.log_scale.exp()
        for (_, _, teacher), student in zip(batch, self.scores(reps, batch), strict=True):
            target = torch.softmax(args.beta * torch.tensor(teacher, device=device), dim=0)
            log_p = torch.log_softmax(c * student, dim=0)
            kl = kl + torch.nn.functional.kl_div(log_p, target, reduction="sum")
            ce = ce - log_p[0]  # the judged positive is first
        kl = kl / len(batch)
        ce = ce / len(batch)
        # IDF-aware FLOPS on the batch's documents (nothing to regularise when frozen)
        flops = ((reps * self.idf_t).mean(dim=0) ** 2).sum()
        lam = 0.0 if args.freeze_encoder else args.flops * min(1.0, (step + 1) / warm) ** 2
        return kl + args.ce * ce + lam * flops, {"kl": float(kl.detach()),
                                                 "flops": float(flops.detach())}

    def query_table(self) -> np.ndarray:
        """The query term weights to save: float32 ``[vocab]``."""
        return (self.idf_t * self.delta.detach().exp()).cpu().numpy().astype(np.float32)


def _summary(args: argparse.Namespace, data: _Data, student: _Student, result: Any,
             seconds: float) -> dict[str, Any]:
    import torch

    kls, flops_values = result.values("kl"), result.values("flops")
    return {
        "base": args.base, "dataset": str(args.dataset), "split": args.split,
        "queries": data.judged, "pseudo_queries": len(data.qids) - data.judged,
        "examples": len(data.examples), **result.summary(),
        "total_seconds": round(seconds, 1),
        "kl_first": round(float(np.mean(kls[:20])), 4) if kls else None,
        "kl_last": round(float(np.mean(kls[-20:])), 4) if kls else None,
        "flops_last": round(float(np.mean(flops_values[-20:])), 2) if kls else None,
        "scale_first": round(student.scale0, 5),
        "scale_last": round(float(student.log_scale.detach().exp()), 5),
        "query_weights": args.query_weights,
        "query_weights_changed": int((student.delta.detach().abs() > 1e-6).sum()),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str]) -> int:
    if argv and argv[0] == "sparse":
        argv = argv[1:]
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from genseek import training

    checkpoint = training.claim_out(args.out, "sparse", training.run_config(args),
                                    resume=args.resume, replace=args.force, flag="--force")
    import torch

    from genseek.encoders import IDF_FILE, save_idf

    t_start = time.perf_counter()
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    where = training.placement_for(args)
    data = _read_data(args, rng)  # 1-2
    student = _Student(args, data, where.torch_device())  # 3
    _log(f"student score scale c = {student.scale0:.4g} "
         f"({'learned' if args.scale == 'learn' else 'fixed'})")
    groups = student.param_groups()
    per_epoch = (len(data.examples) + args.batch_queries - 1) // args.batch_queries
    total = max(1, int(per_epoch * args.epochs))
    warm = max(1, total // 3)
    _log(f"training on {len(data.examples)} (query, positive) pairs: up to {total} steps "
         f"or {args.max_minutes:g} min")
    # 4. batches from the end of each shuffled order (the order this recipe has always used)
    result = training.Trainer(
        groups, steps=total, lr=args.lr, where=where,
        batches=training.Batches(len(data.examples), args.batch_queries, rng, from_end=True),
        clip=None if args.freeze_encoder else 1.0,
        clip_params=list(student.model.parameters()),
        max_seconds=args.max_minutes * 60.0, checkpoint=checkpoint,
        every=args.checkpoint_every, desc="train sparse").run(
            lambda idx, step: student.loss(idx, step, warm))
    # 5. save atomically
    student.model.eval()
    table = student.query_table()
    summary = _summary(args, data, student, result, time.perf_counter() - t_start)

    def write(tmp: Path) -> None:
        student.model.save_pretrained(tmp, safe_serialization=True)
        student.tokenizer.save_pretrained(tmp)
        save_idf(tmp / IDF_FILE, data.base.vocab, table)
        training.write_meta(tmp, "train_info.json", summary)

    training.save_folder(args.out, write, keep_checkpoint=not result.complete)
    _log(f"saved {args.out} after {result.steps} steps ({result.seconds / 60:.1f} min)")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":  # pragma: no cover
    try:
        sys.exit(main(sys.argv[1:]))
    except GenseekError as exc:
        sys.exit(f"error: {exc}")
