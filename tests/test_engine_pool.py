"""The engine under database pressure: many steps in flight on a small connection pool, and
database errors in the middle of steps.

Threat model (availability, not secrecy): a worker must never fail a tenant's session because
the database was busy or briefly gone. A step holds at most one pooled connection at a time
(so steps cannot wait on each other's connections), a worker's slot count is safe at any
value (its steps queue at a gate sized to the pool instead of timing out on it), and a pool
timeout or lost connection anywhere in a step releases the run to be retried -- never marked
failed, never counted towards the poison-step limit -- picked up again as soon as the
database answers.

These tests run against a deployment of their own per backend with the embedded worker off:
only the workers a test starts claim runs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy import exc as sa_exc

from enginex.agents.cli import zip_directory
from enginex.audit.models import AuditEntry
from enginex.db import Database, set_tenant
from enginex.kit.crypto import load_master_key
from enginex.migrate import upgrade
from enginex.runs.engine import (
    MAX_ATTEMPTS_PER_STEP,
    StepInterrupted,
    execute_step,
    release_interrupted,
)
from enginex.runs.models import ACTIVE, Checkpoint, Run, RunEvent
from enginex.runs.runtime import build_engine
from enginex.runs.scheduler import Claim, claim_next
from enginex.runs.service import start_run
from enginex.runs.worker import Worker
from enginex.tenancy.context import system_context
from tests.conftest import _ServerThread, separate_deployment
from tests.factories import Actor, Org, Server, make_org, make_platform_admin
from tests.fake_llm import FakeLLM, FakeReply
from tests.pg_private import PrivateCluster, private_pg  # noqa: F401 - the fixture

KEY = "sk-pool-Zx9Cv8Bn7Mm6Ll5K"
TERMINAL = {"succeeded", "failed", "cancelled"}


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool_server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with separate_deployment(backend, tmp_path_factory.mktemp(f"pool-{backend}"),
                             embedded_worker=False, allow_private_network=True) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def admin(pool_server: Server) -> Actor:
    return make_platform_admin(pool_server)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


def _deploy(org: Org, tmp: Path, manifest: dict[str, Any]) -> None:
    directory = tmp / f"pkg-{secrets.token_hex(4)}"
    directory.mkdir()
    (directory / "agent.json").write_text(json.dumps(manifest))
    response = org.members["builder"].client.post(
        f"/api/v1/orgs/{org.slug}/agents",
        files={"package": ("package.zip", zip_directory(directory), "application/zip")})
    assert response.status_code in (200, 201), response.text


def talker(model: str, nodes: int = 1) -> dict[str, Any]:
    """An agent of ``nodes`` llm steps in a row, each one model call."""
    ids = [f"talk{i}" for i in range(1, nodes + 1)]
    return {"agent": {"id": f"talker-{nodes}", "name": "Talker", "version": "1.0.0"},
            "graph": {"entry_node": ids[0], "terminal_nodes": [ids[-1]], "max_steps": nodes + 1,
                      "nodes": [{"id": i, "node_type": "llm", "model": model,
                                 "output_keys": [f"{i}_answer"]} for i in ids],
                      "edges": [{"source": a, "target": b, "condition": "on_success"}
                                for a, b in itertools.pairwise(ids)]}}


@pytest.fixture(scope="module")
def quick_setup_org(pool_server: Server, admin: Actor, fake: FakeLLM,
                    tmp_path_factory: pytest.TempPathFactory) -> Org:
    """An organization whose LLM key is the quick setup's (audited as llm_settings.key_used)."""
    org = make_org(pool_server, admin, "poolq", roles=("admin", "builder", "operator"),
                   with_keys=False)
    saved = org.admin.client.put(f"/api/v1/orgs/{org.slug}/settings/llm", json={
        "provider": "openai_compatible", "base_url": fake.openai_base_url,
        "default_model": "gpt-fake", "api_key": KEY})
    assert saved.status_code == 200, saved.text
    tmp = tmp_path_factory.mktemp("pkg")
    _deploy(org, tmp, talker("default"))
    _deploy(org, tmp, talker("default", nodes=3))
    return org


@pytest.fixture(scope="module")
def provider_org(pool_server: Server, admin: Actor, fake: FakeLLM,
                 tmp_path_factory: pytest.TempPathFactory) -> Org:
    """An organization whose provider takes its key from a credential (credential.used)."""
    org = make_org(pool_server, admin, "poolp", roles=("admin", "builder", "operator"),
                   with_keys=False)
    client, base = org.admin.client, f"/api/v1/orgs/{org.slug}"
    made = client.post(f"{base}/credentials", json={"name": "oai", "type": "api_key",
                                                     "values": {"key": KEY + "-p"}})
    assert made.status_code == 201, made.text
    made = client.post(f"{base}/llm/providers", json={
        "name": "fakeai", "kind": "openai_compatible", "base_url": fake.openai_base_url,
        "credential_name": "oai"})
    assert made.status_code == 201, made.text
    _deploy(org, tmp_path_factory.mktemp("pkg"), talker("fakeai/gpt-fake"))
    return org


def slow_replies(fake: FakeLLM, n: int) -> None:
    """``n`` model replies that each take 0.5 to 1 s: many steps are in flight at once."""
    fake.queue(*[FakeReply(text="done", delay=random.uniform(0.5, 1.0))
                 for _ in range(n)])


# --- helpers -------------------------------------------------------------------------------------


@asynccontextmanager
async def tenant_session(db: Database, org: Org) -> AsyncIterator[Any]:
    async with db.sessions() as session:
        await set_tenant(session, uuid.UUID(org.id))
        yield session


async def queue_runs(db: Database, org: Org, agent: str, count: int) -> list[uuid.UUID]:
    """Queue ``count`` runs through the service layer in one transaction (fast setup)."""
    ctx = system_context(uuid.UUID(org.id), org.slug)
    async with tenant_session(db, org) as session:
        runs = [await start_run(session, ctx, agent_key=agent, version=None, inputs={})
                for _ in range(count)]
        await session.commit()
        return [run.id for run in runs]


async def statuses(db: Database, org: Org, run_ids: list[uuid.UUID]) -> dict[uuid.UUID, Run]:
    async with tenant_session(db, org) as session:
        rows = (await session.execute(select(Run).where(Run.id.in_(run_ids)))).scalars()
        return {run.id: run for run in rows}


async def wait_until_finished(db: Database, runs: list[tuple[Org, list[uuid.UUID]]],
                              within: float) -> dict[uuid.UUID, Run]:
    deadline = time.monotonic() + within
    while True:
        found: dict[uuid.UUID, Run] = {}
        for org, ids in runs:
            found.update(await statuses(db, org, ids))
        if all(run.status in TERMINAL for run in found.values()):
            return found
        if time.monotonic() > deadline:
            counts = Counter(run.status for run in found.values())
            raise AssertionError(f"runs still unfinished after {within} s: {dict(counts)}")
        await asyncio.sleep(0.5)


async def cancel_unfinished(db: Database, org: Org) -> None:
    """Teardown: leave nothing claimable for the next test sharing this database."""
    async with tenant_session(db, org) as session:
        await session.execute(update(Run).where(Run.status.in_(ACTIVE)).values(
            status="cancelled", lease_owner=None, lease_expires_at=None))
        await session.commit()


async def assert_each_step_committed_once(db: Database, org: Org, run_ids: list[uuid.UUID],
                                          steps: int) -> None:
    async with tenant_session(db, org) as session:
        for run_id in run_ids:
            checkpoints = (await session.execute(
                select(Checkpoint.step).where(Checkpoint.run_id == run_id)
                .order_by(Checkpoint.step))).scalars().all()
            assert list(checkpoints) == list(range(1, steps + 1)), (run_id, checkpoints)
            events = (await session.execute(
                select(RunEvent.seq, RunEvent.kind).where(RunEvent.run_id == run_id)
                .order_by(RunEvent.seq))).all()
            assert [seq for seq, _ in events] == list(range(1, len(events) + 1)), run_id
            kinds = [kind for _, kind in events]
            assert kinds.count("finished") == 1 and "error" not in kinds, (run_id, kinds)


async def audited_runs(db: Database, org: Org, action: str) -> Counter[str]:
    async with tenant_session(db, org) as session:
        details = (await session.execute(select(AuditEntry.details)
                                         .where(AuditEntry.action == action))).scalars()
        return Counter(d["run_id"] for d in details)


class ConnectionsPerTask:
    """Watches a pool: the most connections any one task held at the same time."""

    def __init__(self, db: Database) -> None:
        self.owner: dict[Any, Any] = {}
        self.held: Counter[Any] = Counter()
        self.most = 0
        pool = db.engine.sync_engine.pool
        event.listen(pool, "checkout", self._checkout)
        event.listen(pool, "checkin", self._checkin)

    def _checkout(self, dbapi_conn: Any, record: Any, proxy: Any) -> None:
        task = asyncio.current_task()
        self.owner[record] = task
        self.held[task] += 1
        self.most = max(self.most, self.held[task])

    def _checkin(self, dbapi_conn: Any, record: Any) -> None:
        task = self.owner.pop(record, None)
        if task is not None:
            self.held[task] -= 1


@asynccontextmanager
async def running_worker(db: Database, deps: Any, *, slots: int) -> AsyncIterator[Worker]:
    worker = Worker(db, deps, slots=slots, tenant_limit=10_000, poll_seconds=0.2)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=60)


# --- 1. many steps in flight on a small pool -------------------------------------------------


@pytest.mark.parametrize(("pool_size", "overflow", "slots", "sessions"),
                         [(5, 5, 200, 200), (1, 0, 20, 20)])
def test_many_llm_steps_in_flight_on_a_small_pool_all_succeed(
        pool_server: Server, quick_setup_org: Org, provider_org: Org, fake: FakeLLM,
        pool_size: int, overflow: int, slots: int, sessions: int) -> None:
    """200 llm steps on one worker with 200 slots and a pool of 10 connections (and 20 on a
    pool of ONE): preparing a step (provider, key, credential audit) once held one connection
    while asking for a second, so as many steps preparing at once as the pool had
    connections waited on each other until the pool timed out and their sessions were marked
    failed."""
    settings = pool_server.settings

    async def scenario() -> None:
        watcher_db = Database(settings, pool_size=2, max_overflow=0)
        db = Database(settings, pool_size=pool_size, max_overflow=overflow)
        connections = ConnectionsPerTask(db)
        try:
            half = sessions // 2
            quick = await queue_runs(watcher_db, quick_setup_org, "talker-1", half)
            keyed = await queue_runs(watcher_db, provider_org, "talker-1", sessions - half)
            runs = [(quick_setup_org, quick), (provider_org, keyed)]
            slow_replies(fake, sessions)
            deps = build_engine(settings, db, load_master_key(settings))
            async with running_worker(db, deps, slots=slots):
                try:
                    done = await wait_until_finished(watcher_db, runs, within=600)
                finally:
                    for org, _ in runs:
                        await cancel_unfinished(watcher_db, org)
            counts = Counter(run.status for run in done.values())
            assert counts == {"succeeded": sessions}, dict(counts)
            for org, ids in runs:
                await assert_each_step_committed_once(watcher_db, org, ids, steps=1)
            # Every key use is audited, with its run, before the key is sent.
            key_uses = await audited_runs(watcher_db, quick_setup_org, "llm_settings.key_used")
            assert all(key_uses[str(r)] >= 1 for r in quick)
            credential_uses = await audited_runs(watcher_db, provider_org, "credential.used")
            assert all(credential_uses[str(r)] >= 1 for r in keyed)
            # No task ever held two connections at once.
            assert connections.most == 1, connections.most
        finally:
            await db.dispose()
            await watcher_db.dispose()

    asyncio.run(scenario())


# --- 2. database errors in the middle of a step ----------------------------------------------


class FlakySessions:
    """A session factory that fails like an unreachable database while ``down`` is set."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.down = False

    def __call__(self, **kw: Any) -> Any:
        if self.down:
            raise sa_exc.OperationalError("connect", {}, ConnectionRefusedError(
                "connection to server at 127.0.0.1 failed: Connection refused"))
        return self.factory(**kw)


def test_database_errors_mid_step_release_the_run_and_never_count_or_fail_it(
        pool_server: Server, quick_setup_org: Org, fake: FakeLLM) -> None:
    """A pool timeout or a lost connection while preparing a step, again and again (more
    often than the poison-step limit), and a database that refuses connections even for the
    release: the run is released each time (or released once the database answers), never
    marked failed, its attempts not counted; then it completes normally."""
    settings = pool_server.settings
    org_id = uuid.UUID(quick_setup_org.id)

    async def scenario() -> None:
        db = Database(settings, pool_size=2, max_overflow=0)
        try:
            deps = build_engine(settings, db, load_master_key(settings))
            (run_id,) = await queue_runs(db, quick_setup_org, "talker-1", 1)
            errors = [sa_exc.TimeoutError("QueuePool limit of size 2 overflow 0 reached, "
                                          "connection timed out, timeout 30.00"),
                      sa_exc.OperationalError("SELECT 1", {}, Exception(
                          "server closed the connection unexpectedly"),
                          connection_invalidated=True)]
            real_provider_for = deps.provider_for
            raised: list[Exception] = []

            async def failing_provider_for(*args: Any) -> Any:
                if len(raised) < 2 * MAX_ATTEMPTS_PER_STEP:
                    raised.append(errors[len(raised) % 2])
                    raise raised[-1]
                return await real_provider_for(*args)

            deps.provider_for = failing_provider_for
            for _ in range(2 * MAX_ATTEMPTS_PER_STEP):
                assert await claim(db, "w1") == Claim(org_id, run_id)
                with pytest.raises(StepInterrupted) as interrupted:
                    await execute_step(deps, org_id, run_id, "w1")
                assert interrupted.value.released
                run = (await statuses(db, quick_setup_org, [run_id]))[run_id]
                # Released at once, and the attempt taken back.
                assert (run.status, run.lease_owner, run.step, run.attempts) == \
                    ("running", None, 0, 0)

            # The database refuses every connection, the release too: the caller (a worker)
            # releases the run once the database answers.
            flaky = FlakySessions(deps.sessions)
            deps.sessions = flaky
            assert await claim(db, "w1") == Claim(org_id, run_id)
            flaky.down = True
            with pytest.raises(StepInterrupted) as interrupted:
                await execute_step(deps, org_id, run_id, "w1")
            assert not interrupted.value.released
            run = (await statuses(db, quick_setup_org, [run_id]))[run_id]
            assert (run.lease_owner, run.attempts) == ("w1", 1)
            flaky.down = False
            await release_interrupted(deps, org_id, run_id, "w1",
                                      interrupted.value.expected_step)
            run = (await statuses(db, quick_setup_org, [run_id]))[run_id]
            assert (run.status, run.lease_owner, run.attempts) == ("running", None, 0)

            fake.queue(FakeReply(text="done"))
            assert await claim(db, "w1") == Claim(org_id, run_id)
            assert await execute_step(deps, org_id, run_id, "w1")
            run = (await statuses(db, quick_setup_org, [run_id]))[run_id]
            assert (run.status, run.step, run.attempts) == ("succeeded", 1, 1)
            await assert_each_step_committed_once(db, quick_setup_org, [run_id], steps=1)
        finally:
            await db.dispose()

    asyncio.run(scenario())


async def claim(db: Database, worker: str) -> Claim | None:
    async with db.sessions() as session:
        found = await claim_next(session, worker=worker, lease_seconds=300,
                                 tenant_limit=10_000)
        await session.commit()
        return found


# --- 3. a database restart in the middle of steps --------------------------------------------


class _StepTroubles(logging.Handler):
    """Counts the steps that ran into trouble, as the engine and the worker log them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "enginex.engine" or "step of run" in record.getMessage():
            self.count += 1


def test_a_database_restart_mid_steps_loses_nothing_and_fails_nothing(
        private_pg: PrivateCluster, fake: FakeLLM, tmp_path: Path) -> None:  # noqa: F811
    """PostgreSQL stops while steps are in flight (connections terminated, new ones refused)
    and comes back: every session succeeds, every step is committed once, no attempt is
    counted for the outage, and the interrupted runs are picked up again as soon as the
    database answers -- long before their (long) leases would have lapsed."""
    lease = 300
    database = private_pg.create_database()
    settings = private_pg.settings_for(database, tmp_path / "data", embedded_worker=False,
                                       allow_private_network=True, lease_seconds=lease)
    upgrade(settings)
    server = _ServerThread(settings)
    server.start()
    try:
        deployment = Server(base_url=f"http://127.0.0.1:{server.port}", settings=settings,
                            backend="postgres", app=server.app)
        org = make_org(deployment, make_platform_admin(deployment), "restart",
                       roles=("admin", "builder", "operator"), with_keys=False)
        saved = org.admin.client.put(f"/api/v1/orgs/{org.slug}/settings/llm", json={
            "provider": "openai_compatible", "base_url": fake.openai_base_url,
            "default_model": "gpt-fake", "api_key": KEY})
        assert saved.status_code == 200, saved.text
        _deploy(org, tmp_path, talker("default", nodes=3))
    finally:
        server.stop()
    sessions, steps = 20, 3
    troubles = _StepTroubles()
    loggers = [logging.getLogger("enginex.engine"), logging.getLogger("enginex.worker")]
    for logger in loggers:
        logger.addHandler(troubles)

    async def committed_steps(db: Database, run_ids: list[uuid.UUID]) -> int:
        return sum(run.step for run in (await statuses(db, org, run_ids)).values())

    async def scenario() -> None:
        db = Database(settings, pool_size=5, max_overflow=5)
        try:
            run_ids = await queue_runs(db, org, "talker-3", sessions)
            slow_replies(fake, sessions * steps * 2)
            deps = build_engine(settings, db, load_master_key(settings))
            async with running_worker(db, deps, slots=sessions):
                deadline = time.monotonic() + 120
                while await committed_steps(db, run_ids) < sessions:
                    assert time.monotonic() < deadline, "the worker committed no steps"
                    await asyncio.sleep(0.2)
                await asyncio.to_thread(private_pg.stop)
                deadline = time.monotonic() + 60
                while troubles.count < 3:  # steps in flight ran into the outage
                    assert time.monotonic() < deadline, troubles.count
                    await asyncio.sleep(0.2)
                await asyncio.to_thread(private_pg.start)
                # Picked up again at once: far sooner than the leases would lapse.
                done = await wait_until_finished(db, [(org, run_ids)], within=lease / 2)
            assert Counter(r.status for r in done.values()) == {"succeeded": sessions}
            await assert_each_step_committed_once(db, org, run_ids, steps=steps)
            # The interrupted attempts were taken back: one counted claim per step.
            assert {r.attempts for r in done.values()} == {steps}
        finally:
            await db.dispose()

    try:
        asyncio.run(scenario())
    finally:
        for logger in loggers:
            logger.removeHandler(troubles)
