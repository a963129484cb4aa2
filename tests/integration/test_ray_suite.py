"""The Ray test modules (``_raysuite.RAY_MODULES``), run in a child pytest process of their own.

Ray installs signal handlers and leaves threads behind in the process it runs in; after Ray
had run in a process that also ran the JVM, a later Lucene test there died with SIGSEGV. The
Ray tests therefore never share a process with the others: this test runs them in one child
process and fails with its output when any of them fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _raysuite import RAY_CHILD, RAY_MODULES

pytest.importorskip("ray", reason="Ray is not installed (pip install 'genseek[ray]')")
pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent.parent


def test_ray_modules_in_their_own_process():
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
         *(str(TESTS / m) for m in RAY_MODULES)],
        capture_output=True, text=True, timeout=2400, cwd=TESTS.parent,
        env={**os.environ, RAY_CHILD: "1", "RAY_USAGE_STATS_ENABLED": "0"})
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout, tail
