"""Errors raised by domain code; the service turns them into JSON with the same code and message."""

from __future__ import annotations

from typing import Any


class LabelwheelError(Exception):
    """Base error: a stable machine-readable ``code``, a message saying what to fix, an HTTP-like status."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class Unauthorized(LabelwheelError):
    status = 401
    code = "unauthorized"


class Forbidden(LabelwheelError):
    status = 403
    code = "forbidden"


class NotFound(LabelwheelError):
    status = 404
    code = "not_found"


class Conflict(LabelwheelError):
    status = 409
    code = "conflict"


class Gone(LabelwheelError):
    status = 410
    code = "gone"


class PayloadTooLarge(LabelwheelError):
    status = 413
    code = "payload_too_large"


class InvalidInput(LabelwheelError):
    status = 422
    code = "invalid_input"


class StorageUnavailable(LabelwheelError):
    """A store the request needs refuses to work, such as a blob store that is not writable: the service's
    operators must act, and the request can be sent again once they have."""

    status = 503
    code = "storage_unavailable"
