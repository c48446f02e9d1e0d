"""MCP servers for the tests: a real ``MCPServer`` over Streamable HTTP on 127.0.0.1, and the
stdio server script (tests/fixtures/mcp_stdio_server.py) started through a catalog entry.

When the tests run as root (CI), the sandbox runs stdio servers as ``nobody``, which may not
be able to run the test Python (a pyenv under /root, say): ``stdio_python`` then picks a
Python of the same version that ``nobody`` can run, and the server script puts the test
environment's packages on its path (``--site-packages``).

HTTP tools: ``echo`` (returns its text), ``whoami`` (the Authorization header the request
carried, to prove a credential header arrives), ``fail`` (an error result with a message).
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from tests.factories import free_port, wait_for

STDIO_SERVER = Path(__file__).parent / "fixtures" / "mcp_stdio_server.py"
SITE_PACKAGES = sysconfig.get_paths()["purelib"]
STDIO_ACCOUNT = "nobody"  # ENGINEX_MCP_STDIO_USER's default, which the test deployments use


def _probe(python: str, site: str) -> bool:
    probe = (f"import sys; sys.path.insert(0, {site!r}); import mcp.server.mcpserver; "
             f"assert sys.version_info[:2] == {sys.version_info[:2]!r}")
    try:
        done = subprocess.run([python, "-c", probe], user=STDIO_ACCOUNT,
                              group=pwd.getpwnam(STDIO_ACCOUNT).pw_gid, extra_groups=[],
                              cwd="/", capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _mcp_distributions() -> list[metadata.Distribution]:
    """``mcp`` and everything it needs (not extras), as installed in the test environment."""
    found: dict[str, metadata.Distribution] = {}
    todo = ["mcp"]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:
            continue
        try:
            found[key] = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement for another platform (pywin32)
        todo += [re.split(r"[ ;<>=!~\[(]", r)[0] for r in found[key].requires or []
                 if "extra ==" not in r]
    return list(found.values())


def _readable_copy() -> str:
    """A copy of the packages the stdio server imports in a directory every account can read
    (the test environment may live under a directory ``nobody`` cannot enter, /root say)."""
    target = Path(tempfile.mkdtemp(prefix="enginex-mcp-site-"))
    atexit.register(shutil.rmtree, target, True)
    for dist in _mcp_distributions():
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            if file.parts[:1] == ("..",) or not source.is_file():
                continue
            (target / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / file)
    for path in (target, *target.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return str(target)


@lru_cache(maxsize=1)
def stdio_runtime() -> tuple[str, str]:
    """(python, site-packages) for the stdio test server: a Python that the stdio servers'
    account can run, and a directory it can read that holds ``mcp``. As root (CI) the sandbox
    runs servers as ``nobody``, which may not run the test Python or read its packages; then a
    system Python of the same version and a readable copy of the packages serve. RuntimeError
    if there is no such Python."""
    if os.geteuid() != 0:
        return sys.executable, SITE_PACKAGES
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = list(dict.fromkeys(c for c in (
        sys.executable, os.path.realpath(sys.executable), f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}", shutil.which(f"python{version}") or "") if c))
    for site in (SITE_PACKAGES, None):
        site = site or _readable_copy()
        for candidate in candidates:
            if _probe(candidate, site):
                return candidate, site
    raise RuntimeError(f"no Python {version} that the account '{STDIO_ACCOUNT}' can run and "
                       f"that imports mcp: install python{version} (Debian: python3)")


def stdio_python() -> str:
    return stdio_runtime()[0]


def stdio_catalog_entry(name: str, *, server_args: tuple[str, ...] = (),
                        **extra: object) -> dict[str, object]:
    """A catalog entry body that runs the stdio test server (``server_args``: its options,
    such as ``--leaky``, see the fixture)."""
    return {"name": name, "description": "The test stdio server", "command": stdio_python(),
            "args": [str(STDIO_SERVER), "--site-packages", stdio_runtime()[1], *server_args],
            **extra}


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


@contextmanager
def serve_http_mcp() -> Iterator[str]:
    """A fresh HTTP MCP server in a thread; yields its endpoint URL (``.../mcp``)."""
    port = free_port()
    app = make_http_server().streamable_http_app()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(),
             what="the test MCP server to start", interval=0.02)
    if not server.started:
        raise RuntimeError("the test MCP server did not start")
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def greeting_listener() -> Iterator[int]:
    """A TCP listener on 127.0.0.1 that greets every connection with 'hello' (what a sandboxed
    server without network must not reach); yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.sendall(b"hello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
