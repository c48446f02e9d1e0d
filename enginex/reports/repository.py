"""Scoped queries on an organization's report artifacts."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import select

from enginex.kit.pagination import Cursor, older_than
from enginex.reports.models import Artifact
from enginex.tenancy.repository import ScopedRepository

_IN_BATCH = 500  # ids per IN (...) list: far below SQLite's and PostgreSQL's parameter limits


class ArtifactRepository(ScopedRepository[Artifact]):
    model = Artifact

    async def list(self, run_id: uuid.UUID | None, limit: int,
                   before: Cursor | None = None) -> list[Artifact]:
        """Newest first; ``before``: the (created_at, id) of the last row already seen."""
        stmt = select(Artifact).where(Artifact.tenant_id == self.ctx.org_id)
        if run_id:
            stmt = stmt.where(Artifact.run_id == run_id)
        if before:
            stmt = stmt.where(older_than(Artifact.created_at, Artifact.id, before))
        stmt = stmt.order_by(Artifact.created_at.desc(), Artifact.id.desc()).limit(limit)
        return list((await self.db.execute(stmt)).scalars())

    async def existing_ids(self, ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Which of ``ids`` are artifacts of this organization. Another organization's
        artifact ids are absent from the answer, exactly like ids that exist nowhere."""
        wanted = list(dict.fromkeys(ids))
        found: set[uuid.UUID] = set()
        for start in range(0, len(wanted), _IN_BATCH):
            stmt = select(Artifact.id).where(Artifact.tenant_id == self.ctx.org_id,
                                             Artifact.id.in_(wanted[start:start + _IN_BATCH]))
            found.update((await self.db.execute(stmt)).scalars())
        return found
