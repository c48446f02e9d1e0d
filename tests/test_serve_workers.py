"""`enginex serve --workers N`: N API processes on one port, and one run worker, never N.

Threat model (capacity, not security): one API process tops out at one core, so a deployment
needs several; but if every API process also ran the embedded run worker, N processes would
run N workers, each with its own connection pool and slots, against a budget sized for one.
The test starts the real command on an embedded SQLite data directory and observes the
processes from /proc (no endpoint reveals a pid).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from enginex.config import Settings
from tests.factories import (
    Server,
    deploy_agent,
    free_port,
    make_org,
    make_platform_admin,
    start_session,
    wait_for,
    wait_for_status,
)

ENGINEX = Path(sys.executable).with_name("enginex")


def _children(pid: int) -> dict[int, str]:
    """The direct children of ``pid`` with their command lines, read from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found[int(entry.name)] = cmdline
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _client_connection_owners(pids: set[int], port: int) -> set[int]:
    """Which of ``pids`` hold an established TCP connection accepted on ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # ESTABLISHED, server side
                inodes.add(fields[9])
    owners = set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        if any(link == f"socket:[{inode}]" for link in links for inode in inodes):
            owners.add(pid)
    return owners


@pytest.fixture
def served_by_two(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Server, Path]]:
    data_dir = tmp_path / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEX_")}
    env.update(ENGINEX_DATA_DIR=str(data_dir), ENGINEX_BASE_URL=f"http://127.0.0.1:{port}",
               ENGINEX_LOG_LEVEL="WARNING")
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        # Its own process group: whatever happens, the cleanup ends the children too.
        process = subprocess.Popen([str(ENGINEX), "serve", "--workers", "2", "--port", str(port)],
                                   env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = Server(base_url=f"http://127.0.0.1:{port}", backend="sqlite", app=None,
                    settings=Settings(data_dir=data_dir, base_url=f"http://127.0.0.1:{port}"))
    try:
        yield process, server, log_path
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_two_api_processes_serve_and_one_worker_runs_each_session_once(
        served_by_two: tuple[subprocess.Popen[bytes], Server, Path]) -> None:
    process, server, log_path = served_by_two

    def healthy() -> bool:
        assert process.poll() is None, log_path.read_text()
        try:
            return httpx.get(f"{server.base_url}/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, what="`enginex serve --workers 2` to answer /healthz", timeout=120)

    def api_processes() -> set[int] | None:
        found = {pid for pid, cmd in _children(process.pid).items()
                 if "multiprocessing" in cmd and "resource_tracker" not in cmd}
        return found if len(found) == 2 else None

    api = wait_for(api_processes, what="two API processes", timeout=60)
    workers = [pid for pid, cmd in _children(process.pid).items() if "enginex.cli worker" in cmd]
    assert len(workers) == 1, _children(process.pid)

    # Both API processes accept connections on the shared port: hold keep-alive
    # connections open until each process owns at least one.
    port = int(server.base_url.rsplit(":", 1)[1])
    clients: list[httpx.Client] = []
    try:
        def both_serve() -> bool:
            for _ in range(8):
                client = httpx.Client(base_url=server.base_url, timeout=30)
                clients.append(client)
                assert client.get("/healthz").status_code == 200
            return _client_connection_owners(api, port) == api

        wait_for(both_serve, what="both API processes to hold client connections",
                 timeout=60)
    finally:
        for client in clients:
            client.close()

    # A session started through either process is executed once, by the one worker.
    org = make_org(server, make_platform_admin(server), "serve", with_keys=False)
    deploy_agent(org, "noop_three")
    run = start_session(org, {}, agent="noop-three")
    done = wait_for_status(org, run["id"], {"succeeded", "failed"}, timeout=120)
    assert done["status"] == "succeeded", done
    with sqlite3.connect(server.settings.data_dir / "enginex.db") as db:
        assert db.execute("SELECT count(*) FROM workers").fetchone() == (1,)
    assert [pid for pid, cmd in _children(process.pid).items()
            if "enginex.cli worker" in cmd] == workers

    process.terminate()
    assert process.wait(90) in (0, -signal.SIGTERM), log_path.read_text()
    assert "Traceback" not in log_path.read_text()
    wait_for(lambda: not any(_alive(pid) for pid in (*api, *workers)),
             what="the API and worker processes to exit with the server", timeout=60)
