"""Shared fixtures (the BEIR datasets folder) and the test groups' common ground.

The tests live in groups (``unit/``, ``contract/``, ``integration/``, ``server/``, ``es/``); the
helpers they share (``_synth.py``, ``_apiserver.py``, ``_fake_es.py``, ``plugins/``) stay in this
folder, which is put on ``sys.path`` here.
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

RAY_MODULES = ("unit/test_cluster.py", "integration/test_ray_cluster.py",
               "integration/test_ray_indexing.py", "integration/test_sharded_ray.py")
"""Test modules that run Ray in the test process. They run in a child pytest of their own
(``integration/test_ray_suite.py``), never in the process of the other tests: after Ray had
run in a process that also ran the JVM, a later Lucene test in it died with SIGSEGV."""
RAY_CHILD = "GENSEEK_RAY_TESTS_CHILD"
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
