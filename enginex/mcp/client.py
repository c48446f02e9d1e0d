"""Connecting to one MCP server (official ``mcp`` SDK), for tool discovery and tool calls.

``connect(spec)`` yields an initialized ``mcp.Client``:

* ``http``: Streamable HTTP through an httpx2 client whose every TCP connection passes the
  egress guard (``tools/egress.py``, re-checked at connect time, DNS rebinding included); the
  URL is also checked up front for a clear message. Proxy variables are ignored.
* ``stdio``: the catalog entry's command, started through the sandbox launcher
  (``python -I -m enginex.mcp.sandbox``: resource limits, new session, clean environment)
  with ``cwd`` and ``HOME`` in a fresh temporary directory that is removed afterwards. The
  environment is PATH, LANG, HOME and the organization's allowed variables -- nothing of the
  platform's (no ENGINEX_*, no database URLs). The server's stderr goes to a file in that
  directory; its last lines may appear (redacted) in error messages.

Every failure is reported as ``McpUnavailable`` with a message safe to show and store (the
resolved secret values are redacted from it).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from enginex.credentials.runtime import redact_text, variants
from enginex.tools.egress import EgressRefused, check_url_async, guarded_sdk_transport

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
BASE_ENV = ("PATH", "LANG", "HOME")
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
MAX_TOOLS = 500
MAX_PAGES = 20
MAX_DESCRIPTION = 2000
MAX_MESSAGE = 500
STDERR_TAIL = 400
CLOSE_TIMEOUT = 10.0  # stdio shutdown: 2 s grace, SIGTERM, 2 s, SIGKILL


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
    secrets: tuple[str, ...] = ()

    def redact(self, text: str) -> str:
        forms = sorted({f for s in self.secrets for f in variants(s)}, key=len, reverse=True)
        return redact_text(text, forms)


def sandbox_argv(spec: ConnectionSpec) -> list[str]:
    """The launcher command line for a stdio server (see ``enginex/mcp/sandbox.py``)."""
    assert spec.command is not None
    keep = ",".join([*BASE_ENV, *sorted(spec.env)])
    cpu = max(10, int(spec.timeout_seconds) * 2)
    return [sys.executable, "-I", "-m", "enginex.mcp.sandbox", "--memory-mb", str(spec.memory_mb),
            "--cpu-seconds", str(cpu), "--keep-env", keep, "--", spec.command, *spec.args]


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
            stderr_path: Path | None = None
        else:
            workdir = Path(tempfile.mkdtemp(prefix="enginex-mcp-"))
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            home = workdir / "home"
            home.mkdir(mode=0o700)
            stderr_path = workdir / "stderr.log"
            errlog = stack.enter_context(stderr_path.open("w", encoding="utf-8"))
            argv = sandbox_argv(spec)
            env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": str(home), **spec.env}
            params = StdioServerParameters(command=argv[0], args=argv[1:], env=env,
                                           cwd=str(workdir / "home"))
            transport = stdio_client(params, errlog=errlog)
        client = Client(transport, read_timeout_seconds=spec.timeout_seconds)
        try:
            await stack.enter_async_context(client)
        except Exception as exc:
            raise McpUnavailable(describe(exc, spec, stderr_path, "connect")) from None
        yield client


class McpSession:
    """One open connection, owned by a background task of its own.

    The SDK's transports run task groups that must be entered and left by one task; keeping
    them in a dedicated task means a failing connection can never cancel the caller (an
    engine step, a request handler). Calls are bounded by the spec's timeout. ``aclose``
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
        """Connect (bounded by the timeout); raises McpUnavailable."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"mcp-{self.spec.server}")
        try:
            with anyio.fail_after(self.spec.timeout_seconds):
                await self._ready.wait()
        except TimeoutError:
            await self.aclose()
            raise McpUnavailable(f"MCP server '{self.spec.server}' did not answer within "
                                 f"{self.spec.timeout_seconds:g} s") from None
        if self._client is None:
            raise McpUnavailable(self._error or f"MCP server '{self.spec.server}' closed the "
                                 "connection")

    def _live(self) -> Client:
        if self._client is None:
            raise McpUnavailable(self._error or f"the connection to MCP server "
                                 f"'{self.spec.server}' is closed")
        return self._client

    async def list_tools(self) -> tuple[list[dict[str, Any]], int]:
        client = self._live()
        try:
            with anyio.fail_after(self.spec.timeout_seconds):
                return await list_tools(client)
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
        self._closing.set()
        task, self._task = self._task, None
        if task is None:
            return
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


def describe(exc: BaseException, spec: ConnectionSpec, stderr_path: Path | None = None,
             doing: str = "call") -> str:
    """A person-readable reason for a failure, secrets redacted."""
    leaves = _leaves(exc)
    chosen = next((e for kind in (EgressRefused, TimeoutError, httpx2.HTTPStatusError,
                                  httpx2.ConnectError, httpx2.TransportError, MCPError,
                                  McpUnavailable)
                   for e in leaves if isinstance(e, kind)), leaves[0])
    where = f"MCP server '{spec.server}'"
    if isinstance(chosen, EgressRefused):
        message = f"the MCP server URL is refused: {chosen}"
    elif isinstance(chosen, TimeoutError):
        message = f"{where} did not answer within {spec.timeout_seconds:g} s"
    elif isinstance(chosen, httpx2.HTTPStatusError):
        message = (f"{where} answered HTTP {chosen.response.status_code} "
                   "(check the URL and the headers/credentials)")
    elif isinstance(chosen, httpx2.TransportError):
        message = f"could not reach {where} at {spec.url}: {chosen or type(chosen).__name__}"
    elif isinstance(chosen, MCPError | McpUnavailable):
        message = f"{where}: {chosen}"
    else:
        detail = str(chosen) or type(chosen).__name__
        message = f"could not {doing} {where}: {detail}"
    if stderr_path is not None:
        with contextlib.suppress(OSError):
            tail = stderr_path.read_text(encoding="utf-8", errors="replace")[-STDERR_TAIL:]
            if tail.strip():
                message += f" (server stderr: {tail.strip()})"
    return spec.redact(message)[:MAX_MESSAGE * 2]


async def list_tools(client: Client) -> tuple[list[dict[str, Any]], int]:
    """The server's tools as ``[{name, description, input_schema}]`` and how many were left
    out (names outside ``[A-Za-z0-9_.-]{1,128}``, or beyond MAX_TOOLS)."""
    found: list[dict[str, Any]] = []
    skipped = 0
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        for tool in page.tools:
            if not TOOL_NAME.match(tool.name) or len(found) >= MAX_TOOLS:
                skipped += 1
                continue
            found.append({"name": tool.name,
                          "description": (tool.description or tool.title or "")[:MAX_DESCRIPTION],
                          "input_schema": dict(tool.input_schema or {"type": "object"})})
        cursor = page.next_cursor
        if cursor is None:
            break
    return found, skipped


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
