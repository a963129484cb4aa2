"""The top-level folders are genseek's subpackages and never shadow a library of the same name."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_genseek_kernels_is_the_kernels_folder():
    import genseek.kernels.fusion

    assert Path(genseek.kernels.fusion.__file__).resolve().parent == ROOT / "kernels"


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="no transformers")
def test_repo_root_on_sys_path_does_not_shadow_hf_kernels():
    # ``python -c`` in the repository root puts it first on sys.path, like ``python -m pytest``
    code = ("import importlib.metadata as m, kernels, genseek.kernels.trie as t\n"
            "try:\n    v = m.version('kernels')\nexcept m.PackageNotFoundError:\n    v = None\n"
            "print(kernels.__file__); print(t.__file__); print(v)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    if "no module named 'kernels' outside" in done.stderr:
        return  # Hugging Face's kernels is not installed: the import fails with our message
    assert done.returncode == 0, done.stderr
    hf_file, ours, version = done.stdout.split("\n")[:3]
    assert Path(ours).resolve().parent == ROOT / "kernels"
    assert version != "None"
    assert not Path(hf_file).resolve().is_relative_to(ROOT / "kernels")
