"""Credentials used by runs (SQLite and PostgreSQL): resolution, redaction, audit, OAuth2.

Threat model: a run only ever resolves its own organization's credentials, by name, at the
moment of use, and only from the agent package's own text (never from inputs or model output);
the plaintext is used (the target server receives it) but never stored: not in events,
checkpoints, errors, logs, the database file or a pg_dump, even when the target echoes it
back. Every decrypt-for-use is audited with its run and node. OAuth2 tokens are refreshed
shortly before expiry, once, however many runs need them at the same time.

These tests run against a server of their own that may reach 127.0.0.1
(ENGINEX_ALLOW_PRIVATE_NETWORK), where the echo and token servers live.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from enginex.agents.cli import zip_directory
from enginex.audit.models import AuditEntry
from enginex.credentials.runtime import CredentialRuntime
from enginex.db import Database, set_tenant
from enginex.kit.time import utcnow
from enginex.tenancy.context import system_context
from tests.conftest import PG_ADMIN_DSN, separate_deployment
from tests.factories import (
    Actor,
    Org,
    Server,
    make_org,
    make_platform_admin,
    run_db,
    wait_for_status,
)
from tests.fake_llm import FakeLLM, FakeReply, serve

# --- a server that may reach 127.0.0.1, and the servers it talks to ---------------------------


@pytest.fixture(scope="module")
def vault_server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with separate_deployment(backend, tmp_path_factory.mktemp(f"vault-{backend}"),
                             allow_private_network=True) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def vault_admin(vault_server: Server) -> Actor:
    return make_platform_admin(vault_server)


@pytest.fixture(scope="module")
def tenant_a(vault_server: Server, vault_admin: Actor) -> Org:
    return make_org(vault_server, vault_admin, "va", with_keys=False)


@pytest.fixture(scope="module")
def tenant_b(vault_server: Server, vault_admin: Actor) -> Org:
    return make_org(vault_server, vault_admin, "vb", with_keys=False)


class Echo(BaseHTTPRequestHandler):
    """Answers every request with what it received (headers, query, body): the worst case of
    a target that reflects the secret it was sent."""

    received: list[dict[str, Any]] = []

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        seen = {"method": self.command, "path": self.path, "headers": dict(self.headers),
                "query": parse_qs(urlsplit(self.path).query), "body": body}
        Echo.received.append(seen)
        data = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


class TokenEndpoint(BaseHTTPRequestHandler):
    """An OAuth2 token endpoint (refresh_token grant, client_secret_basic), answering slowly
    so that concurrent refreshes would overlap."""

    calls: list[dict[str, Any]] = []
    delay = 0.5
    fail_with: str | None = None
    lock = threading.Lock()

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        with TokenEndpoint.lock:
            TokenEndpoint.calls.append({"form": form,
                                        "authorization": self.headers.get("authorization")})
            n = len(TokenEndpoint.calls)
        time.sleep(TokenEndpoint.delay)
        if TokenEndpoint.fail_with:
            status, payload = 400, {"error": TokenEndpoint.fail_with,
                                    "error_description": f"bad {form.get('refresh_token')}"}
        else:
            status, payload = 200, {"access_token": f"fresh-access-{n}-{secrets.token_hex(8)}",
                                    "refresh_token": f"fresh-refresh-{n}-{secrets.token_hex(8)}",
                                    "token_type": "Bearer", "expires_in": 3600}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    with serve(Echo) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def token_endpoint() -> Iterator[str]:
    with serve(TokenEndpoint) as base_url:
        yield base_url


@pytest.fixture(autouse=True)
def _reset_servers() -> None:
    Echo.received.clear()
    TokenEndpoint.calls.clear()
    TokenEndpoint.delay, TokenEndpoint.fail_with = 0.5, None


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured_logs() -> Iterator[_Capture]:
    capture = _Capture()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(previous)


# --- helpers -----------------------------------------------------------------------------------


def canary(label: str) -> str:
    return f"canary-{label}-{secrets.token_hex(12)}"


def add_credential(org: Org, **body: Any) -> dict[str, Any]:
    response = org.admin.client.post(f"/api/v1/orgs/{org.slug}/credentials", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def deploy(org: Org, tmp_path: Path, manifest: dict[str, Any]) -> None:
    directory = tmp_path / f"pkg-{secrets.token_hex(4)}"
    directory.mkdir()
    (directory / "agent.json").write_text(json.dumps(manifest))
    response = org.members["builder"].client.post(
        f"/api/v1/orgs/{org.slug}/agents",
        files={"package": ("package.zip", zip_directory(directory), "application/zip")})
    assert response.status_code in (200, 201), response.text


def start(org: Org, agent: str, inputs: dict[str, Any]) -> str:
    response = org.members["operator"].client.post(f"/api/v1/orgs/{org.slug}/sessions",
                                                   json={"agent": agent, "inputs": inputs})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def stored_text(org: Org, run_id: str) -> str:
    """Everything the API serves about a run: the run, its events and checkpoints."""
    client = org.admin.client
    base = f"/api/v1/orgs/{org.slug}/sessions/{run_id}"
    return "\n".join(client.get(base + suffix).text for suffix in ("", "/events",
                                                                    "/checkpoints"))


def audit(server: Server, org: Org, prefix: str) -> list[AuditEntry]:
    async def work(session: Any) -> list[AuditEntry]:
        await set_tenant(session, uuid.UUID(org.id))
        stmt = select(AuditEntry).where(AuditEntry.action.startswith(prefix)) \
            .order_by(AuditEntry.at)
        return list((await session.execute(stmt)).scalars())

    return run_db(server, work)


def sqlite_file_bytes(db_file: Path) -> bytes:
    """The database file and its WAL as bytes, read by a child process: closing a file
    descriptor of the database in this process (where the server runs) would drop SQLite's
    POSIX locks for every connection of the process."""
    files = [str(p) for p in (db_file, db_file.with_name(db_file.name + "-wal")) if p.exists()]
    return subprocess.run(["cat", *files], capture_output=True, timeout=60, check=True).stdout


def database_bytes(server: Server) -> bytes:
    """A copy of the whole database: the SQLite files as bytes, or pg_dump's output."""
    settings = server.settings
    if server.backend == "sqlite":
        return sqlite_file_bytes(Path(settings.data_dir) / "enginex.db")
    name = settings.database_url.rsplit("/", 1)[1]
    dump = subprocess.run(["pg_dump", "--dbname", PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name],
                          capture_output=True, timeout=120, check=True)
    assert b"CREATE TABLE public.credentials" in dump.stdout
    return dump.stdout


def forms(value: str) -> list[str]:
    return [value, base64.b64encode(value.encode()).decode()]


ECHO_AGENT = "credential-echo"


def echo_manifest(echo_url: str) -> dict[str, Any]:
    return {
        "agent": {"id": ECHO_AGENT, "name": "Credential echo", "version": "1.0.0"},
        "inputs": {"note": {"type": "string"}},
        "required_tools": ["http_request"],
        "graph": {
            "entry_node": "call", "terminal_nodes": ["think"], "max_steps": 5,
            "nodes": [
                {"id": "call", "node_type": "tool", "tool": "http_request", "output_key": "page",
                 "arguments": {
                     "method": "POST",
                     "url": echo_url + "/echo?t={{credentials.echo-token.token}}",
                     "headers": {"X-Api-Key": "{{ credentials.echo-key.key }}",
                                 "X-Note": "{{ inputs.note }}"},
                     "json": {"sent": "{{credentials.echo-token.token}}",
                              "note": "{{ inputs.note }}"},
                     "credential": "echo-basic"}},
                {"id": "think", "node_type": "llm", "tools": ["http_request"],
                 "output_keys": ["answer"]},
            ],
            "edges": [{"source": "call", "target": "think", "condition": "on_success"}],
        },
        "scripted_replies": {"think": [
            {"tool_calls": [{"name": "http_request",
                             "arguments": {"url": echo_url + "/llm", "credential": "echo-token"}}]},
            {"tool_calls": [{"name": "set_output", "arguments": {"key": "answer",
                                                                 "value": "done"}}]},
        ]},
    }


def give_echo_credentials(org: Org) -> dict[str, str]:
    values = {"token": canary("token"), "key": canary("key"), "user": canary("user"),
              "password": canary("password")}
    add_credential(org, name="echo-token", type="bearer_token", values={"token": values["token"]})
    add_credential(org, name="echo-key", type="api_key", values={"key": values["key"]})
    add_credential(org, name="echo-basic", type="basic_auth",
                   values={"username": values["user"], "password": values["password"]})
    return values


# --- tests -------------------------------------------------------------------------------------


def test_a_target_echoing_the_secrets_never_gets_them_stored(
        vault_server: Server, tenant_a: Org, tenant_b: Org, echo: str, tmp_path: Path,
        captured_logs: _Capture) -> None:
    values = give_echo_credentials(tenant_a)
    other = give_echo_credentials(tenant_b)  # same names, other values
    for org in (tenant_a, tenant_b):
        deploy(org, tmp_path, echo_manifest(echo))
    # An input that spells a credential placeholder stays text: only the package may
    # reference credentials.
    injected = "{{credentials.echo-key.key}}"
    run_a = start(tenant_a, ECHO_AGENT, {"note": injected})
    done = wait_for_status(tenant_a, run_a, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done

    call, llm_call = Echo.received[0], Echo.received[1]
    basic = base64.b64encode(f"{values['user']}:{values['password']}".encode()).decode()
    assert call["headers"]["X-Api-Key"] == values["key"]
    assert call["headers"]["Authorization"] == f"Basic {basic}"
    assert call["query"]["t"] == [values["token"]]
    assert json.loads(call["body"]) == {"sent": values["token"], "note": injected}
    assert call["headers"]["X-Note"] == injected
    assert llm_call["path"] == "/llm"
    assert llm_call["headers"]["Authorization"] == f"Bearer {values['token']}"

    # Tenant B's run, same agent and credential names: B's values, never A's.
    run_b = start(tenant_b, ECHO_AGENT, {"note": "b"})
    assert wait_for_status(tenant_b, run_b, {"succeeded", "failed"})["status"] == "succeeded"
    assert Echo.received[2]["headers"]["X-Api-Key"] == other["key"]
    assert Echo.received[3]["headers"]["Authorization"] == f"Bearer {other['token']}"

    stored = stored_text(tenant_a, run_a) + stored_text(tenant_b, run_b)
    assert "[redacted]" in stored and injected in stored
    everything = [*values.values(), *other.values(), basic]
    dump = database_bytes(vault_server)
    logs = "\n".join(captured_logs.lines)
    for value in everything:
        for form in forms(value):
            assert form not in stored
            assert form.encode() not in dump
            assert form not in logs

    uses = audit(vault_server, tenant_a, "credential.used")
    assert sorted((u.details["name"], u.details["node_id"]) for u in uses) == [
        ("echo-basic", "call"), ("echo-key", "call"), ("echo-token", "call"),
        ("echo-token", "think")]
    assert {u.details["run_id"] for u in uses} == {run_a}
    assert all(u.actor_kind == "system" for u in uses)
    last_used = tenant_a.admin.client.get(f"/api/v1/orgs/{tenant_a.slug}/credentials").json()
    assert {c["name"] for c in last_used} == {"echo-token", "echo-key", "echo-basic"}


def test_unknown_or_foreign_credentials_fail_the_step_safely(
        vault_server: Server, tenant_a: Org, tenant_b: Org, echo: str, tmp_path: Path) -> None:
    only_a = canary("only-a")
    add_credential(tenant_a, name="only-in-a", type="api_key", values={"key": only_a})
    manifest = {
        "agent": {"id": "uses-missing", "name": "Missing", "version": "1.0.0"},
        "graph": {"entry_node": "call", "terminal_nodes": ["call"], "nodes": [
            {"id": "call", "node_type": "tool", "tool": "http_request",
             "arguments": {"url": echo + "/x", "headers": {
                 "X-Key": "{{credentials.only-in-a.key}}"}}}]}}
    deploy(tenant_b, tmp_path, manifest)
    run = start(tenant_b, "uses-missing", {})
    failed = wait_for_status(tenant_b, run, {"succeeded", "failed"})
    assert failed["status"] == "failed"
    assert failed["error"] == "no credential named 'only-in-a' in this organization"
    assert not Echo.received and only_a not in stored_text(tenant_b, run)
    # A field the type does not expose is refused by name, without a value.
    manifest["agent"]["version"] = "1.0.1"
    manifest["graph"]["nodes"][0]["arguments"]["headers"] = {
        "X-Key": "{{credentials.echo-basic.secret}}"}
    deploy(tenant_b, tmp_path, manifest)
    if not any(c["name"] == "echo-basic" for c in tenant_b.admin.client.get(
            f"/api/v1/orgs/{tenant_b.slug}/credentials").json()):
        give_echo_credentials(tenant_b)
    run = start(tenant_b, "uses-missing", {})
    failed = wait_for_status(tenant_b, run, {"succeeded", "failed"})
    assert failed["error"] == ("the credential 'echo-basic' has no field 'secret' a tool may "
                               "use (use one of: username, password)")


def test_the_llm_api_key_is_audited_and_redacted(vault_server: Server, tenant_a: Org,
                                                 tmp_path: Path) -> None:
    key = canary("llm-key")
    with FakeLLM() as fake:
        saved = tenant_a.admin.client.put(f"/api/v1/orgs/{tenant_a.slug}/settings/llm", json={
            "provider": "openai_compatible", "base_url": fake.openai_base_url,
            "default_model": "gpt-fake", "api_key": key})
        assert saved.status_code == 200, saved.text
        fake.queue(FakeReply(text=f"my key is {key}",
                             tool_calls=[("set_output", {"key": "answer", "value": key})]))
        deploy(tenant_a, tmp_path, {
            "agent": {"id": "talker", "name": "Talker", "version": "1.0.0"},
            "graph": {"entry_node": "talk", "terminal_nodes": ["talk"], "nodes": [
                {"id": "talk", "node_type": "llm", "output_keys": ["answer"]}]}})
        run = start(tenant_a, "talker", {})
        done = wait_for_status(tenant_a, run, {"succeeded", "failed"})
        assert done["status"] == "succeeded", done
        assert fake.requests[-1].headers["authorization"] == f"Bearer {key}"
    tenant_a.admin.client.put(f"/api/v1/orgs/{tenant_a.slug}/settings/llm",
                              json={"provider": "scripted"})
    stored = stored_text(tenant_a, run)
    assert key not in stored and "my key is [redacted]" in stored
    uses = audit(vault_server, tenant_a, "llm_settings.key_used")
    assert [(u.details["run_id"], u.details["node_id"]) for u in uses] == [(run, "talk")]


# --- OAuth2 ------------------------------------------------------------------------------------


def oauth_credential(org: Org, token_endpoint: str, *, expires_in: timedelta,
                     name: str = "oauth") -> dict[str, str]:
    values = {"access_token": canary("stale-access"), "refresh_token": canary("refresh"),
              "client_secret": canary("client-secret")}
    add_credential(org, name=name, type="oauth2", values=values,
                   token_url=token_endpoint + "/token", client_id="enginex-test",
                   scope="read", expires_at=(utcnow() + expires_in).isoformat())
    return values


def test_oauth2_tokens_are_refreshed_once_before_expiry(
        vault_server: Server, tenant_a: Org, echo: str, token_endpoint: str,
        tmp_path: Path) -> None:
    old = oauth_credential(tenant_a, token_endpoint, expires_in=timedelta(seconds=20))
    deploy(tenant_a, tmp_path, {
        "agent": {"id": "oauth-user", "name": "OAuth user", "version": "1.0.0"},
        "graph": {"entry_node": "call", "terminal_nodes": ["call"], "nodes": [
            {"id": "call", "node_type": "tool", "tool": "http_request",
             "arguments": {"url": echo + "/api", "credential": "oauth"}}]}})
    # Two runs at once, both needing the expiring token: one refresh between them.
    runs = [start(tenant_a, "oauth-user", {}) for _ in range(2)]
    for run in runs:
        assert wait_for_status(tenant_a, run, {"succeeded", "failed"})["status"] == "succeeded"
    assert len(TokenEndpoint.calls) == 1
    call = TokenEndpoint.calls[0]
    assert call["form"] == {"grant_type": "refresh_token", "refresh_token": old["refresh_token"],
                            "scope": "read"}
    client_auth = base64.b64encode(f"enginex-test:{old['client_secret']}".encode()).decode()
    assert call["authorization"] == f"Basic {client_auth}"
    sent = {r["headers"]["Authorization"] for r in Echo.received}
    assert len(sent) == 1 and sent.pop().startswith("Bearer fresh-access-1-")

    listed = tenant_a.admin.client.get(f"/api/v1/orgs/{tenant_a.slug}/credentials").json()
    oauth_id = next(c["id"] for c in listed if c["name"] == "oauth")
    meta = tenant_a.admin.client.get(f"/api/v1/orgs/{tenant_a.slug}/credentials/{oauth_id}")
    assert meta.json()["value_version"] == 2 and meta.json()["refreshed_at"] is not None
    refreshed = [e.details for e in audit(vault_server, tenant_a, "credential.refreshed")]
    assert len(refreshed) == 1 and refreshed[0]["run_id"] in runs
    stored = "".join(stored_text(tenant_a, r) for r in runs)
    assert "fresh-access" not in stored and old["refresh_token"] not in stored

    # Not due (an hour left): used as is, no refresh.
    again = start(tenant_a, "oauth-user", {})
    assert wait_for_status(tenant_a, again, {"succeeded", "failed"})["status"] == "succeeded"
    assert len(TokenEndpoint.calls) == 1


def test_a_failed_refresh_fails_the_step_without_secrets(
        vault_server: Server, tenant_b: Org, echo: str, token_endpoint: str,
        tmp_path: Path) -> None:
    old = oauth_credential(tenant_b, token_endpoint, expires_in=timedelta(seconds=-5),
                           name="broken-oauth")
    TokenEndpoint.fail_with, TokenEndpoint.delay = "invalid_grant", 0
    deploy(tenant_b, tmp_path, {
        "agent": {"id": "oauth-broken", "name": "OAuth broken", "version": "1.0.0"},
        "graph": {"entry_node": "call", "terminal_nodes": ["call"], "nodes": [
            {"id": "call", "node_type": "tool", "tool": "http_request",
             "arguments": {"url": echo + "/api", "credential": "broken-oauth"}}]}})
    run = start(tenant_b, "oauth-broken", {})
    failed = wait_for_status(tenant_b, run, {"succeeded", "failed"})
    assert failed["status"] == "failed"
    assert "could not be refreshed: the token endpoint answered HTTP 400 (invalid_grant)" in \
        failed["error"]
    assert not Echo.received
    stored = stored_text(tenant_b, run)
    assert not any(v in stored for v in old.values())
    failures = audit(vault_server, tenant_b, "credential.refresh_failed")
    assert failures and not any(v in json.dumps([f.details for f in failures])
                                for v in old.values())

    # A token that is due for refresh but not expired yet is still used when refreshing
    # fails (the failure is audited; the next use tries again).
    soon = oauth_credential(tenant_b, token_endpoint, expires_in=timedelta(seconds=30),
                            name="soon-oauth")
    manifest_soon = {
        "agent": {"id": "oauth-soon", "name": "OAuth soon", "version": "1.0.0"},
        "graph": {"entry_node": "call", "terminal_nodes": ["call"], "nodes": [
            {"id": "call", "node_type": "tool", "tool": "http_request",
             "arguments": {"url": echo + "/api", "credential": "soon-oauth"}}]}}
    deploy(tenant_b, tmp_path, manifest_soon)
    run = start(tenant_b, "oauth-soon", {})
    assert wait_for_status(tenant_b, run, {"succeeded", "failed"})["status"] == "succeeded"
    assert Echo.received[-1]["headers"]["Authorization"] == f"Bearer {soon['access_token']}"
    assert len(audit(vault_server, tenant_b, "credential.refresh_failed")) == len(failures) + 1


def test_refreshes_are_serialized_by_the_database_across_processes(
        vault_server: Server, tenant_a: Org, token_endpoint: str) -> None:
    """Two resolvers that share nothing but the database (as two worker processes would):
    the row lock (PostgreSQL) or the single writer (SQLite) lets one refresh, and the other
    finds the new token."""
    oauth_credential(tenant_a, token_endpoint, expires_in=timedelta(seconds=10),
                     name="shared-oauth")
    ctx = system_context(uuid.UUID(tenant_a.id), tenant_a.slug)
    master = vault_server.app.state.master_key

    async def main() -> list[str]:
        databases = [Database(vault_server.settings) for _ in range(2)]
        try:
            runtimes = [CredentialRuntime.for_master(d.sessions, master,
                                                     allow_private_network=True)
                        for d in databases]
            resolved = await asyncio.gather(*(
                r.use(ctx, uuid.uuid4(), "node", "shared-oauth") for r in runtimes))
            return [r.values["access_token"] for r in resolved]
        finally:
            for d in databases:
                await d.dispose()

    tokens = asyncio.run(main())
    assert len(TokenEndpoint.calls) == 1
    assert tokens[0] == tokens[1] and tokens[0].startswith("fresh-access-1-")
