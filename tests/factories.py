"""Plain typed factories. Tenants and members are made through the real HTTP API."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from enginex.config import Settings

PASSWORD = "test-pass-phrase-42"
ROLES = ("admin", "builder", "operator", "viewer")
# How long a test waits for something to happen. Generous on purpose: the tests share a busy
# machine, and a condition met early ends the wait early.
WAIT_SECONDS = 60.0

T = TypeVar("T")
# ``make test-deep`` (ENGINEX_TEST_DEEP=1) runs the fuzz tests with their full example counts.
DEEP = os.environ.get("ENGINEX_TEST_DEEP", "").lower() in {"1", "true", "yes"}


def fuzz_examples(full: int, quick: int) -> int:
    """How many examples a fuzz test generates: ``full`` under ``make test-deep``, ``quick``
    (the same properties, fewer generated inputs) in ``make test``."""
    return full if DEEP else quick


def wait_for(condition: Callable[[], T], *, what: str, timeout: float = WAIT_SECONDS,
             interval: float = 0.05, sleep: Callable[[float], object] = time.sleep) -> T:
    """Call ``condition`` every ``interval`` seconds until it returns a truthy value, and
    return that value. AssertionError naming ``what`` (and the last value) when ``timeout``
    seconds pass first. Tests wait on a condition this way, never on a fixed sleep.
    ``sleep``: how to pause (a browser test pauses the page, which delivers its events)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}; last: {value!r}")
        sleep(interval)


async def wait_for_async(condition: Callable[[], Awaitable[T]], *, what: str,
                         within: float = WAIT_SECONDS, interval: float = 0.05) -> T:
    """``wait_for`` inside an event loop: awaits ``condition`` until it returns a truthy
    value, at most ``within`` seconds (pausing with ``asyncio.sleep``, so the loop's other
    tasks run)."""
    deadline = time.monotonic() + within
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {within:g} s for {what}; last: {value!r}")
        await asyncio.sleep(interval)


@dataclass
class Server:
    base_url: str
    settings: Settings
    backend: str
    app: Any


@dataclass
class Actor:
    """A signed-in user (cookie + CSRF header) or an API key, with an httpx client."""

    email: str
    client: httpx.Client
    user_id: str = ""
    role: str = ""

    def close(self) -> None:
        self.client.close()


@dataclass
class Org:
    id: str
    slug: str
    name: str
    members: dict[str, Actor] = field(default_factory=dict)
    api_keys: dict[str, str] = field(default_factory=dict)

    @property
    def admin(self) -> Actor:
        return self.members["admin"]


def anonymous(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=30)


def sign_in(server: Server, email: str, password: str = PASSWORD) -> Actor:
    client = anonymous(server)
    response = client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    body = response.json()
    client.headers["X-CSRF-Token"] = body["csrf_token"]
    return Actor(email=email, client=client, user_id=body["user_id"])


def api_key_client(server: Server, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=30,
                        headers={"Authorization": f"Bearer {token}"})


def make_platform_admin(server: Server) -> Actor:
    from enginex.orgs.service import ensure_user

    email = f"root-{secrets.token_hex(4)}@platform.test"

    async def work(session: Any) -> None:
        user, _ = await ensure_user(session, email=email, password=PASSWORD, platform_admin=True)
        user.is_platform_admin = True

    run_db(server, work)
    return sign_in(server, email)


def accept(server: Server, token: str, password: str = PASSWORD) -> httpx.Response:
    with anonymous(server) as client:
        return client.post("/api/v1/invitations/accept", json={"token": token,
                                                               "password": password})


def make_org(server: Server, platform_admin: Actor, label: str, *,
             roles: tuple[str, ...] = ROLES, with_keys: bool = True) -> Org:
    """A new organization with one signed-in member per role and one API key per role.

    Made as the API would make it (the platform admin creates the tenant, its admin accepts
    the invitation, invites one person per role and creates the keys: the same rows and audit
    entries), but through the service functions in one transaction, since this setup is not
    what the tests are about; each member then signs in over HTTP for a real session cookie.
    """
    slug = f"{label}-{secrets.token_hex(4)}"
    emails = {role: f"{role}-{slug}@example.org" for role in ("admin", *roles)}
    created: dict[str, Any] = {}

    async def work(session: Any) -> None:
        from enginex.admin.service import create_tenant
        from enginex.auth.service import create_api_key
        from enginex.orgs.service import accept_invitation, create_invitation
        from enginex.tenancy.context import TenantContext
        from enginex.tenancy.principal import UserPrincipal
        from enginex.tenancy.scopes import ROLE_SCOPES, Role

        tenant = await create_tenant(session, slug=slug, name=f"Org {slug}",
                                     admin_email=emails["admin"], region="default",
                                     actor_id=uuid.UUID(platform_admin.user_id),
                                     base_url=server.base_url)
        assert tenant.invitation_token is not None
        admin, org, _ = await accept_invitation(session, token=tenant.invitation_token,
                                                password=PASSWORD)
        principal = UserPrincipal(user_id=admin.id, email=admin.email, is_platform_admin=False,
                                  session_id=uuid.uuid4(), csrf_token="")
        ctx = TenantContext(org_id=org.id, org_slug=org.slug, principal=principal,
                            role=Role.ADMIN, scopes=ROLE_SCOPES[Role.ADMIN])
        for role in roles:
            if role != "admin":
                token, _ = await create_invitation(session, ctx, email=emails[role],
                                                   role=Role(role), base_url=server.base_url)
                await accept_invitation(session, token=token, password=PASSWORD)
        keys = {}
        if with_keys:
            for role in roles:
                keys[role], _ = await create_api_key(session, ctx, name=f"{role} key",
                                                     role=Role(role), expires_at=None,
                                                     actor=principal)
        created.update(id=str(org.id), name=org.name, keys=keys)

    run_db(server, work)
    org = Org(id=created["id"], slug=slug, name=created["name"], api_keys=created["keys"])
    for role in dict.fromkeys(("admin", *roles)):
        actor = sign_in(server, emails[role])
        actor.role = role
        org.members[role] = actor
    return org


# --- helpers for the auth, organization, admin and error tests ------------------------------


def run_db(server: Server, work: Any) -> Any:
    """Run ``await work(session)`` in one committed transaction on the server's database.

    Only for setup that has no API on purpose (expiring a token, disabling an account); the
    behaviour under test is always observed through HTTP.
    """
    from enginex.cli import _in_transaction

    # In a thread of its own: a browser test's thread already runs Playwright's event loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(_in_transaction(server.settings, work))).result()


def client_from(server: Server, address: str | None = None) -> httpx.Client:
    """An anonymous client whose connections come from another loopback address.

    Login throttling counts failures per client address; tests that fail sign-ins on purpose
    use their own address so they never throttle other tests (all of 127.0.0.0/8 is local).
    """
    if address is None:
        octets = (1 + secrets.randbelow(254), secrets.randbelow(256), 1 + secrets.randbelow(254))
        address = "127." + ".".join(map(str, octets))
    return httpx.Client(base_url=server.base_url, timeout=30,
                        transport=httpx.HTTPTransport(local_address=address))


def add_member(server: Server, org: Org, role: str, *, email: str | None = None) -> Actor:
    """Invite a new person into ``org`` (through its admin), accept, and sign them in."""
    email = email or f"{role}-{secrets.token_hex(4)}-{org.slug}@example.org"
    invite = org.admin.client.post(f"/api/v1/orgs/{org.slug}/invitations",
                                   json={"email": email, "role": role})
    assert invite.status_code == 201, invite.text
    assert accept(server, invite.json()["token"]).status_code == 200
    actor = sign_in(server, email)
    actor.role = role
    return actor


# --- helpers for the engine tests ---------------------------------------------------------------

AGENT_FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "agents"
TIMESHEET = ("date,person,project,hours\n2026-11-02,Alice,Apollo,8\n2026-11-03,Alice,Apollo,8\n"
             "2026-11-04,Alice,Borealis,6.5\n2026-11-02,Bob,Apollo,7.5\n"
             "2026-11-03,Bob,Apollo,7.5\n")


def deploy_agent(org: Org, name: str = "hourly_tracking") -> dict[str, Any]:
    """Deploy a fixture package as the org's builder, through the upload API."""
    from enginex.agents.cli import zip_directory

    data = zip_directory(AGENT_FIXTURES / name)
    response = org.members["builder"].client.post(
        f"/api/v1/orgs/{org.slug}/agents",
        files={"package": ("package.zip", data, "application/zip")})
    assert response.status_code in (200, 201), response.text
    return response.json()


def start_session(org: Org, inputs: dict[str, Any] | None = None,
                  agent: str = "hourly-tracking") -> dict[str, Any]:
    response = org.members["operator"].client.post(
        f"/api/v1/orgs/{org.slug}/sessions",
        json={"agent": agent, "inputs": inputs if inputs is not None else
              {"timesheet": TIMESHEET}})
    assert response.status_code == 201, response.text
    return response.json()


def wait_for_status(org: Org, run_id: str, statuses: set[str],
                    timeout: float = WAIT_SECONDS) -> dict[str, Any]:
    client = org.members["viewer"].client
    last: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        last.update(client.get(f"/api/v1/orgs/{org.slug}/sessions/{run_id}").json())
        return dict(last) if last["status"] in statuses else None

    try:
        return wait_for(reached, what=f"session {run_id}", timeout=timeout)
    except AssertionError:
        raise AssertionError(f"session {run_id} stuck in {last['status']}: {last}") from None


def pending_approval(org: Org, run_id: str) -> dict[str, Any]:
    inbox = org.members["operator"].client.get(f"/api/v1/orgs/{org.slug}/approvals",
                                               params={"status": "pending"}).json()
    mine = [a for a in inbox if a["run_id"] == run_id]
    assert len(mine) == 1, inbox
    return mine[0]


def accept_as(server: Server, email: str, token: str) -> httpx.Response:
    """An existing account accepts an invitation: it must be signed in to do so."""
    actor = sign_in(server, email)
    try:
        return actor.client.post("/api/v1/invitations/accept", json={"token": token})
    finally:
        actor.close()


@contextmanager
def private_network(server: Server, allowed: bool = True) -> Iterator[None]:
    """Set the running deployment's ENGINEX_ALLOW_PRIVATE_NETWORK for a while: the fake LLM
    and MCP servers of the tests live on 127.0.0.1, which the egress guard refuses by default."""
    settings = server.app.state.settings
    before = settings.allow_private_network
    settings.allow_private_network = allowed
    try:
        yield
    finally:
        settings.allow_private_network = before


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for servers the tests
    start)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
