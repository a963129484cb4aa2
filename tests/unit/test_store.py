"""The SQLite document store: write semantics, the operation log and change sets."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genseek.errors import InputError
from genseek.store import DocStore
from genseek.types import Document


@pytest.fixture
def store(tmp_path):
    s = DocStore(tmp_path / "docs.sqlite")
    yield s
    s.close()


def doc(doc_id: str, text: str = "", title: str = "", **meta) -> Document:
    return Document(doc_id, title, text, meta)


def live(store: DocStore) -> dict[str, tuple[str, str, dict]]:
    return {d.doc_id: (d.title, d.text, dict(d.metadata)) for d in store.iter_docs()}


def test_empty_store(store):
    assert store.seq == 0
    assert len(store) == 0
    assert list(store.iter_docs()) == []
    assert not store.changes(0)
    assert store.changes(0).upto_seq == 0


def test_write_net_effect(store):
    r = store.write([doc("a", "one"), doc("b", "two"), doc("c", "three")])
    assert (r.upserted, r.unchanged, r.deleted, r.missing) == (3, 0, 0, 0)
    assert r.seq == store.seq == 3
    r = store.write([doc("a", "one v2")], deletes=["b"])
    assert (r.upserted, r.deleted) == (1, 1)
    assert r.seq == 5
    assert live(store) == {"a": ("", "one v2", {}), "c": ("", "three", {})}
    got = store.get(["a", "b", "c", "zzz"])
    assert set(got) == {"a", "c"}
    # A document's version is the seq of the upsert that wrote it, unique across docs.
    assert got["a"].version == 4
    assert got["c"].version == 3
    assert len(store) == 2


def test_duplicate_ids_in_one_batch_last_wins(store):
    r = store.write([doc("x", "first"), doc("y", "other"), doc("x", "second"), doc("x", "third")])
    assert r.upserted == 2
    assert r.seq == 2
    assert store.get(["x"])["x"].text == "third"
    # The winning copy keeps its own position: x was written after y.
    assert store.get(["x"])["x"].version > store.get(["y"])["y"].version


def test_deletes_apply_after_upserts_in_a_batch(store):
    r = store.write([doc("x", "new")], deletes=["x"])
    assert (r.upserted, r.deleted, r.missing) == (1, 1, 0)
    assert store.get(["x"]) == {}
    assert len(store) == 0


def test_unchanged_upsert_is_skipped(store):
    store.write([doc("a", "text", "title", k=1)])
    seq = store.seq
    r = store.write([doc("a", "text", "title", k=1)])
    assert (r.upserted, r.unchanged) == (0, 1)
    assert r.seq == seq == store.seq
    assert not store.changes(seq)
    # Any content change (title, text or metadata) is a new version.
    for changed in (doc("a", "text", "title", k=2), doc("a", "text", "other", k=2),
                    doc("a", "text2", "other", k=2)):
        r = store.write([changed])
        assert r.upserted == 1
        assert r.seq == seq + 1
        seq = r.seq


def test_title_text_boundary_is_part_of_the_hash(store):
    store.write([doc("a", "bc", "a")])
    r = store.write([doc("a", "c", "ab")])
    assert r.upserted == 1
    assert store.get(["a"])["a"].title == "ab"


def test_delete_missing_id_is_counted(store):
    store.write([doc("a", "x")])
    seq = store.seq
    r = store.write(deletes=["nope", "a", "nope", "a"])
    assert (r.deleted, r.missing) == (1, 1)
    assert r.seq == seq + 1
    r = store.write(deletes=["a"])
    assert (r.deleted, r.missing) == (0, 1)
    assert r.seq == store.seq == seq + 1


def test_meta_is_written_with_the_batch(store):
    assert store.get_meta("resume") is None
    r = store.write([doc("a", "x")], meta={"resume": "10"})
    assert store.get_meta("resume") == "10"
    # A batch of nothing but meta changes no sequence number.
    store.write(meta={"resume": "20", "other": "v"})
    assert store.get_meta("resume") == "20"
    assert store.get_meta("other") == "v"
    assert store.seq == r.seq


def test_failed_batch_writes_nothing_not_even_meta(store):
    store.write([doc("a", "x")], meta={"resume": "1"})
    seq = store.seq
    bad = Document("bad", "", "text", {"obj": object()})  # not JSON: refused before writing
    with pytest.raises(InputError, match="metadata.obj is a object, not a JSON value"):
        store.write([doc("b", "fine"), bad], deletes=["a"], meta={"resume": "2"})
    assert store.seq == seq
    assert set(live(store)) == {"a"}
    assert store.get_meta("resume") == "1"


def test_metadata_round_trip(store):
    store.write([Document("m", "T", "body", {"year": 1999, "tags": ["x", "y"], "n": None})])
    got = store.get(["m"])["m"]
    assert dict(got.metadata) == {"year": 1999, "tags": ["x", "y"], "n": None}
    assert got.contents == "T body"


def test_store_survives_reopen(tmp_path):
    s = DocStore(tmp_path / "docs.sqlite")
    s.write([doc("a", "one"), doc("b", "two")], meta={"k": "v"})
    s.write(deletes=["a"])
    seq = s.seq
    s.close()
    s = DocStore(tmp_path / "docs.sqlite")
    try:
        assert s.seq == seq
        assert live(s) == {"b": ("", "two", {})}
        assert s.get_meta("k") == "v"
    finally:
        s.close()


def test_iter_docs_in_version_order_across_batches(store):
    store.write([doc(f"d{i}", str(i)) for i in range(25)])
    store.write([doc("d3", "changed")])
    versions = [d.version for d in store.iter_docs(batch_size=4)]
    assert versions == sorted(versions)
    assert len(versions) == 25
    assert [d.doc_id for d in store.iter_docs(batch_size=4)][-1] == "d3"


def test_get_many_ids(store):
    store.write([doc(f"d{i}", str(i)) for i in range(1200)])
    got = store.get([f"d{i}" for i in range(0, 1300)])
    assert len(got) == 1200


def test_changes_windows(store):
    store.write([doc("a", "1"), doc("b", "1"), doc("c", "1")])  # seq 1..3
    store.write([doc("a", "2")], deletes=["b"])  # seq 4 (a v4, prev 1), 5 (delete b, prev 2)
    full = store.changes(0)
    assert full.upto_seq == 5
    assert {d.doc_id: d.version for d in full.upserts} == {"a": 4, "c": 3}
    assert set(full.removed) == {("a", 1), ("b", 2)}
    assert full.deleted_ids == {"b"}
    # A window that ends before a's replacement: a was touched but is not live at v<=2.
    w = store.changes(0, max_ops=2)
    assert (w.after_seq, w.upto_seq) == (0, 2)
    assert {d.doc_id for d in w.upserts} == set()
    assert w.deleted_ids == {"a", "b"}
    w2 = store.changes(2, max_ops=2)
    assert (w2.after_seq, w2.upto_seq) == (2, 4)
    assert {d.doc_id for d in w2.upserts} == {"a", "c"}
    assert ("a", 1) in w2.removed
    assert store.changes(5, max_ops=10).upto_seq == 5
    assert not store.changes(5)


# -- change sets replayed by model indexes --------------------------------------------------


class ByIdIndex:
    """Applies change sets the way the bm25 index does: replace by id, delete by id."""

    def __init__(self):
        self.docs: dict[str, Document] = {}

    def apply(self, cs):
        for d in cs.upserts:
            self.docs[d.doc_id] = d
        for doc_id in cs.deleted_ids:
            self.docs.pop(doc_id, None)

    def state(self):
        return {i: (d.text, d.version) for i, d in self.docs.items()}


class ByVersionIndex:
    """Applies change sets the way the dense index does: labels are versions."""

    def __init__(self):
        self.labels: dict[int, Document] = {}

    def apply(self, cs):
        for _, version in cs.removed:
            self.labels.pop(version, None)
        for d in cs.upserts:
            self.labels.setdefault(d.version, d)

    def state(self):
        ids = [d.doc_id for d in self.labels.values()]
        assert len(ids) == len(set(ids)), "a document is held twice"
        return {d.doc_id: (d.text, d.version) for d in self.labels.values()}


ops_strategy = st.lists(
    st.lists(
        st.one_of(
            st.tuples(st.just("up"), st.sampled_from("abcdef"), st.integers(0, 3)),
            st.tuples(st.just("del"), st.sampled_from("abcdefg"), st.just(0)),
        ),
        min_size=0, max_size=6,
    ),
    min_size=1, max_size=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=ops_strategy, window=st.integers(1, 7), replay=st.booleans(),
       checkpoints=st.lists(st.integers(0, 11), max_size=3))
def test_change_sets_replayed_in_any_window_reach_the_live_state(batches, window, replay,
                                                                 checkpoints):
    with tempfile.TemporaryDirectory() as tmp:
        store = DocStore(Path(tmp) / "docs.sqlite")
        try:
            by_id, by_version = ByIdIndex(), ByVersionIndex()
            applied = 0

            def catch_up():
                nonlocal applied
                while applied < store.seq:
                    cs = store.changes(applied, window)
                    assert cs.after_seq == applied
                    assert applied < cs.upto_seq <= applied + window
                    assert not {d.doc_id for d in cs.upserts} & cs.deleted_ids
                    for _ in range(2 if replay else 1):  # replaying a change set is harmless
                        by_id.apply(cs)
                        by_version.apply(cs)
                    applied = cs.upto_seq

            for n, batch in enumerate(batches):
                ups = [doc(i, f"{i}-{v}") for op, i, v in batch if op == "up"]
                dels = [i for op, i, _ in batch if op == "del"]
                store.write(ups, dels)
                if n in checkpoints:  # an index that catches up part way through
                    catch_up()
            catch_up()
            expected = {d.doc_id: (d.text, d.version) for d in store.iter_docs()}
            assert by_id.state() == expected
            assert by_version.state() == expected
            # Replaying everything from scratch into fresh indexes gives the same state.
            fresh, applied_ = ByVersionIndex(), 0
            while applied_ < store.seq:
                cs = store.changes(applied_, window)
                fresh.apply(cs)
                applied_ = cs.upto_seq
            assert fresh.state() == expected
        finally:
            store.close()


def test_oplog_and_docs_agree(store):
    store.write([doc("a", "1"), doc("b", "1")])
    store.write([doc("a", "2")], deletes=["b", "zz"])
    db = sqlite3.connect(store.path)
    try:
        ops = db.execute("SELECT seq, op, doc_id, prev_version FROM oplog ORDER BY seq").fetchall()
    finally:
        db.close()
    assert ops == [(1, "upsert", "a", None), (2, "upsert", "b", None), (3, "upsert", "a", 1),
                   (4, "delete", "b", 2)]
