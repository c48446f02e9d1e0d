"""Queries on identity tables. Users and browser sessions are global; API keys are scoped."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.auth.models import ApiKey, AuthSession, LoginFailure, User
from enginex.kit.errors import NotFound
from enginex.tenancy.repository import ScopedRepository


async def get_user_by_email(db: AsyncSession, email: str) -> User | None:
    stmt = select(User).where(func.lower(User.email) == email.strip().lower())
    return (await db.execute(stmt)).scalar_one_or_none()


async def get_user(db: AsyncSession, user_id: uuid.UUID) -> User | None:
    return await db.get(User, user_id)


async def get_session_with_user(db: AsyncSession,
                                digest: bytes) -> tuple[AuthSession, User] | None:
    stmt = (select(AuthSession, User).join(User, User.id == AuthSession.user_id)
            .where(AuthSession.token_digest == digest))
    row = (await db.execute(stmt)).first()
    return (row[0], row[1]) if row else None


async def delete_session(db: AsyncSession, session_id: uuid.UUID) -> None:
    await db.execute(delete(AuthSession).where(AuthSession.id == session_id))


async def delete_user_sessions(db: AsyncSession, user_id: uuid.UUID) -> None:
    await db.execute(delete(AuthSession).where(AuthSession.user_id == user_id))


async def touch_session(db: AsyncSession, session_id: uuid.UUID, now: datetime) -> None:
    await db.execute(update(AuthSession).where(AuthSession.id == session_id)
                     .values(last_seen_at=now))


async def count_failures(db: AsyncSession, key: str,
                         since: datetime) -> tuple[int, datetime | None]:
    stmt = select(func.count(), func.min(LoginFailure.at)).where(
        LoginFailure.key == key, LoginFailure.at >= since)
    count, oldest = (await db.execute(stmt)).one()
    if oldest is not None and oldest.tzinfo is None:
        from datetime import UTC
        oldest = oldest.replace(tzinfo=UTC)
    return int(count), oldest


async def clear_failures(db: AsyncSession, key: str) -> None:
    await db.execute(delete(LoginFailure).where(LoginFailure.key == key))


async def prune_failures(db: AsyncSession, before: datetime) -> None:
    await db.execute(delete(LoginFailure).where(LoginFailure.at < before))


class ApiKeyRepository(ScopedRepository[ApiKey]):
    model = ApiKey

    async def get_by_digest(self, digest: bytes) -> ApiKey | None:
        stmt = select(ApiKey).where(ApiKey.tenant_id == self.ctx.org_id,
                                    ApiKey.token_digest == digest)
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def list(self) -> list[ApiKey]:
        stmt = (select(ApiKey).where(ApiKey.tenant_id == self.ctx.org_id)
                .order_by(ApiKey.created_at.desc()))
        return list((await self.db.execute(stmt)).scalars())

    async def access_for_update(self, key_id: uuid.UUID) -> ApiKey:
        """The key, row-locked until the transaction ends (PostgreSQL; SQLite's transactions
        already hold the write lock), freshly read. NotFound for a missing or foreign id."""
        stmt = (select(ApiKey).where(ApiKey.tenant_id == self.ctx.org_id, ApiKey.id == key_id)
                .with_for_update().execution_options(populate_existing=True))
        found = (await self.db.execute(stmt)).scalar_one_or_none()
        if found is None:
            raise NotFound()
        return found

    async def children_for_update(self, parent_ids: Sequence[uuid.UUID]) -> list[ApiKey]:
        """Keys created by any of ``parent_ids``, row-locked, freshly read."""
        stmt = (select(ApiKey).where(ApiKey.tenant_id == self.ctx.org_id,
                                     ApiKey.parent_key_id.in_(list(parent_ids)))
                .order_by(ApiKey.created_at).with_for_update()
                .execution_options(populate_existing=True))
        return list((await self.db.execute(stmt)).scalars())


@dataclass(frozen=True)
class KeyForAuth:
    key: ApiKey
    creator_role: str | None  # None when the creator is no longer a member
    creator_disabled: bool
    org_slug: str
    org_status: str


async def get_api_key_for_auth(db: AsyncSession, tenant_id: uuid.UUID, digest: bytes
                               ) -> KeyForAuth | None:
    """Kernel-only, one statement: the key, its creator's current role and state, and its
    organization. The session must already be bound to ``tenant_id``."""
    from enginex.orgs.models import Membership, Organization

    stmt = (select(ApiKey, Membership.role, User.disabled, Organization.slug,
                   Organization.status)
            .join(Organization, Organization.id == ApiKey.tenant_id)
            .outerjoin(Membership, (Membership.tenant_id == ApiKey.tenant_id)
                       & (Membership.user_id == ApiKey.created_by))
            .outerjoin(User, User.id == ApiKey.created_by)
            .where(ApiKey.tenant_id == tenant_id, ApiKey.token_digest == digest))
    row = (await db.execute(stmt)).first()
    if row is None:
        return None
    return KeyForAuth(row[0], row[1], bool(row[2]), row[3], row[4])


async def get_parent_key_state(db: AsyncSession, tenant_id: uuid.UUID, parent_id: uuid.UUID
                               ) -> tuple[datetime | None, datetime | None] | None:
    """Kernel-only: ``(revoked_at, expires_at)`` of key ``parent_id`` (a primary-key read),
    None when there is no such key. The session must already be bound to ``tenant_id``."""
    stmt = select(ApiKey.revoked_at, ApiKey.expires_at).where(ApiKey.tenant_id == tenant_id,
                                                              ApiKey.id == parent_id)
    row = (await db.execute(stmt)).first()
    return (row[0], row[1]) if row else None
