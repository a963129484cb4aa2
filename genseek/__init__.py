"""genseek: generative and dense retrieval behind one collection API.

The import root; its subpackages are the repository's top-level folders:
``genseek.indexers`` (index types: lexical, vector and docid stores), ``genseek.retrievers``
(fusion, the generative retrievers, Elasticsearch as a stage), ``genseek.rerankers``
(biencoder and the LLM rerankers), ``genseek.api`` (the HTTP service), ``genseek.kernels``
(pure numeric functions) and ``genseek.data`` (readers, writers, Elasticsearch sync). The core
(collection, store, protocols, registry, parameter schemas, models, pipeline, evaluation,
training, CLI) is ``genseek`` itself; ARCHITECTURE.md describes how they fit.
"""

from genseek.collection import Collection
from genseek.errors import GenseekError
from genseek.types import ChangeSet, Document, Hit

__all__ = ["ChangeSet", "Collection", "Document", "GenseekError", "Hit"]
__version__ = "0.1.0"
