"""Sign-in, sign-out, the current principal, and an organization's API keys."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import BackgroundTasks, Query, Request, Response, status

from enginex.audit.service import record_in_user_orgs
from enginex.auth import reset, service
from enginex.auth.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    LoginRequest,
    MeOut,
    OrgMembershipOut,
    PasswordChange,
    PasswordResetConfirm,
    PasswordResetRequest,
    PasswordResetRequested,
)
from enginex.config import Settings
from enginex.kit.errors import Forbidden
from enginex.kit.pagination import next_link
from enginex.kit.time import utcnow
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import DB, Authenticated, Public, Require, make_router
from enginex.tenancy.platform import list_user_orgs
from enginex.tenancy.principal import Principal, UserPrincipal
from enginex.tenancy.scopes import Role, Scope

router = make_router(prefix="/api/v1", tags=["auth"])


def set_session_cookie(response: Response, settings: Settings,
                       result: service.LoginResult) -> None:
    response.set_cookie(
        settings.session_cookie_name, result.token, httponly=True, samesite="lax",
        secure=settings.secure_cookies, path="/",
        max_age=settings.session_absolute_hours * 3600,
    )


def clear_session_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(settings.session_cookie_name, path="/", httponly=True,
                           samesite="lax", secure=settings.secure_cookies)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def describe_principal(db: DB, principal: Principal) -> MeOut:
    if isinstance(principal, UserPrincipal):
        orgs = await list_user_orgs(db, principal.user_id)
        return MeOut(kind="user", user_id=principal.user_id, email=principal.email,
                     is_platform_admin=principal.is_platform_admin,
                     csrf_token=principal.csrf_token,
                     organizations=[OrgMembershipOut(id=o.org_id, slug=o.slug, name=o.name,
                                                     status=o.status, role=o.role)
                                    for o in orgs])
    from enginex.orgs.repository import get_org
    org = await get_org(db, principal.tenant_id)
    assert org is not None
    return MeOut(kind="api_key", api_key_id=principal.key_id, organizations=[OrgMembershipOut(
        id=org.id, slug=org.slug, name=org.name, status=org.status, role=principal.role)])


@router.post("/auth/login", response_model=MeOut, responses={401: {}, 429: {}})
async def login(body: LoginRequest, request: Request, response: Response, db: DB,
                _: Annotated[None, Public()]) -> MeOut:
    """Sign in with email and password; sets the session cookie (a new token every time)."""
    settings: Settings = request.app.state.settings
    try:
        result = await service.login(db, settings, email=body.email, password=body.password,
                                     client_address=client_address(request),
                                     user_agent=request.headers.get("user-agent", ""))
    except service.LoginFailed as failed:
        await service.audit_login(request, db, failed.user_id, succeeded=False)
        raise
    await service.audit_login(request, db, result.user.id, succeeded=True)
    set_session_cookie(response, settings, result)
    principal = UserPrincipal(user_id=result.user.id, email=result.user.email,
                              is_platform_admin=result.user.is_platform_admin,
                              session_id=result.session.id,
                              csrf_token=request.app.state.auth_keys.csrf_token(result.session.id))
    return await describe_principal(db, principal)


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(request: Request, db: DB,
                 principal: Annotated[Principal, Authenticated()]) -> Response:
    """End this browser session (the cookie stops working immediately)."""
    if not isinstance(principal, UserPrincipal):
        raise Forbidden("API keys have no session to sign out of; revoke the key instead.")
    await service.logout(db, principal)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    clear_session_cookie(response, request.app.state.settings)
    return response


@router.get("/me", response_model=MeOut)
async def me(db: DB, principal: Annotated[Principal, Authenticated()]) -> MeOut:
    """Who is calling, their organizations and roles, and the CSRF token for cookie requests."""
    return await describe_principal(db, principal)


@router.post("/me/password", response_model=MeOut)
async def change_password(body: PasswordChange, request: Request, response: Response, db: DB,
                          principal: Annotated[Principal, Authenticated()]) -> MeOut:
    """Change your password: every other session is signed out and a new cookie is set."""
    if not isinstance(principal, UserPrincipal):
        raise Forbidden("API keys have no password.")
    settings: Settings = request.app.state.settings
    try:
        result = await service.change_password(
            db, settings, principal, current_password=body.current_password,
            new_password=body.new_password, user_agent=request.headers.get("user-agent", ""))
    except service.WrongCurrentPassword:
        await db.commit()  # keep the recorded failure for throttling
        raise
    set_session_cookie(response, settings, result)
    fresh = UserPrincipal(user_id=principal.user_id, email=principal.email,
                          is_platform_admin=principal.is_platform_admin,
                          session_id=result.session.id,
                          csrf_token=request.app.state.auth_keys.csrf_token(result.session.id))
    return await describe_principal(db, fresh)


@router.post("/auth/password-reset", response_model=PasswordResetRequested,
             status_code=status.HTTP_202_ACCEPTED, responses={429: {}})
async def request_password_reset(body: PasswordResetRequest, request: Request, db: DB,
                                 background: BackgroundTasks, _: Annotated[None, Public()]
                                 ) -> PasswordResetRequested:
    """Ask for a password-reset link by email. Public: whoever forgot their password is
    signed out. The answer is the same whether or not an account uses the address (the
    account is looked up after the response is sent); throttled per email and per client
    address (429 with Retry-After)."""
    settings: Settings = request.app.state.settings
    await reset.admit_request(db, settings, email=body.email,
                              client_address=client_address(request))
    background.add_task(reset.issue_reset_quietly, request.app.state.db.sessions, settings,
                        email=body.email)
    return PasswordResetRequested(message=reset.RESET_REQUESTED)


async def confirm_and_audit(request: Request, db: DB, *, token: str, new_password: str) -> None:
    """``reset.confirm_reset``, committed, then audited in the user's organizations."""
    user = await reset.confirm_reset(db, token=token, new_password=new_password)
    user_id = user.id
    await db.commit()
    await record_in_user_orgs(request.app.state.db.sessions, user_id, "auth.password_reset",
                              actor_kind="user", actor_id=user_id)


@router.post("/auth/password-reset/confirm", status_code=status.HTTP_204_NO_CONTENT,
             responses={404: {}, 422: {}})
async def confirm_password_reset(body: PasswordResetConfirm, request: Request, db: DB,
                                 _: Annotated[None, Public()]) -> Response:
    """Set a new password with the token of a reset email. Public: the token is the
    credential (single use, short-lived). Every browser session of the account ends; API
    keys stay. 404 for an unknown, used or expired token; 422 when the password breaks the
    policy (the token stays usable)."""
    await confirm_and_audit(request, db, token=body.token, new_password=body.new_password)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/orgs/{org}/api-keys", response_model=list[ApiKeyOut])
async def list_api_keys(request: Request, response: Response, db: DB,
                        ctx: Annotated[TenantContext, Require(Scope.APIKEYS_READ)],
                        limit: Annotated[int, Query(ge=1, le=500)] = 100,
                        cursor: Annotated[str | None, Query(max_length=200)] = None
                        ) -> list[ApiKeyOut]:
    """The organization's API keys (never the keys themselves), newest first. When more
    follow, the ``Link`` header names the next page (``rel="next"``, with ``cursor``)."""
    page = await service.page_api_keys(db, ctx, limit=limit, cursor=cursor)
    response.headers.update(next_link(str(request.url), page.next_cursor))
    return [ApiKeyOut.model_validate(k) for k in page.items]


@router.get("/orgs/{org}/api-keys/{key_id}", response_model=ApiKeyOut)
async def get_api_key(key_id: uuid.UUID, db: DB,
                      ctx: Annotated[TenantContext, Require(Scope.APIKEYS_READ)]) -> ApiKeyOut:
    """One API key (never the key itself), with its lineage: ``created_by`` and
    ``parent_key_id``."""
    return ApiKeyOut.model_validate(await service.get_api_key(db, ctx, key_id))


@router.post("/orgs/{org}/api-keys", response_model=ApiKeyCreated,
             status_code=status.HTTP_201_CREATED)
async def create_api_key(body: ApiKeyCreate, db: DB,
                         ctx: Annotated[TenantContext, Require(Scope.APIKEYS_WRITE)]
                         ) -> ApiKeyCreated:
    """Create an API key for this organization. The token is in this response only.

    Created with an API key: the new key records it as ``parent_key_id``, expires no later
    than it, and is revoked with it."""
    assert ctx.principal is not None
    expires = utcnow() + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    token, key = await service.create_api_key(db, ctx, name=body.name, role=Role(body.role),
                                              expires_at=expires, actor=ctx.principal)
    return ApiKeyCreated.model_validate({**ApiKeyOut.model_validate(key).model_dump(),
                                         "token": token})


@router.delete("/orgs/{org}/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_api_key(key_id: uuid.UUID, db: DB,
                         ctx: Annotated[TenantContext, Require(Scope.APIKEYS_WRITE)]) -> Response:
    """Revoke a key and the keys created with it (and theirs): they stop working on the next
    request."""
    assert ctx.principal is not None
    await service.revoke_api_key(db, ctx, key_id, actor=ctx.principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
