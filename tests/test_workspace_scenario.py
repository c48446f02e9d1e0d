"""Issue 7's acceptance scenario, end to end over real HTTP.

An org admin points the demo agent at a model served by a fake OpenAI-compatible server
(provider + credential + model alias) and at an MCP server (remote, Streamable HTTP, a header
from a credential); the run uses both; the audit log shows every step of that setup and use
and its chain verifies. A second organization configured differently (the offline scripted
provider, no MCP) runs the same agent untouched by the first one's settings.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

from enginex.demo import DEMO_AGENT_DIR
from tests.factories import (
    Org,
    Server,
    pending_approval,
    private_network,
    start_session,
    wait_for_status,
)
from tests.fake_llm import FakeLLM, FakeReply
from tests.mcp_servers import serve_http_mcp

MCP_TOOL = "mcp.timesheets.echo"
WHOAMI_TOOL = "mcp.timesheets.whoami"


def demo_package(version: str, extra_tools: list[str]) -> bytes:
    """The shipped demo agent as a zip, at ``version``, its LLM node allowed ``extra_tools``."""
    files = {str(p.relative_to(DEMO_AGENT_DIR)): p.read_bytes()
             for p in Path(DEMO_AGENT_DIR).rglob("*") if p.is_file()}
    manifest = json.loads(files["agent.json"])
    manifest["agent"]["version"] = version
    summarise = next(n for n in manifest["graph"]["nodes"] if n["id"] == "summarise")
    summarise["tools"] = [*summarise["tools"], *extra_tools]
    files["agent.json"] = json.dumps(manifest).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def deploy(org: Org, data: bytes) -> dict[str, Any]:
    response = org.members["builder"].client.post(
        f"/api/v1/orgs/{org.slug}/agents",
        files={"package": ("package.zip", data, "application/zip")})
    assert response.status_code == 201, response.text
    return response.json()


def post(org: Org, path: str, body: dict[str, Any], expected: int = 201) -> dict[str, Any]:
    response = org.admin.client.post(f"/api/v1/orgs/{org.slug}{path}", json=body)
    assert response.status_code == expected, response.text
    return response.json()


def finish(org: Org, run_id: str) -> dict[str, Any]:
    wait_for_status(org, run_id, {"waiting_approval"})
    decided = org.members["operator"].client.post(
        f"/api/v1/orgs/{org.slug}/approvals/{pending_approval(org, run_id)['id']}/decision",
        json={"decision": "approve", "comment": "ok"})
    assert decided.status_code == 200, decided.text
    return wait_for_status(org, run_id, {"succeeded", "failed"})


def events(org: Org, run_id: str) -> list[dict[str, Any]]:
    response = org.admin.client.get(f"/api/v1/orgs/{org.slug}/sessions/{run_id}/events")
    assert response.status_code == 200, response.text
    body = response.json()
    return body["events"] if isinstance(body, dict) else body


def audit_actions(org: Org) -> list[str]:
    response = org.admin.client.get(f"/api/v1/orgs/{org.slug}/audit/export")
    assert response.status_code == 200, response.text
    return [json.loads(line)["action"] for line in response.text.splitlines()]


def test_an_org_points_the_demo_agent_at_its_own_model_and_mcp_server(
        server: Server, org_a: Org, org_b: Org) -> None:
    llm_key = "sk-acme-scenario-llm-key-7f3a"
    mcp_token = "mcp-acme-scenario-token-91c2"
    with FakeLLM() as fake, serve_http_mcp() as mcp_url, private_network(server):
        # --- setup, as org A's admin ------------------------------------------------------
        post(org_a, "/credentials", {"name": "llm-key", "type": "api_key",
                                     "values": {"key": llm_key}})
        post(org_a, "/credentials", {"name": "mcp-token", "type": "bearer_token",
                                     "values": {"token": mcp_token}})
        post(org_a, "/llm/providers", {"name": "local", "kind": "openai_compatible",
                                       "base_url": fake.openai_base_url,
                                       "credential_name": "llm-key",
                                       "allowed_models": ["gpt-scenario"]})
        alias = org_a.admin.client.put(f"/api/v1/orgs/{org_a.slug}/llm/aliases/default",
                                       json={"provider": "local", "model": "gpt-scenario",
                                             "temperature": 0.2})
        assert alias.status_code in (200, 201), alias.text
        mcp = post(org_a, "/mcp/servers", {
            "name": "timesheets", "transport": "http", "url": mcp_url,
            "headers": {"Authorization": {"credential": "mcp-token"}}})
        refreshed = post(org_a, f"/mcp/servers/{mcp['id']}/refresh", {}, expected=200)
        assert refreshed["ok"] is True, refreshed
        tools = {t["name"] for t in org_a.admin.client.get(
            f"/api/v1/orgs/{org_a.slug}/mcp/servers/{mcp['id']}").json()["tools"]}
        assert {"echo", "whoami"} <= tools
        deploy(org_a, demo_package("1.1.0", [MCP_TOOL, WHOAMI_TOOL]))

        # --- the run: the model calls both MCP tools, then sets its outputs -----------------
        fake.queue(
            FakeReply(text="", tool_calls=[("mcp_timesheets_echo", {"text": "Alice,16"}),
                                           ("mcp_timesheets_whoami", {})]),
            FakeReply(text="", tool_calls=[
                ("set_output", {"key": "summary", "value": "Alice: 16 h"}),
                ("set_output", {"key": "total_hours", "value": 16})]))
        run = start_session(org_a, {"timesheet": "2026-11-02,Alice,Apollo,16"})
        done = finish(org_a, run["id"])
        assert done["status"] == "succeeded", done

    # The model was called through the org's provider, with the alias's real model name, the
    # key from its credential and the alias's temperature.
    chat = [r for r in fake.requests if r.path.endswith("/chat/completions")]
    assert len(chat) == 2
    assert {r.body["model"] for r in chat} == {"gpt-scenario"}
    assert chat[0].body["temperature"] == 0.2
    assert chat[0].headers["authorization"] == f"Bearer {llm_key}"
    wire_tools = {t["function"]["name"] for t in chat[0].body["tools"]}
    assert {"mcp_timesheets_echo", "mcp_timesheets_whoami", "set_output"} <= wire_tools

    # The MCP tools ran on the org's server, which received the credential's header; the run
    # stores neither secret.
    log = events(org_a, run["id"])
    results = {e["data"]["tool"]: e["data"]["result"] for e in log
               if e["kind"] == "tool_result"}
    assert "Alice,16" in results[MCP_TOOL]
    assert "[redacted]" in results[WHOAMI_TOOL]  # the server saw "Bearer <token>" ...
    stored = json.dumps(log)
    assert mcp_token not in stored and llm_key not in stored  # ... the event log does not

    # Every step of the setup and its use is in the audit log, and the chain verifies.
    actions = audit_actions(org_a)
    for expected in ("credential.created", "llm_provider.created", "model_alias.set",
                     "mcp_server.created", "mcp_server.tools_refreshed", "agent.deployed",
                     "session.started", "credential.used", "approval.decided"):
        assert expected in actions, (expected, actions)
    assert actions.count("credential.created") == 2
    assert actions.count("credential.used") >= 2  # the LLM key and the MCP token
    verify = org_a.admin.client.get(f"/api/v1/orgs/{org_a.slug}/audit/verify").json()
    assert verify["intact"] is True and verify["entries"] == len(actions)

    # --- org B, configured differently: the scripted provider and no MCP server -------------
    deploy(org_b, demo_package("1.0.0", []))
    b_run = start_session(org_b, {"timesheet": "2026-11-02,Bob,Borealis,8"})
    assert finish(org_b, b_run["id"])["status"] == "succeeded"
    assert len([r for r in fake.requests if r.path.endswith("/chat/completions")]) == 2
    b_log = events(org_b, b_run["id"])
    assert not [e for e in b_log if e["kind"] == "tool_call"
                and e["data"]["tool"].startswith("mcp.")]
    assert all(e["data"]["model"] != "gpt-scenario" for e in b_log
               if e["kind"] == "llm_response")
    b_actions = audit_actions(org_b)
    assert not {"llm_provider.created", "model_alias.set", "mcp_server.created"} & set(b_actions)
    for path in ("/llm/providers", "/llm/aliases", "/mcp/servers"):
        listed = org_b.admin.client.get(f"/api/v1/orgs/{org_b.slug}{path}")
        assert listed.status_code == 200 and listed.json() == [], (path, listed.text)
    # Org A's objects do not exist for org B.
    foreign = org_b.admin.client.get(f"/api/v1/orgs/{org_b.slug}/mcp/servers/{mcp['id']}")
    assert foreign.status_code == 404
    assert org_b.admin.client.get(
        f"/api/v1/orgs/{org_b.slug}/audit/verify").json()["intact"] is True

