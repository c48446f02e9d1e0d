"""The engine's own SQL never touches another tenant's rows.

The step hot path (``runs/engine.py``) runs constant ``text()`` statements instead of the
scoped repositories: each filters on the run's tenant explicitly, and on PostgreSQL row-level
security applies too. On SQLite the explicit filter is the only layer, so these tests run on
both backends and check the statements themselves, not RLS:

* every statement the engine executes for tenant A's steps (tool, LLM, approval and report
  nodes, the approval's resumption) filters on ``tenant_id`` when it reads or writes a tenant
  table, and none carries tenant B's id;
* tenant B's rows in every tenant table are byte-for-byte the same after A's runs went
  through the engine;
* the engine's entry points called with B's tenant and A's run (a mixed-up claim) do nothing:
  no step, no failure, no release of A's lease.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, text

import enginex.models  # noqa: F401 - every table registered in the metadata
from enginex.db import Base, set_tenant
from enginex.runs.engine import execute_step, fail_run, release_interrupted
from enginex.runs.scheduler import claim_runs
from tests.conftest import separate_deployment
from tests.factories import (
    Actor,
    Org,
    Server,
    deploy_agent,
    make_org,
    make_platform_admin,
    pending_approval,
    start_session,
)
from tests.test_worker import api, drain, engine_for, load_run

TENANT_TABLES = sorted(t.name for t in Base.metadata.sorted_tables if "tenant_id" in t.c)
# Platform-wide statements by design (they return ids only): the claim, in either dialect.
PLATFORM_WIDE = ("enginex_claim_runs", "run_queue_state", "FROM workers", "workers w")


@pytest.fixture(scope="module")
def engine_server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with separate_deployment(backend, tmp_path_factory.mktemp(f"engine-iso-{backend}"),
                             embedded_worker=False) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def admin(engine_server: Server) -> Actor:
    return make_platform_admin(engine_server)


@pytest.fixture(scope="module")
def tenant_a(engine_server: Server, admin: Actor) -> Org:
    org = make_org(engine_server, admin, "ia", with_keys=False)
    deploy_agent(org)
    return org


@pytest.fixture(scope="module")
def tenant_b(engine_server: Server, admin: Actor) -> Org:
    org = make_org(engine_server, admin, "ib", with_keys=False)
    deploy_agent(org)
    return org


async def tenant_rows(server: Server, org: Org) -> dict[str, list[str]]:
    """Every row of ``org`` in every tenant table, read in a session bound to ``org``."""
    rows: dict[str, list[str]] = {}
    async with engine_for(server) as (db, _):
        async with db.sessions() as session:
            await set_tenant(session, uuid.UUID(org.id))
            for table in TENANT_TABLES:
                result = await session.execute(
                    text(f"SELECT * FROM {table} WHERE tenant_id = :t"),
                    {"t": uuid.UUID(org.id) if server.backend == "postgres"
                     else uuid.UUID(org.id).hex})
                rows[table] = sorted(repr(tuple(row)) for row in result.all())
    return rows


def _values(params: Any) -> Iterator[Any]:
    if isinstance(params, dict):
        for value in params.values():
            yield from _values(value)
    elif isinstance(params, list | tuple):
        for value in params:
            yield from _values(value)
    else:
        yield params


def _mentions(value: Any, tenant: uuid.UUID) -> bool:
    return value == tenant or (isinstance(value, str | bytes) and (
        str(tenant) in str(value) or tenant.hex in str(value)))


def test_the_engines_statements_never_touch_another_tenants_rows(
        engine_server: Server, tenant_a: Org, tenant_b: Org) -> None:
    a_tenant, b_tenant = uuid.UUID(tenant_a.id), uuid.UUID(tenant_b.id)
    # B has data of every kind the engine writes: a run parked at its approval (steps,
    # events, checkpoints, the approval, usage of the model).
    b_run = start_session(tenant_b)
    asyncio.run(_drain(engine_server))
    assert api(tenant_b, f"/sessions/{b_run['id']}")["status"] == "waiting_approval"
    before = asyncio.run(tenant_rows(engine_server, tenant_b))
    assert before["runs"] and before["checkpoints"] and before["approvals"]

    a_run = start_session(tenant_a)
    statements: list[tuple[str, Any]] = []
    asyncio.run(_drain(engine_server, statements))
    assert api(tenant_a, f"/sessions/{a_run['id']}")["status"] == "waiting_approval"
    approval = pending_approval(tenant_a, a_run["id"])["id"]
    decided = tenant_a.members["admin"].client.post(
        f"/api/v1/orgs/{tenant_a.slug}/approvals/{approval}/decision",
        json={"decision": "approve"})
    assert decided.status_code == 200, decided.text
    asyncio.run(_drain(engine_server, statements))
    done = api(tenant_a, f"/sessions/{a_run['id']}")
    assert done["status"] == "succeeded", done

    tenant_statements = [
        (sql, params) for sql, params in statements
        if not any(marker in sql for marker in PLATFORM_WIDE)
        and any(f" {table}" in sql for table in TENANT_TABLES)]
    assert len(tenant_statements) > 10, statements  # the steps really went through here
    for sql, params in tenant_statements:
        assert "tenant_id" in sql, sql
        assert not any(_mentions(value, b_tenant) for value in _values(params)), (sql, params)
    assert any(any(_mentions(value, a_tenant) for value in _values(params))
               for _, params in tenant_statements)
    assert asyncio.run(tenant_rows(engine_server, tenant_b)) == before


def test_a_claim_mixed_up_between_tenants_does_nothing(
        engine_server: Server, tenant_a: Org, tenant_b: Org) -> None:
    """The engine's entry points with B's tenant and A's run: the explicit tenant filter
    finds no run, so nothing runs, fails or is released (on SQLite it is the only layer)."""
    b_tenant = uuid.UUID(tenant_b.id)
    a_run = start_session(tenant_a)

    async def scenario() -> None:
        async with engine_for(engine_server) as (db, deps):
            async with db.sessions() as session:
                claims = await claim_runs(session, worker="iso", lease_seconds=600,
                                          tenant_limit=100, max_runs=10)
                await session.commit()
            assert [str(c.run_id) for c in claims] == [a_run["id"]]
            before = await load_run(db, tenant_a, a_run["id"])
            run_id = uuid.UUID(a_run["id"])
            assert await execute_step(deps, b_tenant, run_id, "iso") is False
            assert await fail_run(deps, b_tenant, run_id, "iso", "mixed up") is False
            await release_interrupted(deps, b_tenant, run_id, "iso", before.step)
            after = await load_run(db, tenant_a, a_run["id"])
            assert (after.status, after.step, after.lease_owner, after.attempts,
                    after.last_event_seq) == (before.status, before.step, "iso",
                                              before.attempts, before.last_event_seq)
            # The right tenant's step goes through with the same lease.
            assert await execute_step(deps, before.tenant_id, run_id, "iso") is True

    asyncio.run(scenario())
    assert [c["step"] for c in api(tenant_a, f"/sessions/{a_run['id']}/checkpoints")] == [1]
    assert api(tenant_a, f"/sessions/{a_run['id']}/events")[0]["seq"] == 1


async def _drain(server: Server, statements: list[tuple[str, Any]] | None = None) -> None:
    """Claim and execute steps until nothing is runnable, recording every statement."""
    async with engine_for(server) as (db, deps):
        def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                   executemany: bool) -> None:
            if statements is not None:
                statements.append((statement, parameters))

        event.listen(db.engine.sync_engine, "before_cursor_execute", record)
        try:
            await drain(db, deps)
        finally:
            event.remove(db.engine.sync_engine, "before_cursor_execute", record)
