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


# ---------------------------------------------------------------------------------------------
# the trie store: main + delta - tombstones, committed


ops = st.lists(st.tuples(
    st.lists(st.tuples(st.integers(0, 11), st.lists(st.integers(0, 7), min_size=1, max_size=5)),
             max_size=6),
    st.lists(st.integers(0, 12), max_size=4),
    st.sampled_from(["none", "merge", "commit", "reopen"])), min_size=1, max_size=7)


def _check(store: TrieStore, model: dict[int, tuple[int, ...]]) -> None:
    """The store's live items, size, membership and constraint equal the brute-force model."""
    assert {v: tuple(t.tolist()) for v, t in store.items()} == model
    assert len(store) == len(model)
    assert all(v in store for v in model) and 12 not in store
    if store.delta is not None:
        assert store.main is not None and store.delta.n_docs <= store.merge_docs
    assert np.count_nonzero(store.dead) <= 0.2 * max(store.main.n_docs if store.main else 0, 1)
    if not model:
        assert store.provider() is None
        return
    docs = {str(v): s for v, s in model.items()}
    _walk(store.provider(), docs, lambda state: [str(v) for v in store.decode(state)])


@settings(max_examples=25, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batches=ops)
def test_store_segments_equal_fresh_rebuild(tmp_path_factory, batches) -> None:
    """main + delta - tombstones answers (tokens, terminals, decoded labels) equal a brute
    force model after every update, merge, commit and reopen, and equal a store built in one
    batch; only what ``store.json`` names stays on disk."""
    root = tmp_path_factory.mktemp("ts")
    store = TrieStore.open(root / "s", 8, merge_docs=3)
    model: dict[int, tuple[int, ...]] = {}
    for seq, (upserts, deletes, action) in enumerate(batches, start=1):
        store.update(upserts, deletes)
        for v in deletes:
            model.pop(v, None)
        for v, s in upserts:
            model[v] = tuple(s)
        if action == "merge":
            store.merge()
            assert store.delta is None and not store.dead.any()
        if action in ("commit", "reopen"):
            store.commit(seq)
        if action == "reopen":
            store = TrieStore.open(root / "s", 8, merge_docs=3)
            assert store.seq == seq
        _check(store, model)
    store.commit(len(batches) + 1)
    reopened = TrieStore.open(root / "s", 8, merge_docs=3)
    assert reopened.seq == len(batches) + 1
    _check(reopened, model)
    fresh = TrieStore.open(root / "fresh", 8)
    fresh.reset(model.items())
    assert fresh.delta is None
    _check(fresh, model)
    reopened.merge()
    reopened.commit(99)
    _check(TrieStore.open(root / "s", 8), model)
    names = {p.name for p in (root / "s").iterdir()}
    manifest = json.loads((root / "s" / "store.json").read_text())
    assert names == {"store.json"} | {manifest[r] for r in ("main", "delta", "tombstones")
                                      if manifest[r]}


def test_store_update_policy(tmp_path: Path) -> None:
    """The first batch is the main segment; later ones go to the delta; deletes and
    replacements of main documents are tombstones; a delta over merge_docs or tombstones over
    20% of the main segment merge."""
    store = TrieStore.open(tmp_path / "s", 10, merge_docs=2)
    store.update([(i, [1, i % 7, 2]) for i in range(10)])
    assert (store.stats(), store.delta) == ({"main_docs": 10, "delta_docs": 0,
                                             "tombstones": 0}, None)
    store.update([(20, [3])])
    assert store.stats() == {"main_docs": 10, "delta_docs": 1, "tombstones": 0}
    store.update([(3, [9, 9])], deletes=[20, 4])  # 3 replaced, 4 and delta doc 20 deleted
    assert store.stats() == {"main_docs": 10, "delta_docs": 1, "tombstones": 2}
    assert dict((v, t.tolist()) for v, t in store.items())[3] == [9, 9] and 4 not in store
    store.update([(21, [4]), (22, [5])])  # the delta would hold 3 > 2: merge
    assert store.stats() == {"main_docs": 11, "delta_docs": 0, "tombstones": 0}
    store.update(deletes=[0, 1])  # 2 of 11: tombstones
    assert store.stats()["tombstones"] == 2
    store.update(deletes=[2, 77])  # 3 of 11 > 20%: merge (77 is unknown: ignored)
    assert store.stats() == {"main_docs": 8, "delta_docs": 0, "tombstones": 0}
    before = store.stats()
    store.update(deletes=[77])  # nothing changes
    assert store.stats() == before


def test_store_commit_is_atomic(tmp_path: Path, monkeypatch) -> None:
    """A commit that fails half-way leaves the last committed state on disk (and nothing
    else once reopened); until a commit, nothing of an update is on disk."""
    store = TrieStore.open(tmp_path / "s", 10, merge_docs=5)
    store.update([(1, [1, 2]), (2, [1, 3])])
    store.commit(1)
    head = (tmp_path / "s" / "store.json").read_text()
    store.update([(3, [4])], deletes=[1])
    assert (tmp_path / "s" / "store.json").read_text() == head
    assert TrieStore.open(tmp_path / "s", 10).seq == 1  # reopening drops the update

    calls = []

    def failing(data, folder):
        calls.append(folder)
        (folder / "indptr.npy").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(TrieStore, "save_data", staticmethod(failing))
    store.update([(4, [5])])
    with pytest.raises(OSError, match="disk full"):
        store.commit(2)
    monkeypatch.undo()
    assert calls and (tmp_path / "s" / "store.json").read_text() == head
    back = TrieStore.open(tmp_path / "s", 10)
    assert back.seq == 1 and {v for v, _ in back.items()} == {1, 2}
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["main_000001", "store.json"]
    store.commit(2)  # the same store commits fine afterwards
    back = TrieStore.open(tmp_path / "s", 10)
    assert back.seq == 2 and {v for v, _ in back.items()} == {2, 3, 4}


def test_store_bad_input_and_corruption(tmp_path: Path) -> None:
    store = TrieStore.open(tmp_path / "s", 5)
    for bad, msg in [([(1, [1, 9])], "token id 9 is outside"), ([("x", [1])], "integer"),
                     ([(1, [])], "has no tokens"), ([(1, [1.5])], "must be integers"),
                     ([3], "upsert #0")]:
        with pytest.raises(GenseekError, match=msg):
            store.update(bad)  # type: ignore[arg-type]
    with pytest.raises(GenseekError, match="integer"):
        store.update(deletes=["x"])  # type: ignore[list-item]
    assert len(store) == 0 and store.main is None and store.provider() is None
    store.update([(1, [1, 2]), (2, [1])])
    store.commit(1)
    with pytest.raises(GenseekError, match="vocab_size"):
        TrieStore.open(tmp_path / "s", 6)
    seg = tmp_path / "s" / store.main.name
    (seg / "header.json").write_text("{not json")
    with pytest.raises(GenseekError, match="header.json"):
        TrieStore.open(tmp_path / "s", 5)
    (tmp_path / "s" / "store.json").write_text("{not json")
    with pytest.raises(GenseekError, match="store.json: unreadable"):
        TrieStore.open(tmp_path / "s", 5)
