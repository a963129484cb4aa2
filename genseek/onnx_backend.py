"""Encoder backends: ONNX Runtime (float32 and int8) and CPU bfloat16 autocast for the text
encoders of :mod:`genseek.encoders`.

``backend`` of ``TextEncoder``, ``TokenEncoder`` and ``SparseEncoder`` is one of
:data:`BACKENDS`:

- ``torch``: the PyTorch model as loaded (float32 on a CPU), today's path and the default;
- ``onnx``: the same model exported with ``torch.onnx.export`` (dynamic batch and sequence
  axes) and run by ONNX Runtime in float32 on the CPU;
- ``onnx-int8``: that export with int8 weights (``onnxruntime.quantization.quantize_dynamic``,
  per output channel; activations are quantised on the fly);
- ``torch-bf16``: the PyTorch model under ``torch.autocast(bfloat16)``; on a CPU only where it
  computes in bfloat16 natively (AMX or AVX512-BF16, :func:`genseek.models.cpu_bf16`): with
  AVX2 only it was 5.5x slower than float32, so it is refused there.

Exports are made from the already-loaded Hugging Face module at first use and kept under
``cache_root()/onnx/<kind>-<variant>-<hash>``, the hash over the model files' identity (name,
size and modification time of each file of a model folder; a hash of the weights for a model
that is not a folder), the token limit, the graph kind, the opset and the torch, onnx and
onnxruntime versions (:func:`cache_facts`). A folder is built in a temporary folder beside the
final one, its files synced, a marker (``genseek_onnx.json``: the facts, each file's size and
SHA-256) written last, and renamed into place under a lock file, so a half-written folder is
never used; a folder whose marker, sizes or digests do not match, or that ONNX Runtime cannot
open, is rebuilt. Nothing here pickles or ``torch.load``\\ s: the model is ONNX protobuf, the
marker JSON.

Only the model call moves to ONNX Runtime: tokenisation and the post-processing (the
sentence-transformer's pooling and normalisation modules, :func:`genseek.encoders.splade_pool`,
the token encoder's normalisation) are the torch path's own code, run on the outputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from genseek.errors import InvalidParameter, ModelUnavailable

BACKENDS = ("torch", "onnx", "onnx-int8", "torch-bf16")
"""Encoder backends, the first the default."""
ONNX_BACKENDS = ("onnx", "onnx-int8")
OPSET = 18
"""The ONNX opset of the exports (part of the cache key)."""
MARKER = "genseek_onnx.json"
"""Written last into an export folder: what makes it usable."""
MODEL_FILE = "model.onnx"
_FORMAT = 1  # bump when the folder layout or the export recipe changes: old folders are ignored
QUANT = {"weight_type": "QInt8", "per_channel": True, "reduce_range": False,
         "op_types": ["MatMul", "Gemm"], "MatMulConstBOnly": True}
"""The int8 recipe (part of the cache key): int8 weights per output channel of the matrix
products with constant weights (the attention products of two activations stay float)."""

EXPORTS: Counter[str] = Counter()
"""Exports and quantisations run by this process, by ``kind/variant`` (cache misses; tests)."""
_EXPORT_LOCK = threading.RLock()  # re-entrant: an int8 build makes its float32 source first

log = logging.getLogger("genseek.models")


def check_backend(backend: str | None) -> str:
    """``backend`` as one of :data:`BACKENDS` (None or ``""``: ``torch``); anything else is a
    one-line :class:`~genseek.errors.InvalidParameter`."""
    if backend in (None, ""):
        return "torch"
    name = str(backend).strip().lower()
    if name not in BACKENDS:
        raise InvalidParameter(f"unknown encoder backend {backend!r}: use one of "
                               f"{', '.join(BACKENDS)}")
    return name


def backend_id(backend: str) -> str:
    """What a backend adds to the identity of the vectors it makes: ``""`` for ``torch`` (float32
    as loaded), else the backend's name."""
    return "" if check_backend(backend) == "torch" else check_backend(backend)


def require_bf16(device_type: str) -> None:
    """Refuse ``torch-bf16`` on a CPU without native bfloat16 (neither AMX nor AVX512-BF16)."""
    from genseek import models

    if device_type == "cpu" and not models.cpu_bf16():
        raise InvalidParameter(
            "encoder backend 'torch-bf16' needs a CPU with AMX or AVX512-BF16, and this one has "
            "neither (with AVX2 only, bfloat16 was 5.5x slower than float32): use torch, onnx "
            "or onnx-int8")


def onnx_device(backend: str, device: str | None, dtype: str | None) -> str:
    """The device an ONNX backend's torch model loads on for the export: ``cpu``. ONNX Runtime
    runs here on the CPU only, so another ``device`` or a dtype other than float32 is refused."""
    if device not in (None, "", "auto", "cpu"):
        raise InvalidParameter(f"encoder backend {backend!r} runs on the CPU (ONNX Runtime's CPU "
                               f"provider), not on {device!r}: use device=cpu or backend=torch")
    if dtype not in (None, "", "auto", "float32", "fp32"):
        raise InvalidParameter(f"encoder backend {backend!r} exports the float32 model: leave "
                               f"dtype out (not {dtype!r})")
    return "cpu"


@contextmanager
def bf16_autocast(device_type: str) -> Iterator[None]:
    """``torch.autocast(device_type, bfloat16)`` for the ``with`` block."""
    import torch

    with torch.autocast(device_type, dtype=torch.bfloat16):
        yield


# -- the cache ---------------------------------------------------------------------------------


def onnx_cache_dir() -> Path:
    """Where the exports are kept: ``cache_root()/onnx``."""
    from genseek.cache import cache_root

    return cache_root() / "onnx"


def folder_identity(folder: str | os.PathLike[str]) -> list[list[Any]]:
    """``[relative path, size, mtime_ns]`` of every file below a model folder (hidden names
    skipped), sorted: a changed, added or removed file changes it."""
    root = Path(folder)
    out: list[list[Any]] = []
    for file in sorted(root.rglob("*")):
        rel = file.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not file.is_file():
            continue
        st = file.stat()
        out.append([rel.as_posix(), st.st_size, st.st_mtime_ns])
    return out


def weights_identity(module: Any) -> str:
    """SHA-256 of a torch module's state (names, dtypes, shapes and bytes of its tensors): the
    identity of a model that was not loaded from a folder."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return digest.hexdigest()


def model_identity(source: str | None, module: Callable[[], Any]) -> Any:
    """The identity of a model: :func:`folder_identity` of ``source`` when it is a folder, else
    :func:`weights_identity` of ``module()`` (called only then)."""
    if source is not None and Path(source).is_dir():
        return {"folder": str(Path(source).resolve()), "files": folder_identity(source)}
    return {"weights": weights_identity(module())}


def cache_facts(kind: str, variant: str, identity: Any, max_length: int | None,
                inputs: Sequence[str]) -> dict[str, Any]:
    """Everything an export depends on (hashed into its folder name, kept in its marker)."""
    import onnx
    import onnxruntime
    import torch

    facts: dict[str, Any] = {"format": _FORMAT, "kind": kind, "variant": variant,
                             "model": identity, "max_length": max_length,
                             "inputs": list(inputs), "opset": OPSET, "torch": torch.__version__,
                             "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    if variant == "int8":
        facts["quant"] = QUANT
    return facts


def cache_path(facts: Mapping[str, Any]) -> Path:
    """The folder of the export described by ``facts``."""
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    return onnx_cache_dir() / f"{facts['kind']}-{facts['variant']}-{digest}"


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def folder_ready(folder: Path, facts: Mapping[str, Any]) -> bool:
    """Whether ``folder`` is a complete export of ``facts``: its marker holds the same facts and
    every file it lists has the recorded size and SHA-256."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("facts") != json.loads(json.dumps(facts)):
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or MODEL_FILE not in files:
        return False
    for name, meta in files.items():
        path = folder / name
        try:
            if path.stat().st_size != meta["size"] or _sha256(path) != meta["sha256"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def _build(final: Path, facts: Mapping[str, Any], make: Callable[[Path], None]) -> None:
    """Make ``final``: ``make(tmp / MODEL_FILE)`` in a temporary folder beside it, the files
    synced, the marker written last, then renamed into place (an unusable ``final`` is moved
    aside first)."""
    from genseek.atomic import fsync_dir
    from genseek.models import _remove, _sweep

    _sweep(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        make(tmp / MODEL_FILE)
        files = {}
        for file in sorted(f for f in tmp.iterdir() if f.is_file()):
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
            files[file.name] = {"size": file.stat().st_size, "sha256": _sha256(file)}
        marker = {"facts": facts, "files": files, "built": time.time()}
        with open(tmp / MARKER, "w", encoding="utf-8") as fh:
            json.dump(marker, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        if final.exists():
            _remove(final)
        os.rename(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_export(facts: Mapping[str, Any], make: Callable[[Path], None],
                  rebuild: bool = False) -> Path:
    """The model file of the export ``facts`` describes, made by ``make(path)`` when the cache
    has no complete copy (or ``rebuild``). One build at a time per process and per machine (a
    lock file); a process that waited for another one's build uses it."""
    from genseek.models import _file_lock, loading

    final = cache_path(facts)
    if not rebuild and folder_ready(final, facts):
        return final / MODEL_FILE
    with loading(), _EXPORT_LOCK:
        final.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(final.parent / f".{final.name}.lock"):
            if rebuild or not folder_ready(final, facts):
                label = f"{facts['kind']}/{facts['variant']}"
                log.info("exporting %s to ONNX in %s", label, final)
                started = time.perf_counter()
                _build(final, facts, make)
                EXPORTS[label] += 1
                log.info("exported %s in %.1fs", label, time.perf_counter() - started)
    return final / MODEL_FILE


# -- export and quantisation -------------------------------------------------------------------


def _wrap(module: Any, inputs: Sequence[str], output: str | None) -> Any:
    """``module`` as a ``torch.nn.Module`` taking ``inputs`` positionally and returning one
    tensor: ``module(**inputs).<output>`` (or the result itself when ``output`` is None)."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *args: Any) -> Any:
            out = self.inner(**dict(zip(inputs, args, strict=True)))
            return out if output is None else getattr(out, output)

    return Wrapped().eval()


def export_module(module: Any, example: Mapping[str, Any],
                  dynamic: Mapping[str, Sequence[str | None]], output: str | None,
                  path: Path) -> None:
    """Write ``module`` as ONNX to ``path`` (one file, weights inside, opset :data:`OPSET`).

    ``example``: input name -> an int64 or float32 tensor to trace with (each dynamic axis at
    least 2 long); ``dynamic``: input name -> the names of its axes, None for a fixed one (e.g.
    ``("batch", "seq")``: shape ``[batch, seq]`` at run time; ``("tokens", None)``: any number
    of rows of the traced width). The graph's one output is ``module(**inputs).<output>``,
    named ``output`` (or ``"output"``).
    """
    import torch

    names = list(example)
    dims = {axis: torch.export.Dim(axis) for axes in dynamic.values() for axis in axes
            if axis is not None}
    shapes = {name: {i: dims[a] for i, a in enumerate(dynamic[name]) if a is not None}
              for name in names}
    wrapped = _wrap(module, names, output)
    args = tuple(example[n] for n in names)
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo",
                                            "onnxscript", "torch.fx")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, args, str(path), input_names=names,
                              output_names=[output or "output"],
                              dynamic_shapes={"args": tuple(shapes[n] for n in names)},
                              opset_version=OPSET, external_data=False, dynamo=True,
                              verbose=False)
    except Exception as exc:  # noqa: BLE001 - any exporter failure is one clear line
        raise ModelUnavailable(f"cannot export the model to ONNX: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:300]}") from None
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)


def quantize_int8(source: Path, path: Path) -> None:
    """Write ``source`` (a float32 ONNX model) with int8 weights to ``path`` (:data:`QUANT`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger()
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)  # "consider pre-processing" on the root logger
        quantize_dynamic(str(source), str(path), weight_type=QuantType.QInt8,
                         per_channel=bool(QUANT["per_channel"]),
                         reduce_range=bool(QUANT["reduce_range"]),
                         op_types_to_quantize=list(QUANT["op_types"]),
                         extra_options={"MatMulConstBOnly": QUANT["MatMulConstBOnly"]})
    finally:
        quiet.setLevel(level)


# -- running -----------------------------------------------------------------------------------


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxModel:
    """One ONNX Runtime session over an export: ``run(feed)`` returns its one output.

    Inputs are given by name (:attr:`inputs`) as arrays; integer inputs are passed as int64.
    """

    def __init__(self, path: Path, session: Any, variant: str) -> None:
        self.path = path
        self.variant = variant
        self._session = session
        self.inputs = [i.name for i in session.get_inputs()]
        self.output = session.get_outputs()[0].name

    def run(self, feed: Mapping[str, Any]) -> np.ndarray:
        """The output for ``feed`` (name -> array or CPU tensor), as a float32 array."""
        arrays = {}
        for name in self.inputs:
            value = feed[name]
            arr = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
            arrays[name] = arr.astype(np.int64, copy=False) if arr.dtype.kind in "iub" else (
                arr.astype(np.float32, copy=False))
        return np.asarray(self._session.run([self.output], arrays)[0], dtype=np.float32)


def onnx_model(kind: str, backend: str, identity: Any, max_length: int | None,
               module: Callable[[], Any], example: Callable[[], Mapping[str, Any]],
               dynamic: Mapping[str, Sequence[str | None]], output: str | None) -> OnnxModel:
    """The ONNX Runtime model of ``kind`` for ``backend`` (``onnx``: float32, ``onnx-int8``),
    exported (and quantised) at first use, from the cache afterwards.

    ``module()`` is the loaded torch module (called only to export), ``example()`` its tracing
    inputs by name, ``dynamic`` the axis names per input and ``output`` the attribute of its
    result to keep (see :func:`export_module`). One session per export and thread count per
    process, shared (ONNX Runtime sessions run concurrently). Intra-op threads:
    ``torch.get_num_threads()``.
    """
    import torch

    from genseek.models import MODELS

    try:
        import onnx  # noqa: F401 - the exporter writes through it
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ModelUnavailable(f"encoder backend {backend!r} needs onnxruntime and onnx "
                               f"({exc.name} is missing): pip install 'genseek[onnx]'") from None
    inputs = list(dynamic)
    fp32 = cache_facts(kind, "float32", identity, max_length, inputs)

    def make_fp32(path: Path) -> None:
        export_module(module(), example(), dynamic, output, path)

    def ensure(rebuild: bool = False) -> Path:
        if backend == "onnx":
            return ensure_export(fp32, make_fp32, rebuild)
        int8 = cache_facts(kind, "int8", identity, max_length, inputs)
        return ensure_export(int8, lambda path: quantize_int8(
            ensure_export(fp32, make_fp32, rebuild), path), rebuild)

    threads = torch.get_num_threads()
    variant = "float32" if backend == "onnx" else "int8"
    path = ensure()

    def load() -> OnnxModel:
        try:
            return OnnxModel(path, _session(path, threads), variant)
        except Exception as exc:  # noqa: BLE001 - a file ONNX Runtime cannot read: export anew
            log.warning("cannot open the cached ONNX model %s (%s): exporting it again", path,
                        str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            fresh = ensure(rebuild=True)
            return OnnxModel(fresh, _session(fresh, threads), variant)

    return MODELS.get(("onnx-session", str(path), threads), load)
