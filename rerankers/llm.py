"""What the LLM rerankers (``first``, ``listwise-gen``, ``pointwise``) share: the model their
spec names, chat prompts, and batched forward passes over one cached prompt prefix.

Models load through :func:`genseek.models.load_lm` (the one loader, shared with the generative
retrievers: the embedded ``smollm2``, a folder, a ``.gguf`` or a cached Hugging Face name, on
:func:`genseek.models.placement`: a GPU when present, bfloat16 on it; float32 on a CPU).
"""

from __future__ import annotations

import copy
from typing import Any

from genseek.models import DEFAULT_LM, LM, cache_kwarg, load_lm, output_cache
from genseek.params import Params

DEFAULT_MODEL = DEFAULT_LM
"""Alias of the embedded SmolLM2-135M-Instruct GGUF."""


def lm_from_params(schema: type[Params], params: dict[str, Any]
                   ) -> tuple[LM, dict[str, Any]]:
    """A reranker's spec parameters checked by its ``schema``: the LM they name (``model``,
    ``device``, ``dtype``) and the rest."""
    p = schema.resolve(params)
    lm = load_lm(str(p.pop("model", DEFAULT_MODEL)), p.pop("device", None), p.pop("dtype", None))
    return lm, p


def chat_parts(tokenizer: Any, system: str, user: str) -> str:
    """The chat-formatted prompt (system + user turn + open assistant turn) as text."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system}\n\n{user}\n\nAnswer: "


def context_length(lm: Any, tokenizer: Any) -> int:
    """The longest sequence the model accepts (config, else the tokenizer's limit, else 2048)."""
    n = getattr(lm.config, "max_position_embeddings", None)
    if isinstance(n, int) and n > 0:
        return n
    n = getattr(tokenizer, "model_max_length", None)
    return n if isinstance(n, int) and 0 < n < 10**7 else 2048


class PrefixRunner:
    """Batched forward passes that share one cached prompt prefix.

    The prefix (system prompt and chat header, identical for every prompt) is run
    once; its KV cache (a transformers ``Cache``, batch 1) is copied and repeated to each
    batch (``Cache.batch_repeat_interleave``). Suffixes of different lengths are **left**-padded
    *between* the prefix and the suffix: the padding is masked out and the position ids skip
    it, so every row sees exactly ``prefix + suffix`` and all rows end in the last column.
    """

    def __init__(self, lm: LM, prefix_ids: list[int]):
        import torch

        self.lm = lm
        self.prefix_ids = list(prefix_ids)
        self._cache_kw = cache_kwarg(lm.model)
        self._prefix_cache: Any = None
        if self.prefix_ids:
            with torch.inference_mode():
                out = lm.model(input_ids=torch.tensor([self.prefix_ids], device=lm.device),
                               use_cache=True)
            self._prefix_cache = output_cache(out)

    def _batch(self, suffixes: list[list[int]]) -> tuple[Any, Any, Any, Any]:
        """``(cache, input_ids (B, L), attention_mask (B, P + L), position_ids (B, L))``."""
        import torch

        dev = self.lm.device
        b, p = len(suffixes), len(self.prefix_ids)
        width = max(len(s) for s in suffixes)
        pad = self.lm.tokenizer.pad_token_id or 0
        ids = torch.full((b, width), pad, dtype=torch.long)
        mask = torch.zeros((b, p + width), dtype=torch.long)
        mask[:, :p] = 1
        pos = torch.zeros((b, width), dtype=torch.long)
        for i, s in enumerate(suffixes):
            off = width - len(s)
            ids[i, off:] = torch.tensor(s, dtype=torch.long)
            mask[i, p + off:] = 1
            pos[i, off:] = torch.arange(p, p + len(s))
        cache = None
        if self._prefix_cache is not None:  # the shared prefix, one copy per row of the batch
            cache = copy.deepcopy(self._prefix_cache)
            cache.batch_repeat_interleave(b)
        return cache, ids.to(dev), mask.to(dev), pos.to(dev)

    def _chunks(self, suffixes: list[list[int]], batch_size: int) -> list[list[int]]:
        """Row indices in batches of similar length (less padding)."""
        order = sorted(range(len(suffixes)), key=lambda i: len(suffixes[i]))
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def last_logits(self, suffixes: list[list[int]], batch_size: int = 8) -> Any:
        """Next-token logits after each ``prefix + suffix``: float32 tensor ``(N, vocab)``."""
        import torch

        out = torch.empty((len(suffixes), self.lm.model.config.vocab_size), dtype=torch.float32)
        for rows in self._chunks(suffixes, batch_size):
            with torch.inference_mode():
                cache, ids, mask, pos = self._batch([suffixes[i] for i in rows])
                res = self.lm.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                                    use_cache=cache is not None, logits_to_keep=1,
                                    **{self._cache_kw: cache})
            out[rows] = res.logits[:, -1, :].float().cpu()
        return out

    def generate(self, suffixes: list[list[int]], max_new_tokens: int, stop_ids: set[int],
                 batch_size: int = 8) -> tuple[list[list[int]], Any]:
        """Greedy continuations of each ``prefix + suffix`` (stop tokens not included).

        Returns the generated ids per row and the first step's logits ``(N, vocab)``.
        """
        import torch

        gens: list[list[int]] = [[] for _ in suffixes]
        first = torch.empty((len(suffixes), self.lm.model.config.vocab_size), dtype=torch.float32)
        for rows in self._chunks(suffixes, batch_size):
            done = torch.zeros(len(rows), dtype=torch.bool)
            with torch.inference_mode():
                cache, ids, mask, pos = self._batch([suffixes[i] for i in rows])
                for step in range(max_new_tokens):
                    res = self.lm.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                                        use_cache=True, logits_to_keep=1,
                                        **{self._cache_kw: cache})
                    cache = output_cache(res)
                    logits = res.logits[:, -1, :].float()
                    if step == 0:
                        first[rows] = logits.cpu()
                    nxt = logits.argmax(-1).cpu()
                    for j, row in enumerate(rows):
                        if not done[j]:
                            tok = int(nxt[j])
                            if tok in stop_ids:
                                done[j] = True
                            else:
                                gens[row].append(tok)
                    if bool(done.all()):
                        break
                    ids = nxt.view(-1, 1).to(self.lm.device)
                    mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype,
                                                       device=mask.device)], dim=1)
                    pos = pos[:, -1:] + 1
        return gens, first
