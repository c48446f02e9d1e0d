"""Platform admin pages and API counts, worker health, and the invitation acceptance page,
through real HTTP on both backends.

Threat model: the platform admin sees every tenant's metadata and counts -- members, agents,
sessions by status, queue depth, pending approvals -- and never its content (member emails,
agent names, session inputs, approval questions); nobody else reaches these pages; suspending
needs a confirmation and a CSRF token. The invitation page accepts a token that never appears
in a URL the server sees, signs a new account in, makes an existing account sign in as itself
first, refuses a form sent from another site, and explains every refusal.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select, update

from enginex.admin.schemas import TenantOut
from enginex.approvals.models import Approval
from enginex.db import Database, set_tenant
from enginex.kit.time import utcnow
from enginex.orgs.models import Invitation
from enginex.orgs.service import INVALID_INVITATION
from enginex.runs.engine import EngineDeps
from enginex.runs.models import Run, WorkerPresence
from enginex.runs.runtime import build_engine
from enginex.runs.worker import Worker
from enginex.tenancy.platform import tenant_activity
from tests.factories import (
    PASSWORD,
    Actor,
    Org,
    Server,
    accept,
    anonymous,
    deploy_agent,
    make_org,
    make_platform_admin,
    pending_approval,
    run_db,
    sign_in,
    start_session,
    wait_for_async,
    wait_for_status,
)

TENANTS = "/api/v1/admin/tenants"
STATUSES = ("queued", "running", "waiting_approval", "succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def busy(server: Server, platform_admin: Actor) -> dict[str, Any]:
    """A tenant with an agent, one session waiting for its approval, and canaries: text that
    is tenant content and must never reach a platform admin page."""
    org = make_org(server, platform_admin, "busy", with_keys=False)
    deployed = deploy_agent(org)
    canary = f"canary-{secrets.token_hex(6)}"
    run = start_session(org, {"timesheet": f"date,person,project,hours\n2026-11-02,{canary},"
                                            "Apollo,8\n"})
    wait_for_status(org, run["id"], {"waiting_approval"})
    approval = pending_approval(org, run["id"])
    content = [canary, deployed["name"], deployed["id"], run["id"], approval["id"],
               approval["question"], *(m.email for m in org.members.values()),
               *(m.user_id for m in org.members.values())]
    return {"org": org, "deployed": deployed, "run": run, "content": content}


@pytest.fixture(scope="module")
def host(server: Server, platform_admin: Actor) -> Org:
    """A tenant with an admin only: it sends this module's invitations."""
    return make_org(server, platform_admin, "host", roles=("admin",), with_keys=False)


def form_client(actor: Actor, server: Server) -> tuple[httpx.Client, str]:
    """The actor's browser session without the X-CSRF-Token header: forms must carry the
    token in their ``csrf_token`` field, as the dashboard's forms do."""
    token = actor.client.headers["X-CSRF-Token"]
    client = httpx.Client(base_url=server.base_url, timeout=30, cookies=actor.client.cookies)
    return client, token


def tenant_block(html: str, slug: str) -> dict[str, str]:
    """The counts and status shown for one tenant on the tenants page."""
    match = re.search(rf'<li class="tenant" id="tenant-{re.escape(slug)}".*?</li>', html,
                      re.S)
    assert match, f"tenant {slug} is not on the page"
    block = match.group(0)
    values = dict(re.findall(r'data-count="([a-z_]+)">(\d+)<', block))
    values["status"] = re.search(r'data-field="status">(\w+)<', block).group(1)
    return values


def listed(platform_admin: Actor) -> dict[str, dict]:
    response = platform_admin.client.get(TENANTS)
    assert response.status_code == 200, response.text
    return {t["slug"]: t for t in response.json()}


# --- access -------------------------------------------------------------------------------------


def test_only_platform_admins_open_the_admin_pages(server: Server, platform_admin: Actor,
                                                   busy: dict[str, Any]) -> None:
    org: Org = busy["org"]
    for path in ("/admin/tenants", "/admin/workers", f"/admin/tenants/{org.id}/status"):
        with anonymous(server) as anon:
            response = anon.get(path)
            assert response.status_code == 303
            assert response.headers["location"] == f"/login?next={path}"
        refused = org.admin.client.get(path)
        assert refused.status_code == 403
        assert "This page is for platform admins." in refused.text
        assert org.id not in refused.text
    page = platform_admin.client.get("/admin/tenants")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for heading in ("Tenants", "Worker health", "Create a tenant"):
        assert f">{heading}</h" in page.text
    # The organization chooser links to the admin pages for platform admins only.
    assert 'href="/admin/tenants"' in platform_admin.client.get("/?choose=1").text
    assert 'href="/admin/tenants"' not in org.admin.client.get("/?choose=1").text
    # A platform admin who belongs to no organization lands on the platform pages (a fresh
    # one: the session's platform admin may have joined organizations in earlier tests).
    newcomer = make_platform_admin(server)
    landing = newcomer.client.get("/", follow_redirects=False)
    assert (landing.status_code, landing.headers["location"]) == (303, "/admin/tenants")


# --- counts, never content ----------------------------------------------------------------------


def test_tenant_counts_in_the_api_and_on_the_page_without_content(
        server: Server, platform_admin: Actor, busy: dict[str, Any]) -> None:
    org: Org = busy["org"]
    entry = listed(platform_admin)[org.slug]
    assert set(entry) == set(TenantOut.model_fields)
    assert entry["member_count"] == 4 and entry["agent_count"] == 1
    assert entry["session_counts"] == {s: int(s == "waiting_approval") for s in STATUSES}
    assert entry["queue_depth"] == 0 and entry["pending_approvals"] == 1

    page = platform_admin.client.get("/admin/tenants", params={"after": org.slug[:-1]})
    assert page.status_code == 200
    assert tenant_block(page.text, org.slug) == {
        "members": "4", "agents": "1", "queue_depth": "0", "pending_approvals": "1",
        "queued": "0", "running": "0", "waiting_approval": "1", "succeeded": "0",
        "failed": "0", "cancelled": "0", "status": "active"}
    confirm = platform_admin.client.get(f"/admin/tenants/{org.id}/status")
    api = platform_admin.client.get(TENANTS)
    workers = platform_admin.client.get("/admin/workers")
    for response in (page, confirm, api, workers):
        assert response.status_code == 200
        for text in busy["content"]:
            assert text not in response.text, f"{response.url} shows tenant content {text!r}"


def test_tenant_activity_counts_each_status_and_the_queue(server: Server, host: Org,
                                                          busy: dict[str, Any]) -> None:
    """The platform reads (SECURITY DEFINER functions on PostgreSQL, plain queries on SQLite)
    against rows made for the purpose, in a transaction that is rolled back: the worker never
    sees them. Queue depth = queued + running without a live lease. Another tenant's counts come
back from the same call, whichever tenant the session is bound to."""
    org_a: Org = busy["org"]
    deployed = busy["deployed"]
    agent_id = org_a.admin.client.get(f"/api/v1/orgs/{org_a.slug}/agents").json()[0]["id"]
    a, b, nobody = uuid.UUID(org_a.id), uuid.UUID(host.id), uuid.uuid4()
    now = utcnow()
    live, lapsed = now + timedelta(minutes=5), now - timedelta(minutes=5)
    runs = [("queued", None), ("queued", None), ("running", live), ("running", lapsed),
            ("running", None), ("waiting_approval", None), ("succeeded", None),
            ("failed", None)]

    async def work() -> dict[uuid.UUID, Any]:
        db = Database(server.settings)
        try:
            async with db.sessions() as session:
                await set_tenant(session, a)
                made = [Run(tenant_id=a, agent_id=uuid.UUID(agent_id),
                            agent_version_id=uuid.UUID(deployed["id"]),
                            agent_key=deployed["agent_key"], agent_version=deployed["version"],
                            status=status, inputs={}, lease_owner="w" if lease else None,
                            lease_expires_at=lease) for status, lease in runs]
                session.add_all(made)
                await session.flush()
                session.add_all([
                    Approval(tenant_id=a, run_id=made[5].id, node_id="n", step=step,
                             question="q", options=["approve"], approver_role="operator",
                             status=status, expires_at=live)
                    for step, status in enumerate(("pending", "decided"), start=1)])
                await session.flush()
                counts = await tenant_activity(session, [a, b, nobody])
                await session.rollback()
                return counts
        finally:
            await db.dispose()

    counts = asyncio.run(work())
    assert set(counts) == {a, b}  # an id without a tenant is not made up
    mine = counts[a]  # the rows above, and the busy tenant's own session and approval
    assert mine.agents == 1
    assert mine.sessions == {"queued": 2, "running": 3, "waiting_approval": 2,
                             "succeeded": 1, "failed": 1}
    assert mine.queue_depth == 4
    assert mine.pending_approvals == 2
    assert counts[b].agents == 0 and counts[b].sessions == {}
    assert counts[b].queue_depth == 0 and counts[b].pending_approvals == 0


# --- create, suspend, reactivate ----------------------------------------------------------------


def test_create_tenant_form(server: Server, platform_admin: Actor, busy: dict[str, Any]) -> None:
    client, csrf = form_client(platform_admin, server)
    slug = f"made-{secrets.token_hex(4)}"
    email = f"first-{slug}@example.org"
    with client:
        def post(**fields: str) -> httpx.Response:
            return client.post("/admin/tenants", data={"csrf_token": csrf, "region": "",
                                                       **fields})

        invalid = post(slug="Not A Slug", name="Kept Name", admin_email="nope")
        assert invalid.status_code == 422
        assert 'id="create-slug-error"' in invalid.text
        assert "lowercase letters, digits and hyphens" in invalid.text
        assert 'id="create-admin_email-error"' in invalid.text
        assert "not a valid email address" in invalid.text
        assert 'value="Kept Name"' in invalid.text and 'value="Not A Slug"' in invalid.text
        reserved = post(slug="admin", name="x", admin_email=email)
        assert reserved.status_code == 422 and "&#39;admin&#39; is reserved" in reserved.text
        taken = post(slug=busy["org"].slug, name="x", admin_email=email)
        assert taken.status_code == 409
        assert f"The slug &#39;{busy['org'].slug}&#39; is already taken" in taken.text
        forged = client.post("/admin/tenants", data={"slug": slug, "name": "x",
                                                     "admin_email": email})
        assert forged.status_code == 403  # no CSRF token
        assert slug not in listed(platform_admin)

        created = post(slug=slug, name="Made Here", admin_email=email)
        assert created.status_code == 201, created.text
        link = re.search(r'id="invitation-link" type="text" value="([^"]+)"', created.text)
        assert link, created.text
        base = server.settings.base_url.rstrip("/")
        assert link.group(1).startswith(f"{base}/invitations/accept#inv_")
        assert 'data-copy="#invitation-link"' in created.text
        token = link.group(1).split("#", 1)[1]
        entry = listed(platform_admin)[slug]
        assert entry["name"] == "Made Here" and entry["member_count"] == 0
        assert entry["region"] == "default"
        assert accept(server, token).status_code == 200
        assert listed(platform_admin)[slug]["member_count"] == 1

        existing = busy["org"].members["viewer"]
        second = f"again-{secrets.token_hex(4)}"
        added = post(slug=second, name="Existing Admin", admin_email=existing.email)
        assert added.status_code == 201
        assert "already has an EngineX account and was added" in added.text
        assert "#inv_" not in added.text
        assert listed(platform_admin)[second]["member_count"] == 1


def test_suspend_and_reactivate_need_a_confirmation(server: Server, platform_admin: Actor) -> None:
    org = make_org(server, platform_admin, "pause", roles=("admin",), with_keys=False)
    client, csrf = form_client(platform_admin, server)
    status_url = f"/admin/tenants/{org.id}/status"
    with client:
        confirm = client.get(status_url, params={"to": "suspended"})
        assert confirm.status_code == 200
        assert f"Suspend {org.name}?" in confirm.text
        assert 'name="status" value="suspended"' in confirm.text
        assert listed(platform_admin)[org.slug]["status"] == "active"  # a GET changes nothing

        assert client.post(status_url, data={"status": "suspended"}).status_code == 403
        bogus = client.post(status_url, data={"status": "deleted", "csrf_token": csrf})
        assert bogus.status_code == 422 and "choose" in bogus.text
        done = client.post(status_url, data={"status": "suspended", "csrf_token": csrf})
        assert done.status_code == 303
        assert done.headers["location"] == f"/admin/tenants?changed={org.slug}"
        assert listed(platform_admin)[org.slug]["status"] == "suspended"
        notice = client.get(done.headers["location"])
        assert re.search(rf"{org.name}</strong> \({org.slug}\) is now .*suspended", notice.text)
        locked = org.admin.client.get(f"/o/{org.slug}")
        assert locked.status_code == 403 and "This organization is suspended" in locked.text

        again = client.get(status_url, params={"to": "active"})
        assert f"Reactivate {org.name}?" in again.text
        assert client.post(status_url, data={"status": "active", "csrf_token": csrf}
                           ).status_code == 303
        assert listed(platform_admin)[org.slug]["status"] == "active"
        assert org.admin.client.get(f"/o/{org.slug}").status_code == 200

        missing = f"/admin/tenants/{uuid.uuid4()}/status"
        assert client.get(missing).status_code == 404
        assert client.post(missing, data={"status": "active", "csrf_token": csrf}
                           ).status_code == 404


# --- worker health ------------------------------------------------------------------------------


def test_worker_health_api_and_panel(server: Server, platform_admin: Actor,
                                     busy: dict[str, Any]) -> None:
    embedded = server.app.state.worker
    stale = f"stale-host:1:{secrets.token_hex(4)}"
    seen = utcnow() - timedelta(minutes=2)

    async def add_stale(session: Any) -> None:
        session.add(WorkerPresence(name=stale, started_at=seen, last_seen_at=seen, slots=2,
                                   steps_committed=7))

    run_db(server, add_stale)
    try:
        response = platform_admin.client.get("/api/v1/admin/workers")
        assert response.status_code == 200
        workers = {w["name"]: w for w in response.json()}
        mine = workers[embedded.name]
        assert mine["alive"] is True and mine["slots"] == server.settings.worker_slots
        # as of its last heartbeat: the busy tenant's session ran steps since it started
        assert 0 <= mine["steps_committed"] <= embedded.steps_committed
        assert embedded.steps_committed >= 1
        assert workers[stale]["alive"] is False
        assert workers[stale]["steps_committed"] == 7 and workers[stale]["slots"] == 2

        page = platform_admin.client.get("/admin/workers")
        assert page.status_code == 200 and "<html" in page.text
        panel = platform_admin.client.get("/admin/workers", headers={"HX-Request": "true"})
        assert panel.status_code == 200 and "<html" not in panel.text
        assert 'id="workers" hx-get="/admin/workers"' in panel.text
        entry = re.search(rf'data-worker="{re.escape(stale)}">.*?</li>', panel.text, re.S)
        assert entry and "not responding" in entry.group(0)
        assert busy["org"].admin.client.get("/api/v1/admin/workers").status_code == 403
        with anonymous(server) as anon:
            assert anon.get("/api/v1/admin/workers").status_code == 401
    finally:
        async def remove(session: Any) -> None:
            await session.execute(delete(WorkerPresence).where(WorkerPresence.name == stale))

        run_db(server, remove)


def test_a_worker_registers_beats_prunes_and_leaves(server: Server) -> None:
    ancient = f"crashed:1:{secrets.token_hex(4)}"

    async def names(db: Database) -> dict[str, WorkerPresence]:
        async with db.sessions() as session:
            rows = (await session.execute(select(WorkerPresence))).scalars().all()
            return {w.name: w for w in rows}

    async def main() -> None:
        db = Database(server.settings)
        try:
            async with db.sessions() as session:
                long_ago = utcnow() - timedelta(days=2)
                session.add(WorkerPresence(name=ancient, started_at=long_ago,
                                           last_seen_at=long_ago, slots=1))
                await session.commit()
            deps: EngineDeps = build_engine(server.settings, db, server.app.state.master_key)
            worker = Worker(db, deps, slots=0, heartbeat_seconds=0.05)
            task = asyncio.create_task(worker.run())
            async def listed() -> dict[str, Any] | None:
                rows = await names(db)
                return rows if worker.name in rows and ancient not in rows else None

            rows = await wait_for_async(listed, what="the worker's row, the ancient one pruned")
            first = rows[worker.name]
            assert ancient not in rows  # a worker silent for a day is pruned
            assert first.slots == 0 and first.steps_committed == 0

            async def seen_again() -> Any:
                row = (await names(db))[worker.name]
                return row if row.last_seen_at > first.last_seen_at else None

            later = await wait_for_async(seen_again, what="the next heartbeat")
            assert later.last_seen_at > first.last_seen_at
            assert later.started_at == first.started_at
            worker.stop()
            await task
            assert worker.name not in await names(db)  # a clean stop removes the row
        finally:
            await db.dispose()

    asyncio.run(main())


# --- the invitation page ------------------------------------------------------------------------

ACCEPT = "/invitations/accept"


def invite(org: Org, email: str, role: str = "viewer") -> dict[str, Any]:
    response = org.admin.client.post(f"/api/v1/orgs/{org.slug}/invitations",
                                     json={"email": email, "role": role})
    assert response.status_code == 201, response.text
    return response.json()


def hidden_token(html: str) -> str | None:
    match = re.search(r'<input type="hidden" name="token" value="([^"]*)">', html)
    return match.group(1) if match else None


def test_the_accept_page_never_carries_the_token_in_its_address(server: Server) -> None:
    with anonymous(server) as anon:
        page = anon.get(ACCEPT)
    assert page.status_code == 200
    assert "Create your EngineX account" in page.text
    assert '<script src="/static/invitations.js" defer></script>' in page.text
    assert hidden_token(page.text) == ""
    assert 'href="/login?next=/invitations/accept"' in page.text
    with anonymous(server) as anon:
        script = anon.get("/static/invitations.js")
    assert script.status_code == 200 and "location.hash" in script.text
    assert "sessionStorage" in script.text and "replaceState" in script.text


def test_a_new_account_accepts_sets_a_password_and_lands_signed_in(server: Server,
                                                                   host: Org) -> None:
    email = f"newbie-{secrets.token_hex(4)}@example.org"
    token = invite(host, email, "operator")["token"]
    with anonymous(server) as browser:
        def post(**fields: str) -> httpx.Response:
            return browser.post(ACCEPT, data={"token": token, **fields})

        short = post(display_name="Nina New", password="short", password_confirm="short")
        assert short.status_code == 422
        assert 'id="password-error">Use at least 12 characters' in short.text
        assert 'value="Nina New"' in short.text and hidden_token(short.text) == token
        differ = post(display_name="Nina", password=PASSWORD, password_confirm=PASSWORD + "x")
        assert differ.status_code == 422 and "The two passwords differ" in differ.text
        assert "set-cookie" not in differ.headers

        done = post(display_name="Nina New", password=PASSWORD, password_confirm=PASSWORD)
        assert done.status_code == 303, done.text
        assert done.headers["location"] == f"/o/{host.slug}"
        assert server.settings.session_cookie_name in done.headers["set-cookie"]
        overview = browser.get(done.headers["location"])
        assert overview.status_code == 200 and "You are <strong>operator</strong>" in overview.text

    with anonymous(server) as someone_else:
        used = someone_else.post(ACCEPT, data={"token": token, "password": PASSWORD,
                                               "password_confirm": PASSWORD})
        assert used.status_code == 404 and INVALID_INVITATION in used.text
        assert hidden_token(used.text) is None  # nothing left to keep
    members = host.admin.client.get(f"/api/v1/orgs/{host.slug}/members").json()
    assert {m["email"]: m["display_name"] for m in members}[email] == "Nina New"


def test_refusals_are_explained(server: Server, platform_admin: Actor, host: Org) -> None:
    with anonymous(server) as browser:
        missing = browser.post(ACCEPT, data={"password": PASSWORD,
                                             "password_confirm": PASSWORD})
        assert missing.status_code == 400 and "needs the whole invitation link" in missing.text
        bogus = browser.post(ACCEPT, data={"token": f"inv_{uuid.uuid4().hex}_{'x' * 40}",
                                           "password": PASSWORD, "password_confirm": PASSWORD})
        assert bogus.status_code == 404 and INVALID_INVITATION in bogus.text

        revoked = invite(host, f"rev-{secrets.token_hex(4)}@example.org")
        assert host.admin.client.delete(
            f"/api/v1/orgs/{host.slug}/invitations/{revoked['id']}").status_code == 204
        expired = invite(host, f"exp-{secrets.token_hex(4)}@example.org")

        async def expire(session: Any) -> None:
            await set_tenant(session, uuid.UUID(host.id))
            await session.execute(update(Invitation).where(
                Invitation.id == uuid.UUID(expired["id"])).values(
                expires_at=utcnow() - timedelta(minutes=1)))

        run_db(server, expire)
        for token in (revoked["token"], expired["token"]):
            response = browser.post(ACCEPT, data={"token": token, "password": PASSWORD,
                                                  "password_confirm": PASSWORD})
            assert response.status_code == 404 and INVALID_INVITATION in response.text

        fresh = invite(host, f"x-{secrets.token_hex(4)}@example.org")["token"]
        other_site = browser.post(ACCEPT, headers={"Origin": "https://evil.example"},
                                  data={"token": fresh, "password": PASSWORD,
                                        "password_confirm": PASSWORD})
        assert other_site.status_code == 403 and "another site was refused" in other_site.text

    paused = make_org(server, platform_admin, "closed", roles=("admin",), with_keys=False)
    waiting = invite(paused, f"late-{secrets.token_hex(4)}@example.org")["token"]
    assert platform_admin.client.patch(f"{TENANTS}/{paused.id}",
                                       json={"status": "suspended"}).status_code == 200
    with anonymous(server) as browser:
        closed = browser.post(ACCEPT, data={"token": waiting, "password": PASSWORD,
                                            "password_confirm": PASSWORD})
    assert closed.status_code == 403
    assert "This organization is suspended. Contact the platform operator." in closed.text


def test_an_existing_account_signs_in_first(server: Server, host: Org,
                                            busy: dict[str, Any]) -> None:
    org_b = busy["org"]
    person = org_b.members["viewer"]
    token = invite(host, person.email)["token"]
    before = {o["slug"]: o["role"] for o in
              person.client.get("/api/v1/me").json()["organizations"]}
    with anonymous(server) as browser:
        response = browser.post(ACCEPT, data={"token": token, "display_name": "x",
                                              "password": PASSWORD, "password_confirm": PASSWORD})
        assert response.status_code == 401
        assert "Sign in as that account first" in response.text
        assert 'href="/login?next=/invitations/accept"' in response.text
        assert hidden_token(response.text) == token  # kept for after sign-in
        # Without a password: a new address's answer (test_invitation_oracle.py), which
        # offers sign-in too and keeps the token.
        response = browser.post(ACCEPT, data={"token": token, "display_name": "x"})
        assert response.status_code == 422 and 'id="password-error"' in response.text
        assert 'href="/login?next=/invitations/accept"' in response.text
        assert hidden_token(response.text) == token

    # Signed in as someone else: told so, nothing accepted.
    outsider, outsider_csrf = form_client(org_b.members["operator"], server)
    with outsider:
        wrong = outsider.post(ACCEPT, data={"token": token, "csrf_token": outsider_csrf})
        assert wrong.status_code == 401
        assert f"not for {org_b.members['operator'].email}" in wrong.text

    fresh = sign_in(server, person.email)
    client, csrf = form_client(fresh, server)
    with client:
        page = client.get(ACCEPT)
        assert f"You are signed in as <strong>{person.email}</strong>" in page.text
        assert f'name="csrf_token" value="{csrf}"' in page.text
        stale = client.post(ACCEPT, data={"token": token})  # signed in, no CSRF token
        assert stale.status_code == 403 and "Open the invitation link again" in stale.text
        done = client.post(ACCEPT, data={"token": token, "csrf_token": csrf})
        assert done.status_code == 303 and done.headers["location"] == f"/o/{host.slug}"
        assert "set-cookie" not in done.headers  # the session they had is kept
        orgs = {o["slug"]: o["role"] for o in
                fresh.client.get("/api/v1/me").json()["organizations"]}
        assert orgs == {**before, host.slug: "viewer"}
    fresh.close()
