"""Encoder backends (``genseek.onnx_backend``): ONNX Runtime float32 equals torch, int8 is close
but not identical, exports are cached and a broken cache is rebuilt, bad backends are refused.

The ONNX tests export into a temporary ``GENSEEK_CACHE`` (once per module, then reused) and are
marked slow; the argument checks load no model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genseek import models
from genseek import onnx_backend as ob
from genseek.errors import GenseekError, InvalidParameter

HAVE_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))
needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime/onnx not installed")

TEXTS = [
    "Alterations of the architecture of cerebral white matter in the developing human brain "
    "can affect cortical development and result in functional disabilities.",
    "Vitamin D deficiency is associated with an increased risk of tuberculosis.",
    "Statins reduce the incidence of cardiovascular events in patients with high cholesterol.",
    "The p53 tumour suppressor protein induces apoptosis in response to DNA damage, and its "
    "loss is one of the most common events in human cancers.",
    "Antibiotic resistance genes spread between bacteria by horizontal gene transfer.",
    "a",
    "",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh ``GENSEEK_CACHE`` for this module's exports."""
    root = tmp_path_factory.mktemp("onnx-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENSEEK_CACHE", str(root))
        yield root


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


# -- argument checks (no model loads) ----------------------------------------------------------


@pytest.mark.parametrize("make", ["dense", "token", "sparse", "shared", "shared_sparse"])
def test_unknown_backend_is_one_line_error(make):
    from genseek.encoders import (
        SparseEncoder,
        TextEncoder,
        TokenEncoder,
        shared_encoder,
        shared_sparse_encoder,
    )

    build = {"dense": lambda: TextEncoder(backend="tensorrt"),
             "token": lambda: TokenEncoder(backend="tensorrt"),
             "sparse": lambda: SparseEncoder(backend="tensorrt"),
             "shared": lambda: shared_encoder("all-MiniLM-L6-v2", None, "tensorrt"),
             "shared_sparse": lambda: shared_sparse_encoder(backend="tensorrt")}[make]
    with pytest.raises(InvalidParameter) as err:
        build()
    text = _one_line(err.value)
    assert "'tensorrt'" in text and "onnx-int8" in text and "torch-bf16" in text


def test_backend_names_and_ids():
    assert ob.check_backend(None) == ob.check_backend("") == "torch"
    assert ob.check_backend("ONNX") == "onnx"
    assert [ob.backend_id(b) for b in ob.BACKENDS] == ["", "onnx", "onnx-int8", "torch-bf16"]


@pytest.mark.parametrize("flags", [frozenset({"avx", "avx2", "fma"}), frozenset()])
def test_bf16_refused_without_amx_or_avx512_bf16(monkeypatch, flags):
    from genseek.encoders import SparseEncoder, TextEncoder, TokenEncoder

    monkeypatch.setattr(models, "cpu_flags", lambda: flags)
    for make in (TextEncoder, TokenEncoder, SparseEncoder):
        with pytest.raises(GenseekError) as err:
            make(device="cpu", backend="torch-bf16")
        text = _one_line(err.value)
        assert "torch-bf16" in text and "AVX512-BF16" in text and "AMX" in text


@pytest.mark.parametrize("flags", [frozenset({"avx2", "avx512_bf16"}),
                                   frozenset({"avx2", "amx_bf16", "amx_tile"})])
def test_bf16_allowed_with_amx_or_avx512_bf16(monkeypatch, flags):
    from genseek.encoders import _backend_placement

    monkeypatch.setattr(models, "cpu_flags", lambda: flags)
    name, where = _backend_placement("torch-bf16", "cpu", None)
    assert name == "torch-bf16" and where.device == "cpu" and where.dtype == "float32"


def test_onnx_backends_run_on_the_cpu_in_float32():
    from genseek.encoders import _backend_placement

    for backend in ob.ONNX_BACKENDS:
        assert _backend_placement(backend, None, None)[1] == models.Placement("cpu", "float32")
        with pytest.raises(InvalidParameter) as err:
            _backend_placement(backend, "cuda", None)
        assert "CPU" in _one_line(err.value)
        with pytest.raises(InvalidParameter):
            _backend_placement(backend, "cpu", "bfloat16")


def test_cache_key_covers_what_the_export_depends_on(cache):
    base = dict(kind="hidden-states", variant="float32", identity={"weights": "abc"},
                max_length=256, inputs=["attention_mask", "input_ids"])
    path = ob.cache_path(ob.cache_facts(**base))
    assert path.parent == Path(os.environ["GENSEEK_CACHE"]) / "onnx"
    for change in ({"max_length": 128}, {"kind": "splade-body"}, {"variant": "int8"},
                   {"identity": {"weights": "abd"}}):
        assert ob.cache_path(ob.cache_facts(**{**base, **change})) != path
    assert ob.cache_path(ob.cache_facts(**base)) == path


# -- ONNX Runtime against torch (exports: slow) ------------------------------------------------


def _sparse_matrix(pairs, vocab: int) -> np.ndarray:
    out = np.zeros((len(pairs), vocab), dtype=np.float32)
    for row, (ids, weights) in enumerate(pairs):
        out[row, ids] = weights
    return out


@pytest.mark.slow
@needs_ort
def test_onnx_float32_equals_torch_dense(cache):
    from genseek.encoders import TextEncoder

    ref = TextEncoder(device="cpu").encode(TEXTS)
    enc = TextEncoder(backend="onnx")
    assert enc.backend_id == "onnx" and TextEncoder(device="cpu").backend_id == ""
    got = enc.encode(TEXTS, batch_size=3)  # batches of several lengths, one of one text
    assert got.shape == ref.shape == (len(TEXTS), 384) and got.dtype == np.float32
    assert np.abs(got - ref).max() <= 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
@needs_ort
def test_onnx_float32_equals_torch_token(cache):
    from genseek.encoders import TokenEncoder

    ref = TokenEncoder(max_length=64, proj_dim=32, device="cpu").encode(TEXTS)
    enc = TokenEncoder(max_length=64, proj_dim=32, backend="onnx")
    got = enc.encode(TEXTS, batch_size=4)
    assert enc.backend_id == "onnx"
    assert [g.shape for g in got] == [r.shape for r in ref]
    assert max(float(np.abs(g - r).max()) for g, r in zip(got, ref, strict=True)) <= 1e-4


@pytest.mark.slow
@needs_ort
def test_onnx_float32_equals_torch_sparse(cache):
    from genseek.encoders import SparseEncoder

    ref_enc = SparseEncoder(max_length=64, device="cpu")
    ref = ref_enc.encode_ids(TEXTS)
    enc = SparseEncoder(max_length=64, backend="onnx")
    got = enc.encode_ids(TEXTS, batch_size=3)
    assert enc.backend_id == "onnx" and ref_enc.backend_id == ""
    vocab = len(ref_enc.vocab)
    assert np.abs(_sparse_matrix(got, vocab) - _sparse_matrix(ref, vocab)).max() <= 1e-4
    windows = SparseEncoder(max_length=16, windows=3, backend="onnx").encode_ids(TEXTS[:4])
    ref_windows = SparseEncoder(max_length=16, windows=3).encode_ids(TEXTS[:4])
    assert np.abs(_sparse_matrix(windows, vocab) - _sparse_matrix(ref_windows, vocab)).max() <= 1e-4


@pytest.mark.slow
@needs_ort
def test_int8_is_close_to_float32_but_not_identical(cache):
    from genseek.encoders import SparseEncoder, TextEncoder

    texts = TEXTS[:5]
    fp32 = TextEncoder(backend="onnx").encode(texts)
    int8_enc = TextEncoder(backend="onnx-int8")
    int8 = int8_enc.encode(texts)
    assert int8_enc.backend_id == "onnx-int8"
    cos = (fp32 * int8).sum(axis=1)
    assert cos.min() >= 0.9, cos
    assert not np.array_equal(fp32, int8)

    s32 = SparseEncoder(backend="onnx")
    vocab = len(s32.vocab)
    a = _sparse_matrix(s32.encode_ids(texts), vocab)
    b = _sparse_matrix(SparseEncoder(backend="onnx-int8").encode_ids(texts), vocab)
    scos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert scos.min() >= 0.9, scos
    assert not np.array_equal(a, b)


def _folders(cache: Path, kind: str, variant: str, max_length: int = 256) -> list[Path]:
    """The export folders of ``kind``/``variant`` for ``max_length`` tokens."""
    out = []
    for folder in sorted((cache / "onnx").glob(f"{kind}-{variant}-*")):
        try:
            facts = json.loads((folder / ob.MARKER).read_text())["facts"]
        except (OSError, ValueError, KeyError):
            facts = {}
        if folder.is_dir() and facts.get("max_length") in (max_length, None):
            out.append(folder)
    return out


@pytest.mark.slow
@needs_ort
def test_int8_first_on_an_empty_cache_exports_its_float32_source(tmp_path, monkeypatch):
    from genseek.encoders import TokenEncoder

    monkeypatch.setenv("GENSEEK_CACHE", str(tmp_path))
    before = dict(ob.EXPORTS)
    enc = TokenEncoder(max_length=32, backend="onnx-int8")
    assert len(enc.encode(TEXTS[:2])) == 2
    made = {k: v - before.get(k, 0) for k, v in ob.EXPORTS.items() if v != before.get(k, 0)}
    assert made == {"hidden-states/float32": 1, "hidden-states/int8": 1}
    assert len(_folders(tmp_path, "hidden-states", "float32", 32)) == 1
    assert len(_folders(tmp_path, "hidden-states", "int8", 32)) == 1


@pytest.mark.slow
@needs_ort
def test_second_construction_reuses_the_export(cache):
    from genseek.encoders import TextEncoder

    first = TextEncoder(backend="onnx")
    (folder,) = _folders(cache, "hidden-states", "float32")
    assert first._onnx is not None and first._onnx.path == folder / ob.MODEL_FILE
    model = folder / ob.MODEL_FILE
    stamp, exports = model.stat().st_mtime_ns, dict(ob.EXPORTS)
    marker = json.loads((folder / ob.MARKER).read_text())
    assert marker["facts"]["kind"] == "hidden-states" and marker["facts"]["opset"] == ob.OPSET
    assert marker["files"][ob.MODEL_FILE]["size"] == model.stat().st_size
    second = TextEncoder(backend="onnx")
    assert dict(ob.EXPORTS) == exports and model.stat().st_mtime_ns == stamp
    assert np.array_equal(first.encode(TEXTS[:3]), second.encode(TEXTS[:3]))
    # another process finds it too: no export there either
    code = ("import json\nfrom genseek import onnx_backend as ob\n"
            "from genseek.encoders import TextEncoder\n"
            "v = TextEncoder(backend='onnx').encode(['Vitamin D and tuberculosis'])\n"
            "print(json.dumps({'exports': dict(ob.EXPORTS), 'dim': int(v.shape[1])}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "GENSEEK_CACHE": str(cache)})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"exports": {}, "dim": 384}
    assert model.stat().st_mtime_ns == stamp


@pytest.mark.slow
@needs_ort
@pytest.mark.parametrize("damage", ["flipped", "truncated", "no-marker"])
def test_a_broken_cached_model_is_exported_again(cache, damage):
    from genseek.encoders import TextEncoder

    ref = TextEncoder(backend="onnx").encode(TEXTS[:3])
    (folder,) = _folders(cache, "hidden-states", "float32")
    model = folder / ob.MODEL_FILE
    data = bytearray(model.read_bytes())
    if damage == "flipped":  # same size, other bytes
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(255 - x for x in data[middle:middle + 64])
        model.write_bytes(bytes(data))
    elif damage == "truncated":  # a partial copy
        model.write_bytes(bytes(data[:len(data) // 3]))
    else:
        (folder / ob.MARKER).unlink()
    damaged = model.read_bytes()
    before = ob.EXPORTS["hidden-states/float32"]
    got = TextEncoder(backend="onnx").encode(TEXTS[:3])
    assert ob.EXPORTS["hidden-states/float32"] == before + 1
    assert ob.folder_ready(folder, json.loads((folder / ob.MARKER).read_text())["facts"])
    assert model.read_bytes() != damaged or damage == "no-marker"
    assert np.abs(got - ref).max() <= 1e-6
    assert _folders(cache, "hidden-states", "float32") == [folder]  # no stray folders


@pytest.mark.slow
@needs_ort
def test_a_model_onnx_runtime_cannot_open_is_exported_again(cache):
    """A file whose marker matches (sizes and digests rewritten) but that is not ONNX."""
    import hashlib

    import torch

    from genseek.encoders import TextEncoder
    from genseek.models import MODELS

    ref = TextEncoder(backend="onnx").encode(TEXTS[:2])
    (folder,) = _folders(cache, "hidden-states", "float32")
    model = folder / ob.MODEL_FILE
    model.write_bytes(b"not an onnx model" * 100)
    marker = json.loads((folder / ob.MARKER).read_text())
    marker["files"][ob.MODEL_FILE] = {"size": model.stat().st_size,
                                      "sha256": hashlib.sha256(model.read_bytes()).hexdigest()}
    (folder / ob.MARKER).write_text(json.dumps(marker))
    MODELS.drop(("onnx-session", str(model), torch.get_num_threads()))  # not from memory
    before = ob.EXPORTS["hidden-states/float32"]
    got = TextEncoder(backend="onnx").encode(TEXTS[:2])
    assert ob.EXPORTS["hidden-states/float32"] == before + 1
    assert np.abs(got - ref).max() <= 1e-6


@pytest.mark.slow
@needs_ort
def test_shared_encoders_are_keyed_by_backend(cache):
    from genseek.encoders import shared_encoder, shared_sparse_encoder

    torch_enc = shared_encoder("all-MiniLM-L6-v2", None)
    assert shared_encoder("all-MiniLM-L6-v2", None, "torch") is torch_enc
    onnx_enc = shared_encoder("all-MiniLM-L6-v2", None, "onnx")
    assert onnx_enc is not torch_enc and onnx_enc.backend == "onnx"
    assert shared_encoder("all-MiniLM-L6-v2", backend="onnx") is onnx_enc
    sparse = shared_sparse_encoder("splade-tiny", 256, None, 1, "onnx")
    assert sparse is shared_sparse_encoder(backend="onnx")
    assert sparse is not shared_sparse_encoder() and sparse.backend_id == "onnx"


@pytest.mark.slow
@pytest.mark.skipif(not models.cpu_bf16(), reason="this CPU has neither AMX nor AVX512-BF16")
def test_bf16_close_to_float32_where_supported():
    from genseek.encoders import TextEncoder

    ref = TextEncoder(device="cpu").encode(TEXTS)
    enc = TextEncoder(device="cpu", backend="torch-bf16")
    got = enc.encode(TEXTS)
    assert enc.backend_id == "torch-bf16" and got.dtype == np.float32
    assert (ref * got).sum(axis=1).min() >= 0.99
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
