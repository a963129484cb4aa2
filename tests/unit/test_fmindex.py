"""FM-index (kernels/fmindex.py) and its segmented store (indexers/fm_store.py).

Every answer is checked against a brute-force scan of the corpus, on random corpora and
vocabularies drawn by hypothesis.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genseek.errors import GenseekError
from genseek.indexers.fm_store import FMStore
from genseek.kernels.fmindex import FMIndex, FMIndexProvider, below_count_threshold, fm_state_counts

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# brute force


def brute_count(docs, ngram) -> int:
    k = len(ngram)
    return sum(1 for d in docs for j in range(len(d) - k + 1) if list(d[j:j + k]) == ngram)


def brute_locate(docs, ngram) -> dict[int, int]:
    out: dict[int, int] = {}
    k = len(ngram)
    for i, d in enumerate(docs):
        c = sum(1 for j in range(len(d) - k + 1) if list(d[j:j + k]) == ngram)
        if c:
            out[i] = c
    return out


def brute_next(docs, ngram) -> dict[int, int]:
    out: dict[int, int] = {}
    k = len(ngram)
    for d in docs:
        for j in range(len(d) - k):
            if list(d[j:j + k]) == ngram:
                t = int(d[j + k])
                out[t] = out.get(t, 0) + 1
    return dict(sorted(out.items()))


def probe_ngrams(docs, vocab, rng, n=25) -> list[list[int]]:
    """Substrings of the corpus (present) and random n-grams (mostly absent)."""
    out = []
    nonempty = [d for d in docs if len(d)]
    for _ in range(n):
        if nonempty and rng.random() < 0.7:
            d = nonempty[rng.integers(len(nonempty))]
            j = int(rng.integers(len(d)))
            k = int(rng.integers(1, min(4, len(d) - j) + 1))
            out.append([int(t) for t in d[j:j + k]])
        else:
            out.append([int(t) for t in rng.integers(0, vocab, rng.integers(1, 4))])
    return out


corpora = st.integers(1, 12).flatmap(lambda v: st.tuples(
    st.just(v),
    st.lists(st.lists(st.integers(0, v - 1), min_size=0, max_size=14), min_size=1, max_size=8)
    .filter(lambda ds: any(ds)),
    st.integers(1, 7),
    st.integers(0, 2**31 - 1)))


def _built(case):
    vocab, docs, rate, seed = case
    return FMIndex.build(docs, vocab, sample_rate=rate), docs, vocab, np.random.default_rng(seed)


built = corpora.map(_built)  # (index, docs, vocab, rng)


# ---------------------------------------------------------------------------------------------
# the index


@SETTINGS
@given(built)
def test_index_answers_equal_brute_force(case):
    index, docs, vocab, rng = case
    assert index.count([]) == sum(len(d) for d in docs)
    for ngram in probe_ngrams(docs, vocab, rng):
        assert index.count(ngram) == brute_count(docs, ngram)
        lo, hi = index.interval(ngram)
        d, occ = index.locate_docs(lo, hi)
        assert dict(zip(d.tolist(), occ.tolist(), strict=True)) == brute_locate(docs, ngram)
        nt = index.next_tokens(np.array([lo]), np.array([hi]))
        assert dict(zip(nt.token.tolist(), nt.count.tolist(), strict=True)) == \
            brute_next(docs, ngram)
        for t, a, b in zip(nt.token.tolist(), nt.lo.tolist(), nt.hi.tolist(), strict=True):
            assert index.interval(ngram + [t]) == (a, b)
    root = index.next_tokens(np.array([0]), np.array([index.n]))
    assert dict(zip(root.token.tolist(), root.count.tolist(), strict=True)) == brute_next(docs, [])
    for i, d in enumerate(docs):
        assert index.document(i).tolist() == list(d)


@SETTINGS
@given(built)
def test_batched_queries_equal_one_by_one(case):
    index, docs, vocab, rng = case
    grams = probe_ngrams(docs, vocab, rng, n=12)
    ivals = [index.interval(g) for g in grams] + [index.root, (-1, -1)]
    lo = np.array([a for a, _ in ivals])
    hi = np.array([b for _, b in ivals])
    nt = index.next_tokens(lo, hi)
    assert np.all(np.diff(nt.rid) >= 0)
    for r, (a, b) in enumerate(ivals):
        one = index.next_tokens(np.array([a]), np.array([b]))
        sel = nt.rid == r
        assert nt.token[sel].tolist() == one.token.tolist()
        assert nt.count[sel].tolist() == one.count.tolist()
    toks = rng.integers(0, vocab, lo.size)
    new_lo, new_hi = index.extend(lo, hi, toks)
    for r, g in enumerate(grams):
        assert max(0, int(new_hi[r] - new_lo[r])) == brute_count(docs, g + [int(toks[r])])


def test_large_vocabulary_uses_wide_symbols():
    docs = [[69_999, 0, 65_536, 5], [65_536, 5, 65_536, 5, 7]]
    index = FMIndex.build(docs, 70_000, sample_rate=2)
    assert index.text.dtype == np.uint32
    assert index.count([65_536, 5]) == 3
    lo, hi = index.interval([5])
    nt = index.next_tokens(np.array([lo]), np.array([hi]))
    assert dict(zip(nt.token.tolist(), nt.count.tolist(), strict=True)) == {65_536: 1, 7: 1}


# ---------------------------------------------------------------------------------------------
# the provider


def walk(provider, live_docs, rng, n_states=6, steps=6):
    """Random walks through the provider: every key is a live substring with the right count."""
    states = provider.root(n_states, torch.device("cpu"))
    assert not provider.is_terminal(states).any()
    keys: list[list[int]] = [[] for _ in range(n_states)]
    for _ in range(steps):
        cand = provider.step(states)
        assert cand.tokens.shape[:1] == (n_states,)
        assert cand.next_states.shape[2] == provider.state_width
        nxt = []
        for r in range(n_states):
            row = cand.tokens[r]
            valid = (row >= 0).nonzero().flatten().tolist()
            got = {int(row[i]): int(cand.counts[r, i]) for i in valid}
            assert len(got) == len(valid)
            expected = brute_next(live_docs, keys[r])
            assert got == expected, (keys[r], got, expected)
            if valid:
                i = valid[int(rng.integers(len(valid)))]
                keys[r] = keys[r] + [int(row[i])]
                nxt.append(cand.next_states[r, i])
            else:
                nxt.append(states[r])
        states = torch.stack(nxt)
        term = provider.is_terminal(states)
        for r in range(n_states):
            assert bool(term[r]) == (len(keys[r]) > 0)
            if keys[r]:
                assert brute_count(live_docs, keys[r]) > 0
    return keys


@SETTINGS
@given(built)
def test_provider_steps_follow_the_corpus(case):
    index, docs, _, rng = case
    provider = FMIndexProvider(index)
    for k in walk(provider, docs, rng):
        if k:
            lo, hi = provider.index.interval(k)
            assert int(provider.state_counts(torch.tensor([[lo, hi]]))[0]) == \
                brute_count(docs, k)


def test_count_threshold_helper():
    counts = torch.tensor([[0, 1, 3, 5], [2, 0, 9, 4]])
    assert below_count_threshold(counts, 3).tolist() == [[False, True, True, False],
                                                         [True, False, False, False]]
    states = torch.tensor([[2, 5, -1, -1], [0, 1, 4, 6]])
    assert fm_state_counts(states).tolist() == [3, 3]


# ---------------------------------------------------------------------------------------------
# the store: main + delta - tombstones, committed


def ops_strategy():
    doc = st.lists(st.integers(0, 7), min_size=1, max_size=10)
    op = st.one_of(
        st.tuples(st.just("add"), st.lists(st.tuples(st.integers(0, 7), doc),
                                           min_size=1, max_size=4)),
        st.tuples(st.just("del"), st.lists(st.integers(0, 9), min_size=1, max_size=3)),
        st.tuples(st.just("commit"), st.none()), st.tuples(st.just("reopen"), st.none()))
    return st.lists(op, min_size=1, max_size=6)


def apply_ops(store: FMStore, ops) -> tuple[FMStore, dict[int, list[int]]]:
    """Run ``ops`` (add, delete, commit, commit + reopen); returns the store and the live
    documents a brute-force model holds."""
    live: dict[int, list[int]] = {}
    for seq, (kind, arg) in enumerate(ops, start=1):
        if kind == "add":
            store.update(arg)
            for d, toks in arg:
                live[d] = list(toks)
        elif kind == "del":
            store.update(deletes=arg)
            for d in arg:
                live.pop(d, None)
        else:
            store.commit(seq)
            if kind == "reopen":
                store = FMStore.open(store.path, 8, merge_docs=store.merge_docs, verify=True)
                assert store.seq == seq
    return store, live


def provider_next(provider, ngram) -> dict[int, int]:
    """``{token: count}`` the provider offers after stepping through ``ngram`` from the root
    (empty when a token of ``ngram`` is not offered on the way)."""
    state = provider.root(1, torch.device("cpu"))
    for t in ngram:
        cand = provider.step(state)
        row = cand.tokens[0].tolist()
        if t not in row:
            return {}
        state = cand.next_states[0, row.index(t)].unsqueeze(0)
    cand = provider.step(state)
    return {int(t): int(c) for t, c in zip(cand.tokens[0].tolist(), cand.counts[0].tolist(),
                                           strict=True) if t >= 0}


def assert_answers(store: FMStore, live: dict[int, list[int]], rng) -> None:
    """Counts, located labels, next tokens (through the provider), corpus size and the
    tokens present equal brute force over the live documents."""
    docs, labels = list(live.values()), list(live)
    assert {v: t.tolist() for v, t in store.items()} == live and len(store) == len(live)
    assert store.total_tokens == sum(len(d) for d in docs)
    assert store.present().tolist() == [any(t in d for d in docs) for t in range(8)]
    provider = store.provider()
    assert provider_next(provider, []) == brute_next(docs, [])
    for g in probe_ngrams(docs, 8, rng, n=15):
        assert store.count(g) == brute_count(docs, g)
        assert provider_next(provider, g) == brute_next(docs, g)
        assert store.locate(g).tolist() == sorted(labels[i] for i in brute_locate(docs, g))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops_strategy(), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_store_with_delta_and_tombstones_equals_fresh_rebuild(ops, merge_docs, seed):
    """After any adds, deletes, commits and reopens the store answers like brute force and
    like a store built in one batch, with at most a main and a delta segment."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        store = FMStore.open(Path(tmp) / "s", 8, merge_docs=merge_docs, sample_rate=3)
        store, live = apply_ops(store, ops)
        assert len(store.segments) <= 2 and (store.delta is None or store.main is not None)
        if not live:
            assert store.provider() is None and len(store) == 0 and store.total_tokens == 0
            return
        assert_answers(store, live, rng)
        walk(store.provider(), list(live.values()), rng)
        fresh = FMStore.open(Path(tmp) / "f", 8, sample_rate=5)
        fresh.reset(live.items())
        assert_answers(fresh, live, rng)
        store.commit(100)
        assert_answers(FMStore.open(Path(tmp) / "s", 8, verify=True), live, rng)
        store.merge()
        assert store.delta is None and store.tombstone_index() is None
        store.commit(101)
        assert sorted(p.name for p in (Path(tmp) / "s").iterdir()) == \
            sorted([store.main.name, "store.json"])
        assert_answers(store, live, rng)


def test_upsert_tombstones_old_copy_and_counts_are_exact(tmp_path):
    store = FMStore.open(tmp_path / "s", 10)
    store.update([(i, [5, 6, 7, i % 3]) for i in range(8)] + [(10, [1, 2, 3, 1, 2]),
                                                             (11, [1, 2, 9])])
    store.update([(10, [4, 1, 2])])        # replaces 10: the old copy is tombstoned
    assert store.stats() == {"main_docs": 10, "delta_docs": 1, "tombstones": 1,
                             "corpus_tokens": 32 + 3 + 3}
    assert store.count([1, 2]) == 2 and store.locate([1, 2]).tolist() == [10, 11]
    assert provider_next(store.provider(), [1, 2]) == {9: 1}
    store.update(deletes=[11, 99])
    assert store.count([1, 2]) == 1 and store.count([9]) == 0
    assert provider_next(store.provider(), [1, 2]) == {}
    assert not store.present()[9] and store.present()[4]
    provider = store.provider()
    assert provider.state_width == 2 * 2 + 2
    live = [t.tolist() for _, t in store.items()]
    walk(provider, live, np.random.default_rng(0), n_states=3, steps=4)
    store.commit(7)
    manifest = json.loads((tmp_path / "s" / "store.json").read_text())
    assert (tmp_path / "s" / manifest["tombstones"] / "index" / "header.json").is_file()
    back = FMStore.open(tmp_path / "s", 10, verify=True)
    assert back.stats() == store.stats() and back.tombstone_index() is not None
    assert back.count([1, 2]) == 1 and provider_next(back.provider(), [1, 2]) == {}
    walk(back.provider(), live, np.random.default_rng(1), n_states=3, steps=4)


# ---------------------------------------------------------------------------------------------
# persistence


@settings(max_examples=10, deadline=None)
@given(corpora)
def test_index_persistence_round_trips_exactly(case):
    vocab, docs, rate, _ = case
    index = FMIndex.build(docs, vocab, sample_rate=rate)
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp) / "ix")
        for mmap in (True, False):
            back = FMIndex.load(Path(tmp) / "ix", mmap=mmap, verify=True)
            for name, arr in index._arrays().items():
                other = back._arrays()[name]
                assert other.dtype == arr.dtype and np.array_equal(other, arr), name
            assert (back.n, back.n_docs, back.vocab_size, back.sample_rate) == \
                (index.n, index.n_docs, index.vocab_size, index.sample_rate)


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_build_input_is_a_clear_error():
    with pytest.raises(GenseekError, match="empty corpus"):
        FMIndex.build([], 5)
    with pytest.raises(GenseekError, match="empty corpus"):
        FMIndex.build([[], []], 5)
    with pytest.raises(GenseekError, match=r"token id 5 in document 1 is out of range \[0, 5\)"):
        FMIndex.build([[1], [2, 5]], 5)
    with pytest.raises(GenseekError, match="token id -1"):
        FMIndex.build([[-1]], 5)
    with pytest.raises(GenseekError, match="vocab_size"):
        FMIndex.build([[0]], 0)
    with pytest.raises(GenseekError, match="not a sequence of integer"):
        FMIndex.build([["x"]], 5)
    index = FMIndex.build([[1, 2]], 5)
    with pytest.raises(GenseekError, match="out of range"):
        index.count([7])


def test_bad_store_input_changes_nothing(tmp_path):
    store = FMStore.open(tmp_path / "s", 6)
    store.update([(1, [1, 2])])
    store.commit(1)
    before = sorted(p.name for p in (tmp_path / "s").iterdir())
    head = (tmp_path / "s" / "store.json").read_text()
    for bad, msg in [([(2, [1]), (3, [6])], "label 3: token id 6 is outside"),
                     ([(2, [])], "label 2 has no tokens"), ([("b", [1])], "integer"),
                     ([(2, ["x"])], "must be integers"), ([2], "pair")]:
        with pytest.raises(GenseekError, match=msg):
            store.update(bad)
        assert {v for v, _ in store.items()} == {1}
    store.commit(2)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == before
    assert json.loads((tmp_path / "s" / "store.json").read_text())["main"] == \
        json.loads(head)["main"]
    with pytest.raises(GenseekError, match="vocab_size"):
        FMStore.open(tmp_path / "s", 7)
    with pytest.raises(GenseekError, match="sample_rate"):
        FMStore.open(tmp_path / "t", 6, sample_rate=0)


def test_corrupted_or_truncated_files_are_clear_errors(tmp_path):
    store = FMStore.open(tmp_path / "s", 6)
    store.update([(1, [1, 2, 3] * 50), (2, [3, 2, 1] * 40)])
    store.commit(1)
    seg = tmp_path / "s" / store.main.name
    words = seg / "index" / "wm_words.npy"
    raw = words.read_bytes()
    # a flipped bit: only the checksum sees it
    flipped = bytearray(raw)
    flipped[-3] ^= 0x10
    words.write_bytes(bytes(flipped))
    FMStore.open(tmp_path / "s", 6)
    with pytest.raises(GenseekError, match="wm_words.npy: checksum mismatch"):
        FMStore.open(tmp_path / "s", 6, verify=True)
    # a truncated array
    words.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(GenseekError, match="wm_words.npy: unreadable or truncated"):
        FMStore.open(tmp_path / "s", 6)
    words.write_bytes(raw)
    FMStore.open(tmp_path / "s", 6, verify=True)
    # a broken header, a missing array, broken labels, a broken store.json
    head = seg / "index" / "header.json"
    good = head.read_text()
    head.write_text(good[:40])
    with pytest.raises(GenseekError, match="header.json: unreadable FM-index header"):
        FMStore.open(tmp_path / "s", 6)
    meta = json.loads(good)
    meta["arrays"]["C"]["shape"] = [3]
    head.write_text(json.dumps(meta))
    with pytest.raises(GenseekError, match="C.npy: shape"):
        FMStore.open(tmp_path / "s", 6)
    head.write_text(good)
    np.save(seg / "labels.npy", np.array([2, 1]))
    with pytest.raises(GenseekError, match="labels.npy: expected 2 ascending"):
        FMStore.open(tmp_path / "s", 6)
    (seg / "index" / "samples.npy").unlink()
    with pytest.raises(GenseekError, match="samples.npy: missing"):
        FMStore.open(tmp_path / "s", 6)
    (tmp_path / "s" / "store.json").write_text("{not json")
    with pytest.raises(GenseekError, match="store.json: unreadable"):
        FMStore.open(tmp_path / "s", 6)


@pytest.mark.slow
def test_beam_search_over_a_segmented_store_decodes_live_substrings(tmp_path):
    """The store's provider (main + delta + tombstones) drives the real beam search: every
    complete and partial hypothesis is a live n-gram, with its live count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from genseek.kernels.beam import constrained_beam_search

    vocab = 24
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=0)).eval()
    rng = np.random.default_rng(3)
    store = FMStore.open(tmp_path / "s", vocab, sample_rate=4)
    store.update([(i, rng.integers(3, vocab, 12).tolist()) for i in range(6)])
    store.update([(10 + i, rng.integers(3, vocab, 9).tolist()) for i in range(3)])
    store.update(deletes=[1, 10])
    assert store.delta is not None and store.dead.any()
    live = [t.tolist() for _, t in store.items()]
    res = constrained_beam_search(model, torch.tensor([[5, 6, 7], [8, 9, 10]]), None,
                                  store.provider(), num_beams=4, max_new_tokens=4,
                                  count_threshold=1, keep_partials=True)
    seen = 0
    for hyps in res.hypotheses + res.partials:
        for h in hyps:
            assert h.tokens and brute_count(live, list(h.tokens)) == h.count > 0
            seen += 1
    assert seen > 8
