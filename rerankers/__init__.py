"""Rerankers: pipeline stages that reorder a first stage's candidates.

A reranker is a :class:`genseek.protocols.Retriever` wrapping another one, so
``Rerank(first_stage, model, depth)`` composes like any other stage. The listwise
LLM rerankers (FIRST) land here (issue 8).
"""
