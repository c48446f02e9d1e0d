"""Workers under failure: a SIGKILLed worker, a lost lease, fair claiming across tenants, the
per-tenant concurrency limit, approval expiry, and the tenant context of background steps.

These tests run against a server and database of their own per backend, with the embedded
worker disabled, so that nothing but the workers a test starts (a real ``enginex worker``
process, or the engine's functions called directly) ever claims a run.

At-least-once for the outside world: a step interrupted by a crash is executed again by the
next worker, so its external effect (here an HTTP request) happens twice. Its result is
committed exactly once, together with its events and checkpoint.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.approvals.models import Approval
from enginex.db import Database, TenantContextMissing, set_tenant
from enginex.kit.crypto import load_master_key
from enginex.kit.time import utcnow
from enginex.runs.engine import EngineDeps, execute_step
from enginex.runs.models import ACTIVE, Run
from enginex.runs.repository import RunRepository
from enginex.runs.runtime import build_engine
from enginex.runs.scheduler import Claim, claim_next, expire_approvals
from enginex.runs.service import start_run
from enginex.runs.worker import Worker
from enginex.tenancy.context import TenantContext, system_context
from tests.conftest import separate_deployment
from tests.factories import (
    WAIT_SECONDS,
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

LEASE_SECONDS = 3  # short, yet a heartbeat (every second) may be late by two seconds


# --- fixtures: a server without a worker, a slow HTTP endpoint -----------------------------------


@pytest.fixture(scope="module")
def engine_server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with separate_deployment(backend, tmp_path_factory.mktemp(f"worker-{backend}"),
                             embedded_worker=False, lease_seconds=LEASE_SECONDS,
                             allow_private_network=True) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def admin(engine_server: Server) -> Actor:
    return make_platform_admin(engine_server)


# Two tenants shared by the tests of a backend (members are slow to make: argon2). Each test
# leaves no run claimable behind it, and reads only the runs it started.
@pytest.fixture(scope="module")
def tenant_a(engine_server: Server, admin: Actor) -> Org:
    return make_org(engine_server, admin, "wa", with_keys=False)


@pytest.fixture(scope="module")
def tenant_b(engine_server: Server, admin: Actor) -> Org:
    return make_org(engine_server, admin, "wb", with_keys=False)


class SlowEndpoint:
    """An HTTP server on 127.0.0.1 that counts hits per path token and answers ``hit <n>``.

    While a token is held, its requests wait (at most ``HOLD_LIMIT`` seconds) until released:
    a request can be kept in flight for exactly as long as a test needs.
    """

    HOLD_LIMIT = 30.0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hits: dict[str, int] = {}
        self.gates: dict[str, threading.Event] = {}
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                token = self.path.rsplit("/", 1)[-1]
                with endpoint.lock:
                    endpoint.hits[token] = count = endpoint.hits.get(token, 0) + 1
                    gate = endpoint.gates.get(token)
                if gate is not None:
                    gate.wait(endpoint.HOLD_LIMIT)
                body = f"hit {count}".encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the caller was killed while this request was held

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, token: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/slow/{token}"

    def hold(self, token: str) -> None:
        with self.lock:
            self.gates[token] = threading.Event()

    def release(self, token: str) -> None:
        with self.lock:
            gate = self.gates.pop(token, None)
        if gate is not None:
            gate.set()

    def count(self, token: str) -> int:
        with self.lock:
            return self.hits.get(token, 0)

    def wait_for_hits(self, token: str, n: int, timeout: float = WAIT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while self.count(token) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"the slow endpoint saw {self.count(token)} of {n} hits")
            time.sleep(0.02)

    def close(self) -> None:
        with self.lock:
            gates = list(self.gates.values())
            self.gates.clear()
        for gate in gates:
            gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def slow() -> Iterator[SlowEndpoint]:
    endpoint = SlowEndpoint()
    try:
        yield endpoint
    finally:
        endpoint.close()


# --- helpers: the engine's own functions against the test database -------------------------------


@asynccontextmanager
async def engine_for(server: Server) -> AsyncIterator[tuple[Database, EngineDeps]]:
    db = Database(server.settings, pool_size=4)
    try:
        yield db, build_engine(server.settings, db, load_master_key(server.settings))
    finally:
        await db.dispose()


def ctx_of(org: Org) -> TenantContext:
    return system_context(uuid.UUID(org.id), org.slug)


async def claim(db: Database, worker: str, *, lease: int = 60, limit: int = 1000
                ) -> Claim | None:
    async with db.sessions() as session:
        found = await claim_next(session, worker=worker, lease_seconds=lease, tenant_limit=limit)
        await session.commit()
        return found


async def drain(db: Database, deps: EngineDeps, worker: str = "drain") -> int:
    """Claim and execute steps until nothing is runnable; returns the steps committed."""
    committed = 0
    for _ in range(100):
        found = await claim(db, worker, lease=deps.lease_seconds)
        if found is None:
            return committed
        committed += await execute_step(deps, found.tenant_id, found.run_id, worker)
    raise AssertionError("runs still runnable after 100 steps")


@asynccontextmanager
async def tenant_session(db: Database, org: Org) -> AsyncIterator[tuple[AsyncSession,
                                                                        RunRepository]]:
    async with db.sessions() as session:
        await set_tenant(session, uuid.UUID(org.id))
        yield session, RunRepository(session, ctx_of(org))


async def load_run(db: Database, org: Org, run_id: str | uuid.UUID) -> Run:
    async with tenant_session(db, org) as (_, repo):
        run = await repo.get(uuid.UUID(str(run_id)))
        assert run is not None
        return run


async def set_lease_expiry(db: Database, org: Org, run_id: uuid.UUID, seconds_ago: int) -> None:
    """Setup only: age a lease as if its worker had stopped heartbeating."""
    async with tenant_session(db, org) as (session, _):
        await session.execute(update(Run).where(Run.id == run_id).values(
            lease_expires_at=utcnow() - timedelta(seconds=seconds_ago)))
        await session.commit()


async def live_leases(db: Database, org: Org) -> int:
    async with tenant_session(db, org) as (session, _):
        runs = (await session.execute(select(Run).where(
            Run.status == "running", Run.lease_expires_at >= utcnow()))).scalars().all()
        return len(runs)


async def cancel_all(db: Database, org: Org) -> None:
    """Teardown: leave nothing claimable for the next test sharing this database."""
    async with tenant_session(db, org) as (session, _):
        await session.execute(update(Run).where(Run.status.in_(ACTIVE)).values(
            status="cancelled", lease_owner=None, lease_expires_at=None))
        await session.commit()


async def queue_runs(db: Database, org: Org, agent: str, count: int) -> list[uuid.UUID]:
    """Queue ``count`` runs through the service layer in one transaction (fast setup)."""
    async with tenant_session(db, org) as (session, _):
        runs = [await start_run(session, ctx_of(org), agent_key=agent, version=None, inputs={})
                for _ in range(count)]
        await session.commit()
        return [run.id for run in runs]


def api(org: Org, path: str, role: str = "viewer") -> Any:
    response = org.members[role].client.get(f"/api/v1/orgs/{org.slug}{path}")
    assert response.status_code == 200, response.text
    return response.json()


def assert_contiguous_events(events: list[dict[str, Any]]) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1)), seqs


# --- 1. a SIGKILLed worker process -----------------------------------------------------------


def _worker_command() -> list[str]:
    script = shutil.which("enginex", path=str(Path(sys.executable).parent))
    if script:
        return [script, "worker"]
    return [sys.executable, "-c", "from enginex.cli import main; main()", "worker"]


def start_worker(server: Server, log: Path, **overrides: str) -> subprocess.Popen[bytes]:
    """``enginex worker`` as its own process, configured like the server (same database,
    master key, data and storage directories), with a short lease; ``overrides`` replace
    environment variables."""
    settings = server.settings
    env = {**os.environ,
           "ENGINEX_DATABASE_URL": settings.resolved_database_url,
           "ENGINEX_MIGRATION_DATABASE_URL": settings.resolved_migration_url,
           "ENGINEX_MASTER_KEY": settings.master_key,
           "ENGINEX_DATA_DIR": str(settings.data_dir),
           "ENGINEX_STORAGE_DIR": str(settings.resolved_storage_dir),
           "ENGINEX_ALLOW_PRIVATE_NETWORK": "true",
           "ENGINEX_LEASE_SECONDS": str(LEASE_SECONDS),
           "ENGINEX_WORKER_SLOTS": "2",
           "ENGINEX_LOG_LEVEL": "INFO", **overrides}
    with open(log, "ab") as out:
        return subprocess.Popen(_worker_command(), env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def test_sigkilled_worker_loses_nothing_and_applies_nothing_twice(
        engine_server: Server, tenant_a: Org, slow: SlowEndpoint, tmp_path: Path) -> None:
    deploy_agent(tenant_a, "slow_tool")
    token = secrets.token_hex(6)
    slow.hold(token)
    run = start_session(tenant_a, {"url": slow.url(token)}, agent="slow-tool")
    log = tmp_path / "workers.log"
    # Two worker processes compete for the run from the start.
    workers = {w.pid: w for w in (start_worker(engine_server, log),
                                  start_worker(engine_server, log))}
    try:
        try:
            slow.wait_for_hits(token, 1)  # step 2 ("fetch") is in flight in one worker
        except AssertionError:
            raise AssertionError(log.read_text()) from None
        # The step outlasts the lease, but the heartbeat keeps the other worker off it.
        time.sleep(LEASE_SECONDS + 1)
        assert slow.count(token) == 1
        in_flight = api(tenant_a, f"/sessions/{run['id']}")
        assert in_flight["status"] == "running" and in_flight["step"] == 1, in_flight

        async def lease_owner() -> str | None:
            async with engine_for(engine_server) as (db, _):
                return (await load_run(db, tenant_a, run["id"])).lease_owner

        owner = asyncio.run(lease_owner())
        assert owner is not None
        victim = workers.pop(int(owner.split(":")[-2]))  # worker names: host:pid:random
        stop(victim, signal.SIGKILL)
        assert victim.returncode == -signal.SIGKILL
        slow.release(token)  # from now on the endpoint answers at once
        (survivor,) = workers.values()
        try:
            done = wait_for_status(tenant_a, run["id"], {"succeeded", "failed", "cancelled"},
                                   timeout=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text()}") from None
        stop(survivor)
        assert survivor.returncode == 0, log.read_text()  # SIGTERM: a clean shutdown
    finally:
        for process in workers.values():
            stop(process, signal.SIGKILL)
    assert done["status"] == "succeeded", done
    assert done["step"] == 3

    # The interrupted step ran twice against the outside world (at-least-once) ...
    assert slow.count(token) == 2
    # ... but its result was committed once: contiguous checkpoints, one per step.
    checkpoints = api(tenant_a, f"/sessions/{run['id']}/checkpoints")
    assert [c["step"] for c in checkpoints] == [1, 2, 3]
    assert checkpoints[-1]["path"] == ["before", "fetch", "after"]
    assert checkpoints[1]["state"]["fetched"]["body"] == "hit 2"
    events = api(tenant_a, f"/sessions/{run['id']}/events")
    assert_contiguous_events(events)
    fetch_events = [e["kind"] for e in events if e["node_id"] == "fetch"]
    assert fetch_events == ["node_started", "tool_call", "tool_result", "node_finished",
                            "checkpoint"]
    assert [e["data"]["step"] for e in events if e["kind"] == "checkpoint"] == [1, 2, 3]
    assert [e["kind"] for e in events].count("finished") == 1
    reports = api(tenant_a, f"/reports?session={run['id']}")
    assert [r["node_id"] for r in reports] == ["after"]

    async def attempts() -> int:
        async with engine_for(engine_server) as (db, _):
            return (await load_run(db, tenant_a, run["id"])).attempts

    # claims: step 1, step 2 (killed), step 2 again after the lease expired, step 3
    assert asyncio.run(attempts()) == 4


def test_sigkilled_workers_run_is_reclaimed_long_before_its_lease_expires(
        engine_server: Server, tenant_a: Org, slow: SlowEndpoint, tmp_path: Path) -> None:
    """A worker killed with SIGKILL stops refreshing its presence row; three heartbeats later
    its run is claimable although its lease (here 10 minutes) still runs. A live worker's
    run is not taken meanwhile, however long its step lasts."""
    from enginex.runs.models import WORKER_HEARTBEAT_SECONDS

    deploy_agent(tenant_a, "slow_tool")
    token = secrets.token_hex(6)
    slow.hold(token)
    run = start_session(tenant_a, {"url": slow.url(token)}, agent="slow-tool")
    log = tmp_path / "workers.log"
    lease = 600
    env = {"ENGINEX_LEASE_SECONDS": str(lease),
           "ENGINEX_WORKER_HEARTBEAT_SECONDS": str(WORKER_HEARTBEAT_SECONDS)}
    workers = {w.pid: w for w in (start_worker(engine_server, log, **env),
                                  start_worker(engine_server, log, **env))}
    try:
        try:
            slow.wait_for_hits(token, 1)
        except AssertionError:
            raise AssertionError(log.read_text()) from None
        # Longer than the dead-worker horizon: the owner beats, so nobody takes its run.
        time.sleep(3 * WORKER_HEARTBEAT_SECONDS + 1)
        assert slow.count(token) == 1

        async def lease_of() -> tuple[str | None, Any]:
            async with engine_for(engine_server) as (db, _):
                current = await load_run(db, tenant_a, run["id"])
                return current.lease_owner, current.lease_expires_at

        owner, expires = asyncio.run(lease_of())
        assert owner is not None and expires is not None
        victim = workers.pop(int(owner.split(":")[-2]))
        stop(victim, signal.SIGKILL)
        slow.release(token)
        # Well inside the killed worker's lease (600 s): reclaimed by presence, not expiry.
        try:
            done = wait_for_status(tenant_a, run["id"], {"succeeded", "failed", "cancelled"},
                                   timeout=lease / 4)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text()}") from None
    finally:
        for process in workers.values():
            stop(process, signal.SIGKILL)
    assert done["status"] == "succeeded", done
    assert utcnow() < expires
    assert slow.count(token) == 2  # the killed worker's step ran again, once
    checkpoints = api(tenant_a, f"/sessions/{run['id']}/checkpoints")
    assert [c["step"] for c in checkpoints] == [1, 2, 3]


# --- 2. a worker that lost its lease cannot commit -----------------------------------------------


def test_worker_that_lost_its_lease_cannot_commit(engine_server: Server, tenant_a: Org,
                                                  slow: SlowEndpoint) -> None:
    deploy_agent(tenant_a, "slow_tool")
    token = secrets.token_hex(6)
    run_id = uuid.UUID(start_session(tenant_a, {"url": slow.url(token)}, agent="slow-tool")["id"])

    async def scenario() -> None:
        async with engine_for(engine_server) as (db, deps):
            first = await claim(db, "worker-a", lease=LEASE_SECONDS)
            assert first == Claim(uuid.UUID(tenant_a.id), run_id)
            assert await execute_step(deps, first.tenant_id, run_id, "worker-a")  # "before"

            assert await claim(db, "worker-a", lease=LEASE_SECONDS) == first
            slow.hold(token)
            step_a = asyncio.create_task(execute_step(deps, first.tenant_id, run_id, "worker-a"))
            await asyncio.to_thread(slow.wait_for_hits, token, 1)
            # A stalls past its lease (no heartbeat) and B takes the run over.
            await set_lease_expiry(db, tenant_a, run_id, seconds_ago=1)
            assert await claim(db, "worker-b", lease=60) == first
            slow.release(token)
            assert await step_a is False  # A's result ("hit 1") is discarded
            async with tenant_session(db, tenant_a) as (session, repo):
                assert not await repo.extend_lease(run_id, "worker-a", 60)  # heartbeat refused
                assert await repo.extend_lease(run_id, "worker-b", 60)
                await session.commit()
            run = await load_run(db, tenant_a, run_id)
            assert (run.step, run.lease_owner) == (1, "worker-b")
            assert run.lease_expires_at is not None
            assert run.lease_expires_at > utcnow() + timedelta(seconds=50)

            assert await execute_step(deps, first.tenant_id, run_id, "worker-b")
            assert await drain(db, deps) == 1  # "after"

    asyncio.run(scenario())
    assert slow.count(token) == 2
    done = api(tenant_a, f"/sessions/{run_id}")
    assert done["status"] == "succeeded" and done["step"] == 3
    checkpoints = api(tenant_a, f"/sessions/{run_id}/checkpoints")
    assert [c["step"] for c in checkpoints] == [1, 2, 3]
    assert checkpoints[1]["state"]["fetched"]["body"] == "hit 2"  # B's result, kept
    events = api(tenant_a, f"/sessions/{run_id}/events")
    assert_contiguous_events(events)
    results = [e["data"]["result"] for e in events if e["kind"] == "tool_result"
               and e["node_id"] == "fetch"]
    assert len(results) == 1 and results[0]["body"] == "hit 2"


# --- 3. fairness and the per-tenant concurrency limit --------------------------------------------


def test_one_tenants_backlog_does_not_starve_another(engine_server: Server, tenant_a: Org,
                                                     tenant_b: Org) -> None:
    deploy_agent(tenant_a, "quick_report")
    deploy_agent(tenant_b, "quick_report")
    backlog = 200

    async def scenario() -> tuple[list[Claim], uuid.UUID, list[uuid.UUID]]:
        async with engine_for(engine_server) as (db, _):
            a_runs = await queue_runs(db, tenant_a, "quick-report", backlog)
            order = [await claim(db, "single-slot") for _ in range(3)]
            b_run = uuid.UUID(start_session(tenant_b, {}, agent="quick-report")["id"])
            while (found := await claim(db, "single-slot")) is not None:
                order.append(found)
            await cancel_all(db, tenant_a)
            await cancel_all(db, tenant_b)
            return [c for c in order if c is not None], b_run, a_runs

    order, b_run, a_runs = asyncio.run(scenario())
    assert len(order) == backlog + 1
    run_ids = [c.run_id for c in order]
    assert len(set(run_ids)) == len(run_ids)  # nothing handed out twice
    # B's single run is claimed next (position 4), not after A's backlog (FIFO: 201).
    assert run_ids.index(b_run) == 3, run_ids.index(b_run)
    assert order[3].tenant_id == uuid.UUID(tenant_b.id)
    # Within a tenant, oldest first.
    assert [r for r in run_ids if r != b_run] == a_runs


def test_per_tenant_concurrency_limit(engine_server: Server, tenant_a: Org,
                                      tenant_b: Org) -> None:
    deploy_agent(tenant_a, "quick_report")
    deploy_agent(tenant_b, "quick_report")
    a_tenant, b_tenant = uuid.UUID(tenant_a.id), uuid.UUID(tenant_b.id)

    async def scenario() -> None:
        async with engine_for(engine_server) as (db, _):
            a_runs = await queue_runs(db, tenant_a, "quick-report", 5)
            b_runs = await queue_runs(db, tenant_b, "quick-report", 1)
            claims = []
            while (found := await claim(db, "w", limit=2)) is not None:
                claims.append(found)
                assert await live_leases(db, tenant_a) <= 2
            assert sorted(c.run_id for c in claims if c.tenant_id == a_tenant) == \
                sorted(a_runs[:2])
            assert [c.run_id for c in claims if c.tenant_id == b_tenant] == b_runs
            assert len(claims) == 3

            # A finishes one of its two runs (cancelled here): one slot frees up, not more.
            cancelled = tenant_a.members["operator"].client.post(
                f"/api/v1/orgs/{tenant_a.slug}/sessions/{a_runs[0]}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert await claim(db, "w", limit=2) == Claim(a_tenant, a_runs[2])
            assert await claim(db, "w", limit=2) is None
            assert await live_leases(db, tenant_a) == 2

            # A worker dies: once its lease expires the run is claimable again, first in line.
            await set_lease_expiry(db, tenant_a, a_runs[1], seconds_ago=1)
            assert await live_leases(db, tenant_a) == 1
            assert await claim(db, "w2", limit=2) == Claim(a_tenant, a_runs[1])
            assert await claim(db, "w2", limit=2) is None
            run = await load_run(db, tenant_a, a_runs[1])
            assert (run.lease_owner, run.attempts) == ("w2", 2)
            await cancel_all(db, tenant_a)
            await cancel_all(db, tenant_b)

    asyncio.run(scenario())


def test_a_suspended_tenants_runs_wait_until_it_is_reactivated(
        engine_server: Server, admin: Actor, tenant_b: Org) -> None:
    deploy_agent(tenant_b, "quick_report")
    run_id = uuid.UUID(start_session(tenant_b, {}, agent="quick-report")["id"])

    def set_status(status: str) -> None:
        response = admin.client.patch(f"/api/v1/admin/tenants/{tenant_b.id}",
                                      json={"status": status})
        assert response.status_code == 200, response.text

    async def claim_once() -> Claim | None:
        async with engine_for(engine_server) as (db, _):
            return await claim(db, "w")

    set_status("suspended")
    try:
        assert asyncio.run(claim_once()) is None
    finally:
        set_status("active")
    assert asyncio.run(claim_once()) == Claim(uuid.UUID(tenant_b.id), run_id)

    async def cleanup() -> None:
        async with engine_for(engine_server) as (db, _):
            await cancel_all(db, tenant_b)

    asyncio.run(cleanup())


def test_concurrent_claims_never_share_a_run_nor_exceed_the_limit(
        engine_server: Server, tenant_a: Org, tenant_b: Org) -> None:
    deploy_agent(tenant_a, "quick_report")
    deploy_agent(tenant_b, "quick_report")

    async def scenario() -> list[Claim]:
        async with engine_for(engine_server) as (db, _):
            await queue_runs(db, tenant_a, "quick-report", 12)
            await queue_runs(db, tenant_b, "quick-report", 12)

            async def claimer(name: str) -> list[Claim]:
                mine = []
                while (found := await claim(db, name, limit=3)) is not None:
                    mine.append(found)
                return mine

            results = await asyncio.gather(*[claimer(f"w{i}") for i in range(4)])
            assert await live_leases(db, tenant_a) == 3
            assert await live_leases(db, tenant_b) == 3
            await cancel_all(db, tenant_a)
            await cancel_all(db, tenant_b)
            return [c for claims in results for c in claims]

    claims = asyncio.run(scenario())
    assert len({c.run_id for c in claims}) == len(claims) == 6
    assert sum(c.tenant_id == uuid.UUID(tenant_a.id) for c in claims) == 3


# --- 4. approval expiry ------------------------------------------------------------------------


async def _expire_now(db: Database, org: Org, run_id: uuid.UUID) -> None:
    """Setup only: move the approval's expiry into the past, as if a minute had gone by."""
    async with tenant_session(db, org) as (session, _):
        await session.execute(update(Approval).where(Approval.run_id == run_id).values(
            expires_at=utcnow() - timedelta(seconds=1)))
        await session.commit()


def _assert_expired_and_rejected(org: Org, run_id: uuid.UUID) -> None:
    done = api(org, f"/sessions/{run_id}")
    assert done["status"] == "succeeded", done
    checkpoints = api(org, f"/sessions/{run_id}/checkpoints")
    assert checkpoints[-1]["path"] == ["ask", "ask", "rejected"]
    assert checkpoints[-1]["state"]["decision"]["status"] == "expired"
    approvals = [a for a in api(org, "/approvals?status=expired") if a["run_id"] == str(run_id)]
    assert len(approvals) == 1 and approvals[0]["decision"] == "reject"
    late = org.members["operator"].client.post(
        f"/api/v1/orgs/{org.slug}/approvals/{approvals[0]['id']}/decision",
        json={"decision": "approve"})
    assert late.status_code == 409
    events = api(org, f"/sessions/{run_id}/events")
    assert_contiguous_events(events)
    decided = [e["data"] for e in events if e["kind"] == "approval_decided"]
    assert len(decided) == 1 and decided[0]["status"] == "expired"
    assert decided[0]["decision"] == "reject" and decided[0]["decided_by"] is None
    reports = api(org, f"/reports?session={run_id}")
    assert [r["title"] for r in reports] == ["Rejected"]


def test_expired_approval_takes_the_reject_branch(engine_server: Server, tenant_a: Org) -> None:
    deploy_agent(tenant_a, "expiring_approval")
    run_id = uuid.UUID(start_session(tenant_a, {}, agent="expiring-approval")["id"])

    async def scenario() -> None:
        async with engine_for(engine_server) as (db, deps):
            assert await drain(db, deps) == 1
            assert (await load_run(db, tenant_a, run_id)).status == "waiting_approval"
            async with db.sessions() as session:  # not expired yet: nothing to do
                assert await expire_approvals(session) == 0
                await session.commit()
            await _expire_now(db, tenant_a, run_id)
            async with db.sessions() as session:
                assert await expire_approvals(session) == 1
                await session.commit()
            assert (await load_run(db, tenant_a, run_id)).status == "running"
            assert await drain(db, deps) == 2  # apply the expiry, then the reject branch

    asyncio.run(scenario())
    _assert_expired_and_rejected(tenant_a, run_id)


def test_worker_sweeper_expires_approvals(engine_server: Server, tenant_a: Org) -> None:
    deploy_agent(tenant_a, "expiring_approval")
    run_id = uuid.UUID(start_session(tenant_a, {}, agent="expiring-approval")["id"])

    async def wait_status(db: Database, status: str) -> None:
        async def reached() -> bool:
            return (await load_run(db, tenant_a, run_id)).status == status

        await wait_for_async(reached, what=f"the run to reach {status}")

    async def scenario() -> None:
        async with engine_for(engine_server) as (db, deps):
            worker = Worker(db, deps, slots=1, tenant_limit=2, poll_seconds=0.2)
            task = asyncio.create_task(worker.run())
            try:
                await wait_status(db, "waiting_approval")
                await _expire_now(db, tenant_a, run_id)
                await wait_status(db, "succeeded")
            finally:
                worker.stop()
                await task
            assert worker.steps_committed == 3

    asyncio.run(scenario())
    _assert_expired_and_rejected(tenant_a, run_id)


# --- 5. background steps re-establish their run's tenant -----------------------------------------


def test_steps_of_two_tenants_in_one_worker_stay_apart(engine_server: Server, tenant_a: Org,
                                                       tenant_b: Org) -> None:
    deploy_agent(tenant_a, "quick_report")
    deploy_agent(tenant_b, "quick_report")
    a_note, b_note = f"alpha-{secrets.token_hex(4)}", f"bravo-{secrets.token_hex(4)}"
    a_tenant, b_tenant = uuid.UUID(tenant_a.id), uuid.UUID(tenant_b.id)
    postgres = engine_server.backend == "postgres"

    async def scenario() -> tuple[uuid.UUID, uuid.UUID]:
        async with engine_for(engine_server) as (db, deps):
            a_run = uuid.UUID(start_session(tenant_a, {"note": a_note}, agent="quick-report")["id"])
            found = await claim(db, "shared-worker")
            assert found == Claim(a_tenant, a_run)
            assert await execute_step(deps, a_tenant, a_run, "shared-worker")

            b_run = uuid.UUID(start_session(tenant_b, {"note": b_note}, agent="quick-report")["id"])
            found = await claim(db, "shared-worker")
            assert found == Claim(b_tenant, b_run)
            assert await execute_step(deps, b_tenant, b_run, "shared-worker")

            # Right after A's step, a session bound to B cannot see A's run in any way.
            async with tenant_session(db, tenant_b) as (session, repo):
                assert await repo.get(a_run) is None
                visible = (await session.execute(select(Run.id))).scalars().all()
                assert a_run not in visible and b_run in visible
                if postgres:  # raw SQL is not filtered by the ORM: row-level security is
                    raw = (await session.execute(text("SELECT id FROM runs"))).scalars().all()
                    assert {uuid.UUID(str(r)) for r in raw} == set(visible)
                with pytest.raises(TenantContextMissing):
                    await set_tenant(session, a_tenant)
            async with db.sessions() as session:  # no tenant at all: refused
                with pytest.raises(TenantContextMissing):
                    await session.execute(select(Run))
            return a_run, b_run

    a_run, b_run = asyncio.run(scenario())
    for org, run_id, mine, other in ((tenant_a, a_run, a_note, b_note),
                                     (tenant_b, b_run, b_note, a_note)):
        assert api(org, f"/sessions/{run_id}")["status"] == "succeeded"
        reports = api(org, f"/reports?session={run_id}")
        assert len(reports) == 1 and reports[0]["run_id"] == str(run_id)
        content = api(org, f"/reports/{reports[0]['id']}")["content"]
        assert mine in content and other not in content
        # The bytes live under the run's own tenant prefix.
        artifact = uuid.UUID(reports[0]["id"]).hex
        root = engine_server.settings.resolved_storage_dir
        stored = root / uuid.UUID(org.id).hex / "artifacts" / artifact
        assert mine in stored.read_text()
        assert list(root.rglob(artifact)) == [stored]
