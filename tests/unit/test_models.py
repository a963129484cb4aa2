"""The process-wide model cache: one load per model, loads one at a time."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from genseek.models import ModelCache, cached_model


def test_concurrent_first_requests_load_once():
    cache = ModelCache()
    calls = []
    barrier = threading.Barrier(8)
    seen = []

    def load():
        calls.append(threading.get_ident())
        time.sleep(0.2)  # long enough for every thread to arrive while loading
        return object()

    def ask():
        barrier.wait()
        seen.append(cache.get("m", load))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    assert "m" in cache.status()["loading"]
    for t in threads:
        t.join()
    assert len(calls) == 1 and cache.status()["loads"]["m"] == 1
    assert len({id(v) for v in seen}) == 1
    assert "m" in cache.status()["loaded"] and not cache.status()["loading"]


def test_a_failed_load_is_not_cached_and_loads_do_not_overlap():
    cache = ModelCache()
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("disk hiccup")
        return "ok"

    with pytest.raises(RuntimeError):
        cache.get("x", flaky)
    assert cache.get("x", flaky) == "ok" and len(attempts) == 2

    running, overlap = [], []

    def slow(name):
        def load():
            running.append(name)
            overlap.append(len(running))
            time.sleep(0.05)
            running.remove(name)
            return name
        return load

    threads = [threading.Thread(target=cache.get, args=(f"k{i}", slow(f"k{i}"))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(overlap) == 1  # different models still load one at a time


def test_cached_model_decorator_keys_by_arguments():
    made = []

    @cached_model("toy")
    def load(name, size=1):
        made.append((name, size))
        return [name, size]

    assert load("a") is load("a")
    assert load("a", size=2) is not load("a")
    assert load.__wrapped__("a") is not load("a")  # a private copy
    assert made.count(("a", 1)) == 2


CHILD = textwrap.dedent('''
    import json, threading
    from genseek.encoders import SparseEncoder, shared_encoder, shared_sparse_encoder
    from genseek.models import MODELS

    out, errors = {}, []
    barrier = threading.Barrier(4)

    def run(name, fn):
        try:
            barrier.wait()
            out[name] = fn()
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")

    jobs = {
        "dense": lambda: shared_encoder("all-MiniLM-L6-v2", None).encode(["a cell"]).shape[1],
        "dense128": lambda: shared_encoder("all-MiniLM-L6-v2", 128).encode(["a cell"]).shape[1],
        "sparse": lambda: len(shared_sparse_encoder("splade-tiny").encode(["a cell"])[0]),
        "sparse64": lambda: len(SparseEncoder(max_length=64).encode(["a cell"])[0]),
    }
    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # a model loaded afterwards, in this process, is still a real one (not on "meta")
    out["after"] = len(SparseEncoder(max_length=32).encode(["a cell"])[0])
    out["loads"] = MODELS.status()["loads"]
    print(json.dumps({"out": out, "errors": errors}))
''')


@pytest.mark.slow
def test_simultaneous_first_loads_of_different_models_leave_the_process_healthy():
    """Before the load lock, two models loading at once left torch building every later model
    on the meta device ('Cannot copy out of meta tensor') for the rest of the process."""
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["errors"] == []
    out = result["out"]
    assert out["dense"] == out["dense128"] == 384
    assert out["sparse"] > 0 and out["sparse64"] > 0 and out["after"] > 0
    assert all(n == 1 for n in out["loads"].values()), out["loads"]


# -- the one device and dtype policy -----------------------------------------------------------


def test_placement_on_this_machine_and_its_overrides(monkeypatch):
    import torch

    from genseek.errors import GenseekError
    from genseek.models import placement

    monkeypatch.delenv("GENSEEK_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert placement() == placement("auto", "auto") == placement(None, None)
    assert (placement().device, placement().dtype) == ("cpu", "float32")
    assert placement(dtype="bf16").dtype == "bfloat16"  # asked for: given, even on a CPU
    monkeypatch.setenv("GENSEEK_DEVICE", "cpu:0")
    assert placement().device == "cpu:0"
    with pytest.raises(GenseekError, match="no CUDA GPU is available"):
        placement("cuda")
    with pytest.raises(GenseekError, match="bad dtype 'int3'"):
        placement(dtype="int3")
    with pytest.raises(GenseekError, match="bad device 'tpu-ish'"):
        placement("tpu-ish")


def test_placement_picks_the_gpu_and_bfloat16_where_there_is_one(monkeypatch):
    """Without a GPU here: the policy's choices with torch's GPU queries answered as on one."""
    import torch

    from genseek.models import autocast, placement

    monkeypatch.delenv("GENSEEK_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert (placement().device, placement().dtype) == ("cuda", "bfloat16")
    assert placement("cuda:1").device == "cuda:1"
    assert placement(dtype="float32").dtype == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert placement().dtype == "float16"  # an older GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert (placement().device, placement().dtype) == ("mps", "float32")
    # autocast: bfloat16 matmuls on the CPU when asked, float32 otherwise
    from genseek.models import Placement

    with autocast(Placement("cpu", "bfloat16")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(Placement("cpu", "float32")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast(Placement("cpu", "bfloat16"), enabled=False):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_cpu_bf16_reads_the_cpu_flags(monkeypatch):
    from genseek import models

    monkeypatch.setattr(models, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not models.cpu_bf16()
    monkeypatch.setattr(models, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert models.cpu_bf16()
    monkeypatch.setattr(models, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert models.cpu_bf16()
