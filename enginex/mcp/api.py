"""REST API of MCP servers.

* ``/api/v1/admin/mcp-catalog`` (platform admin): the stdio servers organizations may run.
* ``/api/v1/orgs/{org}/mcp/catalog`` (settings:read): the catalog as organizations see it --
  name, description, allowed_env; never the command line.
* ``/api/v1/orgs/{org}/mcp/servers[/{server_id}]`` (settings:read reads, settings:write
  writes), ``.../{server_id}/refresh`` and ``.../{server_id}/tools/{tool_name}``.

Another organization's server id answers 404 like a missing one. A refresh that cannot reach
or start the server answers 200 with ``ok: false`` and the reason (also stored in
``last_error``), never a 5xx.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Path, Request, Response, status

from enginex.credentials.api import keyring
from enginex.kit.errors import ValidationFailed
from enginex.mcp import service
from enginex.mcp.client import START_TIMEOUT
from enginex.mcp.schemas import (
    CatalogEntryCreate,
    CatalogEntryOut,
    CatalogEntryPublic,
    RefreshOut,
    ServerCreate,
    ServerOut,
    ServerUpdate,
    ToolOut,
    ToolUpdate,
)
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import DB, PlatformAdmin, Require, make_router
from enginex.tenancy.principal import UserPrincipal
from enginex.tenancy.scopes import Scope

router = make_router(prefix="/api/v1", tags=["mcp"])

Admin = Annotated[UserPrincipal, PlatformAdmin()]
Reader = Annotated[TenantContext, Require(Scope.SETTINGS_READ)]
Writer = Annotated[TenantContext, Require(Scope.SETTINGS_WRITE)]
ToolName = Annotated[str, Path(max_length=128, description="The tool's name on its server")]


def allow_private(request: Request) -> bool:
    return bool(getattr(request.app.state.settings, "allow_private_network", False))


def stdio_user(request: Request) -> str:
    """The account stdio servers run as when the platform runs as root."""
    return str(getattr(request.app.state.settings, "mcp_stdio_user", "auto"))


def start_timeout(request: Request) -> float:
    """How long connecting to an MCP server may take at least (ConnectionSpec)."""
    return float(getattr(request.app.state.settings, "mcp_start_timeout_seconds",
                         START_TIMEOUT))


def server_out(view: service.ServerView) -> ServerOut:
    server = view.server
    return ServerOut(
        id=server.id, name=server.name, transport=server.transport, url=server.url,
        headers={k: dict(v) for k, v in server.headers.items()},
        catalog_entry=view.catalog_entry, env=dict(server.env), enabled=server.enabled,
        tools=[ToolOut(name=t["name"], description=t.get("description", ""),
                       input_schema=t.get("input_schema", {}),
                       enabled=bool(t.get("enabled", True))) for t in server.tools],
        tools_refreshed_at=server.tools_refreshed_at, last_error=server.last_error,
        created_at=server.created_at, updated_at=server.updated_at)


# --- platform catalog -----------------------------------------------------------------------


@router.get("/admin/mcp-catalog", response_model=list[CatalogEntryOut],
            tags=["platform admin"])
async def list_catalog(db: DB, _: Admin) -> list[CatalogEntryOut]:
    """Every approved stdio MCP server, with its command line and bounds."""
    return [CatalogEntryOut.model_validate(e) for e in await service.list_catalog_entries(db)]


@router.post("/admin/mcp-catalog", response_model=CatalogEntryOut,
             status_code=status.HTTP_201_CREATED, tags=["platform admin"])
async def create_catalog_entry(body: CatalogEntryCreate, db: DB,
                               admin: Admin) -> CatalogEntryOut:
    """Approve a stdio MCP server: organizations may then run it (through the sandbox
    launcher) with the environment variables listed in allowed_env; with ``network`` off (the
    default) it gets no network at all. 409 if the name is taken; 422 for a variable no
    organization may set."""
    entry = await service.create_catalog_entry(
        db, name=body.name, description=body.description, command=body.command,
        args=list(body.args), allowed_env=list(body.allowed_env),
        timeout_seconds=body.timeout_seconds, memory_mb=body.memory_mb, network=body.network,
        actor_id=admin.user_id)
    return CatalogEntryOut.model_validate(entry)


@router.delete("/admin/mcp-catalog/{entry_id}", status_code=status.HTTP_204_NO_CONTENT,
               tags=["platform admin"])
async def delete_catalog_entry(entry_id: uuid.UUID, db: DB, admin: Admin) -> Response:
    """Withdraw an entry. 409 while organizations' servers use it (the message says how
    many, not which organizations)."""
    await service.delete_catalog_entry(db, entry_id, actor_id=admin.user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/orgs/{org}/mcp/catalog", response_model=list[CatalogEntryPublic])
async def org_catalog(db: DB, ctx: Reader) -> list[CatalogEntryPublic]:
    """The stdio servers this organization may add: name, description and the environment
    variables it may set. The command line stays with the platform."""
    return [CatalogEntryPublic(name=e.name, description=e.description,
                               allowed_env=list(e.allowed_env))
            for e in await service.list_catalog_entries(db)]


# --- organization servers -------------------------------------------------------------------


@router.get("/orgs/{org}/mcp/servers", response_model=list[ServerOut])
async def list_servers(db: DB, ctx: Reader) -> list[ServerOut]:
    """The organization's MCP servers with their discovered tools."""
    return [server_out(v) for v in await service.list_servers(db, ctx)]


@router.post("/orgs/{org}/mcp/servers", response_model=ServerOut,
             status_code=status.HTTP_201_CREATED)
async def create_server(body: ServerCreate, request: Request, db: DB,
                        ctx: Writer) -> ServerOut:
    """Add a server: ``http`` (url, headers) or ``stdio`` (catalog_entry, env). No connection
    is made; POST .../refresh lists its tools. 409 if the name is taken; 422 for settings
    that do not fit the transport, an unknown credential or catalog entry, a variable the
    entry does not allow, or a URL the egress guard refuses."""
    view = await service.create_server(
        db, ctx, name=body.name, transport=body.transport, url=body.url,
        headers={k: v.model_dump(exclude_none=True) for k, v in body.headers.items()},
        catalog_entry=body.catalog_entry, env=dict(body.env), enabled=body.enabled,
        actor=ctx.principal, allow_private_network=allow_private(request))
    return server_out(view)


@router.get("/orgs/{org}/mcp/servers/{server_id}", response_model=ServerOut)
async def get_server(server_id: uuid.UUID, db: DB, ctx: Reader) -> ServerOut:
    """One server and its tools."""
    return server_out(await service.view_server(db, ctx, server_id))


@router.patch("/orgs/{org}/mcp/servers/{server_id}", response_model=ServerOut)
async def update_server(server_id: uuid.UUID, body: ServerUpdate, request: Request, db: DB,
                        ctx: Writer) -> ServerOut:
    """Change a server. Omitted fields are kept; ``headers`` and ``env`` replace the whole
    mapping. The transport cannot change. Audited."""
    changes: dict[str, object] = {}
    for field in body.model_fields_set:
        value = getattr(body, field)
        if value is None and field in ("name", "headers", "env", "enabled"):
            raise ValidationFailed(f"{field}: cannot be null; omit it to keep it.",
                                   details={"field": field})
        if field == "headers":
            value = {k: v.model_dump(exclude_none=True) for k, v in body.headers.items()}
        changes[field] = value
    view = await service.update_server(db, ctx, server_id, actor=ctx.principal,
                                       allow_private_network=allow_private(request),
                                       **changes)  # type: ignore[arg-type]
    return server_out(view)


@router.delete("/orgs/{org}/mcp/servers/{server_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_server(server_id: uuid.UUID, db: DB, ctx: Writer) -> Response:
    """Delete a server; agents that name its tools fail from then on. Audited."""
    await service.delete_server(db, ctx, server_id, actor=ctx.principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/orgs/{org}/mcp/servers/{server_id}/refresh", response_model=RefreshOut)
async def refresh_server(server_id: uuid.UUID, request: Request, db: DB,
                         ctx: Writer) -> RefreshOut:
    """Connect, list the server's tools and cache them (known tools keep their enabled
    flag; new ones are enabled). A server that cannot be reached answers 200 with
    ``ok: false`` and the reason, stored as ``last_error``. Audited, with each credential
    used (``credential.used``, purpose mcp.refresh). 429 with Retry-After while another
    refresh of this organization runs, or when the platform is busy refreshing for others."""
    async with service.refresh_slot(ctx.org_id):
        plan = await service.prepare_refresh(db, ctx, server_id, keyring=keyring(request),
                                             allow_private_network=allow_private(request),
                                             stdio_user=stdio_user(request),
                                             start_timeout_seconds=start_timeout(request))
        await db.commit()  # no transaction stays open while the server answers
        outcome = await service.discover_tools(plan)
        view, ok, message = await service.store_refresh(db, ctx, server_id, outcome,
                                                        actor=ctx.principal)
    return RefreshOut(ok=ok, message=message, server=server_out(view))


@router.patch("/orgs/{org}/mcp/servers/{server_id}/tools/{tool_name}", response_model=ServerOut)
async def update_tool(server_id: uuid.UUID, tool_name: ToolName, body: ToolUpdate, db: DB,
                      ctx: Writer) -> ServerOut:
    """Enable or disable one discovered tool for the organization's agents. Audited."""
    view = await service.set_tool_enabled(db, ctx, server_id, tool_name, body.enabled,
                                          actor=ctx.principal)
    return server_out(view)
