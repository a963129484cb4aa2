"""Batched constrained beam search over any HF causal or seq2seq LM, with KV cache.

``constrained_beam_search(model, input_ids, attention_mask, provider, *, num_beams,
max_new_tokens, ...)`` decodes ``B`` queries x ``K = num_beams`` beams as one tensor of
``N = B * K`` rows. Every step:

1. the model scores the next token of every row (one forward call, KV cache reused);
2. ``provider.step(states)`` returns each row's allowed tokens ``[N, F]`` (work ``N x F``);
   with ``eos_token_id`` set, EOS is one more candidate of every row whose state is terminal;
3. candidate log-probs are gathered (``[N, F']``), added to the beam scores, and the top
   ``2K`` candidates of each query are taken (``topk`` over ``[B, K * F']``);
4. *finishing* candidates (EOS, or an FM-index count ``<= count_threshold``) ranked among the
   top ``K`` are recorded as finished hypotheses; the best ``K`` other candidates become the
   new beams (rows with no valid candidate get score ``-inf``);
5. the KV cache rows are reordered by the chosen parents (``Cache.reorder_cache``).

The KV cache is a transformers ``Cache`` object (``DynamicCache``, ``EncoderDecoderCache``;
legacy tuples are not supported), passed as ``cache`` (transformers >= 5.24) or
``past_key_values`` (older), whichever the model's forward takes
(:func:`genseek.models.cache_kwarg`).

There is no Python loop over beams and no per-beam host<->device copy: finished and partial
hypotheses stay on the device until the search ends; a step syncs a single scalar (the
early-stopping test) plus whatever the provider needs for its fan-out ``F``.

Semantics (mirrored exactly by the reference enumeration in tests/unit/test_beam.py):

- ``score`` is the sum of the token log-probs (log-softmax of the model's float logits),
  EOS included when the hypothesis ended with EOS. The ranking key is
  ``normalized = score / length ** length_penalty`` with ``length`` = generated tokens
  including EOS.
- With ``eos_token_id``: a hypothesis is complete when it picks EOS at a terminal state; at
  ``max_new_tokens`` the surviving beams whose state is terminal are complete too.
- Without ``eos_token_id``: every beam whose state is terminal after a step is recorded as a
  complete hypothesis (and keeps extending if the provider allows it).
- ``count_threshold`` (FM-index): a candidate whose key count is ``<= count_threshold`` is
  complete at once and is not extended.
- ``early_stopping``: a query is done once it holds ``num_beams`` complete hypotheses and
  no live beam can still beat the worst of them (an exact bound, so stopping never changes
  the result); the search ends when every query is done, no live beam is left, or after
  ``max_new_tokens`` steps.
- ``keep_partials``: every live beam of every step (each a prefix of the keys, with its
  score, state and count) is returned per query, in order of (step, rank).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from genseek.kernels.constraints import ConstraintProvider
from genseek.kernels.triton_topk import candidate_topk
from genseek.models import cache_kwarg, output_cache

NEG_INF = float("-inf")


@dataclass(frozen=True)
class Hypothesis:
    """One decoded key.

    tokens:     generated token ids, EOS excluded.
    score:      sum of the tokens' log-probs (EOS included when ``eos``).
    normalized: ``score / length ** length_penalty``, the ranking key.
    state:      the provider state after the last token (``S`` ints; trie: node id).
    count:      the key's corpus count when the provider gives counts, else ``None``.
    eos:        whether the hypothesis ended with EOS.
    """

    tokens: tuple[int, ...]
    score: float
    normalized: float
    state: tuple[int, ...]
    count: int | None = None
    eos: bool = False


@dataclass
class BeamSearchResult:
    """hypotheses[b]: query ``b``'s complete hypotheses, best first (at most
    ``num_return_sequences``). partials[b]: every live beam of every step (keep_partials),
    else ``None``. steps: decoding steps run. timings: seconds spent in ``model`` (forward
    calls), ``constraint`` (provider calls + candidate gather/top-k/bookkeeping) and
    ``total``, and ``step_constraint``: a list with the constraint seconds of every step
    (from the model's log-probs to the chosen tokens)."""

    hypotheses: list[list[Hypothesis]]
    partials: list[list[Hypothesis]] | None = None
    steps: int = 0
    timings: dict[str, Any] = field(default_factory=dict)


def _accepts(model: Any, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class _Decoder:
    """Feeds one new token per row to a causal or seq2seq model, keeping its KV cache.

    ``start`` runs the prompt (``[B, L]``) once and repeats the cache ``K`` times; ``next``
    takes the chosen tokens ``[N]`` and parents ``[N]`` and returns log-probs ``[N, V]``.
    """

    def __init__(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 k: int, decoder_start_token_id: int | None):
        self.model = model
        self.k = k
        config = getattr(model, "config", None)
        self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        self.use_pos = (not self.seq2seq) and _accepts(model, "position_ids")
        self.cache_kw = cache_kwarg(model)
        self.past: Any = None  # the model's Cache
        self.mask = attention_mask.repeat_interleave(k, dim=0)
        if self.seq2seq:
            start = decoder_start_token_id
            if start is None:
                start = getattr(config, "decoder_start_token_id", None)
            if start is None:
                raise ValueError("seq2seq decoding needs decoder_start_token_id")
            self.encoder_outputs = model.get_encoder()(
                input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
            hidden = self.encoder_outputs.last_hidden_state.repeat_interleave(k, dim=0)
            self.encoder_outputs["last_hidden_state"] = hidden
            self.dec_len = 0
            self.first = torch.full((input_ids.shape[0] * k, 1), int(start),
                                    dtype=torch.long, device=input_ids.device)
        else:
            self.input_ids = input_ids
            self.prompt_mask = attention_mask

    @torch.no_grad()
    def start(self) -> torch.Tensor:
        """Log-probs ``[N, V]`` of the first generated token."""
        if self.seq2seq:
            out = self.model(encoder_outputs=self.encoder_outputs, attention_mask=self.mask,
                             decoder_input_ids=self.first, use_cache=True, return_dict=True)
            self.past = output_cache(out)
            self.dec_len = 1
            return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        kwargs: dict[str, Any] = {}
        if self.use_pos:
            pos = (self.prompt_mask.long().cumsum(-1) - 1).clamp(min=0)
            kwargs["position_ids"] = pos
        out = self.model(input_ids=self.input_ids, attention_mask=self.prompt_mask,
                         use_cache=True, return_dict=True, **kwargs)
        self.past = output_cache(out)
        if self.k > 1 and self.past is not None:  # None: a model without a KV cache
            self.past.batch_repeat_interleave(self.k)  # each query's row, once per beam
        logits = out.logits[:, -1, :].float().repeat_interleave(self.k, dim=0)
        return torch.log_softmax(logits, dim=-1)

    @torch.no_grad()
    def next(self, tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """Log-probs ``[N, V]`` after appending ``tokens`` (``[N]``) to rows ``parents``."""
        if self.past is not None:
            self.past.reorder_cache(parents)
        ones = torch.ones((tokens.shape[0], 1), dtype=self.mask.dtype, device=self.mask.device)
        if self.seq2seq:
            out = self.model(encoder_outputs=self.encoder_outputs, attention_mask=self.mask,
                             decoder_input_ids=tokens.view(-1, 1), use_cache=True,
                             return_dict=True, **{self.cache_kw: self.past})
        else:
            self.mask = torch.cat([self.mask, ones], dim=1)
            kwargs: dict[str, Any] = {}
            if self.use_pos:
                kwargs["position_ids"] = (self.mask.long().sum(-1, keepdim=True) - 1)
            out = self.model(input_ids=tokens.view(-1, 1), attention_mask=self.mask,
                             use_cache=True, return_dict=True, **{self.cache_kw: self.past},
                             **kwargs)
        self.past = output_cache(out)
        return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)


def _length_norm(score: torch.Tensor, length: torch.Tensor | float,
                 length_penalty: float) -> torch.Tensor:
    if length_penalty == 0.0:
        return score
    return score / (torch.as_tensor(length, dtype=score.dtype) ** length_penalty)


def constrained_beam_search(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    provider: ConstraintProvider,
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    length_penalty: float = 1.0,
    count_threshold: int | None = None,
    keep_partials: bool = False,
    num_return_sequences: int | None = None,
    early_stopping: bool = True,
    decoder_start_token_id: int | None = None,
    use_triton: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> BeamSearchResult:
    """Constrained beam search (see the module docstring for the exact semantics).

    model:          an HF-style module: ``model(input_ids=[N, T], attention_mask=[N, L],
                    cache=..., use_cache=True)`` returning ``.logits [N, T, V]`` and
                    ``.cache``, a ``Cache`` (``reorder_cache``, ``batch_repeat_interleave``;
                    ``past_key_values`` in and out with transformers < 5.24); seq2seq when
                    ``model.config.is_encoder_decoder``.
    input_ids:      int64 ``[B, L]`` prompts, left-padded for causal LMs.
    attention_mask: ``[B, L]`` (``None``: all ones).
    provider:       a ConstraintProvider (trie, FM-index, or a UnionProvider of segments).
    num_beams:      ``K`` beams per query.
    max_new_tokens: most generated tokens per hypothesis (EOS included).
    num_return_sequences: hypotheses kept per query (default ``num_beams``).
    decoder_start_token_id: seq2seq only (default ``model.config``'s).
    use_triton:     score candidates with the fused Triton kernel (``kernels.triton_topk``;
                    needs triton and CUDA or ``TRITON_INTERPRET=1``); torch by default.
    clock:          the timer behind ``timings`` (e.g. ``time.thread_time`` for CPU time on a
                    shared machine; on CUDA, synchronise inside it for meaningful times).
    Returns a BeamSearchResult; tensors are never returned, only Python values.
    """
    if num_beams < 1 or max_new_tokens < 1:
        raise ValueError("num_beams and max_new_tokens must be >= 1")
    t_total = clock()
    t_model = 0.0
    k = int(num_beams)
    n_ret = int(num_return_sequences or k)
    device = input_ids.device
    b = input_ids.shape[0]
    n = b * k
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    bidx = torch.arange(b, device=device)

    t0 = clock()
    dec = _Decoder(model, input_ids, attention_mask, k, decoder_start_token_id)
    logp = dec.start()  # [N, V]
    t_model += clock() - t0
    step_times: list[float] = []

    # beam state: scores [B, K] (only beam 0 of each query alive at first), states [N, S],
    # counts [N], generated sequences [N, t]
    scores = torch.full((b, k), NEG_INF, device=device)
    scores[:, 0] = 0.0
    states = provider.root(n, device)
    counts = torch.full((n,), -1, dtype=torch.long, device=device)
    seqs = torch.zeros((n, 0), dtype=torch.long, device=device)
    # best n_ret normalized scores of complete hypotheses so far, per query: [B, n_ret]
    fin_best = torch.full((b, n_ret), NEG_INF, device=device)
    records: list[dict[str, torch.Tensor]] = []
    partial_records: list[dict[str, torch.Tensor]] = []
    has_counts = False
    steps = 0
    reached_max = False

    for t in range(max_new_tokens):
        steps = t + 1
        t_step = clock()
        # 2. allowed tokens of every row (+ EOS at terminal states); at the first step only
        #    beam 0 of each query is live (all K rows hold the root), so only B rows are used
        r = 1 if t == 0 else k  # candidate rows per query
        if r == 1:
            st = states.view(b, k, -1)[:, 0]
            lp = logp.view(b, k, -1)[:, 0]
            sc = scores[:, :1].reshape(b)
            cn = counts.view(b, k)[:, 0]
        else:
            st, lp, sc, cn = states, logp, scores.view(n), counts
        cand = provider.step(st)
        tokens, nxt = cand.tokens, cand.next_states
        ccounts = cand.counts
        has_counts = has_counts or ccounts is not None
        f = tokens.shape[1]
        if eos_token_id is not None:
            term = provider.is_terminal(st)
            eos_col = torch.where(term, torch.full_like(cn, int(eos_token_id)),
                                  torch.full_like(cn, -1))
            tokens = torch.cat([tokens, eos_col.unsqueeze(1)], dim=1)
            nxt = torch.cat([nxt, st.unsqueeze(1)], dim=1)
            if ccounts is not None:
                ccounts = torch.cat([ccounts, cn.unsqueeze(1)], dim=1)
        fp = tokens.shape[1]
        # 3. gather candidate log-probs, add beam scores, top 2K per query
        kk = min(2 * k, r * fp)
        top_s, top_i = candidate_topk(lp, tokens, sc, b, kk,
                                      use_triton=use_triton)  # [B, kk], sorted
        del lp  # the [N, V] log-probs are released with the model step, not inside this one
        if kk < k:  # fewer candidates than beams: pad with impossible ones
            top_s = torch.cat([top_s, torch.full((b, k - kk), NEG_INF, device=device)], 1)
            top_i = torch.cat([top_i, torch.zeros((b, k - kk), dtype=top_i.dtype,
                                                  device=device)], 1)
            kk = k
        local = torch.div(top_i, fp, rounding_mode="floor")  # beam within the query
        crow = bidx.view(b, 1) * r + local  # [B, kk] row of the candidate tensors
        parent = bidx.view(b, 1) * k + local  # [B, kk] row of the N decoding rows
        col = top_i % fp
        tok = tokens[crow, col]  # [B, kk]
        nst = nxt[crow, col]  # [B, kk, S]
        cnt = ccounts[crow, col] if ccounts is not None else torch.full_like(tok, -1)
        valid = top_s > NEG_INF
        is_eos = (col == f) if eos_token_id is not None else torch.zeros_like(valid)
        finishing = is_eos.clone()
        if count_threshold is not None and ccounts is not None:
            finishing |= (cnt <= int(count_threshold)) & ~is_eos
        finishing &= valid
        rank = torch.arange(kk, device=device).view(1, kk)
        fin_now = finishing & (rank < k)
        # 4. the best K non-finishing candidates become the new beams
        cont = valid & ~finishing
        order = torch.sort(torch.where(cont, rank, rank + kk), dim=1).indices[:, :k]  # [B, K]
        sel_ok = torch.gather(cont, 1, order)
        new_scores = torch.where(sel_ok, torch.gather(top_s, 1, order),
                                 torch.full_like(scores, NEG_INF))
        new_parent = torch.gather(parent, 1, order).view(n)
        new_tok = torch.gather(tok, 1, order).view(n).clamp(min=0)  # dead rows: any real id
        s_w = nst.shape[2]
        new_states = torch.gather(nst, 1, order.unsqueeze(2).expand(-1, -1, s_w)).view(n, s_w)
        new_counts = torch.gather(cnt, 1, order).view(n)
        length = t + 1
        # complete hypotheses of this step
        cand_seq = torch.cat([seqs[parent.view(-1)].view(b, kk, t), tok.unsqueeze(2)], dim=2)
        rec_scores = top_s
        rec_norm = _length_norm(top_s, float(length), length_penalty)
        rec = {"mask": fin_now, "seq": cand_seq, "score": rec_scores, "norm": rec_norm,
               "state": nst, "count": cnt, "eos": is_eos}
        records.append(rec)
        seqs = torch.cat([seqs[new_parent], new_tok.unsqueeze(1)], dim=1)
        states, counts, scores = new_states, new_counts, new_scores
        fin_norm = torch.where(fin_now, rec_norm, torch.full_like(rec_norm, NEG_INF))
        if eos_token_id is None:
            alive_term = provider.is_terminal(states).view(b, k) & (scores > NEG_INF)
            records.append({"mask": alive_term, "seq": seqs.view(b, k, length),
                            "score": scores, "norm": _length_norm(scores, float(length),
                                                                  length_penalty),
                            "state": states.view(b, k, s_w), "count": counts.view(b, k),
                            "eos": torch.zeros_like(alive_term)})
            fin_norm = torch.cat([fin_norm, torch.where(alive_term, records[-1]["norm"],
                                                        torch.full_like(scores, NEG_INF))], 1)
        if keep_partials:
            partial_records.append({"mask": scores > NEG_INF, "seq": seqs.view(b, k, length),
                                    "score": scores, "norm": _length_norm(
                                        scores, float(length), length_penalty),
                                    "state": states.view(b, k, s_w), "count": counts.view(b, k),
                                    "eos": torch.zeros_like(scores, dtype=torch.bool)})
        fin_best = torch.topk(torch.cat([fin_best, fin_norm], dim=1), n_ret, dim=1).values
        if t + 1 >= max_new_tokens:
            reached_max = True
            step_times.append(clock() - t_step)
            break
        # early stopping: the best any live beam can still reach vs the worst kept answer
        best_live = scores.max(dim=1).values  # [B]
        if length_penalty > 0:
            bound = _length_norm(best_live, float(max_new_tokens), length_penalty)
        else:
            bound = _length_norm(best_live, float(length + 1), length_penalty)
        if early_stopping:
            done = (best_live == NEG_INF) | (bound < fin_best[:, -1])
        else:
            done = best_live == NEG_INF
        stop = bool(done.all().item())
        step_times.append(clock() - t_step)
        if stop:
            break
        # 5. the model scores the next token of the new beams
        t0 = clock()
        logp = dec.next(new_tok, new_parent)
        t_model += clock() - t0

    if eos_token_id is not None and reached_max:
        # max length reached: live beams at a terminal state are complete
        alive_term = provider.is_terminal(states).view(b, k) & (scores > NEG_INF)
        length = seqs.shape[1]
        s_w = states.shape[1]
        records.append({"mask": alive_term, "seq": seqs.view(b, k, length), "score": scores,
                        "norm": _length_norm(scores, float(max(length, 1)), length_penalty),
                        "state": states.view(b, k, s_w), "count": counts.view(b, k),
                        "eos": torch.zeros_like(alive_term)})

    hyps = _collect(records, b, has_counts, strip_eos=True)
    for lst in hyps:
        lst.sort(key=lambda h: -h.normalized)
        del lst[n_ret:]
    partials = _collect(partial_records, b, has_counts, strip_eos=False) if keep_partials \
        else None
    total_s = clock() - t_total
    timings = {"model": t_model, "constraint": total_s - t_model, "total": total_s,
               "step_constraint": step_times}
    return BeamSearchResult(hyps, partials, steps, timings)


def _collect(records: list[dict[str, torch.Tensor]], b: int, has_counts: bool,
             strip_eos: bool) -> list[list[Hypothesis]]:
    """Host-side conversion of recorded ``[B, M, ...]`` tensors into Hypothesis lists."""
    out: list[list[Hypothesis]] = [[] for _ in range(b)]
    for rec in records:
        r = {key: v.detach().cpu() for key, v in rec.items()}
        qs, js = torch.nonzero(r["mask"], as_tuple=True)
        if qs.numel() == 0:
            continue
        seq = r["seq"][qs, js].tolist()
        score = r["score"][qs, js].tolist()
        norm = r["norm"][qs, js].tolist()
        state = r["state"][qs, js].tolist()
        count = r["count"][qs, js].tolist()
        eos = r["eos"][qs, js].tolist()
        for i, q in enumerate(qs.tolist()):
            toks = seq[i][:-1] if (strip_eos and eos[i]) else seq[i]
            out[q].append(Hypothesis(tuple(toks), float(score[i]), float(norm[i]),
                                     tuple(state[i]), int(count[i]) if has_counts else None,
                                     bool(eos[i])))
    return out
