"""MCP servers: the platform catalog and each organization's servers and tools.

Catalog (platform admin): entries are the only commands EngineX starts for tenants
(``stdio``). Deleting an entry that any organization's server uses raises Conflict naming how
many servers, never which organizations. Catalog changes are platform actions: they are
logged (``enginex.mcp``), not written to any tenant's audit log.

Servers (organization): ``http`` servers have a URL and headers; ``stdio`` servers name a
catalog entry and set some of its allowed environment variables from credentials. A tenant
never supplies a command. URLs pass the egress guard's address checks on save (scheme, no
user info, address literals) and the full guard, DNS included, at every connection. Another
organization's server id raises NotFound exactly like a missing one. Mutations are audited in
the caller's transaction: ``mcp_server.created`` / ``.updated`` / ``.deleted`` /
``.tools_refreshed`` / ``.tool_enabled`` / ``.tool_disabled`` (names and field names, never
secret values). Refreshing resolves the credentials the connection needs, audited as
``credential.used`` with ``purpose: mcp.refresh``.

Refreshing talks to a remote server or starts a process: the caller commits after
``prepare_refresh`` and before ``discover_tools`` so that no database transaction stays open
during the connection (see api.py). The whole refresh runs inside ``refresh_slot``: one
refresh per organization at a time (a second one answers 429 with Retry-After) and at most
REFRESH_CONCURRENCY refreshes per process (the event loop), further ones waiting up to
REFRESH_QUEUE_SECONDS before they too answer 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.audit.service import record
from enginex.credentials.repository import CredentialRepository
from enginex.credentials.runtime import Resolved, header_value
from enginex.credentials.service import CredentialUnusable, check_token_url, open_for_admin_use
from enginex.credentials.vault import Keyring
from enginex.kit.errors import Conflict, NotFound, TooManyRequests, ValidationFailed
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow
from enginex.mcp import repository as repo
from enginex.mcp.client import (
    LEFT_OUT_REASONS,
    START_TIMEOUT,
    ConnectionSpec,
    McpSession,
    McpUnavailable,
    redact_url,
    redact_url_in,
)
from enginex.mcp.models import McpCatalogEntry, McpServer
from enginex.tenancy.context import TenantContext
from enginex.tenancy.principal import Principal
from enginex.tools.egress import EgressRefused, check_url_async

log = logging.getLogger("enginex.mcp")

DEFAULT_HTTP_TIMEOUT = 30.0
# Headers the MCP transport sets itself, or that would change how the request is delivered.
RESERVED_HEADERS = frozenset({
    "host", "content-length", "content-type", "accept", "connection", "transfer-encoding",
    "te", "upgrade", "keep-alive", "trailer", "expect", "proxy-authorization",
    "proxy-connection", "mcp-session-id", "mcp-protocol-version", "last-event-id"})
# Environment variables no catalog entry may open to tenants (compared in upper case): the
# sandbox's own base; variables that make loaders, interpreters and package tools run or load
# code of the setter's choice; and variables that redirect traffic or change which TLS
# certificates are trusted (proxies, CA bundles).
RESERVED_ENV = frozenset({
    "PATH", "HOME", "LANG", "NODE_OPTIONS", "NODE_PATH", "NODE_EXTRA_CA_CERTS",
    "NODE_TLS_REJECT_UNAUTHORIZED", "PERL5OPT", "PERL5LIB", "PERLLIB", "RUBYOPT", "RUBYLIB",
    "BASH_ENV", "ENV", "IFS", "SHELLOPTS", "GCONV_PATH", "LOCPATH", "NLSPATH", "CLASSPATH",
    "_JAVA_OPTIONS", "ALL_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"})
RESERVED_ENV_PREFIXES = ("LD_", "DYLD_", "PYTHON", "ENGINEX_", "MALLOC_", "GLIBC_",
                         "NPM_CONFIG_", "UV_", "PIP_", "GIT_", "JDK_", "JAVA_", "OPENSSL_",
                         "SSL_CERT_", "XDG_", "GEM_")
RESERVED_ENV_SUFFIXES = ("_PROXY",)

REFRESH_CONCURRENCY = 4
REFRESH_QUEUE_SECONDS = 60.0
REFRESH_RETRY_AFTER_SECONDS = 10


def _invalid(field: str, message: str, code: str | None = None) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", details={"field": field}, code=code)


def _actor(actor: Principal | None) -> dict[str, Any]:
    return {"actor_kind": actor.kind if actor else None,
            "actor_id": actor.actor_id if actor else None}


# --- platform catalog ---------------------------------------------------------------------------


def env_name_refused(name: str) -> bool:
    """Whether no organization may set ``name`` (in any case; see RESERVED_ENV)."""
    upper = name.upper()
    return (upper in RESERVED_ENV or upper.startswith(RESERVED_ENV_PREFIXES)
            or upper.endswith(RESERVED_ENV_SUFFIXES))


async def list_catalog_entries(db: AsyncSession) -> list[McpCatalogEntry]:
    return await repo.list_catalog(db)


async def create_catalog_entry(db: AsyncSession, *, name: str, description: str, command: str,
                               args: list[str], allowed_env: list[str], timeout_seconds: int,
                               memory_mb: int, actor_id: uuid.UUID,
                               network: bool = False) -> McpCatalogEntry:
    """Add an approved stdio server (``network``: whether its process may use the network;
    off, it runs in a network namespace of its own). Conflict if the name is taken;
    ValidationFailed for an environment variable no tenant may set (loader, interpreter and
    package-tool hooks, proxies and CA bundles, the sandbox's base)."""
    refused = sorted({n for n in allowed_env if env_name_refused(n)})
    if refused:
        raise _invalid("allowed_env", f"{', '.join(refused)} cannot be opened to organizations "
                       "(the sandbox sets PATH, HOME and LANG itself; loader, interpreter and "
                       "package-tool variables such as LD_*, PYTHON*, NODE_OPTIONS, NPM_CONFIG_*, "
                       "PIP_*, GIT_* would let them run code, and proxy and CA-bundle variables "
                       "such as HTTPS_PROXY, SSL_CERT_FILE would redirect or intercept traffic).")
    if any(c in command for c in "\r\n") or not command.strip():
        raise _invalid("command", "give the executable's path or name on one line.")
    taken = Conflict(f"A catalog entry named '{name}' already exists; choose another name or "
                     "delete that one first.", details={"field": "name"})
    if await repo.get_catalog_entry_by_name(db, name) is not None:
        raise taken
    entry = McpCatalogEntry(id=new_id(), name=name, description=description, command=command,
                            args=list(args), allowed_env=sorted(set(allowed_env)),
                            timeout_seconds=timeout_seconds, memory_mb=memory_mb,
                            network=network, created_at=utcnow())
    repo.add_catalog_entry(db, entry)
    try:
        await db.flush()
    except IntegrityError as exc:
        raise taken from exc
    log.info("mcp catalog entry %s (%s, network %s) created by platform admin %s", name,
             entry.id, "on" if network else "off", actor_id)
    return entry


async def delete_catalog_entry(db: AsyncSession, entry_id: uuid.UUID, *,
                               actor_id: uuid.UUID) -> None:
    """Remove an entry. NotFound for an unknown id; Conflict (with the number of servers,
    never which organizations) while servers use it."""
    entry = await repo.get_catalog_entry(db, entry_id)
    if entry is None:
        raise NotFound()
    used = await repo.count_servers_using(db, entry_id)
    if used:
        raise Conflict(f"The catalog entry '{entry.name}' is used by {used} MCP server"
                       f"{'s' if used != 1 else ''} of organizations; they must remove "
                       f"{'them' if used != 1 else 'it'} before the entry can be deleted.",
                       details={"servers": used})
    await repo.delete_catalog_entry(db, entry)
    try:
        await db.flush()
    except IntegrityError as exc:  # a server was added meanwhile (the foreign key refuses)
        raise Conflict(f"The catalog entry '{entry.name}' is in use by an organization's MCP "
                       "server; it cannot be deleted now.") from exc
    log.info("mcp catalog entry %s (%s) deleted by platform admin %s", entry.name, entry_id,
             actor_id)


# --- organization servers -----------------------------------------------------------------------


@dataclass(frozen=True)
class ServerView:
    """A server with the name of its catalog entry (stdio), for responses and pages."""

    server: McpServer
    catalog_entry: str | None


async def _views(db: AsyncSession, servers: list[McpServer]) -> list[ServerView]:
    entries = await repo.get_catalog_entries(
        db, sorted({s.catalog_id for s in servers if s.catalog_id is not None}))
    return [ServerView(s, entries[s.catalog_id].name if s.catalog_id in entries else None)
            for s in servers]


async def list_servers(db: AsyncSession, ctx: TenantContext) -> list[ServerView]:
    return await _views(db, await repo.McpServerRepository(db, ctx).list())


async def access_server(db: AsyncSession, ctx: TenantContext,
                        server_id: uuid.UUID) -> McpServer:
    """The server; NotFound for a missing id and for another organization's alike."""
    return await repo.McpServerRepository(db, ctx).access(server_id)


async def view_server(db: AsyncSession, ctx: TenantContext, server_id: uuid.UUID) -> ServerView:
    return (await _views(db, [await access_server(db, ctx, server_id)]))[0]


async def _check_credentials(db: AsyncSession, ctx: TenantContext,
                             refs: dict[str, str]) -> None:
    """``refs``: {field path: credential name}; each credential must exist in this org."""
    credentials = CredentialRepository(db, ctx)
    for where, name in refs.items():
        if await credentials.get_by_name(name) is None:
            raise _invalid(where, f"no credential named '{name}' in this organization; create "
                           "it under Settings → Credentials first.")


async def check_server_url(url: str, *, allow_private_network: bool) -> None:
    """The egress guard on save: scheme, no user info, then every address the host resolves
    to (address literals in any form -- 127.1, 0x7f000001, 2130706433 -- resolve to
    themselves). A host that does not resolve here is accepted: the full guard runs again at
    every connection, DNS included. Raises EgressRefused."""
    check_token_url(url, allow_private_network=allow_private_network)
    host = httpx.URL(url).host
    try:
        await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return
    await check_url_async(url, allow_private=allow_private_network)


@dataclass(frozen=True)
class _Settings:
    url: str | None
    headers: dict[str, dict[str, str]]
    catalog_id: uuid.UUID | None
    env: dict[str, str]


async def _validated(db: AsyncSession, ctx: TenantContext, *, transport: str, url: str | None,
                     headers: dict[str, dict[str, str]], catalog_entry: str | None,
                     env: dict[str, str], allow_private_network: bool) -> _Settings:
    if transport == "http":
        if catalog_entry is not None or env:
            field = "catalog_entry" if catalog_entry is not None else "env"
            raise _invalid(field, "only stdio servers use a catalog entry and environment "
                           "variables; an http server has a url and headers.")
        if not url:
            raise _invalid("url", "an http server needs the URL of its Streamable HTTP "
                           "endpoint, such as https://mcp.example.com/mcp.")
        try:
            await check_server_url(url, allow_private_network=allow_private_network)
        except EgressRefused as exc:
            raise _invalid("url", f"{redact_url_in(str(exc), url)}.",
                           code="egress_refused") from None
        for name, spec in headers.items():
            if name.lower() in RESERVED_HEADERS:
                raise _invalid(f"headers.{name}", "this header is set by the MCP transport "
                               "and cannot be configured.")
            value = spec.get("value")
            if value is not None and any(c in value for c in "\r\n\x00"):
                raise _invalid(f"headers.{name}", "header values cannot contain line breaks.")
        await _check_credentials(db, ctx, {f"headers.{k}": v["credential"]
                                           for k, v in headers.items() if "credential" in v})
        return _Settings(url, headers, None, {})
    if url is not None or headers:
        raise _invalid("url" if url is not None else "headers", "a stdio server runs a command "
                       "from the platform's MCP catalog: it takes catalog_entry and env, not a "
                       "url or headers.")
    entries = await repo.list_catalog(db)
    available = ", ".join(e.name for e in entries) or "none yet (ask the platform operator)"
    if not catalog_entry:
        raise _invalid("catalog_entry", "a stdio server runs a command from the platform's MCP "
                       f"catalog; name one of: {available}. Organizations cannot supply "
                       "commands.")
    entry = next((e for e in entries if e.name == catalog_entry), None)
    if entry is None:
        raise _invalid("catalog_entry", f"no catalog entry named '{catalog_entry}'; "
                       f"available: {available}.")
    reserved = sorted(n for n in env if env_name_refused(n))
    if reserved:
        raise _invalid("env", f"{', '.join(reserved)} cannot be set by organizations (loader, "
                       "interpreter, proxy or certificate variables); remove it.")
    refused = sorted(set(env) - set(entry.allowed_env))
    if refused:
        allowed = ", ".join(entry.allowed_env) or "none"
        raise _invalid("env", f"{', '.join(refused)} {'is' if len(refused) == 1 else 'are'} not "
                       f"allowed by the catalog entry '{entry.name}' (allowed: {allowed}).")
    await _check_credentials(db, ctx, {f"env.{k}": v for k, v in env.items()})
    return _Settings(None, {}, entry.id, dict(env))


async def create_server(db: AsyncSession, ctx: TenantContext, *, name: str, transport: str,
                        url: str | None, headers: dict[str, dict[str, str]],
                        catalog_entry: str | None, env: dict[str, str], enabled: bool,
                        actor: Principal | None, allow_private_network: bool) -> ServerView:
    """Add a server (no connection is made: refresh lists its tools). Conflict if the name is
    taken in this organization; ValidationFailed for settings that do not fit the transport,
    an unknown catalog entry or credential, a variable the entry does not allow, a refused
    URL. Audited as ``mcp_server.created``."""
    servers = repo.McpServerRepository(db, ctx)
    taken = Conflict(f"An MCP server named '{name}' already exists in this organization; "
                     "choose another name or update that one.", details={"field": "name"})
    if transport not in ("http", "stdio"):
        raise _invalid("transport", "must be 'http' or 'stdio'.")
    checked = await _validated(db, ctx, transport=transport, url=url, headers=headers,
                               catalog_entry=catalog_entry, env=env,
                               allow_private_network=allow_private_network)
    if await servers.get_by_name(name) is not None:
        raise taken
    now = utcnow()
    server = McpServer(tenant_id=ctx.org_id, id=new_id(), name=name, transport=transport,
                       url=checked.url, headers=checked.headers, catalog_id=checked.catalog_id,
                       env=checked.env, enabled=enabled, tools=[], created_at=now,
                       updated_at=now)
    servers.add(server)
    try:
        await db.flush()
    except IntegrityError as exc:
        raise taken from exc
    await record(db, ctx, "mcp_server.created", target_kind="mcp_server", target_id=server.id,
                 details={"name": name, "transport": transport,
                          "url": redact_url(checked.url) if checked.url else None,
                          "catalog_entry": catalog_entry, "headers": sorted(headers),
                          "env": sorted(env)}, **_actor(actor))
    return ServerView(server, catalog_entry)


UNCHANGED: Any = object()


async def update_server(db: AsyncSession, ctx: TenantContext, server_id: uuid.UUID, *,
                        actor: Principal | None, allow_private_network: bool,
                        name: str = UNCHANGED, url: str | None = UNCHANGED,
                        headers: dict[str, dict[str, str]] = UNCHANGED,
                        catalog_entry: str | None = UNCHANGED, env: dict[str, str] = UNCHANGED,
                        enabled: bool = UNCHANGED) -> ServerView:
    """Change a server; the result is validated as a whole like ``create_server``. Changing
    the URL or catalog entry keeps the cached tools until the next refresh. Audited as
    ``mcp_server.updated`` (the names of the changed fields)."""
    servers = repo.McpServerRepository(db, ctx)
    server = await servers.access(server_id)
    current = (await _views(db, [server]))[0]
    given = {k: v for k, v in {"name": name, "url": url, "headers": headers,
                               "catalog_entry": catalog_entry, "env": env,
                               "enabled": enabled}.items() if v is not UNCHANGED}
    checked = await _validated(
        db, ctx, transport=server.transport, url=given.get("url", server.url),
        headers=given.get("headers", server.headers),
        catalog_entry=given.get("catalog_entry", current.catalog_entry),
        env=given.get("env", server.env), allow_private_network=allow_private_network)
    if "name" in given and given["name"] != server.name:
        if await servers.get_by_name(given["name"]) is not None:
            raise Conflict(f"An MCP server named '{given['name']}' already exists in this "
                           "organization; choose another name.", details={"field": "name"})
        server.name = given["name"]
    server.url, server.headers = checked.url, checked.headers
    server.catalog_id, server.env = checked.catalog_id, checked.env
    if "enabled" in given:
        server.enabled = bool(given["enabled"])
    server.updated_at = utcnow()
    final_name = server.name  # the row cannot be read after a failed flush
    try:
        await db.flush()
    except IntegrityError as exc:  # renamed concurrently to the same name
        raise Conflict(f"An MCP server named '{final_name}' already exists in this "
                       "organization; choose another name.", details={"field": "name"}) from exc
    await record(db, ctx, "mcp_server.updated", target_kind="mcp_server", target_id=server.id,
                 details={"name": server.name, "fields": sorted(given)}, **_actor(actor))
    return (await _views(db, [server]))[0]


async def delete_server(db: AsyncSession, ctx: TenantContext, server_id: uuid.UUID, *,
                        actor: Principal | None) -> None:
    """Delete a server; agents naming its tools fail from then on. Audited."""
    servers = repo.McpServerRepository(db, ctx)
    server = await servers.access(server_id)
    name = server.name
    await servers.delete(server)
    await db.flush()
    await record(db, ctx, "mcp_server.deleted", target_kind="mcp_server", target_id=server_id,
                 details={"name": name}, **_actor(actor))


async def set_tool_enabled(db: AsyncSession, ctx: TenantContext, server_id: uuid.UUID,
                           tool_name: str, enabled: bool, *,
                           actor: Principal | None) -> ServerView:
    """Enable or disable one discovered tool. NotFound for another org's server; 404 with a
    message naming the refresh for a tool not in the cached list. Audited as
    ``mcp_server.tool_enabled`` / ``.tool_disabled``."""
    server = await access_server(db, ctx, server_id)
    tools = [dict(t) for t in server.tools]
    tool = next((t for t in tools if t.get("name") == tool_name), None)
    if tool is None:
        raise NotFound.with_message(
            f"MCP server '{server.name}' has no tool named '{tool_name[:128]}' in its "
            "discovered list; refresh the server's tools first.")
    tool["enabled"] = enabled
    server.tools = tools
    server.updated_at = utcnow()
    await db.flush()
    await record(db, ctx, f"mcp_server.tool_{'enabled' if enabled else 'disabled'}",
                 target_kind="mcp_server", target_id=server.id,
                 details={"name": server.name, "tool": tool_name}, **_actor(actor))
    return (await _views(db, [server]))[0]


# --- connections ---------------------------------------------------------------------------------

CredentialLookup = Callable[[str], Awaitable[Resolved]]


def env_value(resolved: Resolved, var: str) -> str:
    """The value an environment variable takes from a credential: the key or token of
    api_key / bearer_token / oauth2, a custom credential's field named like the variable
    (lower case) or its ``value`` field."""
    values, kind = resolved.values, resolved.kind
    if kind in ("api_key", "bearer_token", "oauth2"):
        return values[{"api_key": "key", "bearer_token": "token",
                       "oauth2": "access_token"}[kind]]
    if kind == "custom":
        for candidate in (var.lower(), "value"):
            if candidate in values:
                return values[candidate]
        raise McpUnavailable(f"the custom credential '{resolved.name}' has no field "
                             f"'{var.lower()}' or 'value' for the variable {var}")
    raise McpUnavailable(f"a {kind} credential ('{resolved.name}') cannot fill the variable "
                         f"{var}; use an api_key, bearer_token, oauth2 or custom credential")


@dataclass(frozen=True)
class ServerSnapshot:
    """What a connection needs from a server row (usable after the transaction ends)."""

    id: uuid.UUID
    name: str
    transport: str
    url: str | None
    headers: dict[str, dict[str, str]]
    env: dict[str, str]
    command: str | None = None
    args: tuple[str, ...] = ()
    timeout_seconds: float = DEFAULT_HTTP_TIMEOUT
    memory_mb: int = 512
    network: bool = False

    @classmethod
    def of(cls, server: McpServer, entry: McpCatalogEntry | None) -> ServerSnapshot:
        common: dict[str, Any] = {"id": server.id, "name": server.name,
                                  "transport": server.transport, "url": server.url,
                                  "headers": dict(server.headers), "env": dict(server.env)}
        if entry is None:
            return cls(**common)
        return cls(**common, command=entry.command, args=tuple(entry.args),
                   timeout_seconds=float(entry.timeout_seconds), memory_mb=entry.memory_mb,
                   network=bool(entry.network))


async def connection_spec(snapshot: ServerSnapshot, lookup: CredentialLookup, *,
                          allow_private_network: bool,
                          stdio_user: str = "auto",
                          start_timeout_seconds: float = START_TIMEOUT) -> ConnectionSpec:
    """Resolve the server's credential references through ``lookup`` (which audits them).
    ``stdio_user``: the account a stdio server runs as when the platform runs as root
    (ENGINEX_MCP_STDIO_USER); ``start_timeout_seconds``: how long connecting may take at
    least (ENGINEX_MCP_START_TIMEOUT_SECONDS, ``ConnectionSpec.connect_timeout``). Raises
    McpUnavailable naming the header or variable whose credential failed, or a variable the
    platform no longer lets organizations set."""
    if snapshot.transport == "stdio" and snapshot.command is None:
        raise McpUnavailable(f"the catalog entry of MCP server '{snapshot.name}' is missing")
    secrets: list[str] = []
    headers: dict[str, str] = {}
    for header, spec in snapshot.headers.items():
        if "credential" in spec:
            resolved = await _resolve(lookup, spec["credential"], f"header {header}")
            try:
                headers[header] = header_value(resolved, header)
            except Exception as exc:
                raise McpUnavailable(f"header {header}: {exc}") from None
            secrets.extend([*resolved.values.values(), headers[header]])
        else:
            headers[header] = str(spec.get("value", ""))
    env: dict[str, str] = {}
    for var, name in snapshot.env.items():
        if env_name_refused(var):
            raise McpUnavailable(f"variable {var}: organizations may no longer set it; remove "
                                 "it from the server's environment")
        resolved = await _resolve(lookup, name, f"variable {var}")
        env[var] = env_value(resolved, var)
        secrets.extend(resolved.values.values())
    return ConnectionSpec(server=snapshot.name, transport=snapshot.transport,
                          timeout_seconds=snapshot.timeout_seconds,
                          allow_private_network=allow_private_network, url=snapshot.url,
                          headers=headers, command=snapshot.command, args=snapshot.args,
                          env=env, memory_mb=snapshot.memory_mb, network=snapshot.network,
                          stdio_user=stdio_user, secrets=tuple(s for s in secrets if s),
                          start_timeout_seconds=start_timeout_seconds)


async def _resolve(lookup: CredentialLookup, name: str, where: str) -> Resolved:
    try:
        return await lookup(name)
    except McpUnavailable as exc:
        raise McpUnavailable(f"{where}: {exc}") from None
    except Exception as exc:  # ToolError / CredentialUnusable: their messages are safe
        raise McpUnavailable(f"{where}: {exc}") from None


# --- refresh -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefreshPlan:
    server_id: uuid.UUID
    spec: ConnectionSpec | None
    error: str | None = None


@dataclass(frozen=True)
class RefreshOutcome:
    tools: list[dict[str, Any]] | None
    left_out: dict[str, int] = field(default_factory=dict)
    error: str | None = None


class _RefreshLimits:
    def __init__(self) -> None:
        self.slots = asyncio.Semaphore(REFRESH_CONCURRENCY)
        self.busy: set[uuid.UUID] = set()


_refresh_limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _RefreshLimits] = \
    weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def refresh_slot(org_id: uuid.UUID, *,
                       queue_seconds: float = REFRESH_QUEUE_SECONDS) -> AsyncIterator[None]:
    """Hold the right to refresh one of ``org_id``'s servers for the block: one refresh per
    organization at a time, REFRESH_CONCURRENCY per process (event loop). Raises
    TooManyRequests (429, Retry-After) at once when the organization already refreshes, or
    after ``queue_seconds`` when the process is busy with other organizations' refreshes.
    Per process: replicas each have their own limits."""
    limits = _refresh_limits.setdefault(asyncio.get_running_loop(), _RefreshLimits())
    retry = {"Retry-After": str(REFRESH_RETRY_AFTER_SECONDS)}
    if org_id in limits.busy:
        raise TooManyRequests("Another refresh of this organization's MCP servers is running; "
                              "refresh one server at a time and try again in a few seconds.",
                              headers=retry)
    limits.busy.add(org_id)
    try:
        try:
            with anyio.fail_after(queue_seconds):
                await limits.slots.acquire()
        except TimeoutError:
            raise TooManyRequests("The platform is refreshing many MCP servers right now; try "
                                  f"again in {REFRESH_RETRY_AFTER_SECONDS} seconds.",
                                  headers=retry) from None
        try:
            yield
        finally:
            limits.slots.release()
    finally:
        limits.busy.discard(org_id)


async def prepare_refresh(db: AsyncSession, ctx: TenantContext, server_id: uuid.UUID, *,
                          keyring: Keyring, allow_private_network: bool,
                          stdio_user: str = "auto",
                          start_timeout_seconds: float = START_TIMEOUT) -> RefreshPlan:
    """Resolve what connecting to the server needs (``stdio_user`` and
    ``start_timeout_seconds``: as for ``connection_spec``). Each credential used is audited
    (``credential.used``, purpose ``mcp.refresh``). NotFound for another org's server; a
    credential problem is returned as the plan's error (the refresh reports it)."""
    server = await access_server(db, ctx, server_id)
    entry = await repo.get_catalog_entry(db, server.catalog_id) if server.catalog_id else None
    credentials = CredentialRepository(db, ctx)

    async def lookup(name: str) -> Resolved:
        credential = await credentials.get_by_name(name)
        if credential is None:
            raise McpUnavailable(f"no credential named '{name}' in this organization")
        url = (server.url or "") if server.transport == "http" else None
        try:
            values = await open_for_admin_use(
                db, ctx, credential, keyring=keyring, url=url,
                details={"purpose": "mcp.refresh", "mcp_server": server.name})
        except CredentialUnusable as exc:
            raise McpUnavailable(str(exc)) from None
        return Resolved(name, credential.kind, values)

    try:
        spec = await connection_spec(ServerSnapshot.of(server, entry), lookup,
                                     allow_private_network=allow_private_network,
                                     stdio_user=stdio_user,
                                     start_timeout_seconds=start_timeout_seconds)
    except McpUnavailable as exc:
        return RefreshPlan(server_id, None, str(exc))
    return RefreshPlan(server_id, spec)


async def discover_tools(plan: RefreshPlan) -> RefreshOutcome:
    """Connect and list the tools (no database access: call it outside a transaction)."""
    if plan.spec is None:
        return RefreshOutcome(None, error=plan.error or "cannot connect")
    session = McpSession(plan.spec)
    try:
        await session.start()
        tools, left_out = await session.list_tools()
    except McpUnavailable as exc:
        return RefreshOutcome(None, error=str(exc))
    finally:
        await session.aclose()
    return RefreshOutcome(tools, left_out)


def left_out_message(left_out: dict[str, int]) -> str | None:
    """How many tools a refresh left out and why, or None if none was."""
    parts = [f"{count} with {LEFT_OUT_REASONS[reason]}" for reason, count in left_out.items()
             if count and reason in LEFT_OUT_REASONS]
    if not parts:
        return None
    total = sum(left_out.values())
    return f"{total} tool(s) were left out: {'; '.join(parts)}."


async def store_refresh(db: AsyncSession, ctx: TenantContext, server_id: uuid.UUID,
                        outcome: RefreshOutcome, *,
                        actor: Principal | None) -> tuple[ServerView, bool, str | None]:
    """Store the discovered tools (keeping each known tool's enabled flag; new tools are
    enabled) or the error in ``last_error`` (the previous list is kept). Audited as
    ``mcp_server.tools_refreshed``. Returns (server, ok, message)."""
    server = await access_server(db, ctx, server_id)
    message: str | None
    if outcome.tools is None:
        error = redact_url_in(outcome.error or "the tools could not be listed", server.url)
        ok, message = False, error[:2000]
        server.last_error = message
    else:
        previous = {t.get("name"): bool(t.get("enabled", True)) for t in server.tools}
        server.tools = [{**t, "enabled": previous.get(t["name"], True)} for t in outcome.tools]
        server.tools_refreshed_at = utcnow()
        server.last_error = None
        ok = True
        message = left_out_message(outcome.left_out)
    server.updated_at = utcnow()
    await db.flush()
    details: dict[str, Any] = {"name": server.name, "ok": ok, "tools": len(server.tools)}
    if not ok:
        details["error"] = message
    await record(db, ctx, "mcp_server.tools_refreshed", target_kind="mcp_server",
                 target_id=server.id, details=details, **_actor(actor))
    return (await _views(db, [server]))[0], ok, message


_TOOL = re.compile(r"^mcp\.([A-Za-z0-9_-]{1,64})\.([A-Za-z0-9_.-]{1,128})$")


def parse_tool_name(name: str) -> tuple[str, str] | None:
    """(server, tool) of ``mcp.<server>.<tool>``, or None."""
    match = _TOOL.match(name)
    return (match.group(1), match.group(2)) if match else None
