"""Test fixtures: a real server per database backend, and two tenants, org_a and org_b.

Every test that uses ``server`` runs twice: against SQLite and against PostgreSQL (with
row-level security, the app connected as a role that cannot bypass it). When PostgreSQL is not
reachable the PostgreSQL half is skipped locally and FAILS under CI=true.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn

from enginex.app import create_app
from enginex.auth.passwords import hasher_parameters
from enginex.config import Settings
from enginex.kit.crypto import generate_master_key
from enginex.migrate import upgrade
from tests.accounts_support import SmtpServer
from tests.factories import Org, Server, free_port, make_org, make_platform_admin, wait_for

# Cheap argon2 parameters (enginex/auth/passwords.py) for every server the tests run, in this
# process or in a subprocess that inherits the environment; ENGINEX_ARGON2_TEST_PROFILE=false
# runs the suite with the production parameters. Resolved now, before any test cleans the
# environment, so the whole session hashes alike.
os.environ.setdefault("ENGINEX_ARGON2_TEST_PROFILE", "true")
hasher_parameters()

PG_ADMIN_DSN = os.environ.get("ENGINEX_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
OWNER_ROLE = "enginex_test_owner"
APP_ROLE = "enginex_test_app"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


# Database backends the ``server`` tests run on; ``make test-fast`` sets "sqlite". CI runs both.
TEST_BACKENDS = {b.strip() for b in
                 os.environ.get("ENGINEX_TEST_BACKENDS", "sqlite,postgres").split(",")
                 if b.strip()}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the fuzz modules ``fuzz`` (``-m "not fuzz"`` leaves them out) and deselect tests
    of a backend outside ``ENGINEX_TEST_BACKENDS``."""
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        if item.path.name.startswith("test_fuzz_"):
            item.add_marker(pytest.mark.fuzz)
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        (dropped if backend is not None and backend not in TEST_BACKENDS else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def _pg_available() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=30):  # a busy server is no absent one
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]


def _ensure_pg_roles(admin: psycopg.Connection) -> None:
    # Parallel test processes (pytest-xdist) share the cluster's roles: one creates them at a
    # time (a transaction-level advisory lock), the others then find them.
    admin.execute("SELECT pg_advisory_xact_lock(hashtext('enginex_test_roles'))")
    for role in (OWNER_ROLE, APP_ROLE):
        exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if not exists:
            admin.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB')


class PgDatabase:
    """A fresh database owned by the owner role; dropped at the end of the session."""

    def __init__(self) -> None:
        self.name = f"enginex_test_{os.getpid()}_{secrets.token_hex(3)}"
        with psycopg.connect(PG_ADMIN_DSN) as admin:
            with admin.transaction():
                _ensure_pg_roles(admin)
            admin.autocommit = True  # CREATE DATABASE cannot run in a transaction
            admin.execute(f'CREATE DATABASE "{self.name}" OWNER "{OWNER_ROLE}"')

    def url(self, role: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{role}@127.0.0.1:5432/{self.name}"

    def dsn(self, role: str) -> str:
        return self.url(role, "postgresql")

    def drop(self) -> None:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def settings_for(backend: str, tmp: Path, pg: PgDatabase | None) -> Settings:
    # Every test client is 127.0.0.1: the per-address limit of anonymous routes is lifted
    # (tests/test_usage.py checks it on a deployment of its own).
    common = {"data_dir": tmp, "master_key": generate_master_key(),
              "base_url": "http://127.0.0.1", "log_level": "WARNING",
              "rate_limit_anonymous_per_minute": 1_000_000}
    if backend == "sqlite":
        return Settings(**common)
    assert pg is not None
    return Settings(**common, database_url=pg.url(APP_ROLE),
                    migration_database_url=pg.url(OWNER_ROLE))


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        problem = _pg_available()
        if problem:
            message = f"PostgreSQL is not reachable at {PG_ADMIN_DSN}: {problem}"
            if IN_CI:
                pytest.fail(f"{message} (mandatory in CI)")
            pytest.skip(message)
    return str(request.param)


@pytest.fixture(scope="session")
def pg_database(backend: str) -> Iterator[PgDatabase | None]:
    if backend != "postgres":
        yield None
        return
    db = PgDatabase()
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture(scope="session")
def settings(backend: str, pg_database: PgDatabase | None,
             tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = settings_for(backend, tmp_path_factory.mktemp(f"data-{backend}"), pg_database)
    upgrade(settings)
    return settings


class _ServerThread:
    """A uvicorn server on a free port of 127.0.0.1 whose ENGINEX_BASE_URL is that address,
    as in a real deployment: Origin checks compare with the base URL only."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.settings = settings.model_copy(update={"base_url": f"http://127.0.0.1:{self.port}"})
        self.app = create_app(self.settings)
        # Keep-alive well above uvicorn's 5 s: on a loaded machine a test client's pooled
        # connection can sit idle that long, and a request sent as the server closes it fails
        # with "Server disconnected without sending a response" (a harness race, not the app).
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on",
                                                    timeout_keep_alive=120))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(),
                 what="the test server to start", interval=0.02)
        if not self.server.started:
            raise RuntimeError("test server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextmanager
def separate_deployment(backend: str, data_dir: Path, **overrides: Any) -> Iterator[Server]:
    """A deployment of its own (fresh database, settings ``overrides``, e.g.
    ``allow_private_network=True`` for tests whose servers live on 127.0.0.1), running until
    the block ends; its PostgreSQL database is dropped afterwards."""
    pg = PgDatabase() if backend == "postgres" else None
    try:
        settings = settings_for(backend, data_dir, pg).model_copy(update=overrides)
        upgrade(settings)
        thread = _ServerThread(settings)
        thread.start()
        try:
            yield Server(base_url=f"http://127.0.0.1:{thread.port}", settings=thread.settings,
                         backend=backend, app=thread.app)
        finally:
            thread.stop()
    finally:
        if pg is not None:
            pg.drop()


@pytest.fixture(scope="session")
def server(settings: Settings, backend: str) -> Iterator[Server]:
    thread = _ServerThread(settings)
    thread.start()
    try:
        yield Server(base_url=f"http://127.0.0.1:{thread.port}", settings=thread.settings,
                     backend=backend, app=thread.app)
    finally:
        thread.stop()


@pytest.fixture(scope="session")
def platform_admin(server: Server):
    return make_platform_admin(server)


@pytest.fixture
def org_a(server: Server, platform_admin) -> Org:
    return make_org(server, platform_admin, "a")


@pytest.fixture
def org_b(server: Server, platform_admin) -> Org:
    return make_org(server, platform_admin, "b")


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 that keeps what it receives, for the mail
    tests (tests/accounts_support.py)."""
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
