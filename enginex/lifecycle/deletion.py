"""Deletion of an organization with a grace period (docs/DATA_LIFECYCLE.md "Deletion").

``schedule_deletion`` (an org admin who re-entered their password, a platform admin, or the
CLI) suspends the organization at once -- every member route answers 403, no run is claimed --
and queues a ``hard_delete`` life-cycle job due ``ENGINEX_DELETION_GRACE_DAYS`` later.
``restore_deletion`` (platform admin, within the grace period) puts the organization back in
the status it had and cancels the job. Both are audited in the organization's chain.

``hard_delete`` (the worker, when the job is due) is resumable at every point:

1. the deletion becomes ``deleting`` (from then on it cannot be restored);
2. every tenant table named by enginex/lifecycle/kinds.py (exported kinds and excluded tables,
   children before parents; not ``tenant_keys`` and ``audit_entries``, see ``LAST``) is
   emptied of the organization's rows in batches of
   ``ENGINEX_DELETION_BATCH_ROWS``, one short transaction each (a killed worker's successor
   continues with what is left);
3. the organization's storage prefix (report files, export archives) is removed;
4. one last transaction destroys its data keys (crypto-shredding, as
   ``credentials.rotation.delete_tenant``), deletes the organization row (cascading to what is
   left: its platform rows, its job), removes the platform rows that name it without a foreign
   key (API rate counters, browser sessions its SSO opened) and marks the deletion
   ``deleted``. That row is the
   tombstone: org id, SHA-256 of the slug, the times, who asked -- no name, no member, no
   content.

On SQLite every batch runs with ``secure_delete`` and the WAL is truncated at the end
(``purge_deleted_content``), so no deleted page keeps the organization's data in the files.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, inspect, literal, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.audit.service import record
from enginex.auth import repository as auth_repo
from enginex.auth.passwords import verify_password_off_loop
from enginex.db import Base, SessionFactory, set_tenant
from enginex.kit.errors import Conflict, Forbidden, NotFound, ValidationFailed
from enginex.kit.time import utcnow
from enginex.lifecycle import repository as repo
from enginex.lifecycle.kinds import EXCLUDED, KINDS
from enginex.lifecycle.models import (
    DeletionStatus,
    JobKind,
    JobStatus,
    LifecycleJob,
    OrgDeletion,
)
from enginex.orgs import repository as org_repo
from enginex.orgs.models import Organization
from enginex.reports.storage import ArtifactStorage
from enginex.tenancy.context import system_context
from enginex.tenancy.principal import Principal, UserPrincipal

log = logging.getLogger("enginex.lifecycle.deletion")

# Tables emptied by the final transaction, not in batches: the data keys are destroyed
# together with the organization row (crypto-shredding), and audit entries are append-only
# for the app role on PostgreSQL (they go with the organization row, by its cascade).
LAST = frozenset({"tenant_keys", "audit_entries"})


def slug_hash(slug: str) -> str:
    """What the tombstone keeps of the slug: its SHA-256 (answers "was slug X deleted?")."""
    return hashlib.sha256(slug.lower().encode()).hexdigest()


def tenant_models_in_delete_order() -> list[type[Base]]:
    """The model of every tenant table of the registry (kinds.py: exported kinds and excluded
    tables), children before parents, without those of ``LAST``."""
    import enginex.models  # noqa: F401  (every model registered)

    names = {k.table for k in KINDS} | set(EXCLUDED)
    models = {m.local_table.name: m.class_ for m in Base.registry.mappers  # type: ignore[union-attr]
              if m.local_table.name in names}  # type: ignore[union-attr]
    missing = names - set(models)
    if missing:
        raise RuntimeError(f"kinds.py names tables without a model: {sorted(missing)}")
    return [models[t.name] for t in reversed(Base.metadata.sorted_tables)
            if t.name in models and t.name not in LAST]


def primary_key_of(model: type[Base]) -> list[Any]:
    """The model's primary-key attributes (the ORM guard wants mapped attributes)."""
    mapper = inspect(model)
    return [mapper.get_property_by_column(c).class_attribute for c in mapper.primary_key]


@dataclass(frozen=True)
class Requester:
    """Who asked: ``kind`` is ``org_admin``, ``platform_admin`` or ``cli``."""

    kind: str
    user_id: uuid.UUID | None


async def reauthenticate(db: AsyncSession, principal: Principal, password: str) -> None:
    """Check that the person behind ``principal`` just typed their password. Forbidden for an
    API key (a person must confirm) and for an account without a password (SSO-only);
    ValidationFailed for a wrong password."""
    if not isinstance(principal, UserPrincipal):
        raise Forbidden("Deleting the organization needs a signed-in person who confirms with "
                        "their password; an API key cannot do it.", code="reauthentication")
    user = await auth_repo.get_user(db, principal.user_id)
    if user is None or not user.password_hash:
        raise Forbidden("Your account has no password to confirm with (single sign-on): ask a "
                        "platform admin to delete the organization.", code="reauthentication")
    if not await verify_password_off_loop(user.password_hash, password):
        raise ValidationFailed("password: this is not your password; type the password you "
                               "sign in with to confirm.", details={"field": "password"})


async def pending_deletion(db: AsyncSession, org_id: uuid.UUID) -> OrgDeletion | None:
    """The organization's scheduled or running deletion, if any."""
    stmt = (select(OrgDeletion)
            .where(OrgDeletion.org_id == org_id,
                   OrgDeletion.status.in_((DeletionStatus.SCHEDULED, DeletionStatus.DELETING)))
            .order_by(OrgDeletion.requested_at.desc()).limit(1))
    return (await db.execute(stmt)).scalar_one_or_none()


async def schedule_deletion(db: AsyncSession, org: Organization, *, requester: Requester,
                            grace: timedelta) -> OrgDeletion:
    """Suspend ``org`` now and schedule its hard delete after ``grace``, in the caller's
    transaction. Conflict when a deletion is already scheduled. Audited in the organization's
    chain (``org.deletion_scheduled``)."""
    await org_repo.lock_org(db, org.id)
    if await pending_deletion(db, org.id) is not None:
        raise Conflict("This organization is already scheduled for deletion; a platform admin "
                       "can restore it until then.", code="deletion_scheduled")
    now = utcnow()
    deletion = OrgDeletion(id=uuid.uuid4(), org_id=org.id, slug_sha256=slug_hash(org.slug),
                           status=DeletionStatus.SCHEDULED, previous_status=org.status,
                           requested_by=requester.user_id, requested_by_kind=requester.kind,
                           requested_at=now, hard_delete_at=now + grace, rows_deleted=0,
                           data_keys_destroyed=0)
    db.add(deletion)
    org.status = "suspended"
    await db.flush()
    repo.enqueue(db, JobKind.HARD_DELETE, org.id, deletion.id, run_after=deletion.hard_delete_at)
    await set_tenant(db, org.id)
    await record(db, system_context(org.id, org.slug), "org.deletion_scheduled",
                 target_kind="organization", target_id=org.id,
                 details={"hard_delete_at": deletion.hard_delete_at.isoformat(),
                          "requested_by_kind": requester.kind},
                 actor_kind="platform_admin" if requester.kind == "platform_admin"
                 else ("user" if requester.user_id else "cli"),
                 actor_id=requester.user_id)
    return deletion


async def restore_deletion(db: AsyncSession, org_id: uuid.UUID, *,
                           actor_id: uuid.UUID | None) -> tuple[Organization, OrgDeletion]:
    """Cancel ``org_id``'s scheduled deletion: the organization gets back the status it had,
    the hard-delete job is cancelled. NotFound for an unknown organization; Conflict when no
    deletion is scheduled or the hard delete has started. Audited (``org.deletion_restored``)."""
    org = await org_repo.get_org(db, org_id)
    if org is None:
        raise NotFound()
    await org_repo.lock_org(db, org.id)
    deletion = await pending_deletion(db, org.id)
    if deletion is None:
        raise Conflict("This organization is not scheduled for deletion: nothing to restore.",
                       code="no_deletion")
    if deletion.status != DeletionStatus.SCHEDULED:
        raise Conflict("The hard delete of this organization has started; it can no longer be "
                       "restored (restore a backup instead).", code="deletion_started")
    now = utcnow()
    deletion.status = DeletionStatus.RESTORED
    deletion.restored_at = now
    deletion.restored_by = actor_id
    org.status = deletion.previous_status
    await db.execute(update(LifecycleJob)
                     .where(LifecycleJob.kind == JobKind.HARD_DELETE,
                            LifecycleJob.target_id == deletion.id,
                            LifecycleJob.status == JobStatus.QUEUED)
                     .values(status=JobStatus.DONE, finished_at=now,
                             last_error="cancelled: the organization was restored"))
    await set_tenant(db, org.id)
    await record(db, system_context(org.id, org.slug), "org.deletion_restored",
                 target_kind="organization", target_id=org.id,
                 details={"status": org.status}, actor_kind="platform_admin" if actor_id
                 else "cli", actor_id=actor_id)
    return org, deletion


async def list_deletions(db: AsyncSession, *, limit: int = 200) -> list[OrgDeletion]:
    """Deletions (scheduled, restored, running) and tombstones, newest first (platform)."""
    stmt = select(OrgDeletion).order_by(OrgDeletion.requested_at.desc()).limit(limit)
    return list((await db.execute(stmt)).scalars())


async def find_tombstones(db: AsyncSession, slug: str) -> list[OrgDeletion]:
    """The tombstones of organizations that had ``slug``."""
    stmt = (select(OrgDeletion).where(OrgDeletion.slug_sha256 == slug_hash(slug),
                                      OrgDeletion.status == DeletionStatus.DELETED)
            .order_by(OrgDeletion.deleted_at))
    return list((await db.execute(stmt)).scalars())


# --- the worker's hard delete -------------------------------------------------------------

Heartbeat = Callable[[], Awaitable[None]]
Checkpoint = Callable[[str], None]


def _no_checkpoint(_: str) -> None:
    return None


async def hard_delete(sessions: SessionFactory, storage: ArtifactStorage,
                      deletion_id: uuid.UUID, *, batch_rows: int, rows_per_second: int,
                      heartbeat: Heartbeat, checkpoint: Checkpoint = _no_checkpoint) -> bool:
    """Delete everything of the deletion's organization (module docstring); True when this
    call finished it, False when there was nothing to do (restored, already deleted, not due
    yet). Safe to call again after a crash at any point."""
    from enginex.credentials.rotation import delete_tenant, purge_deleted_content

    async with sessions() as db:
        deletion = await db.get(OrgDeletion, deletion_id, with_for_update=True)
        if deletion is None or deletion.status in (DeletionStatus.RESTORED,
                                                   DeletionStatus.DELETED):
            return False
        if deletion.status == DeletionStatus.SCHEDULED:
            if deletion.hard_delete_at > utcnow():
                return False
            deletion.status = DeletionStatus.DELETING
            deletion.started_at = utcnow()
        org_id = deletion.org_id
        await db.commit()
    checkpoint("deletion:started")

    for model in tenant_models_in_delete_order():
        while True:
            deleted = await _delete_batch(sessions, model, org_id, deletion_id, batch_rows)
            if not deleted:
                break
            checkpoint(f"deletion:batch:{model.__tablename__}")
            await heartbeat()
            if rows_per_second:
                await asyncio.sleep(deleted / rows_per_second)
    checkpoint("deletion:rows-done")

    storage.delete_tenant(org_id)
    checkpoint("deletion:storage-done")

    engine = None
    async with sessions() as db:
        engine = db.bind
        deletion = await db.get(OrgDeletion, deletion_id, with_for_update=True)
        if deletion is None or deletion.status != DeletionStatus.DELETING:
            return False
        org = await org_repo.get_org(db, org_id)
        destroyed = 0
        if org is not None:
            destroyed = await delete_tenant(db, org, storage=storage)
        await _forget_platform_references(db, org_id)
        deletion.status = DeletionStatus.DELETED
        deletion.deleted_at = utcnow()
        deletion.data_keys_destroyed = destroyed
        await db.commit()
    checkpoint("deletion:committed")
    if engine is not None:
        await purge_deleted_content(engine)  # type: ignore[arg-type]
    log.warning("organization %s deleted for good (deletion %s); %d data key(s) destroyed",
                org_id, deletion_id, destroyed)
    return True


async def _forget_platform_references(db: AsyncSession, org_id: uuid.UUID) -> None:
    """Platform rows naming the organization without a foreign key: its API request counters
    (``rate_windows``, one-minute windows) and the browser sessions its SSO opened
    (``auth_sessions.sso_org_id``: those people sign in again; their accounts stay)."""
    from enginex.auth.models import AuthSession
    from enginex.usage.models import RateWindow

    await db.execute(delete(RateWindow).where(RateWindow.org_id == org_id)
                     .execution_options(synchronize_session=False))
    await db.execute(delete(AuthSession).where(AuthSession.sso_org_id == org_id)
                     .execution_options(synchronize_session=False))


async def delete_prefix(db: AsyncSession, model: type[Base], where: list[Any],
                        limit: int) -> int:
    """Delete the first ``limit`` rows matching ``where`` in primary-key order, in the
    caller's transaction: find the ``limit``-th key, then delete every matching row up to it
    with one row-value range (``(pk...) <= (key...)``), which an index on the key serves on
    PostgreSQL and SQLite alike (a list of thousands of keys is planned far worse). Returns how
    many rows were deleted."""
    pk = primary_key_of(model)
    last = (await db.execute(select(*pk).where(*where).order_by(*pk)
                             .offset(limit - 1).limit(1))).first()
    stmt = delete(model).where(*where)
    if last is not None:
        stmt = stmt.where(tuple_(*pk) <= tuple_(*(literal(v, c.type)
                                                  for c, v in zip(pk, last, strict=True))))
    result = await db.execute(stmt.execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def _delete_batch(sessions: SessionFactory, model: type[Base], org_id: uuid.UUID,
                        deletion_id: uuid.UUID, limit: int) -> int:
    """Delete up to ``limit`` rows of ``org_id`` from ``model``'s table and count them on
    the deletion, in one transaction. Returns how many were deleted."""
    async with sessions() as db:
        await set_tenant(db, org_id)
        if db.get_bind().dialect.name == "sqlite":
            await db.execute(text("PRAGMA secure_delete = ON"))
        deleted = await delete_prefix(db, model, [model.tenant_id == org_id],  # type: ignore[attr-defined]
                                      limit)
        if not deleted:
            await db.rollback()
            return 0
        await db.execute(update(OrgDeletion).where(OrgDeletion.id == deletion_id)
                         .values(rows_deleted=OrgDeletion.rows_deleted + deleted))
        await db.commit()
        return deleted
