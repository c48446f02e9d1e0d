"""Credentials through real HTTP (SQLite and PostgreSQL).

Threat model: only the org's admins manage credentials; builders and operators see names and
field names (to reference them), viewers nothing; another org's member gets the same 404 as
for a missing object; values are write-only -- never in a response, an error message or the
audit log -- and are stored only as ciphertext bound to their tenant, row and value version,
so copying a ciphertext anywhere else (another tenant, another credential, an older version)
never decrypts.
"""

from __future__ import annotations

import json
import secrets
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from enginex.audit.models import AuditEntry
from enginex.credentials.models import Credential, TenantKey
from enginex.credentials.service import CredentialUnusable, open_values
from enginex.credentials.vault import Keyring
from enginex.db import set_tenant
from enginex.kit.errors import NOT_FOUND_MESSAGE
from tests.factories import Org, Server, anonymous, api_key_client, run_db

EXPECTED_404 = {"error": {"code": "not_found", "message": NOT_FOUND_MESSAGE, "details": {}}}


def url(org: Org | str, suffix: str = "") -> str:
    return f"/api/v1/orgs/{org if isinstance(org, str) else org.slug}/credentials{suffix}"


def canary(label: str = "value") -> str:
    return f"canary-{label}-{secrets.token_hex(12)}"


def create(org: Org, **body: Any) -> dict[str, Any]:
    response = org.admin.client.post(url(org), json=body)
    assert response.status_code == 201, response.text
    return response.json()


def rows(server: Server, org: Org) -> list[Credential]:
    async def work(session: Any) -> list[Credential]:
        await set_tenant(session, uuid.UUID(org.id))
        return list((await session.execute(select(Credential))).scalars())

    return run_db(server, work)


def audit(server: Server, org: Org) -> list[AuditEntry]:
    async def work(session: Any) -> list[AuditEntry]:
        await set_tenant(session, uuid.UUID(org.id))
        stmt = select(AuditEntry).where(AuditEntry.target_kind == "credential") \
            .order_by(AuditEntry.at)
        return list((await session.execute(stmt)).scalars())

    return run_db(server, work)


def keyring(server: Server) -> Keyring:
    return Keyring.for_master(server.app.state.master_key)


def test_access_rules(server: Server, org_a: Org, org_b: Org) -> None:
    created = create(org_b, name="deploy-key", type="api_key", values={"key": canary()})
    item = url(org_b, f"/{created['id']}")
    body = {"name": "x", "type": "api_key", "values": {"key": "k" * 20}}
    with anonymous(server) as anon:
        for method, path, kwargs in (("GET", url(org_b), {}), ("POST", url(org_b), {"json": body}),
                                     ("GET", item, {}), ("PATCH", item, {"json": {}}),
                                     ("DELETE", item, {})):
            assert anon.request(method, path, **kwargs).status_code == 401
    # Another organization's members and keys: 404, the same body as a missing credential.
    key_a = api_key_client(server, org_a.api_keys["admin"])
    missing = url(org_b, f"/{uuid.uuid4()}")
    for attacker in (org_a.admin.client, key_a):
        for method, path, kwargs in (("GET", url(org_b), {}), ("POST", url(org_b), {"json": body}),
                                     ("GET", item, {}), ("PATCH", item, {"json": {}}),
                                     ("DELETE", item, {})):
            response = attacker.request(method, path, **kwargs)
            assert response.status_code == 404 and response.json() == EXPECTED_404, path
        # ... and org A's own routes with B's credential id: the same 404 as a random id.
        for method, kwargs in (("GET", {}), ("PATCH", {"json": {"description": "x"}}),
                               ("DELETE", {})):
            mine = attacker.request(method, url(org_a, f"/{created['id']}"), **kwargs)
            random = attacker.request(method, url(org_a, f"/{uuid.uuid4()}"), **kwargs)
            assert mine.status_code == 404 and mine.json() == random.json() == EXPECTED_404
    key_a.close()
    assert missing  # (the random ids above stand for it)
    # Own members: admins manage; builders and operators list names; viewers nothing.
    for role in ("builder", "operator", "viewer"):
        key = api_key_client(server, org_b.api_keys[role])
        for actor in (org_b.members[role].client, key):
            listed = actor.get(url(org_b))
            if role == "viewer":
                assert listed.status_code == 403
            else:
                assert listed.status_code == 200
                assert listed.json() == [{"id": created["id"], "name": "deploy-key",
                                          "type": "api_key", "fields": ["key"],
                                          "allowed_hosts": []}]
            for method, path, kwargs in (("POST", url(org_b), {"json": body}),
                                         ("GET", item, {}),
                                         ("PATCH", item, {"json": {"description": "x"}}),
                                         ("DELETE", item, {})):
                response = actor.request(method, path, **kwargs)
                assert response.status_code == 403, (role, method, path)
                assert response.json()["error"]["code"] == "forbidden"
        key.close()
    assert [c.name for c in rows(server, org_b)] == ["deploy-key"]
    assert rows(server, org_a) == []


def test_values_are_write_only_and_every_change_is_audited(server: Server, org_a: Org) -> None:
    admin = org_a.admin.client
    secrets_used = {t: canary(t) for t in ("key", "token", "user", "password", "access",
                                           "refresh", "client", "custom1", "custom2")}
    bodies = [
        {"name": "openai", "type": "api_key", "values": {"key": secrets_used["key"]},
         "provider": "openai", "description": "model key"},
        {"name": "github", "type": "bearer_token", "values": {"token": secrets_used["token"]}},
        {"name": "jira", "type": "basic_auth", "values": {"username": secrets_used["user"],
                                                          "password": secrets_used["password"]}},
        {"name": "gmail", "type": "oauth2",
         "values": {"access_token": secrets_used["access"],
                    "refresh_token": secrets_used["refresh"],
                    "client_secret": secrets_used["client"]},
         "token_url": "https://oauth2.example.com/token", "client_id": "enginex",
         "scope": "mail.read", "expires_at": "2030-01-01T00:00:00Z"},
        {"name": "legacy", "type": "custom", "values": {"tenant": secrets_used["custom1"],
                                                        "secret": secrets_used["custom2"]}},
    ]
    responses = [admin.post(url(org_a), json=body) for body in bodies]
    assert [r.status_code for r in responses] == [201] * 5, [r.text for r in responses]
    by_name = {r.json()["name"]: r.json() for r in responses}
    assert by_name["openai"]["hint"] == "****" + secrets_used["key"][-4:]
    assert by_name["openai"]["provider"] == "openai"
    assert by_name["gmail"]["fields"] == ["access_token", "client_secret", "refresh_token"]
    assert by_name["gmail"]["token_url"] == "https://oauth2.example.com/token"
    assert by_name["gmail"]["expires_at"].startswith("2030-01-01")
    assert by_name["jira"]["hint"] is None and by_name["legacy"]["fields"] == ["secret", "tenant"]
    assert by_name["openai"]["created_by"] == org_a.admin.user_id

    seen = [r.text for r in responses]
    seen.append(admin.get(url(org_a)).text)
    seen += [admin.get(url(org_a, f"/{c['id']}")).text for c in by_name.values()]
    # Replace values; rename; a duplicate name; bad bodies -- none may echo a value.
    new_token = canary("new-token")
    secrets_used["new"] = new_token
    github = by_name["github"]
    replaced = admin.patch(url(org_a, f"/{github['id']}"),
                           json={"values": {"token": new_token}, "name": "github-bot"})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["value_version"] == 2 and replaced.json()["name"] == "github-bot"
    duplicate = admin.post(url(org_a), json={**bodies[0], "values": {"key": canary()}})
    assert duplicate.status_code == 409 and duplicate.json()["error"]["details"] == {
        "field": "name"}
    invalid = [
        ({"name": "x1", "type": "api_key", "values": {"token": secrets_used["key"]}}, "values"),
        ({"name": "x2", "type": "basic_auth", "values": {"username": secrets_used["user"]}},
         "values"),
        ({"name": "x3", "type": "api_key", "values": {"key": secrets_used["key"] + "\n"}},
         "values"),
        ({"name": "Bad Name", "type": "api_key", "values": {"key": secrets_used["key"]}},
         "name"),
        ({"name": "x4", "type": "api_key", "values": {"key": "k" * 9000}}, "values.key"),
        ({"name": "x5", "type": "rsa_key", "values": {"key": secrets_used["key"]}}, "type"),
        ({"name": "x6", "type": "api_key", "values": {"key": secrets_used["key"]},
          "token_url": "https://example.com/token"}, "token_url"),
        ({"name": "x7", "type": "oauth2", "values": {"access_token": secrets_used["access"]},
          "token_url": "http://169.254.169.254/token"}, "token_url"),
        ({"name": "x8", "type": "custom", "values": {"Not-A-Field": secrets_used["custom1"]}},
         "values.Not-A-Field"),
        ({"name": "x9", "type": "api_key", "values": {"key": secrets_used["key"]},
          "expires_at": "2030-01-01"}, "expires_at"),
    ]
    for body, field in invalid:
        response = admin.post(url(org_a), json=body)
        assert response.status_code == 422, (body["name"], response.text)
        error = response.json()["error"]
        fields = {e["field"] for e in error["details"].get("errors", [])} | {
            error["details"].get("field")}
        assert any(f and f.startswith(field) for f in fields), (body["name"], error)
        seen.append(response.text)
    seen.append(admin.patch(url(org_a, f"/{github['id']}"), json={"values": None}).text)
    for text in seen:
        for value in secrets_used.values():
            assert value not in text
    # Delete: gone from the list, 404 afterwards.
    assert admin.delete(url(org_a, f"/{by_name['legacy']['id']}")).status_code == 204
    assert admin.get(url(org_a, f"/{by_name['legacy']['id']}")).status_code == 404
    assert sorted(c["name"] for c in admin.get(url(org_a)).json()) == [
        "github-bot", "gmail", "jira", "openai"]

    entries = audit(server, org_a)
    assert [e.action for e in entries].count("credential.created") == 5
    updated = [e for e in entries if e.action == "credential.updated"]
    assert updated[0].details == {"name": "github-bot", "changed": ["name", "values"]}
    assert [e.details["name"] for e in entries if e.action == "credential.deleted"] == ["legacy"]
    assert all(e.actor_id == uuid.UUID(org_a.admin.user_id) for e in entries)
    dumped = json.dumps([e.details for e in entries])
    assert not any(value in dumped for value in secrets_used.values())


def test_ciphertexts_are_bound_to_tenant_row_and_version(server: Server, org_a: Org,
                                                         org_b: Org) -> None:
    """Copying ciphertexts across tenants and rows, or back to an older value version, fails
    every time; the right row decrypts."""
    values = {}
    for org in (org_a, org_b):
        for i in range(3):
            value = canary(f"{org.slug}-{i}")
            created = create(org, name=f"key-{i}", type="api_key", values={"key": value})
            values[created["id"]] = value
    first_a = rows(server, org_a)[0]
    before_update = first_a.ciphertext
    replaced = org_a.admin.client.patch(url(org_a, f"/{first_a.id}"),
                                        json={"values": {"key": canary("replaced")}})
    assert replaced.status_code == 200
    all_rows = rows(server, org_a) + rows(server, org_b)
    ring = keyring(server)
    for row in all_rows:
        assert not any(v.encode() in row.ciphertext for v in values.values())

    async def attempts(session: Any, org: Org) -> tuple[int, int, int]:
        await set_tenant(session, uuid.UUID(org.id))
        targets = list((await session.execute(select(Credential))).scalars())
        opened = refused = 0
        for target in targets:
            original = target.ciphertext
            assert (await open_values(session, target, ring))["key"]  # the row's own: opens
            opened += 1
            foreign = [r.ciphertext for r in all_rows if r.id != target.id] + (
                [before_update] if target.id == first_a.id else [])
            for blob in foreign:
                target.ciphertext = blob
                with pytest.raises(CredentialUnusable, match="cannot be decrypted"):
                    await open_values(session, target, ring)
                refused += 1
            target.ciphertext = original
        await session.rollback()
        return opened, refused, len(targets)

    for org in (org_a, org_b):
        opened, refused, count = run_db(server, lambda s, org=org: attempts(s, org))
        assert opened == count == 3
        assert refused == count * (len(all_rows) - 1) + (1 if org is org_a else 0)

    # Through the product: org B's credential row given org A's ciphertext (a database-level
    # attacker) cannot be used, and nothing about A's value comes back.
    async def swap(session: Any) -> None:
        await set_tenant(session, uuid.UUID(org_b.id))
        target = (await session.execute(select(Credential).where(
            Credential.name == "key-0"))).scalar_one()
        target.ciphertext = first_a.ciphertext

    run_db(server, swap)
    own = org_b.admin.client.get(url(org_b))
    assert own.status_code == 200 and not any(v in own.text for v in values.values())


def test_data_keys_are_per_tenant_and_stored_wrapped(server: Server, org_a: Org,
                                                     org_b: Org) -> None:
    for org in (org_a, org_b):
        create(org, name="k", type="bearer_token", values={"token": canary()})

    def keys(org: Org) -> list[TenantKey]:
        async def work(session: Any) -> list[TenantKey]:
            await set_tenant(session, uuid.UUID(org.id))
            return list((await session.execute(select(TenantKey))).scalars())
        return run_db(server, work)

    key_a, key_b = keys(org_a), keys(org_b)
    assert [k.version for k in key_a] == [k.version for k in key_b] == [1]
    ring = keyring(server)
    assert key_a[0].kek_id == key_b[0].kek_id == ring.current.id
    dek_a, dek_b = ring.unwrap(key_a[0]), ring.unwrap(key_b[0])
    assert len(dek_a) == 32 and dek_a != dek_b
    assert dek_a not in key_a[0].wrapped_key and dek_b not in key_b[0].wrapped_key
