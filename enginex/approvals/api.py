"""Approvals API: the inbox and decisions."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import Query, Request, Response

from enginex.approvals import service
from enginex.kit.pagination import next_link
from enginex.runs.schemas import ApprovalDecision, ApprovalOut
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import DB, Require, make_router
from enginex.tenancy.scopes import Scope

router = make_router(prefix="/api/v1", tags=["approvals"])


@router.get("/orgs/{org}/approvals", response_model=list[ApprovalOut])
async def list_approvals(request: Request, response: Response, db: DB,
                         ctx: Annotated[TenantContext, Require(Scope.APPROVALS_READ)],
                         status: Annotated[Literal["pending", "approved", "rejected", "expired",
                                                   "cancelled"] | None, Query()] = None,
                         limit: Annotated[int, Query(ge=1, le=500)] = 100,
                         cursor: Annotated[str | None, Query(max_length=200)] = None
                         ) -> list[ApprovalOut]:
    """Approvals of this organization, newest first (``?status=pending`` for the inbox).
    When more follow, the ``Link`` header names the next page (``rel="next"``, with
    ``cursor``)."""
    page = await service.list_approvals(db, ctx, status=status, limit=limit, cursor=cursor)
    response.headers.update(next_link(str(request.url), page.next_cursor))
    return [ApprovalOut.model_validate(a) for a in page.items]


@router.get("/orgs/{org}/approvals/{approval_id}", response_model=ApprovalOut)
async def get_approval(approval_id: uuid.UUID, db: DB,
                       ctx: Annotated[TenantContext, Require(Scope.APPROVALS_READ)]
                       ) -> ApprovalOut:
    return ApprovalOut.model_validate(await service.access_approval(db, ctx, approval_id))


@router.post("/orgs/{org}/approvals/{approval_id}/decision", response_model=ApprovalOut)
async def decide(approval_id: uuid.UUID, body: ApprovalDecision, db: DB,
                 ctx: Annotated[TenantContext, Require(Scope.APPROVALS_DECIDE)]) -> ApprovalOut:
    """Decide once (409 afterwards); the session resumes from its checkpoint."""
    approval = await service.decide(db, ctx, approval_id, decision=body.decision,
                                    comment=body.comment, actor=ctx.principal)
    return ApprovalOut.model_validate(approval)
