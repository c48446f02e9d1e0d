"""Queries of the organization's LLM providers and model aliases.

Every query filters on the tenant in SQL and needs a session bound to that tenant (the ORM
guard in db.py raises otherwise; row-level security holds on PostgreSQL too). Another
organization's provider id or alias name reads as missing.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select

from enginex.llm.models import LLMProviderConfig, LLMSettings, ModelAlias
from enginex.tenancy.repository import ScopedRepository


class ProviderRepository(ScopedRepository[LLMProviderConfig]):
    model = LLMProviderConfig

    async def list(self) -> list[LLMProviderConfig]:
        stmt = (select(LLMProviderConfig)
                .where(LLMProviderConfig.tenant_id == self.ctx.org_id)
                .order_by(LLMProviderConfig.name))
        return list((await self.db.execute(stmt)).scalars())

    async def get_by_name(self, name: str) -> LLMProviderConfig | None:
        stmt = select(LLMProviderConfig).where(LLMProviderConfig.tenant_id == self.ctx.org_id,
                                               LLMProviderConfig.name == name)
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def names(self) -> list[str]:
        stmt = (select(LLMProviderConfig.name)
                .where(LLMProviderConfig.tenant_id == self.ctx.org_id)
                .order_by(LLMProviderConfig.name))
        return list((await self.db.execute(stmt)).scalars())

    async def delete(self, provider: LLMProviderConfig) -> None:
        await self.db.delete(provider)


class AliasRepository(ScopedRepository[ModelAlias]):
    """Model aliases; keyed by (tenant, name), so ``get``/``access`` by id do not apply."""

    model = ModelAlias

    async def list(self) -> list[ModelAlias]:
        stmt = (select(ModelAlias).where(ModelAlias.tenant_id == self.ctx.org_id)
                .order_by(ModelAlias.name))
        return list((await self.db.execute(stmt)).scalars())

    async def get_by_name(self, name: str) -> ModelAlias | None:
        stmt = select(ModelAlias).where(ModelAlias.tenant_id == self.ctx.org_id,
                                        ModelAlias.name == name)
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def using(self, provider_id: uuid.UUID) -> list[ModelAlias]:
        stmt = (select(ModelAlias).where(ModelAlias.tenant_id == self.ctx.org_id,
                                         ModelAlias.provider_id == provider_id)
                .order_by(ModelAlias.name))
        return list((await self.db.execute(stmt)).scalars())

    async def delete(self, alias: ModelAlias) -> None:
        await self.db.delete(alias)


class LLMSettingsRepository(ScopedRepository[LLMSettings]):
    """The organization's one settings row (keyed by tenant_id alone)."""

    model = LLMSettings

    async def get_settings(self) -> LLMSettings | None:
        stmt = select(LLMSettings).where(LLMSettings.tenant_id == self.ctx.org_id)
        return (await self.db.execute(stmt)).scalar_one_or_none()
