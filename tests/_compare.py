"""Comparing two collections: the same store rows, vectors within float tolerance, the same
search results (the Ray tests compare a Ray-indexed collection with a single-process one)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from genseek.collection import Collection


def store_dump(path: Path) -> dict[str, list[tuple]]:
    db = sqlite3.connect(f"file:{path / 'docs.sqlite'}?mode=ro", uri=True)
    try:
        return {table: db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                for table in ("docs", "oplog", "meta")}
    finally:
        db.close()


def assert_same_collection(a: Path, b: Path, queries: list[str]) -> None:
    """Same store rows, vectors within float tolerance, same search results."""
    assert store_dump(a) == store_dump(b)
    with Collection.open(a) as ca, Collection.open(b) as cb:
        assert list(ca.indexes) == list(cb.indexes)
        for name in ca.indexes:
            ia, ib = ca.indexes[name], cb.indexes[name]
            assert ia.applied_seq == ib.applied_seq == ca.store.seq
            if name == "dense":
                la, va = ia._store.vectors()
                lb, vb = ib._store.vectors()
                assert la.tolist() == lb.tolist()
                assert float(np.abs(va - vb).max()) <= 1e-6
            if name == "muvera":
                labels = sorted(ia._rows)
                assert labels == sorted(ib._rows)
                (ta, oa), (tb, ob) = ia.doc_tokens(labels), ib.doc_tokens(labels)
                assert oa.tolist() == ob.tolist()
                # float16 as stored: equal, or one float16 step apart where float32 rounding
                # of a value at a float16 boundary went the other way
                assert float(np.abs(ta - tb).max()) <= 2.0 ** -10
            for qa, qb in zip(ca.search(queries, k=10, index=name),
                              cb.search(queries, k=10, index=name), strict=True):
                assert [h.doc_id for h in qa] == [h.doc_id for h in qb], name
                assert np.allclose([h.score for h in qa], [h.score for h in qb],
                                   rtol=0, atol=1e-5), name
