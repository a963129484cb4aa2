"""``pointwise``: score each passage alone by the LLM's yes/no answer.

The baseline FIRST is compared with: for each (query, passage) pair one prompt
"Is the passage relevant to the query? Answer Yes or No.", one forward pass, and
the score ``log p(Yes) - log p(No)`` from the next-token logits of the two answer
tokens (the log-odds of "Yes" restricted to the two answers). Pairs are batched
across queries and share the cached system prefix (see ``llm.PrefixRunner``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from genseek.errors import GenseekError
from genseek.models import LM
from genseek.params import PointwiseParams
from genseek.rerankers.llm import PrefixRunner, chat_parts, lm_from_params

SYSTEM = "You are a search relevance judge. You answer only Yes or No."
_MARK = "\u2063GENSEEK_USER\u2063"


def answer_token_ids(tokenizer: Any, words: Sequence[str] = ("Yes", "No")) -> list[int]:
    """The single token of each answer word at the start of the assistant turn."""
    out = []
    for word in words:
        ids = tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise GenseekError(f"tokenizer {type(tokenizer).__name__} splits the answer "
                               f"{word!r} into {len(ids)} tokens; pointwise scoring needs one")
        out.append(ids[0])
    if out[0] == out[1]:
        raise GenseekError("tokenizer maps Yes and No to the same token")
    return out


def _user(query: str, passage: str) -> str:
    return (f"Query: {query}\nPassage: {passage}\n"
            "Is the passage relevant to the query? Answer Yes or No.")


class PointwiseReranker:
    """Relevance log-odds of each passage on its own (a pointwise LLM baseline)."""

    Params = PointwiseParams

    def __init__(self, lm: LM, max_passage_tokens: int = 100, batch_size: int = 8):
        if max_passage_tokens < 1 or batch_size < 1:
            raise GenseekError("max_passage_tokens and batch_size must be >= 1")
        self.lm = lm
        self.max_passage_tokens, self.batch_size = max_passage_tokens, batch_size
        tok = lm.tokenizer
        text = chat_parts(tok, SYSTEM, _MARK)
        before, after = text.split(_MARK)
        self.prefix_ids = tok.encode(before, add_special_tokens=False)
        self.close_ids = tok.encode(after, add_special_tokens=False)
        self.answer_ids = answer_token_ids(tok)
        self.runner = PrefixRunner(lm, self.prefix_ids)

    @classmethod
    def open(cls, params: dict[str, Any]) -> PointwiseReranker:
        lm, p = lm_from_params(PointwiseParams, params)
        return cls(lm, **p)

    def _suffix(self, query: str, passage_ids: list[int]) -> list[int]:
        tok = self.lm.tokenizer
        passage = tok.decode(passage_ids[:self.max_passage_tokens])
        return tok.encode(_user(query, passage.strip()), add_special_tokens=False) \
            + self.close_ids

    def rank_batch(self, queries: Sequence[str],
                   texts_lists: Sequence[Sequence[str]]) -> list[list[float]]:
        """``log p(Yes) - log p(No)`` for every passage of every query, in one batched run."""
        if len(queries) != len(texts_lists):
            raise GenseekError(f"{len(queries)} queries but {len(texts_lists)} candidate lists")
        tok = self.lm.tokenizer
        suffixes: list[list[int]] = []
        for query, texts in zip(queries, texts_lists, strict=True):
            if not texts:
                continue
            cut = tok([" ".join(t.split()) for t in texts], add_special_tokens=False)["input_ids"]
            suffixes += [self._suffix(query, list(ids)) for ids in cut]
        if not suffixes:
            return [[] for _ in queries]
        logits = self.runner.last_logits(suffixes, self.batch_size)  # (N, vocab)
        yes, no = self.answer_ids
        flat = (logits[:, yes] - logits[:, no]).tolist()
        out, i = [], 0
        for texts in texts_lists:
            out.append([float(x) for x in flat[i:i + len(texts)]])
            i += len(texts)
        return out
