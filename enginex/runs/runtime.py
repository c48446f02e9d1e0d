"""Builds the engine's dependencies and the embedded worker from the settings."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from enginex.agents.manifest import AgentManifest, LLMNode
from enginex.config import Settings
from enginex.credentials.runtime import CredentialRuntime, StepSecrets
from enginex.db import Database
from enginex.llm.base import LLMProvider
from enginex.llm.service import LLMKeyBox, provider_for
from enginex.reports.storage import ArtifactStorage
from enginex.runs.engine import EngineDeps
from enginex.runs.worker import Worker
from enginex.tenancy.context import TenantContext
from enginex.tools.registry import builtin_registry


def build_engine(settings: Settings, db: Database, master_key: bytes) -> EngineDeps:
    key_box = LLMKeyBox(master_key)

    async def providers(session: AsyncSession, ctx: TenantContext, manifest: AgentManifest,
                        node: LLMNode, secrets: StepSecrets | None) -> LLMProvider:
        if secrets is not None:
            await secrets.note_llm_key_use()
        return await provider_for(session, ctx, manifest, key_box=key_box,
                                  allow_private_network=settings.allow_private_network)

    return EngineDeps(sessions=db.sessions, storage=ArtifactStorage(settings.resolved_storage_dir),
                      tools=builtin_registry(), provider_for=providers,
                      allow_private_network=settings.allow_private_network,
                      lease_seconds=settings.lease_seconds,
                      credentials=CredentialRuntime.for_master(
                          db.sessions, master_key,
                          allow_private_network=settings.allow_private_network))


def build_worker(settings: Settings, db: Database, deps: EngineDeps) -> Worker:
    return Worker(db, deps, slots=settings.worker_slots, tenant_limit=settings.tenant_concurrency,
                  database_url=settings.resolved_database_url)
