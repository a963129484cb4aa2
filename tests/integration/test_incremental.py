"""An index built incrementally (adds, updates, deletes) equals one built from scratch."""

from __future__ import annotations

import random

import pytest
from _synth import make_docs, make_queries

from genseek import Collection, Document

SPECS = {"bm25": "bm25", "dense": "dense"}


@pytest.fixture(scope="module")
def corpora():
    rng = random.Random(42)
    docs = make_docs(240, seed=7)
    rng.shuffle(docs)
    initial, added = docs[:216], docs[216:]  # 90% / 10%
    ids = [d.doc_id for d in docs]
    rng.shuffle(ids)
    deleted = ids[:17]  # ~7%
    updated = ids[17:34]  # ~7% others
    fresh = {d.doc_id: d for d in make_docs(240, seed=99, version=1)}
    updates = [Document(i, fresh[i].title, fresh[i].text, {"updated": True}) for i in updated]
    final = {d.doc_id: d for d in docs}
    for d in updates:
        final[d.doc_id] = d
    for i in deleted:
        del final[i]
    return initial, added, updates, deleted, list(final.values())


@pytest.fixture(scope="module")
def built(corpora, tmp_path_factory):
    initial, added, updates, deleted, final = corpora
    root = tmp_path_factory.mktemp("incremental")
    a = Collection.create(root / "a", SPECS)
    b = Collection.create(root / "b", SPECS)
    try:
        for start in range(0, len(initial), 50):
            a.write(initial[start:start + 50])
        a.write(added)
        a.write(updates[:8], deletes=deleted[:9])
        a.delete(deleted[9:])
        a.upsert(updates[8:])
        b.write(final)
        yield a, b
    finally:
        a.close()
        b.close()


QUERIES = make_queries(20, seed=5)


def test_same_documents(built, corpora):
    a, b = built
    final = corpora[-1]
    assert len(a) == len(b) == len(final)
    docs_a = {d.doc_id: (d.title, d.text) for d in a.store.iter_docs()}
    docs_b = {d.doc_id: (d.title, d.text) for d in b.store.iter_docs()}
    assert docs_a == docs_b
    for name in SPECS:
        assert a.stats()["indexes"][name]["documents"] == len(final)
        assert b.stats()["indexes"][name]["documents"] == len(final)


def test_bm25_rankings_identical(built):
    a, b = built
    hits_a = a.search(QUERIES, 50, index="bm25")
    hits_b = b.search(QUERIES, 50, index="bm25")
    assert any(len(h) >= 10 for h in hits_a)
    for q, ha, hb in zip(QUERIES, hits_a, hits_b, strict=True):
        assert [(h.doc_id, h.score) for h in ha] == [(h.doc_id, h.score) for h in hb], q


def test_dense_rankings_equal_up_to_near_ties(built, corpora):
    a, b = built
    n = len(corpora[-1])
    hits_a = a.search(QUERIES, n, index="dense")
    hits_b = b.search(QUERIES, n, index="dense")
    for q, ha, hb in zip(QUERIES, hits_a, hits_b, strict=True):
        assert len(ha) == len(hb) == n, q
        score_a = {h.doc_id: h.score for h in ha}
        score_b = {h.doc_id: h.score for h in hb}
        assert score_a.keys() == score_b.keys()
        for doc_id, s in score_a.items():
            assert abs(s - score_b[doc_id]) <= 1e-5, (q, doc_id)
        # The top 20 in the same order, but for swaps of documents whose scores tie.
        for ra, rb in zip(ha[:20], hb[:20], strict=True):
            if ra.doc_id != rb.doc_id:
                assert abs(score_a[ra.doc_id] - score_a[rb.doc_id]) <= 2e-5, q


def test_fused_rankings_agree(built):
    a, b = built
    fused_a, fused_b = a.search(QUERIES, 10), b.search(QUERIES, 10)
    dense_a = a.search(QUERIES, 100, index="dense")
    dense_b = b.search(QUERIES, 100, index="dense")
    compared = 0
    for fa, fb, da, db in zip(fused_a, fused_b, dense_a, dense_b, strict=True):
        assert len(fa) == len(fb) == 10
        # RRF reads ranks only: where the dense rankings agree (bm25's always do), so does it.
        if [h.doc_id for h in da] == [h.doc_id for h in db]:
            assert fa == fb
            compared += 1
    assert compared > 0
