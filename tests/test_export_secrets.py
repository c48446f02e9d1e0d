"""Credentials' values in an export: only when an org admin asks, re-entering their password,
sealed to an import key (X25519) -- never in plaintext -- and restored by `enginex tenant
import --identity KEYFILE` (docs/DATA_LIFECYCLE.md "Secrets in exports")."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from pathlib import Path
from typing import Any

from tests.factories import PASSWORD, Org, Server, api_key_client, run_db, wait_for
from tests.test_lifecycle import enginex, export_archive


def open_credential(server: Server, slug: str, name: str) -> dict[str, str]:
    """The stored values of credential ``name`` of organization ``slug``, decrypted with the
    deployment's master key (what a run would get)."""
    from sqlalchemy import select

    from enginex.credentials.models import Credential
    from enginex.credentials.service import open_values
    from enginex.credentials.vault import Keyring
    from enginex.db import set_tenant
    from enginex.kit.crypto import load_master_key
    from enginex.orgs.repository import get_org_by_slug

    found: dict[str, str] = {}

    async def work(session: Any) -> None:
        org = await get_org_by_slug(session, slug)
        assert org is not None
        await set_tenant(session, org.id)
        credential = (await session.execute(select(Credential).where(
            Credential.name == name))).scalar_one()
        found.update(await open_values(session, credential,
                                       Keyring.for_master(load_master_key(server.settings))))

    run_db(server, work)
    return found


def test_secrets_travel_sealed_to_an_import_key_and_come_back_with_the_identity(
        server: Server, org_a: Org, tmp_path: Path) -> None:
    secret = "sk-live-" + uuid.uuid4().hex
    admin = org_a.admin.client
    made = admin.post(f"/api/v1/orgs/{org_a.slug}/credentials",
                      json={"name": "crm", "type": "api_key", "values": {"key": secret}})
    assert made.status_code == 201, made.text
    keyfile = tmp_path / "import.key"
    keygen = enginex(server.settings, "tenant", "keygen", "-o", str(keyfile))
    assert keygen.returncode == 0, keygen.stderr
    recipient = keygen.stdout.strip()
    assert recipient.startswith("enginex-x25519:")
    assert keyfile.stat().st_mode & 0o777 == 0o600

    base = f"/api/v1/orgs/{org_a.slug}/exports"
    # Re-authentication: a wrong password, an API key, a malformed key are refused.
    wrong = admin.post(base, json={"secrets_recipient": recipient, "password": "nope"})
    assert wrong.status_code == 422 and wrong.json()["error"]["details"]["field"] == "password"
    with api_key_client(server, org_a.api_keys["admin"]) as by_key:
        refused = by_key.post(base, json={"secrets_recipient": recipient, "password": PASSWORD})
        assert refused.status_code == 403, refused.text
    bad_key = admin.post(base, json={"secrets_recipient": "age1abc", "password": PASSWORD})
    assert bad_key.status_code == 422
    assert bad_key.json()["error"]["details"]["field"] == "secrets_recipient"

    asked = admin.post(base, json={"secrets_recipient": recipient, "password": PASSWORD})
    assert asked.status_code == 202, asked.text
    assert asked.json()["with_secrets"] is True
    done = wait_for(lambda: (e := admin.get(f"{base}/{asked.json()['id']}").json())["status"]
                    in {"succeeded", "failed"} and e, what="the export with secrets")
    assert done["status"] == "succeeded", done
    link = admin.post(f"{base}/{done['id']}/link").json()["url"]
    archive_bytes = admin.get(link).content
    assert secret.encode() not in archive_bytes
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        contents = {n: archive.read(n) for n in archive.namelist()}
    for name, data in contents.items():
        assert secret.encode() not in data, f"plaintext secret in {name}"
    line = json.loads(contents["credentials.jsonl"].splitlines()[0])
    assert line["sealed_values"].startswith("enginex-sealed-v1:")
    manifest = json.loads(contents["manifest.json"])
    assert manifest["secrets"]["recipient"] == recipient
    requested = admin.get(f"/api/v1/orgs/{org_a.slug}/audit",
                          params={"action": "export.requested"}).json()["items"][0]
    assert requested["details"]["secrets"] is True
    path = tmp_path / "export.zip"
    path.write_bytes(archive_bytes)

    # Without the identity, or with another one, the import is refused and writes nothing.
    slug = f"copy-{org_a.slug}"[:40]
    without = enginex(server.settings, "tenant", "import", str(path), "--slug", slug)
    assert without.returncode != 0 and "--identity" in without.stderr
    other = tmp_path / "other.key"
    assert enginex(server.settings, "tenant", "keygen", "-o", str(other)).returncode == 0
    mismatched = enginex(server.settings, "tenant", "import", str(path), "--slug", slug,
                         "--identity", str(other))
    assert mismatched.returncode != 0 and "another import key" in mismatched.stderr
    assert org_a.admin.client.get(f"/api/v1/orgs/{slug}/credentials").status_code == 404

    restored = enginex(server.settings, "tenant", "import", str(path), "--slug", slug,
                       "--identity", str(keyfile))
    assert restored.returncode == 0, restored.stderr
    assert "with their values" in restored.stdout and "crm" in restored.stdout
    assert open_credential(server, slug, "crm") == {"key": secret}


def test_an_export_without_secrets_carries_no_sealed_values(server: Server, org_a: Org) -> None:
    admin = org_a.admin.client
    made = admin.post(f"/api/v1/orgs/{org_a.slug}/credentials",
                      json={"name": "crm", "type": "api_key", "values": {"key": "sk-plain-1"}})
    assert made.status_code == 201
    archive = export_archive(server, org_a)
    with zipfile.ZipFile(io.BytesIO(archive)) as files:
        credentials = files.read("credentials.jsonl")
        assert b"sealed_values" not in credentials and b"sk-plain-1" not in credentials
        assert "secrets" not in json.loads(files.read("manifest.json"))
