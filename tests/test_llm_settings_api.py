"""LLM settings of an organization, through real HTTP (SQLite and PostgreSQL).

Threat model: only the org's admins change the settings; the API key is write-only (never in
a response, the audit log or an error message); the stored ciphertext is not the key and
cannot be moved to another organization's row; a base URL pointing at the platform's own
network is refused unless the deployment allows private networks; and an agent only ever gets
its own organization's provider.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from enginex.agents.manifest import AgentManifest
from enginex.audit.models import AuditEntry
from enginex.db import set_tenant
from enginex.kit.errors import NOT_FOUND_MESSAGE
from enginex.llm.base import CompletionRequest, LLMError, Message
from enginex.llm.models import LLMSettings
from enginex.llm.providers import OpenAICompatibleProvider, ScriptedProvider
from enginex.llm.service import KeyDecryptionError, LLMKeyBox, close_provider, provider_for
from enginex.tenancy.context import system_context
from tests.factories import Org, Server, anonymous, api_key_client, private_network, run_db
from tests.fake_llm import FakeLLM, FakeReply

KEY = "sk-live-Qw3rTy8UiOp5AsDf"
EXPECTED_404 = {"error": {"code": "not_found", "message": NOT_FOUND_MESSAGE, "details": {}}}


def url(org: Org | str) -> str:
    return f"/api/v1/orgs/{org if isinstance(org, str) else org.slug}/settings/llm"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server



def openai_body(fake: FakeLLM, **extra: Any) -> dict[str, Any]:
    return {"provider": "openai_compatible", "base_url": fake.openai_base_url,
            "default_model": "gpt-fake", **extra}


def stored_row(server: Server, org: Org) -> LLMSettings | None:
    async def work(session: Any) -> LLMSettings | None:
        await set_tenant(session, uuid.UUID(org.id))
        return (await session.execute(select(LLMSettings))).scalar_one_or_none()

    return run_db(server, work)


def test_access_rules(server: Server, org_a: Org, org_b: Org) -> None:
    body = {"provider": "scripted"}
    with anonymous(server) as anon:
        assert anon.get(url(org_b)).status_code == 401
        assert anon.put(url(org_b), json=body).status_code == 401
        assert anon.post(url(org_b) + "/test").status_code == 401
    # Another organization's member or key: 404, the same body as an organization that
    # does not exist.
    key_a = api_key_client(server, org_a.api_keys["admin"])
    for attacker in (org_a.admin.client, key_a):
        for method, suffix, kwargs in (("GET", "", {}), ("PUT", "", {"json": body}),
                                       ("POST", "/test", {})):
            response = attacker.request(method, url(org_b) + suffix, **kwargs)
            missing = attacker.request(method, url("no-such-org") + suffix, **kwargs)
            assert response.status_code == 404 and response.json() == EXPECTED_404
            assert missing.json() == EXPECTED_404
    key_a.close()
    # Own members: admins write; builders read; operators and viewers neither.
    for role in ("builder", "operator", "viewer"):
        key = api_key_client(server, org_b.api_keys[role])
        for actor in (org_b.members[role].client, key):
            assert actor.put(url(org_b), json=body).status_code == 403
            assert actor.post(url(org_b) + "/test").status_code == 403
            expected = 200 if role == "builder" else 403
            assert actor.get(url(org_b)).status_code == expected
        key.close()
    assert org_b.admin.client.put(url(org_b), json=body).status_code == 200
    assert stored_row(server, org_a) is None  # nothing was written to the attacker's org


def test_key_is_write_only_and_kept_until_cleared(server: Server, org_a: Org,
                                                  fake: FakeLLM) -> None:
    admin = org_a.admin.client
    default = admin.get(url(org_a))
    assert default.status_code == 200
    assert default.json() | {"updated_at": None} == {
        "provider": "scripted", "base_url": None, "default_model": "scripted",
        "temperature": None, "max_tokens": None, "has_api_key": False, "updated_at": None}

    with private_network(server, True):
        saved = admin.put(url(org_a), json=openai_body(fake, api_key=KEY, temperature=0.5,
                                                       max_tokens=300))
        assert saved.status_code == 200, saved.text
        assert KEY not in saved.text
        assert saved.json()["has_api_key"] is True and saved.json()["temperature"] == 0.5
        read = org_a.members["builder"].client.get(url(org_a))
        assert read.json()["has_api_key"] is True and KEY not in read.text
        assert "api_key" not in read.json()

        # PUT replaces every field except the key: omitting the key keeps it, and the test
        # connection still sends it.
        kept = admin.put(url(org_a), json=openai_body(fake, default_model="gpt-other",
                                                      temperature=0.5))
        assert kept.json()["has_api_key"] is True and kept.json()["max_tokens"] is None
        fake.queue(FakeReply(text="ok", usage=(5, 1)))
        before = len(fake.requests)
        tested = admin.post(url(org_a) + "/test")
        assert tested.status_code == 200, tested.text
        result = tested.json()
        assert result["ok"] is True and result["model"] == "gpt-other"
        assert result["provider"] == "openai_compatible" and result["latency_ms"] >= 0
        sent = fake.requests[before]
        assert sent.headers["authorization"] == f"Bearer {KEY}"
        assert sent.body["model"] == "gpt-other" and sent.body["temperature"] == 0.5

        # A provider error is reported (200, ok false) without the key, even if echoed.
        fake.queue(FakeReply(status=401, echo_key=True))
        failed = admin.post(url(org_a) + "/test").json()
        assert failed["ok"] is False and "HTTP 401" in failed["message"]
        assert KEY not in failed["message"]

        cleared = admin.put(url(org_a), json=openai_body(fake, api_key=""))
        assert cleared.json()["has_api_key"] is False
        assert stored_row(server, org_a).api_key_ciphertext is None

    audit = audit_entries(server, org_a)
    updates = [e for e in audit if e.action == "llm_settings.updated"]
    assert [e.details["api_key"] for e in updates] == ["set", "kept", "cleared"]
    assert {e.action for e in audit} >= {"llm_settings.updated", "llm_settings.tested"}
    assert KEY not in json.dumps([e.details for e in audit])


def audit_entries(server: Server, org: Org) -> list[AuditEntry]:
    async def work(session: Any) -> list[AuditEntry]:
        await set_tenant(session, uuid.UUID(org.id))
        stmt = select(AuditEntry).where(AuditEntry.target_kind == "llm_settings") \
            .order_by(AuditEntry.at)
        return list((await session.execute(stmt)).scalars())

    return run_db(server, work)


def test_ciphertext_is_not_the_key_and_is_bound_to_its_tenant(
        server: Server, org_a: Org, org_b: Org, fake: FakeLLM) -> None:
    with private_network(server, True):
        for org in (org_a, org_b):
            response = org.admin.client.put(url(org), json=openai_body(fake, api_key=KEY))
            assert response.status_code == 200, response.text
    blob_a = stored_row(server, org_a).api_key_ciphertext
    blob_b = stored_row(server, org_b).api_key_ciphertext
    assert blob_a and blob_b and blob_a != blob_b  # fresh nonce per encryption
    assert KEY.encode() not in blob_a and KEY not in blob_a.hex()
    box = LLMKeyBox(server.app.state.master_key)
    assert box.decrypt(uuid.UUID(org_a.id), blob_a) == KEY
    with pytest.raises(KeyDecryptionError):
        box.decrypt(uuid.UUID(org_b.id), blob_a)

    # Copy org A's ciphertext into org B's row (as a database-level attacker might).
    async def copy(session: Any) -> None:
        await set_tenant(session, uuid.UUID(org_b.id))
        row = (await session.execute(select(LLMSettings))).scalar_one()
        row.api_key_ciphertext = blob_a

    run_db(server, copy)
    with private_network(server, True):
        result = org_b.admin.client.post(url(org_b) + "/test").json()
    assert result["ok"] is False and "cannot be decrypted" in result["message"]


INVALID_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"provider": "openai_compatible", "default_model": "m"}, "base_url"),
    ({"provider": "openai_compatible", "base_url": "https://api.example.com/v1"},
     "default_model"),
    ({"provider": "anthropic"}, "default_model"),
    ({"provider": "bogus"}, "provider"),
    ({"provider": "scripted", "temperature": "0.5"}, "temperature"),
    ({"provider": "scripted", "temperature": 3}, "temperature"),
    ({"provider": "scripted", "max_tokens": 0}, "max_tokens"),
    ({"provider": "scripted", "api_key_ciphertext": "x"}, "api_key_ciphertext"),
    ({"provider": "openai_compatible", "default_model": "m",
      "base_url": "ftp://api.example.com/"}, "base_url"),
    ({"provider": "openai_compatible", "default_model": "m",
      "base_url": "https://user:pw@api.example.com/"}, "base_url"),
]


def test_refused_bodies_and_base_urls_store_nothing(server: Server, org_a: Org,
                                                    fake: FakeLLM) -> None:
    admin = org_a.admin.client
    for body, field in INVALID_BODIES:
        response = admin.put(url(org_a), json=body)
        assert response.status_code == 422, (body, response.text)
        error = response.json()["error"]
        fields = {e["field"] for e in error["details"].get("errors", [])} | {
            error["details"].get("field")}
        assert field in fields, (body, error)
    assert stored_row(server, org_a) is None
    with private_network(server, False):
        refused = admin.put(url(org_a), json=openai_body(fake, api_key=KEY))
        assert refused.status_code == 422
        error = refused.json()["error"]
        assert error["code"] == "egress_refused" and error["details"]["field"] == "base_url"
        assert "loopback" in error["message"] and KEY not in refused.text
        assert stored_row(server, org_a) is None
    with private_network(server, True):
        metadata = admin.put(url(org_a), json=openai_body(
            fake, base_url="http://169.254.169.254/v1"))
        assert metadata.status_code == 422 and "cloud metadata" in metadata.text
        assert admin.put(url(org_a), json=openai_body(fake, api_key=KEY)).status_code == 200
    # Saved while allowed; once the deployment stops allowing it, runs and tests refuse it.
    with private_network(server, False):
        before = len(fake.requests)
        result = admin.post(url(org_a) + "/test").json()
        assert result["ok"] is False and "loopback" in result["message"]
        assert len(fake.requests) == before


def test_provider_for_uses_only_the_orgs_own_settings(server: Server, org_a: Org, org_b: Org,
                                                      fake: FakeLLM) -> None:
    manifest = AgentManifest.model_validate({
        "agent": {"id": "echo", "name": "Echo", "version": "1.0.0"},
        "graph": {"entry_node": "talk", "nodes": [
            {"id": "talk", "node_type": "llm", "output_keys": ["answer"]}]},
        "scripted_replies": {"talk": ["scripted answer"]}})
    with private_network(server, True):
        response = org_a.admin.client.put(url(org_a), json=openai_body(fake, api_key=KEY))
        assert response.status_code == 200
    master = server.app.state.master_key
    request = CompletionRequest(messages=(Message("user", "hi"),), tools=(), model="default",
                                node_id="talk")

    def provider_of(org: Org) -> tuple[Any, Any]:
        async def work(session: Any) -> tuple[Any, Any]:
            await set_tenant(session, uuid.UUID(org.id))
            provider = await provider_for(session, system_context(uuid.UUID(org.id), org.slug),
                                          manifest, master_key=master,
                                          allow_private_network=True)
            try:
                return provider, await provider.complete(request)
            finally:
                await close_provider(provider)

        return run_db(server, work)

    async def refused(session: Any) -> None:
        await set_tenant(session, uuid.UUID(org_a.id))
        with pytest.raises(LLMError, match="loopback"):
            await provider_for(session, system_context(uuid.UUID(org_a.id), org_a.slug),
                               manifest, key_box=LLMKeyBox(master), allow_private_network=False)

    fake.queue(FakeReply(text="from the fake model"))
    a_provider, a_reply = provider_of(org_a)
    b_provider, b_reply = provider_of(org_b)
    assert isinstance(a_provider, OpenAICompatibleProvider)
    assert a_reply.text == "from the fake model"
    assert fake.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    assert isinstance(b_provider, ScriptedProvider)  # org B saved nothing: scripted
    assert b_reply.text == "scripted answer"
    run_db(server, refused)
