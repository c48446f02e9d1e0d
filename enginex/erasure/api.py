"""Erasure of a person and subject access: ``/api/v1/me/erasure-request``,
``/api/v1/me/personal-data`` (the person), ``/api/v1/admin/erasures`` and
``/api/v1/admin/users/{user_id}/erasure|personal-data`` (platform admin)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Query, Request, status
from fastapi.responses import StreamingResponse

from enginex.auth import repository as auth_repo
from enginex.erasure import service
from enginex.erasure.access import build_subject_access, file_chunks
from enginex.erasure.models import UserErasure
from enginex.erasure.schemas import (
    ErasureConfirm,
    ErasureDecline,
    ErasureOut,
    ErasureRequestCreate,
    ErasureResultOut,
)
from enginex.kit.errors import NotFound
from enginex.tenancy.guards import DB, Authenticated, PlatformAdmin, make_router
from enginex.tenancy.principal import Principal, UserPrincipal

router = make_router(prefix="/api/v1", tags=["erasure and subject access"])
Admin = Annotated[UserPrincipal, PlatformAdmin()]
Someone = Annotated[Principal, Authenticated()]
ZIP = {200: {"content": {"application/zip": {}}}}


def erasure_out(erasure: UserErasure, email: str | None = None) -> ErasureOut:
    return ErasureOut.model_validate({**{c.key: getattr(erasure, c.key)
                                         for c in UserErasure.__table__.columns
                                         if c.key in ErasureOut.model_fields
                                         and c.key != "email"}, "email": email})


def _me(principal: Principal) -> UserPrincipal:
    service.refuse_api_keys(principal)
    assert isinstance(principal, UserPrincipal)
    return principal


def _zip_response(path: object, name: str) -> StreamingResponse:
    from pathlib import Path
    assert isinstance(path, Path)
    return StreamingResponse(file_chunks(path), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{name}"',
        "Cache-Control": "no-store"})


# --- the person -------------------------------------------------------------------------------


@router.post("/me/erasure-request", response_model=ErasureOut,
             status_code=status.HTTP_201_CREATED, responses={409: {}})
async def request_erasure(body: ErasureRequestCreate, db: DB, principal: Someone) -> ErasureOut:
    """Ask for the erasure of your account. A platform admin confirms (the erasure runs) or
    declines it. Your current password confirms the request. 409 when one is pending."""
    me = _me(principal)
    erasure = await service.request_erasure(db, me.user_id, password=body.password,
                                            reason=body.reason)
    return erasure_out(erasure)


@router.get("/me/erasure-request", response_model=ErasureOut)
async def get_erasure_request(db: DB, principal: Someone) -> ErasureOut:
    """Your latest erasure request and its state (404 when you never asked)."""
    erasure = await service.latest_request(db, _me(principal).user_id)
    if erasure is None:
        raise NotFound.with_message("You have not asked for the erasure of your account.")
    return erasure_out(erasure)


@router.delete("/me/erasure-request", response_model=ErasureOut)
async def withdraw_erasure_request(db: DB, principal: Someone) -> ErasureOut:
    """Withdraw your pending request (409 once a platform admin started the erasure)."""
    return erasure_out(await service.withdraw_request(db, _me(principal).user_id))


@router.get("/me/personal-data", response_class=StreamingResponse, responses=ZIP)
async def my_personal_data(request: Request, db: DB, principal: Someone) -> StreamingResponse:
    """Your subject-access export: a ZIP of your own personal data in every organization
    (docs/DATA_LIFECYCLE.md "Subject access")."""
    me = _me(principal)
    await db.commit()  # the export reads each organization in a transaction of its own
    path = await build_subject_access(request.app.state.db.sessions, me.user_id)
    return _zip_response(path, "personal-data.zip")


# --- platform admin ---------------------------------------------------------------------------


@router.get("/admin/erasures", response_model=list[ErasureOut])
async def list_erasures(db: DB, _: Admin,
                        pending: Annotated[bool, Query(description=(
                            "Only requests waiting for a decision and erasures in "
                            "progress."))] = False) -> list[ErasureOut]:
    """Erasure requests and erasures, newest first (200 at most)."""
    rows = await service.list_erasures(db, pending_only=pending)
    emails = {}
    for row in rows:
        user = await auth_repo.get_user(db, row.user_id) if row.status != "erased" else None
        emails[row.id] = user.email if user else None
    return [erasure_out(r, emails[r.id]) for r in rows]


@router.post("/admin/users/{user_id}/erasure", response_model=ErasureResultOut,
             responses={404: {}, 409: {}})
async def erase_user(user_id: uuid.UUID, body: ErasureConfirm, request: Request, db: DB,
                     admin: Admin) -> ErasureResultOut:
    """Erase the account everywhere (or finish an interrupted erasure): membership, API keys,
    browser sessions, SSO links, invitations and the account deleted; sessions, approvals
    and reports stay with their organizations without the link to the person; ``user.erased``
    audited in each affected organization. Confirms the person's pending request, if any.
    Irreversible. 409 for your own account."""
    await db.commit()  # the erasure commits organization by organization (SQLite: one writer)
    result = await service.erase_user(request.app.state.db.sessions, user_id,
                                      actor=service.Actor("platform_admin", admin.user_id),
                                      confirm_email=body.confirm_email,
                                      storage=request.app.state.storage)
    erasure = await db.get(UserErasure, result.erasure_id)
    assert erasure is not None
    return ErasureResultOut(erasure=erasure_out(erasure), removed=result.removed)


@router.post("/admin/users/{user_id}/erasure-request/decline", response_model=ErasureOut,
             responses={404: {}, 409: {}})
async def decline_erasure_request(user_id: uuid.UUID, body: ErasureDecline, db: DB,
                                  admin: Admin) -> ErasureOut:
    """Decline the person's pending erasure request, with the reason they will see."""
    erasure = await service.decline_request(db, user_id,
                                            actor=service.Actor("platform_admin", admin.user_id),
                                            reason=body.reason)
    return erasure_out(erasure)


@router.get("/admin/users/{user_id}/personal-data", response_class=StreamingResponse,
            responses=ZIP)
async def user_personal_data(user_id: uuid.UUID, request: Request, db: DB, _: Admin
                             ) -> StreamingResponse:
    """The subject-access export of one account, for a request the person made to the
    operator (the same ZIP as ``GET /api/v1/me/personal-data``). 404 for an unknown id."""
    await db.commit()
    path = await build_subject_access(request.app.state.db.sessions, user_id)
    return _zip_response(path, f"personal-data-{user_id}.zip")
