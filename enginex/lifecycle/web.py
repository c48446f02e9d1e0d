"""Dashboard pages of the data life cycle.

* ``/o/{org}/settings/data`` (org admins, ``org:write``): retention, records of processing,
  deleting the organization (password and slug to confirm).
* ``/o/{org}/settings/exports`` (org admins, ``data:export``): the organization's exports with
  their progress (the page reloads itself every few seconds while one is being prepared),
  asks for a new one, and downloads a finished one through a fresh single-use link.
* Platform admins: ``/admin/deletions`` (scheduled deletions with Restore, tombstones),
  ``/admin/tenants/{id}/delete`` (delete with the grace period), ``/admin/records``.

The pages call the same service functions as the API.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from enginex.admin.service import access_tenant
from enginex.kit.errors import AppError, ValidationFailed
from enginex.lifecycle import deletion, retention, service
from enginex.lifecycle.api import download_path, records_for
from enginex.orgs.repository import list_orgs
from enginex.tenancy.guards import DB, make_router
from enginex.tenancy.principal import UserPrincipal
from enginex.tenancy.scopes import Scope
from enginex.web.templating import render
from enginex.web.tenant import WebContext, WebPlatformAdmin, WebTenant

router = make_router(tags=["dashboard"])

Exporter = Annotated[WebContext, WebTenant(Scope.DATA_EXPORT)]
NOTICES = {"requested": "Export requested: a worker is preparing it."}


async def _page(request: Request, db: DB, web: WebContext, *, status_code: int = 200,
                error: str | None = None) -> HTMLResponse:
    exports = await service.list_exports(db, web.ctx)
    active = any(e.status in service.ACTIVE for e in exports)
    return render(request, "settings/exports.html", principal=web.principal, ctx=web.ctx,
                  exports=exports, active=active, error=error,
                  notice=NOTICES.get(request.query_params.get("notice", "")),
                  retention_days=request.app.state.settings.export_retention_days,
                  status_code=status_code)


@router.get("/o/{org}/settings/exports", response_class=HTMLResponse)
async def exports_page(request: Request, db: DB, web: Exporter) -> HTMLResponse:
    """The organization's exports with their progress."""
    return await _page(request, db, web)


@router.post("/o/{org}/settings/exports", response_class=HTMLResponse)
async def request_export(request: Request, db: DB, web: Exporter) -> Response:
    """Ask for a new export (409 re-renders with the message while one is pending)."""
    try:
        await service.request_export(db, web.ctx)
    except AppError as exc:
        await db.rollback()
        return await _page(request, db, web, status_code=exc.status_code, error=exc.message)
    return RedirectResponse(f"/o/{web.ctx.org_slug}/settings/exports?notice=requested",
                            status_code=303)


@router.post("/o/{org}/settings/exports/{export_id}/download", response_class=HTMLResponse)
async def download_export(request: Request, export_id: uuid.UUID, db: DB,
                          web: Exporter) -> Response:
    """Make a single-use link and send the browser to it (the archive downloads)."""
    try:
        token, _ = await service.create_link(
            db, web.ctx, export_id, minutes=request.app.state.settings.export_link_minutes)
    except AppError as exc:
        if exc.status_code == 404:
            raise
        await db.rollback()
        return await _page(request, db, web, status_code=exc.status_code, error=exc.message)
    await db.commit()
    return RedirectResponse(download_path(web.ctx.org_slug, token), status_code=303)


# --- retention, records of processing and deletion (org admins) ---------------------------

OrgAdminWeb = Annotated[WebContext, WebTenant(Scope.ORG_WRITE)]


async def _data_page(request: Request, db: DB, web: OrgAdminWeb, *, status_code: int = 200,
                     errors: dict[str, str] | None = None,
                     form: dict[str, str] | None = None,
                     notice: str | None = None) -> HTMLResponse:
    settings = request.app.state.settings
    policy = await retention.get_policy(db, web.ctx.org_id)
    values = form or {
        "session_days": str(policy.session_days) if policy and policy.session_days else "",
        "audit_days": str(policy.audit_days) if policy and policy.audit_days else ""}
    return render(request, "settings/data.html", principal=web.principal, ctx=web.ctx,
                  policy=policy, records=records_for(request, policy), form=values,
                  errors=errors or {}, notice=notice, status_code=status_code,
                  audit_min_days=settings.audit_retention_min_days,
                  grace_days=settings.deletion_grace_days)


@router.get("/o/{org}/settings/data", response_class=HTMLResponse)
async def data_page(request: Request, db: DB, web: OrgAdminWeb) -> HTMLResponse:
    """Retention settings, the records of processing and the deletion of the organization."""
    notice = "Retention saved." if request.query_params.get("notice") == "saved" else None
    return await _data_page(request, db, web, notice=notice)


def _days_field(raw: str, name: str) -> int | None:
    raw = raw.strip()
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit():
        raise ValidationFailed(f"{name}: give a whole number of days, or leave it empty to "
                               "keep until deleted by hand.", details={"field": name})
    return int(raw)


@router.post("/o/{org}/settings/data/retention", response_class=HTMLResponse)
async def save_retention(request: Request, db: DB, web: OrgAdminWeb) -> Response:
    """Save the retention (422 re-renders the form with the message)."""
    submitted = await request.form()
    form = {k: str(submitted.get(k) or "")[:12] for k in ("session_days", "audit_days")}
    try:
        await retention.set_policy(
            db, web.ctx, session_days=_days_field(form["session_days"], "session_days"),
            audit_days=_days_field(form["audit_days"], "audit_days"),
            audit_min_days=request.app.state.settings.audit_retention_min_days)
    except AppError as exc:
        await db.rollback()
        field = str(exc.details.get("field") or "form")
        return await _data_page(request, db, web, status_code=exc.status_code,
                                errors={field: exc.message}, form=form)
    return RedirectResponse(f"/o/{web.ctx.org_slug}/settings/data?notice=saved",
                            status_code=303)


@router.post("/o/{org}/settings/data/delete", response_class=HTMLResponse)
async def delete_organization_page(request: Request, db: DB, web: OrgAdminWeb) -> Response:
    """Delete the organization (password and slug to confirm): it is suspended at once; the
    answer is a page that says when it will be deleted for good."""
    submitted = await request.form()
    password = str(submitted.get("password") or "")[:1024]
    confirm = str(submitted.get("confirm") or "").strip()[:40]
    try:
        if confirm != web.ctx.org_slug:
            raise ValidationFailed("confirm: type the organization's slug to confirm its "
                                   "deletion.", details={"field": "confirm"})
        await deletion.reauthenticate(db, web.principal, password)
        org = await access_tenant(db, web.ctx.org_id)
        scheduled = await deletion.schedule_deletion(
            db, org, requester=deletion.Requester("org_admin", web.principal.user_id),
            grace=timedelta(days=request.app.state.settings.deletion_grace_days))
    except AppError as exc:
        await db.rollback()
        field = str(exc.details.get("field") or "delete")
        return await _data_page(request, db, web, status_code=exc.status_code,
                                errors={field: exc.message})
    return render(request, "settings/deletion_scheduled.html", principal=web.principal,
                  ctx=web.ctx, deletion=scheduled, status_code=202)


# --- platform admin: deletions (restore), delete with the grace period, records ------------

AdminWeb = Annotated[UserPrincipal, WebPlatformAdmin()]


@router.get("/admin/deletions", response_class=HTMLResponse)
async def deletions_page(request: Request, db: DB, principal: AdminWeb) -> HTMLResponse:
    """Scheduled deletions (with Restore), running ones, restored ones and tombstones."""
    slugs = {o.id: o.slug for o in await list_orgs(db)}
    return render(request, "admin/deletions.html", principal=principal,
                  deletions=await deletion.list_deletions(db), slugs=slugs,
                  notice=request.query_params.get("notice", "")[:80])


@router.get("/admin/tenants/{tenant_id}/delete", response_class=HTMLResponse)
async def confirm_delete_page(request: Request, tenant_id: uuid.UUID, db: DB,
                              principal: AdminWeb) -> HTMLResponse:
    """The confirmation step before deleting a tenant (with the grace period)."""
    org = await access_tenant(db, tenant_id)
    return render(request, "admin/confirm_delete.html", principal=principal, org=org,
                  error=None, grace_days=request.app.state.settings.deletion_grace_days)


@router.post("/admin/tenants/{tenant_id}/delete", response_class=HTMLResponse)
async def delete_tenant_page(request: Request, tenant_id: uuid.UUID, db: DB,
                             principal: AdminWeb) -> Response:
    """Schedule the tenant's deletion (form field ``confirm``: its slug)."""
    org = await access_tenant(db, tenant_id)
    confirm = str((await request.form()).get("confirm") or "").strip()[:40]
    grace_days = request.app.state.settings.deletion_grace_days
    try:
        if confirm != org.slug:
            raise ValidationFailed("confirm: type the tenant's slug to confirm its deletion.",
                                   details={"field": "confirm"})
        await deletion.schedule_deletion(
            db, org, requester=deletion.Requester("platform_admin", principal.user_id),
            grace=timedelta(days=grace_days))
    except AppError as exc:
        await db.rollback()
        org = await access_tenant(db, tenant_id)
        return render(request, "admin/confirm_delete.html", principal=principal, org=org,
                      error=exc.message, grace_days=grace_days,
                      status_code=exc.status_code)
    return RedirectResponse("/admin/deletions?notice=scheduled", status_code=303)


@router.post("/admin/tenants/{tenant_id}/restore", response_class=HTMLResponse)
async def restore_tenant_page(request: Request, tenant_id: uuid.UUID, db: DB,
                              principal: AdminWeb) -> Response:
    """Restore a tenant scheduled for deletion, then back to the deletions page."""
    try:
        await deletion.restore_deletion(db, tenant_id, actor_id=principal.user_id)
    except AppError as exc:
        if exc.status_code == 404:
            raise
        await db.rollback()
        slugs = {o.id: o.slug for o in await list_orgs(db)}
        return render(request, "admin/deletions.html", principal=principal,
                      deletions=await deletion.list_deletions(db), slugs=slugs,
                      notice="", error=exc.message, status_code=exc.status_code)
    return RedirectResponse("/admin/deletions?notice=restored", status_code=303)


@router.get("/admin/records", response_class=HTMLResponse)
async def records_page(request: Request, db: DB, principal: AdminWeb) -> HTMLResponse:
    """Records of processing of every tenant, from each one's retention settings."""
    rows = [(org, policy, records_for(request, policy))
            for org, policy in await retention.list_policies(db)]
    return render(request, "admin/records.html", principal=principal, rows=rows)
