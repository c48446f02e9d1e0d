"""Dashboard pages of approvals: the inbox, the nav badge, and decisions.

* ``/o/{org}/approvals`` -- pending approvals first, then recent decisions; ``?status=``
  filters. Each pending approval has its decision form when the member may decide it.
* ``/o/{org}/approvals/badge`` -- the pending count shown on the Approvals tab (htmx).
* ``POST /o/{org}/approvals/{approval_id}/decision`` -- ``approvals.service.decide``; back to
  the session page or the inbox. A role that may not decide sees the service's 403 message,
  a second decision its 409 message, on the page the form was on.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.approvals import service
from enginex.approvals.models import Approval
from enginex.approvals.repository import ApprovalRepository
from enginex.kit.errors import AppError, NotFound
from enginex.reports.web import PAGE_SIZE, parse_id, parse_page, render_markdown, window
from enginex.runs.web import session_page_response
from enginex.tenancy.guards import DB, make_router
from enginex.tenancy.scopes import Scope
from enginex.web.templating import render
from enginex.web.tenant import WebContext, WebTenant

router = make_router(tags=["dashboard"])

STATUSES = ("pending", "approved", "rejected", "expired", "cancelled")
RECENT_DECISIONS = 20


async def _inbox(request: Request, db: AsyncSession, web: WebContext, *,
                 errors: dict[uuid.UUID, str] | None = None,
                 comments: dict[uuid.UUID, str] | None = None,
                 status_code: int = 200) -> HTMLResponse:
    ctx = web.ctx
    status = (request.query_params.get("status") or "")[:20]
    page = parse_page(request.query_params.get("page"))
    filter_error = None
    if status and status != "all" and status not in STATUSES:
        filter_error = f"status: must be one of {', '.join(STATUSES)} or all."
        status, status_code = "", 422
    repo = ApprovalRepository(db, ctx)
    pending_total = await repo.count_pending()
    if status:
        rows = (await service.list_approvals(db, ctx, status=None if status == "all" else status,
                                             limit=page * PAGE_SIZE + 1)).items
        main, recent = window(rows, page), []
    else:
        # Pending first, then the latest decisions.
        rows = (await service.list_approvals(db, ctx, status="pending",
                                             limit=page * PAGE_SIZE + 1)).items
        main = window(rows, page)
        latest = (await service.list_approvals(db, ctx, status=None,
                                               limit=RECENT_DECISIONS + len(main.items))).items
        recent = [a for a in latest if a.status != "pending"][:RECENT_DECISIONS]
    shown: list[Approval] = [*main.items, *recent]
    return render(request, "approvals/inbox.html", principal=web.principal, ctx=ctx,
                  status_code=status_code, status=status, statuses=STATUSES,
                  approvals=main, recent=recent, pending_total=pending_total,
                  pending_approvals=pending_total, filter_error=filter_error,
                  questions={a.id: render_markdown(a.question) for a in shown},
                  can_decide=ctx.has(Scope.APPROVALS_DECIDE),
                  may_decide={a.id: service.can_decide(ctx, a) for a in shown},
                  errors=errors or {}, comments=comments or {})


@router.get("/o/{org}/approvals", response_class=HTMLResponse)
async def approvals_inbox(request: Request, db: DB,
                          web: Annotated[WebContext, WebTenant(Scope.APPROVALS_READ)]
                          ) -> HTMLResponse:
    return await _inbox(request, db, web)


@router.get("/o/{org}/approvals/badge", response_class=HTMLResponse)
async def approvals_badge(request: Request, db: DB,
                          web: Annotated[WebContext, WebTenant(Scope.APPROVALS_READ)]
                          ) -> HTMLResponse:
    """The pending count for the Approvals tab; empty when nothing waits."""
    count = await ApprovalRepository(db, web.ctx).count_pending()
    return render(request, "approvals/_badge.html", principal=web.principal, ctx=web.ctx,
                  count=count)


@router.post("/o/{org}/approvals/{approval_id}/decision", response_class=HTMLResponse)
async def approvals_decide(request: Request, db: DB, approval_id: str,
                           web: Annotated[WebContext, WebTenant(Scope.APPROVALS_DECIDE)]
                           ) -> Response:
    """Record the decision (button ``decision``, field ``comment``) and go back to where the
    form was (``return_to``: ``session`` or the inbox)."""
    ctx = web.ctx
    approval_uuid = parse_id(approval_id)
    form = await request.form()
    decision = str(form.get("decision") or "")[:200]
    comment = str(form.get("comment") or "").replace("\r\n", "\n")
    to_session = form.get("return_to") == "session"
    approval = await service.access_approval(db, ctx, approval_uuid)
    try:
        if len(comment) > 4000:
            raise _CommentTooLong
        if not decision:
            raise _NoDecision
        await service.decide(db, ctx, approval_uuid, decision=decision, comment=comment,
                             actor=ctx.principal)
    except NotFound:
        raise
    except (AppError, _FormProblem) as exc:
        message = exc.message
        code = exc.status_code
        if to_session:
            return await session_page_response(request, db, web, approval.run_id,
                                               approval_error=message, comment=comment,
                                               status_code=code)
        return await _inbox(request, db, web, errors={approval_uuid: message},
                            comments={approval_uuid: comment}, status_code=code)
    target = (f"/o/{ctx.org_slug}/sessions/{approval.run_id}" if to_session
              else f"/o/{ctx.org_slug}/approvals")
    return RedirectResponse(target, status_code=303)


class _FormProblem(Exception):
    status_code = 422
    message = ""


class _CommentTooLong(_FormProblem):
    message = "The comment is longer than 4,000 characters; shorten it."


class _NoDecision(_FormProblem):
    message = "Choose a decision with one of the buttons."
