"""Engine benchmark: runs per second through queue -> workers -> checkpoints, and fairness.

For each backend (SQLite, and PostgreSQL when reachable) this script:

1. creates a throwaway database (SQLite: a temporary data directory; PostgreSQL: a database
   owned by a fresh owner role, the app connecting as a fresh role under row-level security,
   as ``tests/conftest.py`` does) and runs the migrations;
2. **throughput**: queues ``--runs`` runs of a 3-node no-op agent (three ``tool`` nodes calling
   ``set_output``: no LLM, no network, no files) spread over 4 tenants, starts ``--workers``
   real ``enginex worker`` processes, and waits until every run has succeeded. The rate is
   runs / (last ``finished_at`` - first ``started_at``), read from the database, so process
   start-up is not counted. Each run is 3 claims + 3 guarded step commits (events +
   checkpoint) + the loads in between;
3. **ceiling**: on PostgreSQL, the single-row INSERT commit rate of the same server measured in
   the same run (1 connection, and 4 connections), next to the transactions the engine used
   per run (``pg_stat_database.xact_commit``);
4. **fairness**: tenant A queues ``--backlog`` runs (5,000), then tenant B queues one.
   (a) the scheduler alone, one slot: claims A's runs, B queues, and the number of claims until
   B's run is handed out is counted; (b) with the worker processes churning through A's
   backlog, the seconds from B's ``queued_at`` to its ``started_at``, and A's steps committed
   meanwhile. Plain FIFO order would put B at position backlog + 1; its delay is estimated
   from A's measured run rate.

Not a test: it prints figures and exits non-zero only when it could not run.
Run: ``.venv/bin/python benchmarks/engine.py [--help]`` or ``benchmarks/run.py --engine``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.pgdb import PG_ADMIN_DSN, BenchError, PgDatabase, pg_problem
from enginex.agents.models import Agent, AgentVersion
from enginex.agents.package import LoadedPackage, load_directory
from enginex.agents.service import deploy_package, known_tool_names
from enginex.config import Settings
from enginex.db import Database, set_tenant
from enginex.kit.crypto import generate_master_key
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow
from enginex.migrate import upgrade
from enginex.orgs.service import create_organization
from enginex.runs.models import Checkpoint, Run, RunEvent
from enginex.runs.scheduler import claim_next
from enginex.runs.service import notify_workers, start_run
from enginex.tenancy.context import TenantContext

AGENT_KEY = "noop-three"
STEPS_PER_RUN = 3
DURABLE_COMMITS_PER_RUN = 2 * STEPS_PER_RUN  # each step: its claim, then its guarded commit
THROUGHPUT_TENANTS = 4
MANIFEST: dict[str, Any] = {
    "agent": {"id": AGENT_KEY, "name": "Three no-op steps", "version": "1.0.0",
              "description": "Three chained set_output tool nodes: the engine's own cost."},
    "required_tools": ["set_output"],
    "graph": {
        "entry_node": "one", "terminal_nodes": ["three"], "max_steps": 5,
        "nodes": [{"id": name, "node_type": "tool", "tool": "set_output",
                   "arguments": {"key": name, "value": i}, "output_key": name}
                  for i, name in enumerate(("one", "two", "three"), start=1)],
        "edges": [{"id": "e1", "source": "one", "target": "two", "condition": "on_success"},
                  {"id": "e2", "source": "two", "target": "three",
                   "condition": "on_success"}],
    },
}


def log(message: str) -> None:
    print(f"  .. {message}", flush=True)


# --- throwaway databases -------------------------------------------------------------------------


@contextlib.contextmanager
def backend_settings(backend: str) -> Iterator[tuple[Settings, PgDatabase | None]]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"enginex-bench-engine-{backend}-"))
    pg = PgDatabase("enginex_bench_engine") if backend == "postgres" else None
    try:
        values: dict[str, Any] = {"data_dir": data_dir, "master_key": generate_master_key(),
                                  "base_url": "http://127.0.0.1", "log_level": "WARNING",
                                  "embedded_worker": False}
        if pg is not None:
            values.update(database_url=pg.url(pg.app), migration_database_url=pg.url(pg.owner))
        settings = Settings(**values)
        upgrade(settings)
        yield settings, pg
    finally:
        if pg is not None:
            pg.drop()
        shutil.rmtree(data_dir, ignore_errors=True)


# --- tenants, agent, queueing --------------------------------------------------------------------


def load_agent(tmp: Path) -> LoadedPackage:
    (tmp / "agent").mkdir(exist_ok=True)
    (tmp / "agent" / "agent.json").write_text(json.dumps(MANIFEST))
    return load_directory(tmp / "agent", known_tools=known_tool_names())


async def make_tenant(db: Database, slug: str, package: LoadedPackage) -> TenantContext:
    """A tenant with the no-op agent deployed (service layer, one transaction)."""
    async with db.sessions() as session:
        _org, ctx = await create_organization(session, slug=slug, name=f"Bench {slug}")
        await deploy_package(session, ctx, package, actor=None)
        await session.commit()
        return ctx


async def queue(db: Database, ctx: TenantContext, count: int, batch: int = 500) -> None:
    """Queue ``count`` runs through ``start_run`` (validation, queued event, audit, notify)."""
    done = 0
    while done < count:
        async with db.sessions() as session:
            await set_tenant(session, ctx.org_id)
            for _ in range(min(batch, count - done)):
                await start_run(session, ctx, agent_key=AGENT_KEY, version=None, inputs={})
            await session.commit()
        done += min(batch, count - done)


async def queue_bulk(db: Database, ctx: TenantContext, count: int) -> None:
    """Queue a large backlog fast: the rows ``start_run`` writes (run + its ``queued`` event),
    inserted in one flush, without the per-run audit entry. Setup only, not measured."""
    from sqlalchemy import select

    async with db.sessions() as session:
        await set_tenant(session, ctx.org_id)
        agent = (await session.execute(select(Agent).where(
            Agent.tenant_id == ctx.org_id, Agent.key == AGENT_KEY))).scalar_one()
        version = (await session.execute(select(AgentVersion).where(
            AgentVersion.tenant_id == ctx.org_id,
            AgentVersion.id == agent.latest_version_id))).scalar_one()
        base = utcnow()
        runs = [Run(id=new_id(), tenant_id=ctx.org_id, agent_id=agent.id,
                    agent_version_id=version.id, agent_key=agent.key,
                    agent_version=version.version, status="queued", inputs={},
                    next_node=MANIFEST["graph"]["entry_node"], last_event_seq=1,
                    created_at=base + timedelta(microseconds=i),
                    queued_at=base + timedelta(microseconds=i))
                for i in range(count)]
        session.add_all(runs)
        await session.flush()
        session.add_all([RunEvent(tenant_id=ctx.org_id, run_id=run.id, seq=1, kind="queued",
                                  node_id=None, data={"agent": agent.key,
                                                      "version": version.version})
                         for run in runs])
        await notify_workers(session)
        await session.commit()


@dataclass
class Progress:
    succeeded: int = 0
    failed: int = 0
    first_started: datetime | None = None
    last_finished: datetime | None = None


async def progress(db: Database, tenants: list[TenantContext]) -> Progress:
    """Succeeded/failed runs of ``tenants`` and their first start and last finish."""
    from sqlalchemy import func, select

    result = Progress()
    for ctx in tenants:
        async with db.sessions() as session:
            await set_tenant(session, ctx.org_id)
            rows = (await session.execute(
                select(Run.status, func.count(), func.min(Run.started_at),
                       func.max(Run.finished_at))
                .where(Run.tenant_id == ctx.org_id,
                       Run.status.in_(("succeeded", "failed")))
                .group_by(Run.status))).all()
        for status, count, started, finished in rows:
            if status == "succeeded":
                result.succeeded += count
            else:
                result.failed += count
            if started is not None and (result.first_started is None
                                        or started < result.first_started):
                result.first_started = started
            if finished is not None and (result.last_finished is None
                                         or finished > result.last_finished):
                result.last_finished = finished
    return result


async def xact_counts(settings: Settings) -> tuple[int, int] | None:
    """(committed, rolled back) transactions of the database so far; None on SQLite."""
    if not settings.is_postgres:
        return None
    async with await psycopg.AsyncConnection.connect(_libpq(settings.resolved_migration_url),
                                                     autocommit=True) as conn:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await (await conn.execute(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()")).fetchone()
        return (int(row[0]), int(row[1])) if row else None


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


# --- worker processes ----------------------------------------------------------------------------


def _worker_command() -> list[str]:
    script = shutil.which("enginex", path=str(Path(sys.executable).parent))
    if script:
        return [script, "worker"]
    return [sys.executable, "-c", "from enginex.cli import main; main()", "worker"]


@contextlib.contextmanager
def workers(settings: Settings, count: int, slots: int) -> Iterator[list[subprocess.Popen]]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ENGINEX_")}
    env.update({
        "ENGINEX_DATABASE_URL": settings.resolved_database_url,
        "ENGINEX_MIGRATION_DATABASE_URL": settings.resolved_migration_url,
        "ENGINEX_MASTER_KEY": settings.master_key,
        "ENGINEX_DATA_DIR": str(settings.data_dir),
        "ENGINEX_STORAGE_DIR": str(settings.resolved_storage_dir),
        "ENGINEX_WORKER_SLOTS": str(slots),
        "ENGINEX_LOG_LEVEL": "WARNING",
    })
    logfile = settings.data_dir / "workers.log"
    processes: list[subprocess.Popen] = []
    with open(logfile, "ab") as out:
        try:
            seen = logfile.read_text().count(" started (") if logfile.exists() else 0
            for _ in range(count):
                processes.append(subprocess.Popen(_worker_command(), env=env, stdout=out,
                                                  stderr=subprocess.STDOUT))
            deadline = time.monotonic() + 120
            while logfile.read_text().count(" started (") < seen + count:
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    raise BenchError(f"worker processes did not start:\n"
                                     f"{logfile.read_text()[-3000:]}")
                time.sleep(0.1)
            yield processes
        finally:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    if any(p.returncode not in (0, -signal.SIGTERM) for p in processes):
        raise BenchError(f"a worker process failed; see {logfile}:\n{logfile.read_text()[-3000:]}")


def cpu_seconds(processes: list[subprocess.Popen]) -> float | None:
    """User + system CPU the processes used so far (Linux /proc), or None."""
    total = 0
    for process in processes:
        try:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


# --- (a) throughput ------------------------------------------------------------------------------


@dataclass
class Throughput:
    runs: int
    seconds: float
    failed: int
    worker_processes: int
    slots: int
    commits_per_run: float | None = None
    rollbacks_per_run: float | None = None
    worker_cpu_ms_per_run: float | None = None

    @property
    def runs_per_second(self) -> float:
        return self.runs / self.seconds if self.seconds > 0 else 0.0


async def measure_throughput(settings: Settings, db: Database, package: LoadedPackage,
                             args: argparse.Namespace, processes: int) -> Throughput:
    tenants = [await make_tenant(db, f"tput-{i}", package) for i in range(THROUGHPUT_TENANTS)]
    per_tenant = max(1, args.runs // THROUGHPUT_TENANTS)
    total = per_tenant * THROUGHPUT_TENANTS
    log(f"starting {processes} worker process(es) x {args.slots} slots")
    with workers(settings, processes, args.slots) as running:
        cpu_before = cpu_seconds(running)  # start-up (imports) is not counted
        counts_before = await xact_counts(settings)
        log(f"queueing {total} runs over {THROUGHPUT_TENANTS} tenants")
        for ctx in tenants:
            await queue(db, ctx, per_tenant)
        deadline = time.monotonic() + args.timeout
        while True:
            await asyncio.sleep(0.5)
            state = await progress(db, tenants)
            if state.succeeded + state.failed >= total:
                break
            if time.monotonic() > deadline:
                log(f"timeout: {state.succeeded} of {total} runs finished; measuring those")
                break
        cpu_after = cpu_seconds(running)
    await asyncio.sleep(1.0)  # statistics reach pg_stat_database asynchronously
    counts_after = await xact_counts(settings)
    state = await progress(db, tenants)
    if state.first_started is None or state.last_finished is None or not state.succeeded:
        raise BenchError("no run finished; see workers.log in the data directory")
    seconds = (state.last_finished - state.first_started).total_seconds()
    result = Throughput(runs=state.succeeded, seconds=seconds, failed=state.failed,
                        worker_processes=processes, slots=args.slots)
    if counts_before is not None and counts_after is not None:
        result.commits_per_run = (counts_after[0] - counts_before[0]) / state.succeeded
        result.rollbacks_per_run = (counts_after[1] - counts_before[1]) / state.succeeded
    if cpu_before is not None and cpu_after is not None:
        result.worker_cpu_ms_per_run = 1000 * (cpu_after - cpu_before) / state.succeeded
    await check_checkpoints(db, tenants[0])
    for ctx in tenants:  # runs left over after a timeout must not compete in what follows
        await withdraw(db, ctx)
    return result


async def withdraw(db: Database, ctx: TenantContext) -> None:
    """Cancel the tenant's unfinished runs (benchmark bookkeeping between phases)."""
    from sqlalchemy import update

    async with _tenant_session(db, ctx) as session:
        await session.execute(update(Run).where(Run.status.in_(("queued", "running"))).values(
            status="cancelled", lease_owner=None, lease_expires_at=None))
        await session.commit()


async def check_checkpoints(db: Database, ctx: TenantContext) -> None:
    """Sanity: every succeeded run has exactly the checkpoints 1..STEPS_PER_RUN."""
    from sqlalchemy import func, select

    async with db.sessions() as session:
        await set_tenant(session, ctx.org_id)
        succeeded = set((await session.execute(select(Run.id).where(
            Run.tenant_id == ctx.org_id, Run.status == "succeeded"))).scalars())
        per_run = dict((await session.execute(
            select(Checkpoint.run_id, func.count()).where(Checkpoint.tenant_id == ctx.org_id)
            .group_by(Checkpoint.run_id))).all())
    wrong = [run for run in succeeded if per_run.get(run) != STEPS_PER_RUN]
    if wrong:
        raise BenchError(f"{len(wrong)} succeeded runs without exactly {STEPS_PER_RUN} "
                         "checkpoints")


# --- ceiling: single-row INSERT commits ---------------------------------------------------------


def pg_commit_rate(settings: Settings, connections: int, seconds: float) -> float:
    """Autocommitted single-row INSERTs per second over ``connections`` connections."""
    dsn = _libpq(settings.resolved_migration_url)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_commit (id bigserial PRIMARY KEY, "
                     "at timestamptz NOT NULL DEFAULT now(), v integer NOT NULL)")
    counts = [0] * connections
    start = threading.Barrier(connections + 1)
    stop = threading.Event()

    def insert(i: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            start.wait()
            n = 0
            while not stop.is_set():
                conn.execute("INSERT INTO bench_commit (v) VALUES (%s)", (n,))
                n += 1
            counts[i] = n

    threads = [threading.Thread(target=insert, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - began)


def sqlite_commit_rate(settings: Settings, seconds: float) -> float:
    """The same on SQLite, with the engine's pragmas (WAL, synchronous=NORMAL)."""
    conn = sqlite3.connect(settings.data_dir / "bench_commit.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE IF NOT EXISTS bench_commit (id INTEGER PRIMARY KEY, "
                     "v INTEGER NOT NULL)")
        n, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO bench_commit (v) VALUES (?)", (n,))
            conn.execute("COMMIT")
            n += 1
        return n / (time.perf_counter() - began)
    finally:
        conn.close()


# --- (b) fairness --------------------------------------------------------------------------------


@dataclass
class Fairness:
    backlog: int
    claims_before_b: int = 0  # A's claims before B queued (scheduler part)
    claims_until_b: int = 0  # claims after B queued, B's included
    claim_ms: float = 0.0  # median claim (+ commit) with the backlog in place
    claim_ms_short: float = 0.0  # the same with a queue of 25 runs
    b_start_seconds: float = 0.0
    b_finish_seconds: float = 0.0
    a_steps_meanwhile: int = 0
    a_runs_per_second: float = 0.0
    a_remaining_at_b: int = 0


@contextlib.asynccontextmanager
async def _tenant_session(db: Database, ctx: TenantContext) -> AsyncIterator[Any]:
    async with db.sessions() as session:
        await set_tenant(session, ctx.org_id)
        yield session


async def _claim(db: Database, worker: str, lease: int, limit: int) -> Any:
    async with db.sessions() as session:
        found = await claim_next(session, worker=worker, lease_seconds=lease, tenant_limit=limit)
        await session.commit()
        return found


async def _timed_claim(db: Database, expected: TenantContext) -> float:
    """One claim by a single-slot worker; its duration (claim + commit) in seconds."""
    t0 = time.perf_counter()
    found = await _claim(db, "bench-single-slot", 600, 1_000_000)
    elapsed = time.perf_counter() - t0
    if found is None or found.tenant_id != expected.org_id:
        raise BenchError("the scheduler did not hand out the expected tenant's run")
    return elapsed


async def measure_fairness(settings: Settings, db: Database, package: LoadedPackage,
                           args: argparse.Namespace, processes: int) -> Fairness:
    from sqlalchemy import func, select, update

    result = Fairness(backlog=args.backlog)
    tenant_a = await make_tenant(db, "fair-a", package)
    tenant_b = await make_tenant(db, "fair-b", package)
    # Baseline: the cost of a claim when A's queue is short.
    await queue_bulk(db, tenant_a, 25)
    result.claim_ms_short = 1000 * statistics.median(
        [await _timed_claim(db, tenant_a) for _ in range(20)])
    await withdraw(db, tenant_a)
    began = time.monotonic()
    await queue_bulk(db, tenant_a, args.backlog)
    log(f"tenant A queued {args.backlog} runs in {time.monotonic() - began:.1f} s")

    # (a) the scheduler alone, one slot: A is being served, then B queues one run.
    before = 20
    timings = [await _timed_claim(db, tenant_a) for _ in range(before)]
    result.claims_before_b = before
    await queue(db, tenant_b, 1)
    while True:
        t0 = time.perf_counter()
        found = await _claim(db, "bench-single-slot", 600, 1_000_000)
        timings.append(time.perf_counter() - t0)
        result.claims_until_b += 1
        if found is None:
            raise BenchError("tenant B's run was never claimed")
        if found.tenant_id == tenant_b.org_id:
            break
    result.claim_ms = 1000 * statistics.median(timings)
    # Undo: A's claimed runs go back to the queue; B's first run is withdrawn.
    async with _tenant_session(db, tenant_a) as session:
        await session.execute(update(Run).where(Run.lease_owner == "bench-single-slot").values(
            status="queued", lease_owner=None, lease_expires_at=None, started_at=None))
        await session.commit()
    await withdraw(db, tenant_b)

    # (b) real workers churn through A's backlog; B queues one run in the middle.
    async def a_succeeded() -> int:
        async with _tenant_session(db, tenant_a) as session:
            return int((await session.execute(select(func.count()).select_from(Run).where(
                Run.tenant_id == tenant_a.org_id, Run.status == "succeeded"))).scalar_one())

    with workers(settings, processes, args.slots):
        deadline = time.monotonic() + args.timeout
        while (done := await a_succeeded()) < 20:
            if time.monotonic() > deadline:
                raise BenchError(f"only {done} of A's runs finished in {args.timeout} s")
            await asyncio.sleep(0.2)
        t_queue, done_at_queue = time.monotonic(), done
        await queue(db, tenant_b, 1)
        b_run: Run | None = None
        while True:
            async with _tenant_session(db, tenant_b) as session:
                b_run = (await session.execute(select(Run).where(
                    Run.tenant_id == tenant_b.org_id,
                    Run.status != "cancelled"))).scalar_one()
            if b_run.status in ("succeeded", "failed"):
                break
            if time.monotonic() > deadline:
                raise BenchError("tenant B's run did not finish in time")
            await asyncio.sleep(0.05)
        done_after = await a_succeeded()
        elapsed = time.monotonic() - t_queue
    assert b_run is not None and b_run.started_at is not None and b_run.finished_at is not None
    result.b_start_seconds = (b_run.started_at - b_run.queued_at).total_seconds()
    result.b_finish_seconds = (b_run.finished_at - b_run.queued_at).total_seconds()
    result.a_runs_per_second = (done_after - done_at_queue) / elapsed if elapsed > 0 else 0.0
    result.a_remaining_at_b = args.backlog - done_at_queue
    async with _tenant_session(db, tenant_a) as session:
        result.a_steps_meanwhile = int((await session.execute(
            select(func.count()).select_from(Checkpoint).where(
                Checkpoint.tenant_id == tenant_a.org_id,
                Checkpoint.at >= b_run.queued_at,
                Checkpoint.at <= b_run.started_at + timedelta(milliseconds=1)))).scalar_one())
    return result


# --- one backend ---------------------------------------------------------------------------------


@dataclass
class BackendResult:
    backend: str
    throughput: Throughput | None = None
    commit_rates: dict[str, float] = field(default_factory=dict)
    fairness: Fairness | None = None


async def bench_backend_async(backend: str, args: argparse.Namespace) -> BackendResult:
    result = BackendResult(backend)
    processes = args.workers or (1 if backend == "sqlite" else 2)
    with backend_settings(backend) as (settings, _pg):
        db = Database(settings)
        try:
            package = load_agent(settings.data_dir)
            result.throughput = await measure_throughput(settings, db, package, args,
                                                         processes)
            log("measuring single-row INSERT commits (the ceiling)")
            if backend == "postgres":
                result.commit_rates["1 connection"] = pg_commit_rate(settings, 1, 3.0)
                result.commit_rates["4 connections"] = pg_commit_rate(settings, 4, 3.0)
            else:
                result.commit_rates["1 connection"] = sqlite_commit_rate(settings, 2.0)
            result.fairness = await measure_fairness(settings, db, package, args, processes)
        finally:
            await db.dispose()
    return result


# --- report --------------------------------------------------------------------------------------


def print_backend(result: BackendResult) -> None:
    t, f = result.throughput, result.fairness
    print(f"\n[{result.backend}]")
    if t is not None:
        print(f"  throughput      {t.runs_per_second:8.1f} runs/s  ({t.runs} runs x "
              f"{STEPS_PER_RUN} steps in {t.seconds:.2f} s = "
              f"{t.runs_per_second * STEPS_PER_RUN:.0f} steps/s; {t.worker_processes} worker "
              f"process(es) x {t.slots} slots; {t.failed} failed)")
        if t.worker_cpu_ms_per_run is not None:
            print(f"  worker CPU      {t.worker_cpu_ms_per_run:8.1f} ms per run  (user+system "
                  "of the worker processes, not disturbed by other load: "
                  f"~{1000 / t.worker_cpu_ms_per_run:.0f} runs/s per core they get)")
        if t.commits_per_run is not None and t.rollbacks_per_run is not None:
            print(f"  transactions    {t.commits_per_run:8.1f} committed + "
                  f"{t.rollbacks_per_run:.1f} rolled back per run (pg_stat_database: also "
                  "counts pool pre-ping SELECT 1s, read-only loads, idle claims, this "
                  "script's polling)")
    name = "PostgreSQL" if result.backend == "postgres" else "SQLite"
    for label, rate in result.commit_rates.items():
        print(f"  {name} single-row INSERT commits, {label}: {rate:10,.0f}/s  -> ceiling "
              f"~{rate / DURABLE_COMMITS_PER_RUN:,.0f} runs/s at {DURABLE_COMMITS_PER_RUN} "
              f"durable commits per run ({STEPS_PER_RUN} claims + {STEPS_PER_RUN} step "
              "commits)")
    if f is not None:
        fifo_seconds = (f.backlog / f.a_runs_per_second) if f.a_runs_per_second else 0.0
        print(f"  fairness        tenant A: {f.backlog:,} queued runs; tenant B queues 1")
        print(f"    scheduler     B's run was claim #{f.claims_until_b} after it was queued "
              f"(A had {f.claims_before_b} claims before); FIFO: position {f.backlog + 1:,} "
              f"(all ~{f.backlog * STEPS_PER_RUN:,} step claims of A first); "
              f"median claim: {f.claim_ms:.2f} ms with the backlog in place, "
              f"{f.claim_ms_short:.2f} ms with a queue of 25")
        print(f"    with workers  B started {f.b_start_seconds * 1000:.0f} ms after it was "
              f"queued ({f.a_steps_meanwhile} steps of A committed meanwhile), finished after "
              f"{f.b_finish_seconds * 1000:.0f} ms; FIFO: after A's {f.a_remaining_at_b:,} "
              f"remaining runs ~ {f.a_remaining_at_b / max(f.a_runs_per_second, 1e-9):,.0f} s "
              f"(A's rate {f.a_runs_per_second:.1f} runs/s; the whole backlog "
              f"~ {fifo_seconds:,.0f} s)")


def machine_line() -> str:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"machine: {os.cpu_count()} cores ({usable} usable), {platform.machine()}, "
            f"Python {platform.python_version()}; load average (1 min) {load:.1f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--runs", type=int, default=400,
                        help="runs of the 3-node agent for the throughput figure (default 400)")
    parser.add_argument("--backlog", type=int, default=5000,
                        help="tenant A's queued runs for the fairness figure (default 5000)")
    parser.add_argument("--workers", type=int, default=0,
                        help="worker processes (default: 1 on SQLite, 2 on PostgreSQL)")
    parser.add_argument("--slots", type=int, default=4, help="slots per worker (default 4)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for a phase before measuring what finished")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("EngineX engine benchmark: 3-node no-op runs through queue -> workers -> checkpoints")
    print(machine_line())
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results: list[BackendResult] = []
    began = time.monotonic()
    for backend in backends:
        if backend == "postgres" and (problem := pg_problem()):
            print(f"\n[postgres] skipped: PostgreSQL is not reachable at {PG_ADMIN_DSN}: "
                  f"{problem}")
            continue
        print(f"\n== {backend} ==", flush=True)
        try:
            results.append(asyncio.run(bench_backend_async(backend, args)))
        except BenchError as exc:
            print(f"[{backend}] could not run: {exc}", file=sys.stderr)
            return 1
    print("\n=== summary ===")
    print(machine_line())
    for result in results:
        print_backend(result)
    print(f"\n(total {time.monotonic() - began:.0f} s; started at {utcnow():%Y-%m-%d %H:%M} UTC)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
