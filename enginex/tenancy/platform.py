"""The few platform-wide reads, each a narrowly defined query.

On PostgreSQL the tenant-owned tables are behind row-level security, so these go through
SECURITY DEFINER functions created by the migrations (see docs/MULTI_TENANT.md): a user's
memberships, member counts (0001), and the platform admin's per-tenant counts of agents,
sessions by status, queue depth and pending approvals (0004). They return ids, roles and
counts only -- never tenant content. Worker health reads the global ``workers`` table.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.db import UTCDateTime
from enginex.kit.time import utcnow
from enginex.runs.models import WORKER_HEARTBEAT_SECONDS, WorkerPresence


@dataclass(frozen=True)
class UserOrg:
    org_id: uuid.UUID
    slug: str
    name: str
    status: str
    role: str


def _is_pg(db: AsyncSession) -> bool:
    return db.get_bind().dialect.name == "postgresql"


def _uuid(value: object) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


async def list_user_orgs(db: AsyncSession, user_id: uuid.UUID) -> list[UserOrg]:
    """The organizations a user belongs to, with their role in each (disabled memberships
    left out, as by ``enginex_user_memberships`` since 0014)."""
    if _is_pg(db):
        sql = text("SELECT o.id, o.slug, o.name, o.status, m.role "
                   "FROM enginex_user_memberships(:u) m JOIN organizations o ON o.id = m.tenant_id "
                   "ORDER BY o.slug")
        params = {"u": user_id}
    else:
        sql = text("SELECT o.id, o.slug, o.name, o.status, m.role FROM memberships m "
                   "JOIN organizations o ON o.id = m.tenant_id WHERE m.user_id = :u "
                   "AND m.disabled_at IS NULL ORDER BY o.slug")
        params = {"u": user_id.hex}
    rows = (await db.execute(sql, params)).all()
    return [UserOrg(_uuid(r[0]), r[1], r[2], r[3], r[4]) for r in rows]


async def tenant_member_counts(db: AsyncSession) -> dict[uuid.UUID, int]:
    """Number of members per organization (for the platform admin's tenant list)."""
    if _is_pg(db):
        sql = text("SELECT tenant_id, members FROM enginex_tenant_member_counts()")
    else:
        sql = text("SELECT tenant_id, count(*) FROM memberships GROUP BY tenant_id")
    return {_uuid(r[0]): int(r[1]) for r in (await db.execute(sql)).all()}


# --- platform admin: per-tenant counts and worker health -------------------------------------


@dataclass(frozen=True)
class TenantActivity:
    """Counts of one tenant's engine objects; never their content."""

    agents: int = 0
    sessions: dict[str, int] = field(default_factory=dict)  # by status; absent = 0
    queue_depth: int = 0  # queued, or running without a live lease (claimable)
    pending_approvals: int = 0


_SQLITE_SESSION_COUNTS = ("SELECT tenant_id, status, count(*) FROM runs "
                          "WHERE tenant_id IN :tenants GROUP BY tenant_id, status")
_SQLITE_WORKLOAD = """
    SELECT o.id,
        (SELECT count(*) FROM agents a WHERE a.tenant_id = o.id),
        (SELECT count(*) FROM runs r WHERE r.tenant_id = o.id
           AND (r.status = 'queued' OR (r.status = 'running' AND
                (r.lease_expires_at IS NULL OR r.lease_expires_at < :now)))),
        (SELECT count(*) FROM approvals p WHERE p.tenant_id = o.id AND p.status = 'pending')
    FROM organizations o WHERE o.id IN :tenants"""


async def tenant_activity(db: AsyncSession, tenant_ids: Sequence[uuid.UUID]
                          ) -> dict[uuid.UUID, TenantActivity]:
    """Agents, sessions by status, queue depth and pending approvals of each tenant in
    ``tenant_ids`` (one page of the platform admin's list). Ids and counts only."""
    if not tenant_ids:
        return {}
    ids = list(tenant_ids)
    if _is_pg(db):
        session_rows = (await db.execute(
            text("SELECT tenant_id, status, sessions FROM enginex_tenant_session_counts(:t)"),
            {"t": ids})).all()
        workload_rows = (await db.execute(
            text("SELECT tenant_id, agents, queue_depth, pending_approvals "
                 "FROM enginex_tenant_workload(:t)"), {"t": ids})).all()
    else:
        hexes = [i.hex for i in ids]
        session_rows = (await db.execute(
            text(_SQLITE_SESSION_COUNTS).bindparams(bindparam("tenants", expanding=True)),
            {"tenants": hexes})).all()
        workload_rows = (await db.execute(
            text(_SQLITE_WORKLOAD).bindparams(bindparam("tenants", expanding=True),
                                              bindparam("now", type_=UTCDateTime())),
            {"tenants": hexes, "now": utcnow()})).all()
    sessions: dict[uuid.UUID, dict[str, int]] = {}
    for tenant, status, count in session_rows:
        sessions.setdefault(_uuid(tenant), {})[str(status)] = int(count)
    return {_uuid(tenant): TenantActivity(agents=int(agents),
                                          sessions=sessions.get(_uuid(tenant), {}),
                                          queue_depth=int(queue), pending_approvals=int(pending))
            for tenant, agents, queue, pending in workload_rows}


@dataclass(frozen=True)
class WorkerHealth:
    name: str
    started_at: datetime
    last_seen_at: datetime
    alive: bool
    slots: int
    steps_committed: int


async def list_workers(db: AsyncSession, *, limit: int = 100) -> list[WorkerHealth]:
    """The workers that reported most recently (global table, no tenant data). A worker is
    alive while its last heartbeat is younger than three heartbeat intervals, judged by the
    clock that wrote it (the database's on PostgreSQL)."""
    rows = (await db.execute(select(WorkerPresence)
                             .order_by(WorkerPresence.last_seen_at.desc(), WorkerPresence.name)
                             .limit(limit))).scalars().all()
    now = (await db.execute(select(func.now()))).scalar_one() if _is_pg(db) else utcnow()
    horizon = now - timedelta(seconds=3 * WORKER_HEARTBEAT_SECONDS)
    return [WorkerHealth(name=w.name, started_at=w.started_at, last_seen_at=w.last_seen_at,
                         alive=w.last_seen_at >= horizon, slots=w.slots,
                         steps_committed=w.steps_committed) for w in rows]


@dataclass(frozen=True)
class SessionForOrg:
    """A browser session, its user, and that user's role in one organization (by slug)."""

    session_id: uuid.UUID
    expires_at: datetime
    last_seen_at: datetime
    user_id: uuid.UUID
    email: str
    is_platform_admin: bool
    disabled: bool
    org_id: uuid.UUID | None
    org_slug: str | None
    org_status: str | None
    role: str | None
    # SSO enforcement (enginex/sso): the organization requires SSO, its break-glass admin,
    # and the organization whose SSO opened this session (None: a password sign-in).
    org_require_sso: bool | None = None
    org_break_glass_user_id: uuid.UUID | None = None
    session_sso_org_id: uuid.UUID | None = None


_SESSION_COLUMNS = (
    sa.column("session_id", sa.Uuid()), sa.column("expires_at", UTCDateTime()),
    sa.column("last_seen_at", UTCDateTime()), sa.column("user_id", sa.Uuid()),
    sa.column("email", sa.String()), sa.column("is_platform_admin", sa.Boolean()),
    sa.column("disabled", sa.Boolean()), sa.column("org_id", sa.Uuid()),
    sa.column("org_slug", sa.String()), sa.column("org_status", sa.String()),
    sa.column("role", sa.String()), sa.column("require_sso", sa.Boolean()),
    sa.column("sso_break_glass_user_id", sa.Uuid()), sa.column("sso_org_id", sa.Uuid()),
)
_SESSION_SELECT = (
    "SELECT s.id AS session_id, s.expires_at, s.last_seen_at, u.id AS user_id, u.email, "
    "u.is_platform_admin, u.disabled, o.id AS org_id, o.slug AS org_slug, "
    "o.status AS org_status, m.role, o.require_sso, o.sso_break_glass_user_id, s.sso_org_id "
    "FROM auth_sessions s JOIN users u ON u.id = s.user_id "
    "LEFT JOIN organizations o ON o.slug = :slug ")
_SESSION_FOR_ORG_PG = sa.text(
    _SESSION_SELECT  # noqa: S608 - constant SQL; values are bound parameters
    + "LEFT JOIN LATERAL (SELECT em.role FROM enginex_user_memberships(u.id) em "
      "WHERE em.tenant_id = o.id) m ON true WHERE s.token_digest = :digest"
).columns(*_SESSION_COLUMNS)
_SESSION_FOR_ORG_SQLITE = sa.text(
    _SESSION_SELECT
    + "LEFT JOIN memberships m ON m.tenant_id = o.id AND m.user_id = u.id "
      "AND m.disabled_at IS NULL WHERE s.token_digest = :digest"
).columns(*_SESSION_COLUMNS)


async def session_for_org(db: AsyncSession, digest: bytes, slug: str) -> SessionForOrg | None:
    """One statement for the tenant guard of a cookie request: the session with its user and
    the user's role in organization ``slug`` (org fields None when no such org; role None
    when not a member or the membership is disabled -- on PostgreSQL through
    ``enginex_user_memberships``, which leaves disabled memberships out). Keeps the guard at
    one round trip before the route's own query."""
    statement = _SESSION_FOR_ORG_PG if _is_pg(db) else _SESSION_FOR_ORG_SQLITE
    row = (await db.execute(statement, {"slug": slug.lower(), "digest": digest})).first()
    return SessionForOrg(*row) if row else None
