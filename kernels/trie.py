"""CSR trie over token-id sequences, and its constraint provider for beam search.

Layout (all numpy, built vectorised from a padded ``[n, L]`` token matrix):

- Nodes are numbered in level order (root = 0, then every depth-1 node, then depth 2, ...;
  within a level in lexicographic order). Hence the children of a node are contiguous and
  sorted by token, and **the edge with index ``e`` leads to node ``e + 1``**: the packed
  edge ``(token, next_state)`` of CSR is ``(edge_token[e], e + 1)``, so ``next_state`` needs
  no storage (a LOUDS-like level-order trick).
- ``indptr``  int64 ``[num_nodes + 1]``: node ``u``'s edges are ``indptr[u]:indptr[u + 1]``.
- ``edge_token`` int32 ``[num_nodes - 1]``: the token on each edge, sorted within a node.
- ``parent`` int32 ``[num_nodes]`` (``parent[0] = -1``): used to read sequences back and to
  propagate tombstones upwards.
- ``level_ptr`` int64 ``[depth + 2]``: nodes of depth ``d`` are ``level_ptr[d]:level_ptr[d+1]``.
- Terminals: ``term_nodes`` int32 ``[T]`` (sorted, unique), ``term_ptr`` int64 ``[T + 1]``,
  ``term_docs`` int64 ``[n]``: the docs whose sequence ends at ``term_nodes[i]`` are
  ``term_docs[term_ptr[i]:term_ptr[i + 1]]`` (duplicate sequences map to all their docs).
- Dense lookup tables for the first levels: ``root_table`` int32 ``[V]`` (token -> depth-1
  node or -1) and, when ``n_depth1 * V`` is small enough, ``level2_table`` int32
  ``[n_depth1, V]``; deeper lookups binary-search the globally sorted key
  ``parent * V + token`` (``advance``).

``TrieConstraint`` is the ConstraintProvider (``S = 1``, the node id; dead = ``-1``): ``step``
gathers each state's edge slice (work ``N x F``, no Python loop over states).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from genseek.kernels.constraints import Candidates

LEVEL2_MAX_ENTRIES = 1 << 22  # dense depth-2 table only when n_depth1 * V <= this


@dataclass(frozen=True)
class Trie:
    """Immutable CSR trie (see the module docstring for every array's meaning)."""

    indptr: np.ndarray
    edge_token: np.ndarray
    parent: np.ndarray
    level_ptr: np.ndarray
    term_nodes: np.ndarray
    term_ptr: np.ndarray
    term_docs: np.ndarray
    vocab_size: int
    root_table: np.ndarray
    level2_table: np.ndarray | None

    @property
    def num_nodes(self) -> int:
        return int(self.indptr.shape[0] - 1)

    @property
    def num_docs(self) -> int:
        return int(self.term_docs.shape[0])

    @property
    def depth(self) -> int:
        return int(self.level_ptr.shape[0] - 2)

    def nbytes(self, dense_tables: bool = True) -> int:
        """Bytes of the arrays held (the persisted form is these arrays)."""
        arrays = [self.indptr, self.edge_token, self.parent, self.level_ptr,
                  self.term_nodes, self.term_ptr, self.term_docs]
        if dense_tables:
            arrays.append(self.root_table)
            if self.level2_table is not None:
                arrays.append(self.level2_table)
        return int(sum(a.nbytes for a in arrays))

    def children(self, node: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, child node ids) of one node, sorted by token (a convenience for tests)."""
        a, b = int(self.indptr[node]), int(self.indptr[node + 1])
        return self.edge_token[a:b].astype(np.int64), np.arange(a + 1, b + 1, dtype=np.int64)

    def docs_at(self, node: int) -> np.ndarray:
        """Doc numbers whose sequence ends at ``node`` (empty if not terminal)."""
        i = int(np.searchsorted(self.term_nodes, node))
        if i < self.term_nodes.shape[0] and int(self.term_nodes[i]) == node:
            return self.term_docs[self.term_ptr[i]:self.term_ptr[i + 1]]
        return np.zeros(0, dtype=np.int64)

    def node_depth(self, nodes: np.ndarray) -> np.ndarray:
        """Depth of each node id (``[M]`` -> ``[M]``)."""
        return np.searchsorted(self.level_ptr, np.asarray(nodes), side="right") - 1

    def doc_nodes(self) -> np.ndarray:
        """int64 ``[num_docs]``: the terminal node of every doc number ``0..num_docs-1``
        (requires doc numbers to be exactly ``0..n-1``, as ``build_trie`` assigns by default)."""
        out = np.full(self.num_docs, -1, dtype=np.int64)
        owners = np.repeat(self.term_nodes.astype(np.int64), np.diff(self.term_ptr))
        out[self.term_docs] = owners
        return out

    def sequences(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token sequences spelled by ``nodes`` (``[M]``) as (flat tokens, offsets ``[M+1]``)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        depth = self.node_depth(nodes)
        offsets = np.zeros(nodes.shape[0] + 1, dtype=np.int64)
        np.cumsum(depth, out=offsets[1:])
        flat = np.zeros(int(offsets[-1]), dtype=np.int64)
        cur = nodes.copy()
        pos = offsets[1:] - 1  # write position: last token first
        for _ in range(int(depth.max()) if depth.size else 0):
            live = cur > 0
            flat[pos[live]] = self.edge_token[cur[live] - 1]
            pos = pos - 1
            cur = np.where(live, self.parent[np.maximum(cur, 0)], cur)
        return flat, offsets

    def advance(self, nodes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Child of each ``nodes[i]`` by ``tokens[i]`` (``-1`` where absent), vectorised.

        Depth 0 uses ``root_table``, depth 1 ``level2_table`` when present, deeper nodes a
        binary search of ``parent * V + token`` over the globally sorted edge keys.
        """
        nodes = np.asarray(nodes, dtype=np.int64)
        tokens = np.asarray(tokens, dtype=np.int64)
        out = np.full(nodes.shape, -1, dtype=np.int64)
        ok = (nodes >= 0) & (tokens >= 0) & (tokens < self.vocab_size)
        at_root = ok & (nodes == 0)
        out[at_root] = self.root_table[tokens[at_root]]
        rest = ok & (nodes > 0)
        if self.level2_table is not None:
            d1 = rest & (nodes < self.level_ptr[2])
            out[d1] = self.level2_table[nodes[d1] - 1, tokens[d1]]
            rest &= ~d1
        if rest.any():
            v = np.int64(self.vocab_size)
            keys = self.parent[1:].astype(np.int64) * v + self.edge_token.astype(np.int64)
            q = nodes[rest] * v + tokens[rest]
            i = np.searchsorted(keys, q)
            i_c = np.minimum(i, keys.shape[0] - 1)
            hit = (i < keys.shape[0]) & (keys[i_c] == q)
            out[rest] = np.where(hit, i_c + 1, -1)
        return out


def _as_flat(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((int(t) for s in sequences for t in s), dtype=np.int64,
                       count=int(offsets[-1]))
    return flat, offsets


def build_trie(sequences: Sequence[Sequence[int]], vocab_size: int,
               doc_ids: np.ndarray | None = None) -> Trie:
    """A trie over ``sequences[i]`` (token ids in ``[0, vocab_size)``) -> doc number
    ``doc_ids[i]`` (default ``i``)."""
    flat, offsets = _as_flat(sequences)
    return build_trie_flat(flat, offsets, vocab_size, doc_ids)


def build_trie_flat(tokens: np.ndarray, offsets: np.ndarray, vocab_size: int,
                    doc_ids: np.ndarray | None = None) -> Trie:
    """A trie from concatenated sequences: doc ``i`` is ``tokens[offsets[i]:offsets[i+1]]``.

    1. pad into an int32 matrix ``[n, L]`` (``-1`` after the end) and sort its rows
       lexicographically (a shorter prefix sorts first);
    2. ``lcp[i]`` = length of the common prefix of sorted rows ``i - 1`` and ``i``; row ``i``
       opens a new node at depth ``d`` iff ``lcp[i] < d <= len[i]``;
    3. level by level: node ids, edge tokens, parents (binary search among the previous
       level's opening rows), then ``indptr`` from the parents' child counts;
    4. each row's terminal node; docs grouped by terminal node.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    n = int(offsets.shape[0] - 1)
    if n < 0 or (offsets.size and (offsets[0] != 0 or np.any(np.diff(offsets) < 0))):
        raise ValueError("offsets must start at 0 and be non-decreasing")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size})")
    if doc_ids is None:
        doc_ids = np.arange(n, dtype=np.int64)
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    if doc_ids.shape != (n,):
        raise ValueError("doc_ids must have one entry per sequence")
    lengths = np.diff(offsets)
    width = int(lengths.max()) if n else 0
    # 1. padded matrix, lexicographic row order
    mat = np.full((n, max(width, 1)), -1, dtype=np.int32)
    rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
    cols = np.arange(tokens.shape[0], dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    mat[rows, cols] = tokens
    order = np.lexsort(mat.T[::-1]) if n else np.zeros(0, dtype=np.int64)
    mat = mat[order]
    slen = lengths[order]
    # 2. common prefix with the previous row
    lcp = np.zeros(n, dtype=np.int64)
    if n > 1:
        diff = mat[1:] != mat[:-1]
        first = np.argmax(diff, axis=1)
        lcp[1:] = np.where(diff.any(axis=1), first, width)
    # 3. levels
    level_ptr = [0, 1]
    starts_prev = np.zeros(1 if n else 0, dtype=np.int64)  # root "opens" at row 0
    edge_tok_parts: list[np.ndarray] = []
    parent_parts: list[np.ndarray] = [np.array([-1], dtype=np.int64)]
    level_starts: list[np.ndarray] = [starts_prev]
    for d in range(1, width + 1):
        starts = np.flatnonzero((lcp < d) & (slen >= d))
        if starts.size == 0:
            break
        prev_off = level_ptr[d - 1]
        par = prev_off + np.searchsorted(starts_prev, starts, side="right") - 1
        edge_tok_parts.append(mat[starts, d - 1].astype(np.int32))
        parent_parts.append(par)
        level_ptr.append(level_ptr[-1] + int(starts.size))
        level_starts.append(starts)
        starts_prev = starts
    num_nodes = level_ptr[-1]
    parent = np.concatenate(parent_parts).astype(np.int32)
    edge_token = (np.concatenate(edge_tok_parts) if edge_tok_parts
                  else np.zeros(0, dtype=np.int32))
    child_count = np.bincount(parent[1:].astype(np.int64), minlength=num_nodes)
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(child_count, out=indptr[1:])
    # 4. terminal node of every sorted row
    term_of_row = np.zeros(n, dtype=np.int64)
    for d in range(1, len(level_starts)):
        rows_d = np.flatnonzero(slen == d)
        if rows_d.size:
            term_of_row[rows_d] = (level_ptr[d]
                                   + np.searchsorted(level_starts[d], rows_d, side="right") - 1)
    by_node = np.argsort(term_of_row, kind="stable")
    tnodes_sorted = term_of_row[by_node]
    term_nodes, counts = np.unique(tnodes_sorted, return_counts=True)
    term_ptr = np.zeros(term_nodes.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=term_ptr[1:])
    term_docs = doc_ids[order[by_node]]
    return trie_from_arrays(indptr=indptr, edge_token=edge_token, parent=parent,
                            level_ptr=np.asarray(level_ptr, dtype=np.int64),
                            term_nodes=term_nodes.astype(np.int32), term_ptr=term_ptr,
                            term_docs=term_docs, vocab_size=int(vocab_size))


def trie_from_arrays(*, indptr: np.ndarray, edge_token: np.ndarray, parent: np.ndarray,
                     level_ptr: np.ndarray, term_nodes: np.ndarray, term_ptr: np.ndarray,
                     term_docs: np.ndarray, vocab_size: int) -> Trie:
    """A Trie from its stored arrays; the dense first-level tables are derived here."""
    indptr = np.asarray(indptr, dtype=np.int64)
    edge_token = np.asarray(edge_token, dtype=np.int32)
    parent = np.asarray(parent, dtype=np.int32)
    level_ptr = np.asarray(level_ptr, dtype=np.int64)
    num_nodes = int(indptr.shape[0] - 1)
    root_table = np.full(vocab_size, -1, dtype=np.int32)
    a, b = int(indptr[0]), int(indptr[1])
    root_table[edge_token[a:b]] = np.arange(a + 1, b + 1, dtype=np.int32)
    level2 = None
    n1 = int(level_ptr[2] - level_ptr[1]) if level_ptr.shape[0] > 2 else 0
    if n1 and num_nodes and n1 * vocab_size <= LEVEL2_MAX_ENTRIES:
        level2 = np.full((n1, vocab_size), -1, dtype=np.int32)
        e0, e1 = int(indptr[1]), int(indptr[1 + n1])
        par = parent[e0 + 1:e1 + 1].astype(np.int64) - 1
        level2[par, edge_token[e0:e1]] = np.arange(e0 + 1, e1 + 1, dtype=np.int32)
    return Trie(indptr=indptr, edge_token=edge_token, parent=parent, level_ptr=level_ptr,
                term_nodes=np.asarray(term_nodes, dtype=np.int32),
                term_ptr=np.asarray(term_ptr, dtype=np.int64),
                term_docs=np.asarray(term_docs, dtype=np.int64), vocab_size=int(vocab_size),
                root_table=root_table, level2_table=level2)


def live_node_mask(trie: Trie, doc_live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(node_live bool ``[num_nodes]``, terminal_live bool ``[num_nodes]``) for a per-doc
    liveness mask ``doc_live`` (bool, indexed by doc number).

    terminal_live: the node ends at least one live doc. node_live: its subtree holds one;
    computed bottom-up one level at a time (a vectorised OR into the parents).
    """
    term_live_cnt = np.add.reduceat(doc_live[trie.term_docs].astype(np.int64),
                                    trie.term_ptr[:-1]) if trie.term_nodes.size else \
        np.zeros(0, dtype=np.int64)
    terminal_live = np.zeros(trie.num_nodes, dtype=bool)
    terminal_live[trie.term_nodes[term_live_cnt > 0]] = True
    node_live = terminal_live.copy()
    lp = trie.level_ptr
    for d in range(trie.depth, 0, -1):
        a, b = int(lp[d]), int(lp[d + 1])
        kids = np.arange(a, b)[node_live[a:b]]
        node_live[trie.parent[kids].astype(np.int64)] = True
    return node_live, terminal_live


class TrieConstraint:
    """ConstraintProvider over a Trie on one device: state = node id (``S = 1``, dead ``-1``).

    ``doc_live`` (optional bool ``[num_docs]``) hides deleted docs: an edge into a subtree
    without a live doc is never offered, and a node is terminal only if a live doc ends there.
    """

    state_width = 1

    def __init__(self, trie: Trie, device: torch.device | str = "cpu",
                 doc_live: np.ndarray | None = None):
        self.trie = trie
        self.device = torch.device(device)
        self.indptr = torch.from_numpy(trie.indptr).to(self.device)
        self.edge_token = torch.from_numpy(trie.edge_token).to(self.device)
        if doc_live is None:
            term = np.zeros(trie.num_nodes, dtype=bool)
            term[trie.term_nodes] = True
            self.edge_live = None
        else:
            node_live, term = live_node_mask(trie, np.asarray(doc_live, dtype=bool))
            self.edge_live = torch.from_numpy(node_live[1:].copy()).to(self.device)
        self.terminal = torch.from_numpy(term).to(self.device)

    def root(self, n: int, device: torch.device) -> torch.Tensor:
        """``[n, 1]`` zeros (the root node)."""
        return torch.zeros((n, 1), dtype=torch.int64, device=device)

    def is_terminal(self, states: torch.Tensor) -> torch.Tensor:
        """bool ``[N]``: a (live) docid ends at the node of each state."""
        node = states[:, 0]
        return (node >= 0) & self.terminal[node.clamp(min=0)]

    def step(self, states: torch.Tensor) -> Candidates:
        """Children of each state's node: tokens ``[N, F]``, next nodes ``[N, F, 1]``.

        ``F`` = the largest out-degree among the ``N`` nodes; row ``i`` gathers edges
        ``indptr[node_i] + arange(F)`` masked to its own degree (and to live subtrees).
        """
        node = states[:, 0].to(self.device)
        alive = node >= 0
        nodec = node.clamp(min=0)
        start = self.indptr[nodec]
        deg = torch.where(alive, self.indptr[nodec + 1] - start, torch.zeros_like(start))
        n = node.shape[0]
        f = int(deg.max().item()) if n else 0
        if f == 0:
            tok = torch.full((n, 1), -1, dtype=torch.int64, device=self.device)
            return Candidates(tok, tok.unsqueeze(2).clone(), None)
        ar = torch.arange(f, device=self.device)
        ok = ar.unsqueeze(0) < deg.unsqueeze(1)  # [N, F]
        idx = torch.where(ok, start.unsqueeze(1) + ar, torch.zeros_like(ok, dtype=torch.int64))
        if self.edge_live is not None:
            ok &= self.edge_live[idx]
        tokens = torch.where(ok, self.edge_token[idx].long(), torch.full_like(idx, -1))
        nxt = torch.where(ok, idx + 1, torch.full_like(idx, -1)).unsqueeze(2)
        return Candidates(tokens.to(states.device), nxt.to(states.device), None)
