"""ASGI middleware: security headers, request body limit, request log lines with tenant_id."""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enginex.db import is_transient_db_error
from enginex.kit.logs import log_context
from enginex.kit.parsing import ascii_int_or_none
from enginex.web.errors import DATABASE_UNAVAILABLE, INTERNAL_ERROR_MESSAGE, RETRY_AFTER_SECONDS

log = logging.getLogger("enginex.request")
REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'")


class _BodyTooLarge(Exception):
    pass


def _error(status: int, code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "details": {}}}).encode()


def _request_id(scope: Scope) -> str:
    """The caller's ``X-Request-ID`` when it is a plain token (a proxy's id joins our log lines
    to its own), else a new one; echoed in the response's ``X-Request-ID``."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id" and REQUEST_ID.fullmatch(value):
            return value.decode("ascii")
    return secrets.token_hex(8)


class SecurityMiddleware:
    """Adds security headers to every response and refuses bodies over ``max_body`` bytes."""

    # Package uploads may be larger than other bodies (the package loader has its own limits).
    UPLOAD_PATH = re.compile(r"^/(?:api/v1/orgs|o)/[^/]+/agents$")

    def __init__(self, app: ASGIApp, *, max_body: int, hsts: bool,
                 max_upload: int | None = None) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max(max_upload or max_body, max_body)
        headers = [
            (b"content-security-policy", CSP.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
            (b"x-frame-options", b"DENY"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
        ]
        if hsts:
            headers.append((b"strict-transport-security", b"max-age=31536000; includeSubDomains"))
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        with log_context(request_id=request_id):
            await self._handle(scope, receive, send, request_id)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        started = time.perf_counter()
        status_holder: dict[str, Any] = {"status": 500, "sent": False,
                                         "request_id": request_id.encode()}
        limit = (self.max_upload if scope.get("method") == "POST"
                 and self.UPLOAD_PATH.match(scope.get("path", "")) else self.max_body)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                length = ascii_int_or_none(value)
                if length is None or length > limit:
                    await self._send_413(send, status_holder, limit)
                    self._log(scope, status_holder, started)
                    return

        received = 0

        async def limited_receive() -> Message:
            # Without a Content-Length (chunked upload) the size is only known while reading.
            # Answer 413 right here: the framework turns any error raised while it reads the
            # body into its own 400, so raising alone would not reach the client as a 413.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if not status_holder["sent"]:
                        await self._send_413(send, status_holder, limit)
                        status_holder["rejected"] = True
                    raise _BodyTooLarge
            return message

        async def send_with_headers(message: Message) -> None:
            if status_holder.get("rejected"):
                return  # the 413 has been sent; drop whatever the app answers after it
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["sent"] = True
                names = {n.lower() for n, _ in message.get("headers", [])}
                extra = [h for h in self.headers if h[0] not in names]
                if b"cache-control" not in names:
                    extra.append((b"cache-control", b"no-store"))
                extra.append((b"x-request-id", status_holder["request_id"]))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _BodyTooLarge:
            if not status_holder["sent"]:
                await self._send_413(send, status_holder)
        except Exception as exc:
            # Starlette answers unhandled errors in its outermost middleware, outside this one,
            # so that 500 would lack the headers above. Answer it here (the same body as the
            # app's handler); the outer middleware still logs the error and sends nothing more.
            # The server drops the connection after an error escapes: tell the client so.
            # A database that is restarting or out of connections is a 503 to retry, not a bug.
            if not status_holder["sent"]:
                if is_transient_db_error(exc):
                    await self._send_error(
                        send, status_holder, 503, "database_unavailable", DATABASE_UNAVAILABLE,
                        extra=[(b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
                               (b"connection", b"close")])
                else:
                    await self._send_error(send, status_holder, 500, "internal_error",
                                           INTERNAL_ERROR_MESSAGE,
                                           extra=[(b"connection", b"close")])
            raise
        finally:
            self._log(scope, status_holder, started)

    async def _send_413(self, send: Send, holder: dict[str, Any], limit: int) -> None:
        await self._send_error(
            send, holder, 413, "payload_too_large",
            f"The request body is larger than {limit} bytes; send less data.",
            # The rest of the body is never read: the connection cannot be reused.
            extra=[(b"connection", b"close")])

    async def _send_error(self, send: Send, holder: dict[str, Any], status: int, code: str,
                          message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        body = _error(status, code, message)
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode()), *self.headers,
                   (b"cache-control", b"no-store"), (b"x-request-id", holder["request_id"]),
                   *(extra or [])]
        holder["status"] = status
        await send({"type": "http.response.start", "status": status, "headers": headers})
        holder["sent"] = True
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _log(scope: Scope, holder: dict[str, Any], started: float) -> None:
        state = scope.get("state") or {}
        tenant = state.get("tenant")
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        # The one access line of a request (uvicorn's own is off): the tenant is the guard's.
        log.info("%s %s %s %.1fms", scope.get("method"), scope.get("path"), holder["status"],
                 elapsed_ms, extra={
                     "tenant_id": str(tenant.org_id) if tenant else None,
                     "http": {"method": scope.get("method"), "path": scope.get("path"),
                              "status": holder["status"], "duration_ms": elapsed_ms}})
