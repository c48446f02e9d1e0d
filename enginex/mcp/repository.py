"""Queries of the MCP feature: the platform catalog (global) and organizations' servers
(scoped: every query filters on the tenant in SQL and needs a session bound to it).

One platform-wide read: how many servers, across all organizations, use a catalog entry
(a count only). On PostgreSQL it goes through ``enginex_mcp_catalog_usage`` (SECURITY
DEFINER, migration 0007), since row-level security hides other tenants' rows from the app
role; on SQLite it is a plain count.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.mcp.models import McpCatalogEntry, McpServer
from enginex.tenancy.repository import ScopedRepository

# --- platform catalog (global) ------------------------------------------------------------------


async def list_catalog(db: AsyncSession) -> list[McpCatalogEntry]:
    stmt = select(McpCatalogEntry).order_by(McpCatalogEntry.name)
    return list((await db.execute(stmt)).scalars())


async def get_catalog_entry(db: AsyncSession, entry_id: uuid.UUID) -> McpCatalogEntry | None:
    stmt = select(McpCatalogEntry).where(McpCatalogEntry.id == entry_id)
    return (await db.execute(stmt)).scalar_one_or_none()


async def get_catalog_entry_by_name(db: AsyncSession, name: str) -> McpCatalogEntry | None:
    stmt = select(McpCatalogEntry).where(McpCatalogEntry.name == name)
    return (await db.execute(stmt)).scalar_one_or_none()


async def get_catalog_entries(db: AsyncSession,
                              ids: list[uuid.UUID]) -> dict[uuid.UUID, McpCatalogEntry]:
    if not ids:
        return {}
    stmt = select(McpCatalogEntry).where(McpCatalogEntry.id.in_(ids))
    return {e.id: e for e in (await db.execute(stmt)).scalars()}


def add_catalog_entry(db: AsyncSession, entry: McpCatalogEntry) -> None:
    db.add(entry)


async def delete_catalog_entry(db: AsyncSession, entry: McpCatalogEntry) -> None:
    await db.delete(entry)


async def count_servers_using(db: AsyncSession, entry_id: uuid.UUID) -> int:
    """How many servers of all organizations use a catalog entry (a count, nothing else)."""
    if db.get_bind().dialect.name == "postgresql":
        sql = text("SELECT enginex_mcp_catalog_usage(:entry)")
        params: dict[str, object] = {"entry": entry_id}
    else:
        sql = text("SELECT count(*) FROM mcp_servers WHERE catalog_id = :entry")
        params = {"entry": entry_id.hex}
    return int((await db.execute(sql, params)).scalar_one())


# --- organization servers (tenant-owned) --------------------------------------------------------


class McpServerRepository(ScopedRepository[McpServer]):
    model = McpServer

    async def list(self) -> list[McpServer]:
        stmt = (select(McpServer).where(McpServer.tenant_id == self.ctx.org_id)
                .order_by(McpServer.name))
        return list((await self.db.execute(stmt)).scalars())

    async def get_by_name(self, name: str) -> McpServer | None:
        stmt = select(McpServer).where(McpServer.tenant_id == self.ctx.org_id,
                                       McpServer.name == name)
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def list_named(self, names: list[str]) -> list[McpServer]:
        if not names:
            return []
        stmt = select(McpServer).where(McpServer.tenant_id == self.ctx.org_id,
                                       McpServer.name.in_(names))
        return list((await self.db.execute(stmt)).scalars())

    async def delete(self, server: McpServer) -> None:
        await self.db.delete(server)
