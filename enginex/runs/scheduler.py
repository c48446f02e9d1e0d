"""Claiming runs fairly across tenants, and expiring approvals: the platform-wide parts of
the engine.

On PostgreSQL both go through SECURITY DEFINER functions (migrations 0002 and 0013): they see every
tenant's runs but return only ids; claims are serialised by a transaction-level advisory lock
(held until the caller commits), so the per-tenant limit and the round robin hold across
concurrent workers. On SQLite the same logic runs here inside one ``BEGIN IMMEDIATE``
transaction, which serialises claimers the same way. Times are read once the lock is held.

Fairness: among active (not suspended) tenants with a claimable run and fewer than
``tenant_limit`` runs executing, the tenant that was served longest ago goes first (round
robin); within a tenant, the oldest claimable run. A claimable run is ``queued``, or
``running`` with no live lease (between steps, or its worker died). A suspended tenant's runs
wait, untouched, until it is reactivated.

Batches: ``claim_runs`` leases up to ``max_runs`` runs in one serialised claim (a worker's
claimer asks for as many as it has free slots), in rounds of one run per eligible tenant, so
the limit and the round robin hold within a batch. ``claim_next`` is a batch of one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, bindparam, column, text
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.db import UTCDateTime
from enginex.kit.time import utcnow
from enginex.runs.models import WORKER_HEARTBEAT_SECONDS

_TIMES = (bindparam("now", type_=UTCDateTime()), bindparam("exp", type_=UTCDateTime()),
          bindparam("dead", type_=UTCDateTime()), bindparam("served", type_=UTCDateTime()))

# A lease whose owner's presence row (``workers``) is older than this is dead: its run is
# claimable at once instead of when the lease expires. Three of the workers' presence
# heartbeats (``WORKER_HEARTBEAT_SECONDS``), the horizon the health panel calls "not alive".
DEFAULT_DEAD_SECONDS = 3 * WORKER_HEARTBEAT_SECONDS
# Weights are clamped to this range (see ``served_time``).
WEIGHT_RANGE = (0.1, 100.0)
# SQLite's source of an organization's claim weight: an SQL expression over ``o.id`` (the
# organization's id), the scheduler weight of its plan (the default plan when none is
# assigned), 1 without plans. PostgreSQL's is the SQL function ``enginex_claim_weight(org)``
# (migration 0025_engine), the same read. Another source replaces both (docs/ARCHITECTURE.md).
SQLITE_CLAIM_WEIGHT_SQL = (
    "COALESCE((SELECT p.weight FROM org_quotas oq JOIN plans p ON p.key = oq.plan_key "
    "WHERE oq.org_id = o.id), (SELECT p.weight FROM plans p WHERE p.is_default "
    "ORDER BY p.key LIMIT 1), 1)")


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
                     tenant_limit: int, dead_seconds: float = DEFAULT_DEAD_SECONDS
                     ) -> Claim | None:
    """Lease the next run to ``worker``; the caller commits. None when nothing is runnable."""
    claims = await claim_runs(db, worker=worker, lease_seconds=lease_seconds,
                              tenant_limit=tenant_limit, max_runs=1, dead_seconds=dead_seconds)
    return claims[0] if claims else None


async def claim_runs(db: AsyncSession, *, worker: str, lease_seconds: int, tenant_limit: int,
                     max_runs: int, dead_seconds: float = DEFAULT_DEAD_SECONDS) -> list[Claim]:
    """Lease up to ``max_runs`` runs to ``worker`` in one serialised claim; the caller commits.

    The batch is made in rounds: each round gives every eligible tenant (served longest ago
    first) its oldest claimable run, so a batch alternates between tenants and no tenant gets
    more than ``tenant_limit`` live leases. Empty when nothing is runnable. The result is in
    claim order.

    A lease is live until it expires, unless its owner's presence row in ``workers`` is older
    than ``dead_seconds`` (the worker died): then its run is claimable at once. A lease
    whose owner has no presence row yet counts as live.
    """
    if max_runs < 1:
        return []
    if db.get_bind().dialect.name == "postgresql":
        rows = (await db.execute(text(
            "SELECT tenant_id, run_id FROM enginex_claim_runs(:w, :l, :t, :n, :d)"),
            {"w": worker, "l": lease_seconds, "t": tenant_limit, "n": max_runs,
             "d": float(dead_seconds)})).all()
        return [Claim(_uuid(tenant), _uuid(run)) for tenant, run in rows]
    return await _claim_sqlite(db, worker=worker, lease_seconds=lease_seconds,
                               tenant_limit=tenant_limit, max_runs=max_runs,
                               dead_seconds=dead_seconds)


def served_time(now: datetime, served: datetime | None, others: datetime | None,
                weight: float) -> datetime:
    """A tenant's new served time after a claim (weighted fair share): ``1/weight`` of the
    way to ``now`` from its previous served time. That start is taken no further behind
    ``others`` (the other candidates' oldest served time) than ``weight`` times ``others`` is
    behind now, so a tenant saves no credit while idle (and a heavier one keeps its lead).
    Weight 1 gives ``now`` (plain round robin); with every tenant backlogged, a tenant of
    weight 2 is served about twice as often as one of weight 1.
    Same arithmetic as enginex_claim_runs (migration 0025_engine)."""
    low, high = WEIGHT_RANGE
    weight = min(max(weight, low), high)
    if others is None:
        start = served or now
    else:
        earliest = others - (now - others) * weight
        start = earliest if served is None else max(served, earliest)
    start = min(start, now)
    return start + (now - start) / weight


async def _now_in_transaction(db: AsyncSession) -> datetime:
    """The time once this session's transaction holds SQLite's write lock (``BEGIN
    IMMEDIATE`` may wait up to the busy timeout for it): a time read before the wait would
    grant leases that are already partly, or wholly, expired."""
    await db.connection()
    return utcnow()


# The same queries as enginex_claim_runs (migration 0013). Candidate tenants come from the
# partial index ix_runs_active_tenant_id (runs that are queued or running) by a skip scan, one
# probe per tenant with active runs: an empty claim is one probe, whatever the number of
# tenants, and a claim costs O(active tenants), not O(tenants) nor O(queued runs). SQLite's
# planner would rather range-scan the wider (tenant_id, status, queued_at) index, finished runs
# included: INDEXED BY pins the partial one.
_DEAD_OWNER = ("EXISTS (SELECT 1 FROM workers w WHERE w.name = {runs}.lease_owner "
               "AND w.last_seen_at < :dead)")
_RESUMABLE = ("status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at < :now "
              "OR " + _DEAD_OWNER.format(runs="runs") + ")")
_SQLITE_TENANTS = f"""
    WITH RECURSIVE active(tenant_id) AS (
        SELECT (SELECT tenant_id FROM runs INDEXED BY ix_runs_active_tenant_id
                WHERE status IN ('queued', 'running') ORDER BY tenant_id LIMIT 1)
        UNION ALL
        SELECT (SELECT r.tenant_id FROM runs r INDEXED BY ix_runs_active_tenant_id
                WHERE r.status IN ('queued', 'running') AND r.tenant_id > active.tenant_id
                ORDER BY r.tenant_id LIMIT 1)
        FROM active WHERE active.tenant_id IS NOT NULL)
    SELECT o.id, q.last_claimed_at, {{weight}} AS weight FROM active
    JOIN organizations o ON o.id = active.tenant_id
    LEFT JOIN run_queue_state q ON q.tenant_id = o.id
    WHERE o.status = 'active'
      AND (EXISTS (SELECT 1 FROM runs WHERE runs.tenant_id = o.id AND runs.status = 'queued')
           OR EXISTS (SELECT 1 FROM runs WHERE runs.tenant_id = o.id AND runs.{_RESUMABLE}))
      AND (SELECT count(*) FROM runs a WHERE a.tenant_id = o.id AND a.status = 'running'
           AND a.lease_expires_at >= :now AND NOT {_DEAD_OWNER.format(runs="a")}) < :limit
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
                        tenant_limit: int, max_runs: int, dead_seconds: float) -> list[Claim]:
    now = await _now_in_transaction(db)
    times = {"now": now, "dead": now - timedelta(seconds=dead_seconds)}
    tenants_sql = _sql(_SQLITE_TENANTS.replace("{weight}", SQLITE_CLAIM_WEIGHT_SQL)).columns(
        column("id"), column("last_claimed_at", UTCDateTime()), column("weight"))
    claims: list[Claim] = []
    while True:  # rounds: one run per eligible tenant each
        tenants = (await db.execute(tenants_sql, {**times, "limit": tenant_limit})).all()
        low, high = WEIGHT_RANGE
        weights = {tenant: min(max(float(weight or 1.0), low), high)
                   for tenant, _, weight in tenants}
        # Relative to the lightest candidate: equal weights are a plain round robin.
        lightest = min(weights.values(), default=1.0)
        claimed_before = len(claims)
        for tenant, served, _ in tenants:
            run_id = (await db.execute(_sql(_SQLITE_OLDEST), {"t": tenant, **times})).scalar()
            if run_id is None:
                continue
            await db.execute(_sql(
                "UPDATE runs SET lease_owner = :w, lease_expires_at = :exp, "
                "attempts = attempts + 1, status = 'running', "
                "started_at = COALESCE(started_at, :now) WHERE tenant_id = :t AND id = :r"),
                {"w": worker, "exp": now + timedelta(seconds=lease_seconds), "now": now,
                 "t": tenant, "r": run_id})
            # Served times one microsecond apart keep this batch's order for the next claim.
            await db.execute(_sql(
                "INSERT INTO run_queue_state (tenant_id, last_claimed_at) VALUES (:t, :served) "
                "ON CONFLICT (tenant_id) DO UPDATE SET last_claimed_at = excluded.last_claimed_at"),
                {"t": tenant, "served": served_time(now, served, _oldest_other(tenants, tenant),
                                                    weights[tenant] / lightest)
                 + timedelta(microseconds=len(claims))})
            claims.append(Claim(_uuid(tenant), _uuid(run_id)))
            if len(claims) >= max_runs:
                return claims
        if len(claims) == claimed_before:
            return claims


def _oldest_other(tenants: Sequence[Row[Any]], tenant: object) -> datetime | None:
    """The oldest served time among the candidates other than ``tenant``."""
    times = [served for other, served, _ in tenants if other != tenant and served is not None]
    return min(times) if times else None


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
