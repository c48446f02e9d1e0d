"""Key rotation and crypto-shredding: maintenance that walks tenants one transaction each.

* ``rotate_master``: re-wrap every data key wrapped by an old master key with the current one
  (ENGINEX_MASTER_KEY; the old key, ENGINEX_MASTER_KEY_PREVIOUS, is only used to unwrap).
  Interim-format LLM API keys (derived from the master key) are re-encrypted into the vault.
* ``rotate_tenant``: give one organization a new data key, re-encrypt its secrets with it in
  batches, then destroy the old data key(s).
* ``delete_tenant``: delete an organization with all its rows and files, destroying its data
  keys first (crypto-shredding).

Crash safety: every change is one committed transaction that leaves each secret readable (a
data key is wrapped by the old or the new master key, both accepted; a secret is sealed under
the old or the new data key, both present until nothing uses the old one, which is checked
under lock in the transaction that destroys it). Kill either rotation at any point and every
secret still decrypts; run it again and it resumes and completes.

``checkpoint(label)`` is called at every point where a crash is worth testing (after a change
is flushed but not committed, and after each commit). The CLI passes a function that kills
the process when ENGINEX_TEST_KILL_ROTATION_AT is set (tests only, see cli.py).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import delete, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from enginex.audit.service import record
from enginex.credentials import repository as repo
from enginex.credentials.crypto import (
    MasterKeyUnavailable,
    VaultError,
    is_sealed,
    sealed_key_version,
    wrap_dek,
)
from enginex.credentials.repository import CredentialRepository
from enginex.credentials.service import CredentialUnusable, open_values, reseal
from enginex.credentials.vault import Keyring, verify_master_key
from enginex.db import on_commit, set_tenant
from enginex.kit.errors import NotFound
from enginex.llm.repository import LLMSettingsRepository
from enginex.llm.service import KeyDecryptionError, LLMKeyBox
from enginex.orgs import repository as org_repo
from enginex.orgs.models import Organization
from enginex.reports.storage import ArtifactStorage
from enginex.tenancy.context import TenantContext, system_context

log = logging.getLogger("enginex.credentials")

Checkpoint = Callable[[str], None]
BATCH_SIZE = 100


class RotationError(VaultError):
    """A rotation cannot complete; nothing was destroyed. The message says what to fix."""


def _no_checkpoint(label: str) -> None:
    return None


@dataclass
class RotationReport:
    tenants: int = 0
    rewrapped: int = 0  # data keys re-wrapped (master) / secrets re-encrypted (tenant)
    converted: int = 0  # interim-format LLM keys moved into the vault
    destroyed: list[int] = field(default_factory=list)  # data-key versions destroyed
    version: int | None = None  # the tenant's data-key version after the rotation
    problems: list[str] = field(default_factory=list)
    done: bool = False


async def _orgs(sessions: async_sessionmaker[AsyncSession]) -> list[tuple[uuid.UUID, str]]:
    async with sessions() as db:
        return [(o.id, o.slug) for o in await org_repo.list_orgs(db)]


async def _reseal_llm_key(db: AsyncSession, ctx: TenantContext, key_box: LLMKeyBox,
                          target: int | None) -> bool:
    """Re-encrypt the organization's LLM API key if it is in the interim format or (with
    ``target``) sealed under another data-key version. Returns whether it changed."""
    row = await LLMSettingsRepository(db, ctx).get_settings()
    blob = row.api_key_ciphertext if row is not None else None
    if row is None or blob is None:
        return False
    if is_sealed(blob) and (target is None or sealed_key_version(blob) == target):
        return False
    try:
        api_key = await key_box.open(db, ctx.org_id, blob)
    except KeyDecryptionError as exc:
        raise RotationError(f"{ctx.org_slug}: the LLM API key cannot be decrypted ({exc}); "
                            "save it again in the LLM settings, then rerun.") from None
    row.api_key_ciphertext = await key_box.seal(db, ctx.org_id, api_key)
    await db.flush()
    return True


# --- master key --------------------------------------------------------------------------------


async def rotate_master(sessions: async_sessionmaker[AsyncSession], keyring: Keyring,
                        key_box: LLMKeyBox, *,
                        checkpoint: Checkpoint = _no_checkpoint) -> RotationReport:
    """Re-wrap every data key under the current master key, then retire the old key(s).

    The old key must be configured as ``keyring.previous`` while data keys still use it. A
    data key wrapped by a master key this process does not have is reported in ``problems``
    (and the old key is not retired). Audited per organization as
    ``vault.master_key_rotated``.
    """
    report = RotationReport()
    async with sessions() as db:
        await verify_master_key(db, keyring)
        for row in await repo.list_master_keys(db):
            if row.kek_id != keyring.current.id and row.status != "retiring":
                await repo.set_master_key_status(db, row.kek_id, "retiring")
        await db.commit()
    checkpoint("master:registry")
    for org_id, slug in await _orgs(sessions):
        ctx = system_context(org_id, slug)
        report.tenants += 1
        async with sessions() as db:
            await set_tenant(db, org_id)
            rewrapped = 0
            for key in await repo.list_tenant_keys(db, org_id, for_update=True):
                if key.kek_id == keyring.current.id:
                    continue
                try:
                    dek = keyring.unwrap(key)
                except MasterKeyUnavailable as exc:
                    report.problems.append(f"{slug}: data key {key.version}: {exc}")
                    continue
                key.wrapped_key = wrap_dek(keyring.current, org_id, key.version, dek)
                key.kek_id = keyring.current.id
                await db.flush()
                checkpoint("master:rewrapped")
                rewrapped += 1
            try:
                converted = await _reseal_llm_key(db, ctx, key_box, None)
            except RotationError as exc:
                report.problems.append(str(exc))
                converted = False
            if rewrapped or converted:
                await record(db, ctx, "vault.master_key_rotated", target_kind="organization",
                             target_id=org_id, details={"data_keys": rewrapped,
                                                        "kek_id": keyring.current.id,
                                                        "llm_key_converted": converted})
            await db.commit()
            report.rewrapped += rewrapped
            report.converted += int(converted)
        checkpoint("master:tenant-committed")
    if not report.problems and await _master_rotation_complete(sessions, keyring):
        async with sessions() as db:
            for row in await repo.list_master_keys(db):
                if row.kek_id != keyring.current.id:
                    await repo.delete_master_key(db, row.kek_id)
            await db.commit()
        report.done = True
    return report


async def _master_rotation_complete(sessions: async_sessionmaker[AsyncSession],
                                    keyring: Keyring) -> bool:
    """A fresh pass: no data key of any organization is wrapped by another master key."""
    for org_id, _slug in await _orgs(sessions):
        async with sessions() as db:
            await set_tenant(db, org_id)
            if any(k.kek_id != keyring.current.id
                   for k in await repo.list_tenant_keys(db, org_id)):
                return False
    return True


# --- tenant data key ---------------------------------------------------------------------------


async def rotate_tenant(sessions: async_sessionmaker[AsyncSession], keyring: Keyring,
                        key_box: LLMKeyBox, slug: str, *, batch_size: int = BATCH_SIZE,
                        checkpoint: Checkpoint = _no_checkpoint) -> RotationReport:
    """Give organization ``slug`` a new data key, re-encrypt its secrets, destroy the old key.

    A rotation left incomplete (more than one data key) is resumed instead of starting another.
    NotFound for an unknown slug; RotationError (nothing destroyed) if a secret cannot be
    decrypted. Audited as ``vault.tenant_key_rotation_started`` and
    ``vault.tenant_key_rotated``.
    """
    async with sessions() as db:
        org = await org_repo.get_org_by_slug(db, slug)
        if org is None:
            raise NotFound.with_message(f"No organization with slug '{slug}'.")
        org_id = org.id
    ctx = system_context(org_id, slug)
    report = RotationReport(tenants=1)
    async with sessions() as db:
        await set_tenant(db, org_id)
        keys = await repo.list_tenant_keys(db, org_id, for_update=True)
        if len(keys) > 1:
            target = keys[-1].version  # resume the unfinished rotation
        else:
            target = keys[-1].version + 1 if keys else 1
            await keyring.add_version(db, org_id, target)
            await record(db, ctx, "vault.tenant_key_rotation_started",
                         target_kind="organization", target_id=org_id,
                         details={"version": target})
            await db.flush()
            checkpoint("tenant:new-key")
        await db.commit()
    report.version = target
    checkpoint("tenant:new-key-committed")
    while True:
        while True:  # re-encrypt, one committed batch at a time
            async with sessions() as db:
                await set_tenant(db, org_id)
                batch = await CredentialRepository(db, ctx).list_not_on_key(target,
                                                                            limit=batch_size)
                if not batch:
                    break
                for credential in batch:
                    try:
                        values = await open_values(db, credential, keyring)
                    except CredentialUnusable as exc:
                        raise RotationError(f"{slug}: {exc} The old data key is kept; delete "
                                            "or replace that credential, then rerun.") from None
                    await reseal(db, credential, values, keyring)
                    if credential.key_version != target:
                        raise RotationError(f"{slug}: data key {credential.key_version} is "
                                            f"newer than {target}; rerun the rotation.")
                await db.flush()
                checkpoint("tenant:batch-flushed")
                await db.commit()
                report.rewrapped += len(batch)
            checkpoint("tenant:batch-committed")
        async with sessions() as db:
            await set_tenant(db, org_id)
            if await _reseal_llm_key(db, ctx, key_box, target):
                report.converted += 1
                checkpoint("tenant:llm-key-flushed")
            await db.commit()
        async with sessions() as db:
            await set_tenant(db, org_id)
            # Lock the data keys: writers sealing with an old one hold a share lock until they
            # commit, so what is counted next includes every ciphertext that uses them.
            keys = await repo.list_tenant_keys(db, org_id, for_update=True)
            old = [k.version for k in keys if k.version != target]
            still_used = await CredentialRepository(db, ctx).count_on_keys(old) if old else 0
            row = await LLMSettingsRepository(db, ctx).get_settings()
            blob = row.api_key_ciphertext if row is not None else None
            if blob is not None and (not is_sealed(blob) or sealed_key_version(blob) in old):
                still_used += 1
            if still_used:
                await db.rollback()
                continue  # written meanwhile with an old key: re-encrypt those too
            if old:
                await repo.delete_tenant_keys(db, org_id, old)
            await record(db, ctx, "vault.tenant_key_rotated", target_kind="organization",
                         target_id=org_id, details={"version": target, "destroyed": old,
                                                    "reencrypted": report.rewrapped})
            await db.flush()
            checkpoint("tenant:destroy-flushed")
            await db.commit()
            report.destroyed = old
        keyring.forget_tenant(org_id)
        checkpoint("tenant:done")
        report.done = True
        return report


# --- crypto-shredding ----------------------------------------------------------------------------


async def delete_tenant(db: AsyncSession, org: Organization, *,
                        storage: ArtifactStorage | None) -> int:
    """Delete ``org``: destroy its data keys, then the organization row, which cascades to
    every row it owns. After commit: its storage prefix is removed and its cached data keys are
    dropped from this process's keyrings. Returns how many data keys were destroyed.

    On SQLite, deleted content is overwritten (``secure_delete``); call
    ``purge_deleted_content`` after commit so no copy of the data keys stays in the WAL file.
    The caller commits and logs (the tenant's own audit log is deleted with it).
    """
    org_id = org.id
    await set_tenant(db, org_id)
    if db.get_bind().dialect.name == "sqlite":
        await db.execute(text("PRAGMA secure_delete = ON"))
    destroyed = await repo.delete_tenant_keys(db, org_id)
    await db.execute(delete(Organization).where(Organization.id == org_id))

    def after_commit() -> None:
        Keyring.forget_tenant_everywhere(org_id)
        if storage is not None:
            storage.delete_tenant(org_id)

    on_commit(db, after_commit)
    return destroyed


async def purge_deleted_content(engine: AsyncEngine) -> None:
    """SQLite: checkpoint and truncate the WAL, so that deleted pages (zeroed by
    ``secure_delete``) replace every older copy. No-op on PostgreSQL, where deleted rows
    leave the files at the next VACUUM (docs/CREDENTIALS.md, "Crypto-shredding")."""
    if engine.dialect.name != "sqlite":
        return
    async with engine.connect() as conn:
        def checkpoint_wal(sync_conn: object) -> None:
            cursor = sync_conn.connection.dbapi_connection.cursor()  # type: ignore[attr-defined]
            try:
                cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                cursor.fetchall()
            finally:
                cursor.close()

        await conn.run_sync(checkpoint_wal)


TenantKeys = tuple[str, list[int], set[str]]  # slug, data-key versions, master key ids


async def tenant_key_status(sessions: async_sessionmaker[AsyncSession]
                            ) -> tuple[list[tuple[str, str]], list[TenantKeys]]:
    """(master keys as (kek id, status), per organization (slug, data-key versions, kek ids))."""
    async with sessions() as db:
        masters = [(m.kek_id, m.status) for m in await repo.list_master_keys(db)]
    tenants = []
    for org_id, slug in await _orgs(sessions):
        async with sessions() as db:
            await set_tenant(db, org_id)
            keys = await repo.list_tenant_keys(db, org_id)
            tenants.append((slug, [k.version for k in keys], {k.kek_id for k in keys}))
    return masters, tenants
