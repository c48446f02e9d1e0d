"""Builds the engine's dependencies and the embedded worker from the settings."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

from enginex.agents.manifest import AgentManifest, LLMNode
from enginex.config import Settings
from enginex.credentials.runtime import CredentialRuntime, StepSecrets
from enginex.db import Database
from enginex.llm.base import LLMProvider
from enginex.llm.providers import ScriptedProvider
from enginex.llm.service import LLMKeyBox, provider_for, uses_quick_setup
from enginex.mail.sender import MailSender
from enginex.mail.smtp import SmtpConfig
from enginex.mcp.runtime import mcp_tools_factory
from enginex.reports.storage import ArtifactStorage
from enginex.runs.engine import EngineDeps
from enginex.runs.worker import Worker
from enginex.skills.service import skills_for
from enginex.tenancy.context import TenantContext
from enginex.tools.registry import builtin_registry


def build_engine(settings: Settings, db: Database, master_key: bytes) -> EngineDeps:
    key_box = LLMKeyBox(master_key)

    async def providers(session: AsyncSession, ctx: TenantContext, manifest: AgentManifest,
                        node: LLMNode, secrets: StepSecrets | None) -> LLMProvider:
        provider = await provider_for(session, ctx, manifest, node, secrets, key_box=key_box,
                                      allow_private_network=settings.allow_private_network)
        # The scripted provider has no key: nothing to audit or redact.
        if secrets is not None and uses_quick_setup(provider) and \
                not isinstance(provider, ScriptedProvider):
            # The quick setup's key: audited and redacted here (a provider's credential went
            # through ``secrets`` already). ``secrets`` reads it in ``session``, the engine's
            # prepare session lent to it; the audit entry is written after that closes.
            await secrets.note_llm_key_use()
        return provider

    return EngineDeps(sessions=db.sessions, storage=ArtifactStorage(settings.resolved_storage_dir),
                      tools=builtin_registry(), provider_for=providers, skills_for=skills_for,
                      tools_for=mcp_tools_factory(settings),
                      allow_private_network=settings.allow_private_network,
                      lease_seconds=settings.lease_seconds,
                      credentials=CredentialRuntime.for_master(
                          db.sessions, master_key,
                          allow_private_network=settings.allow_private_network))


def build_worker(settings: Settings, db: Database, deps: EngineDeps) -> Worker:
    smtp = SmtpConfig.from_url(settings.smtp_url) if settings.smtp_url else None
    return Worker(db, deps, slots=settings.worker_slots, tenant_limit=settings.tenant_concurrency,
                  heartbeat_seconds=settings.worker_heartbeat_seconds,
                  database_url=settings.resolved_database_url,
                  mail=lambda sessions: MailSender(sessions, smtp, mail_from=settings.mail_from),
                  background=[lifecycle_loop(settings, deps.storage),
                              retention_loop(settings, deps.storage)])


def lifecycle_loop(settings: Settings, storage: ArtifactStorage
                   ) -> Callable[[Worker], Awaitable[None]]:
    """The life-cycle job loop (exports) as a worker background task."""
    from enginex.credentials.vault import Keyring
    from enginex.kit.crypto import load_master_key
    from enginex.lifecycle.jobs import LifecycleJobs

    keyring = Keyring.for_master(load_master_key(settings))

    async def start(worker: Worker) -> None:
        await LifecycleJobs(worker.sessions, storage, name=worker.name,
                            lease_seconds=settings.export_lease_seconds,
                            poll_seconds=settings.lifecycle_poll_seconds,
                            retention_days=settings.export_retention_days,
                            rows_per_second=settings.export_rows_per_second,
                            keyring=keyring,
                            deletion_batch_rows=settings.deletion_batch_rows,
                            deletion_rows_per_second=settings.deletion_rows_per_second
                            ).run(worker.stopping)

    return start


def retention_loop(settings: Settings, storage: ArtifactStorage
                   ) -> Callable[[Worker], Awaitable[None]]:
    """The retention sweep (enginex/lifecycle/retention.py) as a worker background task."""
    from enginex.audit.anchor import anchor_key
    from enginex.kit.crypto import load_master_key
    from enginex.lifecycle.retention import RetentionSweeper

    async def start(worker: Worker) -> None:
        await RetentionSweeper(worker.sessions, storage,
                               anchor_key=anchor_key(load_master_key(settings)),
                               batch_rows=settings.retention_batch_rows,
                               period=settings.retention_sweep_seconds,
                               audit_min_days=settings.audit_retention_min_days
                               ).run(worker.stopping)

    return start
