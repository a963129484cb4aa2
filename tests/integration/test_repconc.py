"""RepCONC: Sinkhorn balance, training on a tiny synthetic task, the model folder, the index."""

from __future__ import annotations

import json
import threading
import zlib

import numpy as np
import pytest
import torch

from genseek.errors import GenseekError
from genseek.indexers import repconc_train as rt
from genseek.indexers.dense import DenseIndex
from genseek.indexers.repconc import RepconcIndex
from genseek.kernels.sinkhorn import balanced_assign, sinkhorn_plan
from genseek.params import RepconcSearchParams
from genseek.protocols import UsesSiblings, VectorSearch, VectorSource
from genseek.types import ChangeSet, Document

DIM, M = 16, 4


def test_sinkhorn_assignments_are_near_uniform():
    gen = torch.Generator().manual_seed(0)
    n, k = 512, 16
    scores = torch.randn(n, k, generator=gen) * 0.1
    scores[:, 0] += 1.0  # every vector prefers centroid 0
    assert torch.bincount(scores.argmax(1), minlength=k).max() == n  # unconstrained: collapse
    plan = sinkhorn_plan(scores, epsilon=0.05, iters=100, dtype=torch.float64).exp()
    assert torch.allclose(plan.sum(1), torch.full((n,), 1 / n), atol=1e-3 / n)
    assert torch.allclose(plan.sum(0), torch.full((k,), 1 / k), atol=1e-2 / k)
    counts = torch.bincount(balanced_assign(scores, 0.05, 100), minlength=k)
    assert counts.min() >= 0.5 * n / k and counts.max() <= 1.5 * n / k
    batched = balanced_assign(torch.stack([scores, scores.flip(1)]), 0.05, 100)
    assert batched.shape == (2, n)
    with pytest.raises(ValueError):
        sinkhorn_plan(scores, epsilon=0)


def _task(n_docs=400, n_queries=120, seed=0):
    rng = np.random.default_rng(seed)
    docs = rng.standard_normal((n_docs, DIM)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    targets = rng.integers(0, n_docs, size=n_queries)
    queries = docs[targets] + 0.6 * rng.standard_normal((n_queries, DIM)).astype(np.float32)
    return docs, queries, [{int(t): 1} for t in targets]


def test_training_runs_and_keeps_the_best_epoch(tmp_path):
    docs, queries, positives = _task()
    out = rt.train(docs, queries, positives, m=M, epochs=3, batch_size=32, progress=False,
                   sinkhorn_iters=10, opq_iters=3)
    assert out["codebooks"].shape == (M, 256, DIM // M)
    assert out["rotation"].shape == out["query_proj"].shape == (DIM, DIM)
    assert [e["epoch"] for e in out["log"]] == [0, 1, 2, 3]
    assert out["dev_ndcg10"] >= out["log"][0]["dev_ndcg10"]  # never worse than the OPQ start
    assert all(0 < e["centroids_used"] <= 1 for e in out["log"][1:])
    config = {"dim": DIM, "bytes": M, "nbits": 8, "encoder": "fake"}
    rt.save_model(tmp_path / "model", out["rotation"], out["codebooks"], out["query_proj"],
                  config)
    loaded = rt.load_model(tmp_path / "model")
    assert np.array_equal(loaded["codebooks"], out["codebooks"].astype(np.float32))
    # bad model folders
    (tmp_path / "model" / "query_proj.npy").unlink()
    with pytest.raises(GenseekError, match="lacks query_proj.npy"):
        rt.load_model(tmp_path / "model")
    np.save(tmp_path / "model" / "query_proj.npy", np.zeros((DIM, DIM + 1), np.float32))
    with pytest.raises(GenseekError, match="inconsistent"):
        rt.load_model(tmp_path / "model")
    np.save(tmp_path / "model" / "query_proj.npy", np.full((DIM, DIM), np.nan, np.float32))
    with pytest.raises(GenseekError, match="NaN"):
        rt.load_model(tmp_path / "model")
    with pytest.raises(GenseekError, match="does not exist"):
        rt.load_model(tmp_path / "nowhere")


def test_cli_bad_input(tmp_path, capsys):
    code = rt.main(["repconc", "--vectors", str(tmp_path / "none.sqlite"), "--dataset",
                    str(tmp_path), "--out", str(tmp_path / "m")])
    assert code == 2 and "no vectors file" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


class HashEncoder:
    """Deterministic fake text encoder: a unit vector per text (seeded by the text)."""

    dim = DIM

    def encode(self, texts, batch_size=32):
        out = []
        for t in texts:
            v = np.random.default_rng(zlib.crc32(t.encode())).standard_normal(DIM)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32).reshape(-1, DIM)


def _docs(n, start=0):
    return [Document(f"d{i}", text=f"text {i}", version=i + 1) for i in range(start, start + n)]


def _open(path, **params):
    return RepconcIndex(path, {"bytes": M, "nlist": 4, "train_min": 300, "reuse": "",
                                 "opq_iters": 3, **params},
                        encoder=HashEncoder())


def test_index_trains_searches_deletes_and_round_trips(tmp_path):
    index = _open(tmp_path / "r")
    assert isinstance(index, VectorSearch) and not isinstance(index, VectorSource)
    assert index.search(["text 1"], 3) == [[]]  # empty index
    first = _docs(100)
    index.apply(ChangeSet(0, 100, upserts=tuple(first)))
    index.commit(100)
    assert index.stats().details["exact_fallback"]  # below train_min: exact search
    assert index.search(["text 5"], 1)[0][0].doc_id == "d5"
    rest = _docs(300, start=100)
    index.apply(ChangeSet(100, 400, upserts=tuple(rest)))
    index.commit(400)
    stats = index.stats()
    assert not stats.details["exact_fallback"] and stats.details["bytes_per_doc"] == M
    assert stats.documents == 400 and stats.to_dict()["bytes_per_doc"] == M
    docs = first + rest
    top1 = [index.search([d.text], 1)[0][0].doc_id for d in docs[:100]]
    assert np.mean([t == d.doc_id for t, d in zip(top1, docs, strict=False)]) > 0.5
    assert len(index.search(["text 3"], 1000)[0]) == 400  # k larger than the collection
    gone = {d.doc_id for d in docs[:60]}
    index.apply(ChangeSet(400, 401, removed=tuple((d.doc_id, d.version) for d in docs[:60])))
    index.commit(401)
    for d in docs[:80]:
        assert not {h.doc_id for h in index.search([d.text], 400)[0]} & gone
    before = index.search([d.text for d in docs[60:90]], 5)
    index.close()
    again = _open(tmp_path / "r")
    assert again.applied_seq == 401 and again.search([d.text for d in docs[60:90]], 5) == before
    again.close()
    (tmp_path / "r" / "ann.faiss").unlink()  # lost cache: rebuilt from the stored vectors
    rebuilt = _open(tmp_path / "r")
    assert rebuilt.stats().documents == 340
    rebuilt.close()


def test_index_with_trained_model_and_bad_input(tmp_path):
    docs, queries, positives = _task(300, 60, seed=1)
    out = rt.train(docs, queries, positives, m=M, epochs=1, batch_size=32, progress=False,
                   sinkhorn_iters=5, opq_iters=3)
    rt.save_model(tmp_path / "model", out["rotation"], out["codebooks"], out["query_proj"],
                  {"dim": DIM, "bytes": M, "nbits": 8, "encoder": "fake"})
    index = _open(tmp_path / "r", model=str(tmp_path / "model"), bytes=8)
    assert index.params["bytes"] == M  # the model's size wins
    index.add_vectors([(i + 1, f"d{i}") for i in range(300)], docs)
    index.commit(1)
    assert not index.stats().details["exact_fallback"]
    hits = index.search_vectors(queries[:5], 10)
    assert all(len(h) == 10 for h in hits)
    with pytest.raises(GenseekError, match="shape"):
        index.search_vectors(np.zeros((1, DIM + 1)), 3)
    with pytest.raises(GenseekError, match="NaN"):
        index.search_vectors(np.full((1, DIM), np.nan), 3)
    with pytest.raises(GenseekError, match="NaN"):
        index.add_vectors([(999, "x")], np.full((1, DIM), np.inf))
    with pytest.raises(GenseekError, match="nprobe"):
        index.search(["q"], 3, {"nprobe": 0})
    assert index.search_vectors(queries[:5], 10, RepconcSearchParams(nprobe=4)) == hits  # all
    assert index.search_vectors(queries[:5], 10, RepconcSearchParams(nprobe=1)) != hits
    index.close()
    with pytest.raises(GenseekError, match="unknown parameter"):
        _open(tmp_path / "x", bogus=1)
    with pytest.raises(GenseekError, match="divide"):
        _open(tmp_path / "y", bytes=5)
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert cfg["bytes"] == M


class CountingEncoder(HashEncoder):
    """HashEncoder that counts the texts it encodes."""

    def __init__(self):
        self.texts = 0

    def encode(self, texts, batch_size=32):
        self.texts += len(texts)
        return super().encode(texts, batch_size)


def _dense(path, model="all-MiniLM-L6-v2", docs=()):
    """A dense index (the fake encoder standing in for ``model``) holding ``docs``."""
    dense = DenseIndex(path, {"model": model}, encoder=HashEncoder())
    if docs:
        dense.apply(ChangeSet(0, len(docs), upserts=tuple(docs)))
        dense.commit(len(docs))
    return dense


def test_reuses_the_sibling_dense_vectors_through_the_protocol(tmp_path):
    docs = _docs(30)
    dense = _dense(tmp_path / "dense", docs=docs[:20])  # holds 20 of the 30 documents
    assert isinstance(dense, VectorSource) and isinstance(dense, VectorSearch)
    assert dense.vector_model == "all-MiniLM-L6-v2" and dense.dim == DIM
    asked: list[str] = []

    def siblings(name):
        asked.append(name)
        return dense if name == "dense" else None

    enc = CountingEncoder()
    index = RepconcIndex(tmp_path / "rc", {"bytes": M, "train_min": 300}, encoder=enc)
    assert isinstance(index, UsesSiblings)
    index.bind_siblings(siblings)
    index.apply(ChangeSet(0, 30, upserts=tuple(docs)))
    index.commit(30)
    assert asked == ["dense"] and enc.texts == 10  # only the 10 the sibling does not hold
    want = HashEncoder().encode([d.text for d in docs])
    assert index.search_vectors(want[3:4], 1)[0][0].doc_id == "d3"
    assert index.stats().documents == 30
    index.close()
    dense.close()


def test_stored_vectors_read_beside_the_writer(tmp_path):
    """A sibling reads dense's stored vectors while dense applies, commits and deletes."""
    docs = _docs(400)
    want = HashEncoder().encode([d.text for d in docs])
    dense = _dense(tmp_path / "dense")
    errors: list[BaseException] = []
    reads = [0]
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                for label, vec in dense.stored_vectors([d.version for d in docs]).items():
                    assert np.array_equal(vec, want[label - 1]), label
                reads[0] += 1
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                errors.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for lo in range(0, 400, 40):
            dense.apply(ChangeSet(lo, lo + 40, upserts=tuple(docs[lo:lo + 40])))
            dense.commit(lo + 40)
        dense.apply(ChangeSet(400, 401, removed=tuple((d.doc_id, d.version) for d in docs[:100])))
        dense.commit(401)
    finally:
        stop.set()
        thread.join()
    if errors:
        raise errors[0]
    assert reads[0] > 0
    assert sorted(dense.stored_vectors([d.version for d in docs])) == [d.version
                                                                       for d in docs[100:]]
    assert dense.stored_vectors([10_000]) == {}  # a label it does not hold is left out
    dense.close()


@pytest.mark.parametrize("case", ["no sibling", "reuse off", "other model", "other length",
                                  "not a vector source", "closed"])
def test_encodes_when_the_sibling_cannot_serve(tmp_path, case):
    docs = _docs(12)
    model = "other-model" if case == "other model" else "all-MiniLM-L6-v2"
    dense = _dense(tmp_path / "dense", model=model, docs=docs)
    sibling = {"no sibling": None, "not a vector source": object()}.get(case, dense)
    params = {"bytes": M, "train_min": 300, "reuse": "" if case == "reuse off" else "dense"}
    if case == "other length":
        params["max_length"] = 64  # the sibling's vectors were made at the model's own length
    if case == "closed":
        dense.close()
    enc = CountingEncoder()
    index = RepconcIndex(tmp_path / "rc", params, encoder=enc)
    index.bind_siblings(lambda name: sibling)
    index.apply(ChangeSet(0, 12, upserts=tuple(docs)))
    index.commit(12)
    assert enc.texts == 12
    index.close()
    if case != "closed":
        dense.close()


def test_reuse_names_a_sibling():
    assert RepconcIndex.Params.check({}).reuse == "dense"
    assert RepconcIndex.Params.check({"reuse": "../dense"}).reuse == "dense"  # the older form
    with pytest.raises(GenseekError, match="name of a sibling index"):
        RepconcIndex.Params.check({"reuse": "../indexes/dense"})


def test_collection_binds_the_dense_sibling(tmp_path, monkeypatch):
    """In a collection, repconc reads dense's vectors: every document is encoded once."""
    from _synth import make_docs

    from genseek import Collection
    from genseek.encoders import TextEncoder

    encoded: list[int] = []
    real = TextEncoder.encode

    def counting(self, texts, batch_size=32):
        encoded.append(len(texts))
        return real(self, texts, batch_size)

    monkeypatch.setattr(TextEncoder, "encode", counting)
    docs = make_docs(25, seed=4)
    with Collection.create(tmp_path / "c", {"dense": "dense", "rc": "repconc(train_min=300)"}
                           ) as coll:
        coll.write(docs)
        assert sum(encoded) == 25  # by dense only
        assert coll.search([docs[2].contents], 1, index="rc")[0][0].doc_id == docs[2].doc_id
