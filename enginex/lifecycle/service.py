"""Exports of one organization: request, list, build (worker), download link, expiry.

Every step is audited in the organization's chain: ``export.requested`` (who asked),
``export.started`` (each attempt, by the worker), ``export.completed`` (size and SHA-256) or
``export.failed``, ``export.link_created``, ``export.downloaded``, ``export.expired``.

The archive is ``<storage>/<tenant hex>/exports/<export hex>.zip``: under the organization's
prefix, so deleting the organization deletes it, and it is never reachable through another
organization's path. Links are single-use and short-lived (``ENGINEX_EXPORT_LINK_MINUTES``):
only the SHA-256 of the link token is stored; using it clears it. An archive is deleted
``ENGINEX_EXPORT_RETENTION_DAYS`` (default 7) after it was built.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from enginex.audit.service import record
from enginex.credentials.vault import Keyring
from enginex.db import SessionFactory, set_tenant
from enginex.kit.errors import Conflict, NotFound
from enginex.kit.ids import new_token, token_digest
from enginex.kit.time import utcnow
from enginex.lifecycle import repository as repo
from enginex.lifecycle.exporter import SecretsPlan, count_rows, write_archive
from enginex.lifecycle.models import ExportStatus, JobKind, LifecycleJob, TenantExport
from enginex.lifecycle.repository import ExportRepository
from enginex.reports.storage import ArtifactStorage
from enginex.tenancy.context import TenantContext, system_context

log = logging.getLogger("enginex.lifecycle")

MAX_ATTEMPTS = 5
LINK_PREFIX = "enx_dl_"
ACTIVE = (ExportStatus.QUEUED, ExportStatus.RUNNING)


def archive_path(storage: ArtifactStorage, org_id: uuid.UUID, export_id: uuid.UUID) -> Path:
    """Where export ``export_id`` of ``org_id`` is kept (server-built, under the prefix)."""
    prefix = storage.tenant_prefix(org_id)
    return prefix / "exports" / f"{export_id.hex}.zip"


async def request_export(db: AsyncSession, ctx: TenantContext, *,
                         secrets_recipient: str | None = None) -> TenantExport:
    """Queue an export of ``ctx``'s organization. Conflict while another one is queued or
    being built (one at a time per organization). Audited (``export.requested``, with the
    import key's fingerprint when the credentials' values are to be sealed into it).

    ``secrets_recipient``: an import key (lifecycle/sealed.py), already checked; the caller
    re-authenticated the person who asks."""
    exports = ExportRepository(db, ctx)
    if any(e.status in ACTIVE for e in await exports.list(limit=20)):
        raise Conflict("An export of this organization is already being prepared; wait for "
                       "it to finish (its progress is on the exports page).")
    export = exports.add(TenantExport(id=uuid.uuid4(), requested_by=ctx.actor_id,
                                      secrets_recipient=secrets_recipient))
    await db.flush()
    repo.enqueue(db, JobKind.BUILD_EXPORT, ctx.org_id, export.id)
    details = None
    if secrets_recipient:
        details = {"secrets": True, "import_key_sha256": hashlib.sha256(
            secrets_recipient.encode()).hexdigest()[:16]}
    await record(db, ctx, "export.requested", target_kind="export", target_id=export.id,
                 details=details)
    return export


async def list_exports(db: AsyncSession, ctx: TenantContext) -> list[TenantExport]:
    """The organization's latest exports, newest first."""
    return await ExportRepository(db, ctx).list()


async def access_export(db: AsyncSession, ctx: TenantContext,
                        export_id: uuid.UUID) -> TenantExport:
    """Export ``export_id`` of ``ctx``'s organization; NotFound for a missing one and for
    another organization's (the same answer)."""
    return await ExportRepository(db, ctx).access(export_id)


async def create_link(db: AsyncSession, ctx: TenantContext, export_id: uuid.UUID, *,
                      minutes: int) -> tuple[str, TenantExport]:
    """A new single-use download link token for a finished export (replacing any earlier
    link). NotFound as ``access_export``; Conflict when the export is not ready or expired."""
    export = await access_export(db, ctx, export_id)
    if export.status != ExportStatus.SUCCEEDED:
        raise Conflict(f"This export is {export.status}: only a finished export can be "
                       "downloaded." + (" Ask for a new export." if export.status in
                                        (ExportStatus.EXPIRED, ExportStatus.FAILED) else ""))
    token = new_token(LINK_PREFIX)
    export.link_digest = token_digest(token)
    export.link_expires_at = utcnow() + timedelta(minutes=minutes)
    await record(db, ctx, "export.link_created", target_kind="export", target_id=export.id,
                 details={"expires_at": export.link_expires_at.isoformat()})
    return token, export


async def take_download(db: AsyncSession, ctx: TenantContext, storage: ArtifactStorage,
                        token: str) -> tuple[TenantExport, Path]:
    """Consume a download link of ``ctx``'s organization: the export and its file. NotFound
    for an unknown, used or expired link, and for another organization's link (the lookup is
    by digest within this organization). Audited (``export.downloaded``)."""
    if not token.startswith(LINK_PREFIX) or len(token) > 100:
        raise NotFound()
    export = await ExportRepository(db, ctx).take_link(token_digest(token), utcnow())
    if export is None:
        raise NotFound()
    path = archive_path(storage, ctx.org_id, export.id)
    if not path.is_file():
        raise NotFound()
    await record(db, ctx, "export.downloaded", target_kind="export", target_id=export.id)
    return export, path


# --- worker side ---------------------------------------------------------------------------

Heartbeat = Callable[[], Awaitable[None]]


async def build_export(sessions: SessionFactory, storage: ArtifactStorage, job: LifecycleJob,
                       *, retention: timedelta, rows_per_second: int,
                       heartbeat: Heartbeat, keyring: Keyring | None = None) -> None:
    """Build the archive of ``job``'s export from scratch (an attempt after a dead worker
    overwrites that worker's partial ``.part`` file), then mark it succeeded and schedule its
    expiry, in one transaction. The caller finishes the job."""
    org_id, export_id = job.org_id, job.target_id
    ctx = system_context(org_id, "")
    async with sessions() as db:
        await set_tenant(db, org_id)
        export = await ExportRepository(db, ctx).get(export_id)
        if export is None or export.status not in ACTIVE:
            return  # deleted with its organization, or already finished
        export.status = ExportStatus.RUNNING
        export.started_at = utcnow()
        export.attempts = job.attempts
        export.done = 0
        export.current_kind = None
        export.total = await count_rows(db)
        recipient = export.secrets_recipient
        await record(db, ctx, "export.started", target_kind="export", target_id=export_id,
                     details={"attempt": job.attempts})
        await db.commit()

    async def progress(done: int, kind: str) -> None:
        await heartbeat()
        async with sessions() as db:
            await set_tenant(db, org_id)
            found = await ExportRepository(db, ctx).get(export_id)
            if found is not None:
                found.done, found.current_kind = done, kind
                await db.commit()

    path = archive_path(storage, org_id, export_id)
    plan = None
    if recipient:
        if keyring is None:
            raise RuntimeError("this export includes secrets, but this process has no master "
                               "key to open them with")
        plan = SecretsPlan(recipient, keyring)
    info = await write_archive(sessions, org_id, storage, path, progress=progress,
                               rows_per_second=rows_per_second, secrets=plan)
    async with sessions() as db:
        await set_tenant(db, org_id)
        export = await ExportRepository(db, ctx).access(export_id)
        now = utcnow()
        export.status = ExportStatus.SUCCEEDED
        export.finished_at = now
        export.size_bytes = info.size_bytes
        export.sha256 = info.sha256
        export.done = export.total
        export.current_kind = None
        export.expires_at = now + retention
        export.error = None
        repo.enqueue(db, JobKind.EXPIRE_EXPORT, org_id, export_id, run_after=export.expires_at)
        await record(db, ctx, "export.completed", target_kind="export", target_id=export_id,
                     details={"bytes": info.size_bytes, "sha256": info.sha256,
                              "counts": info.counts})
        await db.commit()


async def fail_export(sessions: SessionFactory, job: LifecycleJob, error: str, *,
                      final: bool) -> None:
    """Record a failed attempt; ``final``: the export is given up (``export.failed``)."""
    ctx = system_context(job.org_id, "")
    async with sessions() as db:
        await set_tenant(db, job.org_id)
        export = await ExportRepository(db, ctx).get(job.target_id)
        if export is None:
            return
        export.error = error[:2000]
        if final:
            export.status = ExportStatus.FAILED
            export.finished_at = utcnow()
            await record(db, ctx, "export.failed", target_kind="export", target_id=export.id,
                         details={"attempts": job.attempts})
        await db.commit()


async def expire_export(sessions: SessionFactory, storage: ArtifactStorage,
                        job: LifecycleJob) -> None:
    """Delete the archive of a finished export whose time is up (``export.expired``)."""
    ctx = system_context(job.org_id, "")
    async with sessions() as db:
        await set_tenant(db, job.org_id)
        export = await ExportRepository(db, ctx).get(job.target_id)
        if export is None:
            return
        archive_path(storage, job.org_id, export.id).unlink(missing_ok=True)
        if export.status == ExportStatus.SUCCEEDED:
            export.status = ExportStatus.EXPIRED
            export.link_digest = None
            export.link_expires_at = None
            await record(db, ctx, "export.expired", target_kind="export", target_id=export.id)
        await db.commit()
