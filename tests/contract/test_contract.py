"""The collection contract (genseek.contract) for every registered index type.

Built-in types run with the embedded models (MiniLM, SPLADE-tiny) or, for the generative
types, a tiny random word-level LM made here; a type another package registers through the
``genseek.indexes`` entry point runs with its bare name as the spec. Tolerances of "incremental
equals rebuilt" per type (scores; the order is equal up to ties within it):

- exact up to float32 rounding (1e-4): bm25 (deleted documents are expunged at commit, so term
  statistics equal a fresh build's), impact (integer impacts), dense Flat, repconc (below
  ``train_min`` it searches the rotated vectors exactly), spann (a query for every document
  probes every posting and reranks exactly), muvera (every candidate is reranked by exact
  Chamfer), genre, seal, dsi (decoding is deterministic and the main + delta segments allow
  the same continuations as one segment).
"""

from __future__ import annotations

import pytest
from _synth import make_tiny

from genseek import contract
from genseek.registry import available_types

ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    words = [*contract.WORDS, "replaced", "Title:", "Docid:", "@@", "r", "d", "x", "-", "a",
             "b"]
    return str(make_tiny(tmp_path_factory.mktemp("contract-lm"), words))


def spec_for(kind: str, lm: str) -> str:
    return {
        "bm25": "bm25",
        "dense": "dense",
        "impact": "impact(max_length=64)",
        "spann": "spann(rebalance=sync)",
        "repconc": "repconc(reuse=)",
        "muvera": "muvera(max_length=64)",
        "genre": f"genre(model={lm},num_beams=4,max_new_tokens=4)",
        "seal": f"seal(model={lm},num_beams=3,max_new_tokens=3,unigrams=5)",
        "dsi": f"dsi(model={lm},scheme=naive,num_beams=4)",
    }.get(kind, kind)  # another package's type: its defaults


TYPES = sorted(available_types())
CHECKS = {
    "writes": contract.check_writes,
    "crash": contract.check_crash,
    "isolation": contract.check_isolation,
}


def test_every_builtin_type_is_in_the_suite():
    assert {"bm25", "dense", "impact", "spann", "repconc", "muvera", "genre", "seal",
            "dsi"} <= set(TYPES)


@pytest.mark.slow
@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("kind", TYPES)
def test_contract(kind, check, tiny_lm, tmp_path):
    CHECKS[check](spec_for(kind, tiny_lm), tmp_path, atol=ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("kind", TYPES)
def test_reads_during_writes(kind, tiny_lm, tmp_path):
    contract.check_reads_during_writes(spec_for(kind, tiny_lm), tmp_path)
