"""HTTP errors and how exceptions become ``{"error": {"type", "message"}}`` responses.

======================================  ======  =====================
raised                                  status  ``type``
======================================  ======  =====================
a :class:`~genseek.errors.GenseekError` its     its ``type`` (see genseek.errors:
                                        status  400, 404, 409, 422, 500, 503)
request validation (pydantic)           422     ``validation_error``
malformed JSON                          400     ``invalid_json``
API key missing / without the scope     401/403 ``unauthorized`` / ``forbidden``
body over ``max_body_bytes``            413     ``payload_too_large``
over ``request_timeout_s``              504     ``timeout``
anything else                           500     ``internal_error``
======================================  ======  =====================
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from genseek.errors import GenseekError

log = logging.getLogger("genseek.api")

_STATUS_TYPES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
                 415: "unsupported_media_type", 422: "validation_error", 500: "internal_error",
                 503: "unavailable", 504: "timeout"}


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dump_json(content: Any) -> bytes:
    try:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:  # a non-finite float somewhere
        text = json.dumps(_finite(content), ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8")


class JSON(JSONResponse):
    """A compact JSON response that never fails on NaN (rendered as null)."""

    def render(self, content: Any) -> bytes:
        return dump_json(content)


def error_body(status: int, message: str, type: str | None = None,
               details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type or _STATUS_TYPES.get(status, "error"),
                             "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def error_response(status: int, message: str, type: str | None = None,
                   details: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> JSON:
    return JSON(error_body(status, message, type, details), status_code=status, headers=headers)


def _loc(loc: Any) -> str:
    parts = [str(p) for p in loc if p != "body"] if isinstance(loc, (list, tuple)) else [str(loc)]
    return ".".join(parts) or "body"


def _validation_response(exc: RequestValidationError) -> JSON:
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = errors[0].get("ctx", {}).get("error", "")
        return error_response(400, f"the body is not valid JSON: {detail}".rstrip(": "),
                              "invalid_json")
    details = [{"loc": _loc(e.get("loc", ())), "msg": str(e.get("msg", "")),
                "type": str(e.get("type", ""))} for e in errors[:20]]
    first = details[0] if details else {"loc": "body", "msg": "invalid request"}
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return error_response(422, f"{first['loc']}: {first['msg']}{more}", "validation_error",
                          details)


def install(app: FastAPI) -> None:
    """Register the exception handlers on ``app``."""

    @app.exception_handler(GenseekError)
    async def _genseek_error(request: Request, exc: GenseekError) -> Response:
        if exc.status >= 500:
            log.error("%s on %s %s: %s", type(exc).__name__, request.method, request.url.path,
                      exc)
        return error_response(exc.status, str(exc), exc.type)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log",
                              "internal_error")
