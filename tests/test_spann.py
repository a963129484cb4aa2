"""SPANN: kernels, the engine (recall, updates, deletes, persistence, bad input), the index type."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import faiss
import numpy as np
import pytest

from genseek.errors import GenseekError
from genseek.indexers.spann import SpannEngine, SpannIndex
from genseek.kernels import spann as K
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
    assert idx.search_vectors(np.zeros((1, DIM), np.float32), 5) == [[]]  # empty collection
    idx.apply(ChangeSet(0, 300, upserts=tuple(docs)))
    idx.commit(300)
    enc = FakeEncoder()
    hits = idx.search_vectors(enc.encode(["t00007"]), 3)
    assert hits[0][0].doc_id == "d7" and abs(hits[0][0].score - 1.0) < 1e-4
    # replace d7's content (new version) and delete d8
    idx.apply(ChangeSet(300, 302, upserts=(Document("d7", text="zzzzz", version=301),),
                        removed=(("d7", 8), ("d8", 9)), deleted_ids=frozenset({"d8"})))
    idx.commit(302)
    assert idx.search_vectors(enc.encode(["t00008"]), 1)[0][0].doc_id != "d8"
    assert idx.search_vectors(enc.encode(["zzzzz"]), 1)[0][0].doc_id == "d7"
    assert len(idx.search_vectors(enc.encode(["x"]), 1000)[0]) == 299  # k past the collection
    with pytest.raises(GenseekError, match="unknown search parameter"):
        idx.search(["q"], 3, nprob=3)
    idx.close()
    again = SpannIndex(tmp_path, {}, encoder=FakeEncoder())
    assert again.applied_seq == 302 and again.stats()["documents"] == 299
    assert again.search_vectors(enc.encode(["t00008"]), 1)[0][0].doc_id != "d8"
    again.close()
    with pytest.raises(GenseekError, match="unknown parameter"):
        SpannIndex(tmp_path, {"nprob": 3}, encoder=FakeEncoder())
    assert os.path.exists(tmp_path / "engine" / "state.npz")
