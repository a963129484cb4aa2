"""Optional backend: Microsoft SPTAG's SPANN through Debian's ``python3-sptag``.

The baseline of the side-by-side comparison in ``benchmarks/vector_indexes.py``: not a
collection index type and not part of the installed package (it edits ``sys.path``). Install with ``apt-get install -y python3-sptag`` (Debian
bookworm ships SPTAG git 2023-03-01 built for the system Python 3.11); the module is
found by adding ``/usr/lib/python3/dist-packages`` to ``sys.path`` here only.

:func:`available` returns ``(True, "")`` or ``(False, reason)``; :class:`SptagSpann`
builds an on-disk SPANN index over float32 vectors ``[n, d]`` (squared L2) and
searches it one query at a time (the binding has no batch call).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from genseek.errors import GenseekError
from genseek.protocols import dir_bytes, file_bytes

DIST_PACKAGES = "/usr/lib/python3/dist-packages"


def _import() -> Any:
    if DIST_PACKAGES not in sys.path:
        sys.path.append(DIST_PACKAGES)
    import SPTAG  # noqa: N813 - the binding's own name

    return SPTAG


def available() -> tuple[bool, str]:
    """Whether SPTAG imports here, and the reason when it does not."""
    try:
        _import()
    except ImportError as exc:
        return False, (f"SPTAG is not importable ({exc}); install Debian's python3-sptag "
                       f"(apt-get install -y python3-sptag) for Python 3.11")
    return True, ""


@contextlib.contextmanager
def _quiet_fd(fd: int):
    """SPTAG logs every step to stdout/stderr from C++: silence a file descriptor."""
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


class SptagSpann:
    """SPTAG's SPANN (BKT head index in memory, posting lists on disk).

    ``head_ratio``: fraction of vectors chosen as heads; ``replicas``: postings per
    vector; ``posting_pages``: 4 KiB pages per posting; ``threads``: build threads.
    """

    def __init__(self, folder: Path, dim: int, head_ratio: float = 0.1, replicas: int = 8,
                 posting_pages: int = 12, internal_results: int = 64, threads: int = 2):
        self.folder = Path(folder)
        self.dim = dim
        self.sptag = _import()
        self.index = self.sptag.AnnIndex("SPANN", "Float", dim)
        if self.folder.exists():
            shutil.rmtree(self.folder)
        settings = [
            ("IndexAlgoType", "BKT", "Base"), ("IndexDirectory", str(self.folder), "Base"),
            ("DistCalcMethod", "L2", "Base"),
            ("isExecute", "true", "SelectHead"), ("NumberOfThreads", threads, "SelectHead"),
            ("Ratio", head_ratio, "SelectHead"),
            ("isExecute", "true", "BuildHead"), ("NumberOfThreads", threads, "BuildHead"),
            ("isExecute", "true", "BuildSSDIndex"), ("BuildSsdIndex", "true", "BuildSSDIndex"),
            ("NumberOfThreads", threads, "BuildSSDIndex"),
            ("ReplicaCount", replicas, "BuildSSDIndex"),
            ("PostingPageLimit", posting_pages, "BuildSSDIndex"),
            ("SearchPostingPageLimit", posting_pages, "BuildSSDIndex"),
            ("InternalResultNum", internal_results, "BuildSSDIndex"),
        ]
        for name, value, section in settings:
            self.index.SetBuildParam(name, str(value), section)

    def build(self, x: np.ndarray, quiet: bool = True) -> None:
        """Build from float32 ``x [n, dim]`` (ids are row numbers)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim or not np.isfinite(x).all():
            raise GenseekError(f"sptag: vectors must be finite, shape [n, {self.dim}]")
        ctx = _quiet_fd(1) if quiet else contextlib.nullcontext()
        ctx2 = _quiet_fd(2) if quiet else contextlib.nullcontext()
        with ctx, ctx2:
            ok = self.index.Build(x.tobytes(), len(x), False)
        if not ok:
            raise GenseekError(f"sptag: SPANN build failed in {self.folder}")

    def search(self, q: np.ndarray, k: int, internal_results: int = 32) -> np.ndarray:
        """Ids ``[nq, k]`` (-1 padded) of the nearest rows for each query ``q [nq, dim]``."""
        self.index.SetSearchParam("SearchInternalResultNum", str(internal_results),
                                  "BuildSSDIndex")
        q = np.ascontiguousarray(q, dtype=np.float32)
        out = np.full((len(q), k), -1, np.int64)
        for i in range(len(q)):
            ids = self.index.Search(q[i].tobytes(), k)[0]
            out[i, :len(ids)] = ids[:k]
        return out

    def memory_bytes(self) -> int:
        """Bytes SPTAG keeps in RAM: the head index (graph, tree, head vectors) and head ids."""
        head = self.folder / "HeadIndex"
        return dir_bytes(head) + file_bytes([self.folder / "SPTAGHeadVectorIDs.bin"])

    def disk_bytes(self) -> int:
        return dir_bytes(self.folder)
