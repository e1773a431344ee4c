"""Errors that carry their HTTP status; one middleware renders them all in one JSON shape."""

from __future__ import annotations

from typing import Any


class SemantikError(Exception):
    """An error a client should see: ``{"error": {"code", "message", "details"?}}`` with ``status``."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, details: Any = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return {"error": body}


class BadRequest(SemantikError):
    status = 400
    code = "bad_request"


class Unauthorized(SemantikError):
    status = 401
    code = "unauthorized"


class Forbidden(SemantikError):
    status = 403
    code = "forbidden"


class NotFound(SemantikError):
    status = 404
    code = "not_found"


class Conflict(SemantikError):
    status = 409
    code = "conflict"


class UnsupportedMediaType(SemantikError):
    status = 415
    code = "unsupported_media_type"


class MisdirectedRequest(SemantikError):
    status = 421
    code = "host_not_allowed"


class ValidationFailed(SemantikError):
    status = 422
    code = "validation_error"


class Unavailable(SemantikError):
    status = 503
    code = "unavailable"


def field_error(field: str, message: str, code: str) -> ValidationFailed:
    """A 422 about one input field, shaped like pydantic's own validation details."""
    return ValidationFailed(message, code=code, details=[{"loc": [field], "msg": message, "type": code}])
