"""Queries on the SCIM tables of one organization (and the memberships they describe).

Every statement filters on ``ctx.org_id``; the session is bound to the organization (RLS on
PostgreSQL). A SCIM user is a row of ``memberships`` (with the global account's email and
name) plus, when the identity provider has written it, its ``scim_users`` row.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, func, select

from enginex.auth.models import User
from enginex.orgs.models import Membership
from enginex.scim.models import ScimGroup, ScimGroupMember, ScimToken, ScimUser
from enginex.tenancy.repository import ScopedRepository


class ScimTokenRepository(ScopedRepository[ScimToken]):
    model = ScimToken

    async def list(self) -> list[ScimToken]:
        stmt = (select(ScimToken).where(ScimToken.tenant_id == self.ctx.org_id)
                .order_by(ScimToken.created_at.desc()))
        return list((await self.db.execute(stmt)).scalars())


@dataclass(frozen=True)
class UserRow:
    """One SCIM user as read: the membership, the account, and the SCIM record (None when
    the identity provider never wrote this member)."""

    user_id: uuid.UUID
    email: str
    display_name: str
    joined_at: datetime
    disabled_at: datetime | None
    role: str
    scim: ScimUser | None




class ScimUserRepository(ScopedRepository[ScimUser]):
    model = ScimUser

    def _select(self) -> Select[Any]:
        return (select(Membership.user_id, User.email, User.display_name, Membership.created_at,
                       Membership.disabled_at, Membership.role, ScimUser)
                .join(User, User.id == Membership.user_id)
                .outerjoin(ScimUser, (ScimUser.tenant_id == Membership.tenant_id)
                           & (ScimUser.user_id == Membership.user_id))
                .where(Membership.tenant_id == self.ctx.org_id))

    async def _rows(self, stmt: Select[Any]) -> list[UserRow]:
        return [UserRow(*row) for row in (await self.db.execute(stmt)).all()]

    async def get_row(self, user_id: uuid.UUID) -> UserRow | None:
        rows = await self._rows(self._select().where(Membership.user_id == user_id))
        return rows[0] if rows else None

    async def page(self, offset: int, limit: int) -> list[UserRow]:
        """Members in user-id order (the primary key's order: stable and indexed). The page's
        ids come first from the primary key alone (an index-only walk to the offset), then
        only those members are joined with their accounts and SCIM records: joining the whole
        organization and sorting it for every page cost PostgreSQL a multiple of that."""
        if limit <= 0:
            return []
        ids = list((await self.db.execute(
            select(Membership.user_id).where(Membership.tenant_id == self.ctx.org_id)
            .order_by(Membership.user_id).offset(offset).limit(limit))).scalars())
        if not ids:
            return []
        return await self._rows(self._select().where(Membership.user_id.in_(ids))
                                .order_by(Membership.user_id))

    async def count(self) -> int:
        stmt = select(func.count()).select_from(Membership).where(
            Membership.tenant_id == self.ctx.org_id)
        return int((await self.db.execute(stmt)).scalar_one())

    async def by_user_name(self, user_name: str) -> list[UserRow]:
        """The member whose SCIM userName is ``user_name`` (case-insensitive); a member the
        identity provider never wrote is matched by the account's email instead. Two indexed
        lookups, no scan."""
        key = user_name.strip().lower()
        found = await self._rows(self._select().where(ScimUser.user_name_key == key))
        if found:
            return found
        return await self._rows(self._select().where(
            func.lower(User.email) == key, ScimUser.user_id.is_(None)))

    async def by_external_id(self, external_id: str) -> list[UserRow]:
        return await self._rows(self._select().where(ScimUser.external_id == external_id))

    async def get_record(self, user_id: uuid.UUID) -> ScimUser | None:
        stmt = select(ScimUser).where(ScimUser.tenant_id == self.ctx.org_id,
                                      ScimUser.user_id == user_id)
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def taken(self, *, user_name_key: str | None = None, external_id: str | None = None,
                    other_than: uuid.UUID | None = None) -> bool:
        """Whether another SCIM user of the organization has this userName or externalId."""
        stmt = select(ScimUser.user_id).where(ScimUser.tenant_id == self.ctx.org_id)
        if user_name_key is not None:
            stmt = stmt.where(ScimUser.user_name_key == user_name_key)
        else:
            stmt = stmt.where(ScimUser.external_id == external_id)
        if other_than is not None:
            stmt = stmt.where(ScimUser.user_id != other_than)
        return (await self.db.execute(stmt.limit(1))).first() is not None

    async def groups_of(self, user_ids: Sequence[uuid.UUID]
                        ) -> dict[uuid.UUID, list[tuple[uuid.UUID, str]]]:
        """(group id, display name) of every group of each user, by user."""
        if not user_ids:
            return {}
        stmt = (select(ScimGroupMember.user_id, ScimGroup.id, ScimGroup.display_name)
                .join(ScimGroup, (ScimGroup.tenant_id == ScimGroupMember.tenant_id)
                      & (ScimGroup.id == ScimGroupMember.group_id))
                .where(ScimGroupMember.tenant_id == self.ctx.org_id,
                       ScimGroupMember.user_id.in_(list(user_ids)))
                .order_by(ScimGroup.display_name_key))
        found: dict[uuid.UUID, list[tuple[uuid.UUID, str]]] = {}
        for user_id, group_id, name in (await self.db.execute(stmt)).all():
            found.setdefault(user_id, []).append((group_id, name))
        return found


class ScimGroupRepository(ScopedRepository[ScimGroup]):
    model = ScimGroup

    async def page(self, offset: int, limit: int) -> list[ScimGroup]:
        if limit <= 0:
            return []
        stmt = (select(ScimGroup).where(ScimGroup.tenant_id == self.ctx.org_id)
                .order_by(ScimGroup.id).offset(offset).limit(limit))
        return list((await self.db.execute(stmt)).scalars())

    async def count(self) -> int:
        stmt = select(func.count()).select_from(ScimGroup).where(
            ScimGroup.tenant_id == self.ctx.org_id)
        return int((await self.db.execute(stmt)).scalar_one())

    async def find(self, *, display_name_key: str | None = None,
                   external_id: str | None = None) -> list[ScimGroup]:
        stmt = select(ScimGroup).where(ScimGroup.tenant_id == self.ctx.org_id)
        if display_name_key is not None:
            stmt = stmt.where(ScimGroup.display_name_key == display_name_key)
        else:
            stmt = stmt.where(ScimGroup.external_id == external_id)
        return list((await self.db.execute(stmt)).scalars())

    async def members_of(self, group_ids: Sequence[uuid.UUID]
                         ) -> dict[uuid.UUID, list[ScimGroupMember]]:
        if not group_ids:
            return {}
        stmt = (select(ScimGroupMember).where(ScimGroupMember.tenant_id == self.ctx.org_id,
                                              ScimGroupMember.group_id.in_(list(group_ids)))
                .order_by(ScimGroupMember.user_id))
        found: dict[uuid.UUID, list[ScimGroupMember]] = {}
        for member in (await self.db.execute(stmt)).scalars():
            found.setdefault(member.group_id, []).append(member)
        return found

    async def existing_members(self, user_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of ``user_ids`` are members of the organization."""
        if not user_ids:
            return set()
        stmt = select(Membership.user_id).where(Membership.tenant_id == self.ctx.org_id,
                                                Membership.user_id.in_(list(user_ids)))
        return set((await self.db.execute(stmt)).scalars())

    async def set_members(self, group_id: uuid.UUID,
                          members: Sequence[tuple[uuid.UUID, str | None]]) -> None:
        await self.db.execute(delete(ScimGroupMember).where(
            ScimGroupMember.tenant_id == self.ctx.org_id, ScimGroupMember.group_id == group_id))
        for user_id, display in members:
            self.db.add(ScimGroupMember(tenant_id=self.ctx.org_id, group_id=group_id,
                                        user_id=user_id, display=display))
        await self.db.flush()

    async def group_names_of(self, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
        """Display names of the groups of each user (users in no group are absent)."""
        if not user_ids:
            return {}
        stmt = (select(ScimGroupMember.user_id, ScimGroup.display_name)
                .join(ScimGroup, (ScimGroup.tenant_id == ScimGroupMember.tenant_id)
                      & (ScimGroup.id == ScimGroupMember.group_id))
                .where(ScimGroupMember.tenant_id == self.ctx.org_id,
                       ScimGroupMember.user_id.in_(list(user_ids))))
        found: dict[uuid.UUID, list[str]] = {}
        for user_id, name in (await self.db.execute(stmt)).all():
            found.setdefault(user_id, []).append(name)
        return found

    async def delete(self, group: ScimGroup) -> None:
        await self.db.delete(group)
