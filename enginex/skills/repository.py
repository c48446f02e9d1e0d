"""Queries of the skills table. Every query filters on the tenant in SQL and needs a session
bound to that tenant (the ORM guard in db.py raises otherwise); RLS holds on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select

from enginex.skills.models import Skill
from enginex.tenancy.repository import ScopedRepository


class SkillRepository(ScopedRepository[Skill]):
    model = Skill

    async def list(self) -> list[Skill]:
        stmt = select(Skill).where(Skill.tenant_id == self.ctx.org_id).order_by(Skill.name)
        return list((await self.db.execute(stmt)).scalars())

    async def get_by_name(self, name: str) -> Skill | None:
        stmt = select(Skill).where(Skill.tenant_id == self.ctx.org_id, Skill.name == name)
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def by_names(self, names: Sequence[str]) -> dict[str, Skill]:
        """The skills of these names (absent names are simply missing from the result)."""
        if not names:
            return {}
        stmt = select(Skill).where(Skill.tenant_id == self.ctx.org_id,
                                   Skill.name.in_(list(names)))
        return {s.name: s for s in (await self.db.execute(stmt)).scalars()}

    async def get_for_update(self, skill_id: uuid.UUID) -> Skill | None:
        """Re-read from the database and row-lock until commit (PostgreSQL)."""
        stmt = (select(Skill).where(Skill.tenant_id == self.ctx.org_id, Skill.id == skill_id)
                .with_for_update().execution_options(populate_existing=True))
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def delete(self, skill: Skill) -> None:
        await self.db.delete(skill)
