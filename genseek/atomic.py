"""Atomic file writes (temp file in the same folder, fsync, rename) and checked reads of the
small versioned JSON headers that describe on-disk arrays."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genseek.errors import GenseekError


def atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file over ``path`` durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (creations, renames) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json_header(path: Path, what: str, fmt: str, version: int) -> dict[str, Any]:
    """The JSON object in ``path`` after checking its ``format`` and ``version``.

    Every problem is a GenseekError naming the file: missing (``not a WHAT``), unreadable
    (``unreadable WHAT header``), or another format or version.
    """
    path = Path(path)
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GenseekError(f"{path}: missing (not a {what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GenseekError(f"{path}: unreadable {what} header ({exc})") from None
    if not isinstance(header, dict):
        raise GenseekError(f"{path}: unreadable {what} header (not a JSON object)")
    if header.get("format") != fmt or header.get("version") != version:
        raise GenseekError(f"{path}: format {header.get('format')!r} version "
                           f"{header.get('version')!r}, expected {fmt!r} {version}")
    return header
