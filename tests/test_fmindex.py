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


# ---------------------------------------------------------------------------------------------
# the index


@SETTINGS
@given(corpora)
def test_index_answers_equal_brute_force(case):
    vocab, docs, rate, seed = case
    index = FMIndex.build(docs, vocab, sample_rate=rate)
    rng = np.random.default_rng(seed)
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
@given(corpora)
def test_batched_queries_equal_one_by_one(case):
    vocab, docs, rate, seed = case
    index = FMIndex.build(docs, vocab, sample_rate=rate)
    rng = np.random.default_rng(seed)
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
@given(corpora)
def test_provider_steps_follow_the_corpus(case):
    vocab, docs, rate, seed = case
    provider = FMIndexProvider(FMIndex.build(docs, vocab, sample_rate=rate))
    rng = np.random.default_rng(seed)
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
# the store: main + deltas - tombstones


def ops_strategy():
    doc = st.lists(st.integers(0, 7), min_size=1, max_size=10)
    op = st.one_of(
        st.tuples(st.just("add"), st.lists(st.tuples(st.sampled_from("abcdefgh"), doc),
                                           min_size=1, max_size=4)),
        st.tuples(st.just("del"), st.lists(st.sampled_from("abcdefghz"), min_size=1,
                                           max_size=3)))
    return st.lists(op, min_size=1, max_size=5)


def apply_ops(store: FMStore, ops) -> dict[str, list[int]]:
    live: dict[str, list[int]] = {}
    for kind, arg in ops:
        if kind == "add":
            store.add(arg)
            for d, toks in arg:
                live[d] = list(toks)
        else:
            store.delete(arg)
            for d in arg:
                live.pop(d, None)
    return live


def assert_same_answers(a: FMStore, b: FMStore, live: dict[str, list[int]], rng) -> None:
    docs = list(live.values())
    ids = list(live)
    assert sorted(d for d, _ in a.documents()) == sorted(ids)
    assert a.next_tokens([]) == b.next_tokens([]) == brute_next(docs, [])
    for g in probe_ngrams(docs, 8, rng, n=15):
        assert a.count(g) == b.count(g) == brute_count(docs, g)
        assert a.next_tokens(g) == b.next_tokens(g) == brute_next(docs, g)
        expected = {ids[i]: c for i, c in brute_locate(docs, g).items()}
        assert a.locate(g) == b.locate(g) == expected


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops_strategy(), st.integers(0, 2**31 - 1))
def test_store_with_deltas_and_tombstones_equals_fresh_rebuild(ops, seed):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        store = FMStore.create(Path(tmp) / "s", 8, sample_rate=3)
        live = apply_ops(store, ops)
        fresh = FMStore.create(Path(tmp) / "f", 8, sample_rate=5)
        if live:
            fresh.add(list(live.items()))
        assert len(store) == len(live)
        if not live:
            assert store.provider().step(store.provider().root(2, None)).tokens.eq(-1).all()
            return
        assert_same_answers(store, fresh, live, rng)
        walk(store.provider(), list(live.values()), rng)
        reopened = FMStore.open(Path(tmp) / "s", verify=True)
        assert_same_answers(reopened, fresh, live, rng)
        store.merge()
        assert len(store.segments) == 1 and store.dead is None
        assert sorted(p.name for p in (Path(tmp) / "s").iterdir()) == \
            sorted([store.segments[0].name, "store.json"])
        assert_same_answers(store, fresh, live, rng)


def test_upsert_tombstones_old_copy_and_counts_are_exact(tmp_path):
    store = FMStore.create(tmp_path / "s", 10)
    store.add([("a", [1, 2, 3, 1, 2]), ("b", [1, 2, 9])])
    store.add([("a", [4, 1, 2])])          # replaces a: old copy tombstoned in segment 1
    assert store.count([1, 2]) == 2
    assert store.locate([1, 2]) == {"a": 1, "b": 1}
    assert store.next_tokens([1, 2]) == {9: 1}
    store.delete(["b", "nope"])
    assert store.count([1, 2]) == 1
    assert store.next_tokens([1, 2]) == {}
    provider = store.provider()
    assert provider.state_width == 2 * 2 + 2
    walk(provider, [[4, 1, 2]], np.random.default_rng(0), n_states=3, steps=4)
    stats = store.stats()
    assert stats["documents"] == 1 and stats["tombstoned_documents"] == 2


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


def test_bad_store_input_writes_nothing(tmp_path):
    store = FMStore.create(tmp_path / "s", 6)
    store.add([("a", [1, 2])])
    before = sorted(p.name for p in (tmp_path / "s").iterdir())
    head = (tmp_path / "s" / "store.json").read_text()
    for bad, msg in [([("b", [1]), ("c", [6])], "'c': token id 6 is out of range"),
                     ([("b", [])], "'b' has no tokens"), ([("", [1])], "non-empty string"),
                     ([("b", ["x"])], "must be integers"), (["b"], "pair")]:
        with pytest.raises(GenseekError, match=msg):
            store.add(bad)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == before
    assert (tmp_path / "s" / "store.json").read_text() == head
    with pytest.raises(GenseekError, match="already exists"):
        FMStore.create(tmp_path / "s", 6)
    with pytest.raises(GenseekError, match="missing"):
        FMStore.open(tmp_path / "nothing")


def test_corrupted_or_truncated_files_are_clear_errors(tmp_path):
    store = FMStore.create(tmp_path / "s", 6)
    store.add([("a", [1, 2, 3] * 50), ("b", [3, 2, 1] * 40)])
    seg = tmp_path / "s" / store.segments[0].name
    words = seg / "index" / "wm_words.npy"
    raw = words.read_bytes()
    # a flipped bit: only the checksum sees it
    flipped = bytearray(raw)
    flipped[-3] ^= 0x10
    words.write_bytes(bytes(flipped))
    FMStore.open(tmp_path / "s")
    with pytest.raises(GenseekError, match="wm_words.npy: checksum mismatch"):
        FMStore.open(tmp_path / "s", verify=True)
    # a truncated array
    words.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(GenseekError, match="wm_words.npy: unreadable or truncated"):
        FMStore.open(tmp_path / "s")
    words.write_bytes(raw)
    FMStore.open(tmp_path / "s", verify=True)
    # a broken header, a missing array, broken ids, a broken store.json
    head = seg / "index" / "header.json"
    good = head.read_text()
    head.write_text(good[:40])
    with pytest.raises(GenseekError, match="header.json: unreadable FM-index header"):
        FMStore.open(tmp_path / "s")
    meta = json.loads(good)
    meta["arrays"]["C"]["shape"] = [3]
    head.write_text(json.dumps(meta))
    with pytest.raises(GenseekError, match="C.npy: shape"):
        FMStore.open(tmp_path / "s")
    head.write_text(good)
    (seg / "index" / "samples.npy").unlink()
    with pytest.raises(GenseekError, match="samples.npy: missing"):
        FMStore.open(tmp_path / "s")
    (tmp_path / "s" / "store.json").write_text("{not json")
    with pytest.raises(GenseekError, match="store.json: unreadable"):
        FMStore.open(tmp_path / "s")


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
    store = FMStore.create(tmp_path / "s", vocab, sample_rate=4)
    store.add([(f"m{i}", rng.integers(3, vocab, 12).tolist()) for i in range(6)])
    store.add([(f"d{i}", rng.integers(3, vocab, 9).tolist()) for i in range(3)])
    store.delete(["m1", "d0"])
    live = [t.tolist() for _, t in store.documents()]
    res = constrained_beam_search(model, torch.tensor([[5, 6, 7], [8, 9, 10]]), None,
                                  store.provider(), num_beams=4, max_new_tokens=4,
                                  count_threshold=1, keep_partials=True)
    seen = 0
    for hyps in res.hypotheses + res.partials:
        for h in hyps:
            assert h.tokens and brute_count(live, list(h.tokens)) == h.count > 0
            seen += 1
    assert seen > 8
