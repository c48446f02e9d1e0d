"""Queries of the life-cycle tables: an organization's exports (tenant-scoped) and the
platform job queue (ids only, read without a tenant)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.kit.time import utcnow
from enginex.lifecycle.models import JobStatus, LifecycleJob, TenantExport
from enginex.tenancy.repository import ScopedRepository


class ExportRepository(ScopedRepository[TenantExport]):
    model = TenantExport

    async def list(self, limit: int = 50) -> list[TenantExport]:
        stmt = (select(TenantExport).where(TenantExport.tenant_id == self.ctx.org_id)
                .order_by(TenantExport.requested_at.desc(), TenantExport.id).limit(limit))
        return list((await self.db.execute(stmt)).scalars())

    async def take_link(self, digest: bytes, now: datetime) -> TenantExport | None:
        """Consume the download link with ``digest`` (single use): clears it in the same
        statement that checks it, so two requests with one link cannot both succeed."""
        taken = await self.db.execute(
            update(TenantExport)
            .where(TenantExport.tenant_id == self.ctx.org_id,
                   TenantExport.link_digest == digest, TenantExport.link_expires_at > now,
                   TenantExport.status == "succeeded")
            .values(link_digest=None, link_expires_at=None,
                    downloads=TenantExport.downloads + 1)
            .returning(TenantExport.id))
        found = taken.scalar_one_or_none()
        if found is None:
            return None
        return await self.db.get(TenantExport, (self.ctx.org_id, found),
                                 populate_existing=True)


# --- the platform job queue --------------------------------------------------------------


def enqueue(db: AsyncSession, kind: str, org_id: uuid.UUID, target_id: uuid.UUID, *,
            run_after: datetime | None = None) -> LifecycleJob:
    job = LifecycleJob(kind=kind, org_id=org_id, target_id=target_id,
                       run_after=run_after or utcnow())
    db.add(job)
    return job


async def claim_job(db: AsyncSession, worker: str, lease: timedelta, *,
                    job_id: uuid.UUID | None = None) -> LifecycleJob | None:
    """Lease the oldest due job (queued, or running under a lapsed lease: its worker died),
    or job ``job_id`` only. PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: the write
    transaction (BEGIN IMMEDIATE) already admits one claimer. The caller commits."""
    now = utcnow()
    stmt = select(LifecycleJob)
    if job_id is not None:
        stmt = stmt.where(LifecycleJob.id == job_id)
    stmt = (stmt
            .where(LifecycleJob.run_after <= now,
                   or_(LifecycleJob.status == JobStatus.QUEUED,
                       (LifecycleJob.status == JobStatus.RUNNING)
                       & (LifecycleJob.lease_expires_at < now)))
            .order_by(LifecycleJob.run_after).limit(1)
            .with_for_update(skip_locked=True))
    job = (await db.execute(stmt)).scalar_one_or_none()
    if job is None:
        return None
    job.status = JobStatus.RUNNING
    job.lease_owner = worker
    job.lease_expires_at = now + lease
    job.attempts += 1
    return job


async def extend_lease(db: AsyncSession, job_id: uuid.UUID, worker: str,
                       lease: timedelta) -> bool:
    """Extend the lease while this worker still holds it; False when it was lost."""
    result = await db.execute(
        update(LifecycleJob)
        .where(LifecycleJob.id == job_id, LifecycleJob.lease_owner == worker,
               LifecycleJob.status == JobStatus.RUNNING)
        .values(lease_expires_at=utcnow() + lease))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def finish_job(db: AsyncSession, job_id: uuid.UUID, worker: str, status: JobStatus,
                     error: str | None = None) -> bool:
    result = await db.execute(
        update(LifecycleJob)
        .where(LifecycleJob.id == job_id, LifecycleJob.lease_owner == worker)
        .values(status=status, finished_at=utcnow(), lease_owner=None,
                lease_expires_at=None, last_error=error))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def retry_job(db: AsyncSession, job_id: uuid.UUID, worker: str, delay: timedelta,
                    error: str) -> None:
    """Put a failed job back in the queue, due after ``delay``."""
    await db.execute(
        update(LifecycleJob)
        .where(LifecycleJob.id == job_id, LifecycleJob.lease_owner == worker)
        .values(status=JobStatus.QUEUED, run_after=utcnow() + delay, lease_owner=None,
                lease_expires_at=None, last_error=error[:2000]))
