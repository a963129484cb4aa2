"""The API server's configuration: one frozen object, built in code or from the environment.

Nothing here is global: :func:`genseek.api.app.create_app` takes a :class:`Settings`
and hangs everything it builds off the app, so several apps (tests, one per root)
can live in one process.

Environment (:meth:`Settings.from_env`):

- ``GENSEEK_API_KEYS``: ``key1:read,key2:write`` (several scopes: ``key3:read+write``)
- ``GENSEEK_API_KEYS_FILE``: ``{"keys": [{"key": "...", "scopes": ["read"]}]}``
- ``GENSEEK_ROOT``, ``GENSEEK_HOST``, ``GENSEEK_PORT``, ``GENSEEK_CORS_ORIGINS``
  (comma-separated), ``GENSEEK_MAX_BODY_BYTES``, ``GENSEEK_MAX_BATCH_DOCS``,
  ``GENSEEK_MAX_QUERIES``, ``GENSEEK_REQUEST_TIMEOUT_S``, ``GENSEEK_EMBEDDING_MODEL``,
  ``GENSEEK_SPARSE_MODEL``
- ``GENSEEK_API_DATASETS``: the folder of BEIR datasets that ``GET /datasets`` lists and
  ``POST /collections/{name}/evaluate`` reads, or ``off`` (default: ``$GENSEEK_DATASETS``,
  else ``../shared/datasets`` beside the checkout: :func:`genseek.data.readers.datasets_root`);
  ``GENSEEK_MAX_EVAL_QUERIES``: judged queries one evaluation may run (default 2000)
- ``GENSEEK_RERANKERS``: ``name=spec;name=spec`` (default ``biencoder=biencoder;
  first=first;pointwise=pointwise``; the first one named answers ``/v1/rerank``
  requests without a ``model``), e.g. ``first=first(model=/models/first-ft)``

Every bad value raises a :class:`~genseek.errors.GenseekError` with one line that
names the variable (or file) and what is wrong with it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from genseek.errors import GenseekError
from genseek.registry import check_reranker_spec
from genseek.spec import validate_name

SCOPES = frozenset({"read", "write"})
"""``write`` implies ``read``."""

_KEY = re.compile(r"^[\x21-\x7e]{1,512}$")  # printable ASCII, no spaces
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine."""
    if host in LOOPBACK_HOSTS:
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_rerankers(text: str) -> dict[str, str]:
    """``name=spec;name=spec`` (specs may hold commas, so ``;`` separates entries)."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, sep, spec = part.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise GenseekError(f"GENSEEK_RERANKERS: expected 'name=spec' entries separated by "
                               f"';', got {part.strip()!r}")
        out[name.strip()] = spec.strip()
    return out


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise GenseekError(f"{where}: an API key must be 1-512 printable characters without "
                           "spaces")
    if ":" in key or "," in key:
        raise GenseekError(f"{where}: an API key may not contain ':' or ','")
    return key


def _check_scopes(scopes: Iterable[Any], where: str) -> frozenset[str]:
    out = set()
    for scope in scopes:
        if scope not in SCOPES:
            raise GenseekError(f"{where}: unknown scope {scope!r}; use read or write")
        out.add(scope)
    if not out:
        raise GenseekError(f"{where}: an API key needs at least one scope (read or write)")
    return frozenset(out)


def parse_api_keys(text: str, where: str = "GENSEEK_API_KEYS") -> dict[str, frozenset[str]]:
    """``key1:read,key2:write,key3:read+write`` -> ``{key: scopes}``."""
    keys: dict[str, frozenset[str]] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        key, sep, scopes = entry.partition(":")
        if not sep:
            raise GenseekError(f"{where}: entry {entry[:4]}... has no scope; write KEY:read or "
                               "KEY:write")
        key = _check_key(key.strip(), where)
        if key in keys:
            raise GenseekError(f"{where}: the same key is given twice")
        keys[key] = _check_scopes([s.strip() for s in scopes.split("+")], where)
    return keys


def load_api_keys_file(path: str | Path) -> dict[str, frozenset[str]]:
    """Keys from ``{"keys": [{"key": "...", "scopes": ["read", "write"]}]}``."""
    where = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise GenseekError(f"{where}: cannot read the API keys file: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise GenseekError(f"{where}: the API keys file is not valid JSON: {exc}") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise GenseekError(f'{where}: expected {{"keys": [{{"key": "...", "scopes": ["read"]}}]}}')
    keys: dict[str, frozenset[str]] = {}
    for i, entry in enumerate(entries):
        at = f"{where}: keys[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("scopes"), list):
            raise GenseekError(f'{at}: expected {{"key": "...", "scopes": ["read"|"write"]}}')
        key = _check_key(entry.get("key"), at)
        if key in keys:
            raise GenseekError(f"{at}: the same key is given twice")
        keys[key] = _check_scopes(entry["scopes"], at)
    return keys


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        return int(raw)
    except ValueError:
        raise GenseekError(f"{name}: expected an integer, not {raw!r}") from None


def _env_float(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        return float(raw)
    except ValueError:
        raise GenseekError(f"{name}: expected a number, not {raw!r}") from None


PRELOAD = ("all", "collections", "none")
_OFF = ("off", "none", "0", "false", "no")


def _default_datasets() -> Path:
    from genseek.data.readers import datasets_root

    return datasets_root()


@dataclass(frozen=True)
class Settings:
    """Everything :func:`~genseek.api.app.create_app` needs; immutable."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: Mapping[str, frozenset[str]] = field(default_factory=dict)
    max_body_bytes: int = 16 * 1024 * 1024
    max_batch_docs: int = 1000
    max_queries: int = 128
    request_timeout_s: float = 30.0
    cors_origins: tuple[str, ...] = ()
    embedding_model: str = "all-MiniLM-L6-v2"
    sparse_model: str = "splade-tiny"
    rerankers: Mapping[str, str] = field(default_factory=lambda: {
        "biencoder": "biencoder", "first": "first", "pointwise": "pointwise"})
    public_metrics: bool = False  # /metrics without a key (a scraper on a private network)
    # what the server loads in the background at start: "all" (every collection and the
    # models of the /v1 routes and rerankers), "collections" (their indexes' models), "none"
    preload: str = "none"
    # the BEIR datasets the console may evaluate on (None: reading datasets is off)
    datasets_root: Path | None = field(default_factory=_default_datasets)
    max_eval_queries: int = 2000  # judged queries one POST .../evaluate may run

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "root", Path(self.root))
        if self.datasets_root is not None:
            set_(self, "datasets_root", Path(self.datasets_root))
        keys = {}
        for key, scopes in dict(self.api_keys).items():
            keys[_check_key(key, "api_keys")] = _check_scopes(
                [scopes] if isinstance(scopes, str) else scopes, "api_keys")
        set_(self, "api_keys", MappingProxyType(keys))
        set_(self, "cors_origins", tuple(self.cors_origins))
        rerankers = {}
        for name, spec in dict(self.rerankers).items():
            validate_name(name, "reranker")
            check_reranker_spec(spec)  # a bad spec fails at start-up, not on the first request
            rerankers[name] = spec
        set_(self, "rerankers", MappingProxyType(rerankers))
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise GenseekError(f"port must be an integer from 0 to 65535, not {self.port!r}")
        for name in ("max_body_bytes", "max_batch_docs", "max_queries", "max_eval_queries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GenseekError(f"{name} must be a positive integer, not {value!r}")
        if not (isinstance(self.request_timeout_s, (int, float))
                and 0 < self.request_timeout_s <= 86400):
            raise GenseekError(f"request_timeout_s must be a number of seconds in (0, 86400], "
                               f"not {self.request_timeout_s!r}")
        if self.preload not in PRELOAD:
            raise GenseekError(f"preload must be one of {', '.join(PRELOAD)}, not "
                               f"{self.preload!r}")
        for origin in self.cors_origins:
            if not isinstance(origin, str) or not origin:
                raise GenseekError(f"bad CORS origin {origin!r}")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``GENSEEK_*`` variables; ``overrides`` (not None) win.

        Keys from ``GENSEEK_API_KEYS`` and ``GENSEEK_API_KEYS_FILE`` are merged (a key in
        both must have the same scopes). ``root`` comes from ``GENSEEK_ROOT`` unless given.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        keys: dict[str, frozenset[str]] = {}
        if env.get("GENSEEK_API_KEYS", "").strip():
            keys.update(parse_api_keys(env["GENSEEK_API_KEYS"]))
        if env.get("GENSEEK_API_KEYS_FILE", "").strip():
            for key, scopes in load_api_keys_file(env["GENSEEK_API_KEYS_FILE"]).items():
                if keys.get(key, scopes) != scopes:
                    raise GenseekError("GENSEEK_API_KEYS_FILE: a key also in GENSEEK_API_KEYS "
                                       "has different scopes")
                keys[key] = scopes
        if keys:
            values["api_keys"] = keys
        if env.get("GENSEEK_ROOT"):
            values["root"] = Path(env["GENSEEK_ROOT"])
        if env.get("GENSEEK_HOST"):
            values["host"] = env["GENSEEK_HOST"]
        if env.get("GENSEEK_CORS_ORIGINS", "").strip():
            values["cors_origins"] = tuple(o.strip() for o in env["GENSEEK_CORS_ORIGINS"].split(",")
                                           if o.strip())
        for name, attr in (("GENSEEK_PORT", "port"), ("GENSEEK_MAX_BODY_BYTES", "max_body_bytes"),
                           ("GENSEEK_MAX_BATCH_DOCS", "max_batch_docs"),
                           ("GENSEEK_MAX_QUERIES", "max_queries"),
                           ("GENSEEK_MAX_EVAL_QUERIES", "max_eval_queries")):
            value = _env_int(env, name)
            if value is not None:
                values[attr] = value
        timeout = _env_float(env, "GENSEEK_REQUEST_TIMEOUT_S")
        if timeout is not None:
            values["request_timeout_s"] = timeout
        for name, attr in (("GENSEEK_EMBEDDING_MODEL", "embedding_model"),
                           ("GENSEEK_SPARSE_MODEL", "sparse_model")):
            if env.get(name):
                values[attr] = env[name]
        if env.get("GENSEEK_PUBLIC_METRICS", "").strip():
            flag = env["GENSEEK_PUBLIC_METRICS"].strip().lower()
            if flag not in ("1", "0", "true", "false", "yes", "no"):
                raise GenseekError(f"GENSEEK_PUBLIC_METRICS: expected 1 or 0, not {flag!r}")
            values["public_metrics"] = flag in ("1", "true", "yes")
        datasets = env.get("GENSEEK_API_DATASETS", "").strip()
        if datasets:
            values["datasets_root"] = None if datasets.lower() in _OFF else Path(datasets)
        else:
            from genseek.data.readers import datasets_root

            values["datasets_root"] = datasets_root(env)
        if env.get("GENSEEK_RERANKERS", "").strip():
            values["rerankers"] = parse_rerankers(env["GENSEEK_RERANKERS"])
        # a served process preloads everything unless told otherwise
        values["preload"] = env.get("GENSEEK_PRELOAD", "").strip() or "all"
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "root" not in values:
            raise GenseekError("no collections folder: give --root DIR or set GENSEEK_ROOT")
        return cls(**values)
