"""Lazy opening: a command pays only for the indexes it touches, and `stats` reads what the
collection committed without opening any index (no JVM, no model, no lock)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _synth import make_docs, unique_token, write_jsonl

from genseek import Collection, Document
from genseek.collection import STATE
from genseek.errors import InvalidParameter

SPECS = {"bm25": "bm25", "dense": "dense"}


@pytest.fixture
def path(tmp_path):
    path = tmp_path / "coll"
    with Collection.create(path, SPECS) as c:
        c.write(make_docs(30, seed=5))
    return path


def test_lazy_open_opens_an_index_on_first_use_and_catches_it_up(path):
    with Collection.open(path, lazy=True) as c:
        assert c.indexes == {}
        assert {n: h["state"] for n, h in c.health().items()} == {"bm25": "not_open",
                                                                   "dense": "not_open"}
        # a write while only bm25 is open: bm25 has it at once, dense when it opens
        assert [h.doc_id for h in c.search(unique_token(3), 3, index="bm25")] == ["d3"]
        assert list(c.indexes) == ["bm25"]
        c.write([Document("new", "Fresh", f"entirely {unique_token(99)} new text")])
        assert c.index("bm25").applied_seq == c.store.seq
        assert c.health()["dense"]["state"] == "not_open"
        dense = c.index("dense")  # opens and catches up before it serves
        assert dense.applied_seq == c.store.seq
        assert "new" in [h.doc_id for h in c.search("entirely new text", 5, index="dense")]
        assert list(c.indexes) == ["bm25", "dense"]  # manifest order, whatever the use order
    with Collection.open(path) as c:  # nothing was lost by the lazy session
        assert c.index("dense").applied_seq == c.index("bm25").applied_seq == c.store.seq


def test_a_default_search_opens_every_index_in_manifest_order(path):
    with Collection.open(path, lazy=True) as c:
        c.index("dense")
        hits = c.search(unique_token(7), 5)  # RRF of all: bm25 opens now
        assert hits[0].doc_id == "d7"
        assert list(c.indexes) == ["bm25", "dense"]
        with pytest.raises(InvalidParameter, match="needs 2 weights, not 3"):
            c.search("x", 5, fusion="linear", weights=[1, 2, 3])


def test_describe_reports_without_opening_and_beside_an_open_collection(path):
    with Collection.open(path) as c:
        seq = c.store.seq
        c.write([Document("late", "", "written while open")])
        # describe takes no lock: it works while this collection is open
        d = Collection.describe(path)
        assert d["seq"] == seq + 1 and d["documents"] == 31
        assert {n: s["applied_seq"] for n, s in d["indexes"].items()} == {"bm25": seq + 1,
                                                                         "dense": seq + 1}
        assert all(s["state"] == "ready" and s["memory_bytes"] is None
                   for s in d["indexes"].values())
        # a write the indexes have not applied yet shows as lag
        c.store.write([Document("behind", "", "only in the store")])
        d = Collection.describe(path)
        assert {s["state"] for s in d["indexes"].values()} == {"catching_up"}
        assert {s["lag"] for s in d["indexes"].values()} == {1}
    d = Collection.describe(path)  # after close: counted documents are recorded
    assert {n: (s["state"], s["documents"]) for n, s in d["indexes"].items()} == {
        "bm25": ("ready", 32), "dense": ("ready", 32)}


def test_describe_survives_a_missing_or_broken_state_file(path):
    (path / STATE).write_text("{not json")
    d = Collection.describe(path)
    assert d["documents"] == 30
    assert {s["state"] for s in d["indexes"].values()} == {"unknown"}
    with Collection.open(path):  # opening records it again
        pass
    assert {s["state"] for s in Collection.describe(path)["indexes"].values()} == {"ready"}


def _run(args: list[str]) -> dict:
    """Run the CLI in a fresh interpreter; report which heavy modules it imported."""
    code = ("import json, sys\n"
            "from genseek.cli import main\n"
            f"rc = main({args!r})\n"
            "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules, "
            "'jnius': 'jnius' in sys.modules}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_cli_stats_starts_nothing_and_a_bm25_search_loads_no_model(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(20, seed=2))
    coll = str(tmp_path / "coll")
    assert _run(["index", coll, "--from", str(corpus), "--no-progress"])["rc"] == 0
    stats = _run(["stats", coll, "--json"])
    assert stats == {"rc": 0, "torch": False, "jnius": False}
    search = _run(["search", coll, unique_token(4), "--index", "bm25", "--json"])
    assert search["rc"] == 0 and search["jnius"] and not search["torch"]


def test_cli_stats_json_matches_an_open_collection(tmp_path, path, capsys):
    from genseek.cli import main

    assert main(["stats", str(path), "--json"]) == 0
    lazy = json.loads(capsys.readouterr().out)
    assert main(["stats", str(path), "--json", "--open", "--no-progress"]) == 0
    opened = json.loads(capsys.readouterr().out)
    assert lazy["documents"] == opened["documents"] and lazy["seq"] == opened["seq"]
    for name in SPECS:
        for key in ("applied_seq", "documents", "state"):
            assert lazy["indexes"][name][key] == opened["indexes"][name][key], (name, key)
        assert opened["indexes"][name]["memory_bytes"] > 0
    assert main(["sync", str(path), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["indexes"] == {"bm25": "ready", "dense": "ready"}
