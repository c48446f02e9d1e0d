"""Queries of the platform admin over the global tenant registry (``organizations``)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.orgs.models import Organization


async def list_tenants_page(db: AsyncSession, *, after: str | None,
                            limit: int) -> list[Organization]:
    """Up to ``limit`` tenants in slug order, starting after the slug ``after``."""
    stmt = select(Organization).order_by(Organization.slug).limit(limit)
    if after:
        stmt = stmt.where(Organization.slug > after)
    return list((await db.execute(stmt)).scalars())
