"""What runs inside Ray for :mod:`genseek.cluster` (imported only once Ray is importable):
the corpus datasource, whose read tasks parse pieces of the corpus file on the driver's node,
and the encoder actors' callable class. Workers import this module by name, so genseek must
be installed on every node of the cluster (as Ray itself must).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from genseek.docwork import DocumentWork, pack

SCHEMA = pa.schema([("line", pa.int64()), ("doc_id", pa.string()), ("contents", pa.large_string())])


def read_piece(file: str, piece: tuple[int, int, int], max_doc_bytes: int) -> list[pa.Table]:
    """The documents of one piece ``(first line, byte offset, lines)`` of the corpus as one
    block ``(line, doc_id, contents)``: what the driver's reader yields for those lines. A line
    that is not a valid document ends the piece there: the driver's own reader stops at that
    line with its file:line error, so nothing after it is used."""
    from genseek.data.readers import read_corpus_chunk
    from genseek.errors import InputError

    lines: list[int] = []
    ids: list[str] = []
    contents: list[str] = []
    try:
        for number, doc in read_corpus_chunk(Path(file), *piece, max_doc_bytes):
            lines.append(number)
            ids.append(doc.doc_id)
            contents.append(doc.contents)
    except InputError:
        pass
    return [pa.Table.from_arrays([pa.array(lines, pa.int64()), pa.array(ids, pa.string()),
                                  pa.array(contents, pa.large_string())], schema=SCHEMA)]


class CorpusDatasource(Datasource):
    """A corpus file, one read task per piece (:func:`genseek.data.readers.corpus_chunks`), in
    file order. Its reads run on the driver's node only (``supports_distributed_reads`` is
    False), so the file need not be on the other nodes."""

    def __init__(self, file: str, pieces: Sequence[tuple[int, int, int]], max_doc_bytes: int):
        super().__init__()
        self.file = str(file)
        self.pieces = list(pieces)
        self.max_doc_bytes = int(max_doc_bytes)

    @property
    def supports_distributed_reads(self) -> bool:
        return False

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        return [ReadTask(functools.partial(read_piece, self.file, piece, self.max_doc_bytes),
                         BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None,
                                       input_files=None), schema=SCHEMA)
                for piece in self.pieces]


class Encode:
    """The encoder actors' callable class (``map_batches``): the models of every
    :class:`DocumentWork` are loaded once, in ``__init__``, and kept for the whole job; each
    call turns a batch ``(line, doc_id, contents)`` into ``(line, doc_id, node, pid, w0,
    w1, ...)`` where ``w<i>`` holds work ``i``'s payload per row as :func:`genseek.docwork.pack`
    bytes."""

    def __init__(self, works: Sequence[DocumentWork], threads: int):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch

        torch.set_num_threads(max(1, int(threads)))
        self.works = list(works)
        self.workers = [work.load() for work in self.works]
        self.node = ray.get_runtime_context().get_node_id()
        self.pid = os.getpid()

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = [str(t) for t in batch.column("contents").to_pylist()]
        n = len(texts)
        columns: dict[str, Any] = {
            "line": batch.column("line"), "doc_id": batch.column("doc_id"),
            "node": pa.array([self.node] * n, pa.string()),
            "pid": pa.array([self.pid] * n, pa.int64())}
        for i, (work, worker) in enumerate(zip(self.works, self.workers, strict=True)):
            columns[f"w{i}"] = pa.array([pack(p) for p in work.run(worker, texts)],
                                        pa.large_binary())
        return pa.table(columns)
