"""Scoped queries on an organization's report artifacts."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from enginex.reports.models import Artifact
from enginex.tenancy.repository import ScopedRepository


class ArtifactRepository(ScopedRepository[Artifact]):
    model = Artifact

    async def list(self, run_id: uuid.UUID | None, limit: int) -> list[Artifact]:
        stmt = select(Artifact).where(Artifact.tenant_id == self.ctx.org_id)
        if run_id:
            stmt = stmt.where(Artifact.run_id == run_id)
        stmt = stmt.order_by(Artifact.created_at.desc()).limit(limit)
        return list((await self.db.execute(stmt)).scalars())
