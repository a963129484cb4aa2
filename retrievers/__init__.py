"""Retrievers that are not plain indexes: fusion (``fusion.py``), the generative retrievers
(``genre.py``, ``seal.py``, ``dsi.py``: index types that decode docids with a language model,
their prompts in ``prompts.py`` and training in ``generative_train.py``) and Elasticsearch as a
pipeline stage (``elastic.py``). Every one is a :class:`genseek.protocols.Retriever`."""

from genseek.retrievers.fusion import LinearFusion, RRFusion

__all__ = ["LinearFusion", "RRFusion"]
