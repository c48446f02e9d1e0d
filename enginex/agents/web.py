"""Dashboard pages of the agent catalog: ``/o/{org}/agents`` (list and upload) and
``/o/{org}/agents/{agent_key}`` (versions, diff, deprecate).

Every member (agents:read) reads; builders and admins (agents:write) upload and deprecate.
Uploading is a plain multipart form (the drag-and-drop zone in static/agents.js only fills
its file field); an invalid package re-renders the catalog with every problem and its path.
An agent or version of another organization gives the same not-found page as a random one.
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import UploadFile

from enginex.agents import service
from enginex.agents.package import DEFAULT_LIMITS, PackageInvalid, PackageProblem
from enginex.kit.errors import AppError, NotFound
from enginex.llm import service as llm_service
from enginex.orgs import service as orgs_service
from enginex.orgs.web import paginate
from enginex.tenancy.guards import DB, make_router
from enginex.tenancy.scopes import Scope
from enginex.web.templating import render
from enginex.web.tenant import WebContext, WebTenant

router = make_router(tags=["dashboard"])

UPLOAD_FIELD = "package"
MAX_VERSION_LENGTH = 64
# What the agent page says after a redirect; shown only for versions that exist.
NOTICES = (("deployed", "Version {} deployed."),
           ("unchanged", "Version {} was already deployed with identical content; nothing "
                         "changed."),
           ("deprecated", "Version {} is deprecated: new sessions no longer start it by "
                          "default."))


def _agent_url(org: str, agent_key: str) -> str:
    return f"/o/{org}/agents/{quote(agent_key, safe='')}"


async def _catalog(request: Request, db: AsyncSession, web: WebContext, *,
                   status_code: int = 200, upload_error: str | None = None,
                   problems: list[PackageProblem] | None = None,
                   filename: str = "") -> HTMLResponse:
    agents = await service.list_agents(db, web.ctx)
    return render(request, "agents/catalog.html", principal=web.principal, ctx=web.ctx,
                  status_code=status_code,
                  agents=paginate(agents, request, base=f"/o/{web.ctx.org_slug}/agents"),
                  can_upload=web.ctx.has(Scope.AGENTS_WRITE), upload_error=upload_error,
                  can_start=web.ctx.has(Scope.RUNS_WRITE),
                  problems=problems or [], filename=filename, agent_url=_agent_url,
                  max_bytes=DEFAULT_LIMITS.max_compressed_bytes)


@router.get("/o/{org}/agents", response_class=HTMLResponse)
async def catalog(request: Request, db: DB,
                  web: Annotated[WebContext, WebTenant(Scope.AGENTS_READ)]) -> HTMLResponse:
    """The organization's agents with their latest version; the upload form for builders."""
    return await _catalog(request, db, web)


@router.post("/o/{org}/agents", response_class=HTMLResponse)
async def upload(request: Request, db: DB,
                 web: Annotated[WebContext, WebTenant(Scope.AGENTS_WRITE)]) -> Response:
    """Deploy an uploaded package (.zip or .tar.gz) and go to its agent page.

    Re-renders the catalog with the problems when the file is missing, too large or not a
    valid package (422, every problem with its path), or when that version already exists
    with other content (409). Nothing is stored unless the whole package is valid.
    """
    form = await request.form()
    upload = form.get(UPLOAD_FIELD)
    if not isinstance(upload, UploadFile) or not upload.filename:
        await form.close()
        return await _catalog(request, db, web, status_code=422,
                              upload_error="Choose a package file (.zip or .tar.gz) first.")
    filename = upload.filename[:200]
    limit = DEFAULT_LIMITS.max_compressed_bytes
    try:
        data = await upload.read(limit + 1)
    finally:
        await form.close()  # the spooled upload's temporary file
    if len(data) > limit:
        return await _catalog(request, db, web, status_code=413, filename=filename,
                              upload_error=f"{filename} is larger than {limit // 1024 // 1024}"
                                           " MiB. Remove files the package does not need.")
    if not data:
        return await _catalog(request, db, web, status_code=422, filename=filename,
                              upload_error=f"{filename} is empty.")
    try:
        package = await service.load_package(data)
    except PackageInvalid as exc:
        count = len(exc.errors)
        return await _catalog(request, db, web, status_code=422, filename=filename,
                              problems=exc.errors,
                              upload_error=f"{filename} is not a valid agent package "
                                           f"({count} problem{'s' if count != 1 else ''}). "
                                           "Fix every problem below and upload it again; "
                                           "nothing was deployed.")
    try:
        version, created = await service.deploy_package(db, web.ctx, package,
                                                         actor=web.principal)
    except AppError as exc:
        await db.rollback()
        return await _catalog(request, db, web, status_code=exc.status_code,
                              filename=filename, upload_error=exc.message)
    outcome = "deployed" if created else "unchanged"
    target = _agent_url(web.ctx.org_slug, package.manifest.agent.id)
    return RedirectResponse(f"{target}?{outcome}={quote(version.version, safe='')}#versions",
                            status_code=303)


def _shown(value: Any) -> str:
    """A manifest value as one line of text for the diff table."""
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@router.get("/o/{org}/agents/{agent_key}", response_class=HTMLResponse)
async def agent_page(request: Request, agent_key: str, db: DB,
                     web: Annotated[WebContext, WebTenant(Scope.AGENTS_READ)]) -> HTMLResponse:
    """One agent: its versions (newest first), the diff between two of them
    (``?from=&to=``), deprecation for builders, and a link to start a session."""
    ctx = web.ctx
    summary, versions = await service.get_agent(db, ctx, agent_key)
    newest_first = sorted(versions, key=lambda v: service.version_key(v.version), reverse=True)
    names = [v.version for v in newest_first]
    base = _agent_url(ctx.org_slug, summary.agent.key)
    params = request.query_params
    diff = None
    diff_error = None
    status_code = 200
    from_version = params.get("from", "")[:MAX_VERSION_LENGTH]
    to_version = params.get("to", "")[:MAX_VERSION_LENGTH]
    if "from" in params or "to" in params:
        unknown = [v for v in (from_version, to_version) if v not in names]
        if unknown:
            status_code = 422
            diff_error = (f"'{unknown[0]}' is not a version of {summary.agent.key}; choose "
                          "two of the versions listed.")
        else:
            try:
                diff = await service.diff_versions(db, ctx, summary.agent.key, from_version,
                                                   to_version)
            except NotFound:  # deleted between the two reads
                status_code, diff_error = 422, "That version no longer exists."
    else:
        from_version = names[1] if len(names) > 1 else (names[0] if names else "")
        to_version = names[0] if names else ""
    members = await orgs_service.list_members(db, ctx)
    latest = newest_first[0] if newest_first else None
    scripted_model = bool(latest is not None and latest.manifest.get("scripted_replies")
                          and await llm_service.resolve_model(db, ctx, "default") is None
                          and await llm_service.get_llm_settings(db, ctx) is None)
    notice = next((text.format(params[key]) for key, text in NOTICES
                   if params.get(key) in names), None)
    return render(request, "agents/agent.html", principal=web.principal, ctx=ctx,
                  status_code=status_code, summary=summary,
                  versions=paginate(newest_first, request, base=base,
                                    keep={"from": params.get("from", ""),
                                          "to": params.get("to", "")}),
                  version_names=names, diff=diff, diff_error=diff_error,
                  from_version=from_version, to_version=to_version, shown=_shown,
                  deployers={m.user_id: m.email for m in members}, notice=notice,
                  base=base, can_write=ctx.has(Scope.AGENTS_WRITE),
                  can_start=ctx.has(Scope.RUNS_WRITE) and not summary.deprecated,
                  scripted_model=scripted_model,
                  can_configure_llm=ctx.has(Scope.SETTINGS_WRITE),
                  start_url=f"/o/{ctx.org_slug}/sessions/new?agent="
                            f"{quote(summary.agent.key, safe='')}")


@router.post("/o/{org}/agents/{agent_key}/versions/{version}/deprecate",
             response_class=HTMLResponse)
async def deprecate(agent_key: str, version: str, db: DB,
                    web: Annotated[WebContext, WebTenant(Scope.AGENTS_WRITE)]) -> Response:
    """Deprecate a version (idempotent): new sessions no longer start it by default."""
    found = await service.deprecate_version(db, web.ctx, agent_key, version,
                                            actor=web.principal)
    return RedirectResponse(f"{_agent_url(web.ctx.org_slug, agent_key)}"
                            f"?deprecated={quote(found.version, safe='')}#versions",
                            status_code=303)
