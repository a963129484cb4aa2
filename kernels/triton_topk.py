"""Candidate scoring for constrained beam search: gather -> mask -> add -> top-k.

Given the model's log-probs ``logp`` (float ``[N, V]``, ``N = B * K`` rows), each row's
allowed tokens ``tokens`` (int64 ``[N, F]``, ``-1`` = padding) and the beam scores
(float ``[N]``), a beam step needs

    total[n, f] = beam_scores[n] + logp[n, tokens[n, f]]   (-inf where tokens[n, f] < 0)

viewed as ``[B, K * F]`` and its top ``kk`` per query. ``candidate_topk`` does this with the
torch reference (the default, any device) or, when asked, with a Triton kernel that fuses
the gather, the mask and the add in one pass over ``[N, F]`` (no ``[N, F]`` intermediate
of gathered log-probs); the selection itself stays ``torch.topk``. The Triton import is
guarded: without triton (or without a GPU and ``TRITON_INTERPRET=1``) only the torch path
exists. Both paths give bit-identical scores (one float32 add per element).
"""

from __future__ import annotations

import functools
import os

import torch

try:  # optional dependency
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    HAVE_TRITON = False

BLOCK_F = 128


def candidate_scores_torch(logp: torch.Tensor, tokens: torch.Tensor,
                           beam_scores: torch.Tensor) -> torch.Tensor:
    """Reference: float ``[N, F]`` = ``beam_scores[:, None] + logp[n, tokens]``, -inf on padding."""
    cl = torch.gather(logp, 1, tokens.clamp(min=0))
    total = beam_scores.view(-1, 1) + cl
    return torch.where(tokens < 0, torch.full_like(total, float("-inf")), total)


def _candidate_kernel(logp_ptr, tok_ptr, score_ptr, out_ptr, n_cols, stride_logp, stride_tok,
                      BLOCK: tl.constexpr):
    """Triton source (jitted on first use): one program per (row, block of candidates)."""
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_row = offs < n_cols
    tok = tl.load(tok_ptr + row * stride_tok + offs, mask=in_row, other=-1)
    valid = in_row & (tok >= 0)
    safe = tl.where(valid, tok, 0)
    lp = tl.load(logp_ptr + row * stride_logp + safe, mask=valid, other=0.0)
    score = tl.load(score_ptr + row)
    out = tl.where(valid, score + lp, float("-inf"))
    tl.store(out_ptr + row * n_cols + offs, out, mask=in_row)


@functools.lru_cache(maxsize=2)
def _jitted(interpret: bool):  # noqa: ANN202 - a triton JITFunction
    """The kernel compiled (or interpreted) under the TRITON_INTERPRET setting of first use."""
    del interpret  # the cache key: triton reads TRITON_INTERPRET when jit() runs
    return triton.jit(_candidate_kernel)


def triton_usable(device: torch.device) -> bool:
    """Triton can run here: installed, and a CUDA device or ``TRITON_INTERPRET=1``."""
    if not HAVE_TRITON:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def candidate_scores_triton(logp: torch.Tensor, tokens: torch.Tensor,
                            beam_scores: torch.Tensor) -> torch.Tensor:
    """The fused kernel; same contract as ``candidate_scores_torch``."""
    if not triton_usable(logp.device):
        raise RuntimeError("triton is not installed or cannot run on this device "
                           "(set TRITON_INTERPRET=1 to run it on CPU)")
    logp = logp.float().contiguous()
    tokens = tokens.contiguous()
    beam_scores = beam_scores.float().contiguous()
    n, f = tokens.shape
    out = torch.empty((n, f), dtype=torch.float32, device=logp.device)
    if n and f:
        grid = (n, triton.cdiv(f, BLOCK_F))
        kernel = _jitted(os.environ.get("TRITON_INTERPRET") == "1")
        kernel[grid](logp, tokens, beam_scores, out, f, logp.stride(0),
                                tokens.stride(0), BLOCK=BLOCK_F)
    return out


def candidate_topk(logp: torch.Tensor, tokens: torch.Tensor, beam_scores: torch.Tensor,
                   batch: int, kk: int, use_triton: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``kk`` candidates per query: (scores ``[B, kk]`` sorted, flat indices ``[B, kk]``
    into the query's ``K * F`` candidates, i.e. ``beam * F + f``)."""
    if use_triton:
        total = candidate_scores_triton(logp, tokens, beam_scores)
    else:
        total = candidate_scores_torch(logp, tokens, beam_scores)
    return torch.topk(total.view(batch, -1), kk, dim=1)
