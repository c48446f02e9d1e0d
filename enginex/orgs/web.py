"""Dashboard pages of an organization: the overview (``/o/{org}``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Request
from fastapi.responses import HTMLResponse

from enginex.approvals.service import ApprovalRepository
from enginex.runs.repository import RunRepository
from enginex.tenancy.guards import DB, make_router
from enginex.tenancy.scopes import Scope
from enginex.web.templating import render
from enginex.web.tenant import WebContext, WebTenant

router = make_router(tags=["dashboard"])


@router.get("/o/{org}", response_class=HTMLResponse)
async def overview(request: Request, db: DB,
                   web: Annotated[WebContext, WebTenant(Scope.ORG_READ)]) -> HTMLResponse:
    """What needs attention in this organization: sessions by status, pending approvals."""
    counts = await RunRepository(db, web.ctx).count_by_status()
    pending = await ApprovalRepository(db, web.ctx).count_pending()
    return render(request, "orgs/overview.html", principal=web.principal, ctx=web.ctx,
                  counts=counts, pending=pending)
