"""Claim benchmark: what claiming costs with many tenants and many slots.

For each backend (SQLite, and PostgreSQL when reachable), in a throwaway database:

1. **empty claim**: ``--tenants`` organizations (1,000) and no runnable run; the median of
   ``claim_next`` + commit (one slot asking for work). On PostgreSQL also the 0002 function
   ``enginex_claim_run`` (one run, tenants scanned from ``organizations``), still installed;
2. **idle worker**: one in-process ``Worker`` with ``--slots`` slots (50) and an empty queue
   for ``--idle`` seconds: claim statements per second (a ``before_cursor_execute`` count);
3. **busy worker**: the same worker drains ``--runs`` runs of a 3-step no-op agent spread over
   10 tenants (limit 4 each): steps/s, claim statements/s and claim statements per step.

Run it with ``python -m benchmarks.claims`` (``--quick`` for fewer tenants and runs). It only
uses ``claim_next`` and ``Worker``, so the same file measures older code too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from benchmarks.engine import backend_settings, load_agent, make_tenant, progress, queue
from benchmarks.pgdb import pg_problem
from enginex.db import Database
from enginex.kit.crypto import load_master_key
from enginex.orgs.service import create_organization
from enginex.runs.runtime import build_engine
from enginex.runs.scheduler import claim_next
from enginex.runs.worker import Worker

BUSY_TENANTS = 10


def _is_claim(statement: str) -> bool:
    head = statement.lstrip().upper()
    return "enginex_claim" in statement or (
        "run_queue_state" in statement and head.startswith(("SELECT", "WITH")))


class ClaimCounter:
    def __init__(self, db: Database) -> None:
        self.count = 0
        self.engine = db.engine.sync_engine
        event.listen(self.engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if _is_claim(statement):
            self.count += 1

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)


async def make_idle_tenants(db: Database, count: int) -> None:
    for i in range(count):  # one organization per session: a session is bound to one tenant
        async with db.sessions() as session:
            await create_organization(session, slug=f"idle-{i}", name=f"Idle {i}")
            await session.commit()


async def empty_claim_ms(db: Database, statement: str | None = None, rounds: int = 50) -> float:
    timings = []
    for _ in range(rounds):
        async with db.sessions() as session:
            started = time.perf_counter()
            if statement is None:
                found = await claim_next(session, worker="bench", lease_seconds=60,
                                         tenant_limit=4)
            else:
                found = (await session.execute(text(statement))).first()
            await session.commit()
            timings.append(time.perf_counter() - started)
        assert found is None, found
    return 1000 * statistics.median(timings)


async def idle_claims_per_second(db: Database, deps: Any, slots: int, seconds: float) -> float:
    worker = Worker(db, deps, slots=slots, tenant_limit=4, poll_seconds=1.0)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(1.0)
        counter = ClaimCounter(db)
        try:
            await asyncio.sleep(seconds)
            return counter.count / seconds
        finally:
            counter.close()
    finally:
        worker.stop()
        await task


async def busy(db: Database, deps: Any, package: Any, slots: int, runs: int
               ) -> tuple[float, float, float]:
    """(steps/s, claim statements/s, claim statements per step) while draining ``runs``."""
    tenants = [await make_tenant(db, f"busy-{i}", package) for i in range(BUSY_TENANTS)]
    for i, ctx in enumerate(tenants):
        await queue(db, ctx, runs // BUSY_TENANTS + (i < runs % BUSY_TENANTS))
    counter = ClaimCounter(db)
    worker = Worker(db, deps, slots=slots, tenant_limit=4, poll_seconds=1.0)
    started = time.perf_counter()
    task = asyncio.create_task(worker.run())
    try:
        deadline = started + 600
        while (state := await progress(db, tenants)).succeeded + state.failed < runs:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"only {state.succeeded} of {runs} runs finished")
            await asyncio.sleep(0.2)
        elapsed = time.perf_counter() - started
        claims = counter.count
    finally:
        counter.close()
        worker.stop()
        await task
    steps = 3 * runs
    return steps / elapsed, claims / elapsed, claims / steps


async def bench(backend: str, args: argparse.Namespace) -> None:
    with backend_settings(backend) as (settings, _pg):
        db = Database(settings)
        try:
            deps = build_engine(settings, db, load_master_key(settings))
            print(f"\n[{backend}]", flush=True)
            await make_idle_tenants(db, args.tenants)
            print(f"  empty claim       {await empty_claim_ms(db):7.2f} ms  (claim_next + commit, "
                  f"{args.tenants} tenants, median of 50)", flush=True)
            if backend == "postgres":
                old = await empty_claim_ms(
                    db, "SELECT * FROM enginex_claim_run('bench', 60, 4)")
                print(f"  0002 function     {old:7.2f} ms  (enginex_claim_run, organizations scan)",
                      flush=True)
            rate = await idle_claims_per_second(db, deps, args.slots, args.idle)
            print(f"  idle worker       {rate:7.1f} claims/s  ({args.slots} slots, poll 1 s, "
                  "empty queue)", flush=True)
            package = load_agent(settings.data_dir)
            steps, claims, per_step = await busy(db, deps, package, args.slots, args.runs)
            print(f"  busy worker       {steps:7.1f} steps/s, {claims:.1f} claims/s, "
                  f"{per_step:.2f} claims per step  ({args.runs} runs x 3 steps, "
                  f"{BUSY_TENANTS} tenants, limit 4, {args.slots} slots)", flush=True)
        finally:
            await db.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=50)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    args = parser.parse_args(argv)
    if args.quick:
        args.tenants, args.runs, args.idle = 200, 100, 3.0
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Python "
          f"{platform.python_version()}; load average (1 min) {os.getloadavg()[0]:.1f}")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        if backend == "postgres" and (problem := pg_problem()):
            print(f"\n[postgres] skipped: {problem}")
            continue
        asyncio.run(bench(backend, args))
    print(f"\nload average (1 min) at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
