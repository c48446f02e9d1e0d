"""Audit log API: filtered pages (newest first), the JSON Lines export of the whole chain,
and a verification of the chain. All need ``audit:read`` (organization admins)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import StreamingResponse

from enginex.audit import service
from enginex.audit.anchor import anchor_keys
from enginex.audit.repository import AuditFilter
from enginex.audit.schemas import AuditEntryOut, AuditPageOut, AuditVerifyOut
from enginex.db import Database
from enginex.kit.schemas import DateTimeParam
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import DB, Require, make_router
from enginex.tenancy.scopes import Scope

router = make_router(prefix="/api/v1", tags=["audit"])

AuditReader = Annotated[TenantContext, Require(Scope.AUDIT_READ)]


@router.get("/orgs/{org}/audit", response_model=AuditPageOut)
async def list_audit(db: DB, ctx: AuditReader,
                     actor: Annotated[uuid.UUID | None, Query()] = None,
                     action: Annotated[str | None, Query(max_length=60)] = None,
                     target_kind: Annotated[str | None, Query(max_length=40)] = None,
                     target_id: Annotated[str | None, Query(max_length=80)] = None,
                     from_: Annotated[DateTimeParam | None, Query(alias="from")] = None,
                     to: DateTimeParam | None = None,
                     cursor: Annotated[str | None, Query(max_length=200)] = None,
                     limit: Annotated[int, Query(ge=1, le=200)] = 50) -> AuditPageOut:
    """Entries, newest first. ``action`` matches exactly, or as a prefix when it ends with a
    dot (``member.``); ``from`` is inclusive, ``to`` exclusive; pass ``next_cursor`` back as
    ``cursor`` for the next page."""
    filters = AuditFilter(actor_id=actor, action=action or None,
                          target_kind=target_kind or None, target_id=target_id or None,
                          at_from=from_, at_to=to)
    page = await service.list_entries(db, ctx, filters, limit=limit, cursor=cursor)
    return AuditPageOut(items=[AuditEntryOut.model_validate(e) for e in page.items],
                        next_cursor=page.next_cursor)


@router.get("/orgs/{org}/audit/export", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}}}})
async def export_audit(request: Request, ctx: AuditReader) -> StreamingResponse:
    """The whole chain as JSON Lines in chain order (ascending ``seq``), one entry per line
    with ``seq``, ``prev_hash`` and ``hash``; streamed, so any size can be exported."""
    database: Database = request.app.state.db

    async def lines() -> AsyncIterator[bytes]:
        async for entry in service.export_chain(database.sessions, ctx):
            yield AuditEntryOut.model_validate(entry).model_dump_json().encode() + b"\n"

    filename = f"audit-{ctx.org_slug}.jsonl"
    return StreamingResponse(lines(), media_type="application/x-ndjson",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/orgs/{org}/audit/verify", response_model=AuditVerifyOut)
async def verify_audit(request: Request, db: DB, ctx: AuditReader) -> AuditVerifyOut:
    """Recompute the chain: ``intact``, the number of entries, and the first broken seq. A
    chain whose oldest entries retention deleted is verified from its signed anchor."""
    verdict = await service.verify_chain(
        db, ctx, anchor_keys=anchor_keys(request.app.state.master_key))
    return AuditVerifyOut(intact=verdict.intact, entries=verdict.entries,
                          broken_seq=verdict.broken_seq, message=verdict.describe())
