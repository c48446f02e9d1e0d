"""Queries on identity tables. Users and browser sessions are global; API keys are scoped."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.auth.models import ApiKey, AuthSession, LoginFailure, PasswordReset, User
from enginex.db import UTCDateTime
from enginex.kit.errors import NotFound
from enginex.kit.pagination import Cursor, older_than
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


async def get_reset_with_user(db: AsyncSession,
                              digest: bytes) -> tuple[PasswordReset, User] | None:
    stmt = (select(PasswordReset, User).join(User, User.id == PasswordReset.user_id)
            .where(PasswordReset.token_digest == digest))
    row = (await db.execute(stmt)).first()
    return (row[0], row[1]) if row else None


async def use_reset(db: AsyncSession, reset_id: uuid.UUID, now: datetime) -> bool:
    """Mark the reset used if it still is unused and unexpired; False when another request
    used it first (or it expired meanwhile): one conditional UPDATE decides."""
    result = await db.execute(update(PasswordReset)
                              .where(PasswordReset.id == reset_id,
                                     PasswordReset.used_at.is_(None),
                                     PasswordReset.expires_at > now)
                              .values(used_at=now))
    return bool(getattr(result, "rowcount", 0))


async def end_user_resets(db: AsyncSession, user_id: uuid.UUID, now: datetime) -> None:
    """Every unused reset link of the user stops working (its password just changed)."""
    await db.execute(update(PasswordReset)
                     .where(PasswordReset.user_id == user_id, PasswordReset.used_at.is_(None))
                     .values(used_at=now))


async def prune_resets(db: AsyncSession, before: datetime) -> None:
    await db.execute(delete(PasswordReset).where(PasswordReset.expires_at < before))


async def set_user_disabled(db: AsyncSession, user_id: uuid.UUID, disabled: bool) -> None:
    await db.execute(update(User).where(User.id == user_id).values(disabled=disabled))


async def list_users_page(db: AsyncSession, *, search: str, after: str | None,
                          limit: int) -> list[User]:
    """Users in email order (case-insensitive), those whose email contains ``search``,
    starting after the email ``after``."""
    stmt = select(User).order_by(func.lower(User.email)).limit(limit)
    if search:
        escaped = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(func.lower(User.email).like(f"%{escaped}%", escape="\\"))
    if after:
        stmt = stmt.where(func.lower(User.email) > after.lower())
    return list((await db.execute(stmt)).scalars())


async def touch_session(db: AsyncSession, session_id: uuid.UUID, now: datetime) -> None:
    await db.execute(update(AuthSession).where(AuthSession.id == session_id)
                     .values(last_seen_at=now))


async def add_failures(db: AsyncSession, keys: Sequence[str], at: datetime) -> list[uuid.UUID]:
    """One ``login_failures`` row per key, all at ``at``; returns their ids (flushed)."""
    rows = [LoginFailure(key=key, at=at) for key in keys]
    db.add_all(rows)
    await db.flush()
    return [row.id for row in rows]


@dataclass(frozen=True)
class FailureCount:
    count: int
    oldest: datetime | None


async def count_failures(db: AsyncSession, keys: Sequence[str],
                         since: datetime) -> dict[str, FailureCount]:
    """Rows per key since ``since`` (one statement); keys without rows count 0."""
    stmt = (select(LoginFailure.key, func.count(), func.min(LoginFailure.at))
            .where(LoginFailure.key.in_(list(keys)), LoginFailure.at >= since)
            .group_by(LoginFailure.key))
    found = {key: FailureCount(int(count), _aware(oldest))
             for key, count, oldest in (await db.execute(stmt)).all()}
    return {key: found.get(key, FailureCount(0, None)) for key in keys}


def _aware(value: datetime | None) -> datetime | None:
    # An aggregate loses the column type: SQLite gives back a naive UTC datetime.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


async def delete_failures(db: AsyncSession, ids: Sequence[uuid.UUID]) -> None:
    await db.execute(delete(LoginFailure).where(LoginFailure.id.in_(list(ids))))


async def clear_failures(db: AsyncSession, *keys: str) -> None:
    await db.execute(delete(LoginFailure).where(LoginFailure.key.in_(keys)))


async def prune_failures(db: AsyncSession, before: datetime) -> None:
    """Delete rows older than ``before``, skipping rows another transaction is deleting (so
    concurrent sign-ins never wait on, or deadlock over, the same old rows)."""
    old = (select(LoginFailure.id).where(LoginFailure.at < before).limit(1000)
           .with_for_update(skip_locked=True))
    await db.execute(delete(LoginFailure).where(LoginFailure.id.in_(old)))


class ApiKeyRepository(ScopedRepository[ApiKey]):
    model = ApiKey

    async def get_by_digest(self, digest: bytes) -> ApiKey | None:
        stmt = select(ApiKey).where(ApiKey.tenant_id == self.ctx.org_id,
                                    ApiKey.token_digest == digest)
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def list(self, limit: int | None = None,
                   before: Cursor | None = None) -> list[ApiKey]:
        """Newest first; ``before``: the (created_at, id) of the last row already seen."""
        stmt = select(ApiKey).where(ApiKey.tenant_id == self.ctx.org_id)
        if before is not None:
            stmt = stmt.where(older_than(ApiKey.created_at, ApiKey.id, before))
        stmt = stmt.order_by(ApiKey.created_at.desc(), ApiKey.id.desc()).limit(limit)
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
    """What the API-key guard needs, as plain values (no ORM entity is loaded)."""

    key_id: uuid.UUID
    role: str
    created_by: uuid.UUID | None
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    parent_key_id: uuid.UUID | None
    parent_found: bool  # False when parent_key_id names no key (or there is no parent)
    parent_revoked_at: datetime | None
    parent_expires_at: datetime | None
    org_slug: str
    org_status: str
    creator_role: str | None  # None when the creator is no longer a member or is disabled
    creator_disabled: bool


# Constant SQL through ``text()`` like the cookie guard (tenancy/platform.py): no ORM entity
# loading, no statement walk by the ORM tenant guard. The tenant filter is explicit
# (``k.tenant_id = :tenant``, and the joins stay on that tenant) and, on PostgreSQL, row-level
# security applies too: the session is bound to the tenant before this runs.
_KEY_FOR_AUTH = sa.text(
    "SELECT k.id, k.role, k.created_by, k.expires_at, k.last_used_at, k.revoked_at, "
    "k.parent_key_id, p.id IS NOT NULL AS parent_found, p.revoked_at AS parent_revoked_at, "
    "p.expires_at AS parent_expires_at, o.slug, o.status, m.role AS creator_role, "
    "COALESCE(u.disabled, false) AS creator_disabled "
    "FROM api_keys k JOIN organizations o ON o.id = k.tenant_id "
    "LEFT JOIN api_keys p ON p.tenant_id = k.tenant_id AND p.id = k.parent_key_id "
    "LEFT JOIN memberships m ON m.tenant_id = k.tenant_id AND m.user_id = k.created_by "
    "AND m.disabled_at IS NULL "
    "LEFT JOIN users u ON u.id = k.created_by "
    "WHERE k.tenant_id = :tenant AND k.token_digest = :digest"
).bindparams(sa.bindparam("tenant", type_=sa.Uuid()),
             sa.bindparam("digest", type_=sa.LargeBinary())
             ).columns(
    sa.column("id", sa.Uuid()), sa.column("role", sa.String()),
    sa.column("created_by", sa.Uuid()), sa.column("expires_at", UTCDateTime()),
    sa.column("last_used_at", UTCDateTime()), sa.column("revoked_at", UTCDateTime()),
    sa.column("parent_key_id", sa.Uuid()), sa.column("parent_found", sa.Boolean()),
    sa.column("parent_revoked_at", UTCDateTime()), sa.column("parent_expires_at", UTCDateTime()),
    sa.column("slug", sa.String()), sa.column("status", sa.String()),
    sa.column("creator_role", sa.String()), sa.column("creator_disabled", sa.Boolean()))


async def get_api_key_for_auth(db: AsyncSession, tenant_id: uuid.UUID, digest: bytes
                               ) -> KeyForAuth | None:
    """Kernel-only, one statement: the key with ``digest`` in organization ``tenant_id``, its
    parent key's state, its creator's current role and state, and its organization. None
    when that organization has no such key. The session must already be bound to
    ``tenant_id`` (set_tenant), in the same transaction."""
    row = (await db.execute(_KEY_FOR_AUTH, {"tenant": tenant_id, "digest": digest})).first()
    if row is None:
        return None
    return KeyForAuth(*row[:13], bool(row[13]))


async def touch_api_key(db: AsyncSession, tenant_id: uuid.UUID, key_id: uuid.UUID,
                        now: datetime) -> None:
    """Record that key ``key_id`` of ``tenant_id`` was used at ``now`` (tenant-guarded)."""
    await db.execute(update(ApiKey).where(ApiKey.tenant_id == tenant_id, ApiKey.id == key_id)
                     .values(last_used_at=now))




@dataclass(frozen=True)
class ScimTokenForAuth:
    token_id: uuid.UUID
    revoked_at: datetime | None
    last_used_at: datetime | None
    org_slug: str
    org_status: str


# Constant SQL like _KEY_FOR_AUTH: the session is bound to ``tenant`` first (RLS on PostgreSQL).
_SCIM_TOKEN_FOR_AUTH = sa.text(
    "SELECT t.id, t.revoked_at, t.last_used_at, o.slug, o.status "
    "FROM scim_tokens t JOIN organizations o ON o.id = t.tenant_id "
    "WHERE t.tenant_id = :tenant AND t.token_digest = :digest"
).bindparams(sa.bindparam("tenant", type_=sa.Uuid()),
             sa.bindparam("digest", type_=sa.LargeBinary())
             ).columns(
    sa.column("id", sa.Uuid()), sa.column("revoked_at", UTCDateTime()),
    sa.column("last_used_at", UTCDateTime()), sa.column("slug", sa.String()),
    sa.column("status", sa.String()))


async def get_scim_token_for_auth(db: AsyncSession, tenant_id: uuid.UUID, digest: bytes
                                  ) -> ScimTokenForAuth | None:
    """Kernel-only, one statement: the SCIM token with ``digest`` of organization
    ``tenant_id`` and that organization's slug and status. The session must already be bound
    to ``tenant_id``."""
    row = (await db.execute(_SCIM_TOKEN_FOR_AUTH, {"tenant": tenant_id, "digest": digest})
           ).first()
    return ScimTokenForAuth(*row) if row else None


_TOUCH_SCIM_TOKEN = sa.text(
    "UPDATE scim_tokens SET last_used_at = :now WHERE tenant_id = :tenant AND id = :id"
).bindparams(sa.bindparam("tenant", type_=sa.Uuid()), sa.bindparam("id", type_=sa.Uuid()),
             sa.bindparam("now", type_=UTCDateTime()))


async def touch_scim_token(db: AsyncSession, tenant_id: uuid.UUID, token_id: uuid.UUID,
                           now: datetime) -> None:
    await db.execute(_TOUCH_SCIM_TOKEN, {"tenant": tenant_id, "id": token_id, "now": now})
