"""MUVERA: FDE properties, the Chamfer kernels, and the ``muvera`` index (tiny fixtures)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from genseek.errors import GenseekError
from genseek.indexers.muvera import MuveraIndex
from genseek.kernels import chamfer as ch
from genseek.kernels import muvera as fde
from genseek.params import MuveraSearchParams
from genseek.protocols import VectorSearch
from genseek.types import ChangeSet, Document

DIM = 8


class WordEncoder:
    """Tiny deterministic token encoder: one unit vector per word (seeded by the word)."""

    dim = DIM

    def encode(self, texts, batch_size=16):
        out = []
        for text in texts:
            vecs = []
            for word in text.split():
                rng = np.random.default_rng(zlib.crc32(word.encode()))
                v = rng.standard_normal(DIM).astype(np.float32)
                vecs.append(v / np.linalg.norm(v))
            out.append(np.array(vecs, dtype=np.float32).reshape(-1, DIM))
        return out


def _sets(rng, n, lo=1, hi=9, dim=DIM):
    lengths = rng.integers(lo, hi, size=n)
    tokens = rng.standard_normal((int(lengths.sum()), dim)).astype(np.float32)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    return tokens, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _chamfer_loop(q, d):
    return sum(max(float(np.dot(x, y)) for y in d) for x in q)


# -- FDE ----------------------------------------------------------------------------------------

def test_one_bucket_identity_fde_is_the_sum_average_formula():
    rng = np.random.default_rng(0)
    q, qo = _sets(rng, 1)
    d, do = _sets(rng, 5)
    p = fde.make_params(DIM, k_sim=0, d_proj=None, r_reps=1)
    qf = fde.encode(q, qo, p, is_query=True)
    df = fde.encode(d, do, p, is_query=False)
    assert qf.shape == (1, DIM) and df.shape == (5, DIM)
    for i in range(5):
        docs = d[do[i]:do[i + 1]]
        want = float((q.sum(0) @ docs.T).sum()) / len(docs)
        assert float(qf[0] @ df[i]) == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_gray_bucket_ids_decode_the_sign_patterns():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, DIM)).astype(np.float32)
    p = fde.make_params(DIM, k_sim=4, d_proj=None, r_reps=1)
    ids = fde.gray_bucket_ids(x, p.planes[0])
    assert ids.min() >= 0 and ids.max() < 16
    assert np.array_equal(fde.bucket_patterns(4)[ids], fde.sign_patterns(x, p.planes[0]))
    # neighbouring bucket ids differ in exactly one hyperplane
    pats = fde.bucket_patterns(4)
    assert all(bin(int(pats[k] ^ pats[k + 1])).count("1") == 1 for k in range(15))


def test_documents_fill_empty_buckets_and_queries_sum():
    rng = np.random.default_rng(2)
    one = rng.standard_normal((1, DIM)).astype(np.float32)
    p = fde.make_params(DIM, k_sim=3, d_proj=None, r_reps=2)
    df = fde.encode(one, np.array([0, 1]), p, is_query=False).reshape(2, 8, DIM)
    assert np.allclose(df, one[0])  # every bucket filled from the only point
    qf = fde.encode(one, np.array([0, 1]), p, is_query=True).reshape(2, 8, DIM)
    assert np.count_nonzero(np.abs(qf).sum(-1)) == 2  # one bucket per repetition
    q, qo = _sets(rng, 3)
    qf = fde.encode(q, qo, p, is_query=True).reshape(3, 2, 8, DIM)
    for i in range(3):
        assert np.allclose(qf[i].sum(axis=1), q[qo[i]:qo[i + 1]].sum(0), atol=1e-5)
    assert fde.make_params(DIM, 3, 4, 5).raw_dim == 5 * 8 * 4
    small = fde.make_params(DIM, 3, 4, 5, d_final=64)
    assert fde.encode(q, qo, small, is_query=True).shape == (3, 64)


def test_fde_bad_input():
    p = fde.make_params(DIM, 2, 4, 1)
    with pytest.raises(GenseekError, match="shape"):
        fde.encode(np.zeros((3, DIM + 1)), np.array([0, 3]), p, is_query=True)
    with pytest.raises(GenseekError, match="NaN"):
        fde.encode(np.full((3, DIM), np.nan), np.array([0, 3]), p, is_query=True)
    with pytest.raises(GenseekError, match="offsets"):
        fde.encode(np.zeros((3, DIM)), np.array([0, 2]), p, is_query=True)
    with pytest.raises(GenseekError, match="k_sim"):
        fde.make_params(DIM, k_sim=-1)


# -- Chamfer kernels ------------------------------------------------------------------------------

def test_chamfer_kernels_equal_a_brute_force_loop():
    rng = np.random.default_rng(3)
    q, qo = _sets(rng, 3)
    d, do = _sets(rng, 7)
    want = np.array([[_chamfer_loop(q[qo[a]:qo[a + 1]], d[do[b]:do[b + 1]]) for b in range(7)]
                     for a in range(3)])
    qt, qm = ch.pad_sets(q, qo)
    dt, dm = ch.pad_sets(d, do)
    assert np.allclose(ch.chamfer(qt, qm, dt, dm, chunk=2).numpy(), want, atol=1e-5)
    cand = ch.chamfer_candidates(qt, qm, dt[None].expand(3, -1, -1, -1),
                                 dm[None].expand(3, -1, -1))
    assert np.allclose(cand.numpy(), want, atol=1e-5)
    flat = ch.chamfer_flat(torch.from_numpy(q[qo[1]:qo[2]]), torch.from_numpy(d),
                           torch.from_numpy(do))
    assert np.allclose(flat.numpy(), want[1], atol=1e-5)


# -- the index ------------------------------------------------------------------------------------

WORDS = [f"w{i}" for i in range(60)]


def _docs(n, start=0, version0=1, seed=0):
    rng = np.random.default_rng(seed)
    return [Document(f"d{i}", text=" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))),
                     version=version0 + i - start) for i in range(start, start + n)]


def _open(path, **params):
    return MuveraIndex(path, {"k_sim": 3, "d_proj": 4, "r_reps": 4, "candidates": 10, **params},
                       encoder=WordEncoder())


def test_index_search_deletes_and_round_trip(tmp_path):
    index = _open(tmp_path / "m")
    docs = _docs(40)
    index.apply(ChangeSet(0, 40, upserts=tuple(docs)))
    index.commit(40)
    query = docs[7].text
    hits = index.search([query], 5)[0]
    assert hits[0].doc_id == "d7"  # the document itself has the best Chamfer score
    assert isinstance(index, VectorSearch)
    assert index.search_vectors(index.encode_queries([query]), 5)[0] == hits
    # FDE candidates over everything == exact Chamfer over everything
    qt = WordEncoder().encode([query])
    assert [len(t) for t in index.encode_queries([query])] == [len(query.split())]
    full = index.search_vectors(qt, 10, MuveraSearchParams(candidates=40))[0]
    exact = index.exact_search_vectors(qt, 10)[0]
    assert [h.doc_id for h in full] == [h.doc_id for h in exact]
    assert [h.score for h in full] == pytest.approx([h.score for h in exact], abs=1e-4)
    # delete d7 and 25 more: they never come back; update d8 (new version, new text)
    gone = [(d.doc_id, d.version) for d in docs[7:33]]
    new8 = Document("d8", text=docs[7].text, version=41)
    index.apply(ChangeSet(40, 41, upserts=(new8,), removed=tuple(gone)))
    index.commit(41)
    live = {"d8"} | {d.doc_id for d in docs if not 7 <= int(d.doc_id[1:]) < 33}
    for d in docs:
        got = {h.doc_id for h in index.search([d.text], 40, MuveraSearchParams(candidates=40))[0]}
        assert got <= live
        assert len(got) == len(live)  # k larger than the collection: all live documents
    assert index.search([query], 1)[0][0].doc_id == "d8"
    assert index.stats().details["segments"] == 2  # the first segment was mostly dead: compacted
    before = [index.search([d.text], 5) for d in docs[:5]]
    index.close()
    again = _open(tmp_path / "m")
    assert again.applied_seq == 41
    assert [again.search([d.text], 5) for d in docs[:5]] == before
    again.close()
    (tmp_path / "m" / "fde.faiss").unlink()  # a lost cache is rebuilt from the segments
    rebuilt = _open(tmp_path / "m")
    assert [rebuilt.search([d.text], 5) for d in docs[:5]] == before
    rebuilt.close()


def test_uncommitted_batch_is_dropped(tmp_path):
    index = _open(tmp_path / "m")
    index.apply(ChangeSet(0, 3, upserts=tuple(_docs(3))))
    index.commit(3)
    index.apply(ChangeSet(3, 6, upserts=tuple(_docs(3, start=3, version0=4))))
    index.close()  # no commit
    again = _open(tmp_path / "m")
    assert again.stats().documents == 3
    assert len(list((tmp_path / "m" / "segments").iterdir())) == 1
    again.close()


def test_index_bad_input(tmp_path):
    with pytest.raises(GenseekError, match="unknown parameter"):
        _open(tmp_path / "x", nope=1)
    index = _open(tmp_path / "m")
    assert index.search(["w1 w2"], 5) == [[]]  # empty index
    with pytest.raises(GenseekError, match="shape"):
        index.search_vectors([np.zeros((2, DIM + 1), np.float32)], 3)
    with pytest.raises(GenseekError, match="NaN"):
        index.add_token_vectors([(1, "a")], [np.full((2, DIM), np.inf, np.float32)])
    with pytest.raises(GenseekError, match="candidates"):
        index.search(["w1"], 3, {"candidates": 0})
    index.apply(ChangeSet(0, 10, upserts=tuple(_docs(10))))
    index.commit(10)
    index.close()
    seg = next((tmp_path / "m" / "segments").iterdir())
    seg.write_bytes(seg.read_bytes()[:200])  # truncated
    with pytest.raises(GenseekError, match="segment"):
        _open(tmp_path / "m")


def test_collection_with_minilm_token_vectors(tmp_path):
    """The registered ``muvera`` type in a collection, with the real MiniLM token encoder."""
    from _synth import make_docs

    from genseek import Collection

    docs = make_docs(12, seed=3)
    spec = "muvera(k_sim=3,d_proj=8,r_reps=4,max_length=64,candidates=6)"
    with Collection.create(tmp_path / "coll", {"mv": spec}) as c:
        c.write(docs)
        hits = c.search([docs[4].contents], 3)[0]
        assert hits[0].doc_id == docs[4].doc_id
        c.delete([docs[4].doc_id])
        assert docs[4].doc_id not in {h.doc_id for h in c.search([docs[4].contents], 12)[0]}
        stats = c.stats()["indexes"]["mv"]
        assert stats["documents"] == 11 and stats["dim"] == 384
