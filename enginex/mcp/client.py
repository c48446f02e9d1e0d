"""Connecting to one MCP server (official ``mcp`` SDK), for tool discovery and tool calls.

``connect(spec)`` yields an initialized ``mcp.Client``:

* ``http``: Streamable HTTP through an httpx2 client whose every TCP connection passes the
  egress guard (``tools/egress.py``, re-checked at connect time, DNS rebinding included); the
  URL is also checked up front for a clear message. Proxy variables are ignored.
* ``stdio``: the catalog entry's command, started through the sandbox launcher
  (``python -I -m enginex.mcp.sandbox``: no network unless the entry allows it, an
  unprivileged account when the platform runs as root, a user namespace of its own, resource
  limits, new session, clean environment) with ``cwd`` and ``HOME`` in a fresh temporary
  directory that is removed afterwards. The environment is PATH, LANG, HOME and the
  organization's allowed variables -- nothing of the platform's (no ENGINEX_*, no database
  URLs). Before the first start the platform process makes itself non-dumpable
  (``kit/process.py``). The server's stderr goes to a file in that directory, read back
  through the platform's own handle; its last lines may appear (redacted) in error messages.

Tool lists (``list_tools``) are redacted with the connection's secrets and bounded: a
description to 2 KiB, an input schema to 32 KiB (a tool above is left out), the whole list to
1 MiB (tools beyond are left out); the caller says how many were left out and why.
URLs in messages carry no query string (``redact_url``): secrets belong in credential headers.

Every failure is reported as ``McpUnavailable`` with a message safe to show and store (the
resolved secret values are redacted from it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
import httpx2
from mcp import Client, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from enginex.credentials.runtime import redact_text, variants
from enginex.kit.process import protect_process
from enginex.tools.egress import EgressRefused, check_url_async, guarded_sdk_transport

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
BASE_ENV = ("PATH", "LANG", "HOME")
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
MAX_TOOLS = 500
MAX_PAGES = 20
MAX_DESCRIPTION_BYTES = 2 * 1024
MAX_SCHEMA_BYTES = 32 * 1024
MAX_LIST_BYTES = 1024 * 1024
MAX_MESSAGE = 500
STDERR_TAIL = 400
CLOSE_TIMEOUT = 10.0  # stdio shutdown: 2 s grace, SIGTERM, 2 s, SIGKILL
START_TIMEOUT = 30.0  # ENGINEX_MCP_START_TIMEOUT_SECONDS's default


class McpUnavailable(Exception):
    """The server could not be reached, started or understood. Safe to show and store."""


@dataclass(frozen=True)
class ConnectionSpec:
    """Everything needed to open one connection, with credential values already resolved."""

    server: str
    transport: str
    timeout_seconds: float
    allow_private_network: bool = False
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    memory_mb: int = 512
    network: bool = False
    stdio_user: str = "auto"
    secrets: tuple[str, ...] = ()
    start_timeout_seconds: float = START_TIMEOUT

    @property
    def connect_timeout(self) -> float:
        """How long connecting may take (a stdio process's start, then the MCP handshake):
        the larger of the server's timeout and the deployment's start timeout. Start-up
        depends on the host's load (an interpreter and its imports on a busy machine), not
        on the server's tools, which the server's timeout bounds call by call."""
        return max(self.timeout_seconds, self.start_timeout_seconds)

    def redact(self, text: str) -> str:
        """``text`` without the connection's secrets (every encoded form) and without the
        query string of its URL."""
        forms = sorted({f for s in self.secrets for f in variants(s)}, key=len, reverse=True)
        return redact_url_in(redact_text(text, forms), self.url)


def redact_url(url: str) -> str:
    """``url`` without its query string and fragment (where tokens are often put), for audit
    details and messages; the stored URL is unchanged."""
    base, sep, _ = url.partition("?")
    base = base.partition("#")[0]
    return f"{base}?[redacted]" if sep else base


def redact_url_in(text: str, url: str | None) -> str:
    """``text`` with ``url`` shown as ``redact_url(url)`` and its query string masked."""
    if not url:
        return text
    text = text.replace(url, redact_url(url))
    query = url.partition("?")[2].partition("#")[0]
    return text.replace(query, "[redacted]") if query else text


def sandbox_argv(spec: ConnectionSpec, workdir: Path | None = None) -> list[str]:
    """The launcher command line for a stdio server (see ``enginex/mcp/sandbox.py``)."""
    assert spec.command is not None
    keep = ",".join([*BASE_ENV, *sorted(spec.env)])
    cpu = max(10, int(spec.timeout_seconds) * 2)
    where = ["--workdir", str(workdir)] if workdir is not None else []
    return [sys.executable, "-I", "-m", "enginex.mcp.sandbox", "--memory-mb", str(spec.memory_mb),
            "--cpu-seconds", str(cpu), "--keep-env", keep, "--user", spec.stdio_user,
            "--network", "host" if spec.network else "none", *where, "--", spec.command,
            *spec.args]


@contextlib.asynccontextmanager
async def connect(spec: ConnectionSpec) -> AsyncIterator[Client]:
    """An initialized client for ``spec``'s server; raises McpUnavailable (see the module
    docstring). The connection (and the stdio process) is closed on exit."""
    async with contextlib.AsyncExitStack() as stack:
        if spec.transport == "http":
            assert spec.url is not None
            try:
                await check_url_async(spec.url, allow_private=spec.allow_private_network)
            except EgressRefused as exc:
                raise McpUnavailable(f"the MCP server URL is refused: {exc}") from None
            http = httpx2.AsyncClient(
                transport=guarded_sdk_transport(allow_private=spec.allow_private_network),
                headers=spec.headers, trust_env=False,
                timeout=httpx2.Timeout(spec.timeout_seconds))
            await stack.enter_async_context(http)
            transport: Any = streamable_http_client(spec.url, http_client=http)
            errlog: IO[str] | None = None
        else:
            protect_process()  # idempotent; the entry points do it at startup too
            workdir = Path(tempfile.mkdtemp(prefix="enginex-mcp-"))
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            home = workdir / "home"
            home.mkdir(mode=0o700)
            # Read back through this handle, never by path: the server may own its directory.
            # 0600: the server's own account (and every other server) must not read it.
            errlog = stack.enter_context(os.fdopen(
                os.open(workdir / "stderr.log", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600),
                "w+", encoding="utf-8"))
            argv = sandbox_argv(spec, workdir)
            env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": str(home), **spec.env}
            params = StdioServerParameters(command=argv[0], args=argv[1:], env=env,
                                           cwd=str(workdir / "home"))
            transport = stdio_client(params, errlog=errlog)
        # The SDK's per-request bound covers the handshake; calls have their own, shorter
        # bound (McpSession), so it is the connect bound here.
        client = Client(transport, read_timeout_seconds=spec.connect_timeout)
        try:
            await stack.enter_async_context(client)
        except Exception as exc:
            raise McpUnavailable(describe(exc, spec, errlog, "connect")) from None
        yield client


class McpSession:
    """One open connection, owned by a background task of its own.

    The SDK's transports run task groups that must be entered and left by one task; keeping
    them in a dedicated task means a failing connection can never cancel the caller (an
    engine step, a request handler). Connecting is bounded by ``spec.connect_timeout``,
    each call (tool list, tool call) by the spec's timeout. ``aclose``
    ends the task, which closes the connection and, for stdio, stops the process (stdin
    closed, then SIGTERM/SIGKILL to its process group) and removes its directory.
    """

    def __init__(self, spec: ConnectionSpec) -> None:
        self.spec = spec
        self._client: Client | None = None
        self._error: str | None = None
        self._ready = anyio.Event()
        self._closing = anyio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        try:
            async with connect(self.spec) as client:
                self._client = client
                self._ready.set()
                await self._closing.wait()
        except McpUnavailable as exc:
            self._error = str(exc)
        except Exception as exc:  # the connection broke while open
            self._error = describe(exc, self.spec)
        finally:
            self._client = None
            self._ready.set()

    async def start(self) -> None:
        """Connect (bounded by ``spec.connect_timeout``); raises McpUnavailable."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"mcp-{self.spec.server}")
        try:
            with anyio.fail_after(self.spec.connect_timeout):
                await self._ready.wait()
        except TimeoutError:
            await self.aclose()
            raise McpUnavailable(f"MCP server '{self.spec.server}' did not answer within "
                                 f"{self.spec.connect_timeout:g} s") from None
        if self._client is None:
            raise McpUnavailable(self._error or f"MCP server '{self.spec.server}' closed the "
                                 "connection")

    def _live(self) -> Client:
        if self._client is None:
            raise McpUnavailable(self._error or f"the connection to MCP server "
                                 f"'{self.spec.server}' is closed")
        return self._client

    async def list_tools(self) -> tuple[list[dict[str, Any]], dict[str, int]]:
        client = self._live()
        try:
            with anyio.fail_after(self.spec.timeout_seconds):
                return await list_tools(client, self.spec.redact)
        except Exception as exc:
            raise McpUnavailable(describe(exc, self.spec, doing="list the tools of")) from None

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        """The tool's result value (``result_value``); McpUnavailable with the server's
        message for an error result, a timeout or a broken connection."""
        client = self._live()
        try:
            with anyio.fail_after(self.spec.timeout_seconds):
                result = await client.call_tool(name, arguments)
        except TimeoutError:
            raise McpUnavailable(f"the tool '{name}' of MCP server '{self.spec.server}' did "
                                 f"not answer within {self.spec.timeout_seconds:g} s") from None
        except Exception as exc:
            raise McpUnavailable(describe(exc, self.spec)) from None
        try:
            return result_value(result)
        except McpUnavailable as exc:
            raise McpUnavailable(self.spec.redact(str(exc))[:MAX_MESSAGE * 4]) from None

    async def aclose(self) -> None:
        """Close the connection: an open one is given CLOSE_TIMEOUT to close itself; one
        still connecting (a start that timed out) is cancelled at once, which still stops
        its process (the SDK's shutdown is shielded and bounded)."""
        self._closing.set()
        task, self._task = self._task, None
        if task is None:
            return
        if self._ready.is_set():
            with anyio.move_on_after(CLOSE_TIMEOUT):
                await asyncio.shield(task)
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _tail(errlog: IO[str]) -> str:
    errlog.flush()
    fd = errlog.fileno()
    size = os.fstat(fd).st_size
    data = os.pread(fd, STDERR_TAIL, max(0, size - STDERR_TAIL))
    return data.decode("utf-8", errors="replace")


def describe(exc: BaseException, spec: ConnectionSpec, errlog: IO[str] | None = None,
             doing: str = "call") -> str:
    """A person-readable reason for a failure, secrets redacted."""
    leaves = _leaves(exc)
    chosen = next((e for kind in (EgressRefused, TimeoutError, httpx2.HTTPStatusError,
                                  httpx2.ConnectError, httpx2.TransportError, MCPError,
                                  McpUnavailable)
                   for e in leaves if isinstance(e, kind)), leaves[0])
    where = f"MCP server '{spec.server}'"
    bound = spec.connect_timeout if doing == "connect" else spec.timeout_seconds
    if isinstance(chosen, EgressRefused):
        message = f"the MCP server URL is refused: {chosen}"
    elif isinstance(chosen, TimeoutError):
        message = f"{where} did not answer within {bound:g} s"
    elif isinstance(chosen, httpx2.HTTPStatusError):
        message = (f"{where} answered HTTP {chosen.response.status_code} "
                   "(check the URL and the headers/credentials)")
    elif isinstance(chosen, httpx2.TransportError):
        message = (f"could not reach {where} at {redact_url(spec.url or '')}: "
                   f"{chosen or type(chosen).__name__}")
    elif isinstance(chosen, MCPError | McpUnavailable):
        message = f"{where}: {chosen}"
    else:
        detail = str(chosen) or type(chosen).__name__
        message = f"could not {doing} {where}: {detail}"
    if errlog is not None:
        with contextlib.suppress(OSError, ValueError):
            tail = _tail(errlog)
            if tail.strip():
                message += f" (server stderr: {tail.strip()})"
    return spec.redact(message)[:MAX_MESSAGE * 2]


LEFT_OUT_REASONS = {
    "name": "a name outside [A-Za-z0-9_.-]{1,128} or containing a secret",
    "count": f"beyond the first {MAX_TOOLS} tools",
    "schema": f"an input schema over {MAX_SCHEMA_BYTES // 1024} KiB",
    "total": f"beyond {MAX_LIST_BYTES // (1024 * 1024)} MiB of tool list",
}


def _redacted(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): _redacted(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v, redact) for v in value]
    return value


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str).encode("utf-8"))


def _truncated(text: str, limit: int) -> str:
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


async def list_tools(client: Client, redact: Callable[[str], str] = str,
                     ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The server's tools as ``[{name, description, input_schema}]``, every string passed
    through ``redact``, and how many were left out by reason (keys of ``LEFT_OUT_REASONS``):
    names outside ``[A-Za-z0-9_.-]{1,128}`` or changed by redaction, beyond MAX_TOOLS, an
    input schema over MAX_SCHEMA_BYTES, or beyond MAX_LIST_BYTES in all. Descriptions are cut
    to MAX_DESCRIPTION_BYTES."""
    found: list[dict[str, Any]] = []
    left_out = dict.fromkeys(LEFT_OUT_REASONS, 0)
    total = 2
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        for tool in page.tools:
            if not TOOL_NAME.match(tool.name) or redact(tool.name) != tool.name:
                left_out["name"] += 1
                continue
            if len(found) >= MAX_TOOLS:
                left_out["count"] += 1
                continue
            schema = _redacted(dict(tool.input_schema or {"type": "object"}), redact)
            if _json_size(schema) > MAX_SCHEMA_BYTES:
                left_out["schema"] += 1
                continue
            description = _truncated(redact(tool.description or tool.title or ""),
                                     MAX_DESCRIPTION_BYTES)
            entry = {"name": tool.name, "description": description, "input_schema": schema}
            size = _json_size(entry) + 1
            if total + size > MAX_LIST_BYTES:
                left_out["total"] += 1
                continue
            total += size
            found.append(entry)
        cursor = page.next_cursor
        if cursor is None:
            break
    return found, left_out


def result_value(result: CallToolResult) -> Any:
    """A tool result as a value: the structured content if the server sent one, else the
    text content joined (other content kinds are named, not inlined). Raises
    McpUnavailable with the server's message when the result is an error."""
    parts: list[str] = []
    for block in result.content:
        text = getattr(block, "text", None)
        parts.append(text if isinstance(text, str) else f"[{block.type} content]")
    joined = "\n".join(parts)
    if result.is_error:
        raise McpUnavailable(joined or "the tool reported an error without a message")
    if result.structured_content is not None:
        return result.structured_content
    return joined
