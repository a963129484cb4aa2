"""Constrained beam search: exact beam order against a per-beam reference and brute force."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from _synth import strict_transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genseek.kernels.beam import constrained_beam_search
from genseek.kernels.constraints import Candidates, UnionProvider
from genseek.kernels.trie import TrieConstraint, build_trie

NEG_INF = float("-inf")


class HashCache:
    """The stub's KV cache: the running hash of each row, with the two ``Cache`` methods the
    search calls (a real ``DynamicCache`` has them too)."""

    def __init__(self, h: torch.Tensor):
        self.h = h

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        self.h = self.h.index_select(0, beam_idx.to(self.h.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.h = self.h.repeat_interleave(repeats, dim=0)


@dataclass
class _Out:
    logits: torch.Tensor
    cache: HashCache


class HashLM(torch.nn.Module):
    """Stub causal LM with controlled logits: a running hash of every token seen so far picks
    a row of a fixed random table, so each prefix has its own next-token distribution.
    The KV cache is the hash state (:class:`HashCache`), reordered like a real cache."""

    def __init__(self, vocab: int, seed: int, buckets: int = 997):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(buckets, vocab, generator=g) * 3.0
        self.buckets = buckets
        self.calls = 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: HashCache | None = None, use_cache: bool = True,
                return_dict: bool = True, **kwargs: Any) -> _Out:
        self.calls += 1
        # a real embedding table rejects ids outside [0, V): so must the stub (dead beams too)
        assert bool(((input_ids >= 0) & (input_ids < self.table.shape[1])).all()), input_ids
        h = cache.h if cache is not None else torch.zeros(input_ids.shape[0], dtype=torch.long)
        rows = []
        for j in range(input_ids.shape[1]):
            tok = input_ids[:, j]
            pad = attention_mask is not None and cache is None
            keep = attention_mask[:, j].bool() if pad else torch.ones_like(tok, dtype=torch.bool)
            h = torch.where(keep, (h * 31 + tok + 1) % self.buckets, h)
            rows.append(self.table[h])
        return _Out(torch.stack(rows, dim=1), HashCache(h))


@torch.no_grad()
def _seq_logprob(model: torch.nn.Module, prompt: list[int], seq: list[int]) -> float:
    """Sum of log-probs of ``seq`` after ``prompt`` by full forwards (no cache), in float32."""
    total = torch.zeros((), dtype=torch.float32)
    for i, tok in enumerate(seq):
        ids = torch.tensor([prompt + seq[:i]])
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        total = total + torch.log_softmax(logits.logits[0, -1].float(), -1)[tok]
    return float(total)


@torch.no_grad()
def reference_beam_search(model: Any, prompt: list[int], provider: Any, k: int, max_new: int,
                          eos: int | None, lp: float, count_threshold: int | None = None
                          ) -> list[tuple[tuple[int, ...], float]]:
    """Per-beam Python beam search with the documented semantics and no early stopping."""

    def norm(s: float, n: int) -> float:
        return s if lp == 0 else s / (n ** lp)

    beams = [((), 0.0, provider.root(1, torch.device("cpu"))[0], -1)]
    done: list[tuple[tuple[int, ...], float, float]] = []
    for t in range(max_new):
        cands = []  # (score, order, seq, state, count, finishing, is_eos)
        order = 0
        for seq, score, state, cnt in beams:
            ids = torch.tensor([prompt + list(seq)])
            logp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0, -1].float(),
                                     -1)
            c: Candidates = provider.step(state.view(1, -1))
            toks = c.tokens[0].tolist()
            for j, tok in enumerate(toks):
                if tok < 0:
                    continue
                ncnt = int(c.counts[0, j]) if c.counts is not None else -1
                fin = count_threshold is not None and c.counts is not None \
                    and ncnt <= count_threshold
                cands.append((float(torch.tensor(score) + logp[tok]), order, seq + (tok,),
                              c.next_states[0, j], ncnt, fin, False))
                order += 1
            if eos is not None and bool(provider.is_terminal(state.view(1, -1))[0]):
                cands.append((float(torch.tensor(score) + logp[eos]), order, seq, state, cnt,
                              True, True))
                order += 1
        cands.sort(key=lambda x: -x[0])
        top = cands[:2 * k]
        for rank, cand in enumerate(top):
            if cand[5] and rank < k:
                length = len(cand[2]) + (1 if cand[6] else 0)
                done.append((cand[2], cand[0], norm(cand[0], length)))
        beams = [(c[2], c[0], c[3], c[4]) for c in top if not c[5]][:k]
        if eos is None:
            for seq, score, state, _ in beams:
                if bool(provider.is_terminal(state.view(1, -1))[0]):
                    done.append((seq, score, norm(score, len(seq))))
        if not beams:
            break
        if t == max_new - 1 and eos is not None:
            for seq, score, state, _ in beams:
                if bool(provider.is_terminal(state.view(1, -1))[0]):
                    done.append((seq, score, norm(score, len(seq))))
    done.sort(key=lambda x: -x[2])
    return [(s, sc) for s, sc, _ in done[:k]]


class CountingTrie(TrieConstraint):
    """A trie provider that also reports counts (docs under the child node), to exercise the
    FM-index style ``count_threshold`` stop on a structure whose answers are easy to check."""

    def __init__(self, trie: Any):
        super().__init__(trie)
        sub = np.zeros(trie.num_nodes, dtype=np.int64)
        np.add.at(sub, np.repeat(trie.term_nodes.astype(np.int64), np.diff(trie.term_ptr)), 1)
        for d in range(trie.depth, 0, -1):
            a, b = int(trie.level_ptr[d]), int(trie.level_ptr[d + 1])
            np.add.at(sub, trie.parent[a:b].astype(np.int64), sub[a:b])
        self.sub = torch.from_numpy(sub)

    def step(self, states: torch.Tensor) -> Candidates:
        c = super().step(states)
        nxt = c.next_states[:, :, 0]
        counts = torch.where(nxt >= 0, self.sub[nxt.clamp(min=0)], torch.zeros_like(nxt))
        return Candidates(c.tokens, c.next_states, counts)


corpora = st.lists(st.lists(st.integers(1, 7), min_size=1, max_size=4), min_size=1,
                   max_size=14)


def _run(model: Any, prompts: list[list[int]], provider: Any, **kw: Any) -> Any:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return constrained_beam_search(model, ids, mask, provider, **kw)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpus=corpora, k=st.integers(1, 4), seed=st.integers(0, 10_000),
       lp=st.sampled_from([0.0, 1.0, 0.5, -0.5]), use_eos=st.booleans(),
       prompts=st.lists(st.lists(st.integers(1, 7), min_size=1, max_size=3), min_size=1,
                        max_size=3))
def test_beam_order_equals_reference(corpus: list[list[int]], k: int, seed: int, lp: float,
                                     use_eos: bool, prompts: list[list[int]]) -> None:
    vocab = 9
    model = HashLM(vocab, seed)
    trie = build_trie(corpus, vocab)
    provider = TrieConstraint(trie)
    eos = 8 if use_eos else None
    res = _run(model, prompts, provider, num_beams=k, max_new_tokens=5, eos_token_id=eos,
               length_penalty=lp)
    valid = {tuple(s) for s in corpus}
    for b, prompt in enumerate(prompts):
        ref = reference_beam_search(model, prompt, provider, k, 5, eos, lp)
        got = [(h.tokens, h.score) for h in res.hypotheses[b]]
        assert [g[0] for g in got] == [r[0] for r in ref]
        assert np.allclose([g[1] for g in got], [r[1] for r in ref], atol=1e-4)
        assert all(h.tokens in valid for h in res.hypotheses[b])
        assert all(trie.docs_at(h.state[0]).size for h in res.hypotheses[b])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpus=corpora, seed=st.integers(0, 10_000), lp=st.sampled_from([0.0, 1.0, -1.0]))
def test_wide_beam_equals_brute_force_enumeration(corpus: list[list[int]], seed: int,
                                                  lp: float) -> None:
    """With K >= #docs nothing is pruned: the result is every docid ranked by its exact
    (length-normalised) log-probability, computed here by full uncached forwards."""
    vocab, eos = 9, 8
    model = HashLM(vocab, seed)
    distinct = sorted({tuple(s) for s in corpus})
    k = len(distinct)
    res = _run(model, [[3, 1]], TrieConstraint(build_trie(corpus, vocab)), num_beams=k,
               max_new_tokens=5, eos_token_id=eos, length_penalty=lp)
    brute = []
    for seq in distinct:
        s = _seq_logprob(model, [3, 1], list(seq) + [eos])
        brute.append((seq, s, s / ((len(seq) + 1) ** lp)))
    brute.sort(key=lambda x: -x[2])
    got = res.hypotheses[0]
    assert [h.tokens for h in got] == [b[0] for b in brute]
    assert np.allclose([h.score for h in got], [b[1] for b in brute], atol=1e-4)
    assert all(h.eos for h in got)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpus=corpora, k=st.integers(1, 4), seed=st.integers(0, 10_000),
       thr=st.integers(0, 3))
def test_count_threshold_and_partials(corpus: list[list[int]], k: int, seed: int,
                                      thr: int) -> None:
    vocab = 9
    model = HashLM(vocab, seed)
    trie = build_trie(corpus, vocab)
    provider = CountingTrie(trie)
    res = _run(model, [[2]], provider, num_beams=k, max_new_tokens=4, count_threshold=thr,
               keep_partials=True)
    ref = reference_beam_search(model, [2], provider, k, 4, None, 1.0, count_threshold=thr)
    assert [h.tokens for h in res.hypotheses[0]] == [r[0] for r in ref]
    prefixes = {tuple(s[:i]) for s in corpus for i in range(1, len(s) + 1)}
    assert res.partials is not None
    for h in res.partials[0]:
        assert h.tokens in prefixes  # every partial is a prefix of a docid
        assert h.count == int(provider.sub[h.state[0]])
        assert math.isclose(h.score, _seq_logprob(model, [2], list(h.tokens)), abs_tol=1e-4)
    for h in res.hypotheses[0]:
        assert h.count is not None


def test_union_provider_decoding_matches_single_trie() -> None:
    corpus = [[1, 2, 3], [1, 2, 4], [1, 5], [6, 1], [6, 2, 2], [1, 2]]
    model = HashLM(9, 7)
    one = TrieConstraint(build_trie(corpus, 9))
    two = UnionProvider([TrieConstraint(build_trie(corpus[:3], 9)),
                         TrieConstraint(build_trie(corpus[3:], 9))])
    a = _run(model, [[1], [2, 3]], one, num_beams=3, max_new_tokens=4, eos_token_id=8)
    b = _run(model, [[1], [2, 3]], two, num_beams=3, max_new_tokens=4, eos_token_id=8)
    for ha, hb in zip(a.hypotheses, b.hypotheses, strict=True):
        assert [h.tokens for h in ha] == [h.tokens for h in hb]
        assert np.allclose([h.score for h in ha], [h.score for h in hb])


class NoCacheLM(torch.nn.Module):
    """A model that keeps no KV cache (returns ``cache=None``), like a stand-in or a model
    run with ``use_cache`` off: its logits depend on the last token only."""

    def __init__(self, vocab: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(vocab, vocab, generator=g) * 3.0

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> _Out:
        return _Out(self.table[input_ids[:, -1]].unsqueeze(1), None)  # type: ignore[arg-type]


def test_a_model_without_a_cache_still_decodes_under_the_constraint() -> None:
    corpus = [[1, 2, 3], [1, 2, 4], [1, 5], [6, 1], [6, 2, 2]]
    res = _run(NoCacheLM(9, 5), [[1], [2, 3]], TrieConstraint(build_trie(corpus, 9)),
               num_beams=3, max_new_tokens=4, eos_token_id=8)
    for hyps in res.hypotheses:
        assert hyps and all(list(h.tokens) in corpus for h in hyps)


def test_early_stopping_saves_steps_without_changing_result() -> None:
    corpus = [[1, 2], [3], [4, 5, 6, 7, 1, 2, 3]]
    model = HashLM(9, 3)
    p = TrieConstraint(build_trie(corpus, 9))
    model.table[:, 8] += 20.0  # EOS very likely: short docids finish early and win
    kw = {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 8, "eos_token_id": 8,
          "length_penalty": 0.0}
    a = _run(model, [[1]], p, **kw)
    b = _run(model, [[1]], p, early_stopping=False, **kw)
    assert [h.tokens for h in a.hypotheses[0]] == [(3,), (1, 2)]
    assert [h.tokens for h in a.hypotheses[0]] == [h.tokens for h in b.hypotheses[0]]
    assert a.steps < b.steps


def test_rejects_bad_arguments() -> None:
    p = TrieConstraint(build_trie([[1]], 4))
    with pytest.raises(ValueError):
        _run(HashLM(4, 0), [[1]], p, num_beams=0, max_new_tokens=2)


def _tiny_llama(vocab: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def test_tiny_llama_kv_cache_path_matches_uncached_scores() -> None:
    """A real transformers model (KV cache, left padding, position ids): every hypothesis'
    score equals a full uncached forward of prompt + docid + EOS; a wide beam is exhaustive."""
    vocab, eos = 40, 2
    model = _tiny_llama(vocab)
    model.config.pad_token_id = 0
    corpus = [[5, 6, 7], [5, 6, 9, 11], [5, 12], [13, 14, 15, 16, 17], [13, 20], [21]]
    trie = build_trie(corpus, vocab)
    prompts = [[3, 4, 8, 10], [22, 23]]
    res = _run(model, prompts, TrieConstraint(trie), num_beams=6, max_new_tokens=6,
               eos_token_id=eos, length_penalty=0.0)
    for b, prompt in enumerate(prompts):
        got = res.hypotheses[b]
        assert sorted(h.tokens for h in got) == sorted(tuple(s) for s in corpus)
        brute = sorted(((tuple(s), _seq_logprob(model, prompt, s + [eos])) for s in corpus),
                       key=lambda x: -x[1])
        assert [h.tokens for h in got] == [x[0] for x in brute]
        assert np.allclose([h.score for h in got], [x[1] for x in brute], atol=1e-4)
    assert res.timings["model"] > 0


def test_real_models_emit_no_transformers_deprecation() -> None:
    """The search passes and reads the KV cache the current way (``cache``, a Cache object):
    transformers' deprecation warnings are errors here, its deprecation log lines counted."""
    from transformers import BartConfig, BartForConditionalGeneration

    corpus = [[5, 6, 7], [5, 8], [9, 10, 11, 12], [13]]
    trie = TrieConstraint(build_trie(corpus, 40))
    torch.manual_seed(0)
    bart = BartForConditionalGeneration(BartConfig(
        vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_position_embeddings=32, pad_token_id=1, eos_token_id=2, bos_token_id=0,
        decoder_start_token_id=2, forced_eos_token_id=None)).eval()
    with strict_transformers() as logged:
        _run(_tiny_llama(40), [[3, 4, 8], [22]], trie, num_beams=3, max_new_tokens=5,
             eos_token_id=2)
        constrained_beam_search(bart, torch.tensor([[0, 14, 2]]), None, trie, num_beams=3,
                                max_new_tokens=5, eos_token_id=2)
    assert logged == []


def test_tiny_seq2seq_path() -> None:
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    vocab, eos = 30, 2
    cfg = BartConfig(vocab_size=vocab, d_model=16, encoder_layers=1, decoder_layers=1,
                     encoder_attention_heads=2, decoder_attention_heads=2,
                     encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
                     pad_token_id=1, eos_token_id=eos, bos_token_id=0,
                     decoder_start_token_id=eos, forced_eos_token_id=None)
    model = BartForConditionalGeneration(cfg).eval()
    corpus = [[5, 6, 7], [5, 8], [9, 10, 11, 12], [13]]
    ids = torch.tensor([[0, 14, 15, 2], [1, 0, 16, 2]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    res = constrained_beam_search(model, ids, mask, TrieConstraint(build_trie(corpus, vocab)),
                                  num_beams=4, max_new_tokens=5, eos_token_id=eos,
                                  length_penalty=0.0)
    for b in range(2):
        brute = []
        for seq in corpus:
            dec = torch.tensor([[eos] + seq + [eos]])
            with torch.no_grad():
                logits = model(input_ids=ids[b:b + 1], attention_mask=mask[b:b + 1],
                               decoder_input_ids=dec[:, :-1]).logits[0].float()
            lp = torch.log_softmax(logits, -1).gather(1, dec[0, 1:].view(-1, 1)).sum()
            brute.append((tuple(seq), float(lp)))
        brute.sort(key=lambda x: -x[1])
        got = res.hypotheses[b]
        assert [h.tokens for h in got] == [x[0] for x in brute]
        assert np.allclose([h.score for h in got], [x[1] for x in brute], atol=1e-4)


def test_triton_candidate_kernel_matches_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused Triton gather/mask/add (interpreted on CPU) equals the torch reference and
    gives the same beam search; skipped where triton is not installed."""
    from genseek.kernels import triton_topk

    if not triton_topk.HAVE_TRITON:
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(6, 50, generator=g), -1)
    tokens = torch.randint(-1, 50, (6, 300), generator=g)
    scores = torch.randn(6, generator=g)
    scores[2] = NEG_INF
    assert torch.equal(triton_topk.candidate_scores_torch(logp, tokens, scores),
                       triton_topk.candidate_scores_triton(logp, tokens, scores))
    corpus = [[1, 2, 3], [1, 2, 4], [1, 5], [6, 1], [6, 2, 2], [1, 2]]
    p = TrieConstraint(build_trie(corpus, 9))
    model = HashLM(9, 5)
    a = _run(model, [[1], [4, 4]], p, num_beams=3, max_new_tokens=4, eos_token_id=8)
    b = _run(model, [[1], [4, 4]], p, num_beams=3, max_new_tokens=4, eos_token_id=8,
             use_triton=True)
    for ha, hb in zip(a.hypotheses, b.hypotheses, strict=True):
        assert [(h.tokens, h.score) for h in ha] == [(h.tokens, h.score) for h in hb]
