"""Platform administration: create, list, suspend and reactivate tenants.

Platform admins see metadata and counts only. Creating a tenant either adds an existing user
as its first admin or issues an invitation for them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from enginex.audit.service import record
from enginex.auth import repository as auth_repo
from enginex.kit.errors import NotFound
from enginex.orgs import repository as org_repo
from enginex.orgs import service as org_service
from enginex.orgs.models import Organization
from enginex.tenancy.platform import tenant_member_counts
from enginex.tenancy.scopes import Role


@dataclass(frozen=True)
class TenantSummary:
    org: Organization
    member_count: int


@dataclass(frozen=True)
class NewTenant:
    org: Organization
    admin_user_id: uuid.UUID | None
    invitation_token: str | None


async def list_tenants(db: AsyncSession) -> list[TenantSummary]:
    counts = await tenant_member_counts(db)
    return [TenantSummary(o, counts.get(o.id, 0)) for o in await org_repo.list_orgs(db)]


async def create_tenant(db: AsyncSession, *, slug: str, name: str, admin_email: str,
                        region: str, actor_id: uuid.UUID) -> NewTenant:
    """Create a tenant with its first admin (existing user) or an admin invitation."""
    org, ctx = await org_service.create_organization(db, slug=slug, name=name, region=region)
    await record(db, ctx, "org.created", target_kind="organization", target_id=org.id,
                 actor_kind="platform_admin", actor_id=actor_id)
    user = await auth_repo.get_user_by_email(db, admin_email)
    if user is not None:
        await org_service.add_member(db, ctx, user, Role.ADMIN)
        return NewTenant(org, user.id, None)
    token, _ = await org_service.create_invitation(db, ctx, email=admin_email, role=Role.ADMIN)
    return NewTenant(org, None, token)


async def access_tenant(db: AsyncSession, org_id: uuid.UUID) -> Organization:
    org = await org_repo.get_org(db, org_id)
    if org is None:
        raise NotFound()
    return org


async def set_tenant_status(db: AsyncSession, org_id: uuid.UUID, status: str, *,
                            actor_id: uuid.UUID) -> Organization:
    org = await access_tenant(db, org_id)
    return await org_service.set_org_status(db, org, status, actor_id=actor_id)
