"""Fixed-dimensional encodings (FDEs) of multi-vector sets, after MUVERA.

Dhulipala, Hadian, Jayaram, Lee, Mirrokni: "MUVERA: Multi-Vector Retrieval via Fixed
Dimensional Encodings" (NeurIPS 2024). An FDE maps a set of vectors to one vector whose
inner product with another set's FDE approximates the Chamfer similarity
``CH(Q, P) = sum_{q in Q} max_{p in P} <q, p>``:

1. partition space with SimHash: ``k_sim`` random Gaussian hyperplanes give each vector a
   sign pattern; the pattern is read as a Gray code, so the bucket id ``k`` of a pattern and
   that of the patterns next to it differ by one bit (``B = 2**k_sim`` buckets);
2. project every vector with a random ±1/sqrt(d_proj) matrix (AMS sketch) to ``d_proj``
   dimensions (the identity when ``d_proj`` is None);
3. per bucket, a query sums its projected vectors; a document averages them, and an empty
   document bucket takes the projected vector of the document point whose sign pattern is
   nearest (Hamming distance) to the bucket's pattern;
4. repeat with ``r_reps`` independent draws and concatenate: ``D = r_reps * B * d_proj``;
5. optionally compress with a final Count-Sketch projection to ``d_final`` dimensions.

Pure functions over numpy arrays; a set of sets is passed flat as ``tokens [T, dim]`` plus
``offsets [n + 1]`` (set ``i`` is ``tokens[offsets[i]:offsets[i+1]]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genseek.errors import GenseekError


@dataclass(frozen=True)
class FdeParams:
    """Random draws of one FDE configuration (all derived from ``seed``).

    - ``planes``: ``[r_reps, dim, k_sim]`` Gaussian SimHash hyperplanes;
    - ``proj``: ``[r_reps, dim, d_proj]`` ±1/sqrt(d_proj) AMS projections, or None (identity);
    - ``final_index`` / ``final_sign``: ``[D]`` Count-Sketch buckets in ``[0, d_final)`` and
      signs, or None.
    """

    dim: int
    k_sim: int
    d_proj: int | None
    r_reps: int
    d_final: int | None
    seed: int
    planes: np.ndarray
    proj: np.ndarray | None
    final_index: np.ndarray | None
    final_sign: np.ndarray | None

    @property
    def buckets(self) -> int:
        return 1 << self.k_sim

    @property
    def block_dim(self) -> int:
        return self.d_proj if self.d_proj is not None else self.dim

    @property
    def raw_dim(self) -> int:
        """``r_reps * B * d_proj``: the FDE dimension before the final projection."""
        return self.r_reps * self.buckets * self.block_dim

    @property
    def out_dim(self) -> int:
        return self.d_final if self.d_final is not None else self.raw_dim


def make_params(dim: int, k_sim: int = 5, d_proj: int | None = 16, r_reps: int = 20,
                d_final: int | None = None, seed: int = 0) -> FdeParams:
    """Draw the hyperplanes and projections of an FDE configuration (deterministic in seed)."""
    for name, value, low in (("dim", dim, 1), ("k_sim", k_sim, 0), ("r_reps", r_reps, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise GenseekError(f"muvera: {name} must be an integer >= {low}, not {value!r}")
    if k_sim > 12:
        raise GenseekError(f"muvera: k_sim must be at most 12 (4096 buckets), not {k_sim}")
    for name, value in (("d_proj", d_proj), ("d_final", d_final)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise GenseekError(f"muvera: {name} must be a positive integer or none, not {value!r}")
    rng = np.random.default_rng(seed)
    planes = rng.standard_normal((r_reps, dim, k_sim)).astype(np.float32)
    proj = None
    if d_proj is not None:
        signs = rng.integers(0, 2, size=(r_reps, dim, d_proj)).astype(np.float32) * 2 - 1
        proj = (signs / np.sqrt(d_proj)).astype(np.float32)
    raw = r_reps * (1 << k_sim) * (d_proj if d_proj is not None else dim)
    final_index = final_sign = None
    if d_final is not None:
        final_index = rng.integers(0, d_final, size=raw).astype(np.int64)
        final_sign = (rng.integers(0, 2, size=raw).astype(np.float32) * 2 - 1)
    return FdeParams(dim, k_sim, d_proj, r_reps, d_final, seed, planes, proj,
                     final_index, final_sign)


def gray_bucket_ids(x: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """Bucket ids ``[n]`` (int64 in ``[0, 2**k_sim)``) of ``x [n, dim]`` under ``planes [dim, k]``.

    Bit ``j`` is ``<x, plane_j> > 0``; the bit string, first hyperplane most significant, is
    read as a Gray code and converted to binary: ``b_0 = g_0``, ``b_j = b_{j-1} xor g_j``.
    """
    bits = (x @ planes) > 0  # [n, k]
    ids = np.zeros(len(x), dtype=np.int64)
    for j in range(planes.shape[1]):
        ids = (ids << 1) | (bits[:, j].astype(np.int64) ^ (ids & 1))
    return ids


def sign_patterns(x: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """The raw sign bits of ``x [n, dim]`` as integers ``[n]`` (first hyperplane most significant)."""
    bits = (x @ planes) > 0
    codes = np.zeros(len(x), dtype=np.int64)
    for j in range(planes.shape[1]):
        codes = (codes << 1) | bits[:, j].astype(np.int64)
    return codes


def bucket_patterns(k_sim: int) -> np.ndarray:
    """``[2**k_sim]``: the sign pattern (Gray code ``k ^ (k >> 1)``) of each bucket id ``k``."""
    k = np.arange(1 << k_sim, dtype=np.int64)
    return k ^ (k >> 1)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of non-negative int64 values below ``2**16``."""
    x = x.astype(np.uint32)
    count = np.zeros(x.shape, dtype=np.int64)
    while np.any(x):
        count += (x & 1).astype(np.int64)
        x >>= 1
    return count


def _check_sets(tokens: np.ndarray, offsets: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.asarray(tokens)
    offsets = np.asarray(offsets, dtype=np.int64)
    if tokens.ndim != 2 or tokens.shape[1] != dim:
        raise GenseekError(f"muvera: token vectors must have shape [n, {dim}], "
                           f"not {list(tokens.shape)}")
    if (offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0
            or offsets[-1] != len(tokens) or np.any(np.diff(offsets) < 0)):
        raise GenseekError("muvera: offsets must rise from 0 to the number of token vectors")
    if not np.all(np.isfinite(tokens)):
        raise GenseekError("muvera: token vectors hold NaN or infinite values")
    return np.ascontiguousarray(tokens, dtype=np.float32), offsets


def encode(tokens: np.ndarray, offsets: np.ndarray, params: FdeParams, *,
           is_query: bool, fill_empty: bool = True) -> np.ndarray:
    """FDEs ``[n, params.out_dim]`` (float32) of ``n`` sets given flat.

    ``tokens``: ``[T, dim]``; ``offsets``: ``[n + 1]``. Queries sum per bucket; documents
    average per bucket and (``fill_empty``) fill empty buckets from the nearest point. An empty
    set encodes to zeros.
    """
    import torch

    tokens, offsets = _check_sets(tokens, offsets, params.dim)
    n = len(offsets) - 1
    buckets, block = params.buckets, params.block_dim
    lengths = np.diff(offsets)
    owner = torch.from_numpy(np.repeat(np.arange(n, dtype=np.int64), lengths))  # [T]
    out = np.zeros((n, params.r_reps, buckets, block), dtype=np.float32)
    patterns = bucket_patterns(params.k_sim)  # [B]
    # 1. SimHash partitions of all repetitions at once: bucket ids [T, r_reps]
    bits = (tokens @ params.planes.transpose(1, 0, 2).reshape(params.dim, -1)) > 0
    bits = bits.reshape(len(tokens), params.r_reps, params.k_sim)  # [T, r, k]
    bucket = np.zeros((len(tokens), params.r_reps), dtype=np.int64)
    for j in range(params.k_sim):  # Gray code -> binary, first hyperplane most significant
        bucket = (bucket << 1) | (bits[:, :, j].astype(np.int64) ^ (bucket & 1))
    # 2. random projections of all repetitions: [T, r_reps, block]
    if params.proj is not None:
        projected_all = (tokens @ params.proj.transpose(1, 0, 2).reshape(params.dim, -1)
                         ).reshape(len(tokens), params.r_reps, block)
    else:
        projected_all = np.broadcast_to(tokens[:, None, :], (len(tokens), params.r_reps, block))
    for rep in range(params.r_reps):
        projected = np.ascontiguousarray(projected_all[:, rep], dtype=np.float32)  # [T, block]
        # 3. sum per (set, bucket)
        key = owner * buckets + torch.from_numpy(bucket[:, rep])  # [T]
        sums = torch.zeros((n * buckets, block), dtype=torch.float64)
        sums.index_add_(0, key, torch.from_numpy(np.array(projected, dtype=np.float64)))
        counts = torch.bincount(key, minlength=n * buckets).double()  # [n * B]
        if not is_query:
            sums /= counts.clamp_min(1.0)[:, None]
        rep_out = sums.reshape(n, buckets, block).float().numpy()
        if not is_query and fill_empty and buckets > 1:
            _fill_empty(rep_out, counts.numpy().reshape(n, buckets), tokens, projected,
                        offsets, params.planes[rep], patterns)
        out[:, rep] = rep_out
    flat = out.reshape(n, params.raw_dim)
    if params.final_index is None:
        return flat
    # 5. final Count-Sketch projection: out[:, h(i)] += s(i) * x[:, i]
    final = np.zeros((n, params.out_dim), dtype=np.float32)
    for row in range(n):
        final[row] = np.bincount(params.final_index, weights=flat[row] * params.final_sign,
                                 minlength=params.out_dim)
    return final


def _fill_empty(rep_out: np.ndarray, counts: np.ndarray, tokens: np.ndarray,
                projected: np.ndarray, offsets: np.ndarray, planes: np.ndarray,
                patterns: np.ndarray) -> None:
    """Fill empty buckets in place: ``rep_out [n, B, block]``, ``counts [n, B]``.

    The filler of set ``i``'s empty bucket ``k`` is the projected vector of the point of set
    ``i`` whose sign pattern has the least Hamming distance to bucket ``k``'s pattern (the
    first such point on ties).
    """
    codes = sign_patterns(tokens, planes)  # [T]
    empty_sets = np.nonzero((counts == 0).any(axis=1) & (np.diff(offsets) > 0))[0]
    for i in empty_sets:
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        empty = np.nonzero(counts[i] == 0)[0]  # [E]
        dist = _popcount(codes[lo:hi, None] ^ patterns[None, empty])  # [len_i, E]
        best = lo + np.argmin(dist, axis=0)  # [E]
        rep_out[i, empty] = projected[best]
