"""``genseek train genre|seal|dsi``: LoRA fine-tuning recipes for the generative retrievers.

Usage::

    genseek train genre --dataset DIR --out MODEL_DIR [--steps 200] [--batch 8] ...
    genseek train seal  --dataset DIR --out MODEL_DIR ...
    genseek train dsi   --dataset DIR --out MODEL_DIR --scheme semantic [--vectors COLL]
    genseek train dsi   ... --continue-from PREV_MODEL --new-docs IDS.txt [--replay 4] [--sam 0.05]

(or ``python -m genseek.retrievers.generative_train RECIPE ...``). ``DIR`` is a BEIR folder
(corpus.jsonl, queries.jsonl, qrels/train.tsv). The output folder holds a peft LoRA adapter,
``genseek_model.json`` (base model, recipe, steps, seconds) and, for DSI, ``docids.json``; an
index spec names it: ``genre(model=MODEL_DIR)``, ``seal(model=MODEL_DIR)``,
``dsi(model=MODEL_DIR)``.

Recipes (examples are ``(prompt tokens, target tokens)``; the loss is the target's
cross-entropy only; prompts are the ones the index types use at query time):

- **genre**: (query -> ``" " + title``) for every train qrel, plus ``--pseudo`` pseudo-queries
  (a span of the document's text -> its title) per judged document, and with
  ``--index-docs N`` one pseudo-query per corpus document for N of them (-1: all), so that
  the titles of documents no train query judged are learnt too.
- **seal**: (query -> a span of a relevant document): ``--span-len``-token windows of the
  document, sampled with probability proportional to ``1 + overlap`` with the query's tokens.
- **dsi**: indexing examples (the first ``--doc-len`` tokens of a document -> its docid) and
  retrieval examples (a train query or a pseudo-query -> the docid of its document).
  Docid schemes naive / atomic / semantic (hierarchical k-means, k = 10, leaves <= 100, over
  MiniLM vectors; ``--vectors COLL`` reads them from a collection's dense index instead of
  encoding).
- **DSI++** (``--continue-from``): only documents listed in ``--new-docs`` get indexing and
  pseudo-query examples; ``--replay R`` (default 4) mixes ``R`` x as many pseudo-query examples
  of earlier documents (generative memory), and the learning rate defaults to 3e-4 instead of
  1e-3 (the setting that kept D0 without forgetting in benchmarks/RESULTS.md, section 9);
  ``--sam RHO`` turns on sharpness-aware minimisation
  (Foret et al., 2021): each step ascends to ``w + rho g/|g|``, takes the gradient there and
  applies it at ``w``. Without replay this is naive continual fine-tuning.

Bounded CPU time: ``--steps`` optimiser steps, at most ``--max-minutes`` of wall time (the run
stops early and saves), short sequences (``--max-len``), LoRA rank ``--lora-r``. The loop,
its checkpoints and ``--resume`` are :mod:`genseek.training`'s; ``--device auto`` trains on a
GPU when there is one.
``--holdout N`` keeps N random queries of the split out of training as a dev set; their ids
are written to ``genseek_model.json`` (``benchmarks/seal_dev.py`` tunes SEAL's scoring on them).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genseek.errors import GenseekError

if TYPE_CHECKING:
    from genseek.training import Checkpoint

RECIPES = ("genre", "seal", "dsi")
Example = tuple[list[int], list[int]]


# ---------------------------------------------------------------------------------------------
# data


def read_dataset(folder: Path, split: str = "train"
                 ) -> tuple[dict[str, Any], dict[str, str], dict[str, dict[str, int]]]:
    """``(corpus {id: Document}, queries {id: text}, qrels {qid: {doc: rel}})`` of ``split``."""
    from genseek.data.readers import read_corpus, read_qrels, read_queries

    folder = Path(folder)
    if not (folder / "corpus.jsonl").is_file():
        raise GenseekError(f"{folder}: no corpus.jsonl (expected a BEIR dataset folder)")
    corpus = {d.doc_id: d for _, d in read_corpus(folder / "corpus.jsonl")}
    queries = read_queries(folder)
    try:
        qrels = read_qrels(folder, split)
    except GenseekError:
        qrels = {}
    return corpus, queries, qrels


#: tokens of a span pseudo-query (GENRE/DSI pseudo-queries, SEAL's unsupervised inputs)
PSEUDO_QUERY_TOKENS = 16


def pseudo_query(tokenizer: Any, text: str, rng: random.Random,
                 length: int = PSEUDO_QUERY_TOKENS) -> str:
    """A pseudo-query: a random ``length``-token span of ``text`` (the span generator)."""
    toks = tokenizer.encode(text, add_special_tokens=False)
    if len(toks) <= length:
        return text
    s = rng.randrange(0, len(toks) - length)
    return tokenizer.decode(toks[s:s + length], skip_special_tokens=True)


def overlap_span(tokenizer: Any, query: str, text: str, rng: random.Random,
                 span_len: int) -> list[int]:
    """A ``span_len``-token window of ``text`` sampled by ``1 + |window & query tokens|``."""
    toks = tokenizer.encode(" " + text.strip(), add_special_tokens=False)
    if len(toks) <= span_len:
        return toks
    q = set(tokenizer.encode(" " + query, add_special_tokens=False))
    starts = list(range(0, len(toks) - span_len + 1, max(span_len // 2, 1)))
    weights = [1 + len(q & set(toks[s:s + span_len])) ** 2 for s in starts]
    s = rng.choices(starts, weights=weights, k=1)[0]
    return toks[s:s + span_len]


def disjoint_windows(n: int, rng: random.Random, query_len: int, span_len: int
                     ) -> tuple[int, int] | None:
    """Starts ``(q, t)`` of two disjoint random windows ``[q, q + query_len)`` and
    ``[t, t + span_len)`` inside ``range(n)``; ``None`` when ``n < query_len + span_len``."""
    if n < query_len + span_len:
        return None
    # the query window leaves room for the target on its left or on its right
    q = rng.choice([q for q in range(0, n - query_len + 1)
                    if q >= span_len or n - q - query_len >= span_len])
    starts = [s for s in range(0, n - span_len + 1) if s + span_len <= q or s >= q + query_len]
    return q, rng.choice(starts)


def span_pair(tokenizer: Any, text: str, rng: random.Random, query_len: int,
              span_len: int) -> tuple[str, list[int]] | None:
    """SEAL's unsupervised example: a random ``query_len``-token span of ``text`` as the
    pseudo-query and a disjoint random ``span_len``-token span of the same text as the target.

    ``None`` when the text is too short for two disjoint spans.
    """
    toks = tokenizer.encode(" " + text.strip(), add_special_tokens=False)
    starts = disjoint_windows(len(toks), rng, query_len, span_len)
    if starts is None:
        return None
    q, t = starts
    return (tokenizer.decode(toks[q:q + query_len], skip_special_tokens=True),
            toks[t:t + span_len])


# ---------------------------------------------------------------------------------------------
# training core


def collate(batch: Sequence[Example], pad_id: int, max_len: int) -> dict[str, Any]:
    """Right-padded ``input_ids / attention_mask / labels`` ``[B, L]`` (labels -100 = no loss)."""
    import torch

    rows = []
    for prompt, target in batch:
        target = list(target)[: max_len // 2]
        prompt = list(prompt)[-(max_len - len(target)):]
        rows.append((prompt + target, [-100] * len(prompt) + target))
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
        mask[i, :len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


#: DSI++ defaults (``--continue-from``): replayed pseudo-queries of earlier documents per new
#: example, and the learning rate; the setting that kept D0 without forgetting in
#: benchmarks/RESULTS.md, section 9.
DSI_PLUS_REPLAY = 4.0
DSI_PLUS_LR = 3e-4


def train_examples(model: Any, examples: Sequence[Example], *, pad_id: int, steps: int,
                   batch: int = 8, lr: float = 1e-3, max_len: int = 96, sam: float = 0.0,
                   seed: int = 0, max_seconds: float | None = None,
                   progress: bool = True, autocast: bool = False,
                   checkpoint: Checkpoint | None = None, every: int = 0) -> dict[str, Any]:
    """AdamW (optionally SAM) on the trainable parameters for ``steps`` steps (or time out),
    on the device the model is on (:class:`genseek.training.Trainer`).

    ``autocast`` runs the forward passes in bfloat16 autocast (fp32 master weights and
    optimiser state): about 2x faster where the CPU has AMX/AVX512-BF16, and on a GPU.
    ``checkpoint`` / ``every``: resumable checkpoints (see :mod:`genseek.training`).

    Returns ``{"steps", "seconds", "loss_first", "loss_last", "planned_steps", "stopped_by",
    "train_seconds"}``.
    """
    from genseek.models import placement
    from genseek.training import Batches, Trainer

    if not examples:
        raise GenseekError("train: no training examples")
    device = next(model.parameters()).device
    where = placement(str(device), "bfloat16" if autocast else "float32")

    def loss(idx: list[int], step: int) -> tuple[Any, dict[str, float]]:
        inputs = collate([examples[i] for i in idx], pad_id, max_len)
        return model(**{k: v.to(device) for k, v in inputs.items()}).loss, {}

    model.train()
    trainer = Trainer([p for p in model.parameters() if p.requires_grad], steps=steps,
                      batches=Batches(len(examples), batch, random.Random(seed)), lr=lr,
                      where=where, autocast=autocast, sam=sam, max_seconds=max_seconds,
                      checkpoint=checkpoint, every=every, desc="train", progress=progress)
    result = trainer.run(loss)
    model.eval()
    losses = result.values("loss")
    return {"steps": result.steps, "seconds": round(result.seconds, 1),
            "loss_first": losses[0], "loss_last": sum(losses[-10:]) / len(losses[-10:]),
            **result.summary()}


# ---------------------------------------------------------------------------------------------
# recipes -> examples


def genre_examples(lm: Any, corpus: dict[str, Any], queries: dict[str, str],
                   qrels: dict[str, dict[str, int]], rng: random.Random, pseudo: int,
                   instruction: str, index_docs: Sequence[Any] = ()) -> list[Example]:
    from genseek.retrievers.genre import title_key
    from genseek.retrievers.prompts import build_prompt

    out: list[Example] = []
    for qid, rels in qrels.items():
        for doc_id, rel in rels.items():
            doc = corpus.get(doc_id)
            if rel <= 0 or doc is None or not doc.title.strip() or qid not in queries:
                continue
            target = title_key(lm.tokenizer, doc) + [lm.eos_id]
            out.append((build_prompt(lm, instruction, queries[qid], "Title:"), target))
            for _ in range(pseudo):
                pq = pseudo_query(lm.tokenizer, doc.text, rng)
                out.append((build_prompt(lm, instruction, pq, "Title:"), target))
    for doc in index_docs:  # the corpus itself: a span of each document -> its title
        if doc.title.strip() and doc.text.strip():
            out.append((build_prompt(lm, instruction, pseudo_query(lm.tokenizer, doc.text, rng),
                                     "Title:"), title_key(lm.tokenizer, doc) + [lm.eos_id]))
    return out


def seal_examples(lm: Any, corpus: dict[str, Any], queries: dict[str, str],
                  qrels: dict[str, dict[str, int]], rng: random.Random, span_len: int,
                  per_pair: int, instruction: str, index_docs: Sequence[Any] = ()
                  ) -> list[Example]:
    """Supervised (query -> overlap-sampled span of a relevant document) examples, then one
    unsupervised (span -> another span of the same document) example per ``index_docs``."""
    from genseek.retrievers.prompts import build_prompt

    out: list[Example] = []
    for qid, rels in qrels.items():
        for doc_id, rel in rels.items():
            doc = corpus.get(doc_id)
            if rel <= 0 or doc is None or qid not in queries:
                continue
            prompt = build_prompt(lm, instruction, queries[qid], "")
            for _ in range(per_pair):
                out.append((prompt, overlap_span(lm.tokenizer, queries[qid], doc.text, rng,
                                                 span_len)))
    for doc in index_docs:  # the corpus itself (unlabelled): span -> another span
        pair = span_pair(lm.tokenizer, doc.text, rng, PSEUDO_QUERY_TOKENS, span_len)
        if pair is not None:
            out.append((build_prompt(lm, instruction, pair[0], ""), pair[1]))
    return out


def dsi_examples(lm: Any, docs: Sequence[Any], keys: dict[str, list[int]],
                 queries: dict[str, str], qrels: dict[str, dict[str, int]], rng: random.Random,
                 *, doc_len: int, pseudo: int, instruction: str) -> list[Example]:
    """Indexing (doc prefix -> docid) and retrieval (query / pseudo-query -> docid) examples."""
    from genseek.retrievers.prompts import build_prompt

    out: list[Example] = []
    wanted = {d.doc_id for d in docs}
    for d in docs:
        target = keys[d.doc_id] + [lm.eos_id]
        toks = lm.tokenizer.encode(d.contents, add_special_tokens=False)[:doc_len]
        text = lm.tokenizer.decode(toks, skip_special_tokens=True)
        out.append((build_prompt(lm, instruction, text, "Docid:"), target))
        for _ in range(pseudo):
            out.append((build_prompt(lm, instruction, pseudo_query(lm.tokenizer, d.text, rng),
                                     "Docid:"), target))
    for qid, rels in qrels.items():
        for doc_id, rel in rels.items():
            if rel > 0 and doc_id in wanted and qid in queries:
                out.append((build_prompt(lm, instruction, queries[qid], "Docid:"),
                            keys[doc_id] + [lm.eos_id]))
    return out


def collection_vectors(coll: Path, ids: Sequence[str]) -> Any:
    """MiniLM vectors ``[len(ids), 384]`` read from ``coll/indexes/dense/vectors.sqlite``."""
    import sqlite3

    import numpy as np

    db = sqlite3.connect(f"file:{Path(coll) / 'indexes' / 'dense' / 'vectors.sqlite'}?mode=ro",
                         uri=True)
    rows = dict(db.execute("SELECT doc_id, vec FROM vectors"))
    db.close()
    missing = [i for i in ids if i not in rows]
    if missing:
        raise GenseekError(f"{coll}: no stored vector for {len(missing)} documents "
                           f"(e.g. {missing[0]!r})")
    return np.stack([np.frombuffer(rows[i], dtype="<f4") for i in ids])


def assign_docids(lm: Any, docs: Sequence[Any], scheme: str, vectors: Any = None
                  ) -> dict[str, Any]:
    """A docids.json mapping for ``docs`` under ``scheme``."""
    from genseek.retrievers.dsi import DocidMap, digit_ids, hierarchical_kmeans
    from genseek.retrievers.genre import vocab_size

    if scheme == "semantic":
        if vectors is None:
            from genseek.encoders import shared_encoder

            vectors = shared_encoder("all-MiniLM-L6-v2").encode([d.contents for d in docs])
        paths, cents = hierarchical_kmeans(vectors)
        digits = digit_ids(lm.tokenizer)
        return {"scheme": scheme, "ids": {d.doc_id: [digits[c] for c in p]
                                          for d, p in zip(docs, paths, strict=True)},
                "centroids": cents, "next_atomic": 0}
    m = DocidMap(scheme, lm.tokenizer, vocab_size(lm), None)
    for d in docs:
        m.key(d)
    return m.to_json()


# ---------------------------------------------------------------------------------------------
# command line


_ABOUT = {
    "genre": "GENRE recipe: LoRA fine-tuning of a causal LM to generate the title of a relevant "
             "document from a query (train qrels, plus pseudo-queries: spans of a document "
             "-> its title). Index spec: genre(model=OUT).",
    "seal": "SEAL recipe: LoRA fine-tuning of a causal LM to generate a span of a relevant "
            "document from a query (spans sampled by their overlap with the query). Index "
            "spec: seal(model=OUT).",
    "dsi": "DSI recipe: LoRA fine-tuning of a causal LM to map a document's first tokens, a "
           "train query or a pseudo-query to the document's docid. With --continue-from it is "
           "DSI++: only the --new-docs documents are indexed, with replayed pseudo-queries of "
           "earlier documents. Index spec: dsi(model=OUT).",
}
_EPILOG = """\
DIR is a BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv). OUT must not exist or be
empty; it receives a peft LoRA adapter and genseek_model.json (base model, recipe, steps,
seconds), and for dsi docids.json. The run stops after --steps optimiser steps or
--max-minutes of wall time, whichever comes first, and saves what it has. It checkpoints into
OUT/checkpoint every --checkpoint-every steps and when --max-minutes stops it; --resume (with
the same options) continues an interrupted or stopped run.

examples:
  genseek train genre --dataset ../shared/datasets/scifact --out genre-scifact --steps 200
  genseek train dsi --dataset DIR --out dsi-v1 --scheme semantic --vectors COLLECTION
  genseek train dsi --dataset DIR --out dsi-v2 --continue-from dsi-v1 --new-docs new.txt
"""


def parser(recipe: str) -> argparse.ArgumentParser:
    """The parser of ``genseek train RECIPE`` (RECIPE: genre, seal or dsi), without the recipe
    argument itself: :func:`main` takes it from ``argv[0]``."""
    from genseek.cliutil import positive
    from genseek.training import add_options, recipe_parser

    p = recipe_parser(recipe, _ABOUT[recipe], _EPILOG)
    p.set_defaults(recipe=recipe)
    p.add_argument("--model", default="smollm2",
                   help="base causal LM: a genseek model alias, a Hugging Face name or a folder")
    p.add_argument("--batch", type=positive, default=8, metavar="N",
                   help="examples per optimiser step")
    p.add_argument("--max-len", type=positive, default=96, metavar="TOKENS",
                   help="prompt + target tokens per example (longer ones are cut)")
    p.add_argument("--lora-r", type=positive, default=8, metavar="R",
                   help="LoRA rank (alpha is 2 R)")
    p.add_argument("--pseudo", type=int, default=1, metavar="N",
                   help="pseudo-queries (spans of the document's text) per judged document, "
                        ">= 0")
    p.add_argument("--holdout", type=int, default=0, metavar="N",
                   help="leave N random queries of --split out of training, a dev set whose "
                        "ids are written to genseek_model.json (default: %(default)s, none)")
    p.add_argument("--continue-from", type=Path, metavar="MODEL",
                   help="a model folder to go on training: for dsi the previous DSI model "
                        "(DSI++), for genre and seal more steps on new data; the default "
                        f"--lr is then {DSI_PLUS_LR:g} (default: start from --model)")
    p.add_argument("--sam", type=float, default=0.0, metavar="RHO",
                   help="sharpness-aware minimisation radius, >= 0; each step takes the "
                        "gradient at w + RHO g/|g| (default: %(default)s, off)")
    add_options(p, max_minutes=30.0, lr=None, steps=200, autocast=True,
                out_help="model folder to write (new or empty)",
                lr_help=f"AdamW learning rate, > 0 (default: 1e-3, or {DSI_PLUS_LR:g} with "
                        "--continue-from)",
                seed_help="random seed of sampling, shuffling and LoRA initialisation")

    g = p.add_argument_group("genre and seal options")
    g.add_argument("--index-docs", type=int, default=0, metavar="N",
                   help="also one unsupervised example for N random corpus documents (-1: "
                        "every document): genre a span -> the title, seal a span -> another "
                        "span of the document (default: %(default)s, none)")
    g = p.add_argument_group("seal options")
    g.add_argument("--span-len", type=positive, default=10, metavar="TOKENS",
                   help="target span length")
    g.add_argument("--spans", type=positive, default=2, metavar="N",
                   help="spans sampled per (query, relevant document) pair")
    g = p.add_argument_group("dsi options")
    g.add_argument("--doc-len", type=positive, default=48, metavar="TOKENS",
                   help="document prefix tokens of an indexing example")
    g.add_argument("--scheme", choices=("naive", "atomic", "semantic"), default="semantic",
                   help="docids: the id string's tokens (naive), one new token per document "
                        "(atomic), or hierarchical k-means paths over MiniLM vectors "
                        "(semantic)")
    g.add_argument("--vectors", type=Path, metavar="COLLECTION",
                   help="semantic: reuse the dense vectors of this collection instead of "
                        "encoding the documents (default: encode them)")
    g.add_argument("--docs", type=Path, metavar="FILE",
                   help="a file of document ids (one a line) to index (default: every "
                        "corpus document)")
    g.add_argument("--new-docs", type=Path, metavar="FILE",
                   help="DSI++ (--continue-from): a file of the new document ids to index "
                        "(default: none)")
    g.add_argument("--replay", type=float, default=DSI_PLUS_REPLAY, metavar="R",
                   help="DSI++: replayed pseudo-queries of earlier documents per new "
                        "example, >= 0 (0: naive continual fine-tuning)")
    return p


def _ids_file(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    if not path.is_file():
        raise GenseekError(f"{path}: no such file of document ids")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _check_args(args: argparse.Namespace, corpus: dict[str, Any]) -> None:
    """One-line errors for options that cannot work together, before any model loads."""
    if not corpus:
        raise GenseekError(f"{args.dataset}: the corpus is empty")
    if args.spans < 1:
        raise GenseekError(f"--spans {args.spans}: expected at least 1 span per pair")
    if args.index_docs < -1:
        raise GenseekError(f"--index-docs {args.index_docs}: expected -1 (all), 0 or a count")
    if args.index_docs and args.recipe == "dsi":
        raise GenseekError("--index-docs is for genre and seal; dsi indexes every document of "
                           "--docs (default: all)")


def _dsi_examples(args: argparse.Namespace, lm: Any, corpus: dict[str, Any],
                  queries: dict[str, str], qrels: dict[str, dict[str, int]],
                  rng: random.Random) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """DSI's ``(examples, docids, extra facts)``: docids assigned to ``--docs`` (indexing and
    retrieval examples), or, with ``--continue-from``, DSI++: the new documents get docids
    of the model's scheme and old ones are replayed (``--replay``)."""
    from genseek.params import DSI_INSTRUCTION
    from genseek.retrievers.dsi import DOCIDS_FILE, load_docid_data

    wanted = _ids_file(args.docs)
    docs = [corpus[i] for i in wanted if i in corpus] if wanted else list(corpus.values())
    extra: dict[str, Any] = {}
    if args.continue_from:
        data = load_docid_data(str(args.continue_from))
        if data is None:
            raise GenseekError(f"{args.continue_from}: not a DSI model (no {DOCIDS_FILE})")
        from genseek.retrievers.dsi import DocidMap
        from genseek.retrievers.genre import vocab_size

        m = DocidMap(data["scheme"], lm.tokenizer, vocab_size(lm), data)
        new_ids = _ids_file(args.new_docs) or []
        new_docs = [corpus[i] for i in new_ids if i in corpus]
        old_docs = [corpus[i] for i in m.ids if i in corpus]
        for d in new_docs:
            m.key(d)
        docids = m.to_json()
        examples = dsi_examples(lm, new_docs, m.ids, queries, {}, rng, doc_len=args.doc_len,
                                pseudo=args.pseudo, instruction=DSI_INSTRUCTION)
        n_replay = int(args.replay * len(examples))
        if n_replay and old_docs:
            from genseek.retrievers.prompts import build_prompt

            for d in rng.choices(old_docs, k=n_replay):
                examples.append((build_prompt(lm, DSI_INSTRUCTION, pseudo_query(
                    lm.tokenizer, d.text, rng), "Docid:"), m.ids[d.doc_id] + [lm.eos_id]))
        extra = {"new_docs": len(new_docs), "replayed": n_replay}
    else:
        vectors = collection_vectors(args.vectors, [d.doc_id for d in docs]) \
            if args.vectors and args.scheme == "semantic" else None
        docids = assign_docids(lm, docs, args.scheme, vectors)
        examples = dsi_examples(lm, docs, docids["ids"], queries, qrels, rng,
                                doc_len=args.doc_len, pseudo=args.pseudo,
                                instruction=DSI_INSTRUCTION)
    extra["docs"] = len(docids["ids"])
    return examples, docids, extra


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from genseek import training
    from genseek.models import MODEL_META, load_lm
    from genseek.params import GENRE_INSTRUCTION, SEAL_INSTRUCTION
    from genseek.retrievers.dsi import DOCIDS_FILE
    from genseek.retrievers.prompts import lora_wrap

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    checkpoint = training.claim_out(args.out, args.recipe, training.run_config(args),
                                    resume=args.resume, replace=False)
    where = training.placement_for(args)
    corpus, queries, qrels = read_dataset(args.dataset, args.split)
    _check_args(args, corpus)
    held = training.holdout(qrels, args.holdout, args.seed)
    for q in held:
        del qrels[q]
    base = str(args.continue_from) if args.continue_from else args.model
    # a private copy (LoRA must not touch cached models), float32 master weights
    lm = load_lm.__wrapped__(base, where.device, "float32")
    extra: dict[str, Any] = {}
    pool = sorted(corpus)
    picked = pool if args.index_docs == -1 or args.index_docs >= len(pool) else \
        rng.sample(pool, args.index_docs)
    if args.recipe == "genre":
        examples = genre_examples(lm, corpus, queries, qrels, rng, args.pseudo,
                                  GENRE_INSTRUCTION, [corpus[i] for i in picked])
    elif args.recipe == "seal":
        examples = seal_examples(lm, corpus, queries, qrels, rng, args.span_len, args.spans,
                                 SEAL_INSTRUCTION, [corpus[i] for i in picked])
    else:
        examples, docids, extra = _dsi_examples(args, lm, corpus, queries, qrels, rng)
    model = lora_wrap(lm, r=args.lora_r, alpha=2 * args.lora_r)
    lr = args.lr if args.lr is not None else (DSI_PLUS_LR if args.continue_from else 1e-3)
    summary = train_examples(model, examples, pad_id=lm.pad_id, steps=args.steps,
                             batch=args.batch, lr=lr, max_len=args.max_len, sam=args.sam,
                             seed=args.seed, max_seconds=args.max_minutes * 60,
                             autocast=args.autocast == "bf16", checkpoint=checkpoint,
                             every=args.checkpoint_every)
    meta = {"base": base, "recipe": args.recipe, "examples": len(examples), "lr": lr,
            "autocast": args.autocast, **summary, **extra}
    if held:
        meta["holdout"] = {"split": args.split, "queries": held}
    if args.recipe == "dsi":
        meta["scheme"] = docids["scheme"]

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        if args.recipe == "dsi":
            (tmp / DOCIDS_FILE).write_text(json.dumps(docids))
        training.write_meta(tmp, MODEL_META, meta)

    training.save_folder(args.out, write, keep_checkpoint=summary["stopped_by"] == "time")
    return {"out": str(args.out), **meta}


def main(argv: list[str]) -> int:
    """``genseek train RECIPE ...``: ``argv[0]`` is the recipe (genre, seal or dsi), the rest
    its options; 0 on success (and for ``--help``), 2 with one line on a bad argument."""
    argv = list(argv)
    try:
        if not argv or argv[0] not in RECIPES:
            from genseek.cliutil import HelpFormatter

            pick = argparse.ArgumentParser(
                prog="genseek train", formatter_class=HelpFormatter,
                description="LoRA fine-tuning recipes for the generative retrievers; "
                "'genseek train RECIPE --help' lists a recipe's options.")
            pick.add_argument("recipe", choices=RECIPES, help="the recipe to run")
            picked, rest = pick.parse_known_args(argv)  # --help, or no recipe, or unknown
            return main([picked.recipe, *rest])
        p = parser(argv[0])
        args = p.parse_args(argv[1:])
        for name, value in (("--pseudo", args.pseudo), ("--holdout", args.holdout),
                            ("--sam", args.sam), ("--replay", args.replay)):
            if not value >= 0:
                p.error(f"{name} must be >= 0, not {value:g}")
        if args.index_docs < -1:
            p.error(f"--index-docs must be -1 (every document), 0 or a count, not "
                    f"{args.index_docs}")
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, (int, type(None))) else 2
    try:
        summary = run(args)
    except GenseekError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary) if args.json else
          "\n".join(f"{k}: {v}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
