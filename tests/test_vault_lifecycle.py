"""The vault at the edges of a deployment's life (SQLite and PostgreSQL): a wrong or lost
master key at startup, and deleting a tenant (crypto-shredding).

Claims: a process started with a master key the database does not know stops with a clear
error and writes nothing (no data key under the wrong key, which would leave secrets no
process can read); deleting an organization destroys its data keys with all its rows and
files, so its ciphertexts -- even copies kept elsewhere -- can never be decrypted again, and
neither the data keys nor the values remain in the database files or a dump.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from enginex.cli import CliError
from enginex.config import Settings
from enginex.credentials import repository as repo
from enginex.credentials.cli import cmd_tenant_delete
from enginex.credentials.crypto import Binding, MasterKeyUnavailable, UnknownDataKey
from enginex.credentials.models import Credential, TenantKey
from enginex.credentials.service import PURPOSE, create_credential
from enginex.credentials.vault import Keyring, verify_master_key
from enginex.db import Database, set_tenant
from enginex.kit.crypto import generate_master_key, load_master_key
from enginex.migrate import upgrade
from enginex.orgs.service import create_organization
from tests.conftest import PG_ADMIN_DSN, PgDatabase, settings_for
from tests.factories import Actor, Org, Server, free_port, make_org, run_db

ENGINEX = Path(sys.executable).with_name("enginex")


@pytest.fixture
def fresh(backend: str, tmp_path: Path) -> Any:
    pg = PgDatabase() if backend == "postgres" else None
    try:
        settings = settings_for(backend, tmp_path / "data", pg)
        upgrade(settings)
        yield settings
    finally:
        if pg is not None:
            pg.drop()


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEX_")}
    env.update(ENGINEX_DATA_DIR=str(settings.data_dir), ENGINEX_LOG_LEVEL="WARNING", **extra)
    if settings.is_postgres:
        env.update(ENGINEX_DATABASE_URL=settings.database_url,
                   ENGINEX_MIGRATION_DATABASE_URL=settings.migration_database_url)
    return env


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ENGINEX), "serve", "--port", str(free_port()), "--no-worker"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def _with_session(settings: Settings, work: Any) -> Any:
    async def main() -> Any:
        db = Database(settings)
        try:
            async with db.sessions() as session:
                result = await work(session)
                await session.commit()
                return result
        finally:
            await db.dispose()

    return asyncio.run(main())


def test_a_wrong_master_key_is_refused_before_anything_is_written(fresh: Settings) -> None:
    right = load_master_key(fresh)
    keyring = Keyring(right)

    async def org_with_secret(session: Any) -> uuid.UUID:
        await verify_master_key(session, keyring, strict=True)  # registers the key
        org, ctx = await create_organization(session, slug=f"k-{secrets.token_hex(3)}",
                                             name="Keys")
        await create_credential(session, ctx, name="one", kind="api_key",
                                values={"key": "canary-right-key-value"}, keyring=keyring,
                                actor=None)
        return org.id

    org_id = _with_session(fresh, org_with_secret)
    wrong_text = generate_master_key()
    wrong = Keyring(load_master_key(fresh.model_copy(update={"master_key": wrong_text})))

    with pytest.raises(MasterKeyUnavailable, match="is not the master key of this database"):
        _with_session(fresh, lambda s: verify_master_key(s, wrong, strict=True))
    refused = _serve(_env(fresh, ENGINEX_MASTER_KEY=wrong_text))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"ENGINEX_MASTER_KEY (fingerprint {wrong.current.id}) is not the master key of " \
           f"this database (it expects {keyring.current.id})" in refused.stderr
    assert "Traceback" not in refused.stderr and "listening" not in refused.stdout

    # A process that started anyway (no check) can neither read nor add data keys.
    async def read_existing(session: Any) -> None:
        await set_tenant(session, org_id)
        key = await repo.latest_tenant_key(session, org_id)
        assert key is not None
        with pytest.raises(MasterKeyUnavailable, match="which this process does not have"):
            wrong.unwrap(key)

    async def add_first_secret(session: Any) -> None:
        _other, ctx = await create_organization(session, slug=f"w-{secrets.token_hex(3)}",
                                                name="Wrong")
        with pytest.raises(MasterKeyUnavailable, match="not the master key of this database"):
            await create_credential(session, ctx, name="x", kind="api_key",
                                    values={"key": "canary-wrong"}, keyring=wrong, actor=None)
        await session.rollback()

    _with_session(fresh, read_existing)
    _with_session(fresh, add_first_secret)

    async def registered(session: Any) -> list[str]:
        return [m.kek_id for m in await repo.list_master_keys(session)]

    assert _with_session(fresh, registered) == [keyring.current.id]
    assert _with_session(fresh, lambda s: verify_master_key(s, keyring, strict=True)) is None


# The key file is the embedded (SQLite) default; PostgreSQL requires ENGINEX_MASTER_KEY.
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_lost_embedded_key_file_is_refused_not_replaced(backend: str, tmp_path: Path) -> None:
    data = tmp_path / "embedded"
    settings = Settings(data_dir=data)
    upgrade(settings)
    first = load_master_key(settings)  # creates master.key
    _with_session(settings, lambda s: verify_master_key(s, Keyring(first), strict=True))
    (data / "master.key").unlink()  # lost: the next start would generate another one
    refused = _serve(_env(settings))
    assert refused.returncode == 2
    assert "is not the master key of this database" in refused.stderr
    assert "master.key" in refused.stderr and "Traceback" not in refused.stderr


# --- crypto-shredding -------------------------------------------------------------------------


def _file_bytes(db_file: Path) -> bytes:
    """The SQLite file and its WAL, read by a child process: closing a descriptor of the
    database in this process (where the server runs) would drop SQLite's POSIX locks."""
    files = [str(p) for p in (db_file, db_file.with_name(db_file.name + "-wal")) if p.exists()]
    return subprocess.run(["cat", *files], capture_output=True, timeout=60, check=True).stdout


def _database_bytes(settings: Settings) -> bytes:
    if not settings.is_postgres:
        return _file_bytes(Path(settings.data_dir) / "enginex.db")
    name = settings.database_url.rsplit("/", 1)[1]
    return subprocess.run(["pg_dump", "--dbname", PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name],
                          capture_output=True, timeout=120, check=True).stdout


def _found(data: bytes, blob: bytes) -> bool:
    return blob in data or blob.hex().encode() in data  # raw (SQLite) or bytea hex (dump)


def _secrets_of(server: Server, org: Org) -> tuple[list[bytes], list[bytes], list[Binding]]:
    async def work(session: Any) -> tuple[list[bytes], list[bytes], list[Binding]]:
        await set_tenant(session, uuid.UUID(org.id))
        keys = list((await session.execute(select(TenantKey))).scalars())
        credentials = list((await session.execute(select(Credential))).scalars())
        return ([k.wrapped_key for k in keys], [c.ciphertext for c in credentials],
                [Binding(PURPOSE, c.tenant_id, c.id, c.value_version) for c in credentials])

    return run_db(server, work)


def test_deleting_a_tenant_shreds_its_secrets(server: Server, platform_admin: Actor,
                                              org_a: Org, org_b: Org) -> None:
    value = f"canary-shred-{secrets.token_hex(12)}"
    for org in (org_a, org_b):
        created = org.admin.client.post(f"/api/v1/orgs/{org.slug}/credentials", json={
            "name": "doomed", "type": "api_key", "values": {"key": value + org.slug}})
        assert created.status_code == 201, created.text
    storage = server.app.state.storage
    storage.write(uuid.UUID(org_b.id), uuid.uuid4(), b"a report of org b")
    wrapped, ciphertexts, bindings = _secrets_of(server, org_b)
    assert len(wrapped) == 1 and len(ciphertexts) == 1
    path = f"/api/v1/admin/tenants/{org_b.id}"

    unconfirmed = platform_admin.client.delete(path)
    assert unconfirmed.status_code == 422
    assert unconfirmed.json()["error"]["details"] == {"field": "confirm"}
    assert platform_admin.client.delete(path, params={"confirm": org_a.slug}).status_code == 422
    assert org_a.admin.client.delete(path, params={"confirm": org_b.slug}).status_code == 403
    deleted = platform_admin.client.delete(path, params={"confirm": org_b.slug})
    assert deleted.status_code == 204, deleted.text
    again = platform_admin.client.delete(path, params={"confirm": org_b.slug})
    assert again.status_code == 404

    # Gone for its members, its files, and its keys -- in this process and from a copy.
    assert org_b.admin.client.get(f"/api/v1/orgs/{org_b.slug}/credentials").status_code == 404
    assert not storage.tenant_prefix(uuid.UUID(org_b.id)).exists()
    assert _secrets_of(server, org_b) == ([], [], [])
    fresh_ring = Keyring(server.app.state.master_key)  # a new process: nothing cached

    async def reopen(session: Any) -> None:
        await set_tenant(session, uuid.UUID(org_b.id))
        for binding, blob in zip(bindings, ciphertexts, strict=True):
            with pytest.raises(UnknownDataKey):
                await fresh_ring.open(session, binding, blob)
        assert Keyring.for_master(server.app.state.master_key).cached_dek(
            uuid.UUID(org_b.id), 1) is None

    run_db(server, reopen)
    dump = _database_bytes(server.settings)
    assert not any(_found(dump, blob) for blob in wrapped + ciphertexts)
    assert (value + org_b.slug).encode() not in dump
    # The other tenant is untouched.
    kept = org_a.admin.client.get(f"/api/v1/orgs/{org_a.slug}/credentials")
    assert [c["name"] for c in kept.json()] == ["doomed"]
    assert len(_secrets_of(server, org_a)[0]) == 1


def test_enginex_tenant_delete(server: Server, platform_admin: Actor) -> None:
    org = make_org(server, platform_admin, "del", roles=("admin",), with_keys=False)
    created = org.admin.client.post(f"/api/v1/orgs/{org.slug}/credentials", json={
        "name": "k", "type": "api_key", "values": {"key": f"canary-{secrets.token_hex(8)}"}})
    assert created.status_code == 201
    with pytest.raises(CliError, match="add --yes to confirm"):
        cmd_tenant_delete(argparse.Namespace(org=org.slug, yes=False, now=True), server.settings)
    env = _env(server.settings, ENGINEX_MASTER_KEY=server.settings.master_key)
    done = subprocess.run([str(ENGINEX), "tenant", "delete", "--org", org.slug, "--yes", "--now"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert f"deleted organization '{org.slug}'" in done.stdout and "1 data key(s)" in done.stdout
    assert _secrets_of(server, org) == ([], [], [])
    listed = platform_admin.client.get("/api/v1/admin/tenants").json()
    assert org.slug not in {t["slug"] for t in listed}
    assert org.admin.client.get(f"/api/v1/orgs/{org.slug}/credentials").status_code == 404
