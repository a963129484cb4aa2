"""Errors by kind: one readable line, no traceback, and the HTTP status that kind means.

==========================  ======  ====================  ===================================
class                       status  ``type`` (API)        raised for
==========================  ======  ====================  ===================================
:class:`GenseekError`       400     ``bad_request``       the user's input or environment
:class:`InputError`         400     ``bad_request``       malformed data (file, line, field)
:class:`InvalidParameter`   422     ``invalid_parameter`` a spec or search parameter out of
                                                          its type or range
:class:`NotFoundError`      404     ``not_found``         no such collection, index, document
:class:`ConflictError`      409     ``conflict``          exists already, busy, locked
:class:`CollectionLocked`   409     ``conflict``          held by another process
:class:`UnavailableError`   503     ``unavailable``       shutting down; a model or index that
                                                          cannot serve now
:class:`IndexUnavailable`   503     ``index_unavailable`` one index is failing (named)
:class:`ModelUnavailable`   503     ``model_unavailable`` a model that cannot be loaded
:class:`ServerError`        500     ``internal_error``    a failure of genseek's side (an
                                                          index write, a model that crashed)
==========================  ======  ====================  ===================================

The CLI prints ``str(error)`` as one line on stderr and exits with status 2 (1 for
:class:`ServerError`); the HTTP API answers ``status`` with ``{"error": {"type", "message"}}``.
Errors never need their message matched to be told apart.
"""

from __future__ import annotations


class GenseekError(Exception):
    """An error caused by the user's input or environment (a 400 unless a subclass says)."""

    status: int = 400
    type: str = "bad_request"


class InputError(GenseekError):
    """Malformed input data: names the file, line and field when known."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line


class InvalidParameter(GenseekError):
    """A parameter of an index, reranker or search out of its type or range."""

    status, type = 422, "invalid_parameter"


class NotFoundError(GenseekError):
    status, type = 404, "not_found"


class ConflictError(GenseekError):
    status, type = 409, "conflict"


class CollectionLocked(ConflictError):
    """The collection is open in another process (its ``collection.lock`` is held)."""


class UnavailableError(GenseekError):
    status, type = 503, "unavailable"


class IndexUnavailable(UnavailableError):
    """One index cannot serve: it failed to open or its writes keep failing."""

    type = "index_unavailable"

    def __init__(self, message: str, *, index: str | None = None):
        super().__init__(message)
        self.index = index


class ModelUnavailable(UnavailableError):
    """A model could not be loaded (missing files, an unreadable checkpoint)."""

    type = "model_unavailable"


class ServerError(GenseekError):
    """A failure on genseek's side (not the client's input)."""

    status, type = 500, "internal_error"
