"""The life-cycle job loop every worker runs beside its run claimer (``runs/worker.py``).

Jobs: build an export, expire one, hard-delete an organization whose grace period ended
(enginex/lifecycle/deletion.py: resumable, the next claim continues where a dead worker
stopped). One job at a time per worker: claim the oldest due job of ``lifecycle_jobs`` under a lease
(``ENGINEX_EXPORT_LEASE_SECONDS``), keep the lease fresh while working, finish it. A worker
killed mid-job leaves its lease to lapse; the next claim takes the job again and starts the
export over (the archive is only renamed into place when complete, so a half file is never
served). A job that fails ``MAX_ATTEMPTS`` times is given up and its export marked failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import timedelta

from enginex.credentials.vault import Keyring
from enginex.db import SessionFactory, is_transient_db_error
from enginex.lifecycle import repository as repo
from enginex.lifecycle import service
from enginex.lifecycle.deletion import hard_delete
from enginex.lifecycle.models import JobKind, JobStatus, LifecycleJob
from enginex.reports.storage import ArtifactStorage

log = logging.getLogger("enginex.lifecycle.jobs")

RETRY_DELAY = timedelta(seconds=30)


class LeaseLost(RuntimeError):
    """Another worker took the job over (this one was too slow to renew its lease)."""


class LifecycleJobs:
    def __init__(self, sessions: SessionFactory, storage: ArtifactStorage, *, name: str,
                 lease_seconds: int, poll_seconds: float, retention_days: int,
                 rows_per_second: int, keyring: Keyring | None = None,
                 deletion_batch_rows: int = 1000, deletion_rows_per_second: int = 0) -> None:
        self.sessions = sessions
        self.keyring = keyring  # opens credentials for an export with secrets
        self.storage = storage
        self.name = name
        self.lease = timedelta(seconds=lease_seconds)
        self.poll_seconds = poll_seconds
        self.retention = timedelta(days=retention_days)
        self.rows_per_second = rows_per_second
        self.deletion_batch_rows = deletion_batch_rows
        self.deletion_rows_per_second = deletion_rows_per_second
        self.jobs_done = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until ``stop`` is set; failures are logged, never raised."""
        while not stop.is_set():
            try:
                worked = await self.run_once()
            except Exception as exc:
                if is_transient_db_error(exc):
                    log.warning("life-cycle job claim failed: database unavailable")
                else:
                    log.exception("life-cycle job loop failed")
                worked = False
            if not worked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.poll_seconds)

    async def run_once(self, job_id: uuid.UUID | None = None) -> bool:
        """Claim one due job (or job ``job_id`` only) and run it; False when there was none
        (or another worker holds it)."""
        async with self.sessions() as db:
            job = await repo.claim_job(db, self.name, self.lease, job_id=job_id)
            await db.commit()
        if job is None:
            return False
        try:
            await self._execute(job)
        except LeaseLost:
            log.warning("life-cycle job %s was taken over by another worker", job.id)
            return True
        except Exception as exc:
            final = job.attempts >= service.MAX_ATTEMPTS
            log.exception("life-cycle job %s (%s) failed (attempt %d%s)", job.id, job.kind,
                          job.attempts, ", giving up" if final else "")
            message = f"{type(exc).__name__}: {exc}"
            if job.kind == JobKind.BUILD_EXPORT:
                await service.fail_export(self.sessions, job, message, final=final)
            async with self.sessions() as db:
                if final:
                    await repo.finish_job(db, job.id, self.name, JobStatus.FAILED, message)
                else:
                    await repo.retry_job(db, job.id, self.name, RETRY_DELAY, message)
                await db.commit()
            return True
        async with self.sessions() as db:
            await repo.finish_job(db, job.id, self.name, JobStatus.DONE)
            await db.commit()
        self.jobs_done += 1
        return True

    async def _heartbeat(self, job: LifecycleJob) -> None:
        async with self.sessions() as db:
            if not await repo.extend_lease(db, job.id, self.name, self.lease):
                raise LeaseLost(f"the lease of job {job.id} was taken over")
            await db.commit()

    async def _execute(self, job: LifecycleJob) -> None:
        if job.kind == JobKind.BUILD_EXPORT:
            await service.build_export(self.sessions, self.storage, job,
                                       retention=self.retention,
                                       rows_per_second=self.rows_per_second,
                                       heartbeat=lambda: self._heartbeat(job),
                                       keyring=self.keyring)
        elif job.kind == JobKind.EXPIRE_EXPORT:
            await service.expire_export(self.sessions, self.storage, job)
        elif job.kind == JobKind.HARD_DELETE:
            await hard_delete(self.sessions, self.storage, job.target_id,
                              batch_rows=self.deletion_batch_rows,
                              rows_per_second=self.deletion_rows_per_second,
                              heartbeat=lambda: self._heartbeat(job))
        else:
            raise ValueError(f"unknown life-cycle job kind {job.kind!r}")
