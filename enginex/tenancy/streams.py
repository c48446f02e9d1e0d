"""Live event streams (Server-Sent Events) that end when the caller's access ends.

A stream outlives the request that opened it: a session waiting for an approval can keep one
open for days. The guard ran once, when it opened; ``event_stream_response`` runs it again
every ``ENGINEX_STREAM_RECHECK_SECONDS`` (at most 15 s) while the stream is open, with the
request's own cookie or API key, through ``guards.recheck_tenant_access`` (the same
authentication and membership/role resolution as a new request, for the route's own scope).
When access is gone -- signed out, password changed (both delete the browser sessions),
session expired, API key revoked or expired, member removed, role without the scope,
organization suspended -- the stream sends one last event and ends::

    event: access_revoked
    data: {"error": {"code": "access_revoked", "message": "...", "details": {"reason": ...}}}

Clients must not reconnect after it (a reconnect would be refused by the guard anyway).

Every SSE route builds its response with ``event_stream_response``; the route must be a
tenant route (``Require`` or ``WebTenant``), else it fails on first use (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from enginex.db import READ_ONLY, is_transient_db_error
from enginex.kit.errors import AppError
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import recheck_tenant_access, tenant_rule_of

log = logging.getLogger("enginex.streams")
ACCESS_REVOKED = "access_revoked"
STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def access_revoked_event(error: AppError) -> bytes:
    """The last event of a stream whose caller lost access; ``reason`` is the guard's error
    code (``session_expired``, ``not_found``, ``forbidden`` ...)."""
    body = {"error": {"code": ACCESS_REVOKED, "message": error.message,
                      "details": {"reason": error.code}}}
    return f"event: {ACCESS_REVOKED}\ndata: {json.dumps(body)}\n\n".encode()


async def still_allowed(request: Request, ctx: TenantContext) -> AppError | None:
    """None while the caller of ``request`` may still use its route in ``ctx``'s
    organization; otherwise the error a new request would get. The check only reads, in a
    read-only session (on SQLite it never takes the write lock), and is rolled back: it never
    extends a session or marks a key as used. A database error propagates (the caller tells
    a transient one from a bug with ``is_transient_db_error``)."""
    async with request.app.state.db.sessions(execution_options={READ_ONLY: True}) as db:
        try:
            await recheck_tenant_access(request, db, ctx)
        except AppError as exc:
            return exc
        finally:
            await db.rollback()
    return None


def event_stream_response(request: Request, ctx: TenantContext,
                          body: AsyncIterator[bytes]) -> StreamingResponse:
    """A ``text/event-stream`` response of ``body`` (complete SSE messages as bytes) that
    re-checks the caller's access at least every ``stream_recheck_seconds`` and ends with an
    ``access_revoked`` event when it is gone (see the module docstring).

    ``body`` is advanced in a task of its own so that the re-check runs on time even while it
    waits for events; it must not hold a cancel scope across a ``yield``. It is closed when
    the stream ends, however it ends (also when the client disconnects)."""
    tenant_rule_of(request)  # a route without a tenant rule fails now, not at the re-check
    interval = float(request.app.state.settings.stream_recheck_seconds)
    return StreamingResponse(_guarded(request, ctx, body, interval),
                             media_type="text/event-stream", headers=STREAM_HEADERS)


async def _guarded(request: Request, ctx: TenantContext, body: AsyncIterator[bytes],
                   interval: float) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    next_check = loop.time() + interval
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(body))
            done, _ = await asyncio.wait({pending}, timeout=max(0.0, next_check - loop.time()))
            if done:
                finished, pending = pending, None
                try:
                    chunk = finished.result()
                except StopAsyncIteration:
                    return
                yield chunk
            if loop.time() >= next_check:
                try:
                    error = await still_allowed(request, ctx)
                except Exception as exc:
                    if not is_transient_db_error(exc):
                        raise
                    # The database is busy or restarting: the caller's access is unknown,
                    # not gone. Keep the stream and ask again on the next tick.
                    log.warning("event stream access re-check postponed, database "
                                "unavailable (%s) tenant_id=%s", type(exc).__name__,
                                ctx.org_id)
                    next_check = loop.time() + interval
                    continue
                if error is not None:
                    log.info("event stream closed, access ended (%s) tenant_id=%s",
                             error.code, ctx.org_id)
                    yield access_revoked_event(error)
                    return
                next_check = loop.time() + interval
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()
