"""Collections with bm25 and dense indexes: updates, deletes, reopening and catch-up."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from _synth import make_docs, make_queries, unique_token

from genseek import Collection, Document, GenseekError
from genseek.errors import IndexUnavailable
from genseek.indexers.dense import DenseIndex

SPECS = {"bm25": "bm25", "dense": "dense"}


def by_id(docs):
    return {d.doc_id: d for d in docs}


def ids(hits):
    return [h.doc_id for h in hits]


def all_hits(coll, query, index):
    """Every hit an index returns for ``query`` (k = more than the collection holds)."""
    return coll.search(query, len(coll) + 50, index=index)


def assert_no_duplicates(hits):
    assert len(ids(hits)) == len(set(ids(hits))), "a document appears twice"


@pytest.fixture
def docs():
    return make_docs(60, seed=3)


@pytest.fixture
def coll(tmp_path, docs):
    c = Collection.create(tmp_path / "coll", SPECS)
    c.write(docs)
    yield c
    c.close()


def test_search_finds_each_document(coll, docs):
    assert len(coll) == 60
    for d in docs[:10]:
        hits = coll.search(unique_token(int(d.doc_id[1:])), 5, index="bm25")
        assert ids(hits) == [d.doc_id]
        dense_hits = coll.search(d.contents, 3, index="dense")
        assert dense_hits[0].doc_id == d.doc_id
        assert dense_hits[0].score == pytest.approx(1.0, abs=1e-4)
    # batches give one list per query; scores are sorted best first
    batch = coll.search(make_queries(5), 7)
    assert len(batch) == 5
    for hits in batch:
        assert 0 < len(hits) <= 7
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert_no_duplicates(hits)
    stats = coll.stats()
    assert stats["documents"] == 60
    for s in stats["indexes"].values():
        assert s["documents"] == 60
        assert s["applied_seq"] == stats["seq"] == coll.store.seq


def test_k_larger_than_collection(coll):
    hits = coll.search("wing lift drag", 1000, index="dense")
    assert len(hits) == 60
    assert_no_duplicates(hits)


def test_upsert_replaces_everywhere(coll, docs):
    old = docs[5]
    new = Document(old.doc_id, "replacement", f"entirely new words {unique_token(5, 1)}")
    r = coll.upsert([new])
    assert r.upserted == 1
    assert coll.search(unique_token(5, 0), 10, index="bm25") == []
    assert ids(coll.search(unique_token(5, 1), 10, index="bm25")) == [old.doc_id]
    # dense holds exactly one vector for the id: the new version's
    hits = all_hits(coll, new.contents, "dense")
    assert_no_duplicates(hits)
    assert len(hits) == 60
    assert hits[0].doc_id == old.doc_id and hits[0].score == pytest.approx(1.0, abs=1e-4)
    score_for_old_text = {h.doc_id: h.score for h in all_hits(coll, old.contents, "dense")}
    assert score_for_old_text[old.doc_id] < 0.99
    assert coll.get([old.doc_id])[old.doc_id].text == new.text
    for fusion in ("rrf", "linear"):
        fused = coll.search(old.contents, 100, fusion=fusion)
        assert_no_duplicates(fused)
    assert coll.stats()["indexes"]["dense"]["vectors"] == 60


def test_repeated_upserts_in_one_batch_and_across_batches(coll, docs):
    d = docs[0]
    coll.write([Document(d.doc_id, "", f"v1 {unique_token(0, 1)}"),
                Document(d.doc_id, "", f"v2 {unique_token(0, 2)}")])
    coll.write([Document(d.doc_id, "", f"v3 {unique_token(0, 3)}")])
    for v in (0, 1, 2):
        assert coll.search(unique_token(0, v), 5, index="bm25") == []
    assert ids(coll.search(unique_token(0, 3), 5, index="bm25")) == [d.doc_id]
    assert coll.stats()["indexes"]["bm25"]["documents"] == 60
    assert coll.stats()["indexes"]["dense"]["documents"] == 60


def test_unchanged_upsert_is_not_reindexed(coll, docs):
    seq = coll.store.seq
    r = coll.upsert(docs[:10])
    assert (r.upserted, r.unchanged) == (0, 10)
    assert coll.store.seq == seq
    assert all(s["applied_seq"] == seq for s in coll.stats()["indexes"].values())


def test_delete_removes_everywhere(coll, docs):
    gone = [d.doc_id for d in docs[10:20]]
    r = coll.delete(gone + ["not-there"])
    assert (r.deleted, r.missing) == (10, 1)
    assert len(coll) == 50
    assert coll.get(gone) == {}
    for i in range(10, 20):
        assert coll.search(unique_token(i), 10, index="bm25") == []
    queries = [d.contents for d in docs[10:20]] + make_queries(5)
    for index in ("bm25", "dense", None):
        for hits in coll.search(queries, 100, index=index):
            assert not set(ids(hits)) & set(gone)
            assert_no_duplicates(hits)
    for hits in coll.search(queries, 100, fusion="linear"):
        assert not set(ids(hits)) & set(gone)
    assert len(all_hits(coll, "energy", "dense")) == 50
    stats = coll.stats()["indexes"]
    assert stats["bm25"]["documents"] == 50
    assert stats["dense"]["documents"] == 50
    # delete then re-add the same id
    coll.upsert([docs[10]])
    assert ids(coll.search(unique_token(10), 5, index="bm25")) == [docs[10].doc_id]
    assert docs[10].doc_id in ids(all_hits(coll, "energy", "dense"))


def test_reopen_after_close_keeps_results(tmp_path, docs):
    path = tmp_path / "coll"
    queries = make_queries(8)
    with Collection.create(path, SPECS) as c:
        c.write(docs)
        c.write([Document(docs[1].doc_id, "", "changed text")], deletes=[docs[2].doc_id])
        before = {name: c.search(queries, 10, index=name) for name in ("bm25", "dense")}
        seq = c.store.seq
    with Collection.open(path) as c:
        assert c.store.seq == seq
        assert len(c) == 59
        after = {name: c.search(queries, 10, index=name) for name in ("bm25", "dense")}
        assert after["bm25"] == before["bm25"]
        for hb, ha in zip(before["dense"], after["dense"], strict=True):
            assert ids(hb) == ids(ha)
            np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], atol=1e-6)


def test_catch_up_after_a_crash_before_index_apply(tmp_path, docs):
    path = tmp_path / "coll"
    c = Collection.create(path, SPECS)
    c.write(docs[:40])
    applied = c.store.seq
    # As if the process died between the store's commit and the indexes' commits.
    r = c.store.write(docs[40:], deletes=[docs[0].doc_id])
    c.store.write([Document(docs[1].doc_id, "", f"updated {unique_token(1, 9)}")])
    assert r.upserted == 20
    assert all(ix.applied_seq == applied for ix in c.indexes.values())
    c.sync = lambda *a, **k: None  # the process "dies": close applies nothing more
    c.close()
    progress = []
    with Collection.open(path, progress=lambda *a: progress.append(a)) as c:
        seq = c.store.seq
        assert seq > applied
        assert all(ix.applied_seq == seq for ix in c.indexes.values())
        assert {name for name, _, _ in progress} == {"bm25", "dense"}
        assert all(target == seq for _, _, target in progress)
        for i in range(41, 60):
            assert ids(c.search(unique_token(i), 5, index="bm25")) == [f"d{i}"]
        assert c.search(unique_token(0), 5, index="bm25") == []
        assert c.search(unique_token(1, 0), 5, index="bm25") == []
        assert ids(c.search(unique_token(1, 9), 5, index="bm25")) == ["d1"]
        dense = all_hits(c, "pressure velocity", "dense")
        assert sorted(ids(dense)) == sorted(d.doc_id for d in c.store.iter_docs())
        assert c.stats()["indexes"]["dense"]["documents"] == len(c) == 59


def test_lost_index_folder_is_rebuilt_from_the_store(tmp_path, docs):
    path = tmp_path / "coll"
    with Collection.create(path, SPECS) as c:
        c.write(docs)
        expected = c.search(make_queries(3), 10, index="bm25")
    shutil.rmtree(path / "indexes" / "bm25")
    (path / "indexes" / "dense" / "ann.faiss").write_bytes(b"not a faiss file")
    with Collection.open(path) as c:
        assert c.search(make_queries(3), 10, index="bm25") == expected
        assert c.stats()["indexes"]["bm25"]["documents"] == 60
        hits = c.search(docs[7].contents, 1, index="dense")
        assert ids(hits) == [docs[7].doc_id]


def test_index_ahead_of_store_is_refused(tmp_path, docs):
    """A mixed-up folder: the index is refused (named, 503), the collection still opens."""
    path = tmp_path / "coll"
    with Collection.create(path, {"bm25": "bm25"}) as c:
        c.write(docs[:5])
    (path / "docs.sqlite").unlink()
    for extra in path.glob("docs.sqlite-*"):
        extra.unlink()
    with Collection.open(path) as c:
        assert c.health()["bm25"]["state"] == "failed"
        assert "ahead" in c.health()["bm25"]["error"]
        with pytest.raises(IndexUnavailable, match="index 'bm25'.*ahead"):
            c.search("wing", 5, index="bm25")


@pytest.mark.parametrize("factory", [
    "dense(factory=HNSW32,ef_search=64)",
    "dense(factory=IVF4,PQ8,train_min=50,nprobe=4)",
])
@pytest.mark.slow
def test_approximate_factories(tmp_path, factory):
    docs = make_docs(280, seed=11)
    live = by_id(docs)
    with Collection.create(tmp_path / "coll", {"ann": factory}) as c:
        c.write(docs[:30])  # below what training needs: exact search until then
        assert c.stats()["indexes"]["ann"]["exact_fallback"] in (True, False)
        c.write(docs[30:])
        stats = c.stats()["indexes"]["ann"]
        assert stats["exact_fallback"] is False
        assert stats["documents"] == 280
        sample = docs[::14]
        found = sum(d.doc_id in ids(hits)
                    for d, hits in zip(sample, c.search([d.contents for d in sample], 10),
                                       strict=True))
        assert found >= 10  # of 20 (by chance: < 1); PQ8 codes are lossy
        # deletes and updates: removed versions are never returned
        gone = [d.doc_id for d in docs[100:140]]
        c.delete(gone)
        for d in gone:
            live.pop(d)
        changed = [Document(d.doc_id, "", f"rewritten {d.text}") for d in docs[0:20]]
        c.upsert(changed)
        live.update(by_id(changed))
        queries = [d.contents for d in docs[100:140:4]] + make_queries(5)
        for hits in c.search(queries, 300):
            assert not set(ids(hits)) & set(gone)
            assert_no_duplicates(hits)
            assert set(ids(hits)) <= set(live)
        hits_changed = c.search([d.contents for d in changed], 10)
        for hits in hits_changed:
            assert_no_duplicates(hits)
        found = sum(d.doc_id in ids(hits) for d, hits in zip(changed, hits_changed, strict=True))
        assert found >= 10  # of 20: results are labelled with the right ids after removals
        stats = c.stats()["indexes"]["ann"]
        assert stats["documents"] == len(live) == len(c)
        assert stats["vectors"] >= stats["documents"]
        # enough deletes force a rebuild that drops the dead vectors
        more = [d.doc_id for d in docs[140:240]]
        c.delete(more)
        stats = c.stats()["indexes"]["ann"]
        assert stats["vectors"] == stats["documents"] == len(c)
        assert not set(ids(c.search("energy wave", 300))) & set(gone + more)
    with Collection.open(tmp_path / "coll") as c:  # and after reopening
        assert c.stats()["indexes"]["ann"]["documents"] == len(c)
        assert not set(ids(c.search("energy wave", 300))) & set(gone + more)


def test_unknown_index_type_fails_before_anything_is_written(tmp_path):
    path = tmp_path / "coll"
    with pytest.raises(GenseekError, match="unknown index type 'foo'"):
        Collection.create(path, {"bm25": "bm25", "foo": "foo"})
    assert not path.exists()


@pytest.mark.parametrize("spec", [
    "bm25(k1=abc)", "bm25(nope=1)", "dense(foo=1)", "dense(factory=NotAFactory)",
    "dense(metric=cosine)", "dense(batch_size=big)",
])
def test_bad_index_parameters_leave_no_collection(tmp_path, spec):
    path = tmp_path / "coll"
    with pytest.raises(GenseekError):
        Collection.create(path, {"x": spec})
    assert not Collection.exists(path)
    assert not (path / "docs.sqlite").exists()


def test_bad_index_name(tmp_path):
    with pytest.raises(GenseekError):
        Collection.create(tmp_path / "coll", {"../evil": "bm25"})
    assert not (tmp_path / "evil").exists()
    assert not Collection.exists(tmp_path / "coll")


def test_collection_path_that_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("precious")
    with pytest.raises(GenseekError, match="is a file"):
        Collection.create(f, {"bm25": "bm25"})
    with pytest.raises(GenseekError, match="is a file"):
        Collection.open(f)
    assert f.read_text() == "precious"


def test_open_and_create_refusals(tmp_path):
    with pytest.raises(GenseekError, match="not a genseek collection"):
        Collection.open(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(GenseekError, match="not empty"):
        Collection.create(tmp_path / "full", {"bm25": "bm25"})
    assert (tmp_path / "full" / "x.txt").read_text() == "x"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "collection.json").write_text("{not json")
    with pytest.raises(GenseekError, match="manifest"):
        Collection.open(bad)
    (bad / "collection.json").write_text(json.dumps({"format": "genseek-collection",
                                                     "version": 99, "indexes": {}}))
    with pytest.raises(GenseekError, match="newer"):
        Collection.open(bad)


def test_second_open_of_a_locked_collection(tmp_path):
    path = tmp_path / "coll"
    c = Collection.create(path, {"bm25": "bm25"})
    try:
        c.write(make_docs(3))
        with pytest.raises(GenseekError, match="another process"):
            Collection.open(path)
        with pytest.raises(GenseekError):
            Collection.create(path, {"bm25": "bm25"})
        assert len(c) == 3  # the refused opens did not disturb the open one
        c.write(make_docs(2, start=3))
        assert len(c) == 5
    finally:
        c.close()
    with Collection.open(path) as again:
        assert len(again) == 5


def test_stop_word_only_query(coll):
    assert coll.search("the of and a to", 10, index="bm25") == []
    dense = coll.search("the of and a to", 10, index="dense")
    assert len(dense) == 10
    fused = coll.search("the of and a to", 10)
    assert ids(fused) == ids(dense)  # RRF of one list keeps its order
    assert len(coll.search("the of and a to", 10, fusion="linear")) == 10
    batch = coll.search(["the and", "wing lift"], 5, index="bm25")
    assert batch[0] == [] and len(batch[1]) == 5


def test_retriever_errors(coll):
    with pytest.raises(GenseekError, match="no index named"):
        coll.search("x", 5, index="nope")
    with pytest.raises(GenseekError, match="unknown fusion"):
        coll.search("x", 5, fusion="borda")
    assert coll.search("x", 0, index="bm25") == []


def test_add_and_drop_index(coll, docs):
    coll.add_index("lex", "bm25(k1=1.2,b=0.75)")
    assert coll.stats()["indexes"]["lex"]["documents"] == 60
    assert ids(coll.search(unique_token(4), 5, index="lex")) == [docs[4].doc_id]
    with pytest.raises(GenseekError, match="already exists"):
        coll.add_index("lex", "bm25")
    assert coll.add_index("lex", "bm25(b=0.75,k1=1.2)") is coll.index("lex")  # same spec
    coll.drop_index("lex")
    assert "lex" not in coll.indexes
    assert not (coll.path / "indexes" / "lex").exists()
    manifest = json.loads((coll.path / "collection.json").read_text())
    assert set(manifest["indexes"]) == {"bm25", "dense"}


def test_ingest_resume_point_and_empty_documents(tmp_path):
    with Collection.create(tmp_path / "coll", {"bm25": "bm25", "dense": "dense"}) as c:
        docs = make_docs(25) + [Document("empty1"), Document("empty2", "  ", "")]
        records = ((i + 1, d) for i, d in enumerate(docs))
        report = c.ingest(records, source_key="src", batch_size=10)
        assert report.read == 27
        assert report.upserted == 27
        assert set(report.empty_ids) == {"empty1", "empty2"}
        assert c.resume_point("src") == 27
        assert c.resume_point("other") == 0
        assert c.stats()["indexes"]["dense"]["documents"] == 27
        assert c.stats()["indexes"]["bm25"]["documents"] == 27
        assert len(c.search("the", 30, index="dense")) == 27
        again = c.ingest(((i + 1, d) for i, d in enumerate(docs)), batch_size=10)
        assert (again.upserted, again.unchanged) == (0, 27)


def test_very_large_document_in_bm25(tmp_path):
    filler = "alpha beta gamma delta " * (10 * 1024 * 1024 // 23)
    big = Document("big", "huge", filler + " needleword")
    with Collection.create(tmp_path / "coll", {"bm25": "bm25"}) as c:
        c.write([big, Document("small", "", "alpha tiny")])
        assert ids(c.search("needleword", 5)) == ["big"]
        assert set(ids(c.search("alpha", 5))) == {"big", "small"}


def test_dense_index_standalone_replay_is_idempotent(tmp_path, docs):
    from genseek.store import DocStore

    store = DocStore(tmp_path / "docs.sqlite")
    index = DenseIndex.open(tmp_path / "dense", {})
    try:
        store.write(docs[:20])
        store.write([Document(docs[0].doc_id, "", "new")], deletes=[docs[1].doc_id])
        cs = store.changes(0)
        index.apply(cs)
        index.apply(cs)  # a replay after a crash
        index.commit(cs.upto_seq)
        assert index.applied_seq == store.seq
        assert index.stats().documents == 19
        hits = index.search(["new"], 100)[0]
        assert len(hits) == 19 and hits[0].doc_id == docs[0].doc_id
    finally:
        index.close()
        store.close()


def test_queries_are_bags_of_words_not_lucene_syntax(tmp_path):
    docs = make_docs(20)
    with Collection.create(tmp_path / "coll", {"bm25": "bm25"}) as c:
        c.write(docs)
        plain = c.search("wing lift", 10)
        for query in ['title:wing (lift] "unbalanced', "wing~ lift^2", "wing/lift", "((((",
                      "*", "?", "AND OR NOT", "\\", "wing\x00lift"]:
            hits = c.search(query, 10)  # never a parse error
            assert_no_duplicates(hits)
        assert c.search("wing~ lift^2", 10) == plain
        long_query = " ".join(f"w{i}" for i in range(3000)) + " wing lift"
        assert ids(c.search(long_query, 10)) == ids(plain)
        assert c.search([], 5) == []
        same = c.search(["wing lift"] * 3, 4)
        assert same[0] == same[1] == same[2] == plain[:4]


def test_collection_without_indexes(tmp_path):
    docs = make_docs(10)
    with Collection.create(tmp_path / "coll") as c:
        c.write(docs)
        assert len(c) == 10
        with pytest.raises(GenseekError, match="no indexes"):
            c.search("wing", 5)
        c.add_index("bm25", "bm25")
        assert ids(c.search(unique_token(3), 5)) == ["d3"]
    with Collection.open(tmp_path / "coll") as c:
        assert set(c.indexes) == {"bm25"}


def test_dense_l2_metric(tmp_path):
    docs = make_docs(15, seed=4)
    with Collection.create(tmp_path / "coll", {"l2": "dense(metric=l2)"}) as c:
        c.write(docs)
        for d, hits in zip(docs[:5], c.search([d.contents for d in docs[:5]], 15), strict=True):
            assert hits[0].doc_id == d.doc_id
            assert hits[0].score == pytest.approx(0.0, abs=1e-4)  # minus the squared distance
            scores = [h.score for h in hits]
            assert scores == sorted(scores, reverse=True)
            assert all(s <= 1e-4 for s in scores)


class _GatedIndex:
    """An in-memory index whose ``apply`` blocks until the test opens its gate."""

    gate = None  # set per test

    def __init__(self):
        self.seq = 0
        self.docs: dict[str, str] = {}

    @classmethod
    def open(cls, path, params):
        return cls()

    @property
    def applied_seq(self):
        return self.seq

    def apply(self, changes):
        assert type(self).gate.wait(30), "the gate never opened"
        for d in changes.upserts:
            self.docs[d.doc_id] = d.text
        for doc_id in changes.deleted_ids:
            self.docs.pop(doc_id, None)

    def commit(self, seq):
        self.seq = seq

    def search(self, queries, k, **params):
        return [[] for _ in queries]

    def stats(self):
        return {"documents": len(self.docs)}

    def close(self):
        pass


def test_background_appliers_are_independent_per_index(tmp_path, monkeypatch):
    """A stuck index does not hold back another: bm25 applies and serves a new
    document while the gated index still waits; both catch up once it opens."""
    import threading

    from genseek import registry

    gate = threading.Event()
    monkeypatch.setattr(_GatedIndex, "gate", gate)
    monkeypatch.setitem(registry.BUILTIN_TYPES, "slow", f"{__name__}:_GatedIndex")
    gate.set()
    c = Collection.create(tmp_path / "c", {"bm25": "bm25", "slow": "slow"})
    try:
        gate.clear()
        c.start_background_sync(interval=0.05)
        new = Document("fresh", "", f"{unique_token(999)} fresh document")
        seq = c.write([new], sync=False).seq
        assert c.wait_for(seq, timeout=30, indexes=["bm25"])
        assert ids(c.search(unique_token(999), 5, index="bm25")) == ["fresh"]
        assert c.index("slow").applied_seq < seq and c.applied_seq < seq
        assert not c.wait_for(seq, timeout=0.2)  # the whole collection is not there yet
        gate.set()
        assert c.wait_for(seq, timeout=30)
        assert c.index("slow").docs["fresh"] == new.text
        with pytest.raises(GenseekError, match="nope"):
            c.wait_for(seq, timeout=1, indexes=["nope"])
    finally:
        gate.set()
        c.close()


def test_dir_bytes_survives_files_vanishing_during_the_walk(tmp_path, monkeypatch):
    """A stats call walks folders that writers change: renamed temp files, deleted journals."""
    import os

    from genseek import protocols

    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"x" * 10)
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 5)
    assert protocols.dir_bytes(tmp_path) == 15
    real_walk = os.walk

    def walk_with_a_ghost(path):  # lists a file that is gone when it is measured
        for root, dirs, names in real_walk(path):
            yield root, dirs, [*names, "docs.sqlite-journal"]

    monkeypatch.setattr(protocols.os, "walk", walk_with_a_ghost)
    assert protocols.dir_bytes(tmp_path) == 15
    assert protocols.file_bytes([tmp_path / "a.bin", tmp_path / "gone", tmp_path / "sub"]) == 10


@pytest.mark.slow
def test_a_write_waited_for_is_searchable_at_once(tmp_path):
    """Read your writes: once ``wait_for(seq)`` returns, bm25's searcher already holds the
    write (the applied sequence number moves only after the new searcher is in place)."""
    with Collection.create(tmp_path / "c", {"bm25": "bm25"}) as c:
        c.start_background_sync(interval=0.01)
        for i in range(60):
            seq = c.write([Document(f"r{i}", "", f"ryw {unique_token(i)}")], sync=False).seq
            deadline = time.monotonic() + 30  # what wait_for's predicate looks at, polled
            while c.index("bm25").applied_seq < seq and time.monotonic() < deadline:
                pass
            assert ids(c.search(unique_token(i), 3, index="bm25")) == [f"r{i}"], i


def test_deletes_left_by_a_kill_between_commit_and_merge_are_expunged_at_open(tmp_path,
                                                                             monkeypatch):
    """bm25 merges deleted documents away right after its commit; a process killed in
    between leaves them counted in Lucene's statistics (maxDoc), so opening expunges them."""
    from genseek.indexers._lucene import LuceneFolder

    docs = make_docs(300, seed=4)
    path = tmp_path / "c"
    with Collection.create(path, {"bm25": "bm25"}) as c:
        c.write(docs)
        with monkeypatch.context() as m:
            m.setattr(LuceneFolder, "expunge_deletes", lambda self: None)  # "killed" here
            c.write([Document(d.doc_id, d.title, d.text + " again") for d in docs[:2]],
                    deletes=[docs[5].doc_id])
            bm25 = c.stats()["indexes"]["bm25"]
            assert bm25["documents"] == len(c) == 299 and bm25["max_doc"] == 302
    with Collection.open(path) as c:
        bm25 = c.stats()["indexes"]["bm25"]
        assert bm25["documents"] == bm25["max_doc"] == len(c) == 299
