"""The PostgreSQL connection budget checked at start-up (docs/SCALING.md).

Threat model (availability): processes whose pools together exceed the server's
max_connections start fine and then fail with "too many clients" under load, at the worst
moment. A process (or `enginex serve --workers N` with its run worker) that alone exceeds the
limit is refused at start-up with the numbers; an operator-stated total above it is warned.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest

from enginex.cli import _check_connection_budget
from enginex.config import Settings
from enginex.db import ConnectionBudgetExceeded, Database, check_connection_budget
from tests.conftest import IN_CI, PG_ADMIN_DSN, _pg_available

PG_URL = PG_ADMIN_DSN.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(scope="module")
def server_limit() -> int:
    problem = _pg_available()
    if problem:
        message = f"PostgreSQL is not reachable at {PG_ADMIN_DSN}: {problem}"
        if IN_CI:
            pytest.fail(f"{message} (mandatory in CI)")
        pytest.skip(message)
    with psycopg.connect(PG_ADMIN_DSN) as conn:
        total = int(conn.execute("SHOW max_connections").fetchone()[0])
        reserved = int(conn.execute("SHOW superuser_reserved_connections").fetchone()[0])
    return total - reserved


def settings(**overrides: object) -> Settings:
    return Settings(database_url=PG_URL, allow_dev_key=True, **overrides)


def check(configured: Settings, processes: int = 1) -> int | None:
    async def work() -> int | None:
        db = Database(configured)
        try:
            return await check_connection_budget(db, configured, processes=processes)
        finally:
            await db.dispose()
    return asyncio.run(work())


def test_a_pool_within_the_server_limit_starts(server_limit: int) -> None:
    assert check(settings(db_pool_size=2, db_max_overflow=1)) == server_limit


def test_one_process_whose_pool_alone_exceeds_max_connections_is_refused(
        server_limit: int) -> None:
    with pytest.raises(ConnectionBudgetExceeded) as refused:
        check(settings(db_pool_size=server_limit, db_max_overflow=1))
    message = str(refused.value)
    assert f"{server_limit + 1} PostgreSQL connections" in message
    assert "max_connections" in message and "ENGINEX_DB_POOL_SIZE" in message


def test_serve_with_n_processes_counts_every_pool(server_limit: int) -> None:
    """`enginex serve --workers N`: N API processes and the run worker each have a pool."""
    per_process = server_limit // 3 + 1
    configured = settings(db_pool_size=per_process, db_max_overflow=0)
    assert check(configured, processes=2) == server_limit
    with pytest.raises(ConnectionBudgetExceeded, match="3 x"):
        _check_connection_budget(configured, 3, "`enginex serve` (3 processes)")


def test_a_stated_total_above_the_limit_is_warned(server_limit: int,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="enginex.db"):
        check(settings(db_pool_size=2, db_max_overflow=0,
                       db_max_client_connections=server_limit + 50))
    assert "ENGINEX_DB_MAX_CLIENT_CONNECTIONS" in caplog.text


def test_through_pgbouncer_the_server_limit_is_not_applied(server_limit: int) -> None:
    assert check(settings(db_pool_size=server_limit, db_max_overflow=1,
                          db_pgbouncer=True)) is None


def test_sqlite_has_no_budget_to_check(tmp_path: object) -> None:
    configured = Settings(data_dir=tmp_path)  # type: ignore[arg-type]
    assert check(configured) is None
