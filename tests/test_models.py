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
