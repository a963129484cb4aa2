"""User-facing errors: one readable line, no traceback."""

from __future__ import annotations


class GenseekError(Exception):
    """An error caused by the user's input or environment.

    The CLI prints ``str(error)`` as one line on stderr and exits with status 2;
    the HTTP API maps it to a 4xx response.
    """


class InputError(GenseekError):
    """Malformed input data: names the file, line and field when known."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line
