"""Claiming at scale: one claimer per worker feeds its slots, in batches, woken by notify.

Threats: a worker with many idle slots hammering the database with one claim per slot per
poll (every claim takes the platform-wide claim lock); a batch claim that hands one tenant
more runs than its concurrency limit, or lets one tenant's backlog fill every slot while
another tenant waits; two worker processes handing the same run to two slots.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from enginex.runs import scheduler
from enginex.runs.worker import Worker
from tests.conftest import separate_deployment
from tests.factories import (
    Actor,
    Org,
    Server,
    deploy_agent,
    make_org,
    make_platform_admin,
    start_session,
    wait_for_async,
    wait_for_status,
)
from tests.test_worker import (
    LEASE_SECONDS,
    api,
    assert_contiguous_events,
    cancel_all,
    engine_for,
    live_leases,
    load_run,
    queue_runs,
    start_worker,
    stop,
)


@pytest.fixture(scope="module")
def engine_server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with separate_deployment(backend, tmp_path_factory.mktemp(f"claims-{backend}"),
                             embedded_worker=False, lease_seconds=LEASE_SECONDS) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def admin(engine_server: Server) -> Actor:
    return make_platform_admin(engine_server)


@pytest.fixture(scope="module")
def tenant_a(engine_server: Server, admin: Actor) -> Org:
    org = make_org(engine_server, admin, "ca", with_keys=False)
    deploy_agent(org, "quick_report")
    return org


@pytest.fixture(scope="module")
def tenant_b(engine_server: Server, admin: Actor) -> Org:
    org = make_org(engine_server, admin, "cb", with_keys=False)
    deploy_agent(org, "quick_report")
    return org


def _is_claim(statement: str) -> bool:
    """A claim statement: the PostgreSQL claim function, or SQLite's tenant scan."""
    head = statement.lstrip().upper()
    return "enginex_claim" in statement or (
        "run_queue_state" in statement and head.startswith(("SELECT", "WITH")))


class ClaimCounter:
    """Counts the claim statements an engine executes."""

    def __init__(self, db: Any) -> None:
        self.count = 0
        self.engine = db.engine.sync_engine
        event.listen(self.engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if _is_claim(statement):
            self.count += 1

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)


# --- (a) idle slots do not each poll; a started session wakes the worker ------------------------


def test_an_idle_worker_with_many_slots_claims_once_per_poll_not_once_per_slot(
        engine_server: Server, tenant_a: Org) -> None:
    async def scenario() -> int:
        async with engine_for(engine_server) as (db, deps):
            worker = Worker(db, deps, slots=50, tenant_limit=4, poll_seconds=0.5)
            task = asyncio.create_task(worker.run())
            try:
                await asyncio.sleep(0.5)  # settle: the first claims of a fresh worker
                counter = ClaimCounter(db)
                try:
                    window = 3.0
                    await asyncio.sleep(window)  # idle: the queue is empty
                    return counter.count
                finally:
                    counter.close()
            finally:
                worker.stop()
                await task

    claims = asyncio.run(scenario())
    # One claimer: about one claim per poll interval (6 in 3 s), however many slots. Fifty
    # slots polling each would be ~300. A busy machine may delay polls, never add many.
    assert claims <= 12, claims


def test_a_started_session_wakes_an_idle_worker_long_before_its_poll(
        engine_server: Server, tenant_a: Org) -> None:
    async def scenario() -> None:
        async with engine_for(engine_server) as (db, deps):
            # A poll interval far beyond the deadline: only the wake-up can start the run.
            worker = Worker(db, deps, slots=50, tenant_limit=4, poll_seconds=600,
                            database_url=engine_server.settings.resolved_database_url)
            task = asyncio.create_task(worker.run())
            try:
                await asyncio.sleep(1.0)  # the worker is idle, waiting
                # In this process (in-process notifier) ...
                (run_id,) = await queue_runs(db, tenant_a, "quick-report", 1)

                async def done(run: uuid.UUID = run_id) -> bool:
                    return (await load_run(db, tenant_a, run)).status == "succeeded"

                await wait_for_async(done, what="the run woke the worker", within=30)
                if engine_server.backend == "postgres":
                    # ... and from the server process's own database (NOTIFY/LISTEN).
                    started = start_session(tenant_a, {}, agent="quick-report")

                    async def done_too() -> bool:
                        return (await load_run(db, tenant_a, started["id"])).status == \
                            "succeeded"

                    await wait_for_async(done_too, what="NOTIFY woke the worker", within=30)
            finally:
                worker.stop()
                await task
                await cancel_all(db, tenant_a)

    asyncio.run(scenario())


# --- (b) a batch claim keeps the per-tenant limit and fairness ---------------------------------


def test_a_batch_claim_keeps_the_tenant_limit_and_serves_the_small_tenant_first(
        engine_server: Server, tenant_a: Org, tenant_b: Org) -> None:
    a_tenant, b_tenant = uuid.UUID(tenant_a.id), uuid.UUID(tenant_b.id)

    async def scenario() -> None:
        async with engine_for(engine_server) as (db, _):
            a_runs = await queue_runs(db, tenant_a, "quick-report", 200)
            async with db.sessions() as session:
                first = await scheduler.claim_runs(session, worker="w", lease_seconds=60,
                                         tenant_limit=4, max_runs=50)
                await session.commit()
            # Only A has work: four of its runs (the limit), oldest first, no more.
            assert [c.run_id for c in first] == a_runs[:4]
            assert await live_leases(db, tenant_a) == 4

            (b_run,) = await queue_runs(db, tenant_b, "quick-report", 1)
            async with db.sessions() as session:
                second = await scheduler.claim_runs(session, worker="w", lease_seconds=60,
                                          tenant_limit=4, max_runs=50)
                await session.commit()
            # A is at its limit: B's run is claimed while A's backlog is still 196 long.
            assert [(c.tenant_id, c.run_id) for c in second] == [(b_tenant, b_run)]
            assert await live_leases(db, tenant_a) == 4

            # With room for both, the batch alternates between tenants (round robin).
            await cancel_all(db, tenant_a)
            await cancel_all(db, tenant_b)
            a_more = await queue_runs(db, tenant_a, "quick-report", 10)
            b_more = await queue_runs(db, tenant_b, "quick-report", 2)
            async with db.sessions() as session:
                mixed = await scheduler.claim_runs(session, worker="w", lease_seconds=60,
                                         tenant_limit=3, max_runs=50)
                await session.commit()
            assert sorted(c.run_id for c in mixed if c.tenant_id == a_tenant) == \
                sorted(a_more[:3])
            assert sorted(c.run_id for c in mixed if c.tenant_id == b_tenant) == sorted(b_more)
            assert {c.tenant_id for c in mixed[:2]} == {a_tenant, b_tenant}
            async with db.sessions() as session:
                small = await scheduler.claim_runs(session, worker="w", lease_seconds=60,
                                         tenant_limit=10, max_runs=2)
                await session.commit()
            assert [c.run_id for c in small] == a_more[3:5]  # never more than asked for
            await cancel_all(db, tenant_a)
            await cancel_all(db, tenant_b)

    asyncio.run(scenario())


def test_a_heavier_organization_gets_claims_in_proportion_to_its_weight(
        engine_server: Server, tenant_a: Org, tenant_b: Org,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Fair share weighted per organization: with both tenants backlogged, A (weight 2) is
    served about twice for each claim of B (weight 1). The weights replace the plans' ones
    where another source would plug in: the SQL function enginex_claim_weight on PostgreSQL
    (replaced by the owner role, as a migration would), the weight expression on SQLite."""
    a_tenant = uuid.UUID(tenant_a.id)
    postgres = engine_server.settings.resolved_database_url.startswith("postgresql")
    if postgres:
        original = _claim_weight_function(engine_server)
        _replace_claim_weight(engine_server, f"CASE WHEN p_tenant = '{a_tenant}'::uuid "
                                             "THEN 2.0 ELSE 1.0 END")
    else:
        monkeypatch.setattr(scheduler, "SQLITE_CLAIM_WEIGHT_SQL",
                            f"(CASE WHEN o.id = '{a_tenant.hex}' THEN 2.0 ELSE 1.0 END)")

    try:
        served = _claim_thirty(engine_server, tenant_a, tenant_b)
    finally:
        if postgres:
            _owner_execute(engine_server, original)  # the plans' weights again
    _assert_about_two_to_one(served, a_tenant)


def test_the_plans_scheduler_weights_decide_the_share(
        engine_server: Server, admin: Actor, tenant_a: Org, tenant_b: Org) -> None:
    """Out of the box the weight is the plan's (``plans.weight``, relative to the lightest
    candidate): A on Enterprise (4) and B on Team (2) share the claims about 2:1; on the same
    plan they alternate."""
    def assign(org: Org, plan: str) -> None:
        response = admin.client.put(f"/api/v1/admin/tenants/{org.id}/plan",
                                    json={"plan": plan})
        assert response.status_code == 200, response.text

    assign(tenant_a, "enterprise")
    assign(tenant_b, "team")
    try:
        served = _claim_thirty(engine_server, tenant_a, tenant_b)
        assign(tenant_b, "enterprise")  # the default plan: both as before
        equal = _claim_thirty(engine_server, tenant_a, tenant_b)
    finally:
        assign(tenant_b, "enterprise")
    a_tenant = uuid.UUID(tenant_a.id)
    _assert_about_two_to_one(served, a_tenant)
    assert 14 <= equal.count(a_tenant) <= 16, equal


def _claim_thirty(server: Server, tenant_a: Org, tenant_b: Org) -> list[uuid.UUID]:
    """Both tenants backlogged: the tenant of each of 30 claims of one run, in order."""
    async def scenario() -> list[uuid.UUID]:
        async with engine_for(server) as (db, _):
            await queue_runs(db, tenant_a, "quick-report", 40)
            await queue_runs(db, tenant_b, "quick-report", 40)
            served = []
            try:
                for _ in range(30):
                    async with db.sessions() as session:
                        (claim,) = await scheduler.claim_runs(
                            session, worker="w", lease_seconds=60, tenant_limit=1000,
                            max_runs=1)
                        await session.commit()
                    served.append(claim.tenant_id)
            finally:
                await cancel_all(db, tenant_a)
                await cancel_all(db, tenant_b)
            return served

    return asyncio.run(scenario())


def _assert_about_two_to_one(served: list[uuid.UUID], a_tenant: uuid.UUID) -> None:
    order = "".join("A" if tenant == a_tenant else "B" for tenant in served)
    a_claims = served.count(a_tenant)
    # 2:1 of 30 claims is 20:10. The share is proportional in time (served time moves 1/w of
    # the way to now), so uneven gaps between claims move it a little (simulated with
    # heavy-tailed gaps: 18-20, never more than two of A in a row); equal weights alternate.
    assert 17 <= a_claims <= 23, order
    # Never starved: B is served at least once in every four consecutive claims.
    assert "AAAA" not in order, order
def _owner_execute(server: Server, sql: str) -> Any:
    """As the owner role (a migration's connection)."""
    import psycopg
    from sqlalchemy import make_url

    url = make_url(server.settings.resolved_migration_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchone() if cursor.description else None


def _claim_weight_function(server: Server) -> str:
    row = _owner_execute(server, "SELECT pg_get_functiondef("
                                 "'enginex_claim_weight(uuid)'::regprocedure)")
    return str(row[0])


def _replace_claim_weight(server: Server, expression: str) -> None:
    """Answer ``expression`` as every organization's weight (what a migration would do)."""
    _owner_execute(server,
                   "CREATE OR REPLACE FUNCTION enginex_claim_weight(p_tenant uuid) "
                   "RETURNS double precision LANGUAGE sql STABLE "
                   "SET search_path = pg_catalog, pg_temp AS "
                   f"$$ SELECT ({expression})::double precision $$")


# --- (c) two worker processes never share a run -------------------------------------------------


def test_two_worker_processes_never_run_the_same_step(
        engine_server: Server, tenant_a: Org, tenant_b: Org, tmp_path: Path) -> None:
    runs = [start_session(org, {}, agent="quick-report")
            for org in (tenant_a, tenant_b) for _ in range(8)]
    log = tmp_path / "workers.log"
    workers = [start_worker(engine_server, log), start_worker(engine_server, log)]
    try:
        deadline = time.monotonic() + 120
        for run in runs:
            org = tenant_a if run in runs[:8] else tenant_b
            try:
                done = wait_for_status(org, run["id"], {"succeeded", "failed", "cancelled"},
                                       timeout=max(deadline - time.monotonic(), 1))
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{log.read_text()}") from None
            assert done["status"] == "succeeded", done
    finally:
        for process in workers:
            stop(process)

    async def attempts(org: Org, run_id: str) -> int:
        async with engine_for(engine_server) as (db, _):
            return (await load_run(db, org, run_id)).attempts

    for index, run in enumerate(runs):
        org = tenant_a if index < 8 else tenant_b
        checkpoints = api(org, f"/sessions/{run['id']}/checkpoints")
        steps = [c["step"] for c in checkpoints]
        assert steps == list(range(1, len(steps) + 1)), steps  # each step committed once
        assert_contiguous_events(api(org, f"/sessions/{run['id']}/events"))
        # One claim per step: no run was ever handed to two slots.
        assert asyncio.run(attempts(org, run["id"])) == len(steps)
