"""Dashboard page of the organization's exports: ``/o/{org}/settings/exports`` (org admins,
``data:export``). Lists exports with their progress (the page reloads itself every few
seconds while one is being prepared), asks for a new one, and downloads a finished one
through a fresh single-use link (the same service functions as the API).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from enginex.kit.errors import AppError
from enginex.lifecycle import service
from enginex.lifecycle.api import download_path
from enginex.tenancy.guards import DB, make_router
from enginex.tenancy.scopes import Scope
from enginex.web.templating import render
from enginex.web.tenant import WebContext, WebTenant

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
