"""One error shape for every 4xx/5xx: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """An error meant for a person: says what was wrong and how to fix it."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers or {}
        if code:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class BadRequest(AppError):
    """400: a header or parameter that is not in the form the API documents."""

    status_code = 400
    code = "bad_request"


class Unauthenticated(AppError):
    status_code = 401
    code = "unauthenticated"

    def __init__(self, message: str = "Sign in first: send the session cookie or an "
                 "'Authorization: Bearer enx_...' API key.", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("WWW-Authenticate", "Bearer")


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"


NOT_FOUND_MESSAGE = (
    "Not found. Check the address, and that you are signed in to an organization that owns it."
)


class NotFound(AppError):
    """Missing and other-tenant objects raise this with the same body, on purpose."""

    status_code = 404
    code = "not_found"

    def __init__(self) -> None:
        super().__init__(NOT_FOUND_MESSAGE)

    @classmethod
    def with_message(cls, message: str) -> NotFound:
        error = cls()
        error.message = message
        return error


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class ValidationFailed(AppError):
    status_code = 422
    code = "validation_failed"


class TooManyRequests(AppError):
    status_code = 429
    code = "too_many_requests"
