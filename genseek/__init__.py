"""genseek: generative and dense retrieval behind one collection API.

The import root. The design card's folders are its subpackages:
``genseek.indexers`` (index types), ``genseek.retrievers`` (fusion and pipelines),
``genseek.rerankers``, ``genseek.api``, ``genseek.kernels`` (pure functions) and
``genseek.data`` (readers and writers).
"""

from genseek.collection import Collection
from genseek.errors import GenseekError
from genseek.types import ChangeSet, Document, Hit

__all__ = ["ChangeSet", "Collection", "Document", "GenseekError", "Hit"]
__version__ = "0.1.0"
