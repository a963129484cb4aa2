"""``genseek train first``: fine-tune a causal LM as a FIRST listwise reranker.

FIRST (Reddy et al., 2024) trains a listwise reranker so that the logits of the
*first* generated label already rank the window. Its objective is

    L = L_LM(target permutation) + lambda * L_RankNet(first-token label logits)

1. **Targets** (SciFact train): each judged query's first-stage top ``depth``
   (RRF of bm25 + dense from a genseek collection, cached as JSON) is cut into
   windows of ``window`` candidates. A window's target order puts the judged-relevant
   passages first (by grade, then first-stage rank) and the rest in first-stage
   order. Windows without a relevant passage are skipped (nothing to learn). The
   passages stay in first-stage order, as the reranker sees them at inference (a small
   model leans on that order: it only has to learn when to move a passage); with
   ``--shuffle P`` a window is shuffled with probability P, so the label letter
   carries less of a prior (RankZephyr-style augmentation).
2. **LM loss**: cross-entropy on the target text ``A] > [C] > ... [Z]<|im_end|>``
   after the seeded ``[`` (the prompt is masked out).
3. **RankNet loss** on the logits ``s`` of the label tokens at the seeded ``[``:
   ``sum_{i<j} w_ij * log(1 + exp(s_j - s_i))`` over target ranks ``i < j``, with
   FIRST's weight ``w_ij = 1 / (i + j)`` (ranks from 1), normalised by the weight sum.
4. **LoRA** adapters (peft) on the attention and MLP projections of the top
   ``--lora-layers`` layers (so the backward pass stops there); AdamW; the run
   stops after ``--steps`` optimiser steps or ``--max-minutes`` wall time, whichever
   comes first, then merges the adapters and writes a plain transformers folder
   (safetensors + tokenizer + ``first_train.json``) that ``first(model=FOLDER)`` loads.
   The loop is :mod:`genseek.training`'s (checkpoints in ``OUT/checkpoint``, ``--resume``,
   ``--device auto``: a GPU when there is one).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genseek.atomic import atomic_write_json
from genseek.cache import cache_root
from genseek.errors import GenseekError

DEFAULT_COLLECTION = cache_root() / "collections" / "scifact"
DEFAULT_CACHE = cache_root() / "rerank"


# ----------------------------------------------------------------------------- first stage
def first_stage_run(collection: Path, dataset: Path, split: str, depth: int,
                    cache_dir: Path) -> dict[str, list[tuple[str, float]]]:
    """``{query_id: [(doc_id, rrf_score), ...]}``: RRF(bm25, dense) top ``depth`` per judged query.

    Read from ``cache_dir/firststage_<split>_<depth>.json`` when present; otherwise the
    collection is copied to a temp folder (it takes a process lock), searched and the
    run written atomically.
    """
    from genseek.data.readers import read_qrels, read_queries

    cache = Path(cache_dir) / f"firststage_{Path(dataset).name}_{split}_{depth}.json"
    if cache.is_file():
        raw = json.loads(cache.read_text())
        return {q: [(d, float(s)) for d, s in hits] for q, hits in raw["run"].items()}
    from genseek.evaluation import experiment
    from genseek.pipeline import fuse
    from genseek.registry import resolve
    from genseek.spec import IndexSpec

    qrels = read_qrels(Path(dataset), split)
    queries = read_queries(Path(dataset))
    qids = [q for q in queries if q in qrels]
    manifest = json.loads((Path(collection) / "collection.json").read_text())
    with tempfile.TemporaryDirectory(prefix="genseek-rerank-") as tmp:
        # the indexes are opened directly (no store sync): a copy, so no lock is shared
        copy = Path(tmp) / "indexes"
        shutil.copytree(Path(collection) / "indexes", copy)
        stages = []
        for name in ("bm25", "dense"):
            spec = IndexSpec.parse(manifest["indexes"][name])
            stages.append(resolve(spec).open(copy / name, dict(spec.params)))
        try:  # one search call for every query, as before (batch_size = all of them)
            result = experiment({"rrf": fuse(stages, depth=depth)},
                                {q: queries[q] for q in qids}, qrels, k=depth,
                                batch_size=max(1, len(qids)))
        finally:
            for stage in stages:
                stage.close()
    run = {q: [(h.doc_id, float(h.score)) for h in hits]
           for q, hits in result.runs["rrf"].items()}
    atomic_write_json(cache, {"collection": str(collection), "dataset": str(dataset),
                              "split": split, "depth": depth, "fusion": "rrf(bm25,dense)",
                              "metrics": result.metrics["rrf"], "run": run})
    return run


def load_texts(collection: Path, doc_ids: Sequence[str]) -> dict[str, str]:
    """``title + " " + text`` of ``doc_ids`` read straight from the collection's docs.sqlite."""
    import sqlite3

    con = sqlite3.connect(f"file:{Path(collection) / 'docs.sqlite'}?mode=ro", uri=True)
    try:
        out: dict[str, str] = {}
        ids = list(dict.fromkeys(doc_ids))
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            rows = con.execute(
                f"SELECT doc_id, title, text FROM docs WHERE doc_id IN "
                f"({','.join('?' * len(chunk))})", chunk).fetchall()
            for doc_id, title, text in rows:
                out[doc_id] = f"{title} {text}".strip() if title else (text or "")
        return out
    finally:
        con.close()


# ----------------------------------------------------------------------------- examples
def target_order(candidates: Sequence[str], relevant: dict[str, int]) -> list[int]:
    """Positions of ``candidates`` in target order: judged relevant first (grade, then
    first-stage position), then the rest in first-stage order."""
    pos = range(len(candidates))
    rel = sorted((i for i in pos if relevant.get(candidates[i], 0) > 0),
                 key=lambda i: (-relevant[candidates[i]], i))
    return rel + [i for i in pos if relevant.get(candidates[i], 0) <= 0]


def build_examples(run: dict[str, list[tuple[str, float]]], qrels: dict[str, dict[str, int]],
                   window: int, seed: int, shuffle: float = 0.0
                   ) -> list[tuple[str, list[str], list[int]]]:
    """``(query_id, window doc ids in prompt order, target order)`` per judged train query.

    The window is the first stage's top ``window``; a relevant passage the first stage
    missed replaces the lowest candidates (so every window has something to learn);
    with probability ``shuffle`` the window is shuffled; the target lists prompt positions
    best first.
    """
    rng = random.Random(seed)
    out = []
    for qid, hits in run.items():
        rel = {d: g for d, g in qrels.get(qid, {}).items() if g > 0}
        if not rel:
            continue
        docs = [d for d, _ in hits[:window]]
        missing = [d for d in rel if d not in docs][:max(window // 2, 1)]
        if missing:
            docs = docs[:window - len(missing)] + missing
        first_stage_rank = {d: i for i, d in enumerate(docs)}
        shuffled = docs[:]
        if rng.random() < shuffle:
            rng.shuffle(shuffled)
        best = target_order(docs, rel)  # indices into docs, in first-stage numbering
        position = {d: i for i, d in enumerate(shuffled)}
        target = [position[docs[i]] for i in best]
        assert sorted(target) == list(range(len(docs))), first_stage_rank
        out.append((qid, shuffled, target))
    rng.shuffle(out)
    return out


def target_text(target: Sequence[int]) -> str:
    """``A] > [C] > ...`` — the ranking after the seeded ``[``."""
    from genseek.rerankers.first import LABELS

    return "] > [".join(LABELS[i] for i in target) + "]"


def ranknet_loss(scores, target: Sequence[int]):
    """FIRST's weighted RankNet loss on one window's label logits.

    ``scores``: tensor ``(n,)`` of label logits by prompt position; ``target``: prompt
    positions best first. For target ranks ``a < b`` (1-based) the pair loss is
    ``log(1 + exp(s_b - s_a))`` weighted by ``1 / (a + b)``; the result is the
    weighted mean. Returns a 0-d tensor.
    """
    import torch

    n = len(target)
    ordered = scores[torch.as_tensor(list(target), device=scores.device)]  # (n,) best first
    ranks = torch.arange(1, n + 1, device=scores.device, dtype=scores.dtype)
    diff = ordered.view(1, n) - ordered.view(n, 1)  # diff[a, b] = s_b - s_a
    weight = 1.0 / (ranks.view(n, 1) + ranks.view(1, n))
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=scores.device), diagonal=1)
    pair = torch.nn.functional.softplus(diff) * weight
    return pair[upper].sum() / weight[upper].sum()


# ----------------------------------------------------------------------------- training
def _plain(model: Any) -> Any:
    """Forget that the weights came from a GGUF file: they were de-quantised to float on
    load, so the model saves as an ordinary safetensors checkpoint."""
    model.hf_quantizer = None
    for holder in (model, model.config):
        for attr in ("quantization_config", "is_quantized", "quantization_method"):
            if attr in getattr(holder, "__dict__", {}):
                delattr(holder, attr)
    return model


def _parser() -> argparse.ArgumentParser:
    from genseek.cliutil import positive
    from genseek.rerankers.llm import DEFAULT_MODEL
    from genseek.training import add_options, recipe_parser

    p = recipe_parser(
        "first",
        description="FIRST recipe: fine-tune a causal LM as a FIRST listwise reranker "
        "(Reddy et al., 2024), so that the logits of the first generated label already rank "
        "a window of passages. The loss is the LM loss on the target permutation plus "
        "lambda (--ranknet-weight) times a RankNet loss on those first-token label logits.\n"
        "\n"
        "    L = L_LM(target permutation) + lambda * L_RankNet(first-token label logits)\n"
        "\n"
        "Windows come from the first stage (RRF of bm25 + dense in --collection, cached "
        "under --cache) over the judged --split queries; judged-relevant passages go first in "
        "the target. LoRA adapters on the top --lora-layers layers are trained on CPU, then "
        "merged: OUT is a plain transformers folder that first(model=OUT) loads.",
        epilog="example:\n"
        "  genseek train first --out $GENSEEK_CACHE/rerank/first-scifact --steps 60")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="base causal LM: a genseek model alias, a folder or a Hugging Face name")
    p.add_argument("--collection", type=Path, default=DEFAULT_COLLECTION, metavar="DIR",
                   help="genseek collection with bm25 and dense indexes over the corpus (the "
                        "first stage)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, metavar="DIR",
                   help="folder caching the first-stage runs as JSON")
    p.add_argument("--window", type=int, default=10, metavar="N",
                   help="passages per training window (2-26, one label letter each)")
    p.add_argument("--max-passage-tokens", type=positive, default=48, metavar="TOKENS",
                   help="each passage is cut to this many tokens in the prompt")
    p.add_argument("--shuffle", type=float, default=0.0, metavar="P",
                   help="probability in [0, 1] of shuffling a training window (default: "
                        "%(default)s, first-stage order)")
    p.add_argument("--ranknet-weight", type=float, default=10.0, metavar="LAMBDA",
                   help="lambda, the weight of the RankNet term, >= 0")
    p.add_argument("--lora-r", type=positive, default=8, metavar="R", help="LoRA rank")
    p.add_argument("--lora-layers", type=int, default=8, metavar="N",
                   help="adapt only the top N decoder layers (0: all); the backward pass "
                        "then stops there, which is what makes CPU training affordable")
    add_options(p, dataset_required=False,
                dataset_help="BEIR SciFact folder (default: $GENSEEK_DATASETS/scifact, else "
                             "shared/datasets/scifact beside the genseek checkout)",
                max_minutes=20.0, lr=3e-4, seed=13, steps=60,
                steps_help="optimiser steps (one window each)", autocast=True,
                replace="--overwrite",
                seed_help="random seed of window sampling, shuffling and LoRA initialisation")
    return p


def _dataset(arg: Path | None) -> Path:
    from genseek.data.readers import datasets_root

    if arg is not None:
        return arg
    return datasets_root() / "scifact"


def main(argv: list[str]) -> int:
    """Entry point of ``genseek train first`` (``argv[0]`` may be the recipe name)."""
    if argv and argv[0] == "first":
        argv = argv[1:]
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.shuffle <= 1.0:
        parser.error("--shuffle must be a probability in [0, 1]")
    for name, value in (("--ranknet-weight", args.ranknet_weight),
                        ("--lora-layers", args.lora_layers)):
        if not value >= 0:
            parser.error(f"{name} must be >= 0, not {value:g}")
    try:
        summary = train(args)
    except GenseekError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {summary['out']} ({summary['steps']} steps in "
              f"{summary['seconds']:.0f} s; final loss {summary['final_loss']:.3f})")
    return 0


def train(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model

    from genseek import training
    from genseek.data.readers import read_qrels, read_queries
    from genseek.models import load_lm
    from genseek.rerankers.first import PromptBuilder, label_token_ids

    out = Path(args.out)
    checkpoint = training.claim_out(out, "first", training.run_config(args),
                                    resume=args.resume, replace=args.overwrite,
                                    flag="--overwrite")
    if not 2 <= args.window <= 26:
        raise GenseekError("--window must be between 2 and 26")
    dataset = _dataset(args.dataset)
    if not (dataset / "qrels" / f"{args.split}.tsv").is_file():
        raise GenseekError(f"no qrels/{args.split}.tsv under {dataset} (give --dataset)")
    t0 = time.monotonic()
    torch.manual_seed(args.seed)
    where = training.placement_for(args)
    # 1. targets from qrels and the first stage
    run = first_stage_run(args.collection, dataset, args.split, 100, args.cache)
    qrels = read_qrels(dataset, args.split)
    queries = read_queries(dataset)
    examples = build_examples(run, qrels, args.window, args.seed, args.shuffle)
    texts = load_texts(args.collection, [d for _, docs, _ in examples for d in docs])
    # 2. model + LoRA (fresh copy: not the process-wide cached one), float32 master weights
    lm = load_lm.__wrapped__(args.model, where.device, "float32")
    tok = lm.tokenizer
    builder = PromptBuilder.for_tokenizer(tok)
    labels = label_token_ids(tok, args.window)
    close = builder.close_ids[-1]  # the seeded "["
    end_ids = tok.encode((tok.eos_token or ""), add_special_tokens=False)[-1:] if \
        "<|im_end|>" not in tok.get_vocab() else [tok.convert_tokens_to_ids("<|im_end|>")]
    n_layers = int(lm.model.config.num_hidden_layers)
    top = list(range(max(n_layers - args.lora_layers, 0), n_layers)) if args.lora_layers \
        else None
    model = get_peft_model(lm.model, LoraConfig(
        r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj"], layers_to_transform=top))
    model.train()
    device = where.torch_device()

    def loss(batch: list[int], step: int) -> tuple[Any, dict[str, float]]:
        qid, docs, target = examples[batch[0]]
        # 3. prompt + target ids; LM loss only on the target tokens
        passages = builder.passages([texts.get(d, "") for d in docs], args.max_passage_tokens)
        prompt = builder.prefix_ids + builder.suffix(queries[qid], passages)
        assert prompt[-1] == close
        tgt = builder.encode(target_text(target)) + end_ids
        ids = torch.tensor([prompt + tgt], device=device)
        lm_labels = torch.full_like(ids, -100)
        lm_labels[0, len(prompt):] = torch.tensor(tgt, device=device)
        res = model(input_ids=ids, labels=lm_labels)
        # 4. RankNet on the first-token label logits (at the seeded "[")
        first = res.logits[0, len(prompt) - 1, labels[:len(docs)]].float()  # (n,)
        rank = ranknet_loss(first, target)
        top_ok = float(int(first.argmax()) == target[0])
        return res.loss + args.ranknet_weight * rank, {"lm": res.loss.item(),
                                                       "ranknet": rank.item(), "top1": top_ok}

    # one window a step, in the (already shuffled) order of the examples
    result = training.Trainer(
        [p for p in model.parameters() if p.requires_grad], steps=min(args.steps, len(examples)),
        batches=training.Batches(len(examples), 1), lr=args.lr, where=where,
        autocast=args.autocast == "bf16", max_seconds=60.0 * args.max_minutes, started=t0,
        checkpoint=checkpoint, every=args.checkpoint_every, desc="first-train").run(loss)
    history = result.history
    # 5. merge the adapters and write a plain checkpoint atomically (temp folder + rename)
    merged = _plain(model.merge_and_unload())
    merged.eval()
    seconds = time.monotonic() - t0
    summary = {"out": str(out), "base_model": args.model, **result.summary(),
               "seconds": round(seconds, 1), "examples": len(examples),
               "window": args.window, "max_passage_tokens": args.max_passage_tokens,
               "shuffle": args.shuffle,
               "lr": args.lr, "ranknet_weight": args.ranknet_weight, "lora_r": args.lora_r,
               "lora_layers": args.lora_layers, "autocast": args.autocast,
               "final_loss": float(sum(h["loss"] for h in history[-10:]) /
                                   max(len(history[-10:]), 1)) if history else math.nan,
               "history": history}

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        training.write_meta(tmp, "first_train.json", summary)

    training.save_folder(out, write, keep_checkpoint=not result.complete)
    return {k: v for k, v in summary.items() if k != "history"}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
