"""MCP tools at run time: the engine's ``ToolsFactory`` (runs/engine.py).

``mcp_tools_for(db, ctx, manifest, node, secrets)`` returns a ``copy()`` of the built-in
registry plus one tool per ``mcp.<server>.<tool>`` the node names (an llm node's ``tools``, a
tool node's ``tool``) that exists in this organization's enabled server's cached tool list and
is enabled there. Specs come from the cache: preparing a step opens no connection.

* A tool node naming an MCP tool that cannot be used fails the step with the reason (no such
  server / server disabled / tool not discovered -- refresh / tool disabled). An llm node
  simply does not offer such a tool to the model.
* Connections open lazily on the first call, one per server per step (never shared between
  steps, runs or organizations), and are closed when the step ends (``registry.on_close``);
  a stdio server is a child process of this step only, killed on close.
* Header and environment credentials are resolved through the step's ``StepSecrets``:
  audited as ``credential.used`` (run, node) and redacted from everything the step stores.
* Results: structured content if the server sent one, else the text content joined; an
  error result raises ToolError with the server's message. Every call is bounded by the
  server's timeout (catalog ``timeout_seconds``; 30 s for http servers); connecting (a stdio
  process's start and the handshake) may take ENGINEX_MCP_START_TIMEOUT_SECONDS if longer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from enginex.agents.manifest import AgentManifest, LLMNode, ToolNode
from enginex.config import Settings
from enginex.credentials.runtime import Resolved, StepSecrets
from enginex.llm.base import ToolSpec
from enginex.mcp import repository as repo
from enginex.mcp.client import START_TIMEOUT, McpSession, McpUnavailable
from enginex.mcp.models import McpServer
from enginex.mcp.service import ServerSnapshot, connection_spec, parse_tool_name
from enginex.runs.engine import ToolsFactory
from enginex.tenancy.context import TenantContext
from enginex.tools.base import ToolContext, ToolError, ToolRegistry
from enginex.tools.registry import builtin_registry


class _Connections:
    """The step's connections, one per server, opened on first use."""

    def __init__(self, secrets: StepSecrets | None, allow_private_network: bool,
                 stdio_user: str = "auto", start_timeout_seconds: float = START_TIMEOUT) -> None:
        self.secrets = secrets
        self.allow_private_network = allow_private_network
        self.stdio_user = stdio_user
        self.start_timeout_seconds = start_timeout_seconds
        self._sessions: dict[str, McpSession] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def _lookup(self, name: str, url: str | None) -> Resolved:
        if self.secrets is None:
            raise ToolError("credentials are not available on this deployment")
        return await self.secrets.credential(name, url=url)

    async def session(self, snapshot: ServerSnapshot) -> McpSession:
        lock = self._locks.setdefault(snapshot.name, asyncio.Lock())
        async with lock:
            session = self._sessions.get(snapshot.name)
            if session is None:
                # An http server's headers go to its URL: the credential's allowed hosts are
                # checked against it. A stdio server's environment is not sent to a host.
                url = (snapshot.url or "") if snapshot.transport == "http" else None

                async def lookup(name: str) -> Resolved:
                    return await self._lookup(name, url)

                spec = await connection_spec(snapshot, lookup,
                                             allow_private_network=self.allow_private_network,
                                             stdio_user=self.stdio_user,
                                             start_timeout_seconds=self.start_timeout_seconds)
                session = self._sessions[snapshot.name] = McpSession(spec)
                await session.start()
            return session

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.aclose() for s in sessions), return_exceptions=True)


@dataclass
class McpTool:
    """One MCP tool of one server, as the engine sees it (``mcp.<server>.<tool>``)."""

    spec: ToolSpec
    remote_name: str
    server: ServerSnapshot
    connections: _Connections

    async def call(self, ctx: ToolContext, arguments: dict[str, Any]) -> Any:
        try:
            session = await self.connections.session(self.server)
            return await session.call_tool(self.remote_name, arguments)
        except McpUnavailable as exc:
            raise ToolError(str(exc)) from None


def _named_tools(node: LLMNode | ToolNode) -> list[str]:
    names = list(node.tools) if isinstance(node, LLMNode) else [node.tool]
    return [n for n in dict.fromkeys(names) if n.startswith("mcp.")]


def _unusable(name: str, server_name: str, tool_name: str,
              server: McpServer | None) -> tuple[str | None, dict[str, Any] | None]:
    """(reason, cached tool): why ``name`` cannot be used, or the cached tool."""
    if server is None:
        return (f"tool '{name}': this organization has no MCP server named '{server_name}' "
                "(add it under Settings → MCP servers)"), None
    if not server.enabled:
        return f"tool '{name}': the MCP server '{server_name}' is disabled", None
    tool = next((t for t in server.tools if t.get("name") == tool_name), None)
    if tool is None:
        return (f"tool '{name}': '{tool_name}' was not discovered on the MCP server "
                f"'{server_name}'; refresh the server's tools under Settings → MCP servers"), None
    if not tool.get("enabled", True):
        return (f"tool '{name}': '{tool_name}' is disabled on the MCP server '{server_name}' "
                "by an organization admin"), None
    return None, tool


async def mcp_tools_for(db: AsyncSession, ctx: TenantContext, manifest: AgentManifest,
                        node: LLMNode | ToolNode, secrets: StepSecrets | None, *,
                        builtin: ToolRegistry | None = None,
                        allow_private_network: bool = False,
                        stdio_user: str = "auto",
                        start_timeout_seconds: float = START_TIMEOUT) -> ToolRegistry:
    """The step's registry (see the module docstring). ``db`` is bound to ``ctx``'s tenant.
    Raises ToolError for a tool node naming an unusable MCP tool."""
    registry = (builtin or builtin_registry()).copy()
    wanted = _named_tools(node)
    if not wanted:
        return registry
    parsed = {name: parse_tool_name(name) for name in wanted}
    server_names = sorted({p[0] for p in parsed.values() if p is not None})
    servers = {s.name: s for s in await repo.McpServerRepository(db, ctx).list_named(server_names)}
    entries = await repo.get_catalog_entries(
        db, sorted({s.catalog_id for s in servers.values() if s.catalog_id is not None}))
    connections = _Connections(secrets, allow_private_network, stdio_user,
                               start_timeout_seconds)
    snapshots: dict[str, ServerSnapshot] = {}
    for name, parts in parsed.items():
        if parts is None:
            reason: str | None = (f"tool '{name}': MCP tools are named mcp.<server>.<tool>")
            tool = None
        else:
            server = servers.get(parts[0])
            reason, tool = _unusable(name, parts[0], parts[1], server)
            if reason is None and server is not None and server.transport == "stdio" and \
                    server.catalog_id not in entries:
                reason = f"tool '{name}': the catalog entry of MCP server '{parts[0]}' is gone"
        if reason is not None or tool is None or parts is None:
            if isinstance(node, ToolNode):
                raise ToolError(reason or f"tool '{name}' is not available")
            continue
        server = servers[parts[0]]
        if server.name not in snapshots:
            snapshots[server.name] = ServerSnapshot.of(
                server, entries.get(server.catalog_id) if server.catalog_id else None)
        spec = ToolSpec(name=name, description=str(tool.get("description") or "")[:2000],
                        parameters=dict(tool.get("input_schema") or {"type": "object"}))
        registry.register(McpTool(spec, parts[1], snapshots[server.name], connections))
    registry.on_close(connections.aclose)
    return registry


def mcp_tools_factory(settings: Settings, builtin: ToolRegistry | None = None) -> ToolsFactory:
    """The engine's ``tools_for``: ``mcp_tools_for`` with the deployment's egress setting,
    stdio account and start timeout, read at each step (ENGINEX_ALLOW_PRIVATE_NETWORK,
    ENGINEX_MCP_STDIO_USER, ENGINEX_MCP_START_TIMEOUT_SECONDS)."""
    base = builtin or builtin_registry()

    async def tools_for(db: AsyncSession, ctx: TenantContext, manifest: AgentManifest,
                        node: LLMNode | ToolNode, secrets: StepSecrets | None) -> ToolRegistry:
        return await mcp_tools_for(db, ctx, manifest, node, secrets, builtin=base,
                                   allow_private_network=settings.allow_private_network,
                                   stdio_user=settings.mcp_stdio_user,
                                   start_timeout_seconds=settings.mcp_start_timeout_seconds)

    return tools_for
