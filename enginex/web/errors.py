"""Exception handlers: every error becomes ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any, Protocol

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as SqlAlchemyTimeout
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from enginex.db import is_transient_db_error
from enginex.kit.errors import NOT_FOUND_MESSAGE, AppError, NotFound

log = logging.getLogger("enginex.errors")

INTERNAL_ERROR_MESSAGE = ("Something went wrong on our side; nothing was saved. Try again, and "
                          "report it if it keeps happening.")
DATABASE_UNAVAILABLE = ("The database is briefly unavailable (restarting or busy); nothing was "
                        "saved. Send the same request again in a few seconds (with the same "
                        "Idempotency-Key, if it had one).")
RETRY_AFTER_SECONDS = 2


class LoginRequired(Exception):
    """A dashboard page was opened without a session: redirect to sign-in and back."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path[:2000]


async def rollback_for_page(db: AsyncSession, exc: AppError) -> None:
    """A dashboard form's service call raised ``exc``: NotFound propagates (the one not-found
    page, the same for another organization's ids); anything else ends the failed
    transaction so that the handler can re-render its page with ``exc.message``."""
    if isinstance(exc, NotFound):
        raise exc
    await db.rollback()


def _json(status: int, code: str, message: str, details: dict[str, Any] | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details or {}}},
                        status_code=status, headers=headers)


API_PREFIXES = ("/api/", "/healthz", "/readyz", "/static/", "/openapi.json")


def is_page(request: Request) -> bool:
    """Dashboard pages get HTML error pages; the API (and everything else) gets JSON."""
    return not request.url.path.startswith(API_PREFIXES)


class ErrorRenderer(Protocol):
    """Renders an error in a protocol's own format: ``(status, message, headers)``."""

    def __call__(self, status: int, message: str, /, headers: dict[str, str] | None = None
                 ) -> Response: ...


def register_error_renderer(app: FastAPI, path_prefix: str, render: ErrorRenderer) -> None:
    """Errors under ``path_prefix`` (the application's handlers': not found, method not
    allowed, validation, conflicts, database unavailable) are rendered by ``render`` instead of
    EngineX's JSON shape. For a feature whose clients read another protocol's error format
    (SCIM, RFC 7644 §3.12); the feature names its own prefix, this module knows none."""
    renderers: list[tuple[str, ErrorRenderer]] = getattr(app.state, "error_renderers", [])
    app.state.error_renderers = [*renderers, (path_prefix, render)]


def _respond(request: Request, status: int, code: str, message: str,
             details: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> Response:
    path = request.url.path
    for prefix, render in getattr(request.app.state, "error_renderers", ()):
        if path.startswith(prefix):
            return render(status, message, headers=headers)
    if not is_page(request):
        return _json(status, code, message, details, headers)
    from enginex.web.templating import render

    principal = getattr(request.state, "principal", None)
    return render(request, "error.html", principal=principal, status_code=status,
                  headers=headers, error={"status": status, "code": code, "message": message,
                                          "details": details or {}})


@lru_cache(maxsize=512)
def _path_regex(path: str) -> re.Pattern[str]:
    return compile_path(path)[0]


def allowed_methods(request: Request) -> str:
    """Every method the address supports. Starlette's 405 names only the methods of the first
    route whose path matched, but GET and POST of one address are often two routes."""
    from enginex.tenancy.guards import registered_routes

    path = request.scope.get("path", "")
    methods: set[str] = set()
    catch_all: set[str] = set()  # a ``{…:path}`` route counts only when nothing else matches
    for registered in registered_routes(request.app):
        if registered.methods and _path_regex(registered.path).match(path):
            (catch_all if ":path}" in registered.path else methods).update(registered.methods)
    return ", ".join(sorted(methods or catch_all))


def _with_allow(request: Request, headers: dict[str, str] | None) -> dict[str, str]:
    result = dict(headers or {})
    allowed = allowed_methods(request)
    if allowed:
        result["Allow"] = allowed
    return result


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)] or ["body"]
    return ".".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(request: Request, exc: AppError) -> Response:
        return _respond(request, exc.status_code, exc.code, exc.message, exc.details,
                        exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for err in exc.errors():
            msg = str(err.get("msg", "invalid"))
            field = _location(err.get("loc", ()))
            if err.get("type") == "extra_forbidden":
                msg = "unknown field; remove it"
            elif err.get("type") == "missing":
                msg = "required field is missing"
            elif err.get("type") == "json_invalid":
                # loc is ("body", <character offset>): not a field name.
                position = next((p for p in err.get("loc", ())[1:] if isinstance(p, int)), 0)
                reason = (err.get("ctx") or {}).get("error", "invalid syntax")
                field = "body"
                msg = (f"malformed JSON at character {position} ({reason}); send a valid "
                       "JSON object")
            problems.append({"field": field, "message": msg})
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
        return _respond(request, 422, "validation_failed",
                     f"The request is not valid: {summary}. Fix these fields and retry.",
                     {"errors": problems})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return _respond(request, 404, "not_found", NOT_FOUND_MESSAGE)
        if exc.status_code == 405:
            return _respond(request, 405, "method_not_allowed",
                         f"{request.method} is not supported on this address; the Allow header "
                         "lists the methods that are, and /openapi.json describes the API.",
                         headers=_with_allow(request, exc.headers))
        return _respond(request, exc.status_code, "http_error", str(exc.detail),
                     headers=dict(exc.headers or {}))

    @app.exception_handler(IntegrityError)
    async def integrity_error(request: Request, exc: IntegrityError) -> Response:
        # Checks run before writes; reaching a constraint means a concurrent request won.
        log.warning("constraint conflict on %s %s: %s", request.method, request.url.path,
                    exc.orig.__class__.__name__ if exc.orig else "IntegrityError")
        return _respond(request, 409, "conflict",
                     "This change conflicts with another one made at the same time; nothing "
                     "was saved. Reload and try again.")

    @app.exception_handler(DataError)
    async def data_error(request: Request, exc: DataError) -> Response:
        # Input the database cannot store, in a path, query or form value that no model
        # checked: a NUL character in text (PostgreSQL), a number out of its column's range.
        log.warning("value refused by the database on %s %s: %s", request.method,
                    request.url.path, exc.orig.__class__.__name__ if exc.orig else "DataError")
        return _respond(request, 422, "invalid_value",
                        "A value in the request cannot be stored: text cannot contain the NUL "
                        "character (\\u0000) and numbers must be in range. Fix it and retry; "
                        "nothing was saved.")

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        from urllib.parse import quote

        return RedirectResponse(f"/login?next={quote(exc.next_path, safe='/')}", status_code=303)

    def answer(request: Request, exc: Exception) -> Response:
        if is_transient_db_error(exc):
            # The database restarted, is unreachable or no pooled connection came free: the
            # request's transaction was rolled back, so the same request can be sent again.
            log.warning("database unavailable on %s %s: %s", request.method, request.url.path,
                        type(exc).__name__)
            return _respond(request, 503, "database_unavailable", DATABASE_UNAVAILABLE,
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _respond(request, 500, "internal_error", INTERNAL_ERROR_MESSAGE)

    async def database_error(request: Request, exc: Exception) -> Response:
        return answer(request, exc)

    # Database errors are answered inside the app (Starlette's ExceptionMiddleware), so a 503
    # for a restarting database is one warning line, not a traceback that the server re-raises
    # and logs; the catch-all below is Starlette's last resort, which always re-raises.
    for database_exception in (DBAPIError, SqlAlchemyTimeout, psycopg.OperationalError,
                               psycopg.InterfaceError):
        app.add_exception_handler(database_exception, database_error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return answer(request, exc)
