"""Reports (artifacts) of an organization's runs: list, read, download.

Other organizations' artifact ids raise NotFound. Bytes are read only through the storage
path built from this organization's id.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from enginex.kit.pagination import Page, decode_cursor, page_of
from enginex.reports.models import Artifact
from enginex.reports.repository import ArtifactRepository
from enginex.reports.storage import ArtifactStorage
from enginex.tenancy.context import TenantContext


async def list_reports(db: AsyncSession, ctx: TenantContext, *, run_id: uuid.UUID | None,
                       limit: int = 100, cursor: str | None = None) -> Page[Artifact]:
    """A page of reports, newest first; ``next_cursor`` continues (ValidationFailed for a
    cursor that no page gave)."""
    before = decode_cursor(cursor) if cursor else None
    rows = await ArtifactRepository(db, ctx).list(run_id, limit + 1, before)
    return page_of(rows, limit, lambda a: (a.created_at, a.id))


async def access_report(db: AsyncSession, ctx: TenantContext, artifact_id: uuid.UUID) -> Artifact:
    return await ArtifactRepository(db, ctx).access(artifact_id)


def read_report(storage: ArtifactStorage, ctx: TenantContext, artifact: Artifact) -> bytes:
    assert artifact.tenant_id == ctx.org_id
    return storage.read(ctx.org_id, artifact.id)
