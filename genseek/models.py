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
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_LOAD_LOCK = threading.RLock()


@contextmanager
def loading() -> Iterator[None]:
    """Hold the process-wide model-load lock (re-entrant) for the ``with`` block."""
    with _LOAD_LOCK:
        yield


class ModelCache:
    """Values by key, each made once by its loader under the load lock."""

    def __init__(self) -> None:
        self._values: dict[Hashable, Any] = {}
        self._lock = threading.Lock()  # guards the dicts below, never held while loading
        self._loading: dict[Hashable, float] = {}  # key -> start (monotonic)
        self._loads: dict[Hashable, int] = {}  # key -> completed loads (stays 1)
        self._seconds: dict[Hashable, float] = {}

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The value for ``key``, calling ``load()`` only if no thread has loaded it yet."""
        try:
            return self._values[key]
        except KeyError:
            pass
        with _LOAD_LOCK:
            if key in self._values:  # another thread loaded it while this one waited
                return self._values[key]
            start = time.monotonic()
            with self._lock:
                self._loading[key] = start
            try:
                value = load()
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self._values[key] = value
                self._loads[key] = self._loads.get(key, 0) + 1
                self._seconds[key] = time.monotonic() - start
            return value

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
                return fn(*args, **kwargs)

        @functools.wraps(fn)
        def cached(*args: P.args, **kwargs: P.kwargs) -> T:
            key = (kind, *args, *sorted(kwargs.items()))
            return MODELS.get(key, lambda: fn(*args, **kwargs))

        cached.__wrapped__ = uncached  # type: ignore[attr-defined]
        return cached

    return decorate
