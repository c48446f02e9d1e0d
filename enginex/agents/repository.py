"""Queries on one organization's agent catalog. Every statement filters on the tenant in SQL."""

from __future__ import annotations

import uuid
from collections.abc import Collection

from sqlalchemy import select

from enginex.agents.models import Agent, AgentVersion
from enginex.kit.pagination import Cursor, older_than
from enginex.tenancy.repository import ScopedRepository


class AgentRepository(ScopedRepository[Agent]):
    model = Agent

    async def get_by_key(self, key: str) -> Agent | None:
        """The agent with ``key`` in this organization; None for missing and foreign ones."""
        stmt = select(Agent).where(Agent.tenant_id == self.ctx.org_id, Agent.key == key)
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def list(self) -> list[Agent]:
        stmt = select(Agent).where(Agent.tenant_id == self.ctx.org_id).order_by(Agent.key)
        return list((await self.db.execute(stmt)).scalars())

    async def page(self, limit: int, before: Cursor | None) -> list[Agent]:
        """Newest agent first by (created_at, id), after the cursor ``before``."""
        stmt = select(Agent).where(Agent.tenant_id == self.ctx.org_id)
        if before is not None:
            stmt = stmt.where(older_than(Agent.created_at, Agent.id, before))
        stmt = stmt.order_by(Agent.created_at.desc(), Agent.id.desc()).limit(limit)
        return list((await self.db.execute(stmt)).scalars())


class AgentVersionRepository(ScopedRepository[AgentVersion]):
    model = AgentVersion

    async def get_version(self, agent_id: uuid.UUID, version: str) -> AgentVersion | None:
        stmt = select(AgentVersion).where(AgentVersion.tenant_id == self.ctx.org_id,
                                          AgentVersion.agent_id == agent_id,
                                          AgentVersion.version == version)
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def list_for(self, agent_id: uuid.UUID) -> list[AgentVersion]:
        """Versions of one agent, oldest deploy first."""
        stmt = (select(AgentVersion)
                .where(AgentVersion.tenant_id == self.ctx.org_id,
                       AgentVersion.agent_id == agent_id)
                .order_by(AgentVersion.deployed_at, AgentVersion.version))
        return list((await self.db.execute(stmt)).scalars())

    async def list_summaries(self, agent_ids: Collection[uuid.UUID] | None = None
                             ) -> list[tuple[uuid.UUID, uuid.UUID, str, bool]]:
        """(agent_id, version_id, version, deprecated) of every version (of ``agent_ids``
        only, when given), without manifests."""
        stmt = select(AgentVersion.agent_id, AgentVersion.id, AgentVersion.version,
                      AgentVersion.deprecated_at).where(
            AgentVersion.tenant_id == self.ctx.org_id)
        if agent_ids is not None:
            stmt = stmt.where(AgentVersion.agent_id.in_(agent_ids))
        return [(a, v, s, d is not None) for a, v, s, d in (await self.db.execute(stmt)).all()]
