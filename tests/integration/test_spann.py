"""SPANN: kernels, the engine (recall, updates, deletes, persistence, bad input), the index type,
background rebalancing (splits without being asked, concurrent searches, close/crash/failure)."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import faiss
import numpy as np
import pytest

from genseek.errors import GenseekError
from genseek.indexers.spann import SpannEngine, SpannIndex
from genseek.kernels import spann as K
from genseek.params import DenseSearchParams, SpannSearchParams
from genseek.protocols import VectorSearch
from genseek.types import ChangeSet, Document

DIM = 32


def clustered(n: int, seed: int, centres: int = 60, noise: float = 0.35) -> np.ndarray:
    """``[n, DIM]`` float32 points around fixed random centres (same centres for all seeds)."""
    c = np.random.default_rng(1234).normal(size=(centres, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    return (c[rng.integers(centres, size=n)] + noise * rng.normal(size=(n, DIM))).astype(np.float32)


def exact_topk(x: np.ndarray, labels: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    _, idx = flat.search(q, k)
    return labels[idx]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def data():
    return clustered(4000, 0), clustered(100, 1)


def build(path: Path, x: np.ndarray, **params) -> SpannEngine:
    eng = SpannEngine(path, DIM, {"head_ratio": 0.1, "posting_cap": 48, **params})
    eng.build(x, np.arange(len(x), dtype=np.int64) * 7 + 3)
    return eng


# -- kernels ---------------------------------------------------------------------------------


def test_rng_rule_rejects_a_head_behind_a_kept_one():
    # vector at 0; heads at 1 (kept), 2 (behind head 1: ||h2-h1|| = 1 < ||x-h2|| = 2), -1.5
    heads = np.array([[1.0], [2.0], [-1.5]], np.float32)
    cand = np.array([[0, 1, 2]])
    d2 = np.array([[1.0, 4.0, 2.25]], np.float32)
    out = K.rng_assign(cand, d2, heads[cand], max_replicas=3, rng_factor=1.0)
    assert out.tolist() == [[0, 2, -1]]
    # a large factor relaxes the rule: every candidate is kept
    assert K.rng_assign(cand, d2, heads[cand], 3, rng_factor=10.0).tolist() == [[0, 1, 2]]
    assert K.rng_assign(cand, d2, heads[cand], 1).tolist() == [[0]]


def test_prune_heads_and_cap_and_two_means():
    mask = K.prune_heads(np.array([[1.0, 3.9, 4.1, np.inf]]), eps=1.0)  # dist 1, 1.97, 2.02
    assert mask.tolist() == [[True, True, False, False]]
    keep = K.cap_postings(np.array([0, 1, 2, 3]), np.array([5, 5, 5, 5]),
                          np.array([0.1, 0.5, 0.2, 0.9]), np.array([False, False, False, True]), 2)
    assert keep.tolist() == [True, False, False, True]  # the primary first, then the closest
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(50, 4)) - 5, rng.normal(size=(50, 4)) + 5])
    cents, lab = K.two_means(x.astype(np.float32))
    assert len(set(lab[:50])) == 1 and len(set(lab[50:])) == 1 and lab[0] != lab[-1]
    m = K.split_reassign_mask(np.array([[0.0], [3.0]], np.float32), np.array([0.0], np.float32),
                              np.array([[2.0], [4.0]], np.float32))
    assert m.tolist() == [True, False]


def test_hierarchical_heads_ratio(data):
    x, _ = data
    heads = K.hierarchical_heads(x, 0.1)
    assert 0.05 * len(x) <= len(heads) <= 0.2 * len(x)
    assert len(np.unique(heads)) == len(heads)


# -- engine ----------------------------------------------------------------------------------


def test_recall_against_exact(tmp_path, data):
    x, q = data
    eng = build(tmp_path, x)
    labels = np.arange(len(x)) * 7 + 3
    d2, found = eng.search(q, 10)
    assert recall(found, exact_topk(x, labels, q, 10)) >= 0.9
    assert np.all(np.diff(d2, axis=1) >= 0)
    # distances are exact
    row = (found[0] - 3) // 7
    np.testing.assert_allclose(d2[0], ((x[row] - q[0]) ** 2).sum(axis=1), rtol=1e-4)
    s = eng.stats()
    assert s["max_posting"] <= 48 and s["replicas_per_vector"] > 1
    # query-aware pruning with eps=0 probes only the nearest head: fewer, still valid hits
    _, few = eng.search(q, 10, eps=0.0)
    assert recall(few, exact_topk(x, labels, q, 10)) < recall(found, exact_topk(x, labels, q, 10))


@pytest.mark.parametrize("codec", ["int8", "pq"])
def test_codecs(tmp_path, data, codec):
    x, q = data
    eng = build(tmp_path, x, codec=codec, pq_m=8, rerank=100)
    _, found = eng.search(q, 10)
    assert recall(found, exact_topk(x, np.arange(len(x)) * 7 + 3, q, 10)) >= 0.85


def test_updates_deletes_and_save_load(tmp_path, data):
    x, q = data
    eng = build(tmp_path, x, posting_cap=24)
    labels = np.arange(len(x)) * 7 + 3
    new = clustered(1000, 2)
    new_labels = np.arange(len(new)) + 10**9
    eng.insert(new, new_labels)
    assert eng.counters["splits"] > 0 and eng.counters["reassigned"] > 0
    dead = labels[::3]
    assert eng.delete(dead) == len(dead)
    keep = np.ones(len(x), bool)
    keep[::3] = False
    all_x = np.concatenate([x[keep], new])
    all_l = np.concatenate([labels[keep], new_labels])
    d2, found = eng.search(q, 10)
    assert recall(found, exact_topk(all_x, all_l, q, 10)) >= 0.88
    # every inserted vector finds itself
    _, self_hit = eng.search(new[:50], 1)
    assert (self_hit[:, 0] == new_labels[:50]).mean() >= 0.98
    # deleted vectors never come back, even searched for exactly
    _, hit = eng.search(x[::3][:100], 5, nprobe=64)
    assert not np.isin(hit, dead).any()
    _, wide = eng.search(q, 200, nprobe=128, rerank=400)
    assert not np.isin(wide, dead).any()
    assert eng.stats()["max_posting"] <= 2 * 24
    # explicit rebalancing keeps results correct
    eng.rebalance()
    eng.save()
    before = eng.search(q, 10)
    eng.close()
    again = SpannEngine.load(tmp_path)
    after = again.search(q, 10)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    assert again.count == eng.count and again.stats()["heads"] == eng.stats()["heads"]
    # a re-inserted label replaces the old vector; unsaved changes are not visible after load
    again.insert(x[:1] + 100.0, labels[1:2])
    _, hit = again.search(x[1:2], 3)
    assert labels[1] not in hit[0]
    again.close()
    third = SpannEngine.load(tmp_path)
    np.testing.assert_array_equal(third.search(q, 10)[1], after[1])
    third.close()


def test_bad_input(tmp_path, data):
    x, q = data
    empty = SpannEngine(tmp_path / "e", DIM, {})
    with pytest.raises(GenseekError, match="empty"):
        empty.search(q, 1)
    with pytest.raises(GenseekError, match="unknown parameter"):
        SpannEngine(tmp_path / "e", DIM, {"nprobes": 3})
    with pytest.raises(GenseekError, match="codec"):
        SpannEngine(tmp_path / "e", DIM, {"codec": "fp8"})
    eng = build(tmp_path / "a", x[:500])
    with pytest.raises(GenseekError, match="dimension 16"):
        eng.search(np.zeros((1, 16), np.float32), 1)
    with pytest.raises(GenseekError, match="NaN or infinite"):
        eng.search(np.full((1, DIM), np.nan, np.float32), 1)
    bad = x[:3].copy()
    bad[2, 5] = np.inf
    with pytest.raises(GenseekError, match="row 2 holds NaN or infinite"):
        eng.insert(bad, [1, 2, 5])
    assert eng.count == 500  # nothing half-written
    with pytest.raises(GenseekError, match="larger than the 500"):
        eng.search(q, 501)
    with pytest.raises(GenseekError, match="positive integer"):
        eng.search(q, 0)
    eng.save()
    eng.close()


def _corrupt(path: Path, offset: int, truncate: bool = False) -> None:
    with open(path, "r+b") as fh:
        if truncate:
            fh.truncate(offset)
        else:
            fh.seek(offset)
            b = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([b[0] ^ 0xFF]))


def test_corrupted_and_truncated_files(tmp_path, data):
    x, _ = data
    eng = build(tmp_path, x[:800])
    eng.save()
    off = int(eng.post_off[0]) + 40
    eng.close()
    post, vec = tmp_path / "postings.bin", tmp_path / "vectors.f32"
    pristine_post, pristine_vec = post.read_bytes(), vec.read_bytes()
    _corrupt(post, off)
    with pytest.raises(GenseekError, match="posting of head 0 .* CRC32"):
        SpannEngine.load(tmp_path)
    post.write_bytes(pristine_post)
    _corrupt(post, len(pristine_post) - 5000, truncate=True)
    with pytest.raises(GenseekError, match="postings.bin is truncated"):
        SpannEngine.load(tmp_path)
    post.write_bytes(pristine_post)
    _corrupt(vec, 1000)
    with pytest.raises(GenseekError, match="vectors.f32 fails its CRC32"):
        SpannEngine.load(tmp_path)
    vec.write_bytes(pristine_vec[:-8])
    with pytest.raises(GenseekError, match="vectors.f32 is truncated"):
        SpannEngine.load(tmp_path)
    vec.write_bytes(pristine_vec)
    (tmp_path / "state.npz").write_bytes(b"garbage")
    with pytest.raises(GenseekError, match="state.npz is unreadable"):
        SpannEngine.load(tmp_path)


# -- the collection index type ------------------------------------------------------------


class FakeEncoder:
    """Deterministic unit vectors from the text (no model): ``encode -> [n, DIM]``."""

    dim = DIM

    def encode(self, texts, batch_size: int = 32) -> np.ndarray:
        out = np.zeros((len(texts), DIM), np.float32)
        for i, t in enumerate(texts):
            seed = zlib.crc32(t.encode())
            out[i] = np.random.default_rng(seed).normal(size=DIM)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_index_type_apply_commit_reopen(tmp_path):
    docs = [Document(f"d{i}", text=f"t{i:05d}", version=i + 1) for i in range(300)]
    idx = SpannIndex(tmp_path, {"save_every": 0}, encoder=FakeEncoder())
    assert isinstance(idx, VectorSearch)
    assert idx.search_vectors(np.zeros((1, DIM), np.float32), 5) == [[]]  # empty collection
    idx.apply(ChangeSet(0, 300, upserts=tuple(docs)))
    idx.commit(300)
    enc = FakeEncoder()
    hits = idx.search_vectors(enc.encode(["t00007"]), 3)
    assert hits[0][0].doc_id == "d7" and abs(hits[0][0].score - 1.0) < 1e-4
    assert idx.search(["t00007"], 3) == hits
    assert idx.search_vectors(idx.encode_queries(["t00007"]), 3) == hits
    # replace d7's content (new version) and delete d8
    idx.apply(ChangeSet(300, 302, upserts=(Document("d7", text="zzzzz", version=301),),
                        removed=(("d7", 8), ("d8", 9)), deleted_ids=frozenset({"d8"})))
    idx.commit(302)
    assert idx.search_vectors(enc.encode(["t00008"]), 1)[0][0].doc_id != "d8"
    assert idx.search_vectors(enc.encode(["zzzzz"]), 1)[0][0].doc_id == "d7"
    assert len(idx.search_vectors(enc.encode(["x"]), 1000)[0]) == 299  # k past the collection
    with pytest.raises(GenseekError, match="unknown search parameter 'nprob'"):
        idx.search(["q"], 3, {"nprob": 3})  # a dict is validated by the schema too
    with pytest.raises(GenseekError, match="given DenseSearchParams"):
        idx.search_vectors(enc.encode(["x"]), 3, DenseSearchParams(nprobe=3))
    seen: dict = {}
    engine_search = idx._engine.search

    def spy(q, k, **params):
        seen.update(params)
        return engine_search(q, k, **params)

    idx._engine.search = spy  # the typed parameters reach the engine, and only those given
    assert idx.search(["t00009"], 3, SpannSearchParams(nprobe=1, eps=0.0))[0][0].doc_id == "d9"
    assert seen == {"nprobe": 1, "eps": 0.0}
    del idx._engine.search
    idx.close()
    again = SpannIndex(tmp_path, {}, encoder=FakeEncoder())
    assert again.applied_seq == 302 and again.stats().documents == 299
    assert again.search_vectors(enc.encode(["t00008"]), 1)[0][0].doc_id != "d8"
    again.close()
    with pytest.raises(GenseekError, match="unknown parameter"):
        SpannIndex(tmp_path, {"nprob": 3}, encoder=FakeEncoder())
    assert os.path.exists(tmp_path / "engine" / "state.npz")


# -- rebalancing: steps, the background thread, close, crash and failure --------------------


def test_rebalance_steps_and_pending_stats(tmp_path, data):
    x, q = data
    labels = np.arange(len(x), dtype=np.int64) * 7 + 3
    eng = build(tmp_path, x[:600], posting_cap=16, auto_split=False)
    assert eng.pending() == {"queued": 0, "gc_pending": False, "stale_estimate": 0}
    eng.insert(x[600:1800], labels[600:1800])  # no split: appends queue oversized postings
    queued = eng.pending()["queued"]
    assert queued > 0 and eng.has_pending_work() and eng.stats()["queued"] == queued
    assert eng.stats()["max_posting"] > 32 and eng.counters["splits"] == 0
    eng.delete(labels[:500])
    assert eng.pending() == {"queued": queued, "gc_pending": True, "stale_estimate": 500}
    eng.save()  # the queue is rebuilt on load, the stale estimate is saved
    loaded = SpannEngine.load(tmp_path)
    assert loaded.pending() == eng.pending()
    loaded.close()
    steps = 0
    while eng.rebalance_step():
        steps += 1
        assert steps < 5000
    assert eng.pending() == {"queued": 0, "gc_pending": False, "stale_estimate": 0}
    assert eng.counters["splits"] > 0 and eng.stats()["max_posting"] <= 32
    # a garbage-collection sweep after mass deletes rewrites mostly-stale postings
    dead = labels[500:1800][np.random.default_rng(0).random(1300) < 0.7]
    eng.delete(dead)
    entries = eng.post_cnt[:eng.nheads][eng.head_alive[:eng.nheads]].sum()
    while eng.rebalance_step():
        pass
    assert eng.counters["gc_rewrites"] > 0
    assert eng.post_cnt[:eng.nheads][eng.head_alive[:eng.nheads]].sum() < entries
    keep = np.zeros(len(x), bool)
    keep[500:1800] = True
    keep[(dead - 3) // 7] = False
    _, found = eng.search(q, 10, nprobe=10_000, eps=1e9, rerank=10_000)  # exhaustive
    truth = exact_topk(x[keep], labels[keep], q, 10)
    assert [set(row) for row in found] == [set(row) for row in truth]  # nothing live was lost
    eng.close()


class TableEncoder:
    """Text ``v<i>`` -> row ``i`` of a fixed table of unit vectors: ``encode -> [n, DIM]``."""

    dim = DIM

    def __init__(self, table: np.ndarray):
        self.table = table

    def encode(self, texts, batch_size: int = 32) -> np.ndarray:
        return self.table[[int(t[1:]) for t in texts]]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def add(idx: SpannIndex, ids, seq: int, commit: bool = True) -> int:
    """Upsert documents ``d<i>`` (text ``v<i>``, version ``i + 1``) as change ``seq + 1``."""
    docs = tuple(Document(f"d{i}", text=f"v{i}", version=int(i) + 1) for i in ids)
    idx.apply(ChangeSet(seq, seq + 1, upserts=docs))
    if commit:
        idx.commit(seq + 1)
    return seq + 1


def remove(idx: SpannIndex, ids, seq: int) -> int:
    ids = [int(i) for i in ids]
    idx.apply(ChangeSet(seq, seq + 1, removed=tuple((f"d{i}", i + 1) for i in ids),
                        deleted_ids=frozenset(f"d{i}" for i in ids)))
    idx.commit(seq + 1)
    return seq + 1


def doc_ids(hits) -> np.ndarray:
    """Document numbers ``[n, k]`` of ``search_vectors`` results, -1 padded (pruning may
    leave fewer than ``k`` candidates)."""
    k = max((len(row) for row in hits), default=0)
    return np.array([[int(h.doc_id[1:]) for h in row] + [-1] * (k - len(row)) for row in hits])


def self_found(idx: SpannIndex, x: np.ndarray, ids, **params) -> float:
    """Fraction of documents ``ids`` whose own vector finds them first (``params``: search
    parameters)."""
    ids = np.asarray(ids)
    hits = idx.search_vectors(x[ids], 1, SpannSearchParams(**params) if params else None)
    return float(np.mean([bool(row) and row[0].doc_id == f"d{i}"
                          for row, i in zip(hits, ids, strict=True)]))


SMALL = {"posting_cap": 16, "rebalance_pause": 0.0}


def test_rebalance_mode_parameters(tmp_path):
    enc = FakeEncoder()
    for i, (params, mode) in enumerate((({}, "background"), ({"rebalance": "sync"}, "sync"),
                                        ({"rebalance": "off"}, "off"),
                                        ({"rebalance": "background"}, "background"))):
        idx = SpannIndex(tmp_path / str(i), params, encoder=enc)
        st = idx.stats()
        assert st.details["rebalance"]["mode"] == mode and st.params["rebalance"] == mode
        assert st.details["rebalance"]["running"] == (mode == "background")
        assert "auto_split" not in st.params  # the engine's setting, not the spec's
        idx.close()
        assert not any(t.name.startswith("spann-rebalance") and str(tmp_path) in t.name
                       for t in threading.enumerate())
    with pytest.raises(GenseekError, match="unknown parameter 'auto_split'"):
        SpannIndex(tmp_path / "x", {"auto_split": True}, encoder=enc)  # the old spelling
    with pytest.raises(GenseekError, match="rebalance must be .background., .sync. or .off."):
        SpannIndex(tmp_path / "x", {"rebalance": "lazy"}, encoder=enc)
    with pytest.raises(GenseekError, match="rebalance_pause"):
        SpannIndex(tmp_path / "x", {"rebalance_pause": -1}, encoder=enc)


def test_background_rebalancer_splits_without_being_asked(tmp_path):
    x, q = unit(clustered(3000, 5)), unit(clustered(100, 6))
    idx = SpannIndex(tmp_path / "bg", {**SMALL, "save_every": 1e9}, encoder=TableEncoder(x))
    seq = add(idx, range(500), 0)  # the first batch builds the engine
    for start in range(500, 3000, 500):
        seq = add(idx, range(start, start + 500), seq)  # only appends (and queues)
    assert idx.wait_rebalanced(timeout=60)
    st = idx.stats()
    rb = st.details["rebalance"]
    assert rb["background_splits"] > 0 and rb["steps"] >= rb["background_splits"]
    assert rb["queued"] == 0 and rb["errors"] == 0 and rb["last_error"] is None
    assert st.details["engine"]["max_posting"] <= 2 * 16 and st.documents == 3000
    rebuilt = SpannIndex(tmp_path / "rebuilt", {**SMALL, "rebalance": "off"},
                         encoder=TableEncoder(x))
    add(rebuilt, range(3000), 0)
    truth = exact_topk(x, np.arange(3000), q, 10)
    r_bg = recall(doc_ids(idx.search_vectors(q, 10)), truth)
    r_rebuilt = recall(doc_ids(rebuilt.search_vectors(q, 10)), truth)
    assert r_bg >= r_rebuilt - 0.05 and r_bg >= 0.85
    idx.close()
    rebuilt.close()


def test_searches_during_background_rebalancing_stay_correct(tmp_path):
    x = unit(clustered(2500, 7))
    idx = SpannIndex(tmp_path, {**SMALL, "save_every": 0}, encoder=TableEncoder(x))
    seq = add(idx, range(500), 0)
    shared = {"deleted": frozenset()}
    errors: list[BaseException] = []
    rounds = [0]
    stop = threading.Event()

    def searcher() -> None:
        rng = np.random.default_rng(0)
        while not stop.is_set():
            try:
                gone = shared["deleted"]  # deleted before this search started
                qs = x[rng.integers(0, len(x), size=8)]  # deleted and unseen vectors too
                for k in (5, 60):
                    for row in idx.search_vectors(qs, k):
                        ids = [h.doc_id for h in row]
                        assert len(ids) == len(set(ids)), f"duplicates in {ids}"
                        assert not gone.intersection(ids), f"deleted {gone.intersection(ids)}"
                rounds[0] += 1
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                errors.append(exc)
                return
            time.sleep(0.001)

    thread = threading.Thread(target=searcher)
    thread.start()
    try:
        for start in range(500, 2500, 250):
            seq = add(idx, range(start, start + 250), seq)
            dead = range(start - 250, start - 150)
            seq = remove(idx, dead, seq)
            shared["deleted"] = shared["deleted"] | {f"d{i}" for i in dead}
        assert idx.wait_rebalanced(timeout=60)
    finally:
        stop.set()
        thread.join()
    if errors:
        raise errors[0]
    rb = idx.stats().details["rebalance"]
    assert rounds[0] > 5 and rb["background_splits"] > 0 and rb["errors"] == 0
    live = sorted(set(range(2500)) - {int(d[1:]) for d in shared["deleted"]})
    assert self_found(idx, x, live) >= 0.99
    idx.close()


def test_close_with_pending_work_then_reopen(tmp_path):
    x, q = unit(clustered(1200, 9)), unit(clustered(50, 10))
    params = {"posting_cap": 16, "save_every": 1e9, "rebalance_pause": 0.5}  # a slow rebalancer
    dead = np.arange(0, 1200, 5)
    live = np.setdiff1d(np.arange(1200), dead)
    idx = SpannIndex(tmp_path / "bg", params, encoder=TableEncoder(x))
    seq = add(idx, range(300), 0)
    seq = add(idx, range(300, 1200), seq)
    remove(idx, dead, seq)
    rb = idx.stats().details["rebalance"]
    assert rb["running"] and rb["queued"] > 0, rb  # pending work is reported
    started = time.monotonic()
    idx.close()  # finishes the current step, leaves the queue (checked below: still queued)
    # far sooner than the queue would take (tens of steps 0.5 s apart); generous, since a step
    # on a loaded machine can take seconds (a 5 s bound here failed once under load)
    assert time.monotonic() - started < 30
    # the saved state as closed (no rebalancer): work still pending, answers correct
    again = SpannIndex(tmp_path / "bg", {**params, "rebalance": "off"}, encoder=TableEncoder(x))
    assert again.stats().details["rebalance"]["queued"] > 0
    sync = SpannIndex(tmp_path / "sync", {**params, "rebalance": "sync"}, encoder=TableEncoder(x))
    s = add(sync, range(300), 0)
    remove(sync, dead, add(sync, range(300, 1200), s))
    assert sync.stats().details["rebalance"]["queued"] == 0
    wide = {"nprobe": 10_000, "eps": 1000.0, "rerank": 10_000}  # every posting (eps at its bound)
    exhaustive = SpannSearchParams(**wide)
    for index in (again, sync):
        everything = [int(h.doc_id[1:]) for h in index.search_vectors(q[:1], 10**6)[0]]
        assert sorted(everything) == live.tolist()
        assert self_found(index, x, live) >= 0.99
        assert self_found(index, x, live[::8], **wide) == 1.0
        assert not np.isin(doc_ids(index.search_vectors(x[dead], 5)), dead).any()
    np.testing.assert_array_equal(doc_ids(again.search_vectors(q, 10, exhaustive)),
                                  doc_ids(sync.search_vectors(q, 10, exhaustive)))
    again.close()
    sync.close()
    # reopened with the rebalancer: it picks the queued work up
    third = SpannIndex(tmp_path / "bg", {**params, "rebalance_pause": 0.0},
                       encoder=TableEncoder(x))
    assert third.wait_rebalanced(timeout=60)
    assert third.stats().details["rebalance"]["background_splits"] > 0
    assert self_found(third, x, live) >= 0.99
    assert not np.isin(doc_ids(third.search_vectors(x[dead], 5)), dead).any()
    third.close()


CRASH_CHILD = textwrap.dedent("""
    import os, sys, threading, time
    import numpy as np
    from genseek.indexers import spann as S
    from genseek.types import ChangeSet, Document

    path, table = sys.argv[1], np.load(sys.argv[2])

    class Enc:
        dim = table.shape[1]

        def encode(self, texts, batch_size=32):
            return table[[int(t[1:]) for t in texts]]

    write_region, split = S.SpannEngine._write_region, S.SpannEngine._split
    inside, background_splits = threading.local(), [0]

    def tracked_split(self, head):
        inside.split = threading.current_thread().name.startswith("spann-rebalance")
        background_splits[0] += inside.split
        try:
            return split(self, head)
        finally:
            inside.split = False

    def crashing_write(self, head, records):
        write_region(self, head, records)
        if getattr(inside, "split", False) and background_splits[0] >= 25:
            os._exit(17)  # killed between the two new postings of a background split

    S.SpannEngine._split, S.SpannEngine._write_region = tracked_split, crashing_write
    idx = S.SpannIndex(path, {"posting_cap": 16, "save_every": 0, "rebalance_pause": 0.0},
                       encoder=Enc())
    seq = 0
    for start in range(0, len(table), 200):
        ups = tuple(Document(f"d{i}", text=f"v{i}", version=i + 1)
                    for i in range(start, start + 200))
        gone = range(max(start - 200, 0), max(start - 160, 0))
        idx.apply(ChangeSet(seq, seq + 1, upserts=ups,
                            removed=tuple((f"d{i}", i + 1) for i in gone)))
        seq += 1
        idx.commit(seq)  # saves the engine (save_every=0)
        time.sleep(0.02)
    time.sleep(30)
    sys.exit(3)  # the rebalancer should have crashed the process by now
""")


def test_crash_during_background_split_reopens_correctly(tmp_path):
    x = unit(clustered(3000, 11))
    np.save(tmp_path / "table.npy", x)
    proc = subprocess.run([sys.executable, "-c", CRASH_CHILD, str(tmp_path / "idx"),
                           str(tmp_path / "table.npy")], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 17, proc.stderr[-3000:]
    con = sqlite3.connect(tmp_path / "idx" / "vectors.sqlite")
    live = np.array(sorted(int(d[1:]) for (d,) in con.execute("SELECT doc_id FROM vectors")))
    con.close()
    assert len(live) > 200
    for mode in ("off", "background"):
        idx = SpannIndex(tmp_path / "idx", {"posting_cap": 16, "rebalance": mode,
                                            "rebalance_pause": 0.0}, encoder=TableEncoder(x))
        if mode == "background":
            assert idx.wait_rebalanced(timeout=60)
        st = idx.stats()
        assert st.documents == len(live) and st.details["engine"]["vectors"] == len(live)
        everything = [int(h.doc_id[1:]) for h in idx.search_vectors(x[:1], 10**6)[0]]
        assert sorted(everything) == live.tolist()  # no deleted, lost or duplicated vector
        assert self_found(idx, x, live[::8], nprobe=10_000, eps=1000.0, rerank=10_000) == 1.0
        assert self_found(idx, x, live) >= 0.99
        idx.close()


def test_rebalancer_failure_is_recorded_logged_and_surfaced(tmp_path, monkeypatch, caplog):
    x = unit(clustered(1000, 13))
    idx = SpannIndex(tmp_path, {**SMALL, "save_every": 0}, encoder=TableEncoder(x))
    seq = add(idx, range(500), 0)
    split = idx._engine._split

    def failing_split(head: int) -> int:
        if threading.current_thread().name.startswith("spann-rebalance"):
            raise RuntimeError("injected split failure")
        return split(head)

    monkeypatch.setattr(idx._engine, "_split", failing_split)
    with caplog.at_level(logging.ERROR, logger="genseek.indexers.spann"):
        add(idx, range(500, 1000), seq, commit=False)
        deadline = time.monotonic() + 30
        while idx.stats().details["rebalance"]["errors"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    rb = idx.stats().details["rebalance"]
    assert rb["errors"] == 1 and "injected split failure" in rb["last_error"]
    assert not rb["running"]
    assert any("rebalancer failed" in r.getMessage() for r in caplog.records)
    with pytest.raises(GenseekError, match="rebalancer failed.*injected"):
        idx.commit(seq + 1)  # nothing is committed
    with pytest.raises(GenseekError, match="rebalancer failed"):
        idx.wait_rebalanced(timeout=1)
    assert len(idx.search_vectors(x[:3], 5)[0]) == 5  # searches are still served
    idx.close()  # rolls back, does not save the engine
    again = SpannIndex(tmp_path, {**SMALL, "save_every": 0}, encoder=TableEncoder(x))
    assert again.applied_seq == seq and again.stats().documents == 500
    seq = add(again, range(500, 1000), seq)  # the collection replays the batch
    assert again.wait_rebalanced(timeout=60) and again.stats().details["rebalance"]["errors"] == 0
    assert self_found(again, x, range(1000)) >= 0.99
    again.close()
