"""Adding an index type from another package, following ARCHITECTURE.md ("Adding an index
type"): the toy ``overlap`` type of tests/plugins/toy_overlap.py is registered through the
``genseek.indexes`` entry point of a distribution made here, and the collection contract
(genseek.contract) passes for it, as for the built-in types."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from genseek import contract
from genseek.collection import Collection
from genseek.errors import GenseekError, InvalidParameter
from genseek.pipeline import Pipeline, Stage, run_pipeline
from genseek.registry import available_types, index_schemas
from genseek.types import Document, IndexStats

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


@pytest.fixture()
def registered(tmp_path, monkeypatch) -> Path:
    """A distribution ``genseek-toy-overlap`` whose entry point names the toy type (what
    ``pip install`` of a package with ``[project.entry-points."genseek.indexes"]`` makes)."""
    site = tmp_path / "site"
    info = site / "genseek_toy_overlap-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: genseek-toy-overlap\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text("[genseek.indexes]\n"
                                           "overlap = toy_overlap:OverlapIndex\n")
    for entry in (str(PLUGINS), str(site)):
        monkeypatch.syspath_prepend(entry)
    path = os.pathsep.join([str(PLUGINS), str(site), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path.rstrip(os.pathsep))  # the crash check's child
    return tmp_path


def test_the_entry_point_registers_the_type_with_its_schemas(registered):
    assert available_types()["overlap"] == "toy_overlap:OverlapIndex"
    spec_schema, search_schema = index_schemas("overlap")
    assert spec_schema.__name__ == "OverlapParams"
    assert search_schema.__name__ == "OverlapSearchParams"
    with pytest.raises(InvalidParameter, match="overlap: unknown parameter 'lowercased'"):
        Collection.create(registered / "bad", {"toy": "overlap(lowercased=true)"})
    assert not (registered / "bad").exists()  # refused before anything was written


def test_search_parameters_reach_the_toy_index_typed(registered):
    docs = [Document("a", "", "red green blue"), Document("b", "", "red yellow"),
            Document("c", "", "purple")]
    with Collection.create(registered / "c", {"toy": "overlap"}) as coll:
        coll.write(docs)
        stats = coll.index("toy").stats()
        assert isinstance(stats, IndexStats) and stats.documents == 3
        assert stats.details["terms"] == 5  # red green blue yellow purple
        pipe = Pipeline(retrieve=[Stage(index="toy", params={"min_overlap": 2})], k=5)
        got = run_pipeline(pipe, ["red green"], coll.indexes, coll.get,
                           search_params=coll.search_params)
        assert [r.doc_id for r in got[0]] == ["a"]  # b holds one of the two terms
        plain = coll.search("red green", 5, index="toy")
        assert [h.doc_id for h in plain] == ["a", "b"]
        with pytest.raises(GenseekError, match="index 'toy': overlap search: search parameter "
                                               "min_overlap must be greater than or equal to 1"):
            coll.search_params("toy", {"min_overlap": 0})


@pytest.mark.slow
@pytest.mark.parametrize("check", ["writes", "crash", "isolation"])
def test_the_contract_passes_for_the_toy_type(registered, check):
    {"writes": contract.check_writes, "crash": contract.check_crash,
     "isolation": contract.check_isolation}[check]("overlap", registered / check, atol=0.0)


@pytest.mark.slow
def test_reads_during_writes_for_the_toy_type(registered):
    contract.check_reads_during_writes("overlap", registered / "reads", seconds=60.0)


def test_the_child_process_sees_the_plugin(registered):
    """The crash check runs its writer in a child process: it must find the type too."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", "from genseek.registry import available_types;"
                          "print(available_types()['overlap'])"], capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip() == "toy_overlap:OverlapIndex"
