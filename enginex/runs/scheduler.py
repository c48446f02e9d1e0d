"""Claiming runs fairly across tenants, and expiring approvals: the platform-wide parts of
the engine.

On PostgreSQL both go through SECURITY DEFINER functions (migration 0002): they see every
tenant's runs but return only ids; claims are serialised by a transaction-level advisory lock
(held until the caller commits), so the per-tenant limit and the round robin hold across
concurrent workers. On SQLite the same logic runs here inside one ``BEGIN IMMEDIATE``
transaction, which serialises claimers the same way. Times are read once the lock is held.

Fairness: among active (not suspended) tenants with a claimable run and fewer than
``tenant_limit`` runs executing, the tenant that was served longest ago goes first (round
robin); within a tenant, the oldest claimable run. A claimable run is ``queued``, or
``running`` with no live lease (between steps, or its worker died). A suspended tenant's runs
wait, untouched, until it is reactivated.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.db import UTCDateTime
from enginex.kit.time import utcnow

_TIMES = (bindparam("now", type_=UTCDateTime()), bindparam("exp", type_=UTCDateTime()))


def _sql(statement: str):  # noqa: ANN202 - a TextClause with typed time parameters
    params = [p for p in _TIMES if f":{p.key}" in statement]
    return text(statement).bindparams(*params)


@dataclass(frozen=True)
class Claim:
    tenant_id: uuid.UUID
    run_id: uuid.UUID


def _uuid(value: object) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


async def claim_next(db: AsyncSession, *, worker: str, lease_seconds: int,
                     tenant_limit: int) -> Claim | None:
    """Lease the next run to ``worker``; the caller commits. None when nothing is runnable."""
    if db.get_bind().dialect.name == "postgresql":
        row = (await db.execute(text("SELECT tenant_id, run_id FROM enginex_claim_run(:w, :l, :t)"),
                                {"w": worker, "l": lease_seconds, "t": tenant_limit})).first()
        return Claim(_uuid(row[0]), _uuid(row[1])) if row else None
    return await _claim_sqlite(db, worker=worker, lease_seconds=lease_seconds,
                               tenant_limit=tenant_limit)


async def _now_in_transaction(db: AsyncSession) -> datetime:
    """The time once this session's transaction holds SQLite's write lock (``BEGIN
    IMMEDIATE`` may wait up to the busy timeout for it): a time read before the wait would
    grant leases that are already partly, or wholly, expired."""
    await db.connection()
    return utcnow()


# The same queries as enginex_claim_run (migration 0002): tenants are tested with index probes
# on runs (tenant_id, status, queued_at), so a claim costs O(tenants), not O(queued runs).
_RESUMABLE = ("status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at < :now)")
_SQLITE_TENANTS = f"""
    SELECT o.id FROM organizations o
    LEFT JOIN run_queue_state q ON q.tenant_id = o.id
    WHERE o.status = 'active'
      AND (EXISTS (SELECT 1 FROM runs r WHERE r.tenant_id = o.id AND r.status = 'queued')
           OR EXISTS (SELECT 1 FROM runs r WHERE r.tenant_id = o.id AND r.{_RESUMABLE}))
      AND (SELECT count(*) FROM runs a WHERE a.tenant_id = o.id AND a.status = 'running'
           AND a.lease_expires_at >= :now) < :limit
    ORDER BY q.last_claimed_at IS NOT NULL, q.last_claimed_at, o.id
"""  # noqa: S608 - constant SQL
_SQLITE_OLDEST = f"""
    SELECT id, queued_at FROM (
        SELECT * FROM (SELECT id, queued_at FROM runs WHERE tenant_id = :t AND {_RESUMABLE}
                       ORDER BY queued_at LIMIT 1)
        UNION ALL
        SELECT * FROM (SELECT id, queued_at FROM runs WHERE tenant_id = :t AND status = 'queued'
                       ORDER BY queued_at LIMIT 1))
    ORDER BY queued_at, id LIMIT 1
"""  # noqa: S608 - constant SQL


async def _claim_sqlite(db: AsyncSession, *, worker: str, lease_seconds: int,
                        tenant_limit: int) -> Claim | None:
    now = await _now_in_transaction(db)
    tenants = (await db.execute(_sql(_SQLITE_TENANTS),
                                {"now": now, "limit": tenant_limit})).scalars().all()
    for tenant in tenants:
        run_id = (await db.execute(_sql(_SQLITE_OLDEST), {"t": tenant, "now": now})).scalar()
        if run_id is None:
            continue
        await db.execute(_sql(
            "UPDATE runs SET lease_owner = :w, lease_expires_at = :exp, attempts = attempts + 1, "
            "status = 'running', started_at = COALESCE(started_at, :now) "
            "WHERE tenant_id = :t AND id = :r"),
            {"w": worker, "exp": now + timedelta(seconds=lease_seconds), "now": now,
             "t": tenant, "r": run_id})
        await db.execute(_sql(
            "INSERT INTO run_queue_state (tenant_id, last_claimed_at) VALUES (:t, :now) "
            "ON CONFLICT (tenant_id) DO UPDATE SET last_claimed_at = excluded.last_claimed_at"),
            {"t": tenant, "now": now})
        return Claim(_uuid(tenant), _uuid(run_id))
    return None


async def expire_approvals(db: AsyncSession) -> int:
    """Reject every pending approval past its expiry and make its run resumable."""
    if db.get_bind().dialect.name == "postgresql":
        return int((await db.execute(_sql("SELECT enginex_expire_approvals()"))).scalar_one())
    now = await _now_in_transaction(db)
    expired = (await db.execute(_sql(
        "SELECT tenant_id, run_id FROM approvals WHERE status = 'pending' AND expires_at < :now"),
        {"now": now})).all()
    if not expired:
        return 0
    await db.execute(_sql(
        "UPDATE approvals SET status = 'expired', decision = 'reject', "
        "comment = 'expired without a decision', decided_at = :now "
        "WHERE status = 'pending' AND expires_at < :now"), {"now": now})
    for tenant_id, run_id in expired:
        await db.execute(_sql(
            "UPDATE runs SET status = 'running', lease_owner = NULL, lease_expires_at = NULL "
            "WHERE tenant_id = :t AND id = :r AND status = 'waiting_approval'"),
            {"t": tenant_id, "r": run_id})
    return len(expired)
