"""Where genseek keeps what it can rebuild: one cache root for every tool and benchmark.

``$GENSEEK_CACHE`` if set, else ``genseek`` in the user's cache folder (``$XDG_CACHE_HOME`` or
``~/.cache``). Nothing in genseek names a folder of one machine: defaults are paths below
this root.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache root (not created here)."""
    if os.environ.get("GENSEEK_CACHE"):
        return Path(os.environ["GENSEEK_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "genseek"
