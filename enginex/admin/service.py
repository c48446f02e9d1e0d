"""Platform administration: create, list, suspend and reactivate tenants; worker health;
disable and enable user accounts; the mail outbox.

Platform admins see metadata and counts only (members, agents, sessions by status, queue
depth, pending approvals -- through the narrow reads of tenancy/platform.py), never tenant
content or secrets. Creating a tenant either adds an existing user as its first admin or
issues an invitation for them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from enginex.admin import repository as admin_repo
from enginex.audit.service import record
from enginex.auth import repository as auth_repo
from enginex.auth.models import User
from enginex.kit.errors import Conflict, NotFound
from enginex.orgs import repository as org_repo
from enginex.orgs import service as org_service
from enginex.orgs.models import Organization
from enginex.tenancy import platform
from enginex.tenancy.platform import TenantActivity, WorkerHealth, tenant_member_counts
from enginex.tenancy.scopes import Role

PAGE_SIZE = 50


@dataclass(frozen=True)
class TenantSummary:
    org: Organization
    member_count: int
    activity: TenantActivity = field(default_factory=TenantActivity)


@dataclass(frozen=True)
class TenantPage:
    items: list[TenantSummary]
    next_after: str | None  # the slug to continue after, None on the last page


@dataclass(frozen=True)
class NewTenant:
    org: Organization
    admin_user_id: uuid.UUID | None
    invitation_token: str | None


async def _summaries(db: AsyncSession, orgs: list[Organization]) -> list[TenantSummary]:
    members = await tenant_member_counts(db)
    activity = await platform.tenant_activity(db, [o.id for o in orgs])
    return [TenantSummary(o, members.get(o.id, 0), activity.get(o.id, TenantActivity()))
            for o in orgs]


async def list_tenants(db: AsyncSession) -> list[TenantSummary]:
    """Every tenant with its counts, in slug order."""
    return await _summaries(db, await org_repo.list_orgs(db))


async def list_tenants_page(db: AsyncSession, *, after: str | None = None,
                            limit: int = PAGE_SIZE) -> TenantPage:
    """One page of tenants (slug order, after the slug ``after``) with their counts."""
    orgs = await admin_repo.list_tenants_page(db, after=after, limit=limit + 1)
    more = len(orgs) > limit
    orgs = orgs[:limit]
    return TenantPage(await _summaries(db, orgs), orgs[-1].slug if more else None)


async def summarize_tenant(db: AsyncSession, org: Organization) -> TenantSummary:
    return (await _summaries(db, [org]))[0]


async def list_workers(db: AsyncSession) -> list[WorkerHealth]:
    """Worker processes that reported recently, most recent first (no tenant data)."""
    return await platform.list_workers(db)


async def create_tenant(db: AsyncSession, *, slug: str, name: str, admin_email: str,
                        region: str, actor_id: uuid.UUID, base_url: str) -> NewTenant:
    """Create a tenant with its first admin (existing user) or an admin invitation (mailed
    through the outbox; links start with ``base_url``)."""
    org, ctx = await org_service.create_organization(db, slug=slug, name=name, region=region)
    await record(db, ctx, "org.created", target_kind="organization", target_id=org.id,
                 actor_kind="platform_admin", actor_id=actor_id)
    user = await auth_repo.get_user_by_email(db, admin_email)
    if user is not None:
        await org_service.add_member(db, ctx, user, Role.ADMIN)
        return NewTenant(org, user.id, None)
    token, _ = await org_service.create_invitation(db, ctx, email=admin_email, role=Role.ADMIN,
                                                  base_url=base_url)
    return NewTenant(org, None, token)


async def access_tenant(db: AsyncSession, org_id: uuid.UUID) -> Organization:
    """The tenant with ``org_id``; NotFound if there is none."""
    org = await org_repo.get_org(db, org_id)
    if org is None:
        raise NotFound()
    return org


async def set_tenant_status(db: AsyncSession, org_id: uuid.UUID, status: str, *,
                            actor_id: uuid.UUID) -> Organization:
    """Suspend (``suspended``) or reactivate (``active``) a tenant; audited in its log.
    NotFound for an unknown id; Conflict when reactivating a tenant scheduled for deletion
    (``lifecycle.deletion.restore_deletion`` does that)."""
    org = await access_tenant(db, org_id)
    if status == "active":
        from enginex.lifecycle.deletion import pending_deletion

        if await pending_deletion(db, org.id) is not None:
            raise Conflict("This tenant is scheduled for deletion: restore it instead "
                           "(POST /api/v1/admin/tenants/{id}/restore, or Restore on the "
                           "deletions page).", code="deletion_scheduled")
    return await org_service.set_org_status(db, org, status, actor_id=actor_id)


async def find_tenant_by_slug(db: AsyncSession, slug: str) -> Organization | None:
    return await org_repo.get_org_by_slug(db, slug)


# --- user accounts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class UserPage:
    items: list[User]
    next_after: str | None  # the email to continue after, None on the last page


async def list_users_page(db: AsyncSession, *, search: str = "", after: str | None = None,
                          limit: int = PAGE_SIZE) -> UserPage:
    """One page of accounts in email order, those whose email contains ``search``."""
    users = await auth_repo.list_users_page(db, search=search.strip(), after=after,
                                            limit=limit + 1)
    more = len(users) > limit
    users = users[:limit]
    return UserPage(users, users[-1].email if more else None)


async def access_user(db: AsyncSession, user_id: uuid.UUID) -> User:
    """The account with ``user_id``; NotFound if there is none."""
    user = await auth_repo.get_user(db, user_id)
    if user is None:
        raise NotFound()
    return user


async def set_user_disabled(db: AsyncSession, user_id: uuid.UUID, disabled: bool, *,
                            actor_id: uuid.UUID | None) -> tuple[User, bool]:
    """Disable (everywhere) or re-enable an account; returns it and whether it changed.

    Disabling deletes the user's browser sessions in this transaction (their cookies stop
    at once); API keys the user created stop on their next request (the key guard checks
    the creator), open event streams at their next access re-check (at most
    ``stream_recheck_seconds``). Enabling lets the user sign in again and makes their
    unexpired, unrevoked keys work again. Conflict when a platform admin would disable
    their own account. NotFound for an unknown id. The caller commits, then audits
    (``audit.service.record_in_user_orgs``: the account is global, its audit trail lives in
    each of its organizations).
    """
    user = await access_user(db, user_id)
    if disabled and actor_id == user.id:
        raise Conflict("You cannot disable your own account: ask another platform admin.",
                       code="own_account")
    changed = user.disabled != disabled
    if changed:
        user.disabled = disabled
        if disabled:
            await auth_repo.delete_user_sessions(db, user.id)
    return user, changed
