"""Sessions API: start, list, show, cancel, fork, events (JSON or Server-Sent Events),
checkpoints."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import Header, Query, Request, Response, status

from enginex.db import READ_ONLY, Database, is_transient_db_error, set_tenant
from enginex.idempotency import service as idempotency
from enginex.kit.errors import ValidationFailed
from enginex.kit.parsing import MAX_INT, parse_ascii_int
from enginex.kit.schemas import DateTimeParam
from enginex.runs import service
from enginex.runs.models import FINISHED
from enginex.runs.repository import RunFilter, RunRepository
from enginex.runs.schemas import (
    CheckpointOut,
    EventOut,
    SessionCreate,
    SessionFork,
    SessionOut,
    SessionPage,
)
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import DB, Require, make_router
from enginex.tenancy.scopes import Scope
from enginex.tenancy.streams import event_stream_response

router = make_router(prefix="/api/v1", tags=["sessions"])
IdempotencyKey = Annotated[str | None, Header(
    alias=idempotency.HEADER, description="Optional: the same value on every retry of one "
    "request makes the retries answer the first request's result instead of creating "
    "again (kept 24 hours).")]
Status = Literal["queued", "running", "waiting_approval", "succeeded", "failed", "cancelled"]
SSE_POLL_SECONDS = 0.5
SSE_KEEPALIVE_SECONDS = 15.0


@router.post("/orgs/{org}/sessions", response_model=SessionOut,
             status_code=status.HTTP_201_CREATED)
async def start_session(body: SessionCreate, db: DB,
                        ctx: Annotated[TenantContext, Require(Scope.RUNS_WRITE)],
                        idempotency_key: IdempotencyKey = None) -> Any:
    """Queue a session of an agent with inputs (validated against the agent's inputs).

    With ``Idempotency-Key``, a retry of the same request answers the first result (header
    ``Idempotent-Replayed: true``) instead of starting a second session."""
    async def start() -> SessionOut:
        run = await service.start_run(db, ctx, agent_key=body.agent, version=body.version,
                                      inputs=body.inputs, actor=ctx.principal)
        return SessionOut.model_validate(run)

    return await idempotency.create_once(db, ctx, idempotency.parse_key(idempotency_key),
                                         operation="sessions.start", body=body, create=start)


@router.get("/orgs/{org}/sessions", response_model=SessionPage)
async def list_sessions(db: DB, ctx: Annotated[TenantContext, Require(Scope.RUNS_READ)],
                        status_: Annotated[Status | None, Query(alias="status")] = None,
                        agent: Annotated[str | None, Query(max_length=64)] = None,
                        created_after: DateTimeParam | None = None,
                        created_before: DateTimeParam | None = None,
                        started_by: Annotated[uuid.UUID | None, Query(
                            description="Only sessions this user started (a user id).")] = None,
                        id_prefix: Annotated[str | None, Query(
                            alias="id", pattern=r"^[0-9A-Fa-f-]{4,36}$",
                            description="A session id or its first characters (at least 4 "
                                        "hex digits, dashes ignored).")] = None,
                        cursor: Annotated[str | None, Query(max_length=200)] = None,
                        limit: Annotated[int, Query(ge=1, le=200)] = 50) -> SessionPage:
    """Sessions, newest first, with filters and cursor pagination (``next_cursor``)."""
    digits = id_prefix.replace("-", "").lower() if id_prefix else None
    if digits is not None and not 4 <= len(digits) <= 32:
        raise ValidationFailed("id: give a session id or its first characters (4 to 32 hex "
                               "digits, like 3f2a9c1b).", details={"field": "id"})
    page = await service.list_runs(db, ctx, RunFilter(status_, agent, created_after,
                                                      created_before, started_by, digits),
                                   limit=limit, cursor=cursor)
    return SessionPage(items=[SessionOut.model_validate(r) for r in page.items],
                       next_cursor=page.next_cursor)


@router.get("/orgs/{org}/sessions/{run_id}", response_model=SessionOut)
async def get_session(run_id: uuid.UUID, db: DB,
                      ctx: Annotated[TenantContext, Require(Scope.RUNS_READ)]) -> SessionOut:
    return SessionOut.model_validate(await service.access_run(db, ctx, run_id))


@router.post("/orgs/{org}/sessions/{run_id}/cancel", response_model=SessionOut)
async def cancel_session(run_id: uuid.UUID, db: DB,
                         ctx: Annotated[TenantContext, Require(Scope.RUNS_WRITE)]) -> SessionOut:
    """Cancel a queued, running or waiting session. 409 if it already finished."""
    return SessionOut.model_validate(await service.cancel_run(db, ctx, run_id,
                                                              actor=ctx.principal))


@router.post("/orgs/{org}/sessions/{run_id}/fork", response_model=SessionOut,
             status_code=status.HTTP_201_CREATED)
async def fork_session(run_id: uuid.UUID, body: SessionFork, db: DB,
                       ctx: Annotated[TenantContext, Require(Scope.RUNS_WRITE)],
                       idempotency_key: IdempotencyKey = None) -> Any:
    """Replay: start a new session from checkpoint ``step`` (0 = from the start). Takes
    ``Idempotency-Key`` like starting a session."""
    async def fork() -> SessionOut:
        return SessionOut.model_validate(await service.fork_run(db, ctx, run_id, step=body.step,
                                                                actor=ctx.principal))

    return await idempotency.create_once(db, ctx, idempotency.parse_key(idempotency_key),
                                         operation=f"sessions.fork:{run_id}", body=body,
                                         create=fork)


@router.get("/orgs/{org}/sessions/{run_id}/checkpoints", response_model=list[CheckpointOut])
async def list_checkpoints(run_id: uuid.UUID, db: DB,
                           ctx: Annotated[TenantContext, Require(Scope.RUNS_READ)]
                           ) -> list[CheckpointOut]:
    return [CheckpointOut.model_validate(c)
            for c in await service.list_checkpoints(db, ctx, run_id)]


@router.get("/orgs/{org}/sessions/{run_id}/events", response_model=list[EventOut],
            responses={200: {"content": {"text/event-stream": {}}}})
async def session_events(run_id: uuid.UUID, request: Request, db: DB,
                         ctx: Annotated[TenantContext, Require(Scope.RUNS_READ)],
                         after: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
                         last_event_id: Annotated[str | None, Header()] = None) -> Response:
    """The session's events. With ``Accept: text/event-stream``: a live SSE stream that resumes
    after ``Last-Event-ID`` and ends when the session has finished, or with an
    ``access_revoked`` event as soon as the caller loses access (tenancy/streams.py);
    otherwise a JSON list. A ``Last-Event-ID`` that is not ASCII digits is a 400."""
    run = await service.access_run(db, ctx, run_id)
    if "text/event-stream" not in request.headers.get("accept", ""):
        events = await service.list_events(db, ctx, run_id, after=after)
        return Response(json.dumps([EventOut.model_validate(e).model_dump(mode="json")
                                    for e in events]), media_type="application/json")
    start = after
    if last_event_id:
        # A client sends back an id this server gave it (a sequence number); anything else
        # is a client bug, answered 400 rather than silently restarting from ``after``.
        # Empty means "no id" (the SSE spec's reset), as if the header were absent.
        start = parse_ascii_int(last_event_id, name="Last-Event-ID")
    del run  # access checked above; the stream re-reads the run on every poll
    return event_stream_response(
        request, ctx, _event_stream(request, request.app.state.db, ctx, run_id, start))


async def _event_stream(request: Request, database: Database, ctx: TenantContext,
                        run_id: uuid.UUID, after: int) -> AsyncIterator[bytes]:
    """Polls the database (shared by every API process), so any replica can serve the stream.
    The tenant is fixed by the request's context; each poll re-binds it."""
    wake = database.notifier.waiter()
    idle = 0.0
    try:
        yield b"retry: 2000\n\n"
        while True:
            try:
                async with database.sessions(execution_options={READ_ONLY: True}) as session:
                    await set_tenant(session, ctx.org_id)
                    repo = RunRepository(session, ctx)
                    events = await repo.events_after(run_id, after, limit=500)
                    run = await repo.get(run_id)
                    session.expunge_all()
            except Exception as exc:
                if not is_transient_db_error(exc):
                    raise
                # The database is busy or restarting: keep the stream, poll again later.
                if await request.is_disconnected():
                    return
                await asyncio.sleep(SSE_POLL_SECONDS)
                continue
            for event in events:
                after = event.seq
                payload = EventOut.model_validate(event).model_dump_json()
                yield f"id: {event.seq}\nevent: {event.kind}\ndata: {payload}\n\n".encode()
            if run is None or (run.status in FINISHED and not events):
                yield b"event: end\ndata: {}\n\n"
                return
            if events:
                idle = 0.0
                continue
            if await request.is_disconnected():
                return
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), timeout=SSE_POLL_SECONDS)
            except TimeoutError:
                idle += SSE_POLL_SECONDS
            if idle >= SSE_KEEPALIVE_SECONDS:
                idle = 0.0
                yield b": keep-alive\n\n"
    finally:
        database.notifier.discard(wake)
