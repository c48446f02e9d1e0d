"""The few platform-wide reads, each a narrowly defined query.

On PostgreSQL the tenant-owned tables are behind row-level security, so these go through
SECURITY DEFINER functions created by the migrations (see docs/MULTI_TENANT.md). They return
ids, roles and counts only -- never tenant content.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


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
    """The organizations a user belongs to, with their role in each."""
    if _is_pg(db):
        sql = text("SELECT o.id, o.slug, o.name, o.status, m.role "
                   "FROM enginex_user_memberships(:u) m JOIN organizations o ON o.id = m.tenant_id "
                   "ORDER BY o.slug")
        params = {"u": user_id}
    else:
        sql = text("SELECT o.id, o.slug, o.name, o.status, m.role FROM memberships m "
                   "JOIN organizations o ON o.id = m.tenant_id WHERE m.user_id = :u "
                   "ORDER BY o.slug")
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
