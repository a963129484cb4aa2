"""A benchmark's ``--quick`` mode works from an empty cache, as on a fresh clone.

``benchmarks/beir_eval.py --quick`` (CISI, 1,460 documents) with ``GENSEEK_CACHE`` pointing at
an empty folder must build the collection it lacks (``genseek index`` into
``$GENSEEK_CACHE/collections/cisi``, the helper every benchmark uses for its collections),
evaluate it, cross-check ``genseek eval`` and print its table. It is the cheapest quick mode
that builds a missing input (about 1-3 minutes on 2 cores, depending on the load);
``benchmarks/fresh_clone.sh`` runs all of them from a fresh clone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_beir_eval_quick_builds_its_collection_in_an_empty_cache(tmp_path, beir_dataset):
    folder = beir_dataset("cisi")
    cache = tmp_path / "cache"
    env = {**os.environ, "GENSEEK_CACHE": str(cache), "GENSEEK_DATASETS": str(folder.parent),
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "beir_eval.py"), "--quick"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    # the missing collection was built, in the cache, by genseek index
    assert "collection cisi: absent; building it" in proc.stderr
    assert (cache / "collections" / "cisi" / "collection.json").is_file()
    assert re.search(r"^cisi: 1,460 documents \(built in ", out, re.M), out
    # its table: every system with numbers, and the CLI agrees
    header = next(line for line in out.splitlines() if line.startswith("system"))
    assert header.split()[:4] == ["system", "nDCG@10", "R@100", "RR@10"]
    for system in ("bm25", "dense", "rrf"):
        row = re.search(rf"^{system}\s+(0\.\d{{4}})\s+(0\.\d{{4}})", out, re.M)
        assert row and 0.2 < float(row.group(1)) < 0.6, out
    assert "genseek eval --json gives identical numbers" in out
