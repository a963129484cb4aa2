"""The Elasticsearch connection that every genseek module talking to Elasticsearch shares.

:func:`connect` builds the client (``elasticsearch`` is an optional dependency, imported
only here and when a call is made) and :func:`es_call` turns a client error into one
:class:`~genseek.errors.GenseekError` line naming what genseek was doing. The sync
(:mod:`genseek.data.es_sync`), the retriever (:mod:`genseek.retrievers.elastic`) and the
``genseek es`` command (:mod:`genseek.api.elastic`) import these; this module imports
nothing from them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from genseek.errors import GenseekError


def connect(url: str, api_key: str | None = None, user: str | None = None,
            password: str | None = None, *, verify_certs: bool = True,
            ca_certs: str | None = None, timeout: float = 120) -> Any:
    """An ``elasticsearch.Elasticsearch`` client for ``url``: API key auth, or basic auth
    with ``user``; a malformed URL is a GenseekError."""
    from elasticsearch import Elasticsearch

    kwargs: dict[str, Any] = {"request_timeout": timeout, "verify_certs": verify_certs}
    if ca_certs:
        kwargs["ca_certs"] = ca_certs
    if api_key:
        kwargs["api_key"] = api_key
    elif user:
        kwargs["basic_auth"] = (user, password or "")
    try:
        return Elasticsearch(url, **kwargs)
    except ValueError as exc:
        raise GenseekError(f"--es {url!r}: {exc}") from None


def es_error(exc: Exception, what: str) -> GenseekError:
    """One line for an Elasticsearch client error: its status, type and reason, or that the
    server could not be reached."""
    from elasticsearch import ApiError, TransportError

    if isinstance(exc, ApiError):
        info = exc.info if isinstance(exc.info, dict) else {}
        err = info.get("error") if isinstance(info.get("error"), dict) else {}
        reason = err.get("reason") or exc.message or str(exc)
        return GenseekError(f"{what}: Elasticsearch answered {exc.status_code} "
                            f"{err.get('type', '')}: {reason}".replace(" : ", ": "))
    if isinstance(exc, TransportError):
        return GenseekError(f"{what}: cannot reach Elasticsearch: {exc.message}")
    return GenseekError(f"{what}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def es_call(what: str) -> Iterator[None]:
    """Run the block's client calls; an Elasticsearch error leaves it as :func:`es_error`'s
    GenseekError about ``what`` (e.g. ``"reading 'docs'"``)."""
    from elasticsearch import ApiError, TransportError

    try:
        yield
    except (ApiError, TransportError) as exc:
        raise es_error(exc, what) from None
