"""One parameter schema per index type and reranker, the same on the CLI, the API and in Python."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _synth import make_docs, write_jsonl

from genseek import Collection
from genseek.cli import main
from genseek.errors import InvalidParameter
from genseek.params import INDEX_PARAMS, RERANKER_PARAMS, DenseParams, markdown_all
from genseek.registry import BUILTIN_RERANKERS, BUILTIN_TYPES, _load, check_spec, index_schemas

README = Path(__file__).resolve().parents[2] / "README.md"

# the specs the isolation issue found accepted, each with the rule that now refuses it
BAD_SPECS = [
    ("dense(batch_size=0)", "batch_size must be greater than or equal to 1"),
    ("dense(max_length=-1)", "max_length must be greater than or equal to 1"),
    ("bm25(k1=-1)", "k1 must be greater than or equal to 0"),
    ("bm25(threads=2.5)", "threads must be a valid integer"),
    ("bm25(k1=true)", "k1 must be a valid number"),
    ("dense(factory=IVF100000000,PQ48)", "100,000,000 inverted lists; at most 65,536"),
    ("dense(metric=cosine)", "metric must be 'ip' or 'l2'"),
    ("bm25(kl=1)", "unknown parameter 'kl'; known: k1, b"),
    ("muvera(k_sim=12,r_reps=200,d_proj=64)", "floats per document"),
    ("seal(num_beams=1000)", "num_beams must be less than or equal to 64"),
    ("spann(candidates=4,max_replicas=8)", "candidates (4) must be >= max_replicas (8)"),
]


def test_every_builtin_type_and_reranker_declares_its_schemas():
    assert set(INDEX_PARAMS) == set(BUILTIN_TYPES)
    for name, target in BUILTIN_TYPES.items():
        cls = _load(target)
        assert (cls.Params, cls.SearchParams) == INDEX_PARAMS[name], name
        assert index_schemas(name) == INDEX_PARAMS[name]
        assert cls.Params.check({}) is not None  # the defaults are valid
    assert set(RERANKER_PARAMS) == set(BUILTIN_RERANKERS)
    for name, target in BUILTIN_RERANKERS.items():
        assert _load(target).Params is RERANKER_PARAMS[name], name


@pytest.mark.parametrize("spec, message", BAD_SPECS)
def test_bad_specs_are_refused_with_one_line(spec, message):
    with pytest.raises(InvalidParameter) as err:
        check_spec(spec)
    text = str(err.value)
    assert message in text and "\n" not in text
    assert text.startswith(spec.split("(")[0] + ":")


def test_bad_spec_leaves_nothing_behind_in_python(tmp_path):
    for i, (spec, message) in enumerate(BAD_SPECS[:6]):
        with pytest.raises(InvalidParameter, match=re.escape(message)):
            Collection.create(tmp_path / f"c{i}", {"x": spec})
        assert not (tmp_path / f"c{i}").exists()


def test_bad_spec_on_the_cli_is_one_line_and_exit_2(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(3))
    for spec, message in BAD_SPECS[:6]:
        rc = main(["index", str(tmp_path / "coll"), "--from", str(corpus), "--index", spec,
                   "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and message in err[0], (spec, err)
        assert not (tmp_path / "coll").exists()


def test_search_params_schema_with_overrides():
    assert DenseParams.check({"factory": "HNSW32"}).factory == "HNSW32"
    with pytest.raises(InvalidParameter, match="HNSW512: at most 256"):
        DenseParams.check({"factory": "HNSW512"})
    _, search = index_schemas("bm25")
    with pytest.raises(InvalidParameter, match="takes no search parameters"):
        search.check({"k1": 1.2})
    _, search = index_schemas("dense")
    with pytest.raises(InvalidParameter, match="unknown search parameter 'k'"):
        search.check({"k": 5})
    assert search.check({"nprobe": 8}).nprobe == 8


def test_collection_checks_search_params_per_index(tmp_path):
    with Collection.create(tmp_path / "c", {"bm25": "bm25"}) as coll:
        coll.search_params("bm25", {})
        with pytest.raises(InvalidParameter, match="index 'bm25'"):
            coll.search_params("bm25", {"k": 5})


def test_readme_parameter_tables_are_the_schemas():
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- params:begin[^>]*-->\n(.*?)\n<!-- params:end -->", text, re.S)
    assert block, "README.md lost its generated parameter tables"
    assert block.group(1).strip() == markdown_all().strip(), (
        "README.md's parameter tables differ from genseek/params.py; regenerate them with "
        "python -c 'from genseek.params import markdown_all; print(markdown_all())'")
