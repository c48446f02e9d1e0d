"""Workers: claim runs under a lease, execute one step at a time, heartbeat, wake on notify.

The same Worker runs embedded in ``enginex serve`` (in-process, the embedded default) and as
``enginex worker`` processes (production). After every committed step the lease is released,
so the scheduler's fair choice is made again for the next step.

Claiming: one claimer task per worker fills all its free slots with one batch claim
(``scheduler.claim_runs``), then waits for a wake-up (``db.Notifier``: a run queued in this
process, or PostgreSQL NOTIFY relayed by ``_listen``), a slot freed by a finished step, or the
poll interval. Idle slots therefore cost one claim per poll per worker, not one per slot, and
slots never queue on the platform-wide claim lock against each other.

Every worker also keeps a row in the global ``workers`` table fresh (name, start, last beat,
slots, steps committed) for the platform admin's health panel; a clean stop removes it. The
same row tells the other workers it is alive: a run leased by a worker whose row is older than
three heartbeats (SIGKILL, a lost host) is claimable at once, without waiting for its lease to
expire (``scheduler.claim_runs``).

Every worker also runs the mail outbox's sender (mail/sender.py) when built with ``mail``.
Every worker also runs the background loops it was given (``background``: the life-cycle
jobs of enginex/lifecycle/jobs.py, exports and their expiry), with its gated sessions.

Every worker also removes orphaned report files (reports/sweeper.py) older than
``report_orphan_age`` every ``report_sweep_seconds``; concurrent sweeps are harmless.

Connections: everything a worker does with the database (claims, heartbeats, every session
of a step, credential resolution) takes a turn at one ``db.ConnectionGate`` sized to the
pool (``pool_size + max_overflow``), so any number of slots queue at the gate instead of
timing out on the pool. A step interrupted by the database is released by the engine; when
the release cannot reach the database either (``StepInterrupted``), the worker retries it in
the background with backoff until the database answers, so the run is claimable again within
seconds of the database coming back instead of after its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import psycopg
from sqlalchemy import delete, func, make_url, update

from enginex.db import ConnectionGate, Database, SessionFactory, is_transient_db_error, set_tenant
from enginex.kit.logs import log_context
from enginex.kit.time import utcnow
from enginex.mail.sender import MailSender
from enginex.reports.sweeper import DEFAULT_OLDER_THAN, sweep_orphans
from enginex.runs.engine import EngineDeps, StepInterrupted, execute_step, release_interrupted
from enginex.runs.models import WORKER_HEARTBEAT_SECONDS, WorkerPresence
from enginex.runs.repository import RunRepository
from enginex.runs.scheduler import Claim, claim_runs, expire_approvals
from enginex.runs.service import RUN_CHANNEL
from enginex.tenancy.context import system_context

log = logging.getLogger("enginex.worker")

REPORT_SWEEP_SECONDS = 600.0
# Retrying the release of an interrupted step: first after this, doubling up to the cap.
RELEASE_RETRY_SECONDS = (0.25, 2.0)


class Worker:
    def __init__(self, db: Database, deps: EngineDeps, *, slots: int = 4,
                 tenant_limit: int = 4, poll_seconds: float = 1.0,
                 database_url: str | None = None,
                 heartbeat_seconds: float = WORKER_HEARTBEAT_SECONDS,
                 report_sweep_seconds: float = REPORT_SWEEP_SECONDS,
                 report_orphan_age: timedelta = DEFAULT_OLDER_THAN,
                 mail: Callable[[SessionFactory], MailSender] | None = None,
                 background: Sequence[Callable[[Worker], Awaitable[None]]] = ()) -> None:
        self.db = db
        self.background = tuple(background)
        # One gate for every connection this worker takes (see the module docstring).
        self.gate = ConnectionGate(db.pool_capacity)
        self.sessions = self.gate.sessions(db.sessions)
        self.deps = replace(deps, sessions=self.gate.sessions(deps.sessions),
                            credentials=deps.credentials.with_sessions(
                                self.gate.sessions(deps.credentials.sessions))
                            if deps.credentials is not None else None)
        self._releases: set[asyncio.Task[None]] = set()
        self.slots = slots
        self.tenant_limit = tenant_limit
        self.poll_seconds = poll_seconds
        self.database_url = database_url
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.steps_committed = 0
        self.heartbeat_seconds = heartbeat_seconds
        # A lease whose owner stopped beating for three heartbeats is dead (scheduler): every
        # worker of a deployment runs with the same heartbeat setting.
        self.dead_seconds = 3 * heartbeat_seconds
        self.report_sweep_seconds = report_sweep_seconds
        self.report_orphan_age = report_orphan_age
        self._stop = asyncio.Event()
        # Slots are tasks, one per claimed step; the claimer starts them (see _claimer).
        self._busy: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self.claims_made = 0  # claim transactions issued (for tests and benchmarks)
        self.mail = mail(self.sessions) if mail is not None else None

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> asyncio.Event:
        """Set when the worker is asked to stop (background loops end on it)."""
        return self._stop

    async def run(self) -> None:
        """Run until ``stop()``; cancellation-safe (a cancelled step just loses its lease)."""
        tasks = [asyncio.create_task(self._claimer(), name="worker-claimer")]
        tasks.append(asyncio.create_task(self._sweeper(), name="worker-sweeper"))
        tasks.append(asyncio.create_task(self._presence(), name="worker-presence"))
        tasks.append(asyncio.create_task(self._report_sweeper(), name="worker-report-sweeper"))
        if self.mail is not None:
            tasks.append(asyncio.create_task(self.mail.run(self._stop), name="worker-mail"))
        tasks.extend(asyncio.create_task(start(self), name=f"worker-background-{n}")
                     for n, start in enumerate(self.background))
        if self.database_url and self.database_url.startswith("postgresql"):
            tasks.append(asyncio.create_task(self._listen(), name="worker-listen"))
        try:
            await self._stop.wait()
        finally:
            for task in [*tasks, *self._busy, *self._releases]:
                task.cancel()
            tasks.extend(self._busy)
            tasks.extend(self._releases)
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._leave()

    async def _claimer(self) -> None:
        """The worker's one claimer: fill every free slot with one batch claim, then wait for a
        wake-up (a run queued here or, on PostgreSQL, NOTIFY from any process), a slot freed
        by a finished step, or the poll interval, whichever comes first.

        Events are cleared BEFORE claiming: a wake-up that arrives while the claim runs (a run
        queued just after the claim's snapshot) is not lost. A full batch is followed by the
        next claim as soon as a slot frees; a short batch means nothing else is claimable now.
        """
        wake = self.db.notifier.waiter()
        try:
            while not self._stop.is_set():
                free = self.slots - len(self._busy)
                if free <= 0:
                    await self._slot_freed.wait()
                    self._slot_freed.clear()
                    continue
                wake.clear()
                self._slot_freed.clear()
                try:
                    claims = await self._claim(free)
                except Exception as exc:
                    if is_transient_db_error(exc):
                        log.warning("claim failed: database unavailable (%s)",
                                    type(exc).__name__)
                    else:
                        log.exception("claim failed")
                    with contextlib.suppress(TimeoutError):  # not again at once
                        await asyncio.wait_for(self._stop.wait(), timeout=self.poll_seconds)
                    continue
                for claim in claims:
                    task = asyncio.create_task(self._slot(claim),
                                               name=f"worker-step-{claim.run_id}")
                    self._busy.add(task)
                if len(claims) < free:
                    await self._wait_for_work(wake)
        finally:
            self.db.notifier.discard(wake)

    async def _wait_for_work(self, wake: asyncio.Event) -> None:
        """Until a wake-up, a freed slot, ``stop()`` or the poll interval."""
        waits = [asyncio.ensure_future(event.wait())
                 for event in (wake, self._slot_freed, self._stop)]
        try:
            await asyncio.wait(waits, timeout=self.poll_seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _slot(self, claim: Claim) -> None:
        """Execute one claimed step in a slot; the slot frees when it ends (after a pause of
        one poll interval when the database interrupted the step)."""
        try:
            with log_context(tenant_id=claim.tenant_id, run_id=claim.run_id):
                try:
                    interrupted = await self._execute(claim)
                    log.debug("step of run %s ended (interrupted: %s)", claim.run_id,
                              interrupted)
                except Exception:  # never let one bad step take the slot down
                    log.exception("step of run %s failed unexpectedly", claim.run_id)
                    interrupted = False
            if interrupted:  # the database is struggling: do not claim again at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=self.poll_seconds)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._busy.discard(task)
            self._slot_freed.set()

    async def _claim(self, free: int) -> list[Claim]:
        async with self.sessions() as session:
            claims = await claim_runs(session, worker=self.name,
                                      lease_seconds=self.deps.lease_seconds,
                                      tenant_limit=self.tenant_limit, max_runs=free,
                                      dead_seconds=self.dead_seconds)
            await session.commit()
            self.claims_made += 1
            return claims

    async def _execute(self, claim: Claim) -> bool:
        """Execute one step of ``claim``; True when the database interrupted it."""
        heartbeat = asyncio.create_task(self._heartbeat(claim))
        try:
            # No wake-up after a commit: the freed slot makes the claimer claim again at once.
            if await execute_step(self.deps, claim.tenant_id, claim.run_id, self.name):
                self.steps_committed += 1
        except StepInterrupted as interrupted:
            if not interrupted.released:
                task = asyncio.create_task(self._release_later(interrupted),
                                           name=f"worker-release-{claim.run_id}")
                self._releases.add(task)
                task.add_done_callback(self._releases.discard)
            return True
        except Exception:
            log.exception("step of run %s failed unexpectedly; its lease will expire",
                          claim.run_id)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
        return False

    async def _release_later(self, interrupted: StepInterrupted) -> None:
        """Retry releasing an interrupted step's run until the database answers (backoff
        ``RELEASE_RETRY_SECONDS``); gives up only on an error that is not the database's
        unavailability (the lease then lapses)."""
        delay, cap = RELEASE_RETRY_SECONDS
        while True:
            await asyncio.sleep(delay)
            try:
                await release_interrupted(self.deps, interrupted.tenant_id, interrupted.run_id,
                                          self.name, interrupted.expected_step)
            except Exception as exc:
                if not is_transient_db_error(exc):
                    log.exception("releasing run %s failed; its lease will lapse",
                                  interrupted.run_id)
                    return
                delay = min(delay * 2, cap)
                continue
            log.info("run %s released after the database came back", interrupted.run_id)
            self.db.notifier.wake()
            return

    async def _heartbeat(self, claim: Claim) -> None:
        """Extend the lease every third of its length until the step ends or the lease is
        lost. A failed heartbeat (database hiccup) is retried at the next beat: giving up
        would let the lease lapse and another worker run the same step again."""
        interval = max(self.deps.lease_seconds / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            try:
                async with self.sessions() as session:
                    await set_tenant(session, claim.tenant_id)
                    ctx = system_context(claim.tenant_id, "")
                    if not await RunRepository(session, ctx).extend_lease(
                            claim.run_id, self.name, self.deps.lease_seconds):
                        await session.rollback()
                        return
                    await session.commit()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("heartbeat for run %s failed; retrying", claim.run_id,
                            exc_info=True)

    async def _sweeper(self) -> None:
        while True:
            try:
                async with self.sessions() as session:
                    if await expire_approvals(session):
                        self.db.notifier.wake()
                    await session.commit()
            except Exception:
                log.exception("approval expiry sweep failed")
            await asyncio.sleep(max(self.poll_seconds * 5, 1.0))

    async def _report_sweeper(self) -> None:
        """Remove orphaned report files at a low frequency, first after a random part of the
        period (so workers started together do not sweep together). Failures are logged and
        retried at the next period."""
        await asyncio.sleep(self.report_sweep_seconds * random.uniform(0.1, 1.0))  # noqa: S311
        while True:
            try:
                await sweep_orphans(self.deps.sessions, self.deps.storage,
                                    older_than=self.report_orphan_age)
            except Exception:
                log.exception("orphaned report sweep failed")
            await asyncio.sleep(self.report_sweep_seconds)

    async def _presence(self) -> None:
        """Register this worker in ``workers`` and refresh its row every heartbeat. A failed
        beat (database hiccup) is logged and retried at the next one."""
        started = utcnow()
        while True:
            try:
                await self._beat(started)
            except Exception:
                log.warning("worker heartbeat failed; retrying", exc_info=True)
            await asyncio.sleep(self.heartbeat_seconds)

    async def _beat(self, started: datetime) -> None:
        async with self.sessions() as session:
            # On PostgreSQL the database clock, which the health panel compares with.
            now = func.now() if session.get_bind().dialect.name == "postgresql" else utcnow()
            refreshed = await session.execute(
                update(WorkerPresence).where(WorkerPresence.name == self.name)
                .values(last_seen_at=now, slots=self.slots,
                        steps_committed=self.steps_committed))
            if refreshed.rowcount == 0:  # first beat, or the row was pruned meanwhile
                session.add(WorkerPresence(name=self.name, started_at=started,
                                           last_seen_at=now, slots=self.slots,
                                           steps_committed=self.steps_committed))
            # Workers that crashed a day ago are gone for good.
            await session.execute(delete(WorkerPresence).where(
                WorkerPresence.last_seen_at < utcnow() - timedelta(days=1)))
            await session.commit()

    async def _leave(self) -> None:
        """A clean stop removes this worker's row (best effort: a crashed worker's row just
        stops being refreshed and shows as not alive)."""
        try:
            async with self.db.sessions() as session:
                await session.execute(delete(WorkerPresence)
                                      .where(WorkerPresence.name == self.name))
                await session.commit()
        except Exception:
            log.warning("could not remove worker %s from the workers table", self.name,
                        exc_info=True)

    async def _listen(self) -> None:
        """PostgreSQL LISTEN: runs queued by other processes wake this worker at once."""
        assert self.database_url is not None
        conninfo = make_url(self.database_url).set(drivername="postgresql").render_as_string(
            hide_password=False)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo,
                                                                 autocommit=True) as conn:
                    await conn.execute(f"LISTEN {RUN_CHANNEL}")
                    async for _ in conn.notifies():
                        self.db.notifier.wake()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("LISTEN connection lost; retrying in 2 s")
                await asyncio.sleep(2)
