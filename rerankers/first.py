"""``first`` and ``listwise-gen``: listwise LLM reranking over any causal LM.

FIRST (Reddy et al., 2024, "FIRST: Faster Improved Listwise Reranking with Single
Token Decoding") reads a whole window's ranking from the logits of the *first*
generated identifier, instead of generating the permutation ``[B] > [A] > ...``
token by token as RankGPT / RankZephyr do.

1. **Prompt** (RankZephyr's, with letter labels): a system turn, then a user turn
   listing the window's passages as ``[A] ...``, ``[B] ...`` between the query and
   the instructions; the assistant turn is seeded with ``[``.
2. **Single-token decoding** (:class:`FirstReranker`): one forward pass; the logits
   of the label tokens ``A``, ``B``, ... at the seeded ``[`` order the window.
   **Full generation** (:class:`GenerationReranker`): greedy decoding of the whole
   ranking, parsed, with missing labels appended in input order and repeats dropped.
3. **Sliding windows** over the first stage's order, from the bottom up (default
   window 20, stride 10: over 100 candidates the windows are [80,100), [70,90), ...,
   [0,20)); the last window is clamped at 0 so every candidate is covered. When the
   whole list has at most 26 candidates (one letter each) and fits the context at
   ``max_passage_tokens`` per passage, it is ranked in **one full-list pass**.
4. **Batching**: the queries advance window by window in lockstep, so step ``t``
   ranks the ``t``-th window of every query in shared forward passes; the
   query-independent prompt prefix (system turn, chat header) is computed once and
   its key/value cache reused (:class:`genseek.rerankers.llm.PrefixRunner`).
5. **Truncation**: each passage keeps at most ``max_passage_tokens`` tokens, fewer
   when a window would not otherwise fit the model's context.

Scores: the reranked order as ``n - rank`` (higher is better), so any consumer that
sorts by score reproduces the ranking.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from genseek.errors import GenseekError
from genseek.models import LM
from genseek.params import FirstParams, ListwiseGenParams
from genseek.rerankers.llm import PrefixRunner, chat_parts, context_length, lm_from_params

LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
"""Window labels: one letter each, so at most 26 passages per forward pass."""

SYSTEM = ("You are RankLLM, an intelligent assistant that can rank passages based on their "
          "relevancy to the query.")
_MARK = "\u2063GENSEEK_USER\u2063"


def _head(n: int, query: str) -> str:
    return (f"I will provide you with {n} passages, each indicated by an alphabetical "
            f"identifier []. Rank the passages based on their relevance to the search query: "
            f"{query}.\n\n")


def _tail(n: int, query: str) -> str:
    return (f"\nSearch Query: {query}.\nRank the {n} passages above based on their relevance "
            "to the search query. All the passages should be included and listed using "
            "identifiers, in descending order of relevance. The output format should be "
            "[] > [], e.g., [A] > [B]. Only respond with the ranking results, do not say any "
            "word or explain.")


def label_token_ids(tokenizer: Any, n: int = len(LABELS)) -> list[int]:
    """The token id of each label letter as it follows ``[`` (one token per label).

    Raises GenseekError when a label does not encode as ``[`` followed by exactly one
    token, or two labels share a token: single-token decoding cannot work then.
    """
    if n > len(LABELS):
        raise GenseekError(f"at most {len(LABELS)} labels per window, asked for {n}")
    base = tokenizer.encode("[", add_special_tokens=False)
    out: list[int] = []
    for letter in LABELS[:n]:
        ids = tokenizer.encode("[" + letter, add_special_tokens=False)
        if len(ids) != len(base) + 1 or ids[:len(base)] != base:
            raise GenseekError(
                f"tokenizer {type(tokenizer).__name__} encodes label '[{letter}' as {ids} "
                f"(after '[' = {base}): single-token decoding needs each label letter to be "
                "one token after '['; use a model whose tokenizer keeps letters as tokens")
        out.append(ids[-1])
    if len(set(out)) != len(out):
        raise GenseekError("tokenizer maps two window labels to the same token")
    return out


def windows(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Sliding windows ``[start, end)`` over ``n`` candidates, bottom-up, in ranking order.

    ``[n - window, n)``, then each window ``stride`` higher; the top window is clamped
    to ``[0, window)`` (so every window holds ``min(window, n)`` candidates and the last
    step may be shorter than ``stride``). Empty for ``n <= 1``; a single ``[0, n)`` when
    ``n <= window``.
    """
    if window < 2 or stride < 1 or stride > window:
        raise GenseekError(f"bad windows: need window >= 2 and 1 <= stride <= window "
                           f"(window={window}, stride={stride})")
    if n <= 1:
        return []
    out: list[tuple[int, int]] = []
    end = n
    while end - window > 0:
        out.append((end - window, end))
        end -= stride
    out.append((0, min(window, n)))
    return out


def parse_permutation(text: str, n: int) -> list[int]:
    """Indices ``0..n-1`` in the order ``text`` ranks them (``[B] > [A] > ...``), repaired.

    Labels outside the window and repeats are dropped; labels never mentioned are
    appended in their input order. Bracketed labels are read first; with none, bare
    capital letters standing alone are read.
    """
    found = re.findall(r"\[\s*([A-Za-z])\s*\]", text)
    if not found:
        found = re.findall(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", text)
    seen: list[int] = []
    for letter in found:
        idx = LABELS.find(letter.upper())
        if 0 <= idx < n and idx not in seen:
            seen.append(idx)
    return seen + [i for i in range(n) if i not in seen]


def scores_from_order(order: Sequence[int]) -> list[float]:
    """``scores[i] = n - rank(i)``: the ranking as scores (higher is better)."""
    n = len(order)
    scores = [0.0] * n
    for rank, i in enumerate(order):
        scores[i] = float(n - rank)
    return scores


@dataclass
class PromptBuilder:
    """Token-level prompt assembly, shared by inference and training.

    ``prefix_ids`` (everything before the user message) is identical for every prompt;
    a window's suffix is ``head + ([X] + passage + newline)* + tail + chat close + '['``,
    each piece tokenised separately so passages are tokenised once per query.
    """

    tokenizer: Any
    prefix_ids: list[int]
    close_ids: list[int]  # end of the user turn, assistant header, then "["
    label_piece_ids: list[list[int]]  # "[A]", "[B]", ...
    newline_ids: list[int]

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, system: str = SYSTEM) -> PromptBuilder:
        text = chat_parts(tokenizer, system, _MARK)
        if text.count(_MARK) != 1:
            raise GenseekError("the model's chat template does not keep the user message")
        before, after = text.split(_MARK)
        enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
        return cls(tokenizer, enc(before), enc(after + "["),
                   [enc(f"[{c}]") for c in LABELS], enc("\n"))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def passages(self, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
        """Each text as `` text`` token ids, cut to ``max_tokens``."""
        if not texts:
            return []
        batch = self.tokenizer([" " + " ".join(t.split()) for t in texts],
                               add_special_tokens=False)["input_ids"]
        return [list(ids[:max_tokens]) for ids in batch]

    def fixed_tokens(self, n: int, query: str) -> int:
        """Tokens of a window prompt of ``n`` passages other than the passages themselves."""
        return (len(self.prefix_ids) + len(self.encode(_head(n, query)))
                + len(self.encode(_tail(n, query))) + len(self.close_ids)
                + sum(len(self.label_piece_ids[i]) + len(self.newline_ids) for i in range(n)))

    def suffix(self, query: str, passages: Sequence[list[int]], budget: int | None = None,
               query_ids: tuple[list[int], list[int]] | None = None) -> list[int]:
        """The window prompt after the shared prefix; passages cut to ``budget`` tokens each."""
        n = len(passages)
        head, tail = query_ids or (self.encode(_head(n, query)), self.encode(_tail(n, query)))
        ids = list(head)
        for i, p in enumerate(passages):
            ids += self.label_piece_ids[i] + (p if budget is None else p[:budget])
            ids += self.newline_ids
        return ids + tail + self.close_ids


class FirstReranker:
    """Listwise reranking by single-token decoding (FIRST). See the module docstring."""

    mode = "single-token"
    Params: type[FirstParams] = FirstParams

    def __init__(self, lm: LM, window: int = 20, stride: int = 10,
                 max_passage_tokens: int = 100, batch_size: int = 4, full: bool = True):
        windows(window + 1, window, stride)  # validates window/stride
        if window > len(LABELS):
            raise GenseekError(f"window {window} is larger than the {len(LABELS)} labels")
        if max_passage_tokens < 1 or batch_size < 1:
            raise GenseekError("max_passage_tokens and batch_size must be >= 1")
        self.lm = lm
        self.window, self.stride = window, stride
        self.max_passage_tokens, self.batch_size, self.full = max_passage_tokens, batch_size, full
        self.builder = PromptBuilder.for_tokenizer(lm.tokenizer)
        self.label_ids = label_token_ids(lm.tokenizer, len(LABELS))
        self.context = context_length(lm.model, lm.tokenizer)
        self.runner = PrefixRunner(lm, self.builder.prefix_ids)

    @classmethod
    def open(cls, params: dict[str, Any]):
        """From spec parameters: model, window, stride, max_passage_tokens, device, dtype,
        batch_size, full (one pass over up to 26 candidates when they fit)."""
        lm, p = lm_from_params(cls.Params, params)
        return cls(lm, **p)

    # -- the Reranker protocol ----------------------------------------------------------

    def rank_batch(self, queries: Sequence[str],
                   texts_lists: Sequence[Sequence[str]]) -> list[list[float]]:
        """One score per candidate of every query (higher is better; the listwise order as
        scores): windows are batched across the queries."""
        return [scores_from_order(o) for o in self.orders(queries, texts_lists)]

    # -- ranking --------------------------------------------------------------------------

    def plan(self, n: int, query: str = "") -> list[tuple[int, int]]:
        """The windows used for ``n`` candidates: one full pass when allowed, else sliding."""
        if self.full and 1 < n <= len(LABELS) and self._fits(n, query, self.max_passage_tokens):
            return [(0, n)]
        return windows(n, self.window, self.stride)

    def _fits(self, n: int, query: str, per_passage: int) -> bool:
        return self.builder.fixed_tokens(n, query) + n * per_passage + self._reserve(n) \
            <= self.context

    def _reserve(self, n: int) -> int:
        return 1  # the one scored position (generation reserves room for its output)

    def _budget(self, n: int, query: str) -> int:
        """Tokens each of ``n`` passages may keep so the prompt fits the context."""
        room = self.context - self.builder.fixed_tokens(n, query) - self._reserve(n)
        budget = min(self.max_passage_tokens, room // max(n, 1))
        if budget < 1:
            raise GenseekError(f"the query is too long for a window of {n} passages in the "
                               f"model's context of {self.context} tokens")
        return budget

    def orders(self, queries: Sequence[str],
               texts_lists: Sequence[Sequence[str]]) -> list[list[int]]:
        """The reranked order (indices into each query's texts) for every query."""
        if len(queries) != len(texts_lists):
            raise GenseekError(f"{len(queries)} queries but {len(texts_lists)} candidate lists")
        # 1. tokenise every passage once; 2. plan each query's windows
        passages = [self.builder.passages(list(t), self.max_passage_tokens) for t in texts_lists]
        orders = [list(range(len(t))) for t in texts_lists]
        plans = [self.plan(len(t), q) for q, t in zip(queries, texts_lists, strict=True)]
        # 3. advance all queries window by window; each step is one batched ranking call
        for step in range(max((len(p) for p in plans), default=0)):
            jobs = [(qi, *plans[qi][step]) for qi in range(len(queries)) if step < len(plans[qi])]
            suffixes = []
            for qi, start, end in jobs:
                n = end - start
                budget = self._budget(n, queries[qi])
                suffixes.append(self.builder.suffix(
                    queries[qi], [passages[qi][i] for i in orders[qi][start:end]], budget))
            perms = self.rank_windows(suffixes, [end - start for _, start, end in jobs])
            for (qi, start, end), perm in zip(jobs, perms, strict=True):
                window_ids = orders[qi][start:end]
                orders[qi][start:end] = [window_ids[i] for i in perm]
        return orders

    def rank_windows(self, suffixes: list[list[int]], sizes: list[int]) -> list[list[int]]:
        """One forward pass per window: the label logits at the seeded ``[`` order it."""
        logits = self.runner.last_logits(suffixes, self.batch_size)  # (N, vocab)
        return [order_from_label_logits(logits[i, self.label_ids[:n]].tolist())
                for i, n in enumerate(sizes)]


def order_from_label_logits(values: Sequence[float]) -> list[int]:
    """Window positions by descending label logit (ties: the earlier position first)."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


class GenerationReranker(FirstReranker):
    """The same prompts and windows, ranked by generating and parsing the whole permutation."""

    mode = "full-generation"
    Params = ListwiseGenParams

    def __init__(self, lm: LM, **kwargs: Any):
        super().__init__(lm, **kwargs)
        tok = lm.tokenizer
        stops = {tok.eos_token_id}
        for name in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
            tid = tok.convert_tokens_to_ids(name)
            if isinstance(tid, int) and tid != tok.unk_token_id and tid >= 0:
                stops.add(tid)
        self.stop_ids = {t for t in stops if t is not None}
        self.last_texts: list[str] = []

    def _reserve(self, n: int) -> int:
        return self.max_new_tokens(n)

    @staticmethod
    def max_new_tokens(n: int) -> int:
        """Room for ``A] > [B] > ... [Z]`` (about 4 tokens per label) plus a little."""
        return 4 * n + 8

    def rank_windows(self, suffixes: list[list[int]], sizes: list[int]) -> list[list[int]]:
        gens, _ = self.runner.generate(suffixes, self.max_new_tokens(max(sizes)),
                                       self.stop_ids, self.batch_size)
        texts = ["[" + self.lm.tokenizer.decode(g, skip_special_tokens=True) for g in gens]
        self.last_texts = texts
        return [parse_permutation(t, n) for t, n in zip(texts, sizes, strict=True)]
