"""Generative retrievers on SciFact: GENRE and SEAL (zero-shot, optionally fine-tuned), alone
and RRF-fused with bm25 and dense, plus query latency.

Side by side in one process, on the same queries: bm25 and dense (from a copy of the cached
collection $GENSEEK_CACHE/collections/scifact, built with ``genseek index`` when missing),
GENRE and SEAL over the *whole* SciFact corpus (5,183 documents; title trie / FM-index of
~1.7 M SmolLM2 tokens), each alone and in RRF fusions. Because SmolLM2-135M decodes slowly on
a shared 2-core CPU, only the first ``--queries`` judged test queries are evaluated (every
figure, baselines included, is on that subset; the subset size is printed and stored).
``--train-steps N`` also fine-tunes SEAL (LoRA, SciFact train qrels, query -> overlapping
span) in-process and evaluates it.

    python benchmarks/generative.py --quick --json      # 16 queries, beams 5
    python benchmarks/generative.py --queries 100        # the documented larger run

Fine-tuned models trained beforehand are evaluated with ``--seal-model``, ``--genre-model``
and ``--dsi-model`` (``genseek train seal|genre|dsi`` folders; DSI over the whole corpus).
``--seal-params k=v,...`` adds a ``seal-ft-tuned`` run with scoring parameters chosen on
held-out train queries by ``seal_dev.py``: the keys are decoded once and scored both ways.
``--dev-fusion FILE`` (a ``seal_dev.py`` result) adds bm25 + dense and SEAL + bm25 + dense
fused with the RRF weights each got on those dev queries.

``--dsi-docs N`` runs the DSI++ experiment instead (``--skip-ir`` skips the part above): the
documents relevant to the first judged test queries, up to ``N``, with D0 = the first 80% and
four increments of 5%; DSI is trained (LoRA) on indexing + pseudo-query examples only (the
test queries are never trained on). After each increment, Hits@10 of the test queries whose
relevant document is in D0 and of those whose relevant document is new, for naive continual
fine-tuning, DSI++ (replay of D0 pseudo-queries) with and without SAM, and full retraining
(measured at the last increment; its steps counted for every increment).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as C

from genseek.retrievers.generative_train import DSI_PLUS_LR, DSI_PLUS_REPLAY

CACHED = C.cache("collections", "scifact")


DSI_VARIANTS = ("naive", "dsi++", "dsi++sam", "retrain")


def _variants(text: str) -> list[str]:
    chosen = [v.strip() for v in text.split(",") if v.strip()]
    unknown = sorted(set(chosen) - set(DSI_VARIANTS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; use {', '.join(DSI_VARIANTS)}")
    return chosen


def _sweep(text: str) -> list[tuple[str, str]]:
    pairs = [p.strip().split(":") for p in text.split(",") if p.strip()]
    for pair in pairs:
        try:
            if len(pair) != 2 or float(pair[0]) < 0 or float(pair[1]) <= 0:
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{':'.join(pair)!r}: expected REPLAY:LR, e.g. 2:5e-4") from None
    return [(r, lr) for r, lr in pairs]


def search_params(values: dict[str, float]) -> dict[str, float | int]:
    """``--seal-params`` values (read as floats) for the strict search schema: a whole number
    is an int (``rare_threshold=8000``), which a float field accepts as well."""
    return {k: int(v) if float(v).is_integer() else v for k, v in values.items()}


def _seal_runs(ix: Any, qtexts: list[str], tuned: dict[str, float]) -> dict[str, list]:
    """``seal-ft`` at the index's own parameters and, when ``tuned`` is given, ``seal-ft-tuned``
    with those overrides, both ranked from one decoding (``SealIndex.decode`` / ``rank``)."""
    if not tuned:
        return {"seal-ft": ix.search(qtexts, 100)}
    own = ix.params
    if any(tuned.get(n, own[n]) != own[n] for n in ("num_beams", "max_new_tokens")):
        return {"seal-ft": ix.search(qtexts, 100), "seal-ft-tuned": ix.search(qtexts, 100,
                                                                             tuned)}
    keysets = ix.decode(qtexts, {n: max(own[n], tuned.get(n, own[n]))
                                 for n in ("unigrams", "max_query_keys")})
    return {"seal-ft": ix.rank(keysets, 100), "seal-ft-tuned": ix.rank(keysets, 100, tuned)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 queries")
    ap.add_argument("--json", action="store_true", help="print the JSON result last")
    ap.add_argument("--queries", type=int, default=None, help="judged test queries evaluated")
    ap.add_argument("--beams", type=int, default=5)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--retrievers", default="genre,seal")
    ap.add_argument("--train-steps", type=int, default=0, help="SEAL fine-tuning steps (0: no)")
    ap.add_argument("--seal-model", type=Path, default=None,
                    help="evaluate this fine-tuned SEAL model (a genseek train seal folder) "
                         "as seal-ft instead of training one here")
    ap.add_argument("--seal-params", type=C.key_numbers, default={},
                    help="search parameters of seal-ft as k=v,... (e.g. from seal_dev.py)")
    ap.add_argument("--dev-fusion", type=Path, default=None,
                    help="a seal_dev.py result: also fuse with the RRF weights tuned there")
    ap.add_argument("--genre-model", type=Path, default=None,
                    help="evaluate this fine-tuned GENRE model (genseek train genre) as genre-ft")
    ap.add_argument("--dsi-model", type=Path, default=None,
                    help="evaluate this DSI model (genseek train dsi) as dsi-ft, over the "
                         "whole corpus")
    ap.add_argument("--out", type=Path, default=None,
                    help="result JSON (default results/generative[_quick].json)")
    ap.add_argument("--latency-batch", type=int, default=32)
    ap.add_argument("--dsi-docs", type=int, default=0, help="DSI++ experiment size (0: no)")
    ap.add_argument("--dsi-steps", type=int, default=150, help="DSI steps on D0")
    ap.add_argument("--dsi-inc-steps", type=int, default=20, help="steps per increment")
    ap.add_argument("--dsi-scheme", default="atomic")
    ap.add_argument("--dsi-replay", type=float, default=DSI_PLUS_REPLAY,
                    help="DSI++: replayed pseudo-queries of earlier documents per new example "
                         f"(default {DSI_PLUS_REPLAY:g}, as genseek train dsi)")
    ap.add_argument("--dsi-inc-lr", type=float, default=DSI_PLUS_LR,
                    help=f"learning rate of increments (default {DSI_PLUS_LR:g})")
    ap.add_argument("--dsi-variants", type=_variants, default=list(DSI_VARIANTS),
                    help=f"which DSI++ variants to run, comma-separated ({','.join(DSI_VARIANTS)})")
    ap.add_argument("--dsi-sweep", type=_sweep, default=[],
                    help="extra DSI++ variants as REPLAY:LR pairs, e.g. 1.5:5e-4,2:1e-3")
    ap.add_argument("--autocast", choices=["off", "bf16"], default="off",
                    help="train in bfloat16 autocast (fp32 master weights)")
    ap.add_argument("--dsi-out", type=Path,
                    default=C.REPO / "benchmarks" / "results" / "generative_dsi.json",
                    help="where the DSI++ result JSON is written")
    ap.add_argument("--skip-ir", action="store_true", help="only the DSI++ experiment")
    ap.add_argument("--collection", type=Path, default=None,
                    help=f"SciFact collection with bm25 + dense, copied, never modified "
                    f"(default {CACHED}, built there with genseek index when missing)")
    return ap.parse_args(argv)


def read_inputs(args: argparse.Namespace) -> tuple[str | None, dict[str, Any] | None]:
    """``(error message, dev fusion block)``: the model folders and the ``--dev-fusion``
    file named must exist, and the latter hold a ``fusion`` block."""
    for flag, path in (("--seal-model", args.seal_model), ("--genre-model", args.genre_model),
                       ("--dsi-model", args.dsi_model), ("--dev-fusion", args.dev_fusion)):
        if path is not None and not path.exists():
            return f"error: {flag} {path}: no such file or folder", None
    if args.dev_fusion is None:
        return None, None
    try:
        return None, json.loads(args.dev_fusion.read_text())["fusion"]
    except (OSError, ValueError, KeyError) as exc:
        return (f"error: --dev-fusion {args.dev_fusion}: expected a seal_dev.py result with a "
                f"'fusion' block ({type(exc).__name__}: {exc})"), None


@dataclass
class Bench:
    """What the steps of one run share: the queries, the corpus, and what they produce."""

    args: argparse.Namespace
    tmp: Path
    qids: list[str]
    qtexts: list[str]
    sub_qrels: dict[str, dict[str, int]]
    docs: tuple = ()
    runs: dict[str, dict[str, list]] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    built: dict[str, Any] = field(default_factory=dict)

    @property
    def n_q(self) -> int:
        return len(self.qids)

    def add_run(self, name: str, hits: list[list]) -> None:
        self.runs[name] = dict(zip(self.qids, hits, strict=True))

    def index_all(self, ix: Any) -> None:
        """Apply and commit every document to ``ix``."""
        from genseek.types import ChangeSet

        ix.apply(ChangeSet(0, len(self.docs), self.docs))
        ix.commit(len(self.docs))

    def build(self, name: str, cls: Any, spec: dict[str, Any], lm: Any = None) -> Any:
        """``cls(tmp / name, spec, lm)`` after :meth:`index_all`, both timed as ``build_NAME``;
        the index is kept for the latencies."""
        with C.Phase() as ph:
            ix = cls(self.tmp / name, spec, lm=lm)
            self.index_all(ix)
        self.timings[f"build_{name}"] = ph.as_dict()
        self.built[name] = ix
        return ix

    def search(self, name: str, ix: Any, timing: str) -> float:
        """Run ``ix`` on the queries as ``name`` (timed as ``timing``); returns the seconds."""
        with C.Phase() as ph:
            hits = ix.search(self.qtexts, 100)
        self.add_run(name, hits)
        self.timings[timing] = {**ph.as_dict(), "per_query_s": ph.seconds / self.n_q}
        return ph.seconds


def baselines(bench: Bench, collection: Path) -> None:
    """1. bm25 and dense from a copy of the cached collection."""
    from genseek.collection import Collection

    shutil.copytree(collection, bench.tmp / "scifact",
                    ignore=shutil.ignore_patterns("collection.lock"))
    with Collection.open(bench.tmp / "scifact") as coll:
        for name in ("bm25", "dense"):
            with C.Phase() as ph:
                hits = coll.index(name).search(bench.qtexts, 100)
            bench.add_run(name, hits)
            bench.timings[name] = ph.as_dict()


def zero_shot(bench: Bench, lm: Any) -> None:
    """2. GENRE / SEAL over the whole corpus with the base model; a partial result is written
    after each."""
    from genseek.evaluation import evaluate
    from genseek.retrievers.genre import GenreIndex
    from genseek.retrievers.seal import SealIndex

    args = bench.args
    for name in [r for r in args.retrievers.split(",") if r]:
        spec = {"model": args.model, "num_beams": args.beams}
        if name == "seal":
            ix = bench.build(name, SealIndex, spec, lm)
        else:
            ix = bench.build(name, GenreIndex, {**spec, "missing_title": "skip"}, lm)
        seconds = bench.search(f"{name}-zs", ix, f"search_{name}-zs")
        print(f"{name}: {bench.n_q} queries in {seconds:.1f} s", file=sys.stderr)
        partial = {n: evaluate(r, bench.sub_qrels) for n, r in bench.runs.items()}
        (bench.tmp.parent / "genseek-generative-partial.json").write_text(json.dumps(
            {"queries": bench.n_q, "metrics": partial, "timings": bench.timings}, indent=1))


def train_seal(bench: Bench, folder: Path) -> Any:
    """SEAL fine-tuned here (LoRA, ``--train-steps``): the merged model as an LM."""
    import random

    from genseek.models import LM
    from genseek.models import load_lm as _load
    from genseek.params import SEAL_INSTRUCTION
    from genseek.retrievers.generative_train import (
        read_dataset,
        seal_examples,
        train_examples,
    )
    from genseek.retrievers.prompts import lora_wrap

    args = bench.args
    corpus, queries, train_qrels = read_dataset(folder, "train")
    fresh = _load.__wrapped__(args.model, "cpu")
    ex = seal_examples(fresh, corpus, queries, train_qrels, random.Random(0), 10, 2,
                       SEAL_INSTRUCTION)
    model = lora_wrap(fresh)
    with C.Phase() as ph:
        summary = train_examples(model, ex, pad_id=fresh.pad_id,
                                 steps=args.train_steps, batch=8, max_len=96,
                                 autocast=args.autocast == "bf16")
    bench.timings["train_seal"] = {**ph.as_dict(), **summary, "examples": len(ex)}
    return LM(f"{args.model}+seal-lora", model.merge_and_unload(), fresh.tokenizer,
              fresh.is_encoder_decoder, fresh.context, fresh.eos_id, fresh.pad_id,
              fresh.meta)


def fine_tuned_seal(bench: Bench, tuned: Any) -> None:
    """3. SEAL with the fine-tuned model ``tuned``: at its own parameters and, with
    ``--seal-params``, at those (one decoding)."""
    from genseek.retrievers.seal import SealIndex

    args = bench.args

    ix = SealIndex(bench.tmp / "seal-ft", {"model": str(args.seal_model or args.model),
                                           "num_beams": args.beams}, lm=tuned)
    bench.index_all(ix)
    with C.Phase() as ph:
        got = _seal_runs(ix, bench.qtexts, search_params(args.seal_params))
    for name, hits in got.items():
        bench.add_run(name, hits)
    bench.timings["search_seal-ft"] = {**ph.as_dict(), "per_query_s": ph.seconds / bench.n_q}
    bench.built["seal-ft"] = ix


def fine_tuned_tries(bench: Bench) -> None:
    """3b. fine-tuned GENRE and DSI from ``genseek train genre|dsi`` folders."""
    from genseek.retrievers.dsi import DsiIndex
    from genseek.retrievers.genre import GenreIndex

    args = bench.args
    for name, path in (("genre-ft", args.genre_model), ("dsi-ft", args.dsi_model)):
        if path is None:
            continue
        spec = {"model": str(path), "num_beams": args.beams}
        if name == "genre-ft":
            ix = bench.build(name, GenreIndex, {**spec, "missing_title": "skip"})
        else:
            ix = bench.build(name, DsiIndex, spec)
        seconds = bench.search(name, ix, f"search_{name}")
        print(f"{name}: {bench.n_q} queries in {seconds:.1f} s", file=sys.stderr)


def fusions(bench: Bench, dev_fusion: dict[str, Any] | None) -> None:
    """4. RRF of each generative run with bm25 (+ dense), of all of them, and the dev-tuned
    weights of ``--dev-fusion``."""
    from genseek.kernels.fusion import rrf
    from genseek.types import Hit

    runs = bench.runs
    gen = [r for r in runs if r not in ("bm25", "dense")]
    combos = [("bm25", "dense")] + [(g,) + b for g in gen for b in
                                    (("bm25",), ("bm25", "dense"))]
    best_seal = [g for g in gen if g != "seal-ft" or "seal-ft-tuned" not in gen]
    if len(best_seal) > 1:  # every generative run (SEAL at its tuned setting) + both
        combos.append(tuple(best_seal) + ("bm25", "dense"))
    weighted = []  # (name, runs, weights) of the dev-tuned fusions
    if dev_fusion:
        seal = "seal-ft-tuned" if "seal-ft-tuned" in runs else "seal-ft"
        for label, combo in (("bm25+dense", ("bm25", "dense")),
                             ("seal+bm25+dense", (seal, "bm25", "dense"))):
            w = dev_fusion[label]["weights"]
            if all(c in runs for c in combo):
                weighted.append((f"{'+'.join(combo)} (dev weights)", combo,
                                 [w["seal" if c == seal else c] for c in combo]))
    for name, combo, weights in [("+".join(c), c, None) for c in combos] + weighted:
        runs[name] = {q: [Hit(d, s) for d, s in rrf(
            [[(h.doc_id, h.score) for h in runs[c][q]] for c in combo], 100,
            weights=weights)] for q in bench.qids}


def latencies(bench: Bench) -> dict[str, Any]:
    """5. latency at batch 1 and batch B (SEAL: decode and rank apart, cold key caches)."""
    from genseek.retrievers.seal import SealIndex

    args, qtexts = bench.args, bench.qtexts
    latency: dict[str, Any] = {}
    bq = (qtexts * ((args.latency_batch // max(len(qtexts), 1)) + 1))[:args.latency_batch]
    for name, ix in bench.built.items():
        # the tuned setting's cost
        extra = search_params(args.seal_params) if name == "seal-ft" else {}
        row: dict[str, Any] = {"beams": args.beams}
        for label, batch in (("batch1", qtexts[:1]), (f"batch{args.latency_batch}", bq)):
            if isinstance(ix, SealIndex):  # cold key caches: these queries were searched
                ix.store.clear_caches()
                with C.Phase() as pd:
                    keysets = ix.decode(batch, extra)
                with C.Phase() as pr:
                    ix.rank(keysets, 10, extra)
                row[f"{label}_decode_ms_per_query"] = 1000 * pd.seconds / len(batch)
                row[f"{label}_rank_ms_per_query"] = 1000 * pr.seconds / len(batch)
                seconds = pd.seconds + pr.seconds
            else:
                with C.Phase() as pb:
                    ix.search(batch, 10, extra or None)
                seconds = pb.seconds
            row["batch1_ms" if label == "batch1" else f"{label}_ms_per_query"] = \
                1000 * seconds / len(batch)
        latency[name] = row
    return latency


def print_tables(args: argparse.Namespace, n_q: int, metrics: dict[str, Any],
                 latency: dict[str, Any]) -> None:
    rows = [(n, m["nDCG@10"], m["R@100"],
             m["nDCG@10"] / max(metrics["bm25"]["nDCG@10"], 1e-9)) for n, m in metrics.items()]
    print(f"\nSciFact test, first {n_q} judged queries (beams {args.beams}, model {args.model})")
    C.table(["run", "nDCG@10", "R@100", "vs bm25"], rows)
    print()
    b = args.latency_batch
    C.table(["retriever", "beams", "batch 1 ms/query", f"batch {b} ms/query",
             "batch 1 decode / rank", f"batch {b} decode / rank"],
            [(n, v["beams"], v["batch1_ms"], v[f"batch{b}_ms_per_query"],
              *(f"{v[f'{lb}_decode_ms_per_query']:,.0f} / {v[f'{lb}_rank_ms_per_query']:,.0f}"
                if f"{lb}_decode_ms_per_query" in v else None for lb in ("batch1", f"batch{b}")))
             for n, v in latency.items()])


def evaluate_ir(args: argparse.Namespace, info: dict[str, Any], folder: Path, qids: list[str],
                qtexts: list[str], qrels: dict[str, dict[str, int]],
                dev_fusion: dict[str, Any] | None) -> dict[str, Any]:
    """Steps 1-5 (see the module docstring); prints the tables, returns the result."""
    from genseek.data.readers import read_corpus
    from genseek.evaluation import evaluate
    from genseek.models import load_lm
    from genseek.types import Document

    collection = C.collection_option(args.collection)
    bench = Bench(args, Path(tempfile.mkdtemp(prefix="genseek-generative-")), qids, qtexts,
                  {q: qrels[q] for q in qids})
    try:
        baselines(bench, collection)
        bench.docs = tuple(Document(d.doc_id, d.title, d.text, version=i + 1)
                           for i, (_, d) in enumerate(read_corpus(folder / "corpus.jsonl")))
        with C.Phase() as ph:
            lm = load_lm(args.model)
        bench.timings["load_model"] = ph.as_dict()
        zero_shot(bench, lm)
        # 3. fine-tuned SEAL: a `genseek train seal` folder, or trained here (LoRA)
        tuned = None
        if args.seal_model:
            with C.Phase() as ph:
                tuned = load_lm(str(args.seal_model))
            bench.timings["load_seal_model"] = ph.as_dict()
        elif args.train_steps:
            tuned = train_seal(bench, folder)
        if tuned is not None:
            fine_tuned_seal(bench, tuned)
        fine_tuned_tries(bench)
        fusions(bench, dev_fusion)
        metrics = {name: evaluate(run, bench.sub_qrels) for name, run in bench.runs.items()}
        latency = latencies(bench)
    finally:
        shutil.rmtree(bench.tmp, ignore_errors=True)
    print_tables(args, bench.n_q, metrics, latency)
    return {"benchmark": "generative", "quick": args.quick, "queries": bench.n_q,
            "seal_model": str(args.seal_model) if args.seal_model else None,
            "seal_params": args.seal_params,
            "beams": args.beams, "model": args.model, "machine": info, "metrics": metrics,
            "latency": latency, "timings": bench.timings,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem, dev_fusion = read_inputs(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    C.quiet_libraries()
    import torch

    torch.set_num_threads(2)
    n_q = args.queries or (16 if args.quick else 100)
    info = C.machine()
    C.print_machine(info)
    folder = C.dataset_dir("scifact")
    qids, qtexts, qrels = C.judged_queries(folder, "test")
    qids, qtexts = qids[:n_q], qtexts[:n_q]
    if args.skip_ir:
        result = {"benchmark": "generative-dsi", "machine": info,
                  "dsi": dsi_experiment(args, folder, qids, qtexts, qrels)}
        from genseek.atomic import atomic_write_json

        atomic_write_json(args.dsi_out, result)
    else:
        result = evaluate_ir(args, info, folder, qids, qtexts, qrels, dev_fusion)
        out = args.out or (C.REPO / "benchmarks" / "results"
                           / f"generative{'_quick' if args.quick else ''}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        C.dump_json(result)
    return 0


def dsi_experiment(args: argparse.Namespace, folder: Path, qids: list[str], qtexts: list[str],
                   qrels: dict[str, dict[str, int]]) -> dict[str, Any]:
    """DSI++ continual indexing: see the module docstring."""
    import copy
    import random

    from genseek.data.readers import read_corpus
    from genseek.models import LM, load_lm
    from genseek.params import DSI_INSTRUCTION
    from genseek.retrievers.dsi import DsiIndex
    from genseek.retrievers.generative_train import (
        assign_docids,
        dsi_examples,
        pseudo_query,
        train_examples,
    )
    from genseek.retrievers.prompts import build_prompt, lora_wrap
    from genseek.types import ChangeSet, Document

    _, all_q, _ = C.judged_queries(folder, "test")
    corpus = {d.doc_id: d for _, d in read_corpus(folder / "corpus.jsonl")}
    order: list[str] = []
    for q in qids:
        for d, g in qrels[q].items():
            if g > 0 and d not in order and d in corpus:
                order.append(d)
    order = order[:args.dsi_docs]
    n0 = int(round(0.8 * len(order)))
    inc = max(1, int(round(0.05 * len(order))))
    batches = [order[:n0]] + [order[n0 + i * inc:n0 + (i + 1) * inc] for i in range(4)]
    qtext = dict(zip(qids, qtexts, strict=True))
    rel = {q: {d for d, g in qrels[q].items() if g > 0} for q in qids}
    rng = random.Random(0)
    base = load_lm.__wrapped__(args.model, "cpu")
    docs = [corpus[d] for d in order]
    docids = assign_docids(base, docs, args.dsi_scheme)
    keys = docids["ids"]

    def examples(batch: list[str], replay_from: list[str], ratio: float) -> list:
        ex = dsi_examples(base, [corpus[d] for d in batch], keys, {}, {}, rng, doc_len=48,
                          pseudo=2, instruction=DSI_INSTRUCTION)
        for d in rng.choices(replay_from, k=int(ratio * len(ex))) if replay_from else []:
            ex.append((build_prompt(base, DSI_INSTRUCTION, pseudo_query(
                base.tokenizer, corpus[d].text, rng), "Docid:"), keys[d] + [base.eos_id]))
        return ex

    def hits10(model: Any, live: list[str]) -> dict[str, float]:
        lm = LM("dsi", model, base.tokenizer, False, base.context, base.eos_id, base.pad_id,
                {"base": args.model})
        ix = DsiIndex(Path(tempfile.mkdtemp(prefix="dsi-")), {"model": args.model,
                      "scheme": args.dsi_scheme, "num_beams": 10}, lm=lm)
        ix.docids.ids.update(keys)
        ix.apply(ChangeSet(0, len(live), tuple(
            Document(d, corpus[d].title, corpus[d].text, version=i + 1)
            for i, d in enumerate(live))))
        ix.commit(len(live))
        d0 = set(batches[0])
        groups = {"D0": [q for q in qids if rel[q] & d0],
                  "new": [q for q in qids if rel[q] & (set(live) - d0)]}
        out: dict[str, float] = {}
        for g, qs in groups.items():
            if not qs:
                continue
            res = ix.search([qtext[q] for q in qs], 10)
            out[g] = sum(bool(rel[q] & {h.doc_id for h in r}) for q, r in
                         zip(qs, res, strict=True)) / len(qs)
            out[f"{g}_queries"] = len(qs)
        ix.close()
        shutil.rmtree(ix.path, ignore_errors=True)
        return out

    log: dict[str, Any] = {"docs": len(order), "d0": n0, "increment": inc,
                           "scheme": args.dsi_scheme, "steps_d0": args.dsi_steps,
                           "steps_increment": args.dsi_inc_steps, "replay": args.dsi_replay,
                           "lr_increment": args.dsi_inc_lr, "autocast": args.autocast,
                           "variants": {}}
    model0 = lora_wrap(base)
    bf16 = args.autocast == "bf16"
    t0 = train_examples(model0, examples(batches[0], [], 0), pad_id=base.pad_id,
                        steps=args.dsi_steps, batch=8, max_len=80, autocast=bf16)
    log["train_d0"] = t0
    log["d0_hits"] = hits10(model0, batches[0])
    print(f"DSI D0: {log['d0_hits']}", file=sys.stderr)
    lr = args.dsi_inc_lr
    known = {"naive": (0.0, 0.0, lr), "dsi++": (args.dsi_replay, 0.0, lr),
             "dsi++sam": (args.dsi_replay, 0.05, lr)}
    variants = {v: known[v] for v in args.dsi_variants if v in known}
    for ratio_s, lr_s in args.dsi_sweep:
        variants[f"dsi++ r={ratio_s} lr={lr_s}"] = (float(ratio_s), 0.0, float(lr_s))
    log["variant_settings"] = {k: {"replay": r, "sam": m, "lr": x}
                               for k, (r, m, x) in variants.items()}
    for name, (ratio, sam, inc_lr) in variants.items():
        model = copy.deepcopy(model0)
        steps_used = t0["steps"]
        rows = []
        for i in range(1, 5):
            seen = [d for b in batches[:i] for d in b]
            s = train_examples(model, examples(batches[i], seen, ratio), pad_id=base.pad_id,
                               steps=args.dsi_inc_steps, batch=8, max_len=80, sam=sam,
                               seed=i, lr=inc_lr, autocast=bf16)
            steps_used += s["steps"]
            live = seen + batches[i]
            rows.append({"step": i, "steps_used": steps_used, **hits10(model, live)})
            print(f"DSI {name} step {i}: {rows[-1]}", file=sys.stderr)
        log["variants"][name] = rows
        del model
    if "retrain" not in args.dsi_variants:
        return log
    # full retraining on all documents (from the base model), measured after the last step
    model = lora_wrap(load_lm.__wrapped__(args.model, "cpu"))
    s = train_examples(model, examples(order, [], 0), pad_id=base.pad_id,
                       steps=int(args.dsi_steps * len(order) / max(n0, 1)), batch=8, max_len=80,
                       autocast=bf16)
    retrain_steps = [int(args.dsi_steps * (n0 + i * inc) / max(n0, 1)) for i in range(1, 5)]
    log["variants"]["retrain"] = [{"step": 4, "steps_used": t0["steps"] + sum(retrain_steps),
                                   **hits10(model, order)}]
    print(f"DSI retrain: {log['variants']['retrain']}", file=sys.stderr)
    return log


if __name__ == "__main__":
    sys.exit(main())
