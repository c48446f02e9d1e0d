"""Scoped queries on runs, events and checkpoints."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.kit.pagination import older_than
from enginex.kit.time import utcnow
from enginex.runs.models import Checkpoint, Run, RunEvent
from enginex.tenancy.context import TenantContext
from enginex.tenancy.repository import ScopedRepository


@dataclass(frozen=True)
class RunFilter:
    status: str | None = None
    agent_key: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    created_by: uuid.UUID | None = None
    id_prefix: str | None = None  # lowercase hex digits without dashes, 1 to 32 of them


def id_range(prefix: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The first and the last UUID that start with the hex digits ``prefix``: a range both
    databases compare in the order of the hex text (PostgreSQL's uuid bytes, SQLite's
    CHAR(32)), so a search by the short id the pages show is a primary-key range scan."""
    return uuid.UUID(prefix.ljust(32, "0")), uuid.UUID(prefix.ljust(32, "f"))


class RunRepository(ScopedRepository[Run]):
    model = Run

    def __init__(self, db: AsyncSession, ctx: TenantContext) -> None:
        super().__init__(db, ctx)

    async def list(self, filters: RunFilter, *, limit: int,
                   before: tuple[datetime, uuid.UUID] | None) -> list[Run]:
        """Newest first; ``before`` is the (created_at, id) cursor of the last row seen."""
        stmt = select(Run).where(Run.tenant_id == self.ctx.org_id)
        if filters.status:
            stmt = stmt.where(Run.status == filters.status)
        if filters.agent_key:
            stmt = stmt.where(Run.agent_key == filters.agent_key)
        if filters.created_after:
            stmt = stmt.where(Run.created_at >= filters.created_after)
        if filters.created_before:
            stmt = stmt.where(Run.created_at < filters.created_before)
        if filters.created_by:
            stmt = stmt.where(Run.created_by == filters.created_by)
        if filters.id_prefix:
            low, high = id_range(filters.id_prefix)
            stmt = stmt.where(Run.id >= low, Run.id <= high)
        if before:
            # A row-value comparison: an index range scan on (tenant_id, created_at, id), so
            # a deep page costs what the first page does (the OR form filtered after the scan).
            stmt = stmt.where(older_than(Run.created_at, Run.id, before))
        stmt = stmt.order_by(Run.created_at.desc(), Run.id.desc()).limit(limit)
        return list((await self.db.execute(stmt)).scalars())

    async def count_by_status(self) -> dict[str, int]:
        stmt = (select(Run.status, func.count()).where(Run.tenant_id == self.ctx.org_id)
                .group_by(Run.status))
        return {status: int(n) for status, n in (await self.db.execute(stmt)).all()}

    async def events_after(self, run_id: uuid.UUID, after: int, limit: int = 500) -> list[RunEvent]:
        stmt = (select(RunEvent).where(RunEvent.tenant_id == self.ctx.org_id,
                                       RunEvent.run_id == run_id, RunEvent.seq > after)
                .order_by(RunEvent.seq).limit(limit))
        return list((await self.db.execute(stmt)).scalars())

    async def checkpoints(self, run_id: uuid.UUID) -> list[Checkpoint]:
        stmt = (select(Checkpoint).where(Checkpoint.tenant_id == self.ctx.org_id,
                                         Checkpoint.run_id == run_id)
                .order_by(Checkpoint.step))
        return list((await self.db.execute(stmt)).scalars())

    async def checkpoint(self, run_id: uuid.UUID, step: int) -> Checkpoint | None:
        stmt = select(Checkpoint).where(Checkpoint.tenant_id == self.ctx.org_id,
                                        Checkpoint.run_id == run_id, Checkpoint.step == step)
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def latest_checkpoint(self, run_id: uuid.UUID) -> Checkpoint | None:
        stmt = (select(Checkpoint).where(Checkpoint.tenant_id == self.ctx.org_id,
                                         Checkpoint.run_id == run_id)
                .order_by(Checkpoint.step.desc()).limit(1))
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def commit_step_guard(self, run_id: uuid.UUID, *, expected_step: int, worker: str,
                                n_events: int, values: dict[str, object]) -> int | None:
        """Advance the run by one step iff this worker still holds it at ``expected_step``.

        Reserves ``n_events`` event sequence numbers atomically; returns the last one, or None
        when the lease was lost, the run was cancelled, or another worker committed the step.
        """
        stmt = (update(Run).where(Run.tenant_id == self.ctx.org_id, Run.id == run_id,
                                  Run.step == expected_step, Run.lease_owner == worker,
                                  Run.status == "running")
                .values(**{"step": expected_step + 1,
                           "last_event_seq": Run.last_event_seq + n_events, **values})
                .returning(Run.last_event_seq)
                .execution_options(synchronize_session=False))
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def reserve_events(self, run_id: uuid.UUID, n_events: int) -> int | None:
        """Atomically reserve ``n_events`` sequence numbers; returns the last one."""
        stmt = (update(Run).where(Run.tenant_id == self.ctx.org_id, Run.id == run_id)
                .values(last_event_seq=Run.last_event_seq + n_events)
                .returning(Run.last_event_seq)
                .execution_options(synchronize_session=False))
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def extend_lease(self, run_id: uuid.UUID, worker: str, seconds: int) -> bool:
        """Push the lease of ``worker`` on the run ``seconds`` into the future; False when the
        worker no longer holds it.

        On PostgreSQL the expiry is computed with the database clock, the clock the claim
        function and the scheduler compare leases with: a worker host whose clock lags would
        otherwise write leases that are already expired for everyone else.
        """
        until: Any
        if self.db.get_bind().dialect.name == "postgresql":
            until = func.now() + timedelta(seconds=seconds)
        else:
            await self.db.connection()  # BEGIN IMMEDIATE first: it may wait for the lock
            until = utcnow() + timedelta(seconds=seconds)
        stmt = (update(Run).where(Run.tenant_id == self.ctx.org_id, Run.id == run_id,
                                  Run.lease_owner == worker, Run.status == "running")
                .values(lease_expires_at=until).execution_options(synchronize_session=False))
        return bool((await self.db.execute(stmt)).rowcount)  # type: ignore[attr-defined]

    async def resume_after_decision(self, run_id: uuid.UUID) -> None:
        """A run waiting for an approval becomes runnable again (any worker may claim it);
        nothing happens to a run in another state."""
        await self.db.execute(
            update(Run).where(Run.tenant_id == self.ctx.org_id, Run.id == run_id,
                              Run.status == "waiting_approval")
            .values(status="running", lease_owner=None, lease_expires_at=None)
            .execution_options(synchronize_session=False))

    def add_events(self, run_id: uuid.UUID, last_seq: int,
                   events: list[tuple[str, str | None, dict[str, object]]]) -> list[RunEvent]:
        """Insert events numbered up to ``last_seq`` (reserved with the calls above)."""
        first = last_seq - len(events) + 1
        rows = [RunEvent(tenant_id=self.ctx.org_id, run_id=run_id, seq=first + i, kind=kind,
                         node_id=node_id, data=data)
                for i, (kind, node_id, data) in enumerate(events)]
        self.db.add_all(rows)
        return rows

    async def append_events(self, run_id: uuid.UUID,
                            events: list[tuple[str, str | None, dict[str, object]]]
                            ) -> list[RunEvent]:
        last = await self.reserve_events(run_id, len(events))
        if last is None:
            return []
        return self.add_events(run_id, last, events)

    async def release_interrupted(self, run_id: uuid.UUID, *, worker: str,
                                  expected_step: int | None) -> bool:
        """Undo a claim whose step the database interrupted (nothing of it was committed):
        clear ``worker``'s lease so any worker may claim the run at once, and take back the
        attempt the claim counted, so database outages never add up to the poison-step
        limit. With ``expected_step`` the attempt is taken back even if the lease lapsed and
        another worker claimed the run meanwhile, as long as that step is still the next one;
        without it (the run was never loaded), only while ``worker`` holds the lease. Returns
        whether the lease was cleared."""
        ours = (Run.tenant_id == self.ctx.org_id, Run.id == run_id, Run.lease_owner == worker,
                Run.status == "running")
        if expected_step is not None:
            ours += (Run.step == expected_step,)
        cleared = await self.db.execute(
            update(Run).where(*ours)
            .values(lease_owner=None, lease_expires_at=None, attempts=Run.attempts - 1)
            .execution_options(synchronize_session=False))
        if cleared.rowcount:  # type: ignore[attr-defined]
            return True
        if expected_step is not None:
            await self.db.execute(
                update(Run).where(Run.tenant_id == self.ctx.org_id, Run.id == run_id,
                                  Run.step == expected_step, Run.attempts > 0)
                .values(attempts=Run.attempts - 1)
                .execution_options(synchronize_session=False))
        return False
