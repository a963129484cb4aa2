"""JSON log lines for the server: one object per line on stderr.

A record logged with ``extra={"json": {...}}`` (the per-request lines of
:class:`~genseek.api.middleware.ObserveMiddleware`) is written as that object plus
``ts``, ``level`` and ``logger``; any other record as ``{"ts", "level", "logger",
"message"}`` (with ``exc`` when it carries a traceback).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name}
        payload = getattr(record, "json", None)
        if isinstance(payload, dict):
            out.update(payload)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(level: int = logging.INFO, stream: Any = None) -> None:
    """Send every log record (genseek's and uvicorn's) to ``stream`` as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("genseek", "uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(level)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # we log requests ourselves
