"""Members and invitations of one organization, and invitation acceptance."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Query, Request, Response, status

from enginex.auth.api import set_session_cookie
from enginex.auth.service import authenticate, open_session
from enginex.kit.errors import Forbidden
from enginex.kit.pagination import next_link
from enginex.orgs import service
from enginex.orgs.schemas import (
    InvitationAccept,
    InvitationAccepted,
    InvitationCreate,
    InvitationCreated,
    InvitationOut,
    MemberOut,
    MemberUpdate,
)
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import DB, Public, Require, make_router
from enginex.tenancy.principal import UserPrincipal
from enginex.tenancy.scopes import Role, Scope

router = make_router(prefix="/api/v1", tags=["organizations"])


def _member_out(m: service.Member) -> MemberOut:
    return MemberOut(user_id=m.user_id, email=m.email, display_name=m.display_name, role=m.role,
                     joined_at=m.joined_at, disabled_at=m.disabled_at)  # type: ignore[arg-type]


@router.get("/orgs/{org}/members", response_model=list[MemberOut])
async def list_members(request: Request, response: Response, db: DB,
                       ctx: Annotated[TenantContext, Require(Scope.MEMBERS_READ)],
                       limit: Annotated[int, Query(ge=1, le=500)] = 100,
                       cursor: Annotated[str | None, Query(max_length=200)] = None
                       ) -> list[MemberOut]:
    """Members of the organization with their roles, newest member first. When more follow,
    the ``Link`` header names the next page (``rel="next"``, with ``cursor``)."""
    page = await service.page_members(db, ctx, limit=limit, cursor=cursor)
    response.headers.update(next_link(str(request.url), page.next_cursor))
    return [_member_out(m) for m in page.items]


@router.patch("/orgs/{org}/members/{user_id}", response_model=MemberOut)
async def change_member_role(user_id: uuid.UUID, body: MemberUpdate, db: DB,
                             ctx: Annotated[TenantContext, Require(Scope.MEMBERS_WRITE)]
                             ) -> MemberOut:
    """Change a member's role. 409 if it would leave the organization without an admin."""
    await service.change_role(db, ctx, user_id, Role(body.role))
    return _member_out(await service.get_member(db, ctx, user_id))


@router.post("/orgs/{org}/members/{user_id}/disable", response_model=MemberOut)
async def disable_member(user_id: uuid.UUID, db: DB,
                         ctx: Annotated[TenantContext, Require(Scope.MEMBERS_WRITE)]
                         ) -> MemberOut:
    """Disable a member's access to this organization (session, their API keys, open event
    streams) without removing them; idempotent. 409 for the last enabled admin, 403 for
    yourself."""
    await service.set_member_disabled(db, ctx, user_id, True)
    return _member_out(await service.get_member(db, ctx, user_id))


@router.post("/orgs/{org}/members/{user_id}/enable", response_model=MemberOut)
async def enable_member(user_id: uuid.UUID, db: DB,
                        ctx: Annotated[TenantContext, Require(Scope.MEMBERS_WRITE)]
                        ) -> MemberOut:
    """Re-enable a disabled member; idempotent."""
    await service.set_member_disabled(db, ctx, user_id, False)
    return _member_out(await service.get_member(db, ctx, user_id))


@router.delete("/orgs/{org}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_member(user_id: uuid.UUID, db: DB,
                        ctx: Annotated[TenantContext, Require(Scope.MEMBERS_WRITE)]) -> Response:
    """Remove a member; their access ends on their next request. 409 for the last admin."""
    await service.remove_member(db, ctx, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/orgs/{org}/invitations", response_model=list[InvitationOut])
async def list_invitations(request: Request, response: Response, db: DB,
                           ctx: Annotated[TenantContext, Require(Scope.MEMBERS_WRITE)],
                           limit: Annotated[int, Query(ge=1, le=500)] = 100,
                           cursor: Annotated[str | None, Query(max_length=200)] = None
                           ) -> list[InvitationOut]:
    """Pending and past invitations, newest first (tokens are never shown again). When more
    follow, the ``Link`` header names the next page (``rel="next"``, with ``cursor``)."""
    page = await service.page_invitations(db, ctx, limit=limit, cursor=cursor)
    response.headers.update(next_link(str(request.url), page.next_cursor))
    return [InvitationOut.model_validate(i) for i in page.items]


@router.post("/orgs/{org}/invitations", response_model=InvitationCreated,
             status_code=status.HTTP_201_CREATED)
async def create_invitation(body: InvitationCreate, request: Request, db: DB,
                            ctx: Annotated[TenantContext, Require(Scope.MEMBERS_WRITE)]
                            ) -> InvitationCreated:
    """Invite someone by email; the response holds the link, once."""
    base = request.app.state.settings.base_url.rstrip("/")
    token, invitation = await service.create_invitation(db, ctx, email=body.email,
                                                        role=Role(body.role), base_url=base)
    return InvitationCreated.model_validate({
        **InvitationOut.model_validate(invitation).model_dump(), "token": token,
        "accept_url": f"{base}/invitations/accept#{token}"})


@router.delete("/orgs/{org}/invitations/{invitation_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_invitation(invitation_id: uuid.UUID, db: DB,
                            ctx: Annotated[TenantContext, Require(Scope.MEMBERS_WRITE)]
                            ) -> Response:
    """Revoke an invitation so its link stops working."""
    await service.revoke_invitation(db, ctx, invitation_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/invitations/accept", response_model=InvitationAccepted,
             responses={404: {}})
async def accept_invitation(body: InvitationAccept, request: Request, response: Response,
                            db: DB, _: Annotated[None, Public()]) -> InvitationAccepted:
    """Accept an invitation. New accounts set their password here and are signed in; an
    existing account must be signed in (cookie + X-CSRF-Token) to accept."""
    signed_in = None
    if request.cookies.get(request.app.state.settings.session_cookie_name):
        principal = await authenticate(request, db)
        signed_in = principal.user_id if isinstance(principal, UserPrincipal) else None
    user, org, created = await service.accept_invitation(
        db, token=body.token, password=body.password, display_name=body.display_name,
        signed_in_user_id=signed_in)
    if user.disabled:
        raise Forbidden("This account is disabled.", code="account_disabled")
    if created:
        result = await open_session(db, request.app.state.settings, user,
                                    user_agent=request.headers.get("user-agent", ""))
        set_session_cookie(response, request.app.state.settings, result)
    return InvitationAccepted(user_id=user.id, org_slug=org.slug, new_account=created)

