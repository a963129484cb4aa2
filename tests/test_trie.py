"""CSR trie, UnionProvider and the segmented trie store against brute-force models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genseek.errors import GenseekError
from genseek.indexers.trie_store import TrieStore
from genseek.kernels.constraints import UnionProvider
from genseek.kernels.trie import TrieConstraint, build_trie, build_trie_flat

CPU = torch.device("cpu")
corpora = st.lists(st.lists(st.integers(0, 9), min_size=0, max_size=6), min_size=0,
                   max_size=30)


def _next_tokens(docs: dict[object, tuple[int, ...]], prefix: tuple[int, ...]) -> set[int]:
    n = len(prefix)
    return {s[n] for s in docs.values() if len(s) > n and s[:n] == prefix}


def _walk(provider, docs: dict[object, tuple[int, ...]], decode=None) -> int:
    """Breadth-first over every prefix reachable through ``provider``, all states of a level
    stepped in one batched call; each state's tokens, terminality and (optionally) decoded
    docs must equal the brute-force answers from ``docs``. Returns prefixes visited."""
    prefixes = [()]
    states = provider.root(1, CPU)
    seen = 0
    while prefixes:
        seen += len(prefixes)
        cand = provider.step(states)
        term = provider.is_terminal(states).tolist()
        nxt_p, nxt_s = [], []
        for i, prefix in enumerate(prefixes):
            toks = [t for t in cand.tokens[i].tolist() if t >= 0]
            assert len(toks) == len(set(toks))
            assert set(toks) == _next_tokens(docs, prefix), prefix
            owners = sorted(str(d) for d, s in docs.items() if s == prefix)
            assert term[i] == bool(owners)
            if decode is not None:
                assert sorted(decode(states[i].tolist())) == owners
            for j, t in enumerate(cand.tokens[i].tolist()):
                if t >= 0:
                    nxt_p.append(prefix + (t,))
                    nxt_s.append(cand.next_states[i, j])
        prefixes = nxt_p
        states = torch.stack(nxt_s) if nxt_s else states[:0]
    return seen


@settings(max_examples=60, deadline=None)
@given(corpus=corpora)
def test_trie_structure_equals_brute_force(corpus: list[list[int]]) -> None:
    trie = build_trie(corpus, 10)
    docs = {i: tuple(s) for i, s in enumerate(corpus)}
    prefixes = {s[:i] for s in docs.values() for i in range(len(s) + 1)} | {()}
    assert trie.num_nodes == len(prefixes)
    assert trie.num_docs == len(corpus)
    # children contiguous, sorted; edge e leads to node e + 1; each doc ends where it should
    for u in range(trie.num_nodes):
        toks, kids = trie.children(u)
        assert np.all(np.diff(toks) > 0)
        assert np.all(trie.parent[kids] == u)
    flat, off = trie.sequences(trie.doc_nodes())
    assert [tuple(flat[off[i]:off[i + 1]].tolist()) for i in range(len(corpus))] == \
        [tuple(s) for s in corpus]
    dup_groups = {}
    for i, s in docs.items():
        dup_groups.setdefault(s, []).append(i)
    for ids in dup_groups.values():
        node = trie.doc_nodes()[ids[0]]
        assert sorted(trie.docs_at(int(node)).tolist()) == ids  # duplicates map to all docs
    _walk(TrieConstraint(trie), {str(i): s for i, s in docs.items()})


@settings(max_examples=40, deadline=None)
@given(corpus=corpora, probes=st.lists(st.tuples(st.lists(st.integers(0, 9), max_size=5),
                                                 st.integers(0, 11)), max_size=30))
def test_advance_with_dense_tables_equals_brute_force(corpus, probes) -> None:
    trie = build_trie(corpus, 12)
    node_of = {}
    flat, off = trie.sequences(np.arange(trie.num_nodes))
    for v in range(trie.num_nodes):
        node_of[tuple(flat[off[v]:off[v + 1]].tolist())] = v
    nodes = np.array([node_of.get(tuple(p), -1) for p, _ in probes], dtype=np.int64)
    toks = np.array([t for _, t in probes], dtype=np.int64)
    got = trie.advance(nodes, toks)
    for i, (p, t) in enumerate(probes):
        want = node_of.get(tuple(p) + (t,), -1) if nodes[i] >= 0 else -1
        assert got[i] == want


def test_level2_table_and_binary_search_agree() -> None:
    rng = np.random.default_rng(0)
    corpus = [rng.integers(0, 50, size=rng.integers(1, 6)).tolist() for _ in range(300)]
    trie = build_trie(corpus, 50)
    assert trie.level2_table is not None
    nodes = rng.integers(-1, trie.num_nodes, size=2000)
    toks = rng.integers(0, 50, size=2000)
    with_tables = trie.advance(nodes, toks)
    plain = build_trie(corpus, 50)
    object.__setattr__(plain, "level2_table", None)
    assert np.array_equal(with_tables, plain.advance(nodes, toks))


@settings(max_examples=40, deadline=None)
@given(corpus=corpora, live=st.lists(st.booleans(), min_size=30, max_size=30))
def test_tombstone_pruning(corpus: list[list[int]], live: list[bool]) -> None:
    mask = np.array(live[:len(corpus)], dtype=bool)
    p = TrieConstraint(build_trie(corpus, 10), doc_live=mask)
    _walk(p, {str(i): tuple(s) for i, s in enumerate(corpus) if mask[i]})


@settings(max_examples=40, deadline=None)
@given(parts=st.lists(corpora, min_size=1, max_size=4))
def test_union_provider_equals_single_trie(parts: list[list[list[int]]]) -> None:
    union = UnionProvider([TrieConstraint(build_trie(c, 10)) for c in parts])
    docs = {f"{k}:{i}": tuple(s) for k, c in enumerate(parts) for i, s in enumerate(c)}
    _walk(union, docs)
    assert union.state_width == len(parts)


def test_build_rejects_bad_tokens() -> None:
    with pytest.raises(ValueError):
        build_trie([[1, 12]], 10)
    with pytest.raises(ValueError):
        build_trie_flat(np.array([1]), np.array([1, 0]), 10)


ops = st.lists(st.tuples(
    st.lists(st.tuples(st.sampled_from("abcdefghijkl"),
                       st.lists(st.integers(0, 7), min_size=1, max_size=5)), max_size=6),
    st.lists(st.sampled_from("abcdefghijkl"), max_size=4),
    st.booleans()), min_size=1, max_size=6)


@settings(max_examples=20, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batches=ops)
def test_store_segments_equal_fresh_rebuild(tmp_path_factory, batches) -> None:
    """main + deltas - tombstones answers (tokens, terminals, decoded docids) equal a brute
    force model and a freshly rebuilt single-segment store, also after reopen and merge."""
    root = tmp_path_factory.mktemp("ts")
    store = TrieStore.open(root / "s", vocab_size=8, max_segments=4)
    model: dict[str, tuple[int, ...]] = {}
    for upserts, deletes, merge in batches:
        store.update([(d, s) for d, s in upserts], deletes)
        for d in deletes:
            model.pop(d, None)
        for d, s in upserts:
            model[d] = tuple(s)
        if merge:
            store.merge()
        assert len(store.segments) <= 4
        assert dict(store.live_items()) == model
        if model:
            _walk(store.provider(), model, store.decode)
    reopened = TrieStore.open(root / "s")
    assert dict(reopened.live_items()) == model
    if model:
        _walk(reopened.provider(), model, reopened.decode)
        fresh = TrieStore.open(root / "fresh", vocab_size=8)
        fresh.update(sorted(model.items()))
        _walk(fresh.provider(), model, fresh.decode)
    reopened.merge()
    assert len(reopened.segments) <= 1
    assert dict(TrieStore.open(root / "s").live_items()) == model
    names = {p.name for p in (root / "s").iterdir()}
    manifest = json.loads((root / "s" / "store.json").read_text())
    assert names == {"store.json"} | {e["name"] for e in manifest["segments"]}


def test_store_bad_input_and_corruption(tmp_path: Path) -> None:
    store = TrieStore.open(tmp_path / "s", vocab_size=5)
    with pytest.raises(GenseekError, match="outside"):
        store.update([("x", [1, 9])])
    with pytest.raises(GenseekError, match="upsert #0"):
        store.update([(3, [1])])  # type: ignore[list-item]
    assert len(store) == 0 and store.segments == []
    store.update([("x", [1, 2]), ("y", [1])])
    with pytest.raises(GenseekError, match="vocab_size"):
        TrieStore.open(tmp_path / "s", vocab_size=6)
    with pytest.raises(GenseekError, match="no trie store"):
        TrieStore.open(tmp_path / "nothing")
    seg = store.segments[0].name
    (tmp_path / "s" / seg / "header.json").write_text("{not json")
    with pytest.raises(GenseekError, match="header.json"):
        TrieStore.open(tmp_path / "s")
