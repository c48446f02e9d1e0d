"""MCP servers per organization: the platform catalog, the org API, refresh against real MCP
servers (Streamable HTTP on 127.0.0.1, and a stdio server run through the sandbox), and runs
whose tool and llm nodes call MCP tools.

The deployment here allows private networks (the test MCP server lives on 127.0.0.1); the
egress tests turn that off on the running server for a while.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from enginex.agents.cli import zip_directory
from enginex.kit.crypto import load_master_key
from enginex.kit.errors import NOT_FOUND_MESSAGE
from enginex.kit.process import is_dumpable
from enginex.mcp.sandbox import AUTO_IDS
from enginex.mcp.service import _refresh_limits
from tests.conftest import IN_CI, separate_deployment
from tests.factories import (
    Actor,
    Org,
    Server,
    anonymous,
    api_key_client,
    make_org,
    make_platform_admin,
    private_network,
    sign_in,
    wait_for,
    wait_for_status,
)
from tests.mcp_servers import greeting_listener, serve_http_mcp, stdio_catalog_entry

EXPECTED_404 = {"error": {"code": "not_found", "message": NOT_FOUND_MESSAGE, "details": {}}}


# --- a deployment that may reach 127.0.0.1 -----------------------------------------------------


# Starting a stdio test server (a Python importing the MCP SDK) takes seconds of CPU; on a
# busy machine, many more of wall time. The test deployment gives it plenty.
START_TIMEOUT_SECONDS = 120.0


@pytest.fixture(scope="module")
def mcp_server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with separate_deployment(backend, tmp_path_factory.mktemp(f"mcp-{backend}"),
                             allow_private_network=True,
                             mcp_start_timeout_seconds=START_TIMEOUT_SECONDS) as deployment:
        yield deployment


@contextmanager
def start_timeout(server: Server, seconds: float) -> Iterator[None]:
    """Set the running deployment's ENGINEX_MCP_START_TIMEOUT_SECONDS for a while."""
    settings = server.app.state.settings
    before = settings.mcp_start_timeout_seconds
    settings.mcp_start_timeout_seconds = seconds
    try:
        yield
    finally:
        settings.mcp_start_timeout_seconds = before


def refreshing(org: Org) -> bool:
    """Whether a refresh of ``org``'s servers holds the organization's turn (in any
    deployment of this process)."""
    org_id = uuid.UUID(org.id)
    return any(org_id in limits.busy for limits in list(_refresh_limits.values()))


@pytest.fixture(scope="module")
def root(mcp_server: Server) -> Actor:
    return make_platform_admin(mcp_server)


@pytest.fixture(scope="module")
def acme(mcp_server: Server, root: Actor) -> Org:
    return make_org(mcp_server, root, "ma")


@pytest.fixture(scope="module")
def beta(mcp_server: Server, root: Actor) -> Org:
    return make_org(mcp_server, root, "mb")


@pytest.fixture(scope="module")
def remote_url() -> Iterator[str]:
    with serve_http_mcp() as url:
        yield url



def servers_url(org: Org) -> str:
    return f"/api/v1/orgs/{org.slug}/mcp/servers"


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def add_credential(org: Org, name: str, kind: str, values: dict[str, str]) -> None:
    response = org.admin.client.post(f"/api/v1/orgs/{org.slug}/credentials",
                                     json={"name": name, "type": kind, "values": values})
    assert response.status_code == 201, response.text


def add_server(org: Org, body: dict[str, Any]) -> dict[str, Any]:
    response = org.admin.client.post(servers_url(org), json=body)
    assert response.status_code == 201, response.text
    return response.json()


def refresh(org: Org, server_id: str) -> dict[str, Any]:
    response = org.admin.client.post(f"{servers_url(org)}/{server_id}/refresh")
    assert response.status_code == 200, response.text
    return response.json()


def audit(org: Org, action: str) -> list[dict[str, Any]]:
    response = org.admin.client.get(f"/api/v1/orgs/{org.slug}/audit",
                                    params={"action": action, "limit": 200})
    assert response.status_code == 200, response.text
    return response.json()["items"]


def add_catalog_entry(root: Actor, **extra: Any) -> dict[str, Any]:
    response = root.client.post("/api/v1/admin/mcp-catalog",
                                json=stdio_catalog_entry(unique("stdio"), **extra))
    assert response.status_code == 201, response.text
    return response.json()


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    return error


# --- agents that call MCP tools ----------------------------------------------------------------


def deploy(org: Org, tmp_path: Path, agent_id: str, nodes: list[dict[str, Any]],
           edges: list[dict[str, Any]] | None = None,
           scripted: dict[str, Any] | None = None) -> None:
    manifest: dict[str, Any] = {
        "agent": {"id": agent_id, "name": agent_id, "version": "1.0.0",
                  "description": "Calls MCP tools"},
        "graph": {"entry_node": nodes[0]["id"], "terminal_nodes": [nodes[-1]["id"]],
                  "max_steps": 10, "nodes": nodes, "edges": edges or []}}
    if scripted:
        manifest["scripted_replies"] = scripted
    package = tmp_path / agent_id
    package.mkdir()
    (package / "agent.json").write_text(json.dumps(manifest))
    response = org.members["builder"].client.post(
        f"/api/v1/orgs/{org.slug}/agents",
        files={"package": ("package.zip", zip_directory(package), "application/zip")})
    assert response.status_code in (200, 201), response.text


def run(org: Org, agent_id: str, timeout: float = 120) -> tuple[dict[str, Any], list[dict]]:
    response = org.members["operator"].client.post(f"/api/v1/orgs/{org.slug}/sessions",
                                                   json={"agent": agent_id, "inputs": {}})
    assert response.status_code == 201, response.text
    session = wait_for_status(org, response.json()["id"], {"succeeded", "failed"}, timeout)
    events = org.admin.client.get(
        f"/api/v1/orgs/{org.slug}/sessions/{session['id']}/events").json()
    return session, events


def tool_node(tool: str, arguments: dict[str, Any] | None = None,
              node_id: str = "call") -> dict[str, Any]:
    return {"id": node_id, "node_type": "tool", "tool": tool, "arguments": arguments or {},
            "output_key": node_id}


def results(events: list[dict[str, Any]]) -> list[Any]:
    """The results of the MCP tool calls, in order."""
    return [e["data"]["result"] for e in events
            if e["kind"] == "tool_result" and e["data"]["tool"].startswith("mcp.")]


# --- the platform catalog ----------------------------------------------------------------------


def test_the_catalog_is_for_the_platform_admin_and_orgs_see_no_command(
        mcp_server: Server, root: Actor, acme: Org) -> None:
    body = stdio_catalog_entry(unique("cat"), allowed_env=["API_TOKEN"])
    with anonymous(mcp_server) as anon:
        assert anon.get("/api/v1/admin/mcp-catalog").status_code == 401
        assert anon.post("/api/v1/admin/mcp-catalog", json=body).status_code == 401
    for client in (acme.admin.client, api_key_client(mcp_server, acme.api_keys["admin"])):
        denied = client.post("/api/v1/admin/mcp-catalog", json=body)
        assert error_of(denied, 403)["code"] == "platform_admin_required"
        assert client.get("/api/v1/admin/mcp-catalog").status_code == 403
    created = root.client.post("/api/v1/admin/mcp-catalog", json=body)
    assert created.status_code == 201, created.text
    entry = created.json()
    assert entry["command"] == body["command"] and entry["timeout_seconds"] == 60
    assert entry["memory_mb"] == 512
    again = root.client.post("/api/v1/admin/mcp-catalog", json=body)
    assert "already exists" in error_of(again, 409)["message"]
    for bad, field in (({"allowed_env": ["LD_PRELOAD"]}, "allowed_env"),
                       ({"allowed_env": ["PATH"]}, "allowed_env"),
                       ({"timeout_seconds": 601}, "timeout_seconds"),
                       ({"allowed_env": ["lower"]}, "allowed_env")):
        refused = root.client.post("/api/v1/admin/mcp-catalog",
                                   json={**stdio_catalog_entry(unique("bad")), **bad})
        assert field in json.dumps(error_of(refused, 422)), refused.text
    # Organizations: settings:read sees name, description, allowed_env -- never the command.
    view = acme.members["builder"].client.get(f"/api/v1/orgs/{acme.slug}/mcp/catalog")
    assert view.status_code == 200
    mine = next(e for e in view.json() if e["name"] == body["name"])
    assert mine == {"name": body["name"], "description": body["description"],
                    "allowed_env": ["API_TOKEN"]}
    assert body["command"] not in view.text and "mcp_stdio_server" not in view.text
    for role in ("operator", "viewer"):
        refused = acme.members[role].client.get(f"/api/v1/orgs/{acme.slug}/mcp/catalog")
        assert error_of(refused, 403)["code"] == "forbidden"


def test_a_catalog_entry_in_use_cannot_be_deleted_and_the_409_counts_servers(
        root: Actor, acme: Org, beta: Org) -> None:
    entry = add_catalog_entry(root)
    first = add_server(acme, {"name": unique("s"), "transport": "stdio",
                              "catalog_entry": entry["name"]})
    second = add_server(beta, {"name": unique("s"), "transport": "stdio",
                               "catalog_entry": entry["name"]})
    refused = root.client.delete(f"/api/v1/admin/mcp-catalog/{entry['id']}")
    error = error_of(refused, 409)
    assert "2 MCP servers" in error["message"] and error["details"] == {"servers": 2}
    assert acme.slug not in refused.text and beta.slug not in refused.text
    assert acme.admin.client.delete(f"{servers_url(acme)}/{first['id']}").status_code == 204
    assert "1 MCP server " in error_of(
        root.client.delete(f"/api/v1/admin/mcp-catalog/{entry['id']}"), 409)["message"]
    assert beta.admin.client.delete(f"{servers_url(beta)}/{second['id']}").status_code == 204
    assert root.client.delete(f"/api/v1/admin/mcp-catalog/{entry['id']}").status_code == 204
    assert root.client.delete(f"/api/v1/admin/mcp-catalog/{entry['id']}").status_code == 404
    assert root.client.delete("/api/v1/admin/mcp-catalog/not-a-uuid").status_code == 422


# --- the organization's servers: access rules and validation ------------------------------------


def test_server_routes_refuse_the_wrong_actor(mcp_server: Server, acme: Org, beta: Org) -> None:
    created = add_server(acme, {"name": unique("guarded"), "transport": "http",
                                "url": "https://mcp.example.com/mcp"})
    one = f"{servers_url(acme)}/{created['id']}"
    routes = [("GET", servers_url(acme), None), ("GET", one, None),
              ("POST", servers_url(acme), {"name": "x", "transport": "http",
                                           "url": "https://mcp.example.com/mcp"}),
              ("PATCH", one, {"enabled": False}), ("POST", f"{one}/refresh", None),
              ("PATCH", f"{one}/tools/echo", {"enabled": False}), ("DELETE", one, None)]
    with anonymous(mcp_server) as anon:
        for method, url, body in routes:
            response = anon.request(method, url, json=body)
            assert response.status_code == 401, (method, url)
    # Another organization: the same 404 as for an id that does not exist.
    missing = f"{servers_url(acme)}/{uuid.uuid4()}"
    for method, url, body in routes:
        foreign = beta.admin.client.request(method, url, json=body)
        assert foreign.status_code == 404 and foreign.json() == EXPECTED_404, (method, url)
        if url.startswith(one):
            as_missing = acme.admin.client.request(method, url.replace(one, missing), json=body)
            assert as_missing.status_code == 404, (method, url)
            if not url.endswith("/tools/echo"):
                assert as_missing.json() == EXPECTED_404
    # Roles: builders read, only admins write; operators and viewers see nothing.
    for role in ("operator", "viewer"):
        for method, url, body in routes:
            response = acme.members[role].client.request(method, url, json=body)
            assert error_of(response, 403)["code"] == "forbidden", (role, method, url)
    builder = acme.members["builder"].client
    assert builder.get(one).status_code == 200
    for method, url, body in routes[2:]:
        assert error_of(builder.request(method, url, json=body), 403)["code"] == "forbidden"
    assert acme.admin.client.get(one).json()["name"] == created["name"]


def test_invalid_servers_are_refused_with_a_message_that_says_how_to_fix_them(
        root: Actor, acme: Org) -> None:
    entry = add_catalog_entry(root, allowed_env=["API_TOKEN"])
    add_credential(acme, name := unique("tok"), "api_key", {"key": "k-" + secrets.token_hex(8)})
    cases = [
        ({"name": "bad name!", "transport": "http", "url": "https://x.example/mcp"}, "name"),
        ({"name": unique("n"), "transport": "ftp", "url": "https://x.example/mcp"}, "transport"),
        ({"name": unique("n"), "transport": "http"}, "url"),
        ({"name": unique("n"), "transport": "http", "url": "ftp://x.example/mcp"}, "url"),
        ({"name": unique("n"), "transport": "http", "url": "https://u:p@x.example/mcp"}, "url"),
        ({"name": unique("n"), "transport": "http", "url": "https://x.example/mcp",
          "headers": {"Authorization": {"credential": "nope"}}}, "no credential named 'nope'"),
        ({"name": unique("n"), "transport": "http", "url": "https://x.example/mcp",
          "headers": {"Authorization": {"credential": name, "value": "x"}}}, "exactly one"),
        ({"name": unique("n"), "transport": "http", "url": "https://x.example/mcp",
          "headers": {"Host": {"value": "evil"}}}, "set by the MCP transport"),
        ({"name": unique("n"), "transport": "http", "url": "https://x.example/mcp",
          "headers": {f"X-{i}": {"value": "v"} for i in range(21)}}, "headers"),
        ({"name": unique("n"), "transport": "http", "url": "https://x.example/mcp",
          "catalog_entry": entry["name"]}, "only stdio servers"),
        # A tenant can never supply a command: only a catalog entry.
        ({"name": unique("n"), "transport": "stdio", "command": "/bin/sh"}, "command"),
        ({"name": unique("n"), "transport": "stdio", "args": ["-c", "id"]}, "args"),
        ({"name": unique("n"), "transport": "stdio"}, "cannot supply commands"),
        ({"name": unique("n"), "transport": "stdio", "catalog_entry": "no-such-entry"},
         "no catalog entry named"),
        ({"name": unique("n"), "transport": "stdio", "catalog_entry": entry["name"],
          "env": {"OTHER_VAR": name}}, "not allowed by the catalog entry"),
        ({"name": unique("n"), "transport": "stdio", "catalog_entry": entry["name"],
          "env": {"API_TOKEN": "missing-cred"}}, "no credential named 'missing-cred'"),
        ({"name": unique("n"), "transport": "stdio", "catalog_entry": entry["name"],
          "url": "https://x.example/mcp"}, "catalog_entry and env"),
    ]
    for body, expected in cases:
        response = acme.admin.client.post(servers_url(acme), json=body)
        assert response.status_code == 422, (body, response.text)
        assert expected in response.text, (expected, response.text)
    good = add_server(acme, {"name": unique("ok"), "transport": "stdio",
                             "catalog_entry": entry["name"], "env": {"API_TOKEN": name}})
    assert good["catalog_entry"] == entry["name"] and good["env"] == {"API_TOKEN": name}
    assert "command" not in good
    duplicate = acme.admin.client.post(servers_url(acme), json={
        "name": good["name"], "transport": "http", "url": "https://x.example/mcp"})
    assert "already exists" in error_of(duplicate, 409)["message"]
    one = f"{servers_url(acme)}/{good['id']}"
    for body, expected in (({"transport": "http"}, "transport"), ({"name": None}, "null"),
                           ({"env": {"NOPE": name}}, "not allowed"),
                           ({"enabled": "yes"}, "enabled")):
        response = acme.admin.client.patch(one, json=body)
        assert response.status_code == 422 and expected in response.text, response.text
    missing_tool = acme.admin.client.patch(f"{one}/tools/echo", json={"enabled": False})
    assert "refresh" in error_of(missing_tool, 404)["message"]


def test_the_egress_guard_refuses_private_urls_when_the_deployment_does_not_allow_them(
        mcp_server: Server, acme: Org, remote_url: str) -> None:
    allowed = add_server(acme, {"name": unique("priv"), "transport": "http", "url": remote_url})
    with private_network(mcp_server, False):
        refused = acme.admin.client.post(servers_url(acme), json={
            "name": unique("priv"), "transport": "http", "url": remote_url})
        error = error_of(refused, 422)
        assert error["code"] == "egress_refused" and "loopback" in error["message"]
        metadata = acme.admin.client.post(servers_url(acme), json={
            "name": unique("meta"), "transport": "http",
            "url": "http://169.254.169.254/latest/mcp"})
        assert error_of(metadata, 422)["code"] == "egress_refused"
        # Saved while allowed, refused at connection time now.
        outcome = refresh(acme, allowed["id"])
        assert outcome["ok"] is False and "refused" in outcome["message"]
        assert outcome["server"]["last_error"] == outcome["message"]
    metadata = acme.admin.client.post(servers_url(acme), json={
        "name": unique("meta"), "transport": "http", "url": "http://169.254.169.254/mcp"})
    assert error_of(metadata, 422)["code"] == "egress_refused"  # never, even when allowed


# --- refresh against a real HTTP MCP server ----------------------------------------------------


def test_refresh_lists_tools_keeps_toggles_and_audits_the_credential_use(
        acme: Org, remote_url: str) -> None:
    token = "tok-" + secrets.token_hex(16)
    add_credential(acme, cred := unique("mcp-token"), "bearer_token", {"token": token})
    created = add_server(acme, {"name": unique("remote"), "transport": "http", "url": remote_url,
                                "headers": {"Authorization": {"credential": cred},
                                            "X-Team": {"value": "blue"}}})
    assert created["tools"] == [] and created["headers"]["X-Team"] == {"value": "blue"}
    outcome = refresh(acme, created["id"])
    assert outcome["ok"] is True, outcome
    tools = {t["name"]: t for t in outcome["server"]["tools"]}
    assert set(tools) == {"echo", "whoami", "fail"} and all(t["enabled"] for t in tools.values())
    assert tools["echo"]["input_schema"]["properties"]["text"]["type"] == "string"
    one = f"{servers_url(acme)}/{created['id']}"
    disabled = acme.admin.client.patch(f"{one}/tools/echo", json={"enabled": False})
    assert disabled.status_code == 200
    assert {t["name"]: t["enabled"] for t in disabled.json()["tools"]}["echo"] is False
    again = refresh(acme, created["id"])
    assert {t["name"]: t["enabled"] for t in again["server"]["tools"]} == {
        "echo": False, "whoami": True, "fail": True}
    used = [e for e in audit(acme, "credential.used") if e["details"].get("name") == cred]
    assert len(used) == 2 and used[0]["details"]["purpose"] == "mcp.refresh"
    actions = {e["action"] for e in audit(acme, "mcp_server.")
               if e["target_id"] == created["id"]}
    assert {"mcp_server.created", "mcp_server.tools_refreshed",
            "mcp_server.tool_disabled"} <= actions
    everything = acme.admin.client.get(f"/api/v1/orgs/{acme.slug}/audit",
                                       params={"limit": 200}).text
    assert token not in everything and token not in acme.admin.client.get(one).text


def test_a_refresh_that_fails_answers_200_with_the_reason_and_keeps_the_tools(
        acme: Org, remote_url: str) -> None:
    created = add_server(acme, {"name": unique("flaky"), "transport": "http", "url": remote_url})
    assert refresh(acme, created["id"])["ok"] is True
    one = f"{servers_url(acme)}/{created['id']}"
    moved = acme.admin.client.patch(one, json={"url": "http://127.0.0.1:9/mcp"})
    assert moved.status_code == 200, moved.text
    outcome = refresh(acme, created["id"])
    assert outcome["ok"] is False and "could not reach" in outcome["message"]
    assert outcome["server"]["last_error"] == outcome["message"]
    assert len(outcome["server"]["tools"]) == 3
    failed = [e for e in audit(acme, "mcp_server.tools_refreshed")
              if e["target_id"] == created["id"] and not e["details"]["ok"]]
    assert failed and failed[0]["details"]["error"]


# --- stdio servers from the catalog --------------------------------------------------------------


def test_a_stdio_server_gets_only_its_allowed_environment_and_its_bounds(
        root: Actor, acme: Org, tmp_path: Path) -> None:
    entry = add_catalog_entry(root, allowed_env=["API_TOKEN", "OTHER_TOKEN"],
                              timeout_seconds=4, memory_mb=512)
    secret = "stdio-secret-" + secrets.token_hex(12)
    add_credential(acme, cred := unique("stdio-key"), "api_key", {"key": secret})
    name = unique("local")
    created = add_server(acme, {"name": name, "transport": "stdio",
                                "catalog_entry": entry["name"], "env": {"API_TOKEN": cred}})
    outcome = refresh(acme, created["id"])
    assert outcome["ok"] is True, outcome
    assert {t["name"] for t in outcome["server"]["tools"]} >= {"environment", "allocate",
                                                                "sleep", "env_value"}
    deploy(acme, tmp_path, agent := unique("env-agent"), [
        tool_node(f"mcp.{name}.environment", node_id="env"),
        tool_node(f"mcp.{name}.env_value", {"name": "API_TOKEN"}, node_id="value")],
        edges=[{"id": "next", "source": "env", "target": "value", "condition": "on_success"}])
    session, events = run(acme, agent)
    assert session["status"] == "succeeded", (session, events)
    env, value = results(events)
    assert set(env["names"]) == {"PATH", "LANG", "HOME", "API_TOKEN"}, env
    assert not any(n.startswith("ENGINEX") for n in env["names"])
    assert env["cwd"] == env["home"] and env["home"].startswith("/tmp")
    assert value == {"result": "[redacted]"}  # it arrived, and the event log never has it
    assert secret not in json.dumps(events)
    assert not Path(env["home"]).exists()  # the working directory is removed after the step
    used = [e for e in audit(acme, "credential.used") if e["details"].get("name") == cred]
    assert {e["details"].get("run_id") for e in used} >= {session["id"]}
    # Memory beyond the entry's limit fails the call, not the platform.
    deploy(acme, tmp_path, greedy := unique("greedy"),
           [tool_node(f"mcp.{name}.allocate", {"megabytes": 2048})])
    session, events = run(acme, greedy)
    assert session["status"] == "failed" and "allocate" in session["error"], session
    # A call beyond the timeout fails with the bound in the message; the process is killed.
    deploy(acme, tmp_path, sleepy := unique("sleepy"),
           [tool_node(f"mcp.{name}.sleep", {"seconds": 30})])
    session, events = run(acme, sleepy)
    assert session["status"] == "failed" and "within 4 s" in session["error"], session


def test_a_stdio_server_slower_to_start_than_its_call_timeout_still_connects(
        mcp_server: Server, root: Actor, acme: Org, tmp_path: Path) -> None:
    # Starting a process (an interpreter and its imports) takes what the host's load makes
    # it take; the entry's timeout bounds each call, ENGINEX_MCP_START_TIMEOUT_SECONDS the
    # start (here the test deployment's generous one).
    entry = add_catalog_entry(root, timeout_seconds=3, server_args=("--slow-start", "5"))
    name = unique("slow")
    created = add_server(acme, {"name": name, "transport": "stdio",
                                "catalog_entry": entry["name"]})
    outcome = refresh(acme, created["id"])
    assert outcome["ok"] is True, outcome
    deploy(acme, tmp_path, agent := unique("slow-agent"),
           [tool_node(f"mcp.{name}.echo", {"text": "late but there"})])
    session, events = run(acme, agent)
    assert session["status"] == "succeeded", (session, events)
    assert results(events) == [{"result": "late but there"}]
    # A start beyond both bounds fails, naming the bound that applied.
    with start_timeout(mcp_server, 1):
        outcome = refresh(acme, created["id"])
    assert outcome["ok"] is False and "did not answer within 3 s" in outcome["message"], outcome


# --- runs ----------------------------------------------------------------------------------------


def test_a_run_calls_remote_mcp_tools_from_tool_and_llm_nodes(
        acme: Org, beta: Org, remote_url: str, tmp_path: Path) -> None:
    token = "tok-" + secrets.token_hex(16)
    add_credential(acme, cred := unique("run-token"), "bearer_token", {"token": token})
    name = unique("remote")
    created = add_server(acme, {"name": name, "transport": "http", "url": remote_url,
                                "headers": {"Authorization": {"credential": cred}}})
    assert refresh(acme, created["id"])["ok"] is True
    nodes = [tool_node(f"mcp.{name}.echo", {"text": "hello"}, "echo"),
             {"id": "ask", "node_type": "llm", "output_keys": ["answer"],
              "tools": [f"mcp.{name}.whoami", f"mcp.{name}.fail"], "max_iterations": 4}]
    scripted = {"ask": [
        {"tool_calls": [{"name": f"mcp.{name}.whoami", "arguments": {}},
                        {"name": f"mcp.{name}.fail", "arguments": {"message": "on purpose"}}]},
        {"tool_calls": [{"name": "set_output", "arguments": {"key": "answer", "value": "done"}}]}]}
    deploy(acme, tmp_path, agent := unique("mcp-agent"), nodes,
           edges=[{"id": "next", "source": "echo", "target": "ask", "condition": "on_success"}],
           scripted=scripted)
    session, events = run(acme, agent)
    assert session["status"] == "succeeded", (session, events)
    echoed, whoami, failed = results(events)
    assert echoed == {"result": "hello"}
    # The credential header arrived at the server; the event log holds it redacted.
    assert "Bearer [redacted]" in whoami
    assert "failed on purpose: on purpose" in failed and failed.startswith("error:")
    assert token not in json.dumps(events)
    used = [e for e in audit(acme, "credential.used") if e["details"].get("name") == cred
            and e["details"].get("run_id") == session["id"]]
    # One connection per server per step: each step resolved the credential once.
    assert sorted(e["details"]["node_id"] for e in used) == ["ask", "echo"]
    # Org B has its own server of the same name, with its own header: it gets its own.
    add_server(beta, {"name": name, "transport": "http", "url": remote_url,
                      "headers": {"Authorization": {"value": "Bearer beta-literal"}}})
    beta_server = beta.admin.client.get(servers_url(beta)).json()[0]
    refresh(beta, beta_server["id"])
    beta_dir = tmp_path / "beta"
    beta_dir.mkdir()
    deploy(beta, beta_dir, agent, [tool_node(f"mcp.{name}.whoami")])
    session, events = run(beta, agent)
    assert session["status"] == "succeeded", (session, events)
    assert results(events) == [{"result": "Bearer beta-literal"}]


def test_a_tool_node_naming_an_unusable_mcp_tool_fails_with_the_reason(
        acme: Org, remote_url: str, tmp_path: Path) -> None:
    name = unique("partial")
    created = add_server(acme, {"name": name, "transport": "http", "url": remote_url})
    cases = [(f"mcp.{unique('ghost')}.echo", "no MCP server named"),
             (f"mcp.{name}.echo", "refresh the server's tools")]
    for tool, reason in cases:
        deploy(acme, tmp_path, agent := unique("unusable"), [tool_node(tool)])
        session, _ = run(acme, agent)
        assert session["status"] == "failed" and reason in session["error"], session
    refresh(acme, created["id"])
    one = f"{servers_url(acme)}/{created['id']}"
    acme.admin.client.patch(f"{one}/tools/echo", json={"enabled": False})
    deploy(acme, tmp_path, agent := unique("disabled-tool"), [tool_node(f"mcp.{name}.echo")])
    session, _ = run(acme, agent)
    assert session["status"] == "failed" and "is disabled" in session["error"], session
    acme.admin.client.patch(one, json={"enabled": False})
    deploy(acme, tmp_path, agent := unique("disabled-server"), [tool_node(f"mcp.{name}.whoami")])
    session, _ = run(acme, agent)
    assert session["status"] == "failed" and "server" in session["error"], session
    assert "is disabled" in session["error"]


# --- dashboard pages -----------------------------------------------------------------------------


def test_the_mcp_page_adds_refreshes_toggles_and_deletes_servers(
        acme: Org, beta: Org, remote_url: str) -> None:
    import html

    page = f"/o/{acme.slug}/settings/mcp"
    admin = acme.admin.client
    add_credential(acme, cred := unique("page-token"), "bearer_token",
                   {"token": "tok-" + secrets.token_hex(12)})
    name = unique("paged")
    added = admin.post(page, data={"transport": "http", "name": name, "url": remote_url,
                                   "headers": f"Authorization: {cred}"})
    assert added.status_code == 303 and added.headers["location"] == f"{page}?notice=created"
    shown = admin.get(added.headers["location"])
    assert shown.status_code == 200 and name in shown.text and "No tools discovered" in shown.text
    server_id = next(s["id"] for s in admin.get(servers_url(acme)).json() if s["name"] == name)
    refreshed = admin.post(f"{page}/{server_id}/refresh")
    assert refreshed.status_code == 303
    listed = admin.get(refreshed.headers["location"]).text
    assert f"mcp.{name}.whoami" in listed and "Tools refreshed." in listed
    toggled = admin.post(f"{page}/{server_id}/tools/echo", data={"enabled": "0"})
    assert toggled.status_code == 303
    tools = {t["name"]: t["enabled"] for t in admin.get(
        f"{servers_url(acme)}/{server_id}").json()["tools"]}
    assert tools["echo"] is False and tools["whoami"] is True
    # Mistakes re-render with the service's message.
    bad = admin.post(page, data={"transport": "http", "name": unique("bad"), "url": remote_url,
                                 "headers": "Authorization no-colon"})
    assert bad.status_code == 422 and "should look like" in html.unescape(bad.text)
    stdio = admin.post(page, data={"transport": "stdio", "name": unique("bad"),
                                   "catalog_entry": "", "env": ""})
    assert stdio.status_code == 422 and "cannot supply commands" in html.unescape(stdio.text)
    # A failed refresh shows its reason.
    admin.patch(f"{servers_url(acme)}/{server_id}", json={"url": "http://127.0.0.1:9/mcp"})
    failed = admin.post(f"{page}/{server_id}/refresh")
    assert failed.status_code == 200 and "could not be listed" in failed.text
    # Builders read; operators and viewers, and other organizations, get nothing.
    seen = acme.members["builder"].client.get(page)
    assert seen.status_code == 200 and name in seen.text and "Refresh tools" not in seen.text
    assert acme.members["builder"].client.post(f"{page}/{server_id}/delete").status_code == 403
    assert acme.members["viewer"].client.get(page).status_code == 403
    assert beta.admin.client.get(page).status_code == 404
    assert beta.admin.client.post(f"{page}/{server_id}/delete").status_code == 404
    deleted = admin.post(f"{page}/{server_id}/delete")
    assert deleted.status_code == 303
    assert admin.get(f"{servers_url(acme)}/{server_id}").status_code == 404


def test_the_catalog_page_is_for_the_platform_admin(root: Actor, acme: Org) -> None:
    import html

    name = unique("paged-entry")
    assert acme.admin.client.get("/admin/mcp-catalog").status_code == 403
    added = root.client.post("/admin/mcp-catalog", data={
        "name": name, "description": "From the page", "command": "/usr/bin/env",
        "args": "python3\n-V", "allowed_env": "API_TOKEN", "timeout_seconds": "30",
        "memory_mb": "256"})
    assert added.status_code == 303, added.text
    listed = root.client.get("/admin/mcp-catalog")
    assert name in listed.text and "/usr/bin/env python3 -V" in listed.text
    refused = root.client.post("/admin/mcp-catalog", data={
        "name": unique("x"), "command": "/bin/true", "allowed_env": "LD_PRELOAD"})
    assert refused.status_code == 422 and "LD_PRELOAD" in html.unescape(refused.text)
    entry = next(e for e in root.client.get("/api/v1/admin/mcp-catalog").json()
                 if e["name"] == name)
    server = add_server(acme, {"name": unique("s"), "transport": "stdio", "catalog_entry": name})
    in_use = root.client.post(f"/admin/mcp-catalog/{entry['id']}/delete")
    assert in_use.status_code == 409 and "1 MCP server" in html.unescape(in_use.text)
    acme.admin.client.delete(f"{servers_url(acme)}/{server['id']}")
    gone = root.client.post(f"/admin/mcp-catalog/{entry['id']}/delete")
    assert gone.status_code == 303
    assert name not in root.client.get("/admin/mcp-catalog").text


# --- review hardening: the stdio sandbox, reserved variables, refresh limits, tool lists ------


@pytest.fixture
def greeter() -> Iterator[int]:
    with greeting_listener() as port:
        yield port


def probe_run(org: Org, root: Actor, tmp_path: Path, *, network: bool,
              calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Run the stdio probes ``calls`` (tool, arguments) in one run; their results."""
    entry = add_catalog_entry(root, network=network, timeout_seconds=20)
    assert entry["network"] is network
    name = unique("probe")
    created = add_server(org, {"name": name, "transport": "stdio",
                               "catalog_entry": entry["name"]})
    assert refresh(org, created["id"])["ok"] is True
    nodes = [tool_node(f"mcp.{name}.{tool}", arguments, node_id=f"n{i}")
             for i, (tool, arguments) in enumerate(calls)]
    edges = [{"id": f"e{i}", "source": f"n{i}", "target": f"n{i + 1}", "condition": "on_success"}
             for i in range(len(nodes) - 1)]
    deploy(org, tmp_path, agent := unique("probe-agent"), nodes, edges=edges)
    session, events = run(org, agent)
    assert session["status"] == "succeeded", (session, events)
    return results(events)


def test_a_stdio_server_cannot_read_the_platforms_environment_or_reach_the_network(
        root: Actor, acme: Org, tmp_path: Path, greeter: int) -> None:
    identity, environ, reached = probe_run(acme, root, tmp_path, network=False, calls=[
        ("identity", {}), ("parent_environ", {}),
        ("connect", {"host": "127.0.0.1", "port": greeter})])
    # The platform (its /proc/<pid>/environ holds ENGINEX_MASTER_KEY) is out of reach ...
    assert environ["ok"] is False and "Permission denied" in environ["error"], environ
    assert environ["ppid"] == os.getpid()  # the test deployment runs in this process
    assert not is_dumpable()  # create_app's lifespan made the platform non-dumpable
    # ... and so is every network, the platform's own ports on 127.0.0.1 included.
    assert reached["ok"] is False, reached
    if os.geteuid() == 0:
        # ENGINEX_MCP_STDIO_USER's default 'auto': an unprivileged uid of the server's own.
        assert identity["uid"] == identity["euid"] and identity["uid"] in AUTO_IDS, identity
    # With network allowed by the platform admin, the same probe connects.
    reached, environ = probe_run(acme, root, tmp_path, network=True, calls=[
        ("connect", {"host": "127.0.0.1", "port": greeter}), ("parent_environ", {})])
    assert reached == {"ok": True, "value": "hello"}, reached
    assert environ["ok"] is False, environ


def test_a_stdio_server_cannot_read_the_master_key_file_when_the_platform_runs_as_root(
        mcp_server: Server, root: Actor, acme: Org, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI runs the tests as root")
        pytest.skip("as another user than root, a stdio server runs as the platform's user and "
                    "can read its files (documented in docs/MCP.md)")
    # The development key file, written as the platform writes it (0600 in the data dir).
    load_master_key(mcp_server.settings.model_copy(update={"master_key": ""}))
    key_file = Path(mcp_server.settings.data_dir) / "master.key"
    assert key_file.exists()
    (read,) = probe_run(acme, root, tmp_path, network=False,
                        calls=[("read_file", {"path": str(key_file)})])
    assert read["ok"] is False and "Permission denied" in read["error"], read


def test_catalog_entries_cannot_open_proxy_ca_or_package_tool_variables(root: Actor) -> None:
    families = {"NPM_CONFIG_*": "NPM_CONFIG_REGISTRY", "UV_*": "UV_INDEX_URL",
                "PIP_*": "PIP_INDEX_URL", "GIT_*": "GIT_SSH_COMMAND",
                "JDK_*": "JDK_JAVA_OPTIONS", "JAVA_*": "JAVA_HOME", "OPENSSL_*": "OPENSSL_CONF",
                "PERLLIB": "PERLLIB", "RUBYLIB": "RUBYLIB", "NODE_PATH": "NODE_PATH",
                "*_PROXY": "HTTPS_PROXY", "ALL_PROXY": "ALL_PROXY", "NO_PROXY": "NO_PROXY",
                "SSL_CERT_*": "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE": "REQUESTS_CA_BUNDLE",
                "CURL_CA_BUNDLE": "CURL_CA_BUNDLE", "XDG_*": "XDG_CONFIG_HOME"}
    for family, variable in families.items():
        refused = root.client.post("/api/v1/admin/mcp-catalog", json=stdio_catalog_entry(
            unique("env"), allowed_env=["API_TOKEN", variable]))
        error = error_of(refused, 422)
        assert error["details"] == {"field": "allowed_env"}, (family, error)
        assert variable in error["message"] and "API_TOKEN" not in error["message"], family
    # Lower or mixed case is no way around it (names are upper case; the rule ignores case).
    mixed = root.client.post("/api/v1/admin/mcp-catalog", json=stdio_catalog_entry(
        unique("env"), allowed_env=["Https_Proxy"]))
    assert error_of(mixed, 422)


def test_a_second_refresh_of_the_same_organization_waits_its_turn_with_429(
        mcp_server: Server, root: Actor, acme: Org, beta: Org, remote_url: str) -> None:
    slow = root.client.post("/api/v1/admin/mcp-catalog", json={
        "name": unique("mute"), "command": "/bin/sleep", "args": ["30"], "timeout_seconds": 2})
    assert slow.status_code == 201, slow.text
    mute = add_server(acme, {"name": unique("mute"), "transport": "stdio",
                             "catalog_entry": slow.json()["name"]})
    other = add_server(acme, {"name": unique("other"), "transport": "http", "url": remote_url})
    theirs = add_server(beta, {"name": unique("theirs"), "transport": "http",
                               "url": remote_url})
    first: dict[str, Any] = {}
    second_client = sign_in(mcp_server, acme.admin.email).client
    thread = threading.Thread(target=lambda: first.update(refresh(acme, mute["id"])))
    # The mute server is bounded by its own 2 s, not by the deployment's longer start timeout.
    with start_timeout(mcp_server, 1):
        thread.start()
        try:
            wait_for(lambda: refreshing(acme) or first, what="the first refresh to take its turn")
            busy = second_client.post(f"{servers_url(acme)}/{other['id']}/refresh")
            error = error_of(busy, 429)
            assert error["code"] == "too_many_requests" and "Another refresh" in error["message"]
            assert int(busy.headers["Retry-After"]) > 0
            page = second_client.post(f"/o/{acme.slug}/settings/mcp/{other['id']}/refresh")
            assert page.status_code == 429 and "Another refresh" in page.text
            # Another organization is not held up.
            assert refresh(beta, theirs["id"])["ok"] is True
        finally:
            thread.join(timeout=120)
            second_client.close()
    assert first["ok"] is False and "did not answer within 2 s" in first["message"], first
    assert refresh(acme, other["id"])["ok"] is True  # the organization's turn is free again


def test_discovered_tools_are_redacted_and_bounded(root: Actor, acme: Org) -> None:
    entry = add_catalog_entry(root, allowed_env=["API_TOKEN"],
                              server_args=("--leaky", "--big"))
    token = "leak-" + secrets.token_hex(12)
    add_credential(acme, cred := unique("leak"), "api_key", {"key": token})
    created = add_server(acme, {"name": unique("leaky"), "transport": "stdio",
                                "catalog_entry": entry["name"], "env": {"API_TOKEN": cred}})
    outcome = refresh(acme, created["id"])
    assert outcome["ok"] is True, outcome["message"]
    shown = json.dumps(outcome)
    assert token not in shown
    tools = {t["name"]: t for t in outcome["server"]["tools"]}
    assert "[redacted]" in tools["leaky_description"]["description"]
    assert "[redacted]" in json.dumps(tools["leaky_schema"]["input_schema"])
    assert len(tools["long_description"]["description"].encode()) <= 2048
    assert "huge_schema" not in tools
    wide = [n for n in tools if n.startswith("wide_")]
    assert 0 < len(wide) < 40
    assert len(json.dumps(outcome["server"]["tools"]).encode()) <= 1024 * 1024 + 64 * len(tools)
    message = outcome["message"]
    assert "1 with a name outside [A-Za-z0-9_.-]{1,128} or containing a secret" in message
    assert "1 with an input schema over 32 KiB" in message
    assert f"{40 - len(wide)} with beyond 1 MiB of tool list" in message
    stored = acme.admin.client.get(f"{servers_url(acme)}/{created['id']}").text
    assert token not in stored


def test_a_query_string_in_a_server_url_stays_out_of_audit_details_and_errors(
        acme: Org, remote_url: str) -> None:
    secret = "q-" + secrets.token_hex(10)
    created = add_server(acme, {"name": unique("query"), "transport": "http",
                                "url": f"{remote_url}?api_key={secret}"})
    assert created["url"].endswith(secret)  # the stored URL is kept as given
    logged = [e for e in audit(acme, "mcp_server.created") if e["target_id"] == created["id"]]
    assert logged[0]["details"]["url"] == f"{remote_url}?[redacted]"
    one = f"{servers_url(acme)}/{created['id']}"
    moved = acme.admin.client.patch(one, json={"url": f"http://127.0.0.1:9/mcp?api_key={secret}"})
    assert moved.status_code == 200, moved.text
    outcome = refresh(acme, created["id"])
    assert outcome["ok"] is False and "?[redacted]" in outcome["message"], outcome
    assert secret not in outcome["message"] and secret not in outcome["server"]["last_error"]
    everything = acme.admin.client.get(f"/api/v1/orgs/{acme.slug}/audit",
                                       params={"limit": 200}).text
    assert secret not in everything


def test_address_literals_in_any_form_are_checked_on_save(
        mcp_server: Server, acme: Org) -> None:
    with private_network(mcp_server, False):
        for url in ("http://127.1/mcp", "http://0x7f000001/mcp", "http://2130706433/mcp",
                    "http://0177.0.0.1/mcp"):
            refused = acme.admin.client.post(servers_url(acme), json={
                "name": unique("literal"), "transport": "http", "url": url})
            error = error_of(refused, 422)
            assert error["code"] == "egress_refused", url
            assert "loopback" in error["message"] or "not a valid URL" in error["message"], url
            created = add_server(acme, {"name": unique("later"), "transport": "http",
                                        "url": "https://mcp.example.com/mcp"})
            changed = acme.admin.client.patch(f"{servers_url(acme)}/{created['id']}",
                                              json={"url": url})
            assert error_of(changed, 422)["code"] == "egress_refused", url


def test_the_mcp_page_checks_what_the_api_checks(acme: Org, remote_url: str) -> None:
    import html

    page = f"/o/{acme.slug}/settings/mcp"
    add_credential(acme, cred := unique("form-token"), "bearer_token", {"token": "t-form"})
    cases = [
        ("Bad Header: " + cred, "headers"),  # not an HTTP header name
        ("\n".join(f"X-H{i}: {cred}" for i in range(21)), "at most 20"),
        ("Authorization: Not A Credential!", "headers.Authorization.credential"),
        (f"X-One: {cred}\nX-One: {cred}", "repeats 'X-One'"),
    ]
    for headers, expected in cases:
        name = unique("form")
        response = acme.admin.client.post(page, data={"transport": "http", "name": name,
                                                      "url": remote_url, "headers": headers})
        text = html.unescape(response.text)
        assert response.status_code == 422 and expected in text, (expected, text[-3000:])
        assert name not in {s["name"] for s in acme.admin.client.get(servers_url(acme)).json()}
    bad_name = acme.admin.client.post(page, data={"transport": "http", "name": "bad name!",
                                                  "url": remote_url, "headers": ""})
    assert bad_name.status_code == 422 and "name" in html.unescape(bad_name.text)


def test_concurrent_renames_to_one_name_answer_409_never_500(
        mcp_server: Server, acme: Org) -> None:
    clients = [acme.admin.client, sign_in(mcp_server, acme.admin.email).client]
    try:
        for _ in range(4):
            servers = [add_server(acme, {"name": unique("twin"), "transport": "http",
                                         "url": "https://mcp.example.com/mcp"})
                       for _ in clients]
            target = unique("taken")
            statuses: list[int] = []
            barrier = threading.Barrier(len(clients))

            def rename(client: httpx.Client, server_id: str, target: str,
                       barrier: threading.Barrier, statuses: list[int]) -> None:
                barrier.wait()
                statuses.append(client.patch(f"{servers_url(acme)}/{server_id}",
                                             json={"name": target}).status_code)

            threads = [threading.Thread(target=rename,
                                        args=(c, s["id"], target, barrier, statuses))
                       for c, s in zip(clients, servers, strict=True)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert sorted(statuses) == [200, 409], statuses
    finally:
        clients[1].close()
