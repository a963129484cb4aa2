"""TREC run files: ``qid Q0 docid rank score tag``, written atomically."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from genseek.atomic import atomic_write_text
from genseek.types import Hit


def format_run(run: Mapping[str, Sequence[Hit]], tag: str) -> str:
    """A run as TREC text; queries in the given order, hits in rank order."""
    lines = [
        f"{qid} Q0 {hit.doc_id} {rank} {hit.score:.6f} {tag}"
        for qid, hits in run.items()
        for rank, hit in enumerate(hits, start=1)
    ]
    return "\n".join(lines) + ("\n" if lines else "")


def write_run(path: Path, run: Mapping[str, Sequence[Hit]], tag: str) -> Path:
    """Write a TREC run file (temp file + rename); returns the path."""
    return atomic_write_text(Path(path), format_run(run, tag))


def read_run(path: Path) -> dict[str, list[Hit]]:
    """Read a TREC run file back (hits in file order)."""
    run: dict[str, list[Hit]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            qid, _, doc_id, _, score, _ = line.split()
            run.setdefault(qid, []).append(Hit(doc_id, float(score)))
    return run
