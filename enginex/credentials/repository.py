"""Queries of the vault: master-key registry (global), data keys and credentials (scoped).

Every query on ``tenant_keys`` and ``credentials`` filters on the tenant in SQL and needs a
session bound to that tenant (the ORM guard in db.py raises otherwise); row-level security
holds on PostgreSQL as well. ``FOR SHARE`` / ``FOR UPDATE`` are PostgreSQL row locks; SQLite
serializes writers (every transaction begins IMMEDIATE), so they are no-ops there.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.credentials.models import Credential, TenantKey, VaultMasterKey
from enginex.tenancy.repository import ScopedRepository


def _insert(db: AsyncSession, model: type) -> postgresql.Insert | sqlite.Insert:
    dialect = postgresql if db.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(model)


# --- master-key registry (global) ---------------------------------------------------------------


async def list_master_keys(db: AsyncSession) -> list[VaultMasterKey]:
    stmt = select(VaultMasterKey).order_by(VaultMasterKey.created_at)
    return list((await db.execute(stmt.execution_options(populate_existing=True))).scalars())


async def get_master_key(db: AsyncSession, kek_id: str, *,
                         lock: str | None = None) -> VaultMasterKey | None:
    """``lock``: None, ``"share"`` (FOR SHARE) or ``"update"`` (FOR UPDATE)."""
    stmt = select(VaultMasterKey).where(VaultMasterKey.kek_id == kek_id) \
        .execution_options(populate_existing=True)
    if lock is not None:
        stmt = stmt.with_for_update(read=lock == "share")
    return (await db.execute(stmt)).scalar_one_or_none()


async def add_master_key(db: AsyncSession, kek_id: str, status: str) -> None:
    """Register a master key fingerprint unless it is registered already."""
    from enginex.kit.time import utcnow

    stmt = _insert(db, VaultMasterKey).values(kek_id=kek_id, status=status, created_at=utcnow())
    await db.execute(stmt.on_conflict_do_nothing(index_elements=["kek_id"]))


async def set_master_key_status(db: AsyncSession, kek_id: str, status: str) -> None:
    row = await get_master_key(db, kek_id, lock="update")
    if row is not None:
        row.status = status
        await db.flush()


async def delete_master_key(db: AsyncSession, kek_id: str) -> None:
    await db.execute(delete(VaultMasterKey).where(VaultMasterKey.kek_id == kek_id))


# --- data keys (tenant-owned) -------------------------------------------------------------------


async def latest_tenant_key(db: AsyncSession, tenant_id: uuid.UUID, *,
                            share_lock: bool = False) -> TenantKey | None:
    """The primary data key (highest version); with ``share_lock`` it stays locked against
    deletion and re-wrapping until commit (PostgreSQL)."""
    stmt = (select(TenantKey).where(TenantKey.tenant_id == tenant_id)
            .order_by(TenantKey.version.desc()).limit(1)
            .execution_options(populate_existing=True))
    if share_lock:
        stmt = stmt.with_for_update(read=True)
    return (await db.execute(stmt)).scalar_one_or_none()


async def get_tenant_key(db: AsyncSession, tenant_id: uuid.UUID, version: int) -> TenantKey | None:
    stmt = select(TenantKey).where(TenantKey.tenant_id == tenant_id,
                                   TenantKey.version == version) \
        .execution_options(populate_existing=True)
    return (await db.execute(stmt)).scalar_one_or_none()


async def list_tenant_keys(db: AsyncSession, tenant_id: uuid.UUID, *,
                           for_update: bool = False) -> list[TenantKey]:
    stmt = (select(TenantKey).where(TenantKey.tenant_id == tenant_id)
            .order_by(TenantKey.version).execution_options(populate_existing=True))
    if for_update:
        stmt = stmt.with_for_update()
    return list((await db.execute(stmt)).scalars())


async def add_tenant_key_if_absent(db: AsyncSession, tenant_id: uuid.UUID, version: int,
                                   kek_id: str, wrapped_key: bytes) -> None:
    """Insert data key ``version`` unless a concurrent transaction inserted it first."""
    from enginex.kit.time import utcnow

    stmt = _insert(db, TenantKey).values(tenant_id=tenant_id, version=version, kek_id=kek_id,
                                         wrapped_key=wrapped_key, created_at=utcnow())
    await db.execute(stmt.on_conflict_do_nothing(index_elements=["tenant_id", "version"]))


async def delete_tenant_keys(db: AsyncSession, tenant_id: uuid.UUID,
                             versions: Sequence[int] | None = None) -> int:
    """Destroy data keys (all of the tenant's when ``versions`` is None); returns how many."""
    keys = await list_tenant_keys(db, tenant_id, for_update=True)
    doomed = [k for k in keys if versions is None or k.version in versions]
    for key in doomed:
        await db.delete(key)
    await db.flush()
    return len(doomed)


# --- credentials (tenant-owned) -----------------------------------------------------------------


class CredentialRepository(ScopedRepository[Credential]):
    model = Credential

    async def list(self) -> list[Credential]:
        stmt = (select(Credential).where(Credential.tenant_id == self.ctx.org_id)
                .order_by(Credential.name))
        return list((await self.db.execute(stmt)).scalars())

    async def get_by_name(self, name: str) -> Credential | None:
        stmt = select(Credential).where(Credential.tenant_id == self.ctx.org_id,
                                        Credential.name == name)
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def get_for_update(self, credential_id: uuid.UUID) -> Credential | None:
        """Re-read from the database and row-lock until commit (PostgreSQL)."""
        stmt = (select(Credential).where(Credential.tenant_id == self.ctx.org_id,
                                         Credential.id == credential_id)
                .with_for_update().execution_options(populate_existing=True))
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def list_not_on_key(self, version: int, *, limit: int) -> list[Credential]:
        """Credentials sealed under another data-key version than ``version``, locked."""
        stmt = (select(Credential).where(Credential.tenant_id == self.ctx.org_id,
                                         Credential.key_version != version)
                .order_by(Credential.id).limit(limit).with_for_update()
                .execution_options(populate_existing=True))
        return list((await self.db.execute(stmt)).scalars())

    async def count_on_keys(self, versions: Sequence[int]) -> int:
        stmt = select(func.count()).select_from(Credential).where(
            Credential.tenant_id == self.ctx.org_id, Credential.key_version.in_(list(versions)))
        return int((await self.db.execute(stmt)).scalar_one())

    async def delete(self, credential: Credential) -> None:
        await self.db.delete(credential)
