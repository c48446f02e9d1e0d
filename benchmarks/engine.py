"""Engine benchmark: runs per second through queue -> workers -> checkpoints, and fairness.

For each backend (SQLite, and PostgreSQL when reachable) this script:

0. **engine/ceiling** (all that ``--quick`` runs): an in-process ``Worker`` drains the no-op
   agent's runs (steps/s), then the worker's own SQL, captured per transaction with its
   parameters (``SqlCapture``), is replayed raw: ``pgbench`` on PostgreSQL (one client per
   slot, prepared statements, every iteration on fresh clones of the captured runs), raw
   ``sqlite3`` on SQLite. The last lines print ``engine/ceiling <backend>: <ratio>`` (engine
   steps/s / replay steps/s, median of the rounds). See benchmarks/README.md;
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
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import psycopg.rows
import psycopg.types.json
from psycopg.conninfo import make_conninfo
from sqlalchemy import event, make_url

from benchmarks.pgdb import PG_ADMIN_DSN, BenchError, PgDatabase, pg_problem
from enginex.agents.models import Agent, AgentVersion
from enginex.agents.package import LoadedPackage, load_directory
from enginex.agents.service import deploy_package, known_tool_names
from enginex.config import Settings
from enginex.db import Database, set_tenant
from enginex.kit.crypto import generate_master_key, load_master_key
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow
from enginex.migrate import upgrade
from enginex.orgs.service import create_organization
from enginex.runs.engine import EngineDeps
from enginex.runs.models import Checkpoint, Run, RunEvent
from enginex.runs.runtime import build_engine
from enginex.runs.scheduler import claim_next
from enginex.runs.service import notify_workers, start_run
from enginex.runs.worker import Worker
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


# --- engine/ceiling: the engine's own SQL, captured and replayed raw -----------------------------


@dataclass
class Txn:
    """One transaction as the engine issued it: (statement, parameters) executions in order
    (SQLite: its BEGIN included), then how it ended."""

    statements: list[tuple[str, Any]] = field(default_factory=list)
    end: str = "COMMIT"


class SqlCapture:
    """Records every statement the engine's connections execute while ``on`` (SQLAlchemy
    ``before_cursor_execute``), grouped by transaction (``begin``/``commit``/``rollback``).
    Only transactions that begin while capturing are kept, whole."""

    def __init__(self, db: Database) -> None:
        self.engine = db.engine.sync_engine
        self.on = False
        self.open: dict[int, Txn] = {}
        self.txns: list[Txn] = []
        event.listen(self.engine, "begin", self._begin)
        event.listen(self.engine, "before_cursor_execute", self._execute)
        event.listen(self.engine, "commit", self._commit)
        event.listen(self.engine, "rollback", self._rollback)

    def close(self) -> None:
        event.remove(self.engine, "begin", self._begin)
        event.remove(self.engine, "before_cursor_execute", self._execute)
        event.remove(self.engine, "commit", self._commit)
        event.remove(self.engine, "rollback", self._rollback)

    def _begin(self, conn: Any) -> None:
        if self.on:
            self.open.setdefault(id(conn), Txn())

    def _execute(self, conn: Any, _cursor: Any, statement: str, parameters: Any,
                 _context: Any, executemany: bool) -> None:
        if self.on and statement.startswith("BEGIN"):  # SQLite's, issued in a begin hook
            self.open[id(conn)] = Txn()
        txn = self.open.get(id(conn))
        if txn is None:
            return
        for params in (parameters if executemany else [parameters]):
            txn.statements.append((statement, params))

    def _end(self, conn: Any, end: str) -> None:
        txn = self.open.pop(id(conn), None)
        if txn is not None:
            txn.end = end
            self.txns.append(txn)

    def _commit(self, conn: Any) -> None:
        self._end(conn, "COMMIT")

    def _rollback(self, conn: Any) -> None:
        self._end(conn, "ROLLBACK")


def clone_id(k: int, i: int) -> uuid.UUID:
    """The id of the clone of captured run ``i`` used by replay iteration ``k``."""
    return uuid.UUID(f"{k:08x}00004000{0x8000:04x}{i:012x}")


_CLONE_ID_SQL = "(lpad(to_hex({k}), 8, '0') || '-0000-4000-8000-' || lpad(to_hex({i}), 12, '0'))"


def captured_steps(txns: list[Txn]) -> int:
    """Step commits among the captured transactions (one checkpoint row each)."""
    return sum(1 for txn in txns if txn.end == "COMMIT"
               for statement, _ in txn.statements
               if statement.lstrip().upper().startswith("INSERT INTO CHECKPOINTS"))


@dataclass
class EngineRate:
    steps: int
    seconds: float
    cpu_seconds: float

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Replay:
    steps: int
    seconds: float
    tool: str

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Ceiling:
    slots: int
    engine: list[EngineRate] = field(default_factory=list)
    replay: list[Replay] = field(default_factory=list)
    txns_per_step: float = 0.0
    statements_per_step: float = 0.0
    captured_runs: int = 0
    captured_steps: int = 0

    def ratios(self) -> list[float]:
        return [e.steps_per_second / r.steps_per_second
                for e, r in zip(self.engine, self.replay, strict=False)
                if r.steps_per_second > 0]


async def _drain(db: Database, engine_db: Database, deps: EngineDeps,
                 tenants: list[TenantContext], total: int, slots: int, wait_seconds: float,
                 since: datetime, capture: SqlCapture | None = None) -> EngineRate:
    """Start an in-process Worker with ``slots`` slots, wait until the ``total`` runs of
    ``tenants`` queued since ``since`` finished; the rate is read from their own start and
    finish times (worker start-up is not counted)."""
    worker = Worker(engine_db, deps, slots=slots, tenant_limit=THROUGHPUT_TENANTS,
                    poll_seconds=1.0, database_url=None)
    if capture is not None:
        capture.on = True
    cpu_before = time.process_time()
    task = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + wait_seconds
        while (finished := await _finished(db, tenants, since))[0] < total:
            if time.monotonic() > deadline or task.done():
                raise BenchError(f"only {finished[0]} of {total} runs finished in "
                                 f"{wait_seconds:.0f} s")
            await asyncio.sleep(0.2)
    finally:
        if capture is not None:
            capture.on = False
        worker.stop()
        await task
    cpu = time.process_time() - cpu_before
    count, first, last = finished
    if count != total or first is None or last is None:
        raise BenchError(f"{total - count} of {total} runs did not succeed")
    return EngineRate(steps=STEPS_PER_RUN * count, cpu_seconds=cpu,
                      seconds=(last - first).total_seconds())


async def _finished(db: Database, tenants: list[TenantContext], since: datetime
                    ) -> tuple[int, datetime | None, datetime | None]:
    """Runs of ``tenants`` queued since ``since`` that finished (a failed run counts, and
    fails the phase): how many, the first start, the last finish of those that succeeded."""
    from sqlalchemy import func, select

    count, first, last = 0, None, None
    for ctx in tenants:
        async with _tenant_session(db, ctx) as session:
            rows = (await session.execute(
                select(Run.status, func.count(), func.min(Run.started_at),
                       func.max(Run.finished_at))
                .where(Run.tenant_id == ctx.org_id, Run.queued_at >= since,
                       Run.status.in_(("succeeded", "failed")))
                .group_by(Run.status))).all()
        for status, n, started, finished in rows:
            if status == "failed":
                raise BenchError(f"{n} runs failed")
            count += n
            first = started if first is None else min(first, started)
            last = finished if last is None else max(last, finished)
    return count, first, last


async def _run_ids(db: Database, tenants: list[TenantContext], status: str) -> list[uuid.UUID]:
    from sqlalchemy import select

    ids: list[uuid.UUID] = []
    for ctx in tenants:
        async with _tenant_session(db, ctx) as session:
            ids.extend((await session.execute(select(Run.id).where(
                Run.tenant_id == ctx.org_id, Run.status == status))).scalars())
    return ids


_PYFORMAT = re.compile(r"%\((\w+)\)s")


def _pg_value(value: Any) -> str:
    if isinstance(value, psycopg.types.json.Json | psycopg.types.json.Jsonb):
        return json.dumps(value.obj)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def pgbench_script(txns: list[Txn], runs: list[uuid.UUID]) -> tuple[str, dict[str, str]]:
    """The captured transactions as one pgbench script (prepared mode: every parameter a
    pgbench variable, sent as a bind parameter like psycopg's), plus the variables' values.
    The captured runs' ids become per-iteration clone ids (``:r<i>``, set by a first
    ``\\gset``), so every iteration writes rows of its own."""
    index = {str(run): i for i, run in enumerate(runs)}
    variables: dict[str, str] = {}
    lines = ["\\set n :n + 1", "\\set k :client_id * :per_client + :n"]
    ids = ", ".join(_CLONE_ID_SQL.format(k=":k::int", i=i) + f" AS r{i}"
                    for i in range(len(runs)))
    lines.append(f"SELECT {ids} \\gset")
    for txn in txns:
        lines.append("BEGIN;")
        for statement, params in txn.statements:
            params = params or {}

            def bind(match: re.Match[str], params: dict[str, Any] = params) -> str:
                value = params[match.group(1)]
                if value is None:
                    return "NULL"
                text_value = _pg_value(value)
                if text_value in index:
                    return f":r{index[text_value]}"
                if text_value == "":  # pgbench refuses an empty -D value
                    return "''"
                name = f"v{len(variables)}"
                variables[name] = text_value
                return f":{name}"

            sql = _PYFORMAT.sub(bind, statement).replace("%%", "%")
            lines.append(" ".join(sql.split()) + ";")
        lines.append(f"{txn.end};")
    return "\n".join(lines) + "\n", variables


def _pg_clones(pg: PgDatabase, runs: list[uuid.UUID], snapshot: list[dict[str, Any]],
               worker: str, offset: int, count: int) -> None:
    """Clone the captured runs as they were once queued and claimed by ``worker``, for the
    replay iterations k = offset + 1 .. offset + count (clone ids ``clone_id(k, i)``)."""
    columns = [c.name for c in Run.__table__.columns]
    override = {"id": _CLONE_ID_SQL.format(k="k", i="s.idx") + "::uuid",
                "status": "'running'", "lease_owner": "%(w)s", "lease_expires_at": "NULL",
                "attempts": "1", "started_at": "now()",
                "queued_at": "s.queued_at + k * interval '1 microsecond'"}
    select_list = ", ".join(override.get(c, f"s.{c}") for c in columns)
    with psycopg.connect(_admin_dsn(pg), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_runs_snapshot")
        conn.execute("CREATE TABLE bench_runs_snapshot AS SELECT 0 AS idx, * FROM runs "
                     "WHERE false")
        for i, (run, row) in enumerate(zip(runs, snapshot, strict=True)):
            assert row["id"] == run
            conn.execute(
                f"INSERT INTO bench_runs_snapshot (idx, {', '.join(columns)}) VALUES "
                f"(%s, {', '.join(['%s'] * len(columns))})",
                [i, *[psycopg.types.json.Json(row[c]) if isinstance(row[c], dict | list)
                      else row[c] for c in columns]])
        conn.execute(f"INSERT INTO runs ({', '.join(columns)}) SELECT {select_list} "
                     "FROM bench_runs_snapshot s, generate_series(%(a)s::int, %(b)s::int) k",
                     {"w": worker, "a": offset + 1, "b": offset + count})
        conn.execute("ANALYZE runs")


def _cancel_leftovers(settings: Settings, pg: PgDatabase | None) -> None:
    """After a replay: clones it did not finish (claimed by its claims, or never reached)
    must not be picked up by the engine in the next round."""
    sql = ("UPDATE runs SET status = 'cancelled', lease_owner = NULL, lease_expires_at = NULL "
           "WHERE status IN ('queued', 'running')")
    if pg is not None:
        with psycopg.connect(_admin_dsn(pg), autocommit=True) as conn:
            conn.execute(sql)
        return
    conn = sqlite3.connect(make_url(settings.resolved_database_url).database)
    try:
        conn.execute(sql)
        conn.commit()
    finally:
        conn.close()


def _admin_dsn(pg: PgDatabase) -> str:
    """The superuser on the benchmark database (clones are set up under no RLS)."""
    return make_conninfo(PG_ADMIN_DSN, dbname=pg.name)


def _pg_snapshot(pg: PgDatabase, runs: list[uuid.UUID]) -> list[dict[str, Any]]:
    with psycopg.connect(_admin_dsn(pg), row_factory=psycopg.rows.dict_row) as conn:
        rows = conn.execute("SELECT * FROM runs WHERE id = ANY(%s)", [runs]).fetchall()
    by_id = {row["id"]: row for row in rows}
    return [by_id[run] for run in runs]


def pgbench_replay(settings: Settings, pg: PgDatabase, txns: list[Txn],
                   runs: list[uuid.UUID], snapshot: list[dict[str, Any]], worker: str,
                   clients: int, seconds: float, steps_per_script: int, per_client: int,
                   offset: int) -> Replay:
    """Replay the captured transactions with pgbench (``clients`` clients, prepared mode),
    in batches until ``seconds`` of replay: each batch clones the captured runs for
    ``per_client`` script executions per client (as many runs as the engine's queue held),
    runs ``pgbench -t per_client`` and cancels what is left. Only pgbench's own time
    (``tps ... without initial connection time``) is counted."""
    script, variables = pgbench_script(txns, runs)
    path = settings.data_dir / "engine_replay.sql"
    path.write_text(script)
    env = dict(os.environ, PGHOST=pg.host, PGPORT=str(pg.port), PGUSER=pg.app,
               PGDATABASE=pg.name)
    defines = [arg for name, value in variables.items() for arg in ("-D", f"{name}={value}")]
    scripts, elapsed = 0, 0.0
    while elapsed < seconds:
        _pg_clones(pg, runs, snapshot, worker, offset, per_client * clients)
        command = ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", "1",
                   "-t", str(per_client), "-f", str(path), "-D", f"n={offset}",
                   "-D", f"per_client={per_client}", *defines]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        out = done.stdout + done.stderr
        processed = re.search(r"number of transactions actually processed: (\d+)", out)
        tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
        if done.returncode != 0 or not processed or not tps or "aborted" in out:
            raise BenchError(f"pgbench failed (exit {done.returncode}):\n{out[-3000:]}\n"
                             f"script: {path}")
        scripts += int(processed.group(1))
        elapsed += int(processed.group(1)) / float(tps.group(1))
        offset += per_client * clients
        _cancel_leftovers(settings, pg)
    return Replay(steps=scripts * steps_per_script, seconds=elapsed,
                  tool=f"pgbench -M prepared -c {clients} -t {per_client}")


def sqlite_replay(settings: Settings, txns: list[Txn], runs: list[uuid.UUID],
                  snapshot: list[tuple[Any, ...]], columns: list[str], worker: str,
                  seconds: float, steps_per_script: int, passes_per_batch: int,
                  offset: int) -> Replay:
    """Replay the captured transactions with raw sqlite3 in this process, one connection
    with the engine's pragmas, repeatedly for ``seconds``: in batches of
    ``passes_per_batch`` passes, each on fresh clones of the captured runs inserted before
    the batch (as many runs as the engine's queue held), outside the timing."""
    index = {run.hex: i for i, run in enumerate(runs)}
    plan: list[tuple[str, tuple[Any, ...] | dict[str, Any], list[tuple[Any, int]]]] = []
    for txn in txns:
        for statement, params in txn.statements:
            params = params or ()
            keys = range(len(params)) if isinstance(params, tuple | list) else list(params)
            subs = [(key, index[params[key]]) for key in keys
                    if isinstance(params[key], str) and params[key] in index]
            plan.append((statement, tuple(params) if isinstance(params, list) else params,
                         subs))
        plan.append((txn.end, (), []))
    database = make_url(settings.resolved_database_url).database
    conn = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA busy_timeout=15000")
    conn.execute("PRAGMA synchronous=NORMAL")
    id_at = columns.index("id")
    fixed = {"status": "running", "lease_owner": worker, "lease_expires_at": None,
             "attempts": 1}
    insert = (f"INSERT INTO runs ({', '.join(columns)}) "
              f"VALUES ({', '.join('?' * len(columns))})")
    try:
        k, passes, elapsed = offset, 0, 0.0
        while elapsed < seconds:
            batch = range(k + 1, k + 1 + passes_per_batch)
            rows = []
            for kk in batch:
                for i, row in enumerate(snapshot):
                    values = list(row)
                    values[id_at] = clone_id(kk, i).hex
                    for name, value in fixed.items():
                        values[columns.index(name)] = value
                    rows.append(values)
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(insert, rows)
            conn.execute("COMMIT")
            started = time.perf_counter()
            for kk in batch:
                clones = [clone_id(kk, i).hex for i in range(len(runs))]
                for statement, params, subs in plan:
                    if subs:
                        if isinstance(params, dict):
                            params = dict(params)
                        else:
                            params = list(params)
                        for key, i in subs:
                            params[key] = clones[i]
                    conn.execute(statement, params)
                passes += 1
            elapsed += time.perf_counter() - started
            k = batch[-1]
    finally:
        conn.close()
    return Replay(steps=passes * steps_per_script, seconds=elapsed,
                  tool="sqlite3, 1 connection, in-process")


def _sqlite_snapshot(settings: Settings, runs: list[uuid.UUID]
                     ) -> tuple[list[tuple[Any, ...]], list[str]]:
    database = make_url(settings.resolved_database_url).database
    conn = sqlite3.connect(database)
    try:
        cursor = conn.execute("SELECT * FROM runs WHERE id IN "
                              f"({', '.join('?' * len(runs))})", [r.hex for r in runs])
        columns = [d[0] for d in cursor.description]
        by_id = {row[columns.index("id")]: row for row in cursor.fetchall()}
    finally:
        conn.close()
    return [by_id[run.hex] for run in runs], columns


async def measure_ceiling(settings: Settings, pg: PgDatabase | None, db: Database,
                          package: LoadedPackage, args: argparse.Namespace) -> Ceiling:
    """Engine steps/s (in-process Worker, ``--slots`` slots) against the raw replay of the
    engine's own SQL, in rounds: engine, then replay, ``--rounds`` times."""
    result = Ceiling(slots=args.slots)
    # The worker's own Database (as in a worker process): its SQL alone is captured, not this
    # script's setup and polling.
    engine_db = Database(settings)
    try:
        return await _measure_ceiling(settings, pg, db, engine_db, package, args, result)
    finally:
        await engine_db.dispose()


async def _measure_ceiling(settings: Settings, pg: PgDatabase | None, db: Database,
                           engine_db: Database, package: LoadedPackage,
                           args: argparse.Namespace, result: Ceiling) -> Ceiling:
    deps = build_engine(settings, engine_db, load_master_key(settings))
    tenants = [await make_tenant(db, f"ceil-{i}", package) for i in range(THROUGHPUT_TENANTS)]
    # Warm-up (imports, pool, statement caches), then the capture: a few runs per tenant,
    # queued first and snapshotted as queued, drained by a worker whose SQL is recorded.
    wait = max(args.timeout, 300.0)
    since = utcnow()
    for ctx in tenants:
        await queue(db, ctx, 2)
    await _drain(db, engine_db, deps, tenants, 2 * THROUGHPUT_TENANTS, args.slots, wait, since)
    since = utcnow()
    for ctx in tenants:
        await queue(db, ctx, args.capture_runs)
    runs = await _run_ids(db, tenants, "queued")
    if settings.is_postgres:
        assert pg is not None
        pg_snapshot = _pg_snapshot(pg, runs)
    else:
        sqlite_snapshot, columns = _sqlite_snapshot(settings, runs)
    capture = SqlCapture(engine_db)
    try:
        await _drain(db, engine_db, deps, tenants, len(runs), args.slots, wait, since, capture)
    finally:
        capture.close()
    # A worker's first presence beat INSERTs its row, later beats UPDATE it: replayed
    # repeatedly the INSERT would collide with itself, so it is left out of the replay.
    txns = [replace(t, statements=[(st, p) for st, p in t.statements
                                   if not st.startswith("INSERT INTO workers")])
            for t in capture.txns]
    steps = captured_steps(txns)
    if steps != STEPS_PER_RUN * len(runs):
        raise BenchError(f"captured {steps} step commits for {len(runs)} runs")
    result.captured_runs, result.captured_steps = len(runs), steps
    result.txns_per_step = len(txns) / steps
    result.statements_per_step = sum(len(t.statements) for t in txns) / steps
    worker = _lease_owner(txns)
    # Clones per replay batch: as many runs as the engine's queue held at the start.
    per_client = max(2, -(-args.ceiling_runs // (args.slots * len(runs))))
    log(f"captured {len(txns)} transactions, "
        f"{sum(len(t.statements) for t in txns)} statements for {steps} steps")
    for round_ in range(args.rounds):
        since = utcnow()
        for ctx in tenants:
            await queue(db, ctx, args.ceiling_runs // THROUGHPUT_TENANTS)
        rate = await _drain(db, engine_db, deps, tenants,
                            THROUGHPUT_TENANTS * (args.ceiling_runs // THROUGHPUT_TENANTS),
                            args.slots, wait, since)
        result.engine.append(rate)
        if settings.is_postgres:
            assert pg is not None
            replay = pgbench_replay(settings, pg, txns, runs, pg_snapshot, worker, args.slots,
                                    args.replay_seconds, steps, per_client,
                                    offset=round_ * 1_000_000)
        else:
            replay = sqlite_replay(settings, txns, runs, sqlite_snapshot, columns, worker,
                                   args.replay_seconds, steps, per_client * args.slots,
                                   offset=round_ * 1_000_000)
            _cancel_leftovers(settings, None)
        result.replay.append(replay)
        log(f"round {round_ + 1}: engine {rate.steps_per_second:.1f} steps/s "
            f"({rate.cpu_seconds * 1000 / max(rate.steps, 1):.1f} ms CPU per step in this "
            f"process), replay {replay.steps_per_second:.1f} steps/s")
    return result


def _lease_owner(txns: list[Txn]) -> str:
    """The worker name in the captured SQL (the lease owner the clones are claimed by)."""
    for txn in txns:
        for statement, params in txn.statements:
            if "enginex_claim_runs" in statement and isinstance(params, dict):
                return str(params["w"])
            if "UPDATE runs SET lease_owner" in statement and not isinstance(params, dict):
                return str(params[0])
    raise BenchError("no claim in the captured SQL")


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
    ceiling: Ceiling | None = None


async def bench_backend_async(backend: str, args: argparse.Namespace) -> BackendResult:
    result = BackendResult(backend)
    processes = args.workers or (1 if backend == "sqlite" else 2)
    with backend_settings(backend) as (settings, _pg):
        db = Database(settings)
        try:
            package = load_agent(settings.data_dir)
            log(f"engine/ceiling: in-process worker x {args.slots} slots, then the replay")
            result.ceiling = await measure_ceiling(settings, _pg, db, package, args)
            if args.quick:
                return result
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


def print_ceiling(backend: str, c: Ceiling) -> None:
    print(f"  engine/ceiling  {c.slots} slots; captured {c.captured_steps} steps "
          f"({c.captured_runs} runs): {c.txns_per_step:.2f} transactions, "
          f"{c.statements_per_step:.1f} statements per step")
    for i, (e, r) in enumerate(zip(c.engine, c.replay, strict=False), start=1):
        print(f"    round {i}: engine {e.steps_per_second:7.1f} steps/s "
              f"({e.steps} steps, {1000 * e.cpu_seconds / max(e.steps, 1):.1f} ms CPU/step in "
              f"the worker's process) | replay {r.steps_per_second:7.1f} steps/s ({r.tool}) "
              f"| ratio {e.steps_per_second / r.steps_per_second:.3f}")


def print_backend(result: BackendResult) -> None:
    t, f = result.throughput, result.fairness
    print(f"\n[{result.backend}]")
    if result.ceiling is not None:
        print_ceiling(result.backend, result.ceiling)
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
    parser.add_argument("--rounds", type=int, default=3,
                        help="engine/ceiling: rounds of (engine, replay) (default 3)")
    parser.add_argument("--ceiling-runs", type=int, default=200,
                        help="engine/ceiling: runs the engine drains per round (default 200)")
    parser.add_argument("--capture-runs", type=int, default=1,
                        help="engine/ceiling: runs per tenant whose SQL is captured (default 1)")
    parser.add_argument("--replay-seconds", type=float, default=8.0,
                        help="engine/ceiling: seconds of replay per round (default 8)")
    parser.add_argument("--quick", action="store_true",
                        help="engine/ceiling only: 2 rounds of 60 runs and 3 s replays")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.ceiling_runs, args.replay_seconds = 2, 60, 3.0
    return args


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
    print(f"\n(total {time.monotonic() - began:.0f} s; finished at {utcnow():%Y-%m-%d %H:%M} "
          f"UTC; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    for result in results:  # the headline, last: median of the rounds' ratios
        if result.ceiling is not None and result.ceiling.ratios():
            print(f"engine/ceiling {result.backend}: "
                  f"{statistics.median(result.ceiling.ratios()):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
