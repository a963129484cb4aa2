"""The collection-level contract every index type keeps, as checks any type can run.

``tests/contract/test_contract.py`` runs every check for every registered index type (the built-ins and
any type another package registers through the ``genseek.indexes`` entry point). A package
that adds a type runs the same checks in its own tests::

    from genseek import contract

    def test_my_type_keeps_the_contract(tmp_path):
        contract.check_all("mytype(option=1)", tmp_path)

Each check creates collections of one index named ``ix`` with ``spec`` under ``folder`` and
raises ``AssertionError`` saying what broke:

- :func:`check_writes`: an upsert replaces, a delete removes, re-applying a change set changes
  nothing, and the index built incrementally (batches of adds, replacements and deletes) answers
  like one built in one batch from the final documents;
- :func:`check_crash`: a process killed (SIGKILL) after the store committed a batch and the index
  applied it, but before the index committed it, reopens consistent and caught up;
- :func:`check_reads_during_writes`: searches running while another thread writes never return
  a deleted document, nor one document twice;
- :func:`check_isolation`: two collections written at once by several threads each hold exactly
  their own documents.

"Answers like" compares every query's full ranking (``k`` beyond the collection, so approximate
indexes probe everything): the same documents, scores within ``atol``, the same order except
among scores within ``atol`` of each other. Documents have titles, and their words come from
:data:`WORDS`, so a tiny word-level test LM can read them.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from genseek.collection import Collection
from genseek.types import Document, Hit, IndexStats

_TEXT = ("wing lift drag airflow pressure boundary layer shock nozzle thrust velocity cell "
         "protein gene enzyme membrane receptor tissue immune library catalog index citation "
         "journal archive reader algorithm compiler memory cache network query storage kernel "
         "energy particle wave quantum electron photon thermal spectrum")
WORDS = tuple(_TEXT.split())
QUERIES = ("wing pressure", "protein gene cell", "library citation", "memory cache kernel",
           "energy photon wave", "shock nozzle thrust velocity")
ALL = 10_000  # k for "every document"
INDEX = "ix"


def corpus(n: int, seed: int = 0, prefix: str = "d", start: int = 0) -> list[Document]:
    """``n`` titled documents ``{prefix}{i}``, words from :data:`WORDS`."""
    rng = random.Random(seed * 7919 + start)
    docs = []
    for i in range(start, start + n):
        words = rng.sample(WORDS, 12)
        docs.append(Document(f"{prefix}{i}", " ".join(words[:2]),
                             " ".join(rng.choice(words) for _ in range(rng.randint(6, 20))),
                             {"n": i}))
    return docs


def _rankings(coll: Collection, queries: Sequence[str] = QUERIES) -> list[list[Hit]]:
    return [coll.search(q, ALL, index=INDEX) for q in queries]


def assert_same_rankings(got: list[list[Hit]], want: list[list[Hit]], atol: float,
                         what: str) -> None:
    """The same documents per query, scores within ``atol``, order equal up to near-ties."""
    for q, (g, w) in enumerate(zip(got, want, strict=True)):
        gs, ws = {h.doc_id: h.score for h in g}, {h.doc_id: h.score for h in w}
        assert set(gs) == set(ws), (f"{what}: query {QUERIES[q % len(QUERIES)]!r} returns "
                                    f"{sorted(set(gs) ^ set(ws))[:5]} in one list only")
        for doc_id, score in gs.items():
            assert abs(score - ws[doc_id]) <= atol, (f"{what}: {doc_id} scores {score} vs "
                                                     f"{ws[doc_id]} (atol {atol})")
        for a, b in zip(g, g[1:], strict=False):  # order: nothing out of place beyond atol
            assert ws[a.doc_id] >= ws[b.doc_id] - 2 * atol, (
                f"{what}: {a.doc_id} before {b.doc_id} but {ws[a.doc_id]} < {ws[b.doc_id]}")


def assert_only_live(results: list[list[Hit]], live: set[str], what: str) -> None:
    for hits in results:
        ids = [h.doc_id for h in hits]
        assert len(ids) == len(set(ids)), f"{what}: a document appears twice: {ids}"
        stray = set(ids) - live
        assert not stray, f"{what}: returns documents that are not live: {sorted(stray)[:5]}"


def _documents(coll: Collection) -> int | None:
    stats = coll.index(INDEX).stats()
    assert isinstance(stats, IndexStats), (
        f"stats() returned {type(stats).__name__}, not genseek.types.IndexStats")
    return stats.documents


def rebuilt(spec: str, folder: Path, docs: Sequence[Document]) -> Collection:
    """A collection whose index was built in one batch from ``docs``."""
    coll = Collection.create(folder, {INDEX: spec})
    coll.write(list(docs))
    return coll


def check_writes(spec: str, folder: Path, atol: float = 1e-4) -> None:
    """Upsert replaces, delete removes, re-applying changes nothing, incremental = rebuilt."""
    docs = corpus(30, seed=1)
    with Collection.create(folder / "incremental", {INDEX: spec}) as coll:
        coll.write(docs[:20])
        coll.write(docs[20:])
        replaced = [Document(d.doc_id, d.title, f"{d.text} {WORDS[i]} {WORDS[-i]}", {"v": 2})
                    for i, d in enumerate(docs[3:8], start=1)]
        deleted = {d.doc_id for d in docs[10:14]}
        before = coll.store.seq
        coll.write(replaced + corpus(3, seed=2, start=30), deletes=sorted(deleted))
        live = {d.doc_id for d in coll.store.iter_docs()}
        assert live == {d.doc_id for d in docs + corpus(3, seed=2, start=30)} - deleted
        assert coll.index(INDEX).applied_seq == coll.store.seq
        count = _documents(coll)
        assert count is None or count == len(live), f"{spec}: stats say {count} documents, " \
                                                    f"{len(live)} are live"
        results = _rankings(coll)
        assert_only_live(results, live, f"{spec} after deletes")
        # re-applying the last change set is a no-op
        index = coll.index(INDEX)
        changes = coll.store.changes(before, 10_000)
        index.apply(changes)
        index.commit(changes.upto_seq)
        assert_same_rankings(_rankings(coll), results, 0.0, f"{spec} re-applied")
        assert _documents(coll) == count, f"{spec}: re-applying changed the document count"
        final = list(coll.store.iter_docs())
    with rebuilt(spec, folder / "rebuilt", final) as fresh:
        assert_same_rankings(results, _rankings(fresh), atol, f"{spec} incremental vs rebuilt")


_CRASH_CHILD = """
import os, signal, sys
from pathlib import Path
from genseek import contract
from genseek.collection import Collection
folder, spec = Path(sys.argv[1]), sys.argv[2]
coll = Collection.create(folder, {contract.INDEX: spec})
docs = contract.corpus(24, seed=3)
coll.write(docs[:16])
before = coll.store.seq
coll.write(docs[16:] + [contract.Document(d.doc_id, d.title, d.text + " replaced")
                        for d in docs[:3]], deletes=[docs[5].doc_id, docs[6].doc_id],
           sync=False)  # the store has committed: acknowledged
index = coll.index(contract.INDEX)
index.apply(coll.store.changes(before, 10_000))  # applied, never committed
print("APPLIED", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def check_crash(spec: str, folder: Path, atol: float = 1e-4, timeout: float = 600) -> None:
    """SIGKILL between the store's commit and the index's: reopen consistent and caught up."""
    proc = subprocess.run([sys.executable, "-c", _CRASH_CHILD, str(folder / "crashed"), spec],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == -signal.SIGKILL and "APPLIED" in proc.stdout, (
        f"{spec}: the writer did not reach the kill point: {proc.stderr[-1500:]}")
    with Collection.open(folder / "crashed") as coll:
        assert coll.health()[INDEX]["state"] == "ready", coll.health()
        assert coll.index(INDEX).applied_seq == coll.store.seq
        live = {d.doc_id for d in coll.store.iter_docs()}
        assert len(live) == 22
        results = _rankings(coll)
        assert_only_live(results, live, f"{spec} after the crash")
        final = list(coll.store.iter_docs())
    with rebuilt(spec, folder / "crash-rebuilt", final) as fresh:
        assert_same_rankings(results, _rankings(fresh), atol, f"{spec} reopened vs rebuilt")


def check_reads_during_writes(spec: str, folder: Path, rounds: int = 8, readers: int = 3,
                              seconds: float = 120.0) -> None:
    """Readers never see a document after its delete was applied, nor one twice."""
    with Collection.create(folder / "live", {INDEX: spec}) as coll:
        coll.write(corpus(20, seed=4))
        deleted_at: dict[str, int] = {}  # doc id -> seq of its delete (ids never reused)
        stop = threading.Event()
        problems: list[str] = []
        searches = [0]

        def write() -> None:
            try:
                for r in range(rounds):
                    if time.monotonic() > deadline:
                        break
                    new = corpus(4, seed=10 + r, prefix=f"r{r}-")
                    gone = [f"d{r}"] + ([f"r{r - 1}-0"] if r else [])
                    result = coll.write(new, deletes=gone)
                    for doc_id in gone:
                        deleted_at[doc_id] = result.seq
            finally:
                stop.set()

        def read(i: int) -> None:
            while not stop.is_set() and not problems:
                applied = coll.index(INDEX).applied_seq
                dead = {d for d, seq in list(deleted_at.items()) if seq <= applied}
                for q in QUERIES[i::readers]:
                    hits = coll.search(q, ALL, index=INDEX)
                    ids = [h.doc_id for h in hits]
                    searches[0] += 1
                    if len(ids) != len(set(ids)):
                        problems.append(f"{spec}: {q!r} returned a document twice: {ids}")
                    if dead & set(ids):
                        problems.append(f"{spec}: {q!r} returned deleted {sorted(dead & set(ids))}")

        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=read, args=(i,)) for i in range(readers)]
        writer = threading.Thread(target=write)
        for t in threads:
            t.start()
        writer.start()
        writer.join()
        for t in threads:
            t.join()
        assert not problems, problems[0]
        assert searches[0] > 0
        live = {d.doc_id for d in coll.store.iter_docs()}
        assert_only_live(_rankings(coll), live, f"{spec} after the writes")


def check_isolation(spec: str, folder: Path, writers: int = 2, batches: int = 3,
                    atol: float = 1e-4) -> None:
    """Two collections written at once by ``writers`` threads each: no foreign document, no
    lost one, and each answers like a collection built from its own documents alone."""
    colls = {name: Collection.create(folder / name, {INDEX: spec}) for name in ("a", "b")}
    errors: list[BaseException] = []
    written: dict[str, list[Document]] = {name: [] for name in colls}
    lock = threading.Lock()

    def write(name: str, w: int) -> None:
        try:
            for b in range(batches):
                docs = corpus(5, seed=100 * w + b + (0 if name == "a" else 50),
                              prefix=f"{name}{w}x{b}-")
                colls[name].write(docs)
                with lock:
                    written[name].extend(docs)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(name, w)) for name in colls
               for w in range(writers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, f"{spec}: a concurrent writer failed: {errors[0]!r}"
        for name, coll in colls.items():
            own = {d.doc_id for d in written[name]}
            assert {d.doc_id for d in coll.store.iter_docs()} == own
            count = _documents(coll)
            assert count is None or count == len(own), (
                f"{spec}: collection {name} holds {count} documents, {len(own)} were written")
            results = _rankings(coll)
            foreign = {h.doc_id for hits in results for h in hits} - own
            assert not foreign, f"{spec}: collection {name} returns {sorted(foreign)[:5]}"
            with rebuilt(spec, folder / f"{name}-rebuilt", written[name]) as fresh:
                assert_same_rankings(results, _rankings(fresh), atol,
                                     f"{spec} collection {name} vs its own documents alone")
    finally:
        for coll in colls.values():
            coll.close()


def check_all(spec: str, folder: Path, atol: float = 1e-4) -> None:
    """Every check of this module, each in its own subfolder of ``folder``."""
    for name, check in (("writes", check_writes), ("crash", check_crash),
                        ("isolation", check_isolation)):
        check(spec, Path(folder) / name, atol=atol)
    check_reads_during_writes(spec, Path(folder) / "reads")


__all__ = ["ALL", "INDEX", "QUERIES", "WORDS", "assert_only_live", "assert_same_rankings",
           "check_all", "check_crash", "check_isolation", "check_reads_during_writes",
           "check_writes", "corpus"]
