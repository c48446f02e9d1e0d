"""Platform admin pages: tenants with their counts, worker health, create, suspend/reactivate;
user accounts (disable/enable) and the mail outbox.

Every page is ``WebPlatformAdmin()``: anonymous visitors go to sign-in, everyone else who is
not a platform admin gets the forbidden page. The pages call the same service functions as
``/api/v1/admin/...`` and show tenant metadata and counts only -- never a tenant's members,
sessions, agents, reports or secrets.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from enginex.admin import service
from enginex.admin.schemas import TenantCreate
from enginex.audit.service import record_in_user_orgs
from enginex.kit.errors import AppError, Conflict, ValidationFailed
from enginex.kit.schemas import SLUG_PATTERN
from enginex.mail.service import list_outbox
from enginex.runs.models import ACTIVE, FINISHED, WORKER_HEARTBEAT_SECONDS
from enginex.tenancy.guards import DB, make_router
from enginex.tenancy.principal import UserPrincipal
from enginex.web.templating import is_htmx, render
from enginex.web.tenant import WebPlatformAdmin

router = make_router(tags=["dashboard"])
Admin = Annotated[UserPrincipal, WebPlatformAdmin()]
SESSION_STATUSES = (*ACTIVE, *FINISHED)
CREATE_FIELDS = ("slug", "name", "admin_email", "region")
SlugParam = Annotated[str | None, Query(max_length=40, pattern=SLUG_PATTERN)]


async def _tenants_page(request: Request, db: DB, principal: UserPrincipal, *,
                        after: str | None = None, changed: str | None = None,
                        form: dict[str, str] | None = None,
                        errors: dict[str, str] | None = None,
                        status_code: int = 200) -> HTMLResponse:
    page = await service.list_tenants_page(db, after=after)
    changed_org = await service.find_tenant_by_slug(db, changed) if changed else None
    return render(request, "admin/tenants.html", principal=principal, status_code=status_code,
                  page=page, after=after, changed=changed_org, statuses=SESSION_STATUSES,
                  workers=await service.list_workers(db),
                  heartbeat_seconds=int(WORKER_HEARTBEAT_SECONDS),
                  form=form or {"region": "default"}, errors=errors or {})


@router.get("/admin/tenants", response_class=HTMLResponse)
async def tenants(request: Request, db: DB, principal: Admin, after: SlugParam = None,
                  changed: SlugParam = None) -> HTMLResponse:
    """Tenants (50 a page, slug order) with their counts and status, worker health, and the
    form that creates a tenant."""
    return await _tenants_page(request, db, principal, after=after, changed=changed)


def _field_errors(exc: ValidationError) -> dict[str, str]:
    errors: dict[str, str] = {}
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "form"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "string_pattern_mismatch" and name == "slug":
            message = ("use 1-40 lowercase letters, digits and hyphens, starting and ending "
                       "with a letter or digit")
        elif error["type"] == "string_too_short":
            message = "required"
        errors.setdefault(name, message)
    return errors


@router.post("/admin/tenants", response_class=HTMLResponse)
async def create_tenant(request: Request, db: DB, principal: Admin) -> HTMLResponse:
    """Create a tenant and its first admin: an existing account is added at once, anyone else
    gets an invitation whose link is shown here, once."""
    submitted = await request.form()
    form = {name: str(submitted.get(name) or "").strip() for name in CREATE_FIELDS}
    form["region"] = form["region"] or "default"
    try:
        body = TenantCreate.model_validate(form)
    except ValidationError as exc:
        return await _tenants_page(request, db, principal, form=form,
                                   errors=_field_errors(exc), status_code=422)
    try:
        created = await service.create_tenant(db, slug=body.slug, name=body.name,
                                              admin_email=body.admin_email, region=body.region,
                                              actor_id=principal.user_id,
                                              base_url=request.app.state.settings.base_url)
    except AppError as exc:
        await db.rollback()
        field = str(exc.details.get("field") or "form")
        return await _tenants_page(request, db, principal, form=form,
                                   errors={field: exc.message}, status_code=exc.status_code)
    base = request.app.state.settings.base_url.rstrip("/")
    link = (f"{base}/invitations/accept#{created.invitation_token}"
            if created.invitation_token else None)
    return render(request, "admin/created.html", principal=principal, status_code=201,
                  org=created.org, admin_email=body.admin_email, invitation_url=link)


@router.get("/admin/tenants/{tenant_id}/status", response_class=HTMLResponse)
async def confirm_status(request: Request, tenant_id: uuid.UUID, db: DB, principal: Admin,
                         to: Annotated[Literal["active", "suspended"], Query()] = "suspended"
                         ) -> HTMLResponse:
    """The confirmation step before suspending or reactivating a tenant."""
    org = await service.access_tenant(db, tenant_id)
    summary = await service.summarize_tenant(db, org)
    return render(request, "admin/confirm_status.html", principal=principal, summary=summary,
                  to=to)


@router.post("/admin/tenants/{tenant_id}/status")
async def change_status(request: Request, tenant_id: uuid.UUID, db: DB,
                        principal: Admin) -> Response:
    """Suspend or reactivate (form field ``status``), then back to the list."""
    status = str((await request.form()).get("status") or "")
    if status not in ("active", "suspended"):
        raise ValidationFailed("status: choose 'active' or 'suspended'.",
                               details={"field": "status"})
    org = await service.set_tenant_status(db, tenant_id, status, actor_id=principal.user_id)
    return RedirectResponse(f"/admin/tenants?changed={org.slug}", status_code=303)


@router.get("/admin/workers", response_class=HTMLResponse)
async def workers(request: Request, db: DB, principal: Admin) -> HTMLResponse:
    """Worker health; htmx requests (the tenants page refreshing its panel) get the panel."""
    data: dict[str, Any] = {"workers": await service.list_workers(db),
                            "heartbeat_seconds": int(WORKER_HEARTBEAT_SECONDS)}
    template = "admin/_workers.html" if is_htmx(request) else "admin/workers.html"
    return render(request, template, principal=principal, **data)


@router.get("/admin/users", response_class=HTMLResponse)
async def users(request: Request, db: DB, principal: Admin,
                q: Annotated[str, Query(max_length=254)] = "",
                after: Annotated[str | None, Query(max_length=254)] = None) -> HTMLResponse:
    """Accounts (50 a page, email order), searchable by part of the email."""
    page = await service.list_users_page(db, search=q, after=after)
    return render(request, "admin/users.html", principal=principal, page=page, q=q,
                  after=after)


@router.get("/admin/users/{user_id}", response_class=HTMLResponse)
async def user(request: Request, user_id: uuid.UUID, db: DB, principal: Admin,
               changed: Annotated[Literal["disabled", "enabled"] | None, Query()] = None
               ) -> HTMLResponse:
    """One account, with the button that disables or enables it."""
    found = await service.access_user(db, user_id)
    notice = f"{found.email} is now {changed}." if changed else None
    return render(request, "admin/user.html", principal=principal, user=found, notice=notice)


async def _set_disabled(request: Request, db: DB, principal: UserPrincipal,
                        user_id: uuid.UUID, disabled: bool) -> Response:
    try:
        _, changed = await service.set_user_disabled(db, user_id, disabled,
                                                     actor_id=principal.user_id)
    except Conflict as exc:
        await db.rollback()
        return render(request, "admin/user.html", principal=principal, status_code=409,
                      user=await service.access_user(db, user_id), error=exc.message)
    await db.commit()
    if changed:
        await record_in_user_orgs(request.app.state.db.sessions, user_id,
                                  "user.disabled" if disabled else "user.enabled",
                                  actor_kind="platform_admin", actor_id=principal.user_id)
    state = "disabled" if disabled else "enabled"
    return RedirectResponse(f"/admin/users/{user_id}?changed={state}", status_code=303)


@router.post("/admin/users/{user_id}/disable")
async def disable_user(request: Request, user_id: uuid.UUID, db: DB,
                       principal: Admin) -> Response:
    """Disable the account everywhere (see ``POST /api/v1/admin/users/{id}/disable``)."""
    return await _set_disabled(request, db, principal, user_id, True)


@router.post("/admin/users/{user_id}/enable")
async def enable_user(request: Request, user_id: uuid.UUID, db: DB,
                      principal: Admin) -> Response:
    """Enable the account again."""
    return await _set_disabled(request, db, principal, user_id, False)


@router.get("/admin/outbox", response_class=HTMLResponse)
async def outbox(request: Request, db: DB, principal: Admin) -> HTMLResponse:
    """The newest 200 emails; without ENGINEX_SMTP_URL this is where their links are read."""
    return render(request, "admin/outbox.html", principal=principal,
                  messages=await list_outbox(db),
                  smtp=bool(request.app.state.settings.smtp_url))
