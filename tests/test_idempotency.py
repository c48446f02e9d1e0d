"""Idempotent session starts (``Idempotency-Key``): a retried start never creates twice,
including after the API process that saved the session was killed before it answered."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import TIMESHEET, Org, Server, add_member, deploy_agent, free_port


def _sessions(org: Org) -> list[dict[str, Any]]:
    response = org.members["viewer"].client.get(f"/api/v1/orgs/{org.slug}/sessions",
                                                params={"limit": 200})
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def _start(client: httpx.Client, org: Org, key: str | None, marker: str = "",
           **extra: Any) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post(f"/api/v1/orgs/{org.slug}/sessions", headers=headers, json={
        "agent": "hourly-tracking", "inputs": {"timesheet": TIMESHEET + marker}, **extra})


def test_a_retry_with_the_same_key_answers_the_first_session(server: Server,
                                                             org_a: Org) -> None:
    deploy_agent(org_a)
    operator = org_a.members["operator"].client
    key = secrets.token_urlsafe(16)
    first = _start(operator, org_a, key)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    again = _start(operator, org_a, key)
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert [s["id"] for s in _sessions(org_a)] == [first.json()["id"]]
    other = _start(operator, org_a, secrets.token_urlsafe(16))
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert len(_sessions(org_a)) == 2


def test_a_key_reused_for_another_request_or_caller_is_refused(server: Server,
                                                               org_a: Org) -> None:
    deploy_agent(org_a)
    operator = org_a.members["operator"].client
    key = secrets.token_urlsafe(16)
    assert _start(operator, org_a, key).status_code == 201
    different_body = _start(operator, org_a, key, marker="2026-11-04,Bob,Apollo,1\n")
    assert different_body.status_code == 409, different_body.text
    error = different_body.json()["error"]
    assert error["code"] == "idempotency_key_reused" and "new unique key" in error["message"]
    other_operator = add_member(server, org_a, "operator")
    other_caller = _start(other_operator.client, org_a, key)
    assert other_caller.status_code == 409
    assert other_caller.json()["error"]["code"] == "idempotency_key_reused"
    assert len(_sessions(org_a)) == 1


@pytest.mark.parametrize("key", ["", "with space", "x" * 256, "tab\there"])
def test_a_malformed_key_gets_a_clear_error_and_starts_nothing(server: Server, org_a: Org,
                                                                key: str) -> None:
    deploy_agent(org_a)
    response = _start(org_a.members["operator"].client, org_a, key)
    assert response.status_code == 422, response.text
    assert "Idempotency-Key" in response.json()["error"]["message"]
    assert _sessions(org_a) == []


def test_the_same_key_in_another_organization_is_another_key(server: Server, org_a: Org,
                                                             org_b: Org) -> None:
    deploy_agent(org_a)
    deploy_agent(org_b)
    key = secrets.token_urlsafe(16)
    in_a = _start(org_a.members["operator"].client, org_a, key)
    in_b = _start(org_b.members["operator"].client, org_b, key)
    assert in_a.status_code == in_b.status_code == 201
    assert "idempotent-replayed" not in in_b.headers
    assert in_a.json()["id"] != in_b.json()["id"]
    assert [s["id"] for s in _sessions(org_b)] == [in_b.json()["id"]]


def test_concurrent_starts_with_one_key_create_one_session(server: Server, org_a: Org) -> None:
    deploy_agent(org_a)
    key = secrets.token_urlsafe(16)
    token = org_a.api_keys["operator"]
    answers: list[httpx.Response] = []
    barrier = threading.Barrier(12)

    def start() -> None:
        with httpx.Client(base_url=server.base_url, timeout=60,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            barrier.wait(timeout=60)
            answers.append(_start(client, org_a, key))

    threads = [threading.Thread(target=start) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == 12
    assert {r.status_code for r in answers} == {201}, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in answers) == 11
    assert len(_sessions(org_a)) == 1


def test_a_fork_retried_with_its_key_forks_once(server: Server, org_a: Org) -> None:
    deploy_agent(org_a)
    operator = org_a.members["operator"].client
    run = _start(operator, org_a, None).json()
    cancelled = operator.post(f"/api/v1/orgs/{org_a.slug}/sessions/{run['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    key = secrets.token_urlsafe(16)
    forks = [operator.post(f"/api/v1/orgs/{org_a.slug}/sessions/{run['id']}/fork",
                           headers={"Idempotency-Key": key}, json={"step": 0})
             for _ in range(2)]
    assert [f.status_code for f in forks] == [201, 201], [f.text for f in forks]
    assert forks[0].json()["id"] == forks[1].json()["id"]
    assert len(_sessions(org_a)) == 2


# --- a killed API process ----------------------------------------------------------------------


def _serve_command(port: int) -> list[str]:
    script = shutil.which("enginex", path=str(Path(sys.executable).parent))
    prefix = [script] if script else [sys.executable, "-c",
                                      "from enginex.cli import main; main()"]
    return [*prefix, "serve", "--no-worker", "--port", str(port)]


def _start_api(server: Server, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Another API process of the same deployment (same database, key and storage), as a
    replica behind a load balancer would be, and its base URL once it answers."""
    settings = server.settings
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ENGINEX_")},
           "ENGINEX_DATABASE_URL": settings.resolved_database_url,
           "ENGINEX_MIGRATION_DATABASE_URL": settings.resolved_migration_url,
           "ENGINEX_MASTER_KEY": settings.master_key,
           "ENGINEX_DATA_DIR": str(settings.data_dir),
           "ENGINEX_STORAGE_DIR": str(settings.resolved_storage_dir),
           "ENGINEX_BASE_URL": settings.base_url,
           "ENGINEX_LOG_LEVEL": "WARNING"}
    with log_path.open("ab") as log:
        process = subprocess.Popen(_serve_command(port), env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200:
                return process, base_url
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            _kill(process)
            raise AssertionError("the second API process did not start: "
                                 + log_path.read_text())
        time.sleep(0.1)


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@pytest.fixture
def api_processes(server: Server, tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start() -> tuple[subprocess.Popen[bytes], str]:
        process, base_url = _start_api(server, tmp_path / "api.log")
        started.append(process)
        return process, base_url

    yield start
    for process in started:
        _kill(process)


def test_a_start_retried_after_its_api_process_was_killed_creates_one_session(
        server: Server, org_a: Org, api_processes: Any) -> None:
    """The first attempt reaches an API process that is killed with SIGKILL (once right after
    it answered, once while the request is in flight); the client never relies on that answer
    and retries with the same key on another API process: exactly one session either way."""
    deploy_agent(org_a)
    token = org_a.api_keys["operator"]
    auth = {"Authorization": f"Bearer {token}"}
    expected = 0
    for in_flight in (False, True):
        process, doomed_url = api_processes()
        key = secrets.token_urlsafe(16)
        first: list[httpx.Response] = []

        def send(url: str = doomed_url, key: str = key,
                 first: list[httpx.Response] = first) -> None:
            try:
                with httpx.Client(base_url=url, timeout=60, headers=auth) as doomed:
                    first.append(_start(doomed, org_a, key))
            except httpx.TransportError:
                pass  # the process died under the request: the client saw no answer

        sender = threading.Thread(target=send)
        sender.start()
        if not in_flight:
            sender.join(timeout=60)
            assert first and first[0].status_code == 201, first
        _kill(process)
        sender.join(timeout=60)
        with httpx.Client(base_url=server.base_url, timeout=60, headers=auth) as survivor:
            retry = _start(survivor, org_a, key)
        assert retry.status_code == 201, retry.text
        expected += 1
        sessions = _sessions(org_a)
        assert len(sessions) == expected, sessions
        if first and first[0].status_code == 201:
            assert retry.headers["idempotent-replayed"] == "true"
            assert retry.json()["id"] == first[0].json()["id"]
