"""Live event streams end when the caller's access ends (SQLite and PostgreSQL).

Threat model: an SSE stream is authorized once, when it opens, and a session waiting for an
approval keeps it open for days. Whoever held it must stop receiving the organization's
events soon after losing access: member removed, API key revoked, browser session signed
out, password changed (which signs out every other session). The stream re-checks the
caller like a new request would (tenancy/streams.py) every ENGINEX_STREAM_RECHECK_SECONDS,
and ends with an ``access_revoked`` event.

These tests run against a deployment of their own with a short re-check interval; each
stream follows a session that waits for an approval, so nothing else would end it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from enginex.migrate import upgrade
from tests.conftest import _ServerThread, separate_deployment
from tests.factories import (
    PASSWORD,
    Actor,
    Org,
    Server,
    add_member,
    deploy_agent,
    make_org,
    make_platform_admin,
    pending_approval,
    sign_in,
    start_session,
    wait_for,
    wait_for_status,
)
from tests.pg_private import PrivateCluster, private_pg  # noqa: F401 - the fixture

RECHECK_SECONDS = 1.0
DEADLINE = 45.0  # far above the interval: the machine is busy; before the fix: never


@pytest.fixture(scope="module")
def stream_server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with separate_deployment(backend, tmp_path_factory.mktemp(f"streams-{backend}"),
                             stream_recheck_seconds=RECHECK_SECONDS) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def tenant(stream_server: Server) -> Org:
    org = make_org(stream_server, make_platform_admin(stream_server), "st", with_keys=False)
    deploy_agent(org)
    return org


def waiting_session(org: Org) -> str:
    """A new session of the approval agent, once it waits for the manager's decision."""
    run = start_session(org)
    assert wait_for_status(org, run["id"], {"waiting_approval", "failed"},
                           timeout=60)["status"] == "waiting_approval"
    return str(run["id"])


class EventStream:
    """``GET .../events`` as SSE, read in a thread: the events seen, and whether it ended."""

    def __init__(self, server: Server, org: Org, run_id: str, headers: dict[str, str]) -> None:
        self.events: list[tuple[str, Any]] = []
        self.status: int | None = None
        self.ended = threading.Event()
        self._client = httpx.Client(base_url=server.base_url,
                                    timeout=httpx.Timeout(30, read=DEADLINE + 30))
        self._url = f"/api/v1/orgs/{org.slug}/sessions/{run_id}/events"
        self._headers = {"Accept": "text/event-stream", **headers}
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            with self._client.stream("GET", self._url, headers=self._headers) as response:
                self.status = response.status_code
                kind = None
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        kind = line[len("event: "):]
                    elif line.startswith("data: ") and kind:
                        self.events.append((kind, json.loads(line[len("data: "):])))
                        kind = None
        except Exception:  # closed by the test, or a broken stream: both end it
            pass
        finally:
            self.ended.set()

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def wait_for(self, kind: str, timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while kind not in self.kinds:
            assert not self.ended.is_set(), f"stream ended early: {self.status} {self.kinds}"
            assert time.monotonic() < deadline, f"no '{kind}' event: {self.kinds}"
            time.sleep(0.05)

    def assert_ends_revoked(self) -> dict[str, Any]:
        """The stream ends within the deadline and its last event is ``access_revoked``."""
        assert self.ended.wait(DEADLINE), \
            f"the stream is still open {DEADLINE:.0f} s after access ended: {self.kinds}"
        assert self.kinds and self.kinds[-1] == "access_revoked", self.kinds
        assert "end" not in self.kinds
        error = self.events[-1][1]["error"]
        assert error["code"] == "access_revoked" and error["message"]
        return error

    def close(self) -> None:
        self._client.close()
        self._thread.join(timeout=30)


def cookie_headers(server: Server, actor: Actor) -> dict[str, str]:
    name = server.settings.session_cookie_name
    return {"Cookie": f"{name}={actor.client.cookies.get(name)}"}


def test_a_removed_member_stops_receiving(stream_server: Server, tenant: Org) -> None:
    run_id = waiting_session(tenant)
    leaving = add_member(stream_server, tenant, "viewer")
    staying = tenant.members["viewer"]
    gone = EventStream(stream_server, tenant, run_id, cookie_headers(stream_server, leaving))
    kept = EventStream(stream_server, tenant, run_id, cookie_headers(stream_server, staying))
    try:
        gone.wait_for("approval_requested")
        kept.wait_for("approval_requested")
        removed = tenant.admin.client.delete(
            f"/api/v1/orgs/{tenant.slug}/members/{leaving.user_id}")
        assert removed.status_code == 204, removed.text
        error = gone.assert_ends_revoked()
        assert error["details"]["reason"] == "not_found"
        # The member who still belongs keeps following: re-checks pass for them, and the
        # stream ends normally when the session finishes.
        assert not kept.ended.is_set(), kept.kinds
        approval = pending_approval(tenant, run_id)
        decided = tenant.members["operator"].client.post(
            f"/api/v1/orgs/{tenant.slug}/approvals/{approval['id']}/decision",
            json={"decision": "approve"})
        assert decided.status_code == 200, decided.text
        assert kept.ended.wait(DEADLINE), kept.kinds
        assert kept.kinds[-1] == "end" and "access_revoked" not in kept.kinds
    finally:
        gone.close()
        kept.close()
        leaving.close()


def test_a_revoked_api_key_stops_receiving(stream_server: Server, tenant: Org) -> None:
    run_id = waiting_session(tenant)
    created = tenant.admin.client.post(f"/api/v1/orgs/{tenant.slug}/api-keys",
                                       json={"name": "dashboard tv", "role": "viewer"})
    assert created.status_code == 201, created.text
    key = created.json()
    stream = EventStream(stream_server, tenant, run_id,
                         {"Authorization": f"Bearer {key['token']}"})
    try:
        stream.wait_for("approval_requested")
        revoked = tenant.admin.client.delete(f"/api/v1/orgs/{tenant.slug}/api-keys/{key['id']}")
        assert revoked.status_code == 204, revoked.text
        error = stream.assert_ends_revoked()
        assert error["details"]["reason"] == "unauthenticated"
    finally:
        stream.close()


def test_a_signed_out_session_stops_receiving(stream_server: Server, tenant: Org) -> None:
    run_id = waiting_session(tenant)
    laptop = sign_in(stream_server, tenant.members["viewer"].email)
    stream = EventStream(stream_server, tenant, run_id, cookie_headers(stream_server, laptop))
    try:
        stream.wait_for("approval_requested")
        assert laptop.client.post("/api/v1/auth/logout").status_code == 204
        error = stream.assert_ends_revoked()
        assert error["details"]["reason"] == "session_expired"
    finally:
        stream.close()
        laptop.close()


def test_a_password_change_stops_other_sessions_streams(stream_server: Server,
                                                        tenant: Org) -> None:
    """The stolen-cookie case: the owner changes the password on another device, and the
    stream opened with the old session must stop."""
    run_id = waiting_session(tenant)
    member = add_member(stream_server, tenant, "operator")
    stolen = sign_in(stream_server, member.email)
    stream = EventStream(stream_server, tenant, run_id, cookie_headers(stream_server, stolen))
    try:
        stream.wait_for("approval_requested")
        changed = member.client.post("/api/v1/me/password", json={
            "current_password": PASSWORD,
            "new_password": "a-new-pass-phrase-77"})
        assert changed.status_code == 200, changed.text
        error = stream.assert_ends_revoked()
        assert error["details"]["reason"] == "session_expired"
    finally:
        stream.close()
        stolen.close()
        member.close()


class _Postponed(logging.Handler):
    """Counts the stream's 'access re-check postponed' log records (database unavailable)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "re-check postponed" in record.getMessage():
            self.count += 1


def test_a_database_restart_postpones_the_recheck_and_keeps_the_stream(
        private_pg: PrivateCluster, tmp_path: Path) -> None:  # noqa: F811
    """PostgreSQL stops while a stream is open: the re-checks fail with connection errors,
    which say nothing about the caller's access, so the stream stays open and is re-checked
    on the next ticks; once the database is back, the re-check works again (a revoked key
    still ends the stream)."""
    database = private_pg.create_database()
    settings = private_pg.settings_for(database, tmp_path / "data",
                                       stream_recheck_seconds=RECHECK_SECONDS)
    upgrade(settings)
    thread = _ServerThread(settings)
    thread.start()
    postponed = _Postponed()
    streams_log = logging.getLogger("enginex.streams")
    streams_log.addHandler(postponed)
    stream: EventStream | None = None
    try:
        server = Server(base_url=f"http://127.0.0.1:{thread.port}", settings=thread.settings,
                        backend="postgres", app=thread.app)
        org = make_org(server, make_platform_admin(server), "pgst", with_keys=False)
        deploy_agent(org)
        run_id = waiting_session(org)
        created = org.admin.client.post(f"/api/v1/orgs/{org.slug}/api-keys",
                                        json={"name": "wall screen", "role": "viewer"})
        assert created.status_code == 201, created.text
        key = created.json()
        stream = EventStream(server, org, run_id, {"Authorization": f"Bearer {key['token']}"})
        stream.wait_for("approval_requested")
        private_pg.stop()
        try:
            wait_for(lambda: postponed.count >= 3 or stream.ended.is_set(),
                     what="three re-checks to meet the stopped database", timeout=DEADLINE)
            assert not stream.ended.is_set(), f"the outage ended the stream: {stream.kinds}"
        finally:
            private_pg.start()
        revoked = org.admin.client.delete(f"/api/v1/orgs/{org.slug}/api-keys/{key['id']}")
        assert revoked.status_code == 204, revoked.text
        error = stream.assert_ends_revoked()
        assert error["details"]["reason"] == "unauthenticated"
    finally:
        streams_log.removeHandler(postponed)
        if stream is not None:
            stream.close()
        thread.stop()


def test_every_event_stream_goes_through_the_rechecking_helper() -> None:
    """Only ``tenancy/streams.py`` builds ``text/event-stream`` responses: a route that made
    its own would skip the access re-checks."""
    from pathlib import Path

    import enginex

    root = Path(enginex.__file__).parent
    helper = root / "tenancy" / "streams.py"
    builders = [str(path.relative_to(root)) for path in root.rglob("*.py")
                if path != helper and 'media_type="text/event-stream"' in path.read_text()]
    assert builders == [], f"SSE responses built outside tenancy/streams.py: {builders}"
    assert 'media_type="text/event-stream"' in helper.read_text()
