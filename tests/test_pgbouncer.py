"""EngineX through PgBouncer in transaction pooling mode (docs/SCALING.md).

Threat model: in transaction mode consecutive transactions of one client run on different
server connections, and one server connection serves many clients in turn. Anything
session-level would leak between tenants: a tenant id set with ``SET`` (session scope) would
stay on a server connection and be read by the next client's transaction. EngineX sets the
tenant with ``set_config('app.tenant_id', ..., true)``, local to the transaction, and re-sets
it at the start of every transaction; so two tenants' requests interleaved many times over
two server connections must never see each other's rows under row-level security, and
sessions must run to completion. psycopg's prepared statements are session-level too:
``ENGINEX_DB_PGBOUNCER=true`` turns them off.

Needs the ``pgbouncer`` binary (Debian package, installed by scripts/test.sh) and PostgreSQL
on 127.0.0.1:5432; missing either skips locally and FAILS under CI=true.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from enginex.config import Settings
from enginex.kit.crypto import generate_master_key
from enginex.migrate import upgrade
from tests.conftest import (
    APP_ROLE,
    IN_CI,
    OWNER_ROLE,
    PG_ADMIN_DSN,
    PgDatabase,
    _pg_available,
    _ServerThread,
)
from tests.factories import (
    Org,
    Server,
    deploy_agent,
    free_port,
    make_org,
    make_platform_admin,
    start_session,
    wait_for,
    wait_for_status,
)

SYSTEM_USER = "postgres"  # pgbouncer refuses to run as root
SERVER_CONNECTIONS = 2  # default_pool_size: every request shares two server connections


def _unavailable(problem: str) -> None:
    if IN_CI:
        pytest.fail(f"{problem} (mandatory in CI)")
    pytest.skip(problem)


def _pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None)


class PgBouncer:
    """A pgbouncer process of this test: transaction pooling, trust authentication, a free
    port on 127.0.0.1, in front of the shared PostgreSQL on 127.0.0.1:5432."""

    def __init__(self, binary: str, users: tuple[str, ...]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="enginex-pgbouncer-"))
        self.port = free_port()
        self.log = self.root / "pgbouncer.log"
        (self.root / "userlist.txt").write_text(
            "".join(f'"{user}" ""\n' for user in users))
        (self.root / "pgbouncer.ini").write_text(f"""\
[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.root / 'userlist.txt'}
pool_mode = transaction
default_pool_size = {SERVER_CONNECTIONS}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 200
ignore_startup_parameters = extra_float_digits,options
logfile = {self.log}
""")
        command = [binary, str(self.root / "pgbouncer.ini")]
        if os.geteuid() == 0:
            shutil.chown(self.root, SYSTEM_USER)
            for child in self.root.iterdir():
                shutil.chown(child, SYSTEM_USER)
            command = ["runuser", "-u", SYSTEM_USER, "--", *command]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else "(no log)"

    def wait_ready(self) -> None:
        def accepting() -> bool:
            assert self.process.poll() is None, f"pgbouncer exited:\n{self.log_text()}"
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0
        wait_for(accepting, what="pgbouncer to listen", timeout=60)

    def url(self, role: str, database: str) -> str:
        return f"postgresql+psycopg://{role}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def bounced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, PgDatabase]]:
    """A server whose every connection goes through PgBouncer (transaction mode, two server
    connections), on a fresh database migrated directly (migrations need a session)."""
    problem = _pg_available()
    if problem:
        _unavailable(f"PostgreSQL is not reachable at {PG_ADMIN_DSN}: {problem}")
    binary = _pgbouncer_binary()
    if binary is None:
        _unavailable("pgbouncer is not installed (apt-get install -y pgbouncer; "
                     "scripts/test.sh installs it)")
    assert binary is not None
    pg = PgDatabase()
    bouncer = PgBouncer(binary, (APP_ROLE, OWNER_ROLE))
    try:
        bouncer.wait_ready()
        settings = Settings(data_dir=tmp_path_factory.mktemp("data-pgbouncer"),
                            master_key=generate_master_key(), base_url="http://127.0.0.1",
                            log_level="WARNING", database_url=bouncer.url(APP_ROLE, pg.name),
                            migration_database_url=pg.url(OWNER_ROLE), db_pgbouncer=True)
        upgrade(settings)
        thread = _ServerThread(settings)
        thread.start()
        try:
            yield (Server(base_url=f"http://127.0.0.1:{thread.port}", settings=thread.settings,
                          backend="postgres", app=thread.app), pg)
        finally:
            thread.stop()
    finally:
        bouncer.stop()
        pg.drop()


def _app_backends(pg: PgDatabase) -> int:
    with psycopg.connect(PG_ADMIN_DSN) as admin:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                            "AND usename = %s", (pg.name, APP_ROLE)).fetchone()
    assert row is not None
    return int(row[0])


def test_two_tenants_interleaved_over_two_server_connections_never_see_each_other(
        bounced: tuple[Server, PgDatabase]) -> None:
    server, pg = bounced
    admin = make_platform_admin(server)
    orgs = [make_org(server, admin, label, with_keys=False) for label in ("a", "b")]
    started: dict[str, set[str]] = {}
    for org in orgs:
        deploy_agent(org, "noop_three")
        started[org.slug] = {start_session(org, {}, agent="noop-three")["id"]
                             for _ in range(3)}

    def read(org: Org, turn: int) -> None:
        client = org.members["viewer" if turn % 2 else "operator"].client
        sessions = client.get(f"/api/v1/orgs/{org.slug}/sessions")
        assert sessions.status_code == 200, sessions.text
        seen = {s["id"] for s in sessions.json()["items"]}
        assert seen <= started[org.slug], (org.slug, seen - started[org.slug])
        members = client.get(f"/api/v1/orgs/{org.slug}/members")
        assert members.status_code == 200, members.text
        emails = {m["email"] for m in members.json()}
        assert emails and all(org.slug in email for email in emails), (org.slug, emails)

    # Many requests of both tenants at once, alternating, over SERVER_CONNECTIONS backends.
    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(read, orgs[i % 2], i) for i in range(120)]:
            future.result()
    assert _app_backends(pg) <= SERVER_CONNECTIONS

    # Every session runs to completion through the same two connections.
    for org in orgs:
        for run_id in started[org.slug]:
            done = wait_for_status(org, run_id, {"succeeded", "failed"}, timeout=120)
            assert done["status"] == "succeeded", done
        listed = org.members["viewer"].client.get(f"/api/v1/orgs/{org.slug}/sessions").json()
        assert {s["id"] for s in listed["items"]} == started[org.slug]
    assert _app_backends(pg) <= SERVER_CONNECTIONS
