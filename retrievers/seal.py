"""``seal``: SEAL-style retrieval: generate corpus n-grams under an FM-index, score documents.

SEAL (Bevilacqua et al., 2022, "Autoregressive Search Engines: Generating Substrings as
Document Identifiers") decodes n-grams that occur in the corpus and scores documents by the
n-grams ("keys") they contain. Reimplemented from the paper:

1. **Index.** Each live document is tokenised as ``" " + title + " @@ " + text`` (title keys
   and body keys live in one sequence; the ``@@`` marker keeps title n-grams distinct), capped
   at ``max_doc_tokens``, and indexed in token-level FM-indexes over the reversed documents
   (``genseek.kernels.fmindex``), kept by an :class:`~genseek.indexers.fm_store.FMStore` in
   ``path/store``: main segment + a delta segment for documents added since, exact tombstones
   for replaced/deleted versions (counts, decoding and candidates see live documents only).
   ``keys.sqlite`` is the source of truth; the store is committed after it and rebuilt from
   it when they differ at open (~0.6 s per 1.7 M tokens).
2. **Decoding.** The query is rendered with a prompt asking for a passage span that answers
   it (zero-shot with an instruction LM; the fine-tuned model of ``genseek train seal`` is
   trained on the same prompt). Constrained beam search (``kernels.beam``, ``keep_partials``)
   under the union of the segments' FM-indexes yields every partial hypothesis: each prefix
   of a generated corpus n-gram is a key with its conditional log-probability
   ``log P(k | q)``.
3. **Unigram keys** come from the first step's distribution: the ``unigrams`` most probable
   tokens that occur in the corpus.
4. **Query keys**: the query's n-grams (``1..query_ngram`` tokens) that occur in the corpus are
   added and rescored by the LM (teacher-forced ``log P(k | q)`` after the prompt).
5. **Weights.** ``w(k, q) = max(0, log [P(k|q) (1 - P(k))] - log [P(k) (1 - P(k|q))])`` with the
   unconditional ``P(k) = F(k) / N`` (corpus occurrences over corpus tokens).
6. **Intersective aggregation.** Candidate documents are those containing a *rare* key (at
   most ``rare_threshold`` occurrences; located through the FM-index); keys above the
   threshold only add to documents already found (membership is checked on the document's
   tokens). A document's score is ``sum_k w(k)^alpha * cover(k)`` over its keys in decreasing
   weight, where ``cover(k) = 1 - |tokens(k) & covered| / |tokens(k)|`` discounts tokens
   already covered by higher-weighted keys of the same document (the overlap discount);
   ``beta`` scales the discount (``cover = 1 - beta * overlap``; 1 by default, 0 turns it off).

Queries longer than the context are truncated (see ``prompts.build_prompt``).

Spec parameters: ``model`` (smollm2), ``num_beams`` (10), ``max_new_tokens`` (10),
``unigrams`` (20), ``query_ngram`` (3), ``max_query_keys`` (32), ``rare_threshold`` (2000),
``alpha`` (2.0), ``beta`` (1.0), ``max_doc_tokens`` (1024), ``locate_limit`` (2000
occurrences per key), ``merge_docs`` (1000), ``batch_size`` (8), ``instruction``. The scoring
parameters tuned on held-out train queries (benchmarks/RESULTS.md, section 9) are
``alpha=1.5, rare_threshold=8000, max_query_keys=64``; they are not the defaults.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genseek.indexers.fm_store import FMStore
from genseek.params import SealParams, SealSearchParams
from genseek.retrievers.genre import KeyTableIndex
from genseek.types import ChangeSet, Document, Hit


def doc_tokens(tokenizer: Any, doc: Document, cap: int) -> list[int]:
    """``" " + title + " @@ " + text`` (or the text alone) as token ids, at most ``cap``."""
    text = f" {doc.title.strip()} @@ {doc.text.strip()}" if doc.title.strip() else (
        " " + doc.text.strip())
    return list(tokenizer.encode(text, add_special_tokens=False))[:cap]


def key_weight(logp_cond: float, count: int, total: int) -> float:
    """SEAL's log-odds weight of a key: conditional LM probability vs corpus frequency."""
    if count <= 0 or total <= 0:
        return 0.0
    p_cond = min(math.exp(logp_cond), 1.0 - 1e-9)
    p_unc = min(count / total, 1.0 - 1e-9)
    return max(0.0, math.log(p_cond * (1.0 - p_unc)) - math.log(p_unc * (1.0 - p_cond)))


def aggregate(doc_keys: dict[int, list[tuple[float, tuple[int, ...]]]], alpha: float,
              beta: float = 1.0) -> dict[int, float]:
    """Intersective score per doc: ``sum w^alpha * cover`` over its keys by decreasing weight.

    ``doc_keys[d]``: ``(weight, key tokens)`` of the keys document ``d`` contains.
    ``cover = 1 - beta * |tokens & covered| / |tokens|``: ``beta`` = 1 drops a key whose tokens
    are all covered by higher-weighted keys, 0 turns the discount off.
    """
    out: dict[int, float] = {}
    for d, keys in doc_keys.items():
        covered: set[int] = set()
        score = 0.0
        for w, key in sorted(keys, key=lambda x: (-x[0], x[1])):
            toks = set(key)
            cover = 1.0 - beta * len(toks & covered) / max(len(toks), 1)
            score += (w ** alpha) * cover
            covered |= toks
        out[d] = score
    return out


def _contains(haystack: bytes, needle: bytes) -> bool:
    """``needle`` occurs in ``haystack`` at a 4-byte aligned offset (int32 token arrays)."""
    i = haystack.find(needle)
    while i != -1 and i % 4:
        i = haystack.find(needle, i + 1)
    return i != -1


@torch.inference_mode()
def first_step_and_rescore(model: Any, prompts: list[list[int]], conts: list[list[list[int]]],
                           pad_id: int, chunk: int = 64) -> tuple[torch.Tensor, list[list[float]]]:
    """First-token log-probs ``[B, V]`` after each prompt, and ``log P(cont | prompt)``.

    ``conts[b]``: continuations of prompt ``b`` (token lists). The prompt runs once (KV
    cache); continuations reuse the cache rows of their prompt (``[R, Lc - 1]`` tokens per
    chunk of ``R`` rows), so a key costs its own length, not the prompt's.
    """
    from genseek.models import cache_kwarg, output_cache
    from genseek.retrievers.prompts import left_pad

    ids, mask = left_pad(prompts, pad_id, model.device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(
        model.forward).parameters else {}  # the prompt's other positions need no logits
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **keep)
    first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # [B, V]
    prompt_cache = output_cache(out)  # a Cache of the B prompts, copied per chunk below
    cache_kw = cache_kwarg(model)
    scores: list[list[float]] = [[0.0] * len(c) for c in conts]
    flat = [(b, j, c) for b, cs in enumerate(conts) for j, c in enumerate(cs) if c]
    plen = mask.sum(-1)  # [B]
    for s in range(0, len(flat), chunk):
        part = flat[s:s + chunk]
        rows = torch.tensor([b for b, _, _ in part], dtype=torch.long, device=ids.device)
        first_lp = torch.stack([first[b, c[0]] for b, _, c in part])  # [R]
        width = max(len(c) for _, _, c in part) - 1
        total = first_lp.clone()
        if width > 0:
            tok = torch.full((len(part), width), pad_id, dtype=torch.long, device=ids.device)
            cmask = torch.zeros((len(part), width), dtype=torch.long, device=ids.device)
            for i, (_, _, c) in enumerate(part):
                tok[i, :len(c) - 1] = torch.tensor(c[:-1])
                cmask[i, :len(c) - 1] = 1
            cache = copy.deepcopy(prompt_cache)
            cache.batch_select_indices(rows)  # each continuation's prompt row
            am = torch.cat([mask[rows], cmask], dim=1)
            cpos = plen[rows].unsqueeze(1) + torch.arange(width, device=ids.device).unsqueeze(0)
            o = model(input_ids=tok, attention_mask=am, position_ids=cpos, use_cache=True,
                      **{cache_kw: cache})
            lp = torch.log_softmax(o.logits.float(), dim=-1)  # [R, width, V]
            for i, (_, _, c) in enumerate(part):
                nxt = torch.tensor(c[1:], dtype=torch.long, device=ids.device)
                total[i] += lp[i, torch.arange(len(c) - 1, device=ids.device), nxt].sum()
        for i, (b, j, _) in enumerate(part):
            scores[b][j] = float(total[i])
    return first, scores


@dataclass
class KeySet:
    """One query's keys, each with ``log P(key | query)``, by where they came from.

    ``beam``: the decoded n-grams and their prefixes (step 2); ``unigrams``: the first step's
    most probable corpus tokens, most probable first (step 3); ``query``: the query's corpus
    n-grams rescored by the LM, rarest first (step 4).
    """

    beam: dict[tuple[int, ...], float]
    unigrams: list[tuple[tuple[int, ...], float]] = field(default_factory=list)
    query: list[tuple[tuple[int, ...], float]] = field(default_factory=list)

    def merged(self, unigrams: int, query_keys: int) -> dict[tuple[int, ...], float]:
        """All keys, the first ``unigrams`` unigram and ``query_keys`` query keys included;
        a key from several sources keeps its highest log-probability."""
        keys = dict(self.beam)
        for key, lp in self.unigrams[:max(unigrams, 0)] + self.query[:max(query_keys, 0)]:
            keys[key] = max(keys.get(key, float("-inf")), lp)
        return keys


class SealIndex(KeyTableIndex):
    """An FM-index over the corpus tokens + an LM; see the module docstring."""

    kind = "seal"
    Params = SealParams
    SearchParams = SealSearchParams
    Store = FMStore

    def __init__(self, path: Path, params: dict[str, Any], lm: Any = None):
        super().__init__(path, params, lm)
        self._bytes: dict[int, bytes] = {}

    def apply(self, changes: ChangeSet) -> None:
        with self._lock:
            cap = int(self.params["max_doc_tokens"])
            added = []
            for d in changes.upserts:
                if d.version in self.table.rows:
                    continue
                toks = doc_tokens(self.lm.tokenizer, d, cap)
                if toks:  # an empty document holds no n-gram: nothing to index
                    added.append((d.version, d.doc_id, np.asarray(toks)))
            for v in self.write_keys([v for _, v in changes.removed], added):
                self._bytes.pop(v, None)

    # -- reads --------------------------------------------------------------------------------

    def _doc_bytes(self, label: int) -> bytes:
        b = self._bytes.get(label)
        if b is None:
            b = self.table.rows[label][1].astype("<i4").tobytes()
            self._bytes[label] = b
        return b

    def query_keys(self, query: str, limit: int | None = None) -> list[list[int]]:
        """The query's n-grams (1..query_ngram tokens) that occur in the corpus, rarest first."""
        toks = list(self.lm.tokenizer.encode(" " + query.strip(), add_special_tokens=False))
        seen: dict[tuple[int, ...], int] = {}
        for n in range(1, int(self.params["query_ngram"]) + 1):
            for i in range(len(toks) - n + 1):
                key = tuple(toks[i:i + n])
                if key not in seen:
                    c = self.store.count(key)
                    if c > 0:
                        seen[key] = c
        ranked = sorted(seen, key=lambda k: (seen[k], k))
        cap = int(self.params["max_query_keys"]) if limit is None else int(limit)
        return [list(k) for k in ranked[:cap]]

    def search(self, queries: Sequence[str], k: int,
               params: SealSearchParams | None = None) -> list[list[Hit]]:
        """Top-``k`` documents per query (see the module docstring for the scoring)."""
        if k <= 0 or not queries:
            self._search_params(params)  # bad parameters are refused all the same
            return [[] for _ in queries]
        with self._lock:
            return self.rank(self.decode(queries, params), k, params)

    def decode(self, queries: Sequence[str],
               params: SealSearchParams | dict[str, Any] | None = None) -> list[KeySet]:
        """Steps 2-4 (the LM): each query's keys; ``rank`` scores them (no LM), so one
        decoding can be scored under several scoring settings. ``params``: a
        ``SealSearchParams``, or a dict of its fields (checked), or None."""
        p = self._search_params(params)
        with self._lock:
            provider = self.store.provider()
            if provider is None:
                return [KeySet({}) for _ in queries]
            out: list[KeySet] = []
            bs = max(int(self.params["batch_size"]), 1)
            for s in range(0, len(queries), bs):
                out.extend(self.collect_keys(list(queries[s:s + bs]), provider, p))
            return out

    def rank(self, keysets: Sequence[KeySet], k: int,
             params: SealSearchParams | dict[str, Any] | None = None) -> list[list[Hit]]:
        """Steps 5-6 for decoded keys: the top-``k`` documents of each query."""
        p = self._search_params(params)
        with self._lock:
            total = self.store.total_tokens
            return [self.score_keys(ks.merged(int(p["unigrams"]), int(p["max_query_keys"])),
                                    k, total, p) for ks in keysets]

    def collect_keys(self, queries: list[str], provider: Any, p: dict[str, Any]
                     ) -> list[KeySet]:
        """Steps 2-4 for a batch: the keys of each query with ``log P(key | query)``."""
        from genseek.kernels.beam import constrained_beam_search
        from genseek.retrievers.prompts import left_pad

        lm = self.lm
        prompts = self.prompts(queries)
        ids, mask = left_pad(prompts, lm.pad_id, lm.device)
        # 2. n-grams under the FM-index, every partial hypothesis kept
        with torch.inference_mode():
            res = constrained_beam_search(
                lm.model, ids, mask, provider, num_beams=max(int(p["num_beams"]), 1),
                max_new_tokens=max(int(p["max_new_tokens"]), 1), length_penalty=0.0,
                keep_partials=True,
                decoder_start_token_id=getattr(lm.model.config, "decoder_start_token_id", None))
        # 3-4. unigram keys from the first step; query n-grams rescored by the LM
        qkeys = [self.query_keys(q, p["max_query_keys"]) for q in queries]
        if lm.is_encoder_decoder:
            first, qscores = None, [[float("-inf")] * len(c) for c in qkeys]
        else:
            first, qscores = first_step_and_rescore(lm.model, prompts, qkeys, lm.pad_id)
        present = torch.from_numpy(self.store.present())
        if first is not None:
            first = first.cpu()  # [B, V]: the unigram keys are read on the host
        out = []
        for b in range(len(queries)):
            beam: dict[tuple[int, ...], float] = {}
            for h in (res.partials or [[]] * len(queries))[b] + res.hypotheses[b]:
                if h.tokens:
                    beam[h.tokens] = max(beam.get(h.tokens, float("-inf")), h.score)
            uni: list[tuple[tuple[int, ...], float]] = []
            if first is not None and int(p["unigrams"]) > 0:
                lp = first[b, :present.shape[0]].masked_fill(~present, float("-inf"))
                top = torch.topk(lp, min(int(p["unigrams"]), int(present.sum())))
                uni = [((t,), float(v)) for t, v in zip(top.indices.tolist(),
                                                       top.values.tolist(), strict=True)]
            query = [(tuple(key), sc) for key, sc in zip(qkeys[b], qscores[b], strict=True)]
            out.append(KeySet(beam, uni, query))
        return out

    def score_keys(self, keys: dict[tuple[int, ...], float], k: int, total: int,
                   p: dict[str, Any]) -> list[Hit]:
        """Steps 5-6: the top-``k`` documents for one query's ``{key: log P(key | q)}``."""
        # 5. weights
        weighted = []
        for key, lp in keys.items():
            c = self.store.count(key)
            w = key_weight(lp, c, total)
            if w > 0:
                weighted.append((key, w, c))
        # 6. candidates from rare keys, frequent keys only add to them
        rare = [x for x in weighted if x[2] <= int(p["rare_threshold"])]
        frequent = [x for x in weighted if x[2] > int(p["rare_threshold"])]
        rows = self.table.rows
        doc_keys: dict[int, list[tuple[float, tuple[int, ...]]]] = {}
        for key, w, _ in rare:
            for v in self.store.locate(key, int(self.params["locate_limit"])).tolist():
                doc_keys.setdefault(v, []).append((w, key))
        if frequent and doc_keys:
            needles = [(np.asarray(key, dtype="<i4").tobytes(), w, key) for key, w, _ in frequent]
            for v, lst in doc_keys.items():
                hay = self._doc_bytes(v)
                lst.extend((w, key) for nb, w, key in needles if _contains(hay, nb))
        scores = aggregate(doc_keys, float(p["alpha"]), float(p["beta"]))
        best = sorted(scores.items(), key=lambda x: (-x[1], rows[x[0]][0]))
        out: list[Hit] = []
        seen: set[str] = set()
        for v, s in best:
            doc_id = rows[v][0]
            if doc_id not in seen:
                seen.add(doc_id)
                out.append(Hit(doc_id, float(s)))
            if len(out) >= k:
                break
        return out
