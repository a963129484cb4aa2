"""``spann``: a memory–disk hybrid vector index (SPANN) with SPFresh-style live updates.

Two layers, one job per module:

- :mod:`.format` — the bytes on disk: file layout, vector codecs (fp16, int8, PQ), posting
  regions and their checks, ``state.npz``.
- :mod:`.engine` — :class:`SpannEngine`, the index over int64-labelled float32 vectors
  (squared L2): heads in memory, posting lists on disk, build, insert, delete, search, save
  and load.
- :mod:`.maintenance` — SPFresh splits, garbage collection and the background rebalancer
  thread (:class:`~genseek.indexers.spann.maintenance.Rebalancer`).
- :mod:`.index` — :class:`SpannIndex`, the collection index type (like ``dense``): MiniLM
  encodes each document version once into ``vectors.sqlite`` (the source of truth, committed
  with the sequence number); the engine under ``engine/`` is caught up from it on open, so
  nothing is ever re-encoded.

Parameters: :class:`genseek.params.SpannParams` (the index type) and
:class:`genseek.params.SpannEngineParams` (the engine).
"""

from genseek.indexers.spann.engine import ENGINE_PARAMS, SpannEngine
from genseek.indexers.spann.index import SpannIndex

__all__ = ["ENGINE_PARAMS", "SpannEngine", "SpannIndex"]
