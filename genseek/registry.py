"""Index types by name.

Built-in types are listed here as import paths and imported on first use, so
``genseek --help`` never starts a JVM or loads torch. Other packages add types
through the ``genseek.indexes`` entry-point group (``name = "module:Class"``).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from genseek.errors import GenseekError
from genseek.params import INDEX_PARAMS, RERANKER_PARAMS, Params
from genseek.protocols import IndexType
from genseek.spec import IndexSpec

BUILTIN_TYPES: dict[str, str] = {
    "bm25": "genseek.indexers.bm25:BM25Index",
    "dense": "genseek.indexers.dense:DenseIndex",
    "impact": "genseek.indexers.impact:ImpactIndex",
    "spann": "genseek.indexers.spann:SpannIndex",
    "repconc": "genseek.indexers.repconc:RepconcIndex",
    "muvera": "genseek.indexers.muvera:MuveraIndex",
    "genre": "genseek.retrievers.genre:GenreIndex",
    "seal": "genseek.retrievers.seal:SealIndex",
    "dsi": "genseek.retrievers.dsi:DsiIndex",
}


BUILTIN_RERANKERS: dict[str, str] = {
    "biencoder": "genseek.rerankers.biencoder:BiEncoderReranker",
    "first": "genseek.rerankers.first:FirstReranker",
    "listwise-gen": "genseek.rerankers.first:GenerationReranker",
    "pointwise": "genseek.rerankers.pointwise:PointwiseReranker",
}


def _load(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _rerankers() -> dict[str, str]:
    rerankers = dict(BUILTIN_RERANKERS)
    for ep in entry_points(group="genseek.rerankers"):
        rerankers.setdefault(ep.name, ep.value)
    return rerankers


def load_reranker(spec: IndexSpec | str):
    """A reranker from a spec such as ``biencoder`` or ``biencoder(model=/path)``."""
    spec = spec if isinstance(spec, IndexSpec) else IndexSpec.parse(spec)
    rerankers = _rerankers()
    target = rerankers.get(spec.type)
    if target is None:
        raise GenseekError(f"unknown reranker {spec.type!r}; known: {', '.join(sorted(rerankers))}")
    return _load(target).open(dict(spec.params))


def index_schemas(type_name: str) -> tuple[type[Params] | None, type[Params] | None]:
    """``(spec schema, search schema)`` of an index type: built-ins from :mod:`genseek.params`
    (no import of the index module), others from the class's ``Params`` / ``SearchParams``
    (None where a third-party type declares none)."""
    builtin = INDEX_PARAMS.get(type_name)
    if builtin is not None:  # built-in names cannot be taken by entry points
        return builtin
    cls = resolve(IndexSpec(type_name))
    return getattr(cls, "Params", None), getattr(cls, "SearchParams", None)


def check_spec(spec: IndexSpec | str) -> IndexSpec:
    """``spec`` parsed, its type known and its parameters valid (:class:`InvalidParameter`
    otherwise): what every caller runs before anything is written."""
    spec = spec if isinstance(spec, IndexSpec) else IndexSpec.parse(spec)
    schema, _ = index_schemas(spec.type)
    if schema is not None:
        schema.check(dict(spec.params))
    return spec


def check_reranker_spec(spec: IndexSpec | str) -> IndexSpec:
    """A reranker spec with valid parameters (unknown rerankers are an error)."""
    spec = spec if isinstance(spec, IndexSpec) else IndexSpec.parse(spec)
    schema = RERANKER_PARAMS.get(spec.type)
    if schema is None:
        target = _rerankers().get(spec.type)
        if target is None:
            raise GenseekError(f"unknown reranker {spec.type!r}; known: "
                               f"{', '.join(sorted(_rerankers()))}")
        schema = getattr(_load(target), "Params", None)
    if schema is not None:
        schema.check(dict(spec.params))
    return spec


def available_types() -> dict[str, str]:
    """Every known index type name and its ``module:Class`` path."""
    types = dict(BUILTIN_TYPES)
    for ep in entry_points(group="genseek.indexes"):
        types.setdefault(ep.name, ep.value)
    return types


def resolve(spec: IndexSpec) -> IndexType:
    """The class implementing ``spec.type``; a clear error for unknown types."""
    types = available_types()
    target = types.get(spec.type)
    if target is None:
        raise GenseekError(
            f"unknown index type {spec.type!r}; known types: {', '.join(sorted(types))}"
        )
    return _load(target)
