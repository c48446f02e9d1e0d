"""Pages of erasure and subject access.

``/account``: the signed-in person's own page (their organizations, the download of their
personal data, the erasure request with its state). ``/admin/erasures``: the platform admin's
list of requests and erasures, with confirm (type the address) and decline (give a reason);
the erase form is also on each account's page (``/admin/users/{id}``). Same service functions
as the API.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from enginex.auth import repository as auth_repo
from enginex.erasure import service
from enginex.kit.errors import AppError
from enginex.tenancy.guards import DB, make_router
from enginex.tenancy.platform import list_user_orgs
from enginex.tenancy.principal import UserPrincipal
from enginex.web.pages import WebUser
from enginex.web.templating import render
from enginex.web.tenant import WebPlatformAdmin

router = make_router(tags=["dashboard"])
Admin = Annotated[UserPrincipal, WebPlatformAdmin()]
Person = Annotated[UserPrincipal, WebUser()]
NOTICES = {"requested": "Your request was sent. A platform admin will confirm or decline it.",
           "withdrawn": "Your request was withdrawn.",
           "declined": "The request was declined; the person sees the reason.",
           "erased": "The account was erased."}


async def _account_page(request: Request, db: DB, principal: UserPrincipal, *,
                        error: str | None = None, notice: str | None = None,
                        status_code: int = 200) -> HTMLResponse:
    return render(request, "erasure/account.html", principal=principal, status_code=status_code,
                  memberships=await list_user_orgs(db, principal.user_id),
                  erasure=await service.latest_request(db, principal.user_id),
                  error=error, notice=notice)


@router.get("/account", response_class=HTMLResponse)
async def account(request: Request, db: DB, principal: Person,
                  done: Annotated[Literal["requested", "withdrawn"] | None, Query()] = None
                  ) -> HTMLResponse:
    """Your account: organizations, your personal data, and asking for erasure."""
    return await _account_page(request, db, principal, notice=NOTICES.get(done or ""))


@router.post("/account/erasure-request", response_class=HTMLResponse)
async def request_erasure(request: Request, db: DB, principal: Person) -> Response:
    """Ask for the erasure of your account (form: password, reason)."""
    form = await request.form()
    try:
        await service.request_erasure(db, principal.user_id,
                                      password=str(form.get("password") or "") or None,
                                      reason=str(form.get("reason") or "")[:500])
    except AppError as exc:
        await db.rollback()
        return await _account_page(request, db, principal, error=exc.message,
                                   status_code=exc.status_code)
    return RedirectResponse("/account?done=requested", status_code=303)


@router.post("/account/erasure-request/withdraw", response_class=HTMLResponse)
async def withdraw_erasure(request: Request, db: DB, principal: Person) -> Response:
    """Withdraw your pending erasure request."""
    try:
        await service.withdraw_request(db, principal.user_id)
    except AppError as exc:
        await db.rollback()
        return await _account_page(request, db, principal, error=exc.message,
                                   status_code=exc.status_code)
    return RedirectResponse("/account?done=withdrawn", status_code=303)


async def _erasures_page(request: Request, db: DB, principal: UserPrincipal, *,
                         error: str | None = None, notice: str | None = None,
                         status_code: int = 200) -> HTMLResponse:
    rows = await service.list_erasures(db)
    emails: dict[uuid.UUID, str] = {}
    for row in rows:
        if row.status != "erased":
            user = await auth_repo.get_user(db, row.user_id)
            if user is not None:
                emails[row.id] = user.email
    return render(request, "erasure/erasures.html", principal=principal, rows=rows,
                  emails=emails, error=error, notice=notice, status_code=status_code)


@router.get("/admin/erasures", response_class=HTMLResponse)
async def erasures(request: Request, db: DB, principal: Admin,
                   done: Annotated[Literal["declined", "erased"] | None, Query()] = None
                   ) -> HTMLResponse:
    """Erasure requests waiting for a decision, erasures in progress and done."""
    return await _erasures_page(request, db, principal, notice=NOTICES.get(done or ""))


@router.post("/admin/users/{user_id}/erase", response_class=HTMLResponse)
async def erase(request: Request, user_id: uuid.UUID, db: DB, principal: Admin) -> Response:
    """Erase the account (form: ``confirm_email``), or finish an interrupted erasure."""
    confirm = str((await request.form()).get("confirm_email") or "")
    await db.commit()  # the erasure commits organization by organization
    try:
        await service.erase_user(request.app.state.db.sessions, user_id,
                                 actor=service.Actor("platform_admin", principal.user_id),
                                 confirm_email=confirm, storage=request.app.state.storage)
    except AppError as exc:
        return await _erasures_page(request, db, principal, error=exc.message,
                                    status_code=exc.status_code)
    return RedirectResponse("/admin/erasures?done=erased", status_code=303)


@router.post("/admin/users/{user_id}/erasure-request/decline", response_class=HTMLResponse)
async def decline(request: Request, user_id: uuid.UUID, db: DB, principal: Admin) -> Response:
    """Decline a pending request (form: ``reason``, shown to the person)."""
    reason = str((await request.form()).get("reason") or "")
    try:
        await service.decline_request(db, user_id,
                                      actor=service.Actor("platform_admin", principal.user_id),
                                      reason=reason)
    except AppError as exc:
        await db.rollback()
        return await _erasures_page(request, db, principal, error=exc.message,
                                    status_code=exc.status_code)
    return RedirectResponse("/admin/erasures?done=declined", status_code=303)


__all__ = ["router"]
