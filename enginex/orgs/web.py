"""Dashboard pages of an organization: the overview (``/o/{org}``), members and invitations
(``/o/{org}/members``), the organization's settings (``/o/{org}/settings``) and its API keys
(``/o/{org}/settings/api-keys``).

Every page calls the same services as the API. Another organization's member, invitation or
key id gives the same not-found page as a random one. Secrets (invitation links, API keys)
appear in the one response that created them and never again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Generic, TypeVar
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.auth import service as auth_service
from enginex.auth.models import ApiKey
from enginex.auth.schemas import ApiKeyCreate
from enginex.kit.errors import AppError, NotFound
from enginex.kit.parsing import ascii_int_or_none
from enginex.kit.time import utcnow
from enginex.orgs import service
from enginex.orgs.models import Invitation
from enginex.orgs.repository import get_org
from enginex.orgs.schemas import InvitationCreate, MemberUpdate
from enginex.overview.service import org_overview
from enginex.tenancy.guards import DB, make_router
from enginex.tenancy.scopes import Role, Scope
from enginex.web.errors import rollback_for_page
from enginex.web.templating import render
from enginex.web.tenant import WebContext, WebTenant

router = make_router(tags=["dashboard"])


@router.get("/o/{org}", response_class=HTMLResponse)
async def overview(request: Request, db: DB,
                   web: Annotated[WebContext, WebTenant(Scope.ORG_READ)]) -> HTMLResponse:
    """The organization's home: sessions per day by outcome and model tokens and cost per day
    (charts, with the same figures as tables), pending approvals, recent failures with their
    reason, top agents. Each part only for a role that may read it (``overview.service``)."""
    found = await org_overview(db, web.ctx)
    return render(request, "orgs/overview.html", principal=web.principal, ctx=web.ctx,
                  overview=found, pending_approvals=found.pending_total or None,
                  sessions_chart=json.dumps(found.chart_sessions()),
                  usage_chart=json.dumps(found.chart_usage()))


# --- shared page helpers: pagination and form errors -------------------------------------------

PAGE_SIZE = 50
T = TypeVar("T")


@dataclass(frozen=True)
class PageOf(Generic[T]):
    """One page of a list; ``prev_url``/``next_url`` are None at the ends."""

    items: list[T]
    number: int
    pages: int
    total: int
    prev_url: str | None
    next_url: str | None


def paginate(items: Sequence[T], request: Request, *, base: str, param: str = "page",
             size: int = PAGE_SIZE, keep: dict[str, str] | None = None) -> PageOf[T]:
    """The page of ``items`` named by the query parameter ``param`` (1 when missing or not a
    number; clamped to the last page). Links point at ``base`` (the GET address of the page,
    also when a form POST re-renders it), keeping the ``keep`` query parameters."""
    total = len(items)
    pages = max(1, -(-total // size))
    number = min(max(ascii_int_or_none(request.query_params.get(param)) or 1, 1), pages)

    def url(n: int) -> str:
        query = {k: v for k, v in (keep or {}).items() if v} | {param: str(n)}
        return f"{base}?{urlencode(query)}"

    start = (number - 1) * size
    return PageOf(items=list(items[start:start + size]), number=number, pages=pages,
                  total=total, prev_url=url(number - 1) if number > 1 else None,
                  next_url=url(number + 1) if number < pages else None)


def field_errors(exc: ValidationError) -> dict[str, str]:
    """Pydantic errors of a form validated with the API's request model, by field name."""
    found: dict[str, str] = {}
    for err in exc.errors():
        field = str(err["loc"][0]) if err.get("loc") else "form"
        message = str(err.get("msg", "invalid"))
        if err.get("type") == "missing":
            message = "required"
        found.setdefault(field, message.removeprefix("Value error, "))
    return found


def app_error_fields(exc: AppError, default: str) -> dict[str, str]:
    """An AppError as a field error: on ``details.field`` when the service named one."""
    field = exc.details.get("field") if isinstance(exc.details, dict) else None
    return {str(field or default): exc.message}


async def _form(request: Request) -> dict[str, str]:
    """The submitted form's text fields (the CSRF field included; files dropped)."""
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _user_emails(members: Sequence[service.Member]) -> dict[uuid.UUID, str]:
    return {m.user_id: m.email for m in members}


ROLES = [str(r) for r in Role]


# --- members and invitations -------------------------------------------------------------------


def invitation_state(invitation: Invitation, now: datetime) -> str:
    if invitation.accepted_at is not None:
        return "accepted"
    if invitation.revoked_at is not None:
        return "revoked"
    if invitation.expires_at <= now:
        return "expired"
    return "pending"


async def _members_page(request: Request, db: AsyncSession, web: WebContext, *,
                        status_code: int = 200, error: str | None = None,
                        invite_form: dict[str, str] | None = None,
                        invite_errors: dict[str, str] | None = None,
                        created_link: str | None = None,
                        created_invitation: Invitation | None = None) -> HTMLResponse:
    ctx = web.ctx
    base = f"/o/{ctx.org_slug}/members"
    members = await service.list_members(db, ctx)
    can_manage = ctx.has(Scope.MEMBERS_WRITE)
    invitations: PageOf[Invitation] | None = None
    if can_manage:
        invitations = paginate(await service.list_invitations(db, ctx), request, base=base,
                               param="invitations_page",
                               keep={"page": request.query_params.get("page", "")})
    return render(request, "members/members.html", principal=web.principal, ctx=ctx,
                  status_code=status_code, error=error,
                  members=paginate(members, request, base=base, keep={
                      "invitations_page": request.query_params.get("invitations_page", "")}),
                  admin_count=sum(1 for m in members if m.role == Role.ADMIN),
                  can_manage=can_manage, roles=ROLES, invitations=invitations,
                  invitation_state=invitation_state, now=utcnow(),
                  inviters=_user_emails(members),
                  invite_form=invite_form or {"email": "", "role": "viewer"},
                  invite_errors=invite_errors or {}, created_link=created_link,
                  created_invitation=created_invitation)


@router.get("/o/{org}/members", response_class=HTMLResponse)
async def members_page(request: Request, db: DB,
                       web: Annotated[WebContext, WebTenant(Scope.MEMBERS_READ)]
                       ) -> HTMLResponse:
    """Members with their roles (every member); role changes, removal and invitations for
    admins (members:write)."""
    return await _members_page(request, db, web)


@router.post("/o/{org}/members/{user_id}/role", response_class=HTMLResponse)
async def change_member_role(request: Request, user_id: uuid.UUID, db: DB,
                             web: Annotated[WebContext, WebTenant(Scope.MEMBERS_WRITE)]
                             ) -> Response:
    """Change a member's role; the last admin cannot be demoted (409, shown on the page)."""
    form = await _form(request)
    try:
        body = MemberUpdate.model_validate({"role": form.get("role", "")})
        await service.change_role(db, web.ctx, user_id, Role(body.role))
    except ValidationError:
        return await _members_page(request, db, web, status_code=422,
                                   error=f"Choose one of the roles: {', '.join(ROLES)}.")
    except AppError as exc:
        await rollback_for_page(db, exc)
        return await _members_page(request, db, web, status_code=exc.status_code,
                                   error=exc.message)
    return _after_member_change(web, user_id, Role(body.role))


@router.post("/o/{org}/members/{user_id}/remove", response_class=HTMLResponse)
async def remove_member(request: Request, user_id: uuid.UUID, db: DB,
                        web: Annotated[WebContext, WebTenant(Scope.MEMBERS_WRITE)]) -> Response:
    """Remove a member; the last admin cannot be removed (409, shown on the page)."""
    try:
        await service.remove_member(db, web.ctx, user_id)
    except AppError as exc:
        await rollback_for_page(db, exc)
        return await _members_page(request, db, web, status_code=exc.status_code,
                                   error=exc.message)
    return _after_member_change(web, user_id, None)


@router.post("/o/{org}/members/{user_id}/disable", response_class=HTMLResponse)
async def disable_member(request: Request, user_id: uuid.UUID, db: DB,
                         web: Annotated[WebContext, WebTenant(Scope.MEMBERS_WRITE)]) -> Response:
    """Disable a member's access to this organization (409 for the last enabled admin and
    403 for yourself, shown on the page)."""
    return await _set_disabled(request, db, web, user_id, True)


@router.post("/o/{org}/members/{user_id}/enable", response_class=HTMLResponse)
async def enable_member(request: Request, user_id: uuid.UUID, db: DB,
                        web: Annotated[WebContext, WebTenant(Scope.MEMBERS_WRITE)]) -> Response:
    """Re-enable a disabled member."""
    return await _set_disabled(request, db, web, user_id, False)


async def _set_disabled(request: Request, db: AsyncSession, web: WebContext,
                        user_id: uuid.UUID, disabled: bool) -> Response:
    try:
        await service.set_member_disabled(db, web.ctx, user_id, disabled)
    except AppError as exc:
        await rollback_for_page(db, exc)
        return await _members_page(request, db, web, status_code=exc.status_code,
                                   error=exc.message)
    return RedirectResponse(f"/o/{web.ctx.org_slug}/members", status_code=303)


def _after_member_change(web: WebContext, user_id: uuid.UUID, role: Role | None) -> Response:
    """Back to the members page -- or to the landing page when admins removed themselves."""
    if user_id == web.principal.user_id and role is None:
        return RedirectResponse("/", status_code=303)
    return RedirectResponse(f"/o/{web.ctx.org_slug}/members", status_code=303)


@router.post("/o/{org}/invitations", response_class=HTMLResponse)
async def create_invitation(request: Request, db: DB,
                            web: Annotated[WebContext, WebTenant(Scope.MEMBERS_WRITE)]
                            ) -> HTMLResponse:
    """Invite someone by email; the page shows the accept link once (201)."""
    form = await _form(request)
    typed = {"email": form.get("email", "")[:300], "role": form.get("role", "")}
    try:
        body = InvitationCreate.model_validate(typed)
        token, invitation = await service.create_invitation(
            db, web.ctx, email=body.email, role=Role(body.role),
            base_url=request.app.state.settings.base_url)
    except ValidationError as exc:
        return await _members_page(request, db, web, status_code=422, invite_form=typed,
                                   invite_errors=field_errors(exc))
    except AppError as exc:
        await db.rollback()
        return await _members_page(request, db, web, status_code=exc.status_code,
                                   invite_form=typed,
                                   invite_errors=app_error_fields(exc, "email"))
    base = request.app.state.settings.base_url.rstrip("/")
    return await _members_page(request, db, web, status_code=201,
                               created_link=f"{base}/invitations/accept#{token}",
                               created_invitation=invitation)


@router.post("/o/{org}/invitations/{invitation_id}/revoke", response_class=HTMLResponse)
async def revoke_invitation(request: Request, invitation_id: uuid.UUID, db: DB,
                            web: Annotated[WebContext, WebTenant(Scope.MEMBERS_WRITE)]
                            ) -> Response:
    """Revoke an invitation so its link stops working."""
    try:
        await service.revoke_invitation(db, web.ctx, invitation_id)
    except AppError as exc:
        await rollback_for_page(db, exc)
        return await _members_page(request, db, web, status_code=exc.status_code,
                                   error=exc.message)
    return RedirectResponse(f"/o/{web.ctx.org_slug}/members#invitations", status_code=303)


# --- organization settings and API keys --------------------------------------------------------


@router.get("/o/{org}/settings", response_class=HTMLResponse)
async def settings_page(request: Request, db: DB,
                        web: Annotated[WebContext, WebTenant(Scope.SETTINGS_READ)]
                        ) -> HTMLResponse:
    """The organization as the platform knows it (read-only) and its settings pages."""
    organization = await get_org(db, web.ctx.org_id)
    if organization is None:
        raise NotFound()
    return render(request, "settings/overview.html", principal=web.principal, ctx=web.ctx,
                  organization=organization)


EXPIRY_CHOICES = (("7", "7 days"), ("30", "30 days"), ("90", "90 days"), ("365", "1 year"),
                  ("never", "Never"))


async def _api_keys_page(request: Request, db: AsyncSession, web: WebContext, *,
                         status_code: int = 200, error: str | None = None,
                         key_form: dict[str, str] | None = None,
                         key_errors: dict[str, str] | None = None,
                         created_token: str | None = None,
                         created_key: ApiKey | None = None) -> HTMLResponse:
    ctx = web.ctx
    keys = await auth_service.list_api_keys(db, ctx)
    members = await service.list_members(db, ctx)
    return render(request, "settings/api_keys.html", principal=web.principal, ctx=ctx,
                  status_code=status_code, error=error,
                  keys=paginate(keys, request, base=f"/o/{ctx.org_slug}/settings/api-keys"),
                  creators=_user_emails(members), key_names={k.id: k.name for k in keys},
                  now=utcnow(), roles=ROLES,
                  expiry_choices=EXPIRY_CHOICES,
                  key_form=key_form or {"name": "", "role": "viewer", "expires_in_days": "90"},
                  key_errors=key_errors or {}, created_token=created_token,
                  created_key=created_key, can_write=ctx.has(Scope.APIKEYS_WRITE))


@router.get("/o/{org}/settings/api-keys", response_class=HTMLResponse)
async def api_keys_page(request: Request, db: DB,
                        web: Annotated[WebContext, WebTenant(Scope.APIKEYS_READ)]
                        ) -> HTMLResponse:
    """The organization's API keys: name, role, last characters, who created them (and
    through which key), last use, expiry."""
    return await _api_keys_page(request, db, web)


KEY_NAME_MISSING = ("Give the key a name that says who or what uses it, e.g. 'CI deploys' or "
                    "'nightly report': the list of keys shows it, and so does the audit log.")


@router.post("/o/{org}/settings/api-keys", response_class=HTMLResponse)
async def create_api_key(request: Request, db: DB,
                         web: Annotated[WebContext, WebTenant(Scope.APIKEYS_WRITE)]
                         ) -> HTMLResponse:
    """Create a key; the page shows the token once (201) and never again."""
    form = await _form(request)
    typed = {"name": form.get("name", "")[:200], "role": form.get("role", ""),
             "expires_in_days": form.get("expires_in_days", "")}
    expiry: int | str | None = typed["expires_in_days"]
    if expiry == "never":
        expiry = None
    elif isinstance(expiry, str) and (days := ascii_int_or_none(expiry)) is not None:
        expiry = days
    if not typed["name"].strip():
        return await _api_keys_page(request, db, web, status_code=422, key_form=typed,
                                    key_errors={"name": KEY_NAME_MISSING})
    try:
        body = ApiKeyCreate.model_validate({"name": typed["name"], "role": typed["role"],
                                            "expires_in_days": expiry})
        expires = (utcnow() + timedelta(days=body.expires_in_days)
                   if body.expires_in_days else None)
        token, key = await auth_service.create_api_key(
            db, web.ctx, name=body.name, role=Role(body.role), expires_at=expires,
            actor=web.principal)
    except ValidationError as exc:
        return await _api_keys_page(request, db, web, status_code=422, key_form=typed,
                                    key_errors=field_errors(exc))
    except AppError as exc:
        await db.rollback()
        return await _api_keys_page(request, db, web, status_code=exc.status_code,
                                    key_form=typed, key_errors=app_error_fields(exc, "role"))
    return await _api_keys_page(request, db, web, status_code=201, created_token=token,
                                created_key=key)


@router.post("/o/{org}/settings/api-keys/{key_id}/revoke", response_class=HTMLResponse)
async def revoke_api_key(request: Request, key_id: uuid.UUID, db: DB,
                         web: Annotated[WebContext, WebTenant(Scope.APIKEYS_WRITE)]
                         ) -> Response:
    """Revoke a key and the keys created with it: they stop working on their next request."""
    await auth_service.revoke_api_key(db, web.ctx, key_id, actor=web.principal)
    return RedirectResponse(f"/o/{web.ctx.org_slug}/settings/api-keys", status_code=303)
