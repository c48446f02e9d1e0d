"""LLM providers and model aliases of an organization, through real HTTP (SQLite and
PostgreSQL), and the resolution of an llm node's model.

Threat model: only the org's admins change providers and aliases; a provider's key lives in an
org credential, is read at the moment of use (audited, redacted from the run) and never
appears in a response, an audit entry or an error; a base URL pointing at the platform's own
network is refused unless the deployment allows it; a model outside a provider's allowed list
is refused; and an agent of one organization never reaches another organization's providers,
aliases or credentials, even when both use the same names.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from enginex.agents.cli import zip_directory
from enginex.agents.manifest import AgentManifest, LLMNode
from enginex.audit.models import AuditEntry
from enginex.db import set_tenant
from enginex.kit.errors import NOT_FOUND_MESSAGE
from enginex.llm.base import CompletionRequest, LLMError, LLMResponse, Message
from enginex.llm.providers import ScriptedProvider
from enginex.llm.service import (
    LLMKeyBox,
    ResolvedProvider,
    close_provider,
    provider_for,
    uses_quick_setup,
)
from enginex.tenancy.context import system_context
from tests.factories import (
    Org,
    Server,
    anonymous,
    api_key_client,
    private_network,
    run_db,
    wait_for_status,
)
from tests.fake_llm import FakeLLM, FakeReply

EXPECTED_404 = {"error": {"code": "not_found", "message": NOT_FOUND_MESSAGE, "details": {}}}


def base(org: Org | str) -> str:
    return f"/api/v1/orgs/{org if isinstance(org, str) else org.slug}/llm"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server



def canary(label: str) -> str:
    return f"sk-{label}-{secrets.token_hex(12)}"


def add_credential(org: Org, name: str, type_: str, values: dict[str, str]) -> None:
    response = org.admin.client.post(f"/api/v1/orgs/{org.slug}/credentials",
                                     json={"name": name, "type": type_, "values": values})
    assert response.status_code == 201, response.text


def add_provider(org: Org, **body: Any) -> dict[str, Any]:
    response = org.admin.client.post(f"{base(org)}/providers", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def set_alias(org: Org, alias: str, **body: Any) -> dict[str, Any]:
    response = org.admin.client.put(f"{base(org)}/aliases/{alias}", json=body)
    assert response.status_code in (200, 201), response.text
    return response.json()


def audit(server: Server, org: Org, *prefixes: str) -> list[AuditEntry]:
    async def work(session: Any) -> list[AuditEntry]:
        await set_tenant(session, uuid.UUID(org.id))
        stmt = select(AuditEntry).order_by(AuditEntry.seq)
        return [e for e in (await session.execute(stmt)).scalars()
                if e.action.startswith(prefixes)]

    return run_db(server, work)


def error_fields(response: Any) -> set[str]:
    error = response.json()["error"]
    return {e["field"] for e in error["details"].get("errors", [])} | {
        error["details"].get("field")}


# --- access ------------------------------------------------------------------------------------


def test_access_rules(server: Server, org_a: Org, org_b: Org) -> None:
    provider = add_provider(org_b, name="local", kind="scripted")
    set_alias(org_b, "fast", provider="local", model="m")
    pid = provider["id"]
    routes: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/providers", {}),
        ("POST", "/providers", {"json": {"name": "x", "kind": "scripted"}}),
        ("GET", f"/providers/{pid}", {}),
        ("PATCH", f"/providers/{pid}", {"json": {"allowed_models": []}}),
        ("DELETE", f"/providers/{pid}", {}),
        ("POST", f"/providers/{pid}/test", {}),
        ("GET", "/aliases", {}),
        ("PUT", "/aliases/fast", {"json": {"provider": "local", "model": "m"}}),
        ("DELETE", "/aliases/fast", {}),
    ]
    with anonymous(server) as anon:
        for method, path, kwargs in routes:
            response = anon.request(method, base(org_b) + path, **kwargs)
            assert response.status_code == 401, (method, path)
    # Another organization's members and keys: 404 with the body of a missing object.
    key_a = api_key_client(server, org_a.api_keys["admin"])
    for attacker in (org_a.admin.client, key_a):
        for method, path, kwargs in routes:
            response = attacker.request(method, base(org_b) + path, **kwargs)
            missing = attacker.request(method, base("no-such-org") + path, **kwargs)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json() == EXPECTED_404 == missing.json()
        # Its own organization has no such provider id or alias either: the same 404.
        for method, path in (("GET", f"/providers/{pid}"), ("DELETE", "/aliases/fast"),
                             ("DELETE", f"/providers/{pid}"),
                             ("POST", f"/providers/{pid}/test")):
            response = attacker.request(method, base(org_a) + path)
            assert response.status_code == 404 and response.json() == EXPECTED_404
        patched = attacker.patch(f"{base(org_a)}/providers/{pid}", json={"name": "stolen"})
        assert patched.status_code == 404 and patched.json() == EXPECTED_404
    key_a.close()
    # Own members: admins write; builders read; operators and viewers neither.
    for role in ("builder", "operator", "viewer"):
        key = api_key_client(server, org_b.api_keys[role])
        for actor in (org_b.members[role].client, key):
            for method, path, kwargs in routes:
                response = actor.request(method, base(org_b) + path, **kwargs)
                expected = 200 if role == "builder" and method == "GET" else 403
                assert response.status_code == expected, (role, method, path, response.text)
        key.close()
    listed = org_b.members["builder"].client.get(f"{base(org_b)}/providers").json()
    assert [(p["name"], p["aliases"]) for p in listed] == [("local", ["fast"])]
    assert org_a.admin.client.get(f"{base(org_a)}/providers").json() == []
    assert org_a.admin.client.get(f"{base(org_a)}/aliases").json() == []


# --- providers and aliases ---------------------------------------------------------------------


def test_providers_and_aliases_are_validated_and_audited(server: Server, org_a: Org,
                                                         fake: FakeLLM) -> None:
    admin = org_a.admin.client
    key = canary("provider")
    add_credential(org_a, "openai-key", "bearer_token", {"token": key})
    add_credential(org_a, "login", "basic_auth", {"username": "u", "password": "p" * 8})
    good = {"name": "openai", "kind": "openai_compatible", "base_url": fake.openai_base_url,
            "credential_name": "openai-key", "allowed_models": ["gpt-a", "gpt-b", "gpt-a"]}
    invalid: list[tuple[dict[str, Any], str]] = [
        ({**good, "name": "Open AI"}, "name"),
        ({**good, "name": "x" * 41}, "name"),
        ({**good, "kind": "bogus"}, "kind"),
        ({**good, "base_url": None}, "base_url"),
        ({**good, "kind": "anthropic", "credential_name": None}, "credential_name"),
        ({**good, "credential_name": "no-such-credential"}, "credential_name"),
        ({**good, "credential_name": "login"}, "credential_name"),
        ({"name": "s", "kind": "scripted", "base_url": "https://api.example.com"}, "base_url"),
        ({**good, "allowed_models": ["has space"]}, "allowed_models"),
        ({**good, "allowed_models": "gpt-a"}, "allowed_models"),
        ({**good, "api_key": key}, "api_key"),
        ({**good, "base_url": "ftp://api.example.com/"}, "base_url"),
    ]
    with private_network(server, True):
        for body, field in invalid:
            response = admin.post(f"{base(org_a)}/providers", json=body)
            assert response.status_code == 422, (body, response.text)
            assert any(f and f.split(".")[0] == field for f in error_fields(response)), \
                (body, response.text)
            assert key not in response.text
    with private_network(server, False):
        refused = admin.post(f"{base(org_a)}/providers", json=good)
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["code"] == "egress_refused" and error["details"]["field"] == "base_url"
        assert "loopback" in error["message"]
    assert admin.get(f"{base(org_a)}/providers").json() == []

    with private_network(server, True):
        created = add_provider(org_a, **good)
        assert created["allowed_models"] == ["gpt-a", "gpt-b"]  # duplicates dropped
        assert created["credential_name"] == "openai-key" and key not in json.dumps(created)
        taken = admin.post(f"{base(org_a)}/providers", json=good)
        assert taken.status_code == 409 and "already exists" in taken.json()["error"]["message"]
    other = add_provider(org_a, name="offline", kind="scripted")
    pid = created["id"]

    # Aliases: the model must be allowed; the provider must be the org's.
    not_allowed = admin.put(f"{base(org_a)}/aliases/fast",
                            json={"provider": "openai", "model": "gpt-z"})
    assert not_allowed.status_code == 422 and error_fields(not_allowed) >= {"model"}
    assert "gpt-a, gpt-b" in not_allowed.json()["error"]["message"]
    unknown = admin.put(f"{base(org_a)}/aliases/fast", json={"provider": "nope", "model": "m"})
    assert unknown.status_code == 422 and "its providers: offline, openai" in unknown.text
    bad_name = admin.put(f"{base(org_a)}/aliases/Fast!", json={"provider": "openai",
                                                                "model": "gpt-a"})
    assert bad_name.status_code == 422 and "not a valid alias name" in bad_name.text
    for body, field in (({"provider": "openai", "model": "gpt-a", "temperature": 3},
                         "temperature"),
                        ({"provider": "openai", "model": "gpt-a", "max_tokens": 0},
                         "max_tokens"),
                        ({"provider": "openai"}, "model"),
                        ({"provider": "openai", "model": "gpt-a", "temperature": "0.5"},
                         "temperature")):
        response = admin.put(f"{base(org_a)}/aliases/fast", json=body)
        assert response.status_code == 422 and field in error_fields(response), body
    first = admin.put(f"{base(org_a)}/aliases/fast", json={
        "provider": "openai", "model": "gpt-a", "temperature": 0.25, "max_tokens": 64})
    assert first.status_code == 201, first.text
    assert first.json() | {"updated_at": None} == {
        "name": "fast", "provider": "openai", "provider_id": pid, "model": "gpt-a",
        "temperature": 0.25, "max_tokens": 64, "updated_at": None}
    replaced = admin.put(f"{base(org_a)}/aliases/fast",
                         json={"provider": "openai", "model": "gpt-b"})
    assert replaced.status_code == 200 and replaced.json()["temperature"] is None
    set_alias(org_a, "smart.v2", provider="openai", model="gpt-a")
    assert [a["name"] for a in admin.get(f"{base(org_a)}/aliases").json()] == [
        "fast", "smart.v2"]

    # A provider in use cannot lose the models its aliases use, nor be deleted.
    stranded = admin.patch(f"{base(org_a)}/providers/{pid}", json={"allowed_models": ["gpt-b"]})
    assert stranded.status_code == 422 and "smart.v2 (gpt-a)" in stranded.text
    in_use = admin.delete(f"{base(org_a)}/providers/{pid}")
    assert in_use.status_code == 409
    assert in_use.json()["error"]["details"]["aliases"] == ["fast", "smart.v2"]
    assert "fast, smart.v2" in in_use.json()["error"]["message"]
    renamed = admin.patch(f"{base(org_a)}/providers/{pid}",
                          json={"name": "offline"})
    assert renamed.status_code == 409
    nulled = admin.patch(f"{base(org_a)}/providers/{pid}", json={"name": None})
    assert nulled.status_code == 422 and error_fields(nulled) >= {"name"}
    with private_network(server, True):
        patched = admin.patch(f"{base(org_a)}/providers/{pid}",
                              json={"name": "oai", "allowed_models": []})
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "oai" and patched.json()["allowed_models"] == []
    assert patched.json()["aliases"] == ["fast", "smart.v2"]
    switched = admin.patch(f"{base(org_a)}/providers/{other['id']}",
                           json={"kind": "openai_compatible"})
    assert switched.status_code == 422 and error_fields(switched) >= {"base_url"}

    assert admin.delete(f"{base(org_a)}/aliases/fast").status_code == 204
    assert admin.delete(f"{base(org_a)}/aliases/fast").json() == EXPECTED_404
    assert admin.delete(f"{base(org_a)}/aliases/smart.v2").status_code == 204
    assert admin.delete(f"{base(org_a)}/providers/{pid}").status_code == 204
    assert admin.get(f"{base(org_a)}/providers/{pid}").json() == EXPECTED_404

    entries = audit(server, org_a, "llm_provider.", "model_alias.")
    actions = [e.action for e in entries]
    assert actions.count("llm_provider.created") == 2
    assert {"llm_provider.updated", "llm_provider.deleted", "model_alias.set",
            "model_alias.deleted"} <= set(actions)
    sets = [e.details for e in entries if e.action == "model_alias.set"]
    assert sets[0] | {"provider_id": None} == {
        "alias": "fast", "provider": "openai", "provider_id": None, "model": "gpt-a",
        "temperature": 0.25, "max_tokens": 64, "created": True}
    assert key not in json.dumps([e.details for e in entries])


# --- resolution --------------------------------------------------------------------------------

MANIFEST = AgentManifest.model_validate({
    "agent": {"id": "echo", "name": "Echo", "version": "1.0.0"},
    "graph": {"entry_node": "talk", "nodes": [
        {"id": "talk", "node_type": "llm", "output_keys": ["answer"]}]},
    "scripted_replies": {"talk": ["scripted answer"]}})


def node(model: str) -> LLMNode:
    return LLMNode.model_validate({"id": "talk", "node_type": "llm", "model": model,
                                   "output_keys": ["answer"]})


def ask(server: Server, org: Org, model: str) -> tuple[Any, LLMResponse]:
    """Resolve ``model`` in ``org`` with provider_for and send one request (model "default"
    in the request, as the engine sends the node's model)."""
    master = server.app.state.master_key

    async def work(session: Any) -> tuple[Any, LLMResponse]:
        await set_tenant(session, uuid.UUID(org.id))
        provider = await provider_for(session, system_context(uuid.UUID(org.id), org.slug),
                                      MANIFEST, node(model), key_box=LLMKeyBox(master),
                                      allow_private_network=True)
        try:
            return provider, await provider.complete(CompletionRequest(
                messages=(Message("user", "hi"),), tools=(), model=model, node_id="talk"))
        finally:
            await close_provider(provider)

    return run_db(server, work)


def refused(server: Server, org: Org, model: str) -> str:
    try:
        ask(server, org, model)
    except LLMError as exc:
        return str(exc)
    raise AssertionError(f"{model} was not refused")


def test_resolution_order_allowed_models_and_cross_org_independence(
        server: Server, org_a: Org, org_b: Org, fake: FakeLLM) -> None:
    key_a = canary("key-a")
    add_credential(org_a, "oai", "custom", {"api_key": key_a, "org": "x" * 8})
    with private_network(server, True):
        add_provider(org_a, name="openai", kind="openai_compatible",
                     base_url=fake.openai_base_url, credential_name="oai",
                     allowed_models=["gpt-fast", "gpt-smart"])
    set_alias(org_a, "fast", provider="openai", model="gpt-fast", temperature=0.3,
              max_tokens=99)
    # Org B: the same alias name, pointing at its own offline provider.
    add_provider(org_b, name="offline", kind="scripted")
    set_alias(org_b, "fast", provider="offline", model="scripted-fast")

    # (a) an alias: its provider, model, temperature and max_tokens; the key from the
    # credential. The wire model is the resolved one, never the alias.
    fake.queue(FakeReply(text="from a"))
    provider, reply = ask(server, org_a, "fast")
    assert isinstance(provider, ResolvedProvider) and not uses_quick_setup(provider)
    sent = fake.requests[-1]
    assert reply.text == "from a"
    assert sent.body["model"] == "gpt-fast" and sent.body["temperature"] == 0.3
    assert sent.body["max_tokens"] == 99
    assert sent.headers["authorization"] == f"Bearer {key_a}"
    # (b) <provider>/<model>: that provider, no alias settings.
    fake.queue(FakeReply(text="smart"))
    provider, reply = ask(server, org_a, "openai/gpt-smart")
    assert fake.requests[-1].body["model"] == "gpt-smart"
    assert "temperature" not in fake.requests[-1].body
    # Allowed models are enforced; the message names them and where to change them.
    message = refused(server, org_a, "openai/gpt-huge")
    assert "gpt-fast, gpt-smart" in message and "/settings/llm" in message
    # An unknown provider lists only this organization's own providers.
    message = refused(server, org_a, "offline/scripted-fast")
    assert "'offline'" in message and "Its providers are: openai;" in message
    message = refused(server, org_b, "openai/gpt-fast")
    assert "Its providers are: offline;" in message and key_a not in message
    # (c) the quick setup: "default" and raw names (org A saved none: scripted).
    provider, reply = ask(server, org_a, "default")
    assert isinstance(provider, ScriptedProvider) and uses_quick_setup(provider)
    assert reply.text == "scripted answer"
    assert isinstance(ask(server, org_a, "gpt-raw")[0], ScriptedProvider)
    # Org B's "fast" is its own alias: the offline provider, with the model it names.
    before = len(fake.requests)
    provider, reply = ask(server, org_b, "fast")
    assert isinstance(provider, ResolvedProvider)
    assert provider.resolution.provider == "offline" and reply.model == "scripted-fast"
    assert len(fake.requests) == before  # org A's provider was never called

    # An alias named "default" takes precedence over the quick setup.
    set_alias(org_a, "default", provider="openai", model="gpt-smart")
    fake.queue(FakeReply(text="via default alias"))
    provider, reply = ask(server, org_a, "default")
    assert reply.text == "via default alias" and fake.requests[-1].body["model"] == "gpt-smart"
    # The quick setup answers x/y names only while the org has no providers at all.
    with private_network(server, True):
        saved = org_b.admin.client.put(f"/api/v1/orgs/{org_b.slug}/settings/llm", json={
            "provider": "openai_compatible", "base_url": fake.openai_base_url,
            "default_model": "gpt-quick"})
        assert saved.status_code == 200
    assert "Its providers are: offline;" in refused(server, org_b, "meta/llama")

    # Reading the key outside a run is audited as a credential use, without the key.
    uses = audit(server, org_a, "credential.used")
    assert uses and all(u.details["purpose"] == "llm_provider.run" for u in uses)
    assert uses[0].details["provider"] == "openai" and key_a not in json.dumps(
        [u.details for u in uses])
    # Saved while allowed; refused at use once the deployment stops allowing it.
    master = server.app.state.master_key

    async def refused_by_egress(session: Any) -> None:
        await set_tenant(session, uuid.UUID(org_a.id))
        with pytest.raises(LLMError, match="loopback"):
            await provider_for(session, system_context(uuid.UUID(org_a.id), org_a.slug),
                               MANIFEST, node("fast"), key_box=LLMKeyBox(master),
                               allow_private_network=False)

    run_db(server, refused_by_egress)


def test_provider_test_route(server: Server, org_a: Org, fake: FakeLLM) -> None:
    admin = org_a.admin.client
    key = canary("test-key")
    add_credential(org_a, "anthropic-key", "api_key", {"key": key})
    with private_network(server, True):
        anthropic = add_provider(org_a, name="claude", kind="anthropic", base_url=fake.base_url,
                                 credential_name="anthropic-key",
                                 allowed_models=["claude-small"])
        open_ended = add_provider(org_a, name="local", kind="openai_compatible",
                                  base_url=fake.openai_base_url)
        fake.queue(FakeReply(text="ok"))
        result = admin.post(f"{base(org_a)}/providers/{anthropic['id']}/test")
        assert result.status_code == 200, result.text
        assert result.json()["ok"] is True and result.json()["model"] == "claude-small"
        assert fake.requests[-1].path == "/v1/messages"
        sent = fake.requests[-1].headers
        assert key in (sent.get("x-api-key", ""), sent.get("authorization", "")
                       .removeprefix("Bearer "))
        # A provider error: 200, ok false, the key redacted even when echoed.
        fake.queue(FakeReply(status=401, echo_key=True))
        failed = admin.post(f"{base(org_a)}/providers/{anthropic['id']}/test").json()
        assert failed["ok"] is False and "HTTP 401" in failed["message"]
        assert key not in failed["message"]
        # No model to choose: 422 saying how to name one; with ?model= it runs.
        no_model = admin.post(f"{base(org_a)}/providers/{open_ended['id']}/test")
        assert no_model.status_code == 422 and "?model=" in no_model.text
        fake.queue(FakeReply(text="ok"))
        named = admin.post(f"{base(org_a)}/providers/{open_ended['id']}/test",
                           params={"model": "tiny"})
        assert named.json()["ok"] is True and fake.requests[-1].body["model"] == "tiny"
        assert "authorization" not in fake.requests[-1].headers  # keyless local server
        outside = admin.post(f"{base(org_a)}/providers/{anthropic['id']}/test",
                             params={"model": "claude-big"})
        assert outside.status_code == 422 and "claude-small" in outside.text
    with private_network(server, False):
        before = len(fake.requests)
        egress = admin.post(f"{base(org_a)}/providers/{anthropic['id']}/test").json()
        assert egress["ok"] is False and "loopback" in egress["message"]
        assert len(fake.requests) == before
    scripted = add_provider(org_a, name="offline", kind="scripted")
    offline = admin.post(f"{base(org_a)}/providers/{scripted['id']}/test").json()
    assert offline["ok"] is True and "'ok'" in offline["message"]

    tested = [e.details for e in audit(server, org_a, "llm_provider.tested")]
    assert [t["ok"] for t in tested] == [True, False, True, False, True]
    uses = [e.details for e in audit(server, org_a, "credential.used")]
    assert [u["purpose"] for u in uses] == ["llm_provider.test", "llm_provider.test"]
    assert key not in json.dumps(tested + uses)


# --- a real run --------------------------------------------------------------------------------


def deploy(org: Org, tmp_path: Path, manifest: dict[str, Any]) -> None:
    directory = tmp_path / f"pkg-{secrets.token_hex(4)}"
    directory.mkdir()
    (directory / "agent.json").write_text(json.dumps(manifest))
    response = org.members["builder"].client.post(
        f"/api/v1/orgs/{org.slug}/agents",
        files={"package": ("package.zip", zip_directory(directory), "application/zip")})
    assert response.status_code in (200, 201), response.text


def stored_text(org: Org, run_id: str) -> str:
    client = org.admin.client
    url = f"/api/v1/orgs/{org.slug}/sessions/{run_id}"
    return "\n".join(client.get(url + suffix).text for suffix in ("", "/events",
                                                                   "/checkpoints"))


def test_a_run_reaches_the_alias_provider_with_the_credential_key(
        server: Server, org_a: Org, org_b: Org, fake: FakeLLM, tmp_path: Path) -> None:
    key = canary("run-key")
    add_credential(org_a, "fast-key", "bearer_token", {"token": key})
    with private_network(server, True):
        add_provider(org_a, name="fastlane", kind="openai_compatible",
                     base_url=fake.openai_base_url, credential_name="fast-key",
                     allowed_models=["gpt-fast-1"])
    set_alias(org_a, "fast", provider="fastlane", model="gpt-fast-1", max_tokens=50)
    # Org B has the same alias name, pointing at its own offline provider.
    add_provider(org_b, name="fastlane", kind="scripted")
    set_alias(org_b, "fast", provider="fastlane", model="offline")
    manifest = {
        "agent": {"id": "quick", "name": "Quick", "version": "1.0.0"},
        "graph": {"entry_node": "talk", "terminal_nodes": ["talk"], "nodes": [
            {"id": "talk", "node_type": "llm", "model": "fast", "output_keys": ["answer"]}]},
        "scripted_replies": {"talk": ["answer from org b's scripted provider"]}}
    for org in (org_a, org_b):
        deploy(org, tmp_path, manifest)
    with private_network(server, True):
        fake.queue(FakeReply(text=f"my key is {key}",
                             tool_calls=[("set_output", {"key": "answer", "value": key})]))
        before = len(fake.requests)
        run_a = org_a.members["operator"].client.post(
            f"/api/v1/orgs/{org_a.slug}/sessions", json={"agent": "quick", "inputs": {}})
        assert run_a.status_code == 201, run_a.text
        done = wait_for_status(org_a, run_a.json()["id"], {"succeeded", "failed"})
        assert done["status"] == "succeeded", done
        run_b = org_b.members["operator"].client.post(
            f"/api/v1/orgs/{org_b.slug}/sessions", json={"agent": "quick", "inputs": {}})
        done_b = wait_for_status(org_b, run_b.json()["id"], {"succeeded", "failed"})
        assert done_b["status"] == "succeeded", done_b
    wire = fake.requests[before:]
    assert len(wire) == 1  # org B's run never reached org A's provider
    assert wire[0].body["model"] == "gpt-fast-1" and wire[0].body["max_tokens"] == 50
    assert wire[0].headers["authorization"] == f"Bearer {key}"
    stored = stored_text(org_a, run_a.json()["id"])
    assert key not in stored and "[redacted]" in stored
    uses = audit(server, org_a, "credential.used")
    assert [(u.details["name"], u.details["run_id"], u.details["node_id"]) for u in uses] == [
        ("fast-key", run_a.json()["id"], "talk")]
    assert not audit(server, org_a, "llm_settings.key_used")
    stored_b = stored_text(org_b, run_b.json()["id"])
    assert "answer from org b" in stored_b


# --- the dashboard page ------------------------------------------------------------------------


def test_page_forms_validate_and_builders_read_only(server: Server, org_a: Org) -> None:
    admin, builder = org_a.admin.client, org_a.members["builder"].client
    page = f"/o/{org_a.slug}/settings/llm"
    refused = admin.post(f"{page}/providers", data={
        "name": "Bad Name", "kind": "scripted", "allowed_models": "m-1\n\nm-2\n"})
    assert refused.status_code == 422 and 'id="provider_name-error"' in refused.text
    assert "m-1\n\nm-2" in refused.text  # the typed models are kept
    assert 'id="base_url-error"' not in refused.text  # the quick setup's form is untouched
    made = admin.post(f"{page}/providers", data={"name": "offline", "kind": "scripted",
                                                 "allowed_models": "m-1\nm-2"})
    assert made.status_code == 303
    assert made.headers["location"] == f"{page}?notice=provider-created#llm-providers"
    taken = admin.post(f"{page}/providers", data={"name": "offline", "kind": "scripted"})
    assert taken.status_code == 409 and 'id="provider_name-error"' in taken.text

    wrong_model = admin.post(f"{page}/aliases", data={"name": "fast", "provider": "offline",
                                                      "model": "m-9"})
    assert wrong_model.status_code == 422 and 'id="alias_model-error"' in wrong_model.text
    bad_number = admin.post(f"{page}/aliases", data={"name": "fast", "provider": "offline",
                                                     "model": "m-1", "temperature": "warm"})
    assert bad_number.status_code == 422 and 'id="alias_temperature-error"' in bad_number.text
    bad_name = admin.post(f"{page}/aliases", data={"name": "Fast", "provider": "offline",
                                                   "model": "m-1"})
    assert bad_name.status_code == 422 and 'id="alias_name-error"' in bad_name.text
    saved = admin.post(f"{page}/aliases", data={"name": "fast", "provider": "offline",
                                                "model": "m-1", "max_tokens": "20"})
    assert saved.status_code == 303, saved.text
    pid = admin.get(f"{base(org_a)}/providers").json()[0]["id"]
    in_use = admin.post(f"{page}/providers/{pid}/delete")
    assert in_use.status_code == 409 and "used by the model aliases fast" in in_use.text
    tested = admin.post(f"{page}/providers/{pid}/test")
    assert tested.status_code == 200 and "Connected." in tested.text

    read_only = builder.get(page)
    assert read_only.status_code == 200
    assert "offline" in read_only.text and "m-1" in read_only.text
    assert "<form" not in read_only.text.split('id="main"', 1)[1]
    assert builder.post(f"{page}/aliases", data={"name": "x", "provider": "offline",
                                                 "model": "m-1"}).status_code == 403
    assert org_a.members["viewer"].client.get(page).status_code == 403

    assert admin.post(f"{page}/aliases/fast/delete").status_code == 303
    assert admin.post(f"{page}/aliases/fast/delete").status_code == 404
    assert admin.post(f"{page}/providers/{pid}/delete").status_code == 303
    assert admin.get(f"{base(org_a)}/providers").json() == []
