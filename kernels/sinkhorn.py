"""Sinkhorn optimal transport for the uniform-clustering constraint of RepCONC.

Zhan et al., "Learning Discrete Representations via Constrained Clustering for Effective
and Efficient Dense Retrieval" (WSDM 2022): to keep every PQ centroid in use, the
assignment of ``n`` vectors to ``K`` centroids of a subspace maximises the summed similarity
subject to each vector sending mass ``1/n`` and each centroid receiving mass ``1/K``.
With an entropic term (Cuturi 2013) the plan is ``P = diag(u) exp(S / eps) diag(v)``,
found by alternately rescaling rows and columns (done here in the log domain); a vector's
code is the centroid holding most of its mass.
"""

from __future__ import annotations

import torch


def sinkhorn_plan(scores: torch.Tensor, epsilon: float = 0.05, iters: int = 50,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Log transport plans ``[..., n, K]`` for similarity ``scores [..., n, K]``.

    Row sums of ``exp(plan)`` tend to ``1/n`` and column sums to ``1/K`` (the uniform
    marginals); leading dimensions (e.g. PQ subspaces) are independent problems. The log
    domain keeps float32 stable; pass ``torch.float64`` for tighter marginals.
    """
    if epsilon <= 0:
        raise ValueError(f"sinkhorn: epsilon must be > 0, not {epsilon}")
    n, k = scores.shape[-2], scores.shape[-1]
    log_p = scores.to(dtype) / epsilon
    log_row = -torch.log(torch.tensor(float(n), dtype=dtype))
    log_col = -torch.log(torch.tensor(float(k), dtype=dtype))
    for _ in range(iters):
        log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True) + log_row  # rows -> 1/n
        log_p = log_p - torch.logsumexp(log_p, dim=-2, keepdim=True) + log_col  # cols -> 1/K
    return log_p.float()


def balanced_assign(scores: torch.Tensor, epsilon: float = 0.05, iters: int = 50) -> torch.Tensor:
    """Codes ``[..., n]`` (int64 in ``[0, K)``): each row's argmax of its Sinkhorn plan."""
    return sinkhorn_plan(scores, epsilon, iters).argmax(dim=-1)
