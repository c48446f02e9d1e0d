"""Erasure of a person and the subject-access export (issue 15, items 4 and 6).

The person belongs to two organizations, started a session and decided its approval in one,
made an API key in the other, and has a pending invitation to a third. After the platform
admin erases them: they cannot sign in and their cookie and key stop; their address appears
on no page, in no API answer and in no export archive of any of those organizations; the
session, approval and report stay with the organization without the link; and every
affected organization's audit chain still verifies, with one ``user.erased`` entry.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import httpx

from tests.factories import (
    PASSWORD,
    Org,
    Server,
    accept_as,
    add_member,
    anonymous,
    api_key_client,
    deploy_agent,
    make_org,
    pending_approval,
    sign_in,
    wait_for,
    wait_for_status,
)
from tests.test_lifecycle import enginex, export_archive


def verify(org: Org) -> dict[str, Any]:
    verdict = org.admin.client.get(f"/api/v1/orgs/{org.slug}/audit/verify")
    assert verdict.status_code == 200, verdict.text
    return dict(verdict.json())


def audit_entries(org: Org, **params: str) -> list[dict[str, Any]]:
    got = org.admin.client.get(f"/api/v1/orgs/{org.slug}/audit", params={"limit": 200, **params})
    assert got.status_code == 200, got.text
    return list(got.json()["items"])


def read_zip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def lines(files: dict[str, bytes], name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in files[name].decode().splitlines()]


def pages_of(org: Org, run_id: str) -> list[str]:
    client = org.admin.client
    paths = [f"/o/{org.slug}", f"/o/{org.slug}/members", f"/o/{org.slug}/audit",
             f"/o/{org.slug}/sessions", f"/o/{org.slug}/sessions/{run_id}",
             f"/o/{org.slug}/settings/api-keys", f"/o/{org.slug}/approvals"]
    texts = []
    for path in paths:
        page = client.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        texts.append(page.text)
    return texts


def api_answers(org: Org) -> list[str]:
    client = org.admin.client
    answers = []
    for path in ("members", "invitations", "api-keys", "sessions", "approvals", "audit"):
        got = client.get(f"/api/v1/orgs/{org.slug}/{path}")
        assert got.status_code == 200, (path, got.text)
        answers.append(got.text)
    return answers


def test_an_erased_person_disappears_and_every_audit_chain_still_verifies(
        server: Server, platform_admin, org_a: Org, org_b: Org) -> None:
    person = add_member(server, org_a, "operator")
    email = person.email
    invite = org_b.admin.client.post(f"/api/v1/orgs/{org_b.slug}/invitations",
                                     json={"email": email, "role": "admin"})
    assert invite.status_code == 201, invite.text
    assert accept_as(server, email, invite.json()["token"]).status_code == 200
    org_c = make_org(server, platform_admin, "c", roles=("admin",), with_keys=False)
    pending = org_c.admin.client.post(f"/api/v1/orgs/{org_c.slug}/invitations",
                                      json={"email": email, "role": "viewer"})
    assert pending.status_code == 201
    person.client.close()
    person = sign_in(server, email)

    # In org A the person starts a session and approves its step; in org B makes a key.
    deploy_agent(org_a)
    started = person.client.post(f"/api/v1/orgs/{org_a.slug}/sessions",
                                 json={"agent": "hourly-tracking",
                                       "inputs": {"timesheet": "2026-11-02,Alice,Apollo,8"}})
    assert started.status_code == 201, started.text
    run_id = started.json()["id"]
    wait_for_status(org_a, run_id, {"waiting_approval"})
    decided = person.client.post(
        f"/api/v1/orgs/{org_a.slug}/approvals/{pending_approval(org_a, run_id)['id']}/decision",
        json={"decision": "approve", "comment": "fine by me"})
    assert decided.status_code == 200, decided.text
    wait_for_status(org_a, run_id, {"succeeded"})
    key = person.client.post(f"/api/v1/orgs/{org_b.slug}/api-keys",
                             json={"name": "my laptop", "role": "viewer"})
    assert key.status_code == 201, key.text
    with api_key_client(server, key.json()["token"]) as by_key:
        assert by_key.get(f"/api/v1/orgs/{org_b.slug}/sessions").status_code == 200

    # Subject access first: the person's own data in every organization, nobody else's.
    sar = person.client.get("/api/v1/me/personal-data")
    assert sar.status_code == 200, sar.text
    assert sar.headers["content-type"] == "application/zip"
    files = read_zip(sar.content)
    manifest = json.loads(files["manifest.json"])
    assert manifest["format"] == "enginex-subject-access"
    import hashlib
    for name, meta in manifest["files"].items():
        assert hashlib.sha256(files[name]).hexdigest() == meta["sha256"], name
    assert lines(files, "account.jsonl")[0]["email"] == email
    assert "password_hash" not in files["account.jsonl"].decode()
    assert {m["org_slug"] for m in lines(files, "memberships.jsonl")} == {org_a.slug, org_b.slug}
    assert [s["id"] for s in lines(files, "sessions.jsonl")] == [run_id]
    assert lines(files, "approvals.jsonl")[0]["comment"] == "fine by me"
    assert [k["name"] for k in lines(files, "api_keys.jsonl")] == ["my laptop"]
    assert [i["org_slug"] for i in lines(files, "invitations.jsonl")].count(org_c.slug) == 1
    audit = lines(files, "audit.jsonl")
    assert {"session.started", "approval.decided", "api_key.created"} <= {
        e["action"] for e in audit}
    everything = b"".join(files.values()).decode()
    for other in (org_a.admin.email, org_b.admin.email, org_a.members["viewer"].email):
        assert other not in everything, f"subject access leaked {other}"
    assert "token_digest" not in everything and "inputs" not in everything
    by_admin = platform_admin.client.get(f"/api/v1/admin/users/{person.user_id}/personal-data")
    assert by_admin.status_code == 200
    assert lines(read_zip(by_admin.content), "account.jsonl")[0]["email"] == email
    # Subject access is the person's, not an organization's: API keys are refused.
    with api_key_client(server, org_a.api_keys["admin"]) as key_client:
        refused = key_client.get("/api/v1/me/personal-data")
        assert refused.status_code == 403, refused.text

    # A finished export of org B lists the person among its members: erasure withdraws it.
    exports = f"/api/v1/orgs/{org_b.slug}/exports"
    earlier = org_b.admin.client.post(exports).json()["id"]
    wait_for(lambda: org_b.admin.client.get(f"{exports}/{earlier}").json()["status"]
             == "succeeded", what="org B's export")

    # The erasure: the address must be typed again.
    erase = f"/api/v1/admin/users/{person.user_id}/erasure"
    wrong = platform_admin.client.post(erase, json={"confirm_email": "someone@else.org"})
    assert wrong.status_code == 422, wrong.text
    assert "confirm_email" in wrong.json()["error"]["message"]
    own = platform_admin.client.post(f"/api/v1/admin/users/{platform_admin.user_id}/erasure",
                                     json={"confirm_email": platform_admin.email})
    assert own.status_code == 409, own.text
    done = platform_admin.client.post(erase, json={"confirm_email": email.upper()})
    assert done.status_code == 200, done.text
    result = done.json()
    assert result["erasure"]["status"] == "erased"
    assert result["erasure"]["orgs_affected"] == 3
    assert set(result["removed"]) == {org_a.id, org_b.id, org_c.id}
    assert result["removed"][org_a.id]["sessions_unlinked"] == 1
    assert result["removed"][org_a.id]["approvals_unlinked"] == 1
    assert result["removed"][org_b.id]["api_keys"] == 1
    assert result["removed"][org_b.id]["exports_withdrawn"] == 1
    assert org_b.admin.client.get(f"{exports}/{earlier}").json()["status"] == "expired"
    assert org_b.admin.client.post(f"{exports}/{earlier}/link").status_code == 409
    assert result["removed"][org_c.id] == {"invitations": 1}

    # Signed out everywhere, cannot sign in, the key is gone.
    assert person.client.get("/api/v1/me").status_code == 401
    with anonymous(server) as anon:
        login = anon.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 401
    with api_key_client(server, key.json()["token"]) as by_key:
        assert by_key.get(f"/api/v1/orgs/{org_b.slug}/sessions").status_code == 401
    assert platform_admin.client.get(f"/api/v1/admin/users/{person.user_id}").status_code == 404
    again = platform_admin.client.post(erase, json={"confirm_email": email})
    assert again.status_code == 404, again.text

    # The session, its approval and report stay with org A, without the link to the person.
    session = org_a.admin.client.get(f"/api/v1/orgs/{org_a.slug}/sessions/{run_id}").json()
    assert session["status"] == "succeeded"
    assert session.get("created_by") in (None, "")
    reports = org_a.admin.client.get(f"/api/v1/orgs/{org_a.slug}/reports",
                                     params={"session": run_id}).json()
    assert len(reports) == 1

    # No page, API answer or export archive of any organization names the person.
    for text in pages_of(org_a, run_id):
        assert email.lower() not in text.lower()
    for org in (org_a, org_b, org_c):
        for text in api_answers(org):
            assert email.lower() not in text.lower()
        archive = export_archive(server, org)
        for name, data in read_zip(archive).items():
            assert email.encode() not in data, (org.slug, name)
            assert email.lower().encode() not in data.lower(), (org.slug, name)
        # Every chain still verifies, and records the erasure once, by the pseudonymous id.
        verdict = verify(org)
        assert verdict["intact"] is True, verdict
        erased = audit_entries(org, action="user.erased")
        assert len(erased) == 1 and erased[0]["target_id"] == person.user_id, erased
    for org in (org_b, org_c):
        for text in (org.admin.client.get(f"/o/{org.slug}/members").text,
                     org.admin.client.get(f"/o/{org.slug}/audit").text):
            assert email not in text
    # Earlier entries about the person are unchanged: they hold the id, never the address.
    started_entries = audit_entries(org_a, action="session.started")
    assert any(e["actor_id"] == person.user_id for e in started_entries)
    listing = platform_admin.client.get("/api/v1/admin/erasures").json()
    mine = [e for e in listing if e["user_id"] == person.user_id]
    assert mine and mine[0]["status"] == "erased" and mine[0]["email"] is None
    assert email not in json.dumps(listing)


def test_a_person_asks_for_erasure_and_a_platform_admin_decides(
        server: Server, platform_admin, org_a: Org) -> None:
    person = add_member(server, org_a, "viewer")
    me = "/api/v1/me/erasure-request"
    assert person.client.get(me).status_code == 404
    wrong = person.client.post(me, json={"password": "not my password", "reason": "leaving"})
    assert wrong.status_code == 422, wrong.text
    assert wrong.json()["error"]["details"]["field"] == "password"
    asked = person.client.post(me, json={"password": PASSWORD, "reason": "leaving"})
    assert asked.status_code == 201, asked.text
    assert asked.json()["status"] == "requested"
    twice = person.client.post(me, json={"password": PASSWORD})
    assert twice.status_code == 409, twice.text
    pending = platform_admin.client.get("/api/v1/admin/erasures", params={"pending": "true"})
    assert any(e["user_id"] == person.user_id and e["email"] == person.email
               for e in pending.json())
    decline = f"/api/v1/admin/users/{person.user_id}/erasure-request/decline"
    assert platform_admin.client.post(decline, json={"reason": ""}).status_code == 422
    declined = platform_admin.client.post(decline, json={"reason": "open invoices first"})
    assert declined.status_code == 200, declined.text
    status = person.client.get(me).json()
    assert status["status"] == "declined" and status["decline_reason"] == "open invoices first"
    # Asked again, withdrawn, asked again, then confirmed by the erasure.
    assert person.client.post(me, json={"password": PASSWORD}).status_code == 201
    assert person.client.delete(me).json()["status"] == "withdrawn"
    assert person.client.post(me, json={"password": PASSWORD}).status_code == 201
    done = platform_admin.client.post(f"/api/v1/admin/users/{person.user_id}/erasure",
                                      json={"confirm_email": person.email})
    assert done.status_code == 200, done.text
    assert done.json()["erasure"]["self_requested"] is True
    assert done.json()["erasure"]["status"] == "erased"
    assert verify(org_a)["intact"] is True
    # Another organization's admin is no platform admin.
    refused = org_a.admin.client.get("/api/v1/admin/erasures")
    assert refused.status_code == 403


def test_an_interrupted_erasure_resumes_without_recording_an_organization_twice(
        server: Server, platform_admin, org_a: Org, org_b: Org) -> None:
    """The CLI erases; the first run is stopped after its first organization (the erasure
    row says where it was), the second finishes: one ``user.erased`` per organization."""
    import asyncio
    import uuid

    from enginex.db import Database
    from enginex.erasure import service

    person = add_member(server, org_a, "viewer")
    invite = org_b.admin.client.post(f"/api/v1/orgs/{org_b.slug}/invitations",
                                     json={"email": person.email, "role": "viewer"})
    assert accept_as(server, person.email, invite.json()["token"]).status_code == 200
    user_id = uuid.UUID(person.user_id)
    first_org = min(uuid.UUID(org_a.id), uuid.UUID(org_b.id))

    async def half_way() -> None:
        db = Database(server.settings)
        try:
            erasure_id, email = await service.begin_erasure(
                db.sessions, user_id, actor=service.Actor("cli"), confirm_email=person.email)
            await service.erase_in_org(db.sessions, erasure_id, first_org, user_id, email,
                                       service.Actor("cli"))
        finally:
            await db.dispose()

    asyncio.run(half_way())
    assert person.client.get("/api/v1/me").status_code == 401  # signed out at the start
    listing = platform_admin.client.get("/api/v1/admin/erasures", params={"pending": "true"})
    assert any(e["user_id"] == person.user_id and e["status"] == "erasing"
               for e in listing.json())
    finished = enginex(server.settings, "user", "erase", person.email, "--yes")
    assert finished.returncode == 0, finished.stderr
    assert "erased" in finished.stdout
    for org in (org_a, org_b):
        assert len(audit_entries(org, action="user.erased")) == 1
        assert verify(org)["intact"] is True
        assert person.email not in org.admin.client.get(f"/api/v1/orgs/{org.slug}/members").text


def test_an_account_can_be_erased_only_by_a_platform_admin(server: Server, org_a: Org) -> None:
    victim = org_a.members["viewer"]
    for actor in (org_a.admin.client, victim.client):
        refused = actor.post(f"/api/v1/admin/users/{victim.user_id}/erasure",
                             json={"confirm_email": victim.email})
        assert refused.status_code == 403
    assert victim.client.get("/api/v1/me").status_code == 200
    with httpx.Client(base_url=server.base_url) as anon:
        assert anon.get("/api/v1/me/personal-data").status_code == 401


def test_the_pages_ask_for_erasure_and_a_platform_admin_erases_there(
        server: Server, platform_admin, org_a: Org) -> None:
    person = add_member(server, org_a, "viewer")
    csrf = person.client.headers["X-CSRF-Token"]
    page = person.client.get("/account")
    assert page.status_code == 200 and person.email in page.text
    assert 'href="/api/v1/me/personal-data"' in page.text
    wrong = person.client.post("/account/erasure-request",
                               data={"csrf_token": csrf, "password": "nope"})
    assert wrong.status_code == 422 and "current password" in wrong.text
    asked = person.client.post("/account/erasure-request",
                               data={"csrf_token": csrf, "password": PASSWORD,
                                     "reason": "moving on"})
    assert asked.status_code == 303, asked.text
    assert "platform admin will confirm" in person.client.get("/account").text
    admin_csrf = platform_admin.client.headers["X-CSRF-Token"]
    listing = platform_admin.client.get("/admin/erasures")
    assert listing.status_code == 200 and person.email in listing.text
    assert "moving on" in listing.text
    user_page = platform_admin.client.get(f"/admin/users/{person.user_id}")
    assert 'id="erase-user"' in user_page.text
    mistyped = platform_admin.client.post(f"/admin/users/{person.user_id}/erase",
                                          data={"csrf_token": admin_csrf,
                                                "confirm_email": "x@y.org"})
    assert mistyped.status_code == 422 and "confirm_email" in mistyped.text
    erased = platform_admin.client.post(f"/admin/users/{person.user_id}/erase",
                                        data={"csrf_token": admin_csrf,
                                              "confirm_email": person.email})
    assert erased.status_code == 303, erased.text
    after = platform_admin.client.get("/admin/erasures?done=erased")
    assert "The account was erased." in after.text
    assert person.email not in after.text
    assert person.email not in org_a.admin.client.get(f"/o/{org_a.slug}/members").text
    assert verify(org_a)["intact"] is True
