"""Rerankers: the stage that reorders a pipeline's fused candidates.

Each implements :class:`genseek.protocols.Reranker` (``rank_batch(queries, texts)``: one score
per candidate) and is named in a pipeline's ``rerank`` stage: ``biencoder`` (embedding cosine),
``first`` and ``listwise-gen`` (listwise LLM ranking: FIRST's single-token logits or generated
permutations, ``first.py``), ``pointwise`` (an LLM's yes/no log-odds). The LLM rerankers share
``llm.py`` (prompt prefix cache, batched forward passes); ``first_train.py`` trains FIRST.
"""
