"""The bytes of a SPANN engine folder: file layout, vector codes, posting regions, state.

Engine folder layout::

    postings.bin   4 KiB file header, then page-aligned posting regions; a region is a
                   16-byte header (magic, head id, capacity, record size) and records
                   (slot u32, version u8, code) — code is fp16, int8 or PQ bytes
    vectors.f32    float32 rows by slot (append only), for exact reranking and splits
    heads-N.faiss  the head index of generation N (faiss's own format)
    state.npz      directory (offset, capacity, count, CRC32 per posting), version map,
                   slot labels, codec tables and a JSON header; written atomically

Regions referenced by a saved state are never overwritten (appends go past the saved
count; splits and relocations go to the end of the file), so ``state.npz`` is always
consistent with the files it names. On load every posting's header and CRC32 and
the vector file's CRC32 are checked (:meth:`DataFiles.check`): a corrupted or truncated file
is a clear error.
"""

from __future__ import annotations

import io
import json
import os
import zlib
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from genseek.atomic import atomic_write
from genseek.errors import GenseekError

BLOCK = 4096
FILE_MAGIC = b"SPANNPST"
REGION_MAGIC = b"SPNP"
REGION_HEADER = 16
FORMAT_VERSION = 1
CODECS = ("fp16", "int8", "pq")


def spann_error(msg: str) -> GenseekError:
    return GenseekError(f"spann: {msg}")


def check_vectors(x: Any, dim: int | None, what: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 ``[n, dim]`` array, or a clear error."""
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise spann_error(f"{what} must be a 2-d array [n, dim], got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise spann_error(f"{what} have dimension {arr.shape[1]}, the index holds {dim}-d "
                          "vectors")
    if not np.issubdtype(arr.dtype, np.number):
        raise spann_error(f"{what} must be numeric, not {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int(np.nonzero(~np.isfinite(arr).all(axis=1))[0][0])
        raise spann_error(f"{what} row {bad} holds NaN or infinite values")
    return arr


def grow(arr: np.ndarray, n: int, fill: Any = 0) -> np.ndarray:
    """``arr`` with room for ``n`` entries (itself when it has; new ones are ``fill``)."""
    if n <= len(arr):
        return arr
    out = np.full(max(n, 2 * len(arr), 16), fill, dtype=arr.dtype)
    out[:len(arr)] = arr
    return out


class Codec:
    """Vector codes stored in postings: ``encode [n, d] -> [n, size] uint8``, ``decode`` back."""

    def __init__(self, kind: str, dim: int, pq_m: int):
        if kind not in CODECS:
            raise spann_error(f"codec must be one of {', '.join(CODECS)}, not {kind!r}")
        self.kind, self.dim = kind, dim
        self.lo = np.zeros(dim, np.float32)
        self.scale = np.ones(dim, np.float32)
        self.pq: faiss.ProductQuantizer | None = None
        if kind == "pq":
            if dim % pq_m:
                raise spann_error(f"pq_m={pq_m} must divide the dimension {dim}")
            self.pq = faiss.ProductQuantizer(dim, pq_m, 8)
        self.size = {"fp16": 2 * dim, "int8": dim, "pq": pq_m}[kind]

    def record_dtype(self) -> np.dtype:
        """A posting record: ``(slot u32, version u8, code u8 [size])``."""
        return np.dtype([("slot", "<u4"), ("ver", "u1"), ("code", "u1", (self.size,))])

    def train(self, x: np.ndarray) -> None:
        if self.kind == "int8":
            self.lo = x.min(axis=0)
            self.scale = np.maximum((x.max(axis=0) - self.lo) / 255.0, 1e-12).astype(np.float32)
        elif self.kind == "pq":
            assert self.pq is not None
            sample = x if len(x) >= 256 else np.concatenate([x] * (256 // max(len(x), 1) + 1))
            self.pq.train(np.ascontiguousarray(sample[:65536]))

    def encode(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "fp16":
            return x.astype(np.float16).view(np.uint8).reshape(len(x), -1)
        if self.kind == "int8":
            q = np.rint((x - self.lo) / self.scale)
            return np.clip(q, 0, 255).astype(np.uint8)
        assert self.pq is not None
        return self.pq.compute_codes(np.ascontiguousarray(x)).reshape(len(x), -1)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        if self.kind == "fp16":
            return np.ascontiguousarray(codes).view(np.float16).astype(np.float32)
        if self.kind == "int8":
            return codes.astype(np.float32) * self.scale + self.lo
        assert self.pq is not None
        return self.pq.decode(np.ascontiguousarray(codes))

    def tables(self) -> dict[str, np.ndarray]:
        out = {"codec_lo": self.lo, "codec_scale": self.scale}
        if self.pq is not None:
            out["codec_pq"] = faiss.vector_to_array(self.pq.centroids).astype(np.float32)
        return out

    def load_tables(self, arrays: Any) -> None:
        self.lo = np.asarray(arrays["codec_lo"], np.float32)
        self.scale = np.asarray(arrays["codec_scale"], np.float32)
        if self.pq is not None:
            faiss.copy_array_to_vector(np.asarray(arrays["codec_pq"], np.float32),
                                       self.pq.centroids)


class DataFiles:
    """``postings.bin`` and ``vectors.f32`` of an engine folder: posting regions written at
    the end of the file (copy on write) or appended to in place, float32 rows by slot, and
    the checks made on load. ``end`` is the bytes of ``postings.bin`` in use, ``f32_crc`` the
    running CRC32 of ``vectors.f32``."""

    def __init__(self, folder: Path, dim: int, codec: Codec):
        self.folder, self.dim, self.code_size = Path(folder), dim, codec.size
        self.rec = codec.record_dtype()
        self.post_path, self.vec_path = self.folder / "postings.bin", self.folder / "vectors.f32"
        self.post_fd: int | None = None
        self.vec_fd: int | None = None
        self.end = BLOCK
        self.f32_crc = 0
        self._mm: np.memmap | None = None

    def _file_header(self) -> bytes:
        return FILE_MAGIC + np.array([FORMAT_VERSION, self.dim, self.code_size,
                                      self.rec.itemsize], "<u4").tobytes()

    def open(self, create: bool) -> None:
        """Open both files; ``create`` empties them and writes the file header."""
        self.folder.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        try:
            self.post_fd = os.open(self.post_path, flags, 0o644)
            self.vec_fd = os.open(self.vec_path, flags, 0o644)
        except FileNotFoundError as exc:
            raise spann_error(f"{exc.filename} is missing: the index folder is incomplete"
                              ) from None
        if create:
            os.ftruncate(self.post_fd, 0)
            os.ftruncate(self.vec_fd, 0)
            os.pwrite(self.post_fd, self._file_header().ljust(BLOCK, b"\0"), 0)
            self.end = BLOCK

    def close(self) -> None:
        for fd in (self.post_fd, self.vec_fd):
            if fd is not None:
                os.close(fd)
        self.post_fd = self.vec_fd = None
        self._mm = None

    def sync(self) -> None:
        assert self.post_fd is not None and self.vec_fd is not None
        os.fsync(self.post_fd)
        os.fsync(self.vec_fd)

    # -- vectors.f32 --------------------------------------------------------------------

    def append_vectors(self, x: np.ndarray, start: int) -> None:
        """Write rows ``x [n, dim]`` (float32) as slots ``start ..``."""
        assert self.vec_fd is not None
        data = x.tobytes()
        os.pwrite(self.vec_fd, data, start * self.dim * 4)
        self.f32_crc = zlib.crc32(data, self.f32_crc)
        self._mm = None

    def vectors(self, slots: np.ndarray, nslots: int) -> np.ndarray:
        """float32 rows ``[len(slots), dim]`` of a file that holds ``nslots`` rows."""
        if self._mm is None or len(self._mm) < nslots:
            self._mm = np.memmap(self.vec_path, dtype=np.float32, mode="r",
                                 shape=(nslots, self.dim))
        return np.asarray(self._mm[np.asarray(slots, np.int64)])

    # -- postings.bin -------------------------------------------------------------------

    def region_bytes(self, cap: int) -> int:
        """Bytes of a region of ``cap`` records (whole pages)."""
        return -(-(REGION_HEADER + cap * self.rec.itemsize) // BLOCK) * BLOCK

    def cap_for(self, n: int) -> int:
        """Capacity of a new region for ``n`` records: room to grow by half, page-filling."""
        want = max(n + n // 2, 8)
        return (self.region_bytes(want) - REGION_HEADER) // self.rec.itemsize

    def write_region(self, head: int, records: np.ndarray) -> tuple[int, int, int]:
        """Put ``records`` in a fresh region at the end of the file; ``(offset, capacity,
        CRC32)``."""
        cap = self.cap_for(len(records))
        size = self.region_bytes(cap)
        off = self.end
        header = REGION_MAGIC + np.array([head, cap, self.rec.itemsize], "<u4").tobytes()
        payload = records.tobytes()
        assert self.post_fd is not None
        os.pwrite(self.post_fd, (header + payload).ljust(size, b"\0"), off)
        self.end = off + size
        return off, cap, zlib.crc32(payload)

    def append_records(self, off: int, count: int, records: np.ndarray, crc: int) -> int:
        """Write ``records`` after the ``count`` of the region at ``off``; the new CRC32."""
        payload = records.tobytes()
        assert self.post_fd is not None
        os.pwrite(self.post_fd, payload, off + REGION_HEADER + count * self.rec.itemsize)
        return zlib.crc32(payload, crc)

    def raw_records(self, head: int, off: int, count: int) -> bytes:
        """The ``count`` records of head ``head``'s region at ``off``, as bytes, after a check
        of the region header."""
        assert self.post_fd is not None
        need = REGION_HEADER + count * self.rec.itemsize
        raw = os.pread(self.post_fd, need, off)
        if (len(raw) != need or raw[:4] != REGION_MAGIC
                or int.from_bytes(raw[4:8], "little") != head):
            raise spann_error(f"{self.post_path}: posting of head {head} at byte {off} "
                              "is truncated or corrupted")
        return raw[REGION_HEADER:]

    def read_region(self, head: int, off: int, count: int) -> np.ndarray:
        """The ``count`` records of a region (stale ones included), checked."""
        return np.frombuffer(self.raw_records(head, off, count), dtype=self.rec, count=count)

    # -- checks -------------------------------------------------------------------------

    def check(self, nslots: int, post_off: np.ndarray, post_cnt: np.ndarray,
              post_crc: np.ndarray, verify: bool) -> None:
        """Sizes and headers of both files; with ``verify``, every CRC32 as well."""
        assert self.post_fd is not None and self.vec_fd is not None
        size = os.fstat(self.post_fd).st_size
        if size < self.end:
            raise spann_error(f"{self.post_path} is truncated: {size} bytes, the index needs "
                              f"{self.end}")
        if os.pread(self.post_fd, 24, 0) != self._file_header():
            raise spann_error(f"{self.post_path}: bad file header (not a spann postings file "
                              "of this index)")
        need = nslots * self.dim * 4
        vsize = os.fstat(self.vec_fd).st_size
        if vsize < need:
            raise spann_error(f"{self.vec_path} is truncated: {vsize} bytes, the index needs "
                              f"{need}")
        if not verify:
            return
        crc = 0
        for s in range(0, need, 1 << 24):
            crc = zlib.crc32(os.pread(self.vec_fd, min(1 << 24, need - s), s), crc)
        if crc != self.f32_crc:
            raise spann_error(f"{self.vec_path} fails its CRC32 check: the file is corrupted")
        for h in np.nonzero(post_cnt)[0]:
            raw = self.raw_records(int(h), int(post_off[h]), int(post_cnt[h]))
            if zlib.crc32(raw) != int(post_crc[h]):
                raise spann_error(f"{self.post_path}: posting of head {h} at byte "
                                  f"{int(post_off[h])} fails its CRC32 check: the file is "
                                  "corrupted")


# -- state.npz ----------------------------------------------------------------------------------


def write_state(folder: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """``state.npz``: ``arrays`` and the JSON ``meta``, written atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    atomic_write(Path(folder) / "state.npz", lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def read_state(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)`` of ``state.npz``, or a clear error when it is missing or
    unreadable."""
    state = Path(folder) / "state.npz"
    try:
        with np.load(state, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except FileNotFoundError:
        raise spann_error(f"{state} is missing: no saved index there") from None
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise spann_error(f"{state} is unreadable or corrupted ({type(exc).__name__})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise spann_error(f"{state}: unsupported format {meta.get('format')!r}")
    return meta, arrays
