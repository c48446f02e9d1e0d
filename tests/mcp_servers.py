"""MCP servers for the tests: a real ``MCPServer`` over Streamable HTTP on 127.0.0.1, and the
stdio server script (tests/fixtures/mcp_stdio_server.py) started through a catalog entry.

HTTP tools: ``echo`` (returns its text), ``whoami`` (the Authorization header the request
carried, to prove a credential header arrives), ``fail`` (an error result with a message).
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

STDIO_SERVER = Path(__file__).parent / "fixtures" / "mcp_stdio_server.py"


def stdio_catalog_entry(name: str, **extra: object) -> dict[str, object]:
    """A catalog entry body that runs the stdio test server with the test Python."""
    return {"name": name, "description": "The test stdio server", "command": sys.executable,
            "args": [str(STDIO_SERVER)], **extra}


def make_http_server() -> MCPServer:
    server = MCPServer("enginex-test-http", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def whoami(ctx: Context) -> str:
        """The Authorization header of the request that called this tool."""
        return (ctx.headers or {}).get("authorization", "")

    @server.tool()
    def fail(message: str) -> str:
        """Always fails with the given message."""
        raise ToolError(f"failed on purpose: {message}")

    return server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_http_mcp() -> Iterator[str]:
    """A fresh HTTP MCP server in a thread; yields its endpoint URL (``.../mcp``)."""
    port = _free_port()
    app = make_http_server().streamable_http_app()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test MCP server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
