"""Index types, one module per kind, and what they share.

- lexical: ``bm25`` (Lucene BM25 through pyserini's Anserini jar, in-process) and ``impact``
  (learned-sparse SPLADE weights in a Lucene impact index), both on ``_lucene.py``;
- vector: ``dense`` (faiss), ``spann`` (SPANN-style posting lists on disk), ``repconc``
  (RepCONC product quantisation), ``muvera`` (MUVERA fixed-dimensional encodings + Chamfer
  rerank), their vectors and labels in SQLite (``labelstore.py``);
- the docid stores of the generative retrievers (``trie_store.py``, ``fm_store.py``);
- the training recipes of ``impact`` and ``repconc`` (``sparse_train.py``, ``repconc_train.py``)
  and the JVM bootstrap (``jvm.py``).

Each type implements :class:`genseek.protocols.Index` and is registered by name in
:mod:`genseek.registry` (the generative types live in :mod:`genseek.retrievers`).
"""
