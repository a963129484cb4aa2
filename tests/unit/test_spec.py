"""Index spec strings: TYPE(key=value,...) with faiss factory strings kept whole."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genseek.errors import GenseekError
from genseek.registry import available_types, resolve
from genseek.spec import IndexSpec, parse_named, validate_name


def test_bare_type():
    spec = IndexSpec.parse("bm25")
    assert spec.type == "bm25"
    assert spec.params == {}
    assert str(spec) == "bm25"
    assert IndexSpec.parse("  bm25() ").params == {}


def test_faiss_factory_keeps_its_commas():
    spec = IndexSpec.parse("dense(factory=IVF16,PQ8,nprobe=4)")
    assert spec.type == "dense"
    assert spec.params == {"factory": "IVF16,PQ8", "nprobe": 4}
    spec = IndexSpec.parse("dense(model=all-MiniLM-L6-v2,factory=OPQ16_64,IVF256,PQ16x4,nprobe=16)")
    assert spec.params == {"model": "all-MiniLM-L6-v2", "factory": "OPQ16_64,IVF256,PQ16x4",
                           "nprobe": 16}
    # The factory last, with nothing after it.
    assert IndexSpec.parse("dense(nprobe=2,factory=IVF4,PQ8)").params["factory"] == "IVF4,PQ8"


def test_value_types():
    spec = IndexSpec.parse("bm25(k1=1.2,b=0.75,expunge_deletes=false,threads=4,ram_buffer_mb=64)")
    assert spec.params == {"k1": 1.2, "b": 0.75, "expunge_deletes": False, "threads": 4,
                           "ram_buffer_mb": 64}
    assert isinstance(spec.params["threads"], int)
    assert isinstance(spec.params["k1"], float)
    assert spec.params["expunge_deletes"] is False
    assert IndexSpec.parse("x(a=TRUE)").params["a"] is True
    assert IndexSpec.parse("x(a=-3)").params["a"] == -3
    assert IndexSpec.parse("x(a=1e-3)").params["a"] == pytest.approx(0.001)
    assert IndexSpec.parse("x(a='12')").params["a"] == "12"  # quoted: stays a string
    assert IndexSpec.parse('x(a="true")').params["a"] == "true"
    assert IndexSpec.parse("x( a = HNSW32 , b = 2 )").params == {"a": "HNSW32", "b": 2}


def test_str_round_trips_and_is_canonical():
    a = IndexSpec.parse("dense(nprobe=4,factory=IVF16,PQ8,metric=ip)")
    b = IndexSpec.parse("dense(metric=ip,factory=IVF16,PQ8,nprobe=4)")
    assert str(a) == str(b)
    assert IndexSpec.parse(str(a)) == a
    assert str(IndexSpec.parse("bm25(expunge_deletes=false)")) == "bm25(expunge_deletes=false)"


@pytest.mark.parametrize("bad", [
    "", "   ", "1bm25", "bm25(", "bm25)", "bm25(k1)", "bm25(k1=1,k1=2)", "bm25(=3)",
    "bm25(k 1=2)", "bm 25", "bm25(1k=2)", "dense(,factory=Flat)",
])
def test_bad_specs_raise_genseek_error(bad):
    with pytest.raises(GenseekError) as info:
        IndexSpec.parse(bad)
    assert "bad index spec" in str(info.value)
    assert "\n" not in str(info.value)


keys = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
values = st.one_of(
    st.integers(-10**6, 10**6),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False, width=64).filter(lambda f: f != int(f)),
    st.from_regex(r"[A-Z][A-Za-z0-9_.-]{0,10}", fullmatch=True).filter(
        lambda s: s.lower() not in ("true", "false")),
)


@settings(max_examples=150, deadline=None)
@given(kind=st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,10}", fullmatch=True),
       params=st.dictionaries(keys, values, max_size=5))
def test_parse_inverts_str(kind, params):
    spec = IndexSpec(kind, params)
    parsed = IndexSpec.parse(str(spec))
    assert parsed.type == kind
    assert parsed.params.keys() == params.keys()
    for key, value in params.items():
        assert type(parsed.params[key]) is type(value)
        assert parsed.params[key] == value


def test_parse_named():
    name, spec = parse_named("hnsw=dense(factory=HNSW32,ef_search=64)")
    assert name == "hnsw"
    assert spec == IndexSpec("dense", {"factory": "HNSW32", "ef_search": 64})
    name, spec = parse_named("dense(factory=IVF16,PQ8,nprobe=4)")
    assert name == "dense"
    assert spec.params == {"factory": "IVF16,PQ8", "nprobe": 4}
    assert parse_named("bm25") == ("bm25", IndexSpec("bm25"))
    assert parse_named("lex = bm25(k1=1.2)") == ("lex", IndexSpec("bm25", {"k1": 1.2}))


@pytest.mark.parametrize("bad", ["../x=bm25", "a/b=bm25", "=bm25", "9lives=bm25", "x y=bm25"])
def test_parse_named_rejects_unsafe_names(bad):
    with pytest.raises(GenseekError):
        parse_named(bad)


@pytest.mark.parametrize("bad", ["../x", "..", ".", "", "a/b", "a\\b", "-x", "_x", "x" * 65,
                                 "x\n", "na me", "é"])
def test_validate_name_rejects(bad):
    with pytest.raises(GenseekError) as info:
        validate_name(bad)
    assert "name" in str(info.value)


@pytest.mark.parametrize("good", ["a", "bm25", "dense-hnsw", "Dense_2", "x" * 64])
def test_validate_name_accepts(good):
    assert validate_name(good) == good


def test_registry():
    types = available_types()
    assert {"bm25", "dense"} <= set(types)
    with pytest.raises(GenseekError) as info:
        resolve(IndexSpec("foo"))
    assert "foo" in str(info.value)
    assert "bm25" in str(info.value)  # lists the known types
