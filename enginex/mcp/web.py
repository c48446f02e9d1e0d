"""Dashboard pages of MCP servers.

* ``/o/{org}/settings/mcp`` (settings:read): the organization's servers and their discovered
  tools. Admins (settings:write) add a remote server (name, URL, headers as
  ``Header: credential-name`` lines) or a catalog server (an entry, ``VAR: credential-name``
  lines), refresh the tools, enable or disable a tool, and delete a server.
* ``/admin/mcp-catalog`` (platform admin): the catalog of approved stdio servers; list, add,
  delete.

Both build the request body through the API's pydantic models (``ServerCreate``,
``CatalogEntryCreate``) and call the same service functions, so the pages check exactly what
the API checks; errors re-render the page with the message.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.credentials.api import keyring
from enginex.kit.errors import AppError, NotFound, TooManyRequests, ValidationFailed
from enginex.mcp import service
from enginex.mcp.api import allow_private, start_timeout, stdio_user
from enginex.mcp.schemas import CatalogEntryCreate, ServerCreate
from enginex.tenancy.guards import DB, make_router
from enginex.tenancy.principal import UserPrincipal
from enginex.tenancy.scopes import Scope
from enginex.web.errors import rollback_for_page
from enginex.web.templating import render
from enginex.web.tenant import WebContext, WebPlatformAdmin, WebTenant

router = make_router(tags=["dashboard"])

Reader = Annotated[WebContext, WebTenant(Scope.SETTINGS_READ)]
Writer = Annotated[WebContext, WebTenant(Scope.SETTINGS_WRITE)]
Admin = Annotated[UserPrincipal, WebPlatformAdmin()]
NOTICES = {"created": "MCP server added. Refresh it to discover its tools.",
           "refreshed": "Tools refreshed.", "deleted": "MCP server deleted.",
           "tool": "Tool updated.", "catalog_created": "Catalog entry added.",
           "catalog_deleted": "Catalog entry deleted."}
MAX_LINES = 50


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _messages(exc: ValidationError) -> str:
    """A pydantic error as one line per problem, ``field: what is wrong``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}"
                     for e in exc.errors())


def _pairs(text: str, field: str, separator: str = ":") -> dict[str, str]:
    """``Name: value`` lines as a mapping; AppError naming the line that does not fit."""
    pairs: dict[str, str] = {}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > MAX_LINES:
        raise ValidationFailed(f"{field}: at most {MAX_LINES} lines.", details={"field": field})
    for number, line in enumerate(lines, start=1):
        name, sep, value = line.partition(separator)
        if not sep or not name.strip() or not value.strip():
            raise ValidationFailed(
                f"{field}: line {number} should look like 'Name{separator} credential-name'.",
                details={"field": field})
        if name.strip() in pairs:
            raise ValidationFailed(f"{field}: line {number} repeats '{name.strip()}'.",
                                   details={"field": field})
        pairs[name.strip()] = value.strip()
    return pairs


def _server_url(web: WebContext, notice: str | None = None) -> str:
    base = f"/o/{web.ctx.org_slug}/settings/mcp"
    return f"{base}?notice={notice}" if notice else base


async def _page(request: Request, db: AsyncSession, web: WebContext, *, status_code: int = 200,
                error: str | None = None, form: dict[str, str] | None = None,
                result: str | None = None) -> HTMLResponse:
    ctx = web.ctx
    notice = NOTICES.get(request.query_params.get("notice", "")) if status_code == 200 else None
    return render(request, "settings/mcp.html", principal=web.principal, ctx=ctx,
                  status_code=status_code, error=error, notice=notice, result=result,
                  servers=await service.list_servers(db, ctx),
                  catalog=await service.list_catalog_entries(db),
                  can_write=ctx.has(Scope.SETTINGS_WRITE), form=form or {})


@router.get("/o/{org}/settings/mcp", response_class=HTMLResponse)
async def mcp_page(request: Request, db: DB, web: Reader) -> HTMLResponse:
    """The organization's MCP servers and their tools."""
    return await _page(request, db, web)


@router.post("/o/{org}/settings/mcp", response_class=HTMLResponse)
async def add_server(request: Request, db: DB, web: Writer) -> Response:
    """Add a remote (http) or catalog (stdio) server."""
    form = await _form(request)
    kept = {k: form.get(k, "")[:4000] for k in ("transport", "name", "url", "headers",
                                               "catalog_entry", "env")}
    transport = kept["transport"]
    try:
        fields: dict[str, Any] = {"name": kept["name"].strip(), "transport": transport}
        if transport == "http":
            fields["url"] = kept["url"].strip() or None
            fields["headers"] = {k: {"credential": v}
                                 for k, v in _pairs(kept["headers"], "headers").items()}
        else:
            fields["catalog_entry"] = kept["catalog_entry"].strip() or None
            fields["env"] = _pairs(kept["env"], "env")
        try:
            body = ServerCreate.model_validate(fields)
        except ValidationError as exc:
            raise ValidationFailed(_messages(exc)) from None
        await service.create_server(
            db, web.ctx, name=body.name, transport=body.transport, url=body.url,
            headers={k: v.model_dump(exclude_none=True) for k, v in body.headers.items()},
            catalog_entry=body.catalog_entry, env=dict(body.env), enabled=body.enabled,
            actor=web.principal, allow_private_network=allow_private(request))
    except AppError as exc:
        await db.rollback()
        return await _page(request, db, web, status_code=exc.status_code, error=exc.message,
                           form=kept)
    return RedirectResponse(_server_url(web, "created"), status_code=303)


@router.post("/o/{org}/settings/mcp/{server_id}/refresh", response_class=HTMLResponse)
async def refresh_server(request: Request, server_id: uuid.UUID, db: DB,
                         web: Writer) -> Response:
    """Connect and list the server's tools; a failure shows its reason. While another
    refresh of the organization runs, the page says so (429)."""
    try:
        async with service.refresh_slot(web.ctx.org_id):
            plan = await service.prepare_refresh(db, web.ctx, server_id,
                                                 keyring=keyring(request),
                                                 allow_private_network=allow_private(request),
                                                 stdio_user=stdio_user(request),
                                                 start_timeout_seconds=start_timeout(request))
            await db.commit()  # no transaction stays open while the server answers
            outcome = await service.discover_tools(plan)
            view, ok, message = await service.store_refresh(db, web.ctx, server_id, outcome,
                                                            actor=web.principal)
    except TooManyRequests as exc:
        await db.rollback()
        page = await _page(request, db, web, status_code=exc.status_code, error=exc.message)
        page.headers.update(exc.headers)
        return page
    if not ok:
        return await _page(request, db, web, status_code=200,
                           result=f"{view.server.name}: the tools could not be listed: {message}")
    return RedirectResponse(_server_url(web, "refreshed"), status_code=303)


@router.post("/o/{org}/settings/mcp/{server_id}/tools/{tool_name}",
             response_class=HTMLResponse)
async def toggle_tool(request: Request, server_id: uuid.UUID, tool_name: str, db: DB,
                      web: Writer) -> Response:
    """Enable (form field ``enabled=1``) or disable a discovered tool."""
    form = await _form(request)
    try:
        await service.set_tool_enabled(db, web.ctx, server_id, tool_name[:128],
                                       form.get("enabled") == "1", actor=web.principal)
    except NotFound as exc:
        if exc.message == NotFound().message:
            raise
        await db.rollback()
        return await _page(request, db, web, status_code=404, error=exc.message)
    return RedirectResponse(_server_url(web, "tool"), status_code=303)


@router.post("/o/{org}/settings/mcp/{server_id}/delete", response_class=HTMLResponse)
async def delete_server(request: Request, server_id: uuid.UUID, db: DB,
                        web: Writer) -> Response:
    """Delete a server; agents naming its tools fail from then on."""
    await service.delete_server(db, web.ctx, server_id, actor=web.principal)
    return RedirectResponse(_server_url(web, "deleted"), status_code=303)


# --- platform catalog -----------------------------------------------------------------------


async def _catalog_page(request: Request, db: AsyncSession, principal: UserPrincipal, *,
                        status_code: int = 200, error: str | None = None,
                        form: dict[str, str] | None = None) -> HTMLResponse:
    notice = NOTICES.get(request.query_params.get("notice", "")) if status_code == 200 else None
    return render(request, "admin/mcp_catalog.html", principal=principal,
                  status_code=status_code, entries=await service.list_catalog_entries(db),
                  error=error, notice=notice, form=form or {})


@router.get("/admin/mcp-catalog", response_class=HTMLResponse)
async def catalog_page(request: Request, db: DB, principal: Admin) -> HTMLResponse:
    """The stdio MCP servers organizations may run, with their command lines and bounds."""
    return await _catalog_page(request, db, principal)


@router.post("/admin/mcp-catalog", response_class=HTMLResponse)
async def add_catalog_entry(request: Request, db: DB, principal: Admin) -> Response:
    """Add a catalog entry: arguments and allowed variables one per line."""
    form = await _form(request)
    kept = {k: form.get(k, "")[:4000] for k in ("name", "description", "command", "args",
                                               "allowed_env", "timeout_seconds", "memory_mb",
                                               "network")}
    try:
        body = CatalogEntryCreate.model_validate({
            "name": kept["name"], "description": kept["description"],
            "command": kept["command"],
            "args": [a.strip() for a in kept["args"].splitlines() if a.strip()],
            "allowed_env": [a.strip() for a in kept["allowed_env"].splitlines() if a.strip()],
            "timeout_seconds": int(kept["timeout_seconds"] or 60),
            "memory_mb": int(kept["memory_mb"] or 512),
            "network": kept["network"] == "1"})
    except (ValidationError, ValueError) as exc:
        message = (_messages(exc) if isinstance(exc, ValidationError)
                   else "timeout_seconds and memory_mb must be whole numbers.")
        return await _catalog_page(request, db, principal, status_code=422, error=message,
                                   form=kept)
    try:
        await service.create_catalog_entry(
            db, name=body.name, description=body.description, command=body.command,
            args=list(body.args), allowed_env=list(body.allowed_env),
            timeout_seconds=body.timeout_seconds, memory_mb=body.memory_mb,
            network=body.network, actor_id=principal.user_id)
    except AppError as exc:
        await db.rollback()
        return await _catalog_page(request, db, principal, status_code=exc.status_code,
                                   error=exc.message, form=kept)
    return RedirectResponse("/admin/mcp-catalog?notice=catalog_created", status_code=303)


@router.post("/admin/mcp-catalog/{entry_id}/delete", response_class=HTMLResponse)
async def delete_catalog_entry(request: Request, entry_id: uuid.UUID, db: DB,
                               principal: Admin) -> Response:
    """Delete an entry no organization uses; otherwise say how many servers use it."""
    try:
        await service.delete_catalog_entry(db, entry_id, actor_id=principal.user_id)
    except AppError as exc:
        await rollback_for_page(db, exc)
        return await _catalog_page(request, db, principal, status_code=exc.status_code,
                                   error=exc.message)
    return RedirectResponse("/admin/mcp-catalog?notice=catalog_deleted", status_code=303)
