"""Pure ASGI middleware: observation, API keys, request timeout and body size.

Order, outermost first: :class:`ObserveMiddleware` (metrics + one JSON log line per
request, so rejected requests are counted too), CORS (when configured, so
preflights need no key), :class:`AuthMiddleware`, :class:`TimeoutMiddleware`,
:class:`BodyLimitMiddleware`, then the routes.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genseek.api.errors import dump_json, error_body

log = logging.getLogger("genseek.api")

PUBLIC_PATHS = frozenset({"/health", "/ready", "/docs", "/docs/oauth2-redirect", "/redoc",
                          "/openapi.json", "/ui"})
"""Paths any client may call. ``/ready`` then says only ready or not; its details (collection
names, errors) need a key with the read scope, as does ``/metrics`` (unless the server is
started with ``public_metrics``)."""
PUBLIC_PREFIX = "/ui/"
"""The console's static files (:data:`genseek.api.app.UI_DIR`): public, as the page asks for
the key and sends it with its API calls. Only the static mount serves paths under it."""
_READ_POSTS = re.compile(r"^/(collections/[^/]+/(search(/batch)?|evaluate)|v1/[^/]+)/?$")


async def send_error(send: Send, status: int, message: str, type: str | None = None,
                     headers: Mapping[str, str] | None = None) -> None:
    body = dump_json(error_body(status, message, type))
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def required_scope(method: str, path: str, public: frozenset[str] = PUBLIC_PATHS) -> str | None:
    """``None`` for public paths, else ``read`` or ``write``."""
    if path in public or path.startswith(PUBLIC_PREFIX):
        return None
    if method in ("GET", "HEAD", "OPTIONS") or (method == "POST" and _READ_POSTS.match(path)):
        return "read"
    return "write"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class ObserveMiddleware:
    """Counts and times every request and logs it as one JSON line on ``genseek.api``."""

    def __init__(self, app: ASGIApp, *, routes: Any, metrics: Any):
        self.app = app
        self.routes = routes
        self.metrics = metrics

    def _route(self, scope: Scope) -> tuple[str, dict[str, Any]]:
        partial = None
        for route in self.routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return route.path, child.get("path_params", {})
            if match is Match.PARTIAL and partial is None:
                partial = route.path, child.get("path_params", {})
        return partial or ("unmatched", {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = uuid.uuid4().hex[:16]
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - start
            method = scope["method"]
            matched = scope.get("route")  # set by the router in this same scope dict
            if matched is not None and hasattr(matched, "path"):
                route, params = matched.path, scope.get("path_params", {})
            else:  # answered before routing (401, 403, 413, 504): match it ourselves
                route, params = self._route(scope)
            self.metrics.observe_request(route, method, status, seconds)
            entry: dict[str, Any] = {"event": "request", "method": method, "route": route,
                                     "path": scope["path"], "status": status,
                                     "ms": round(seconds * 1000, 2), "request_id": request_id}
            if "name" in params:
                entry["collection"] = params["name"]
            client = scope.get("client")
            if client:
                entry["client"] = client[0]
            log.info(json.dumps(entry, ensure_ascii=False), extra={"json": entry})


class AuthMiddleware:
    """API keys: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.

    A missing or unknown key is 401; a key without the route's scope is 403
    (``write`` implies ``read``). With no keys configured every request passes
    (the server then only binds to loopback).
    """

    def __init__(self, app: ASGIApp, *, api_keys: Mapping[str, frozenset[str]],
                 public: frozenset[str] = PUBLIC_PATHS):
        self.app = app
        self.keys = [(k.encode(), scopes) for k, scopes in api_keys.items()]
        self.public = public

    def _scopes(self, key: str) -> frozenset[str] | None:
        raw = key.encode("utf-8", "surrogateescape")
        found = None
        for candidate, scopes in self.keys:  # compare with every key, in constant time
            if hmac.compare_digest(candidate, raw):
                found = scopes
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys:
            await self.app(scope, receive, send)
            return
        need = required_scope(scope["method"], scope["path"], self.public)
        scopes, problem = self._authenticate(scope)
        if need is None:  # public: a valid key, if one is sent, still shows its scopes
            scope.setdefault("state", {})["scopes"] = scopes or frozenset()
            await self.app(scope, receive, send)
            return
        if problem is not None or scopes is None:
            await send_error(send, 401, problem or "unknown API key", "unauthorized",
                             {"www-authenticate": 'Bearer realm="genseek"'})
            return
        if need not in scopes and "write" not in scopes:  # write implies read
            await send_error(send, 403, f"this API key lacks the '{need}' scope that "
                             f"{scope['method']} {scope['path']} needs", "forbidden")
            return
        scope.setdefault("state", {})["scopes"] = scopes
        await self.app(scope, receive, send)

    def _authenticate(self, scope: Scope) -> tuple[frozenset[str] | None, str | None]:
        """``(scopes of the key sent, None)``, or ``(None, why it is refused)``. Every
        credential sent must be valid: there is no fallback past a bad one."""
        presented = []
        auth = _header(scope, b"authorization")
        if auth is not None:
            kind, _, value = auth.strip().partition(" ")
            if kind.lower() != "bearer" or not value.strip():
                return None, "the Authorization header must be 'Bearer KEY'"
            presented.append(value.strip())
        header_key = _header(scope, b"x-api-key")
        if header_key is not None:
            presented.append(header_key.strip())
        if not presented:
            return None, ("an API key is required: send 'Authorization: Bearer KEY' or "
                          "'X-API-Key: KEY'")
        if len(set(presented)) > 1:
            return None, ("two different API keys were sent (Authorization and X-API-Key); "
                          "send one")
        scopes = self._scopes(presented[0])
        return (scopes, None) if scopes is not None else (None, "unknown API key")


class TimeoutMiddleware:
    """Answers 504 when a request runs past ``timeout`` seconds, not counting the time while
    a model (or the JVM) is being loaded in the process (``busy()``, by default
    :meth:`genseek.models.ModelCache.busy`): a request that waits for a model load gets its
    deadline moved on by as long as the load ran.

    The deadline is put in ``scope["state"]["deadline"]`` (``anyio.current_time()``
    clock) so routes can bound their own waits (``refresh``) below it. Work already
    handed to a thread keeps running to its end; only the answer is given up. The 504 says
    whether the request was a read (nothing changed) or a write (it may have been applied).
    """

    TICK_S = 0.25  # how often the deadlines of running requests are checked against loads

    def __init__(self, app: ASGIApp, *, timeout: float,
                 busy: Callable[[], bool] | None = None):
        self.app = app
        self.timeout = timeout
        if busy is None:
            from genseek.models import MODELS

            busy = MODELS.busy
        self.busy = busy
        self._running: set[anyio.CancelScope] = set()
        self._watcher: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        """While any request runs: move their deadlines on by each tick spent loading."""
        last = anyio.current_time()
        while self._running:
            await anyio.sleep(self.TICK_S)
            now = anyio.current_time()
            if self.busy():
                for scope in list(self._running):
                    scope.deadline += now - last
            last = now
        self._watcher = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS - {"/ready"}:
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        begun = anyio.current_time()
        scope.setdefault("state", {})["deadline"] = begun + self.timeout
        with anyio.CancelScope(deadline=begun + self.timeout) as cancel:
            self._running.add(cancel)
            loop = asyncio.get_running_loop()
            if self._watcher is None or self._watcher.done() or self._watcher.get_loop() \
                    is not loop:
                self._watcher = loop.create_task(self._watch())
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                self._running.discard(cancel)
        if cancel.cancelled_caught and not started:
            waited = anyio.current_time() - begun
            log.warning("request %s %s timed out after %.1fs", scope["method"], scope["path"],
                        waited)
            read = scope["method"] in ("GET", "HEAD") or (
                scope["method"] == "POST" and _READ_POSTS.match(scope["path"]) is not None)
            outcome = ("it was a read: nothing was changed, retry it or ask for less" if read
                       else "it was a write: it may still have been applied (writes are "
                       "idempotent: retry it)")
            await send_error(send, 504, f"the request took longer than the server's "
                             f"{self.timeout:g}s limit (GENSEEK_REQUEST_TIMEOUT_S; model loads "
                             f"not counted); {outcome}", "timeout")


class BodyLimitMiddleware:
    """413 for a body over ``limit`` bytes, before anything parses it.

    A ``Content-Length`` over the limit is refused at once; a body without one
    (chunked) is read up to the limit and refused as soon as it passes it. An
    oversized body is read on and discarded (up to ``drain`` bytes) before the
    answer, so clients that send the whole body before reading get the 413.
    """

    def __init__(self, app: ASGIApp, *, limit: int, drain: int = 64 * 1024 * 1024):
        self.app = app
        self.limit = limit
        self.drain = drain

    async def _drain(self, receive: Receive, already: int) -> None:
        seen = already
        while seen < self.drain:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _refuse(self, send: Send, size: str) -> None:
        await send_error(send, 413, f"the request body ({size}) is over the server's limit of "
                         f"{self.limit} bytes", "payload_too_large", {"connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await send_error(send, 400, "bad Content-Length header", "bad_request")
                return
            if declared > self.limit:
                if declared <= self.drain:
                    await self._drain(receive, 0)
                await self._refuse(send, f"{declared} bytes")
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                if message.get("more_body", False):
                    await self._drain(receive, size)
                await self._refuse(send, f"over {self.limit} bytes")
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
