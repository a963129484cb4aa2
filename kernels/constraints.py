"""The constraint-provider interface shared by constrained decoding and its docid stores.

A *provider* tells the beam search which tokens may follow each partial hypothesis. Its
per-hypothesis *state* is a row of ``S = state_width`` int64 columns:

- CSR trie (``genseek.kernels.trie``): ``S = 1``, the node id.
- FM-index (``genseek.kernels.fmindex``): ``S = 2``, a suffix-array interval ``[lo, hi)``.

Conventions every provider follows (the union below relies on them):

1. A **dead** state is a row of ``-1`` (trie: node ``-1``; FM-index: ``[-1, -1)``, empty).
   ``step`` on a dead state returns no candidates (all ``-1`` tokens) and
   ``is_terminal`` returns ``False`` for it.
2. ``step`` takes the states of the whole batch at once and returns tensors on the same
   device as ``states`` (a provider may compute on the host, but with one transfer per
   call, never one per beam). ``F`` is the largest fan-out among the call's states (work
   ``~ N x F``), never a full-vocabulary mask.
3. Within one row, candidate tokens are distinct; padding (``-1``) may appear anywhere,
   but providers are encouraged to put it last.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import torch

_PAD_KEY = torch.iinfo(torch.int64).max  # sort key for padding: after every real token


class Candidates(NamedTuple):
    """Allowed continuations of ``N`` states.

    tokens:      int64 ``[N, F]``: allowed next token ids per state, padded with ``-1``.
    next_states: int64 ``[N, F, S]``: the state after each token (padding: any value).
    counts:      int64 ``[N, F]``: corpus occurrences of the extended key (FM-index);
                 ``None`` for tries.
    """

    tokens: torch.Tensor
    next_states: torch.Tensor
    counts: torch.Tensor | None


@runtime_checkable
class ConstraintProvider(Protocol):
    """What the beam search asks of a docid store (see the module docstring)."""

    state_width: int

    def root(self, n: int, device: torch.device) -> torch.Tensor:
        """``n`` copies of the empty-prefix state: int64 ``[n, S]`` on ``device``."""
        ...

    def step(self, states: torch.Tensor) -> Candidates:
        """Allowed next tokens of ``states`` (int64 ``[N, S]``)."""
        ...

    def is_terminal(self, states: torch.Tensor) -> torch.Tensor:
        """bool ``[N]``: the prefix of each state is a complete key (a docid / any n-gram)."""
        ...


def empty_candidates(n: int, state_width: int, device: torch.device,
                     with_counts: bool = False) -> Candidates:
    """Candidates with no allowed token for ``n`` states (``F = 1``, all padding)."""
    tokens = torch.full((n, 1), -1, dtype=torch.int64, device=device)
    nxt = torch.full((n, 1, state_width), -1, dtype=torch.int64, device=device)
    counts = torch.zeros((n, 1), dtype=torch.int64, device=device) if with_counts else None
    return Candidates(tokens, nxt, counts)


def _sorted_by_token(c: Candidates) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Rows of ``c`` sorted by token, padding last; returns (keys [N,F], states [N,F,S], counts)."""
    keys = torch.where(c.tokens < 0, torch.full_like(c.tokens, _PAD_KEY), c.tokens)
    keys, perm = torch.sort(keys, dim=1)
    s = c.next_states.shape[2]
    states = torch.gather(c.next_states, 1, perm.unsqueeze(2).expand(-1, -1, s))
    counts = torch.gather(c.counts, 1, perm) if c.counts is not None else None
    return keys, states, counts


class UnionProvider:
    """Constraints of several segments (a main segment + deltas) merged at query time.

    The state is the concatenation of the segments' states (``S = sum S_i``); a segment in
    which the prefix does not exist holds its dead state (all ``-1``). Allowed tokens are the
    union of the segments' tokens; counts add up (segments without counts contribute 0; the
    union has counts iff any segment has). ``is_terminal`` is true if any segment says so.
    """

    def __init__(self, providers: Sequence[ConstraintProvider]):
        if not providers:
            raise ValueError("UnionProvider needs at least one provider")
        self.providers = list(providers)
        widths = [int(p.state_width) for p in self.providers]
        self.offsets = [sum(widths[:i]) for i in range(len(widths) + 1)]
        self.state_width = self.offsets[-1]

    def split_states(self, states: torch.Tensor) -> list[torch.Tensor]:
        """Per-segment views ``[N, S_i]`` of union states ``[N, S]``."""
        return [states[:, a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]

    def root(self, n: int, device: torch.device) -> torch.Tensor:
        """``[n, S]``: every segment's root state side by side."""
        return torch.cat([p.root(n, device) for p in self.providers], dim=1)

    def is_terminal(self, states: torch.Tensor) -> torch.Tensor:
        """bool ``[N]``: any segment holds a complete key at this prefix."""
        parts = self.split_states(states)
        out = self.providers[0].is_terminal(parts[0])
        for p, s in zip(self.providers[1:], parts[1:], strict=True):
            out = out | p.is_terminal(s)
        return out

    def step(self, states: torch.Tensor) -> Candidates:
        """Union of the segments' candidates for ``states`` (int64 ``[N, S]``).

        1. each segment steps on its slice of the state; rows are sorted by token;
        2. all segments' tokens are concatenated, sorted, de-duplicated and compacted to
           ``U`` columns (the largest number of distinct tokens in a row);
        3. each segment's next state (or dead ``-1``) and count for every union token are
           found by a batched ``searchsorted`` into that segment's sorted row.
        """
        parts = self.split_states(states)
        cands = [p.step(s) for p, s in zip(self.providers, parts, strict=True)]
        if len(cands) == 1:
            return cands[0]
        n = states.shape[0]
        device = states.device
        # 1. per-segment sorted rows
        sorted_parts = [_sorted_by_token(c) for c in cands]
        # 2. union of tokens per row
        allk = torch.cat([k for k, _, _ in sorted_parts], dim=1)
        allk, _ = torch.sort(allk, dim=1)
        dup = torch.zeros_like(allk, dtype=torch.bool)
        dup[:, 1:] = allk[:, 1:] == allk[:, :-1]
        allk = torch.where(dup, torch.full_like(allk, _PAD_KEY), allk)
        allk, _ = torch.sort(allk, dim=1)
        n_unique = (allk != _PAD_KEY).sum(dim=1)
        u = max(int(n_unique.max().item()) if n > 0 else 0, 1)
        ukeys = allk[:, :u].contiguous()
        valid = ukeys != _PAD_KEY
        # 3. per-segment lookup of each union token
        next_parts: list[torch.Tensor] = []
        any_counts = any(c.counts is not None for c in cands)
        counts = torch.zeros((n, u), dtype=torch.int64, device=device) if any_counts else None
        for (keys, nst, cnt), width in zip(sorted_parts, (
                b - a for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)),
                strict=True):
            f = keys.shape[1]
            idx = torch.searchsorted(keys.contiguous(), ukeys).clamp_(max=f - 1)
            hit = (torch.gather(keys, 1, idx) == ukeys) & valid
            ns = torch.gather(nst, 1, idx.unsqueeze(2).expand(-1, -1, width))
            ns = torch.where(hit.unsqueeze(2), ns, torch.full_like(ns, -1))
            next_parts.append(ns)
            if counts is not None and cnt is not None:
                counts += torch.where(hit, torch.gather(cnt, 1, idx), torch.zeros_like(idx))
        tokens = torch.where(valid, ukeys, torch.full_like(ukeys, -1))
        return Candidates(tokens, torch.cat(next_parts, dim=2), counts)
