"""Shared fixtures (the BEIR datasets folder) and the test groups' common ground.

The tests live in groups (``unit/``, ``contract/``, ``integration/``, ``server/``, ``es/``,
``browser/``); the helpers they share (``_synth.py``, ``_apiserver.py``, ``_fake_es.py``,
``_raysuite.py``, ``plugins/``) stay in this folder, which is put on ``sys.path`` here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from _raysuite import RAY_CHILD, RAY_MODULES  # noqa: E402

collect_ignore = [] if os.environ.get(RAY_CHILD) else list(RAY_MODULES)


def datasets_path() -> Path:
    """``$GENSEEK_DATASETS``, else ``../shared/datasets`` relative to the repository root
    (:func:`genseek.data.readers.datasets_root`)."""
    from genseek.data.readers import datasets_root

    return datasets_root()


@pytest.fixture(scope="session")
def datasets_root() -> Path:
    """The folder holding the BEIR datasets; the test is skipped when it is absent."""
    root = datasets_path()
    if not root.is_dir():
        pytest.skip(f"datasets folder {root} not found (set GENSEEK_DATASETS)")
    return root


@pytest.fixture(scope="session")
def beir_dataset(datasets_root):
    """``beir_dataset(name)``: the folder of a complete BEIR dataset, else skip the test."""

    def get(name: str) -> Path:
        folder = datasets_root / name
        needed = [folder / "corpus.jsonl", folder / "queries.jsonl",
                  folder / "qrels" / "test.tsv"]
        missing = [str(p) for p in needed if not p.is_file()]
        if missing:
            pytest.skip(f"dataset {name} is incomplete: missing {', '.join(missing)}")
        return folder

    return get
