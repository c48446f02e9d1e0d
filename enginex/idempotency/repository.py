"""Queries of idempotency records (always inside one organization)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select

from enginex.idempotency.models import IdempotencyRecord
from enginex.tenancy.repository import ScopedRepository


class IdempotencyRepository(ScopedRepository[IdempotencyRecord]):
    model = IdempotencyRecord

    async def get_by_key(self, key: str) -> IdempotencyRecord | None:
        stmt = select(IdempotencyRecord).where(IdempotencyRecord.tenant_id == self.ctx.org_id,
                                               IdempotencyRecord.key == key)
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def delete_expired(self, now: datetime) -> None:
        """Remove this organization's records that expired before ``now`` (a few per call:
        records expire as steadily as they are written)."""
        await self.db.execute(delete(IdempotencyRecord).where(
            IdempotencyRecord.tenant_id == self.ctx.org_id,
            IdempotencyRecord.expires_at < now))
