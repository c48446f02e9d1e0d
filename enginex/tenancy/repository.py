"""The scoped repository base: every lookup by id filters on the tenant in SQL."""

from __future__ import annotations

import uuid
from typing import Any, Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.db import TenantContextMissing, TenantOwned, session_tenant
from enginex.kit.errors import NotFound
from enginex.tenancy.context import TenantContext

M = TypeVar("M", bound=TenantOwned)


class ScopedRepository(Generic[M]):
    """Reads and writes of one tenant-owned model for one tenant.

    The database session must already be bound to ``ctx.org_id`` (the tenant guard does it for
    requests; jobs call ``db.set_tenant``). ``get`` returns None and ``access`` raises NotFound
    for both missing rows and other tenants' rows: callers cannot tell them apart.
    """

    model: type[M]

    def __init__(self, db: AsyncSession, ctx: TenantContext) -> None:
        if session_tenant(db) != ctx.org_id:
            raise TenantContextMissing("database session is not bound to this tenant")
        self.db = db
        self.ctx = ctx

    async def get(self, object_id: uuid.UUID) -> M | None:
        model: Any = self.model
        stmt = select(model).where(model.tenant_id == self.ctx.org_id, model.id == object_id)
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def access(self, object_id: uuid.UUID) -> M:
        found = await self.get(object_id)
        if found is None:
            raise NotFound()
        return found

    def add(self, obj: M) -> M:
        obj.tenant_id = self.ctx.org_id
        self.db.add(obj)
        return obj
