"""Retention per organization (docs/DATA_LIFECYCLE.md "Retention").

An org admin sets how many days the organization keeps finished sessions (with their events,
checkpoints, approvals and reports) and audit entries (at least
``ENGINEX_AUDIT_RETENTION_MIN_DAYS``, set by the platform operator); empty = until deleted by
hand. Exports are deleted ``ENGINEX_EXPORT_RETENTION_DAYS`` after they were built (the export
jobs do that, enginex/lifecycle/service.py).

``apply_retention`` (every worker, every ``ENGINEX_RETENTION_SWEEP_SECONDS``; or
``enginex tenant retention apply``) deletes in batches of ``ENGINEX_RETENTION_BATCH_ROWS``
rows, one short transaction each, so writers are never blocked for long: a session's events,
then its checkpoints, approvals and reports (files unlinked after the commit), then the session
row. Old audit entries go oldest first, and each batch moves the chain's signed anchor to the
last entry it deleted in the same transaction (enginex/audit/anchor.py), so the rest of the
chain still verifies. A crash between batches loses nothing: the next pass continues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.approvals.models import Approval
from enginex.audit.anchor import delete_oldest_entries
from enginex.audit.service import record
from enginex.db import Base, SessionFactory, set_tenant
from enginex.kit.errors import ValidationFailed
from enginex.kit.time import utcnow
from enginex.lifecycle.deletion import delete_prefix
from enginex.lifecycle.models import RetentionPolicy
from enginex.orgs.models import Organization
from enginex.reports.models import Artifact
from enginex.reports.storage import ArtifactStorage
from enginex.runs.models import FINISHED, Checkpoint, Run, RunEvent
from enginex.tenancy.context import TenantContext, system_context

log = logging.getLogger("enginex.lifecycle.retention")

MAX_DAYS = 36500
RUNS_PER_GROUP = 50
# A session's rows, children first; artifacts last among them (their files go after commit).
SESSION_MODELS: tuple[type[Base], ...] = (RunEvent, Checkpoint, Approval, Artifact)


# --- the policy ---------------------------------------------------------------------------


async def get_policy(db: AsyncSession, org_id: uuid.UUID) -> RetentionPolicy | None:
    return await db.get(RetentionPolicy, org_id)


async def set_policy(db: AsyncSession, ctx: TenantContext, *, session_days: int | None,
                     audit_days: int | None, audit_min_days: int) -> RetentionPolicy:
    """Set ``ctx``'s retention (None: keep until deleted by hand). ValidationFailed for an
    audit retention below the platform's minimum or a value out of range. Audited
    (``retention.updated``) in the caller's transaction."""
    for name, value in (("session_days", session_days), ("audit_days", audit_days)):
        if value is not None and not 1 <= value <= MAX_DAYS:
            raise ValidationFailed(f"{name}: give a number of days from 1 to {MAX_DAYS}, or "
                                   "null to keep until deleted by hand.",
                                   details={"field": name})
    if audit_days is not None and audit_days < audit_min_days:
        raise ValidationFailed(f"audit_days: the platform keeps audit entries at least "
                               f"{audit_min_days} days; choose {audit_min_days} or more, or "
                               "null to keep them all.",
                               details={"field": "audit_days", "minimum": audit_min_days})
    policy = await get_policy(db, ctx.org_id)
    if policy is None:
        policy = RetentionPolicy(org_id=ctx.org_id)
        db.add(policy)
    policy.session_days, policy.audit_days = session_days, audit_days
    policy.updated_at = utcnow()
    policy.updated_by = ctx.actor_id
    await record(db, ctx, "retention.updated", target_kind="organization",
                 target_id=ctx.org_id,
                 details={"session_days": session_days, "audit_days": audit_days})
    return policy


async def list_policies(db: AsyncSession) -> list[tuple[Organization, RetentionPolicy | None]]:
    """Every organization with its policy (None: keeps everything), in slug order."""
    rows = (await db.execute(
        select(Organization, RetentionPolicy)
        .outerjoin(RetentionPolicy, RetentionPolicy.org_id == Organization.id)
        .order_by(Organization.slug))).all()
    return [(org, policy) for org, policy in rows]


# --- records of processing ------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessingRecord:
    """One line of the records of processing: what is stored, why, and for how long."""

    category: str
    data: str
    purpose: str
    kept: str


def _days(days: int | None, after: str, otherwise: str) -> str:
    return f"{days} days {after}" if days else otherwise


def records_of_processing(policy: RetentionPolicy | None, *, export_days: int,
                          audit_min_days: int, grace_days: int) -> list[ProcessingRecord]:
    """What the deployment stores for one organization and for how long, generated from its
    retention policy and the platform settings."""
    session_days = policy.session_days if policy else None
    audit_days = policy.audit_days if policy else None
    until = "until the organization deletes it, or the organization is deleted"
    return [
        ProcessingRecord("Members", "e-mail address, display name and role of each member; "
                         "invitations (e-mail address of the invited person)",
                         "sign-in and access control",
                         "while the person is a member; invitations until accepted, revoked "
                         "or expired"),
        ProcessingRecord("Sessions", "inputs, event timelines, checkpoints (state), approvals "
                         "and their decisions, reports and report files",
                         "running the organization's agents and keeping their results",
                         _days(session_days, "after the session finished", until)),
        ProcessingRecord("Audit log", "who did what and when (people by account id, never by "
                         "name or e-mail address)", "accountability and security review",
                         _days(audit_days, f"(the platform minimum is {audit_min_days} days)",
                               until)),
        ProcessingRecord("Credentials", "secrets for tools and LLM providers, encrypted with the "
                         "organization's data key", "calling the services the agents use",
                         until + "; unreadable once the data key is destroyed"),
        ProcessingRecord("Agents and settings", "agent packages and versions, LLM, MCP, skills "
                         "and single sign-on settings", "running the organization's agents",
                         until),
        ProcessingRecord("Usage", "metered events (tokens, steps, sessions) and totals",
                         "quotas and billing", until),
        ProcessingRecord("Exports", "complete copies of the organization's data",
                         "data portability", f"{export_days} days after each export is built"),
        ProcessingRecord("Deletion", "when the organization is deleted, everything above; a "
                         "tombstone keeps the organization id, the SHA-256 of its slug, the "
                         "times and who asked", "proof of deletion",
                         f"deleted for good {grace_days} days after the request (restorable "
                         "until then); the tombstone is kept"),
    ]


# --- applying the policies ------------------------------------------------------------------


@dataclass
class RetentionReport:
    sessions: int = 0
    rows: int = 0
    audit_entries: int = 0
    files: int = 0
    orgs: list[uuid.UUID] = field(default_factory=list)


async def apply_retention(sessions: SessionFactory, storage: ArtifactStorage, *,
                          anchor_key: bytes, batch_rows: int, now: datetime | None = None,
                          audit_min_days: int = 0,
                          stop: asyncio.Event | None = None) -> RetentionReport:
    """Apply every organization's policy once (module docstring). An audit retention below
    ``audit_min_days`` (the platform raised its minimum after the org chose) counts as the
    minimum."""
    now = now or utcnow()
    report = RetentionReport()
    async with sessions() as db:
        rows = (await db.execute(
            select(RetentionPolicy, Organization.slug)
            .join(Organization, Organization.id == RetentionPolicy.org_id)
            .where((RetentionPolicy.session_days.is_not(None))
                   | (RetentionPolicy.audit_days.is_not(None))))).all()
        policies = [(p.org_id, slug, p.session_days, p.audit_days) for p, slug in rows]
    for org_id, slug, session_days, audit_days in policies:
        if stop is not None and stop.is_set():
            break
        ctx = system_context(org_id, slug)
        if session_days:
            await _expire_sessions(sessions, storage, ctx, now - timedelta(days=session_days),
                                   batch_rows, report)
        if audit_days:
            keep = timedelta(days=max(audit_days, audit_min_days))
            await _expire_audit(sessions, ctx, now - keep, batch_rows, anchor_key, report)
        async with sessions() as db:
            policy = await get_policy(db, org_id)
            if policy is not None:
                policy.last_applied_at = utcnow()
                await db.commit()
        report.orgs.append(org_id)
    return report


async def _expire_sessions(sessions: SessionFactory, storage: ArtifactStorage,
                           ctx: TenantContext, cutoff: datetime, batch_rows: int,
                           report: RetentionReport) -> None:
    org_id = ctx.org_id
    while True:
        async with sessions() as db:
            await set_tenant(db, org_id)
            run_ids = list((await db.execute(
                select(Run.id).where(Run.tenant_id == org_id, Run.status.in_(FINISHED),
                                     Run.finished_at < cutoff)
                .order_by(Run.finished_at).limit(RUNS_PER_GROUP))).scalars())
        if not run_ids:
            return
        for run_id in run_ids:
            while True:
                deleted = await _delete_session_rows(sessions, storage, org_id, run_id,
                                                     batch_rows, report)
                report.rows += deleted
                if deleted < batch_rows:
                    break
        async with sessions() as db:
            await set_tenant(db, org_id)
            done = await db.execute(delete(Run).where(Run.tenant_id == org_id,
                                                      Run.id.in_(run_ids))
                                    .execution_options(synchronize_session=False))
            count = int(done.rowcount or 0)  # type: ignore[attr-defined]
            await record(db, ctx, "retention.sessions_deleted", target_kind="organization",
                         target_id=org_id, details={"sessions": count,
                                                    "finished_before": cutoff.isoformat()})
            await db.commit()
        report.sessions += count


async def _delete_session_rows(sessions: SessionFactory, storage: ArtifactStorage,
                               org_id: uuid.UUID, run_id: uuid.UUID, limit: int,
                               report: RetentionReport) -> int:
    """Delete up to ``limit`` rows of session ``run_id`` (events first, then checkpoints,
    approvals, reports) in one transaction; a report's file is unlinked after the commit.
    Returns how many rows; fewer than ``limit`` means none is left."""
    budget, ids = limit, []
    async with sessions() as db:
        await set_tenant(db, org_id)
        for model in SESSION_MODELS:
            if budget <= 0:
                break
            where = [model.tenant_id == org_id, model.run_id == run_id]  # type: ignore[attr-defined]
            if model is Artifact:
                ids = list((await db.execute(select(Artifact.id).where(*where).limit(budget)))
                           .scalars())
                if ids:
                    await db.execute(delete(Artifact).where(*where, Artifact.id.in_(ids))
                                     .execution_options(synchronize_session=False))
                budget -= len(ids)
            else:
                budget -= await delete_prefix(db, model, where, budget)
        await db.commit()
    for artifact_id in ids:
        with contextlib.suppress(OSError):
            storage.path_for(org_id, artifact_id).unlink(missing_ok=True)
            report.files += 1
    return limit - budget


async def _expire_audit(sessions: SessionFactory, ctx: TenantContext, cutoff: datetime,
                        batch_rows: int, key: bytes, report: RetentionReport) -> None:
    while True:
        async with sessions() as db:
            await set_tenant(db, ctx.org_id)
            deleted = await delete_oldest_entries(db, ctx, before=cutoff, limit=batch_rows,
                                                  key=key)
            await db.commit()
        report.audit_entries += deleted
        if deleted < batch_rows:
            return


class RetentionSweeper:
    """The worker's retention loop: ``apply_retention`` every ``period`` seconds, first after
    a random part of it (workers started together do not sweep together). Failures are
    logged and retried at the next period."""

    def __init__(self, sessions: SessionFactory, storage: ArtifactStorage, *, anchor_key: bytes,
                 batch_rows: int, period: float, audit_min_days: int = 0) -> None:
        self.sessions = sessions
        self.storage = storage
        self.anchor_key = anchor_key
        self.batch_rows = batch_rows
        self.period = period
        self.audit_min_days = audit_min_days

    async def run(self, stop: asyncio.Event) -> None:
        import random

        delay = self.period * random.uniform(0.1, 1.0)  # noqa: S311
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            if stop.is_set():
                return
            try:
                done = await apply_retention(self.sessions, self.storage,
                                             anchor_key=self.anchor_key,
                                             batch_rows=self.batch_rows,
                                             audit_min_days=self.audit_min_days, stop=stop)
                if done.sessions or done.audit_entries:
                    log.info("retention: %d session(s), %d row(s), %d audit entries deleted",
                             done.sessions, done.rows, done.audit_entries)
            except Exception:
                log.exception("retention sweep failed")
            delay = self.period
