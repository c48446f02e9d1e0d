"""Retention of 1M session events on PostgreSQL while a writer inserts (issue 15, item 5).

Setup (not measured): a tenant with ``--runs`` finished sessions, finished 400 days ago, with
``--events`` events in all (inserted with ``generate_series``), one running session, and a
retention policy of 30 days for sessions.

Measured, in one run:

1. **Baseline**: the writer alone for ``--baseline`` seconds: one event of the running session
   per transaction (``INSERT`` + ``COMMIT`` through the app role, tenant bound as in the
   engine), each timed.
2. **Under retention**: the same writer while ``apply_retention`` (the worker's sweep,
   ``ENGINEX_RETENTION_BATCH_ROWS`` rows per transaction) deletes every expired session with
   all its events.

Prints the events deleted and the deletion rate, the writer's commits/s, its p50/p99 and its
**max stall** (the slowest insert+commit) for both phases, and their ratio. Goal: max stall
under retention < 1 s. The writer and the sweep share one Python process and event loop, so
the stall includes Python CPU contention too (conservative). Prints ``uptime`` first: the
machine is shared.

Run: ``.venv/bin/python benchmarks/retention_events.py [--events 1000000] [--runs 1000]
[--batch 2000] [--baseline 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from sqlalchemy import func, select

from benchmarks.engine import backend_settings, load_agent, make_tenant, queue_bulk
from benchmarks.pgdb import pg_problem
from enginex.audit.anchor import anchor_key
from enginex.db import Database, set_tenant
from enginex.kit.time import utcnow
from enginex.lifecycle.models import RetentionPolicy
from enginex.lifecycle.retention import apply_retention
from enginex.reports.storage import ArtifactStorage
from enginex.runs.models import Run, RunEvent
from enginex.tenancy.context import TenantContext


def _owner_dsn(settings_url: str) -> str:
    return settings_url.replace("postgresql+psycopg://", "postgresql://")


def seed(owner_dsn: str, tenant: uuid.UUID, runs: int, events: int) -> uuid.UUID:
    """Finish all but one of the queued runs 400 days ago and give them ``events`` events;
    the last run stays running (the writer's). Returns the running run's id."""
    per_run = max(1, events // runs)
    with psycopg.connect(owner_dsn) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, false)", (str(tenant),))
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM runs WHERE tenant_id = %s ORDER BY created_at", (tenant,))]
        live, finished = ids[-1], ids[:-1]
        conn.execute("UPDATE runs SET status = 'succeeded', finished_at = now() - "
                     "interval '400 days' WHERE tenant_id = %s AND id = ANY(%s)",
                     (tenant, finished))
        conn.execute("UPDATE runs SET status = 'running' WHERE tenant_id = %s AND id = %s",
                     (tenant, live))
        conn.execute("DELETE FROM run_events WHERE tenant_id = %s", (tenant,))
        conn.execute(
            "INSERT INTO run_events (tenant_id, run_id, seq, at, kind, node_id, data) "
            "SELECT %s, r.id, g, now() - interval '400 days', 'step', NULL, "
            "'{\"n\": 1}'::json FROM unnest(%s::uuid[]) AS r(id), generate_series(1, %s) g",
            (tenant, finished, per_run))
        conn.commit()
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE run_events")
        conn.execute("VACUUM ANALYZE runs")
    return live


async def writer(db: Database, ctx: TenantContext, run_id: uuid.UUID, stop: asyncio.Event,
                 start_seq: int) -> tuple[list[float], int]:
    """Insert one event per transaction until ``stop``; (latencies in s, next seq)."""
    latencies: list[float] = []
    seq = start_seq
    while not stop.is_set():
        began = time.perf_counter()
        async with db.sessions() as session:
            await set_tenant(session, ctx.org_id)
            session.add(RunEvent(tenant_id=ctx.org_id, run_id=run_id, seq=seq, at=utcnow(),
                                 kind="step", node_id="n", data={"seq": seq}))
            await session.commit()
        latencies.append(time.perf_counter() - began)
        seq += 1
        await asyncio.sleep(0)
    return latencies, seq


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average (uptime): {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def describe(name: str, latencies: list[float], seconds: float) -> str:
    ordered = sorted(latencies)
    p99 = ordered[int(len(ordered) * 0.99) - 1] if len(ordered) >= 100 else ordered[-1]
    return (f"{name}: {len(latencies)} commits in {seconds:.1f} s ({len(latencies) / seconds:.0f}"
            f"/s), p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
            f"max stall {ordered[-1] * 1000:.0f} ms")


async def main(args: argparse.Namespace) -> None:
    print(load())
    with backend_settings("postgres") as (settings, _pg):
        db = Database(settings)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                ctx = await make_tenant(db, "retention", load_agent(Path(tmp)))
            await queue_bulk(db, ctx, args.runs + 1)
            started = time.perf_counter()
            live = seed(_owner_dsn(settings.migration_database_url), ctx.org_id, args.runs,
                        args.events)
            async with db.sessions() as session:
                await set_tenant(session, ctx.org_id)
                total = (await session.execute(select(func.count()).select_from(RunEvent)
                                               .where(RunEvent.tenant_id == ctx.org_id))
                         ).scalar_one()
                session.add(RetentionPolicy(org_id=ctx.org_id, session_days=30))
                await session.commit()
            print(f"seeded {total} events of {args.runs} finished sessions in "
                  f"{time.perf_counter() - started:.1f} s")

            stop = asyncio.Event()
            task = asyncio.create_task(writer(db, ctx, live, stop, 10))
            await asyncio.sleep(args.baseline)
            stop.set()
            base_latencies, seq = await task
            print(describe("writer alone      ", base_latencies, args.baseline))

            stop = asyncio.Event()
            task = asyncio.create_task(writer(db, ctx, live, stop, seq))
            began = time.perf_counter()
            report = await apply_retention(db.sessions,
                                           ArtifactStorage(settings.resolved_storage_dir),
                                           anchor_key=anchor_key(bytes(32)),
                                           batch_rows=args.batch)
            elapsed = time.perf_counter() - began
            stop.set()
            latencies, _ = await task
            print(f"retention: {report.sessions} sessions, {report.rows} rows "
                  f"(events, checkpoints, approvals, reports) deleted in {elapsed:.1f} s "
                  f"({report.rows / elapsed:.0f} rows/s), batches of {args.batch}")
            print(describe("writer + retention", latencies, elapsed))
            print(f"max stall ratio (under retention / alone): "
                  f"{max(latencies) / max(base_latencies):.2f}; goal: max stall < 1 s -> "
                  f"{'met' if max(latencies) < 1 else 'NOT met'}")
            async with db.sessions() as session:
                await set_tenant(session, ctx.org_id)
                left = (await session.execute(select(func.count()).select_from(Run)
                                              .where(Run.tenant_id == ctx.org_id))).scalar_one()
            print(f"sessions left: {left} (the running one)")
            print(load())
        finally:
            await db.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--baseline", type=float, default=10.0)
    problem = pg_problem()
    if problem:
        raise SystemExit(f"PostgreSQL is not reachable: {problem}")
    asyncio.run(main(parser.parse_args()))
