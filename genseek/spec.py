"""Index specs: one readable string names a whole index, like faiss's index_factory.

Grammar::

    spec   := TYPE | TYPE "(" params ")"
    params := KEY "=" VALUE ("," KEY "=" VALUE)*

A value runs until the next ``,KEY=``, so faiss factory strings keep their commas:
``dense(model=all-MiniLM-L6-v2,factory=IVF256,PQ48,nprobe=16)``. Values are parsed
as int, float or bool when they look like one, else kept as strings. On the CLI an
index is named ``NAME=SPEC``; a bare ``SPEC`` is named after its type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from genseek.errors import GenseekError

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_SPEC = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_-]*)\s*(?:\((.*)\))?\s*$", re.S)
_SPLIT = re.compile(r",(?=\s*[A-Za-z_][A-Za-z0-9_]*\s*=)")


def _parse_value(raw: str) -> Any:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def _render_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class IndexSpec:
    """An index type and its parameters."""

    type: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> IndexSpec:
        m = _SPEC.match(text)
        if not m:
            raise GenseekError(f"bad index spec {text!r}: expected TYPE or TYPE(key=value,...)")
        kind, body = m.group(1), m.group(2)
        params: dict[str, Any] = {}
        if body and body.strip():
            for part in _SPLIT.split(body):
                key, sep, value = part.partition("=")
                key = key.strip()
                if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                    raise GenseekError(
                        f"bad index spec {text!r}: parameter {part.strip()!r} is not key=value"
                    )
                if key in params:
                    raise GenseekError(f"bad index spec {text!r}: parameter {key!r} given twice")
                params[key] = _parse_value(value)
        return cls(kind, params)

    def __str__(self) -> str:
        if not self.params:
            return self.type
        body = ",".join(f"{k}={_render_value(v)}" for k, v in sorted(self.params.items()))
        return f"{self.type}({body})"


def validate_name(name: str, what: str = "index") -> str:
    """Return ``name`` if it is a safe identifier for a file-system entry, else raise."""
    if not _NAME.fullmatch(name):
        raise GenseekError(
            f"bad {what} name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a letter"
        )
    return name


def parse_named(text: str) -> tuple[str, IndexSpec]:
    """Parse ``NAME=SPEC`` or a bare ``SPEC`` (named after its type)."""
    head, sep, rest = text.partition("=")
    if sep and "(" not in head:
        name, spec = head.strip(), IndexSpec.parse(rest)
    else:
        spec = IndexSpec.parse(text)
        name = spec.type
    return validate_name(name), spec
