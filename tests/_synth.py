"""Deterministic synthetic corpora for the tests (no files from the datasets folder)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from genseek.types import Document

# Overlapping topical vocabulary, so BM25 scores vary and rankings are not trivial.
TOPICS = {
    "aero": "wing lift drag airflow pressure boundary layer turbulent laminar shock supersonic "
            "nozzle thrust velocity mach flutter",
    "bio": "cell protein gene expression mutation enzyme membrane receptor tissue tumor "
           "immune antibody pathway signaling",
    "lib": "library catalog indexing retrieval citation journal archive reader classification "
           "thesaurus bibliographic abstract search",
    "comp": "algorithm compiler memory cache processor parallel scheduling network protocol "
            "database query storage kernel",
    "phys": "energy particle field wave quantum electron photon magnetic thermal pressure "
            "velocity spectrum radiation",
}
COMMON = "study result method analysis effect model system data measurement theory experiment"


def unique_token(i: int, version: int = 0) -> str:
    """A token that occurs in exactly one synthetic document version."""
    return f"tok{i:04d}v{version}"


def make_docs(n: int, seed: int = 0, start: int = 0, version: int = 0,
              prefix: str = "d") -> list[Document]:
    """``n`` short varied documents; doc ``i`` carries :func:`unique_token` ``(i, version)``."""
    rng = random.Random(seed * 1_000_003 + start * 7919 + version)
    topics = list(TOPICS)
    common = COMMON.split()
    docs = []
    for i in range(start, start + n):
        main, other = rng.sample(topics, 2)
        words = TOPICS[main].split()
        extra = TOPICS[other].split()
        length = rng.randint(6, 30)
        body = [rng.choice(words) if rng.random() < 0.7 else rng.choice(extra + common)
                for _ in range(length)]
        body.insert(rng.randint(0, len(body)), unique_token(i, version))
        title = " ".join(rng.sample(words, 2)) if rng.random() < 0.6 else ""
        docs.append(Document(f"{prefix}{i}", title, " ".join(body), {"topic": main}))
    return docs


def make_queries(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    vocab = sorted({w for text in TOPICS.values() for w in text.split()})
    return [" ".join(rng.sample(vocab, rng.randint(2, 4))) for _ in range(n)]


def write_jsonl(path: Path, docs: Iterable[Document]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text}) + "\n")
    return path


def make_tiny(folder: Path, words: list[str], context: int = 256) -> Path:
    """A 2-layer LlamaForCausalLM + word-level tokenizer (digits split) saved in ``folder``."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "</s>"] + [str(d) for d in range(10)]
                                        + sorted(set(words)))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.Replace("~", "")  # "~" vanishes: a title of "~" has no token
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                pre_tokenizers.Digits(individual_digits=True)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="[PAD]",
                                  unk_token="[UNK]")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=context, eos_token_id=2, pad_token_id=0,
                      bos_token_id=2, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@contextmanager
def strict_transformers() -> Iterator[list[str]]:
    """Within the block, transformers' deprecation warnings are errors and its deprecation log
    lines are collected (yielded list; the caller asserts it is empty).

    Two channels: ``warnings.warn(FutureWarning / DeprecationWarning)`` (e.g. a deprecated
    keyword such as ``past_key_values``), raised here at the call; and ``logger.warning_once``
    (e.g. reading ``output.past_key_values``), whose once-only memory is cleared first so an
    earlier emission in the session cannot hide one.
    """
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    lines: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if "deprecat" in text.lower():
                lines.append(text)

    root = hf_logging.get_logger("transformers")
    handler = _Collect(level=logging.WARNING)
    level = root.level
    once = getattr(logging.Logger.warning_once, "cache_clear", None)
    if once is not None:
        once()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning):
                warnings.filterwarnings("error", category=category, message=r".*deprecat")
            yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def make_tiny_gguf(path: Path, seed: int = 0, hidden: int = 32, layers: int = 2,
                   context: int = 128) -> Path:
    """A tiny float32 llama ``.gguf`` (byte-level BPE tokenizer, tied embeddings) at ``path``,
    written with the ``gguf`` package: what ``from_pretrained(dir, gguf_file=...)`` loads.
    ``seed`` changes the weights only (same size on disk)."""
    import gguf
    import numpy as np
    from tokenizers import pre_tokenizers

    rng = np.random.default_rng(seed)
    tokens = ["<|endoftext|>"] + sorted(pre_tokenizers.ByteLevel.alphabet()) + ["Ġt", "Ġth"]
    heads, kv, ff = 4, 2, 2 * hidden
    head_dim = hidden // heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(context)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(["Ġ t", "Ġt h"])
    w.add_token_types([1] * len(tokens))
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)

    def rand(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(len(tokens), hidden))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", rand(hidden, hidden))
        w.add_tensor(f"blk.{i}.attn_k.weight", rand(kv * head_dim, hidden))
        w.add_tensor(f"blk.{i}.attn_v.weight", rand(kv * head_dim, hidden))
        w.add_tensor(f"blk.{i}.attn_output.weight", rand(hidden, hidden))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(ff, hidden))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(ff, hidden))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(hidden, ff))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
