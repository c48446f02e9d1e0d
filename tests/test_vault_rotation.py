"""Key rotation without data loss (SQLite and PostgreSQL), each on a database of its own.

Claim: kill a master-key or tenant-key rotation at any point and every secret still decrypts;
run it again and it completes. Proven twice: in-process, by stopping the rotation at each of
its checkpoints in turn (every point where it flushed a change but did not commit, and after
every commit) until a run completes, opening every secret with a fresh keyring (an empty cache,
like a new process) after each stop; and with the real command, SIGKILLed by
ENGINEX_TEST_KILL_ROTATION_AT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select

from enginex.config import Settings
from enginex.credentials import repository as repo
from enginex.credentials.cli import KILL_AT_ENV, check_master_key, cmd_keys_status
from enginex.credentials.crypto import MasterKeyUnavailable, is_sealed, sealed_key_version
from enginex.credentials.models import Credential
from enginex.credentials.rotation import rotate_master, rotate_tenant
from enginex.credentials.service import CredentialUnusable, create_credential, open_values
from enginex.credentials.vault import Keyring, verify_master_key
from enginex.db import Database, set_tenant
from enginex.kit.crypto import derive_key, generate_master_key, load_master_key
from enginex.llm.models import LLMSettings
from enginex.llm.service import LLMKeyBox, update_llm_settings
from enginex.migrate import upgrade
from enginex.orgs.service import create_organization
from enginex.tenancy.context import system_context
from tests.conftest import OWNER_ROLE, PG_ADMIN_DSN, PgDatabase, settings_for

ENGINEX = Path(sys.executable).with_name("enginex")


class Killed(Exception):
    """Stands for the process dying at a checkpoint: nothing after it runs or commits."""


def stop_at(n: int) -> Callable[[str], None]:
    seen = [0]

    def checkpoint(label: str) -> None:
        seen[0] += 1
        if seen[0] == n:
            raise Killed(label)

    return checkpoint


class Fresh:
    """A migrated database of its own (master keys change in these tests), which can be
    snapshotted and restored: each kill point is tried on the same starting state."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.pg = PgDatabase() if backend == "postgres" else None
        self.settings = settings_for(backend, tmp_path / "data", self.pg)
        self.snapshot_dir = tmp_path / "snapshot"
        upgrade(self.settings)

    def snapshot(self) -> None:
        if self.pg is None:
            self.snapshot_dir.mkdir(exist_ok=True)
            for path in Path(self.settings.data_dir).glob("enginex.db*"):
                shutil.copy2(path, self.snapshot_dir / path.name)
        else:
            self._admin(f'DROP DATABASE IF EXISTS "{self.pg.name}_snap"',
                        f'CREATE DATABASE "{self.pg.name}_snap" TEMPLATE "{self.pg.name}" '
                        f'OWNER "{OWNER_ROLE}"')

    def restore(self) -> None:
        if self.pg is None:
            for path in Path(self.settings.data_dir).glob("enginex.db*"):
                path.unlink()
            for path in self.snapshot_dir.iterdir():
                shutil.copy2(path, Path(self.settings.data_dir) / path.name)
        else:
            self._admin(f'DROP DATABASE "{self.pg.name}" WITH (FORCE)',
                        f'CREATE DATABASE "{self.pg.name}" TEMPLATE "{self.pg.name}_snap" '
                        f'OWNER "{OWNER_ROLE}"')

    def _admin(self, *statements: str) -> None:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    def drop(self) -> None:
        if self.pg is not None:
            self._admin(f'DROP DATABASE IF EXISTS "{self.pg.name}_snap" WITH (FORCE)')
            self.pg.drop()


@pytest.fixture
def fresh_db(backend: str, tmp_path: Path) -> Iterator[Fresh]:
    made = Fresh(backend, tmp_path)
    try:
        yield made
    finally:
        made.drop()


@pytest.fixture
def fresh(fresh_db: Fresh) -> Settings:
    return fresh_db.settings


def raw(settings: Settings, text: str) -> bytes:
    return load_master_key(settings.model_copy(update={"master_key": text}))


def box(master: bytes, previous: bytes | None = None) -> LLMKeyBox:
    """A keyring and LLM key box as a new process would have them: nothing cached."""
    return LLMKeyBox(master, previous=previous, keyring=Keyring(master, previous))


@dataclass
class Seeded:
    orgs: dict[str, uuid.UUID] = field(default_factory=dict)
    values: dict[tuple[str, str], str] = field(default_factory=dict)
    llm_keys: dict[str, str] = field(default_factory=dict)


def interim_blob(master: bytes, tenant_id: uuid.UUID, api_key: str) -> bytes:
    """An API key in the interim format LLM settings used before the vault."""
    nonce = os.urandom(12)
    return b"\x01" + nonce + AESGCM(derive_key(master, "llm-settings")).encrypt(
        nonce, api_key.encode(), tenant_id.bytes)


def seed(settings: Settings, master: bytes, *, orgs: int = 3, credentials: int = 3) -> Seeded:
    """Organizations with credentials and an LLM API key each, sealed under ``master``; the
    first organization's LLM key is in the interim format."""
    seeded = Seeded()
    key_box = box(master)

    async def main() -> None:
        db = Database(settings)
        try:
            for i in range(orgs):
                async with db.sessions() as session:
                    org, ctx = await create_organization(
                        session, slug=f"rot-{i}-{secrets.token_hex(3)}", name=f"Rotation {i}")
                    seeded.orgs[org.slug] = org.id
                    for j in range(credentials):
                        value = f"canary-{org.slug}-{j}-{secrets.token_hex(8)}"
                        await create_credential(session, ctx, name=f"cred-{j}", kind="api_key",
                                                values={"key": value}, keyring=key_box.keyring,
                                                actor=None)
                        seeded.values[(org.slug, f"cred-{j}")] = value
                    llm_key = f"sk-{org.slug}-{secrets.token_hex(8)}"
                    row = await update_llm_settings(
                        session, ctx, provider="openai_compatible", base_url="http://127.0.0.1:9",
                        default_model="m", api_key=llm_key, temperature=None, max_tokens=None,
                        actor=None, key_box=key_box, allow_private_network=True)
                    if i == 0:  # one organization still has its key in the interim format
                        row.api_key_ciphertext = interim_blob(master, org.id, llm_key)
                    seeded.llm_keys[org.slug] = llm_key
                    await session.commit()
        finally:
            await db.dispose()

    asyncio.run(main())
    return seeded


def open_everything(settings: Settings, key_box: LLMKeyBox, seeded: Seeded) -> int:
    """Decrypt every secret of the seeded organizations; returns how many (all must open)."""

    async def main() -> int:
        db = Database(settings)
        opened = 0
        try:
            for slug, org_id in seeded.orgs.items():
                ctx = system_context(org_id, slug)
                async with db.sessions() as session:
                    await set_tenant(session, org_id)
                    for credential in (await session.execute(select(Credential))).scalars():
                        values = await open_values(session, credential, key_box.keyring)
                        assert values == {"key": seeded.values[(slug, credential.name)]}
                        opened += 1
                    row = (await session.execute(select(LLMSettings))).scalar_one()
                    assert await key_box.open(session, ctx.org_id, row.api_key_ciphertext) == \
                        seeded.llm_keys[slug]
                    opened += 1
        finally:
            await db.dispose()
        return opened

    return asyncio.run(main())


def tenant_state(settings: Settings, seeded: Seeded) -> dict[str, tuple[list[int], set[str],
                                                                      set[int], object]]:
    """Per org: (data-key versions, their master key ids, credential key versions, LLM key
    format: 'interim' or its data-key version)."""

    async def main() -> dict[str, tuple[list[int], set[str], set[int], object]]:
        db = Database(settings)
        found = {}
        try:
            for slug, org_id in seeded.orgs.items():
                async with db.sessions() as session:
                    await set_tenant(session, org_id)
                    keys = await repo.list_tenant_keys(session, org_id)
                    versions = {c.key_version for c in
                                (await session.execute(select(Credential))).scalars()}
                    blob = (await session.execute(select(LLMSettings))).scalar_one() \
                        .api_key_ciphertext
                    found[slug] = ([k.version for k in keys], {k.kek_id for k in keys}, versions,
                                   sealed_key_version(blob) if is_sealed(blob) else "interim")
        finally:
            await db.dispose()
        return found

    return asyncio.run(main())


def registry(settings: Settings) -> list[tuple[str, str]]:
    async def main() -> list[tuple[str, str]]:
        db = Database(settings)
        try:
            async with db.sessions() as session:
                return sorted((r.kek_id, r.status) for r in await repo.list_master_keys(session))
        finally:
            await db.dispose()

    return asyncio.run(main())


def test_master_key_rotation_killed_anywhere_loses_nothing(fresh_db: Fresh) -> None:
    fresh = fresh_db.settings
    old, new = raw(fresh, fresh.master_key), raw(fresh, generate_master_key())
    seeded = seed(fresh, old)
    total = len(seeded.values) + len(seeded.llm_keys)
    assert open_everything(fresh, box(old), seeded) == total
    fresh_db.snapshot()
    stops: list[str] = []
    for n in range(1, 100):
        fresh_db.restore()
        try:
            asyncio.run(_rotate_master(fresh, box(new, old), stop_at(n)))
        except Killed as killed:
            stops.append(str(killed))
        else:
            break  # n is past the last checkpoint: nothing was interrupted
        assert open_everything(fresh, box(new, old), seeded) == total
        if n == 1:  # a process given only the new key refuses to start mid-rotation
            with pytest.raises(MasterKeyUnavailable, match="rotation is incomplete"):
                asyncio.run(_verify(fresh, Keyring(new), strict=True))
        report = asyncio.run(_rotate_master(fresh, box(new, old), lambda label: None))
        assert report.done and not report.problems, (n, report)
        _assert_rotated_to(fresh, seeded, old, new, total)
    assert stops == ["master:registry"] + ["master:rewrapped", "master:tenant-committed"] * 3


def _assert_rotated_to(fresh: Settings, seeded: Seeded, old: bytes, new: bytes,
                       total: int) -> None:
    state = tenant_state(fresh, seeded)
    new_id = Keyring(new).current.id
    assert all(kek_ids == {new_id} and llm != "interim"
               for _versions, kek_ids, _c, llm in state.values())
    assert registry(fresh) == [(new_id, "active")]
    # The old key is no longer needed -- and no longer enough.
    assert open_everything(fresh, box(new), seeded) == total
    with pytest.raises(CredentialUnusable, match="which this process does not have"):
        open_everything(fresh, box(old), seeded)
    with pytest.raises(MasterKeyUnavailable, match="not the master key of this database"):
        asyncio.run(_verify(fresh, Keyring(old), strict=True))
    again = asyncio.run(_rotate_master(fresh, box(new), lambda label: None))
    assert again.done and again.rewrapped == 0  # a rerun after completion is a no-op


async def _rotate_master(settings: Settings, key_box: LLMKeyBox,
                         checkpoint: Callable[[str], None]):
    db = Database(settings)
    try:
        return await rotate_master(db.sessions, key_box.keyring, key_box, checkpoint=checkpoint)
    finally:
        await db.dispose()


async def _verify(settings: Settings, keyring: Keyring, *, strict: bool) -> None:
    db = Database(settings)
    try:
        async with db.sessions() as session:
            await verify_master_key(session, keyring, strict=strict)
            await session.commit()
    finally:
        await db.dispose()


async def _rotate_tenant(settings: Settings, key_box: LLMKeyBox, slug: str,
                         checkpoint: Callable[[str], None]):
    db = Database(settings)
    try:
        return await rotate_tenant(db.sessions, key_box.keyring, key_box, slug, batch_size=2,
                                   checkpoint=checkpoint)
    finally:
        await db.dispose()


def test_tenant_key_rotation_killed_anywhere_loses_nothing(fresh_db: Fresh) -> None:
    fresh = fresh_db.settings
    master = raw(fresh, fresh.master_key)
    seeded = seed(fresh, master, credentials=5)
    target, bystander, *_ = list(seeded.orgs)
    before = tenant_state(fresh, seeded)
    fresh_db.snapshot()
    stops: list[str] = []
    for n in range(1, 100):
        fresh_db.restore()
        seeded.values.pop((target, "added"), None)
        try:
            asyncio.run(_rotate_tenant(fresh, box(master), target, stop_at(n)))
        except Killed as killed:
            stops.append(str(killed))
        else:
            break
        total = len(seeded.values) + len(seeded.llm_keys)
        assert open_everything(fresh, box(master), seeded) == total
        if stops[-1] == "tenant:new-key-committed":
            # Both keys exist: a secret written now uses the new one and survives the rest.
            asyncio.run(_add_credential(fresh, seeded, target, box(master)))
            total += 1
        report = asyncio.run(_rotate_tenant(fresh, box(master), target, lambda label: None))
        # Killed after its last commit, the rotation was complete: running it again rotates
        # once more.
        version = 3 if stops[-1] == "tenant:done" else 2
        assert report.done and report.version == version, (n, report)
        assert report.destroyed == [version - 1], (n, report)
        state = tenant_state(fresh, seeded)
        assert state[target][0] == [version] and state[target][2] == {version}
        assert state[target][3] == version
        assert state[bystander] == before[bystander]  # other organizations are untouched
        assert open_everything(fresh, box(master), seeded) == total
    assert stops == ["tenant:new-key", "tenant:new-key-committed",
                     *["tenant:batch-flushed", "tenant:batch-committed"] * 3,
                     "tenant:llm-key-flushed", "tenant:destroy-flushed", "tenant:done"]
    again = asyncio.run(_rotate_tenant(fresh, box(master), target, lambda label: None))
    assert again.version == 3 and again.destroyed == [2]
    assert open_everything(fresh, box(master), seeded) == len(seeded.values) + len(
        seeded.llm_keys)


async def _add_credential(settings: Settings, seeded: Seeded, slug: str,
                          key_box: LLMKeyBox) -> None:
    db = Database(settings)
    try:
        async with db.sessions() as session:
            org_id = seeded.orgs[slug]
            await set_tenant(session, org_id)
            value = f"canary-during-rotation-{secrets.token_hex(8)}"
            await create_credential(session, system_context(org_id, slug), name="added",
                                    kind="api_key", values={"key": value},
                                    keyring=key_box.keyring, actor=None)
            seeded.values[(slug, "added")] = value
            await session.commit()
    finally:
        await db.dispose()


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEX_")}
    env.update(ENGINEX_DATA_DIR=str(settings.data_dir), ENGINEX_LOG_LEVEL="WARNING",
               **extra)
    if settings.is_postgres:
        env.update(ENGINEX_DATABASE_URL=settings.database_url,
                   ENGINEX_MIGRATION_DATABASE_URL=settings.migration_database_url)
    return env


def _enginex(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ENGINEX), *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_rotation_commands_survive_sigkill_and_complete_on_rerun(
        fresh: Settings, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    old_text, new_text = fresh.master_key, generate_master_key()
    old, new = raw(fresh, old_text), raw(fresh, new_text)
    seeded = seed(fresh, old, orgs=2, credentials=3)
    total = len(seeded.values) + len(seeded.llm_keys)
    slug = list(seeded.orgs)[1]
    env = _env(fresh, ENGINEX_MASTER_KEY=old_text)

    killed = _enginex({**env, KILL_AT_ENV: "3"}, "keys", "rotate-tenant", "--org", slug,
                      "--batch-size", "1")
    assert killed.returncode == -9, killed.stderr  # in the middle of a batch's transaction
    assert "killed at checkpoint 3 (tenant:batch-flushed)" in killed.stdout
    assert open_everything(fresh, box(old), seeded) == total
    cmd_keys_status(argparse.Namespace(), fresh)
    assert f"{slug}: data key version(s) [1, 2]; tenant-key rotation unfinished" in \
        capsys.readouterr().out
    done = _enginex(env, "keys", "rotate-tenant", "--org", slug)
    assert done.returncode == 0, done.stderr
    assert "data key version 2" in done.stdout and "destroyed data key version(s) [1]" in \
        done.stdout
    assert tenant_state(fresh, seeded)[slug][0] == [2]

    rotating = {**env, "ENGINEX_MASTER_KEY": new_text, "ENGINEX_MASTER_KEY_PREVIOUS": old_text}
    killed = _enginex({**rotating, KILL_AT_ENV: "2"}, "keys", "rotate-master")
    assert killed.returncode == -9, killed.stderr
    assert "killed at checkpoint 2 (master:rewrapped)" in killed.stdout
    assert open_everything(fresh, box(new, old), seeded) == total
    # A process given only the new key refuses to start until the rotation is finished.
    monkeypatch.delenv("ENGINEX_MASTER_KEY_PREVIOUS", raising=False)
    with pytest.raises(MasterKeyUnavailable, match="rotation is incomplete"):
        check_master_key(fresh.model_copy(update={"master_key": new_text}))
    done = _enginex(rotating, "keys", "rotate-master")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "done: every data key is wrapped by the current master key" in done.stdout
    assert open_everything(fresh, box(new), seeded) == total
    check_master_key(fresh.model_copy(update={"master_key": new_text}))
