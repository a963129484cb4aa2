"""Exact Chamfer (ColBERT MaxSim) similarity: ``CH(Q, P) = sum_{q in Q} max_{p in P} <q, p>``.

Batched torch kernels over padded token tensors with boolean masks, plus a helper that pads
flat ``tokens [T, dim]`` + ``offsets [n + 1]`` sets and a brute-force scorer over a flat store.
Padding positions never win a max (they are set to -inf) and padded query tokens add nothing.
A document with no tokens scores -inf.
"""

from __future__ import annotations

import numpy as np
import torch


def pad_sets(tokens: np.ndarray, offsets: np.ndarray,
             rows: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ``[n, L, dim]`` float32 tensor and ``[n, L]`` bool mask of sets ``rows``.

    ``tokens``: ``[T, dim]`` (any float dtype, e.g. an fp16 memory map); ``offsets``:
    ``[N + 1]``; ``rows``: ``[n]`` set numbers (all sets when None). ``L`` is the longest set.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    if rows is None:
        rows = np.arange(len(offsets) - 1)
    starts, ends = offsets[rows], offsets[np.asarray(rows) + 1]
    lengths = ends - starts
    width = int(lengths.max()) if len(lengths) else 0
    dim = tokens.shape[1]
    padded = np.zeros((len(rows), max(width, 1), dim), dtype=np.float32)
    mask = np.zeros((len(rows), max(width, 1)), dtype=bool)
    for i, (lo, n) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
        padded[i, :n] = tokens[lo:lo + n]
        mask[i, :n] = True
    return torch.from_numpy(padded), torch.from_numpy(mask)


def chamfer(queries: torch.Tensor, query_mask: torch.Tensor, docs: torch.Tensor,
            doc_mask: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """All-pairs Chamfer scores ``[nq, nd]``.

    ``queries``: ``[nq, Lq, dim]``, ``query_mask``: ``[nq, Lq]``; ``docs``: ``[nd, Ld, dim]``,
    ``doc_mask``: ``[nd, Ld]``. Documents are processed ``chunk`` at a time to bound memory
    (``nq * Lq * chunk * Ld`` floats).
    """
    q = queries.float() * query_mask.unsqueeze(-1)  # [nq, Lq, dim]
    out = torch.empty((q.shape[0], docs.shape[0]), dtype=torch.float32)
    for lo in range(0, docs.shape[0], chunk):
        d = docs[lo:lo + chunk].float()  # [c, Ld, dim]
        sim = torch.einsum("aqd,bpd->abqp", q, d)  # [nq, c, Lq, Ld]
        sim = sim.masked_fill(~doc_mask[lo:lo + chunk][None, :, None, :], float("-inf"))
        best = sim.amax(dim=-1)  # [nq, c, Lq]
        best = best.masked_fill(~query_mask[:, None, :], 0.0)
        out[:, lo:lo + chunk] = best.sum(dim=-1)
    return out


def chamfer_candidates(queries: torch.Tensor, query_mask: torch.Tensor, docs: torch.Tensor,
                       doc_mask: torch.Tensor) -> torch.Tensor:
    """Per-query candidate scores ``[nq, c]``: query ``a`` against its own ``c`` candidates.

    ``queries``: ``[nq, Lq, dim]``, ``query_mask``: ``[nq, Lq]``; ``docs``: ``[nq, c, Ld, dim]``,
    ``doc_mask``: ``[nq, c, Ld]``.
    """
    q = queries.float() * query_mask.unsqueeze(-1)
    sim = torch.einsum("aqd,acpd->acqp", q, docs.float())  # [nq, c, Lq, Ld]
    sim = sim.masked_fill(~doc_mask[:, :, None, :], float("-inf"))
    best = sim.amax(dim=-1).masked_fill(~query_mask[:, None, :], 0.0)  # [nq, c, Lq]
    return best.sum(dim=-1)


def chamfer_flat(query: torch.Tensor, tokens: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Brute-force Chamfer of one query ``[Lq, dim]`` against every set of a flat store: ``[n]``.

    ``tokens``: ``[T, dim]`` float32; ``offsets``: ``[n + 1]`` int64. One matrix product
    ``[T, Lq]`` followed by a segment max over each set's rows; empty sets score -inf.
    """
    sim = tokens @ query.float().T  # [T, Lq]
    lengths = offsets[1:] - offsets[:-1]  # [n]
    best = torch.segment_reduce(sim, "max", lengths=lengths, axis=0, unsafe=True)  # [n, Lq]
    scores = best.sum(dim=1)
    return scores.masked_fill(lengths == 0, float("-inf"))
