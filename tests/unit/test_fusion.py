"""Rank fusion: property tests of the pure kernels and of the fusion retrievers."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from genseek.kernels.fusion import linear, normalize, rrf
from genseek.retrievers.fusion import LinearFusion, RRFusion
from genseek.types import Hit

DOC_IDS = [f"d{i}" for i in range(30)]


@st.composite
def ranked_list(draw, min_size=0, max_size=15):
    """A ranked list of distinct doc ids with non-increasing scores."""
    ids = draw(st.lists(st.sampled_from(DOC_IDS), min_size=min_size, max_size=max_size,
                        unique=True))
    scores = draw(st.lists(st.floats(-50, 50, allow_nan=False), min_size=len(ids),
                           max_size=len(ids)))
    return list(zip(ids, sorted(scores, reverse=True), strict=True))


lists_strategy = st.lists(ranked_list(), min_size=0, max_size=5)
settings_ = settings(max_examples=200, deadline=None)


def reference_rrf(lists, rrf_k, weights):
    """RRF written independently: per document, the sum over lists that contain it."""
    weights = weights or [1.0] * len(lists)
    out = {}
    all_ids = {d for lst in lists for d, _ in lst}
    for d in all_ids:
        total = 0.0
        for lst, w in zip(lists, weights, strict=True):
            ids = [x for x, _ in lst]
            if d in ids:
                total += w / (rrf_k + ids.index(d) + 1)
        out[d] = total
    return out


def assert_sorted(result):
    for (d1, s1), (d2, s2) in zip(result, result[1:], strict=False):
        assert s1 >= s2
        if s1 == s2:
            assert d1 < d2  # ties broken by doc id


@settings_
@given(lists=lists_strategy, k=st.integers(0, 40), rrf_k=st.floats(0, 200),
       use_weights=st.booleans(), data=st.data())
def test_rrf_matches_formula(lists, k, rrf_k, use_weights, data):
    weights = None
    if use_weights:
        weights = data.draw(st.lists(st.floats(0.01, 5), min_size=len(lists),
                                     max_size=len(lists)))
    result = rrf(lists, k, rrf_k, weights)
    expected = reference_rrf(lists, rrf_k, weights)
    assert len(result) == min(k, len(expected))
    assert len({d for d, _ in result}) == len(result)
    assert_sorted(result)
    for d, s in result:
        assert s == pytest.approx(expected[d], rel=1e-12, abs=1e-15)
    # Every document left out scores no more than the last one returned.
    if result and len(result) < len(expected):
        returned = {d for d, _ in result}
        worst = min(s for _, s in result)
        assert all(expected[d] <= worst + 1e-12 for d in expected if d not in returned)


@settings_
@given(lists=st.lists(ranked_list(min_size=1), min_size=1, max_size=5), rrf_k=st.floats(0, 100),
       top=st.sampled_from(DOC_IDS), k=st.integers(1, 10))
def test_rrf_unanimous_first_is_first(lists, rrf_k, top, k):
    # Put ``top`` first in every list, above that list's old best score.
    lists = [[(top, lst[0][1] + 1.0)] + [(d, s) for d, s in lst if d != top] for lst in lists]
    result = rrf(lists, k, rrf_k)
    assert result[0][0] == top
    assert result[0][1] == pytest.approx(len(lists) / (rrf_k + 1))
    assert len(result) == 1 or result[1][1] < result[0][1]


@settings_
@given(lst=ranked_list(min_size=1), rrf_k=st.floats(0, 100))
def test_rrf_of_one_list_keeps_its_order(lst, rrf_k):
    result = rrf([lst], len(lst), rrf_k)
    assert [d for d, _ in result] == [d for d, _ in lst]


def test_rrf_uses_ranks_not_scores():
    a = [("x", 1000.0), ("y", 999.0)]
    b = [("y", 0.2), ("x", 0.1)]
    result = dict(rrf([a, b], 10, rrf_k=60))
    assert result["x"] == pytest.approx(1 / 61 + 1 / 62)
    assert result["y"] == pytest.approx(1 / 62 + 1 / 61)


def test_rrf_rejects_bad_arguments():
    with pytest.raises(ValueError):
        rrf([[("a", 1.0)]], 5, rrf_k=-1)
    with pytest.raises(ValueError):
        rrf([[("a", 1.0)], [("b", 1.0)]], 5, weights=[1.0])
    assert rrf([], 5) == []
    assert rrf([[], []], 5) == []
    assert rrf([[("a", 1.0)]], 0) == []


@settings_
@given(lst=ranked_list(min_size=1))
def test_minmax_in_unit_interval(lst):
    out = normalize(lst, "minmax")
    assert [d for d, _ in out] == [d for d, _ in lst]
    scores = [s for _, s in out]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert max(scores) == 1.0
    raw = [s for _, s in lst]
    if max(raw) > min(raw):
        assert min(scores) == 0.0
        lo, hi = min(raw), max(raw)
        for (_, r), (_, n) in zip(lst, out, strict=True):
            assert n == pytest.approx((r - lo) / (hi - lo), abs=1e-9)
    else:
        assert all(s == 1.0 for s in scores)
    # Monotone: order of the scores is kept.
    assert scores == sorted(scores, reverse=True)


@settings_
@given(lst=ranked_list(min_size=1))
def test_zscore(lst):
    out = normalize(lst, "zscore")
    raw = [s for _, s in lst]
    mean = math.fsum(raw) / len(raw)
    std = math.sqrt(math.fsum((s - mean) ** 2 for s in raw) / len(raw))
    for (_, r), (_, z) in zip(lst, out, strict=True):
        expected = (r - mean) / std if std > 0 else 0.0
        assert z == pytest.approx(expected, rel=1e-6, abs=1e-6)
    if std > 1e-6:
        assert math.fsum(s for _, s in out) == pytest.approx(0.0, abs=1e-6 * len(out))


def test_normalize_edge_cases():
    assert normalize([], "minmax") == []
    assert normalize([("a", 3.0), ("b", 1.0)], "none") == [("a", 3.0), ("b", 1.0)]
    assert normalize([("a", 2.0), ("b", 2.0)], "zscore") == [("a", 0.0), ("b", 0.0)]
    with pytest.raises(ValueError):
        normalize([("a", 1.0)], "softmax")
    with pytest.raises(ValueError):
        linear([[("a", 1.0)]], 3, method="softmax")


@settings_
@given(lists=lists_strategy, k=st.integers(0, 40),
       method=st.sampled_from(["minmax", "zscore", "none"]), use_weights=st.booleans(),
       data=st.data())
def test_linear_matches_formula(lists, k, method, use_weights, data):
    weights = None
    if use_weights:
        weights = data.draw(st.lists(st.floats(0, 3), min_size=len(lists), max_size=len(lists)))
    result = linear(lists, k, weights, method)
    expected: dict[str, float] = {}
    for lst, w in zip(lists, weights or [1.0] * len(lists), strict=True):
        for d, s in normalize(lst, method):
            expected[d] = expected.get(d, 0.0) + w * s
    assert len(result) == min(k, len(expected))
    assert_sorted(result)
    for d, s in result:
        assert s == pytest.approx(expected[d], rel=1e-9, abs=1e-9)


@settings_
@given(lists=st.lists(ranked_list(min_size=2), min_size=1, max_size=4), top=st.sampled_from(DOC_IDS))
def test_linear_minmax_unanimous_first(lists, top):
    # A document that strictly tops every list gets the maximum, len(lists) * 1.0.
    fixed = []
    for lst in lists:
        rest = [(d, s) for d, s in lst if d != top]
        assume(rest)
        fixed.append([(top, rest[0][1] + 1.0)] + rest)
    result = linear(fixed, 5)
    assert result[0] == (top, pytest.approx(float(len(fixed))))


def test_linear_missing_document_gets_zero_from_that_list():
    a = [("x", 10.0), ("y", 0.0)]
    b = [("z", 5.0), ("y", 1.0)]
    result = dict(linear([a, b], 10, weights=[1.0, 2.0]))
    assert result == {"x": pytest.approx(1.0), "y": pytest.approx(0.0), "z": pytest.approx(2.0)}


# -- fusion retrievers -------------------------------------------------------------------------


class FakeStage:
    def __init__(self, ranking: dict[str, list[tuple[str, float]]]):
        self.ranking = ranking
        self.calls: list[tuple[list[str], int]] = []

    def search(self, queries, k):
        self.calls.append((list(queries), k))
        return [[Hit(d, s) for d, s in self.ranking.get(q, [])][:k] for q in queries]


def test_rrfusion_searches_each_stage_to_depth():
    a = FakeStage({"q1": [("a", 3.0), ("b", 2.0), ("c", 1.0)], "q2": [("c", 1.0)]})
    b = FakeStage({"q1": [("b", 9.0), ("d", 1.0)]})
    fusion = RRFusion([a, b], rrf_k=10, depth=50)
    out = fusion.search(["q1", "q2"], 2)
    assert a.calls == [(["q1", "q2"], 50)] and b.calls == [(["q1", "q2"], 50)]
    assert [h.doc_id for h in out[0]] == ["b", "a"]
    assert out[0][0].score == pytest.approx(1 / 12 + 1 / 11)
    assert [h.doc_id for h in out[1]] == ["c"]
    # depth is at least k
    RRFusion([a], depth=3).search(["q1"], 20)
    assert a.calls[-1][1] == 20


def test_linearfusion():
    a = FakeStage({"q": [("a", 3.0), ("b", 1.0)]})
    b = FakeStage({"q": [("b", 0.5), ("c", 0.1)]})
    out = LinearFusion([a, b], weights=[1.0, 1.0]).search(["q"], 3)[0]
    scores = {h.doc_id: h.score for h in out}
    assert scores == {"a": pytest.approx(1.0), "b": pytest.approx(1.0), "c": pytest.approx(0.0)}
    assert [h.doc_id for h in out] == ["a", "b", "c"]  # the tie broken by id


def test_fusion_of_an_empty_stage_equals_the_other():
    a = FakeStage({"q": [("a", 3.0), ("b", 1.0), ("c", 0.5)]})
    empty = FakeStage({})
    out = RRFusion([empty, a]).search(["q"], 10)[0]
    assert [h.doc_id for h in out] == ["a", "b", "c"]
    out = LinearFusion([empty, a]).search(["q"], 10)[0]
    assert [h.doc_id for h in out] == ["a", "b", "c"]
