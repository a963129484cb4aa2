"""Java from many Python threads: per-thread proxy classes keep concurrent Lucene writers apart.

pyjnius stores the receiver of ``obj.method`` in the method's descriptor, shared by every
instance of the Java class; a thread switch between the lookup and the call runs the method on
another thread's object. These tests force thread switches at almost every bytecode
(``sys.setswitchinterval``), which made two bm25 writers corrupt each other before the fix.
"""

from __future__ import annotations

import sys
import threading

import pytest

from genseek.indexers.bm25 import BM25Index
from genseek.indexers.jvm import Shared, here, jclass
from genseek.types import ChangeSet, Document


@pytest.fixture
def fast_switching():
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def run_threads(targets):
    errors: list[BaseException] = []

    def guard(fn):
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=guard, args=(fn,)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_each_thread_has_its_own_proxy_classes():
    mine = jclass("java.util.ArrayList")
    assert jclass("java.util.ArrayList") is mine
    theirs = {}
    assert not run_threads([lambda: theirs.setdefault("cls", jclass("java.util.ArrayList"))])
    assert theirs["cls"] is not mine
    # an object made in another thread is called through this thread's class
    made = {}
    assert not run_threads([lambda: made.setdefault("list", theirs["cls"]())])
    view = here(made["list"])
    assert type(view) is mine
    view.add("x")
    assert here(made["list"]).size() == 1
    shared = Shared(made["list"])
    assert shared.here() is shared.here()  # cached per thread


def test_concurrent_lists_get_only_their_own_items(fast_switching):
    """Two threads appending to their own Java lists with an argument that is itself a Java
    call (a constructor): no item lands in the other thread's list."""
    lists = {}

    def fill(name: str) -> None:
        ArrayList, Str = jclass("java.util.ArrayList"), jclass("java.lang.StringBuilder")
        items = lists[name] = ArrayList()
        for i in range(3000):
            items.add(Str(f"{name}{i}").toString())

    assert not run_threads([lambda: fill("a"), lambda: fill("b")])
    for name in ("a", "b"):
        got = list(here(lists[name]).toArray())
        assert len(got) == 3000 and all(s.startswith(name) for s in got)


def _docs(tag: str, batch: int, n: int = 50) -> list[Document]:
    return [Document(f"{tag}-{batch}-{j}", "", f"shared words {tag}only {tag}b{batch}d{j}",
                     version=batch * n + j + 1) for j in range(n)]


def test_two_bm25_indexes_written_by_two_threads_stay_isolated(tmp_path, fast_switching):
    indexes = {tag: BM25Index.open(tmp_path / tag, {}) for tag in ("a", "b")}
    batches = 20

    def write(tag: str) -> None:
        index = indexes[tag]
        for b in range(batches):
            docs = _docs(tag, b)
            index.apply(ChangeSet(b * len(docs), (b + 1) * len(docs), tuple(docs)))
            index.commit((b + 1) * len(docs))

    try:
        errors = run_threads([lambda: write("a"), lambda: write("b")])
        assert not errors, errors[0]
        total = batches * 50
        for tag, other in (("a", "b"), ("b", "a")):
            index = indexes[tag]
            assert index.stats().documents == total
            own = index.search([f"{tag}only"], total + 10)[0]
            assert len(own) == total and all(h.doc_id.startswith(f"{tag}-") for h in own)
            assert index.search([f"{other}only"], 10)[0] == []  # nothing of the other index
    finally:
        for index in indexes.values():
            index.close()
