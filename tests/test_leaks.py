"""Context and secret leaks: logs never carry secrets, storage never leaves a tenant's prefix."""

from __future__ import annotations

import logging
import secrets
import uuid
from pathlib import Path

import pytest

from enginex.kit.logs import ContextFilter, JsonFormatter, TextFormatter
from enginex.reports.storage import ArtifactStorage, StorageEscape
from tests.factories import (
    PASSWORD,
    Actor,
    Org,
    Server,
    accept,
    deploy_agent,
    pending_approval,
    start_session,
    wait_for_status,
)


class _Capture(logging.Handler):
    """Each record as production writes it: stamped (tenant_id, request_id, run_id) and
    formatted both ways (ENGINEX_LOG_FORMAT text and json)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(ContextFilter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(TextFormatter().format(record))
        self.lines.append(JsonFormatter().format(record))


@pytest.fixture
def captured_logs() -> _Capture:
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


def test_no_secret_or_token_reaches_the_logs(server: Server, org_a: Org, platform_admin: Actor,
                                             captured_logs: _Capture) -> None:
    admin = org_a.admin.client
    # Every kind of secret the platform handles, used once while logs are captured.
    key = admin.post(f"/api/v1/orgs/{org_a.slug}/api-keys",
                     json={"name": "log canary", "role": "viewer"}).json()["token"]
    invitation = admin.post(f"/api/v1/orgs/{org_a.slug}/invitations",
                            json={"email": f"logs-{secrets.token_hex(3)}@example.org",
                                  "role": "viewer"}).json()["token"]
    new_password = f"log-canary-{secrets.token_hex(8)}"
    assert accept(server, invitation, password=new_password).status_code == 200
    llm_key = f"sk-canary-{secrets.token_hex(12)}"
    saved = admin.put(f"/api/v1/orgs/{org_a.slug}/settings/llm", json={
        "provider": "scripted", "default_model": "scripted", "api_key": llm_key})
    assert saved.status_code == 200, saved.text
    admin.put(f"/api/v1/orgs/{org_a.slug}/settings/llm", json={
        "provider": "scripted", "default_model": "scripted", "api_key": ""})
    wrong = admin.post("/api/v1/auth/login", json={"email": "nobody@example.org",
                                                   "password": new_password})
    assert wrong.status_code == 401
    deploy_agent(org_a)
    run = start_session(org_a)
    wait_for_status(org_a, run["id"], {"waiting_approval"})
    org_a.members["operator"].client.post(
        f"/api/v1/orgs/{org_a.slug}/approvals/{pending_approval(org_a, run['id'])['id']}"
        "/decision", json={"decision": "approve"})
    wait_for_status(org_a, run["id"], {"succeeded"})
    cookie = org_a.admin.client.cookies.get(server.settings.session_cookie_name)
    csrf = org_a.admin.client.headers["X-CSRF-Token"]
    # Tokens are <prefix>_<org hex>_<secret>; the secret part may itself contain "_".
    secrets_used = [key, key[len("enx_") + 33:], invitation, invitation[len("inv_") + 33:],
                    new_password, PASSWORD, llm_key, cookie, csrf]
    assert captured_logs.lines, "log capture saw nothing: the test would prove nothing"
    request_lines = [line for line in captured_logs.lines if "tenant_id=" in line]
    assert any(org_a.id in line for line in request_lines), "request logs carry tenant_id"
    for line in captured_logs.lines:
        for secret in secrets_used:
            assert secret not in line, f"secret in log line: {line[:200]}"


def test_storage_paths_stay_under_the_tenant_prefix(tmp_path: Path) -> None:
    storage = ArtifactStorage(tmp_path)
    tenant, other = uuid.uuid4(), uuid.uuid4()
    artifact = uuid.uuid4()
    path = storage.write(tenant, artifact, b"report")
    assert path.is_relative_to(tmp_path.resolve() / tenant.hex)
    assert storage.read(tenant, artifact) == b"report"
    with pytest.raises(FileNotFoundError):
        storage.read(other, artifact)  # the same id under another tenant is another file
    # A symlink planted inside a tenant's prefix cannot lead out of it.
    outside = tmp_path / "outside"
    outside.mkdir()
    planted = uuid.uuid4()
    (tmp_path.resolve() / tenant.hex / "artifacts" / planted.hex).symlink_to(outside / "x")
    with pytest.raises(StorageEscape):
        storage.path_for(tenant, planted)


def test_report_storage_is_private_to_the_service_account(tmp_path: Path) -> None:
    storage = ArtifactStorage(tmp_path / "storage")
    tenant = uuid.uuid4()
    path = storage.write(tenant, uuid.uuid4(), b"private")
    assert path.stat().st_mode & 0o777 == 0o600
    for folder in (tmp_path / "storage", tmp_path / "storage" / tenant.hex, path.parent):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
