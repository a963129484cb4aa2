"""Prompts, padding and LoRA for the generative retrievers' language models.

Models load through :func:`genseek.models.load_lm` (the one loader: the embedded ``smollm2``, a
folder, a ``.gguf``, a ``genseek train genre|seal|dsi`` output or a cached Hugging Face name; one
copy per process, shared with the rerankers, on :func:`genseek.models.placement`).

Prompts. Every retriever builds its decoder input with :func:`build_prompt`: for a model with
a chat template (instruction-tuned) the task text is a user turn and generation starts in the
assistant turn; otherwise the plain text ``"{instruction}\\n{input}\\n{cue}"``. Inputs longer than
the context are truncated from the *right of the query* (documented behaviour: a query that
does not fit leaves room for at least ``reserve`` new tokens; a prompt that cannot fit even
with an empty query is a GenseekError).
"""

from __future__ import annotations

from typing import Any

from genseek.errors import GenseekError
from genseek.models import LM

__all__ = ["build_prompt", "left_pad", "lora_wrap"]


def build_prompt(lm: LM, instruction: str, text: str, cue: str = "", *,
                 reserve: int = 32, max_input: int | None = None) -> list[int]:
    """Token ids of the decoder input for ``text`` under ``instruction``.

    The ``text`` is truncated (at the token level) so that the prompt is at most
    ``min(max_input, context - reserve)`` tokens; raises GenseekError when even an empty
    ``text`` does not fit.
    """
    tok = lm.tokenizer
    limit = lm.context - reserve
    if max_input is not None:
        limit = min(limit, int(max_input))

    def render(body: str) -> list[int]:
        if lm.has_chat and not lm.is_encoder_decoder:
            msgs = [{"role": "user", "content": f"{instruction}\n{body}".strip()}]
            ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
            if hasattr(ids, "keys"):
                ids = ids["input_ids"]
            ids = list(ids)
            if cue:
                ids += tok.encode(cue, add_special_tokens=False)
            return ids
        joined = "\n".join(p for p in (instruction, body, cue) if p)
        return list(tok.encode(joined, add_special_tokens=lm.is_encoder_decoder))

    base = render("")
    if len(base) > limit:
        raise GenseekError(f"model {lm.name}: the prompt template alone takes {len(base)} tokens;"
                           f" the model accepts {limit} input tokens")
    body_ids = tok.encode(text, add_special_tokens=False)
    budget = limit - len(base)
    if len(body_ids) > budget:
        text = tok.decode(body_ids[:max(budget - 2, 0)], skip_special_tokens=True)
    ids = render(text)
    while len(ids) > limit and text:  # re-tokenisation at the cut may add a token or two
        text = text[: max(len(text) - 16, 0)]
        ids = render(text)
    return ids


def left_pad(rows: list[list[int]], pad_id: int, device: Any = None) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` int64 ``[B, L]``, left padded (causal decoding), on
    ``device`` (the model's: ``LM.device``; default the CPU)."""
    import torch

    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    if device is not None:
        return ids.to(device), mask.to(device)
    return ids, mask


def lora_wrap(lm: LM, r: int = 8, alpha: int = 16, dropout: float = 0.05) -> Any:
    """The model with a fresh LoRA adapter on its attention and MLP projections (peft)."""
    from peft import LoraConfig, TaskType, get_peft_model

    names = {n.split(".")[-1] for n, _ in lm.model.named_modules()}
    targets = [t for t in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                           "down_proj", "q", "k", "v", "o", "wi", "wo") if t in names]
    if not targets:
        raise GenseekError(f"model {lm.name}: no attention/MLP projections for LoRA found")
    task = TaskType.SEQ_2_SEQ_LM if lm.is_encoder_decoder else TaskType.CAUSAL_LM
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                     task_type=task)
    return get_peft_model(lm.model, cfg)
