"""Queries on organizations (global registry), memberships and invitations (scoped)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.auth.models import User
from enginex.kit.pagination import Cursor, older_than
from enginex.orgs.models import Invitation, Membership, Organization
from enginex.tenancy.repository import ScopedRepository


async def get_org_by_slug(db: AsyncSession, slug: str) -> Organization | None:
    stmt = select(Organization).where(Organization.slug == slug.lower())
    return (await db.execute(stmt)).scalar_one_or_none()


async def get_org(db: AsyncSession, org_id: uuid.UUID) -> Organization | None:
    return await db.get(Organization, org_id)


async def lock_org(db: AsyncSession, org_id: uuid.UUID) -> None:
    """Hold the organization's row lock until commit (PostgreSQL; SQLite serializes writers).

    Membership changes take it first, so checks such as "an admin remains" see every
    concurrent change to the same organization that committed before them.
    """
    await db.execute(select(Organization.id).where(Organization.id == org_id).with_for_update())


async def list_orgs(db: AsyncSession) -> list[Organization]:
    return list((await db.execute(select(Organization).order_by(Organization.slug))).scalars())


async def get_membership_for_guard(db: AsyncSession, tenant_id: uuid.UUID,
                                   user_id: uuid.UUID) -> Membership | None:
    """Kernel-only: the session must already be bound to ``tenant_id``.

    Always re-read from the database (not the session's identity map): after ``lock_org`` the
    caller must see the role as committed by concurrent requests.
    """
    stmt = (select(Membership).where(Membership.tenant_id == tenant_id,
                                     Membership.user_id == user_id)
            .execution_options(populate_existing=True))
    return (await db.execute(stmt)).scalar_one_or_none()


class MembershipRepository(ScopedRepository[Membership]):
    model = Membership

    async def get_member(self, user_id: uuid.UUID) -> Membership | None:
        return await get_membership_for_guard(self.db, self.ctx.org_id, user_id)

    async def list_member_rows(self, user_id: uuid.UUID | None = None
                               ) -> list[tuple[uuid.UUID, str, str, str, datetime,
                                               datetime | None]]:
        """(user_id, email, display_name, role, joined_at, disabled_at), by email; only
        ``user_id``'s row when given. Only the columns a listing shows: password hashes are
        never loaded."""
        stmt = (select(User.id, User.email, User.display_name, Membership.role,
                       Membership.created_at, Membership.disabled_at)
                .join(User, User.id == Membership.user_id)
                .where(Membership.tenant_id == self.ctx.org_id)
                .order_by(func.lower(User.email)))
        if user_id is not None:
            stmt = stmt.where(Membership.user_id == user_id)
        return [tuple(row) for row in (await self.db.execute(stmt)).all()]  # type: ignore[misc]

    async def page_member_rows(self, limit: int, before: Cursor | None
                               ) -> list[tuple[uuid.UUID, str, str, str, datetime,
                                               datetime | None]]:
        """The rows of ``list_member_rows``, newest member first by (joined_at, user_id),
        after the cursor ``before``; ``limit`` rows at most."""
        stmt = (select(User.id, User.email, User.display_name, Membership.role,
                       Membership.created_at, Membership.disabled_at)
                .join(User, User.id == Membership.user_id)
                .where(Membership.tenant_id == self.ctx.org_id))
        if before is not None:
            stmt = stmt.where(older_than(Membership.created_at, Membership.user_id, before))
        stmt = stmt.order_by(Membership.created_at.desc(), Membership.user_id.desc()).limit(limit)
        return [tuple(row) for row in (await self.db.execute(stmt)).all()]  # type: ignore[misc]

    async def count_role(self, role: str) -> int:
        """Members with ``role`` whose membership is not disabled."""
        stmt = select(func.count()).select_from(Membership).where(
            Membership.tenant_id == self.ctx.org_id, Membership.role == role,
            Membership.disabled_at.is_(None))
        return int((await self.db.execute(stmt)).scalar_one())

    async def delete(self, membership: Membership) -> None:
        await self.db.delete(membership)


class InvitationRepository(ScopedRepository[Invitation]):
    model = Invitation

    async def list(self, limit: int | None = None,
                   before: Cursor | None = None) -> list[Invitation]:
        """Newest first; ``before``: the (created_at, id) of the last row already seen."""
        stmt = select(Invitation).where(Invitation.tenant_id == self.ctx.org_id)
        if before is not None:
            stmt = stmt.where(older_than(Invitation.created_at, Invitation.id, before))
        stmt = stmt.order_by(Invitation.created_at.desc(), Invitation.id.desc()).limit(limit)
        return list((await self.db.execute(stmt)).scalars())

    async def get_by_digest_for_update(self, digest: bytes) -> Invitation | None:
        """The invitation, row-locked until commit so that it can be accepted only once."""
        stmt = (select(Invitation).where(Invitation.tenant_id == self.ctx.org_id,
                                         Invitation.token_digest == digest)
                .with_for_update())
        return (await self.db.execute(stmt)).scalar_one_or_none()
