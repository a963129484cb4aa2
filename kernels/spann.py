"""Pure numeric kernels of SPANN (Chen et al., NeurIPS 2021) and SPFresh (Xu et al., SOSP 2023).

All distances are squared Euclidean unless a name says otherwise. Shapes:
``x`` vectors ``[n, d]`` float32, ``heads`` head vectors ``[h, d]`` float32.

1. :func:`balanced_kmeans` / :func:`hierarchical_heads` — choose the heads by
   recursive balanced clustering (SPANN §3.2: many small, equal-sized postings).
2. :func:`rng_assign` — assign each vector to up to ``max_replicas`` heads under the
   relative-neighbourhood rule (SPANN §3.2, "closure with RNG").
3. :func:`cap_postings` — bound posting lengths, never dropping a vector's primary head.
4. :func:`prune_heads` — query-aware pruning (SPANN §3.3).
5. :func:`two_means` and :func:`split_reassign_mask` / :func:`neighbor_reassign_mask` —
   SPFresh's split and the LIRE reassignment conditions (SPFresh §4).
"""

from __future__ import annotations

import numpy as np


def sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances ``[n, m]`` between ``x [n, d]`` and ``c [m, d]`` (clipped at 0)."""
    xx = np.einsum("ij,ij->i", x, x)[:, None]
    cc = np.einsum("ij,ij->i", c, c)[None, :]
    return np.maximum(xx - 2.0 * (x @ c.T) + cc, 0.0)


def balanced_kmeans(x: np.ndarray, k: int, iters: int = 8, balance: float = 1.0,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with a size penalty that evens out the clusters.

    The assignment cost of ``x_i`` to cluster ``j`` is
    ``||x_i - c_j||^2 + balance * mean_d2 * (size_j / (n / k) - 1)`` with the sizes of
    the previous iteration, so crowded clusters repel points (cf. SPTAG's balanced
    k-means). Returns ``(centroids [k, d], labels [n])``.
    """
    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centroids = x[rng.choice(n, size=k, replace=False)].astype(np.float32, copy=True)
    labels = np.zeros(n, dtype=np.int64)
    sizes = np.full(k, n / k)
    for it in range(iters):
        d2 = sq_dists(x, centroids)
        if it > 0 and balance > 0:
            mean_d2 = float(d2[np.arange(n), labels].mean()) + 1e-12
            d2 = d2 + balance * mean_d2 * (sizes / (n / k) - 1.0)[None, :]
        labels = d2.argmin(axis=1)
        sizes = np.bincount(labels, minlength=k).astype(np.float64)
        order = np.argsort(labels, kind="stable")
        present = np.nonzero(sizes)[0]
        starts = np.concatenate([[0], np.cumsum(sizes[present])[:-1]]).astype(np.int64)
        sums = np.zeros_like(centroids)
        sums[present] = np.add.reduceat(x[order], starts, axis=0)
        empty = sizes == 0
        centroids[~empty] = sums[~empty] / sizes[~empty, None]
        if empty.any():  # re-seed an empty cluster on a random point
            centroids[empty] = x[rng.choice(n, size=int(empty.sum()), replace=False)]
    return centroids, labels


def hierarchical_heads(x: np.ndarray, head_ratio: float = 0.1, branch: int = 16,
                       iters: int = 6, seed: int = 0, max_points: int = 200_000) -> np.ndarray:
    """Indices of the head vectors ``[h]``, about ``head_ratio * n`` of them.

    Recursive balanced k-means (branching ``branch``) until a node holds at most
    ``1 / head_ratio`` vectors; each leaf's head is the member nearest its centroid,
    so heads are real vectors as in SPANN. A node larger than ``max_points`` fits its
    centroids on a random sample of that size and assigns everyone by nearest centroid.
    """
    if not 0.0 < head_ratio <= 1.0:
        raise ValueError(f"head_ratio must be in (0, 1], not {head_ratio}")
    leaf = max(1, int(round(1.0 / head_ratio)))
    rng = np.random.default_rng(seed)
    heads: list[int] = []
    stack = [np.arange(len(x))]
    while stack:
        idx = stack.pop()
        if len(idx) <= leaf + leaf // 2:
            sub = x[idx]
            centre = sub.mean(axis=0, keepdims=True)
            heads.append(int(idx[sq_dists(sub, centre)[:, 0].argmin()]))
            continue
        k = int(min(branch, len(idx) // leaf))
        k = max(k, 2)
        if len(idx) > max_points:
            sample = idx[rng.choice(len(idx), size=max_points, replace=False)]
            cents, _ = balanced_kmeans(x[sample], k, iters, seed=int(rng.integers(2**31)))
            labels = np.concatenate([sq_dists(x[idx[s:s + 65536]], cents).argmin(axis=1)
                                     for s in range(0, len(idx), 65536)])
        else:
            _, labels = balanced_kmeans(x[idx], k, iters, seed=int(rng.integers(2**31)))
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(k + 1))
        parts = [idx[order[bounds[j]:bounds[j + 1]]] for j in range(k)]
        parts = [p for p in parts if len(p)]
        if len(parts) == 1:  # identical points: cannot split further, cut evenly
            parts = np.array_split(idx, k)
        stack.extend(parts)
    return np.asarray(sorted(heads), dtype=np.int64)


def rng_assign(cand: np.ndarray, cand_d2: np.ndarray, cand_vecs: np.ndarray,
               max_replicas: int = 8, rng_factor: float = 1.0,
               closure: float = 10.0) -> np.ndarray:
    """Heads each vector is stored under, ``[n, max_replicas]`` int64, -1 padded.

    ``cand [n, c]`` are candidate head ids sorted by distance (``cand_d2 [n, c]``,
    squared; -1 ids are ignored) and ``cand_vecs [n, c, d]`` the candidates' vectors.
    The nearest head is always kept. A later candidate ``h`` is kept only if, for
    every head ``g`` already kept, ``rng_factor * ||h - g|| > ||x - h||`` — the
    vector is closer to ``h`` than ``h`` is to a kept head (the RNG rule), and only
    if ``||x - h|| <= closure * ||x - nearest head||``.
    """
    n, c = cand.shape
    out = np.full((n, max_replicas), -1, dtype=np.int64)
    if n == 0 or c == 0:
        return out
    valid = cand >= 0
    hv = cand_vecs  # [n, c, d]
    hh = np.einsum("ncd,ncd->nc", hv, hv)
    hg = np.einsum("ncd,ned->nce", hv, hv)  # [n, c, c] head-head dot products
    hh_d2 = np.maximum(hh[:, :, None] - 2.0 * hg + hh[:, None, :], 0.0)
    dist = np.sqrt(np.maximum(cand_d2, 0.0))
    hh_dist = np.sqrt(hh_d2) * rng_factor
    kept = np.zeros((n, c), dtype=bool)
    kept[:, 0] = valid[:, 0]
    limit = closure * dist[:, :1]
    for j in range(1, c):
        # blocked if some kept g has rng_factor * ||h_j - g|| <= ||x - h_j||
        blocked = (kept[:, :j] & (hh_dist[:, j, :j] <= dist[:, j:j + 1])).any(axis=1)
        ok = valid[:, j] & ~blocked & (dist[:, j] <= limit[:, 0])
        ok &= kept.sum(axis=1) < max_replicas
        kept[:, j] = ok
    rows, cols = np.nonzero(kept)
    slot = np.cumsum(kept, axis=1)[rows, cols] - 1
    out[rows, slot] = cand[rows, cols]
    return out


def cap_postings(vec_ids: np.ndarray, head_ids: np.ndarray, d2: np.ndarray,
                 primary: np.ndarray, cap: int) -> np.ndarray:
    """Mask ``[m]`` of (vector, head) pairs kept when each head holds at most ``cap``.

    Pairs are ``vec_ids[i]`` stored under ``head_ids[i]`` at squared distance ``d2[i]``;
    ``primary[i]`` marks a vector's nearest head, which is always kept (a vector must
    stay reachable). Within a head, the closest replicas are kept first.
    """
    m = len(vec_ids)
    keep = np.zeros(m, dtype=bool)
    if m == 0:
        return keep
    # primaries first, then by distance, grouped by head
    order = np.lexsort((d2, ~primary, head_ids))
    h_sorted = head_ids[order]
    starts = np.searchsorted(h_sorted, h_sorted, side="left")
    rank = np.arange(m) - starts
    keep[order] = (rank < cap) | primary[order]
    return keep


def prune_heads(head_d2: np.ndarray, eps: float) -> np.ndarray:
    """Mask ``[q, p]`` of probed heads kept by query-aware pruning.

    ``head_d2 [q, p]`` are squared distances to the probed heads in ascending order
    (``inf`` for padding). Head ``j`` is probed only if
    ``||q - h_j|| <= (1 + eps) * ||q - h_0||``.
    """
    dist = np.sqrt(np.maximum(head_d2, 0.0))
    return np.isfinite(dist) & (dist <= (1.0 + eps) * dist[:, :1])


def two_means(x: np.ndarray, iters: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split ``x [n, d]`` (n >= 2) in two: ``(centroids [2, d], labels [n])``.

    Seeds are a random point and the point farthest from it; then Lloyd iterations.
    A degenerate split (all points on one side) is cut in half by distance order.
    """
    rng = np.random.default_rng(seed)
    a = x[int(rng.integers(len(x)))]
    far = int(((x - a) ** 2).sum(axis=1).argmax())
    cents = np.stack([a, x[far]]).astype(np.float32)
    labels = np.zeros(len(x), dtype=np.int64)
    for _ in range(iters):
        labels = sq_dists(x, cents).argmin(axis=1)
        for j in range(2):
            members = x[labels == j]
            if len(members):
                cents[j] = members.mean(axis=0)
    if labels.min() == labels.max():
        d = sq_dists(x, cents[:1])[:, 0]
        labels = (np.argsort(np.argsort(d)) >= len(x) // 2).astype(np.int64)
        cents = np.stack([x[labels == 0].mean(axis=0), x[labels == 1].mean(axis=0)])
    return cents.astype(np.float32), labels


def split_reassign_mask(x: np.ndarray, old_centre: np.ndarray,
                        new_centres: np.ndarray) -> np.ndarray:
    """Mask ``[n]`` of a split posting's vectors that must be reassigned (SPFresh, LIRE).

    A vector needs a new look only if the old head was at least as close as both new
    ones: ``||x - c_old|| <= min_i ||x - c_i||``; otherwise its nearest head is a new
    centroid of the split and its assignment stays valid.
    """
    d_old = sq_dists(x, old_centre[None, :])[:, 0]
    d_new = sq_dists(x, new_centres).min(axis=1)
    return d_old <= d_new


def neighbor_reassign_mask(x: np.ndarray, own_d2: np.ndarray,
                           new_centres: np.ndarray) -> np.ndarray:
    """Mask ``[n]`` of vectors in neighbouring postings that should move (SPFresh, LIRE).

    ``own_d2 [n]`` is each vector's squared distance to the head it sits under; the
    vector moves when a new centroid is closer: ``min_i ||x - c_i||^2 < own_d2``.
    """
    return sq_dists(x, new_centres).min(axis=1) < own_d2
