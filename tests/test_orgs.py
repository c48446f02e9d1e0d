"""Members and invitations of an organization, through real HTTP.

Threat model: a removed or demoted member keeps no access beyond their next request; an
organization can never be left without an admin; an invitation link works once, for its own
organization, until it expires or is revoked; accepting an invitation never lets anyone set the
password of an existing account; only admins can invite.
"""

from __future__ import annotations

import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from enginex.db import set_tenant
from enginex.kit.errors import NOT_FOUND_MESSAGE
from enginex.kit.time import utcnow
from enginex.orgs.models import Invitation
from enginex.orgs.service import INVALID_INVITATION
from tests.factories import (
    PASSWORD,
    Actor,
    Org,
    Server,
    anonymous,
    api_key_client,
    make_org,
    run_db,
    sign_in,
)

COOKIE = "enginex_session"
EXPECTED_404 = {"error": {"code": "not_found", "message": NOT_FOUND_MESSAGE, "details": {}}}
INVALID_404 = {"error": {"code": "not_found", "message": INVALID_INVITATION, "details": {}}}


@pytest.fixture(scope="module")
def full(server: Server, platform_admin: Actor) -> Org:
    """One member and one API key per role; shared by tests that only add invitations."""
    return make_org(server, platform_admin, "orgs")


def small_org(server: Server, platform_admin: Actor, label: str) -> Org:
    """An organization of its own (admin + viewer, no keys) for tests that change members."""
    return make_org(server, platform_admin, label, roles=("admin", "viewer"), with_keys=False)


def members_as(actor: Actor, org: Org) -> dict[str, str]:
    response = actor.client.get(f"/api/v1/orgs/{org.slug}/members")
    assert response.status_code == 200, response.text
    return {m["user_id"]: m["role"] for m in response.json()}


def members(org: Org) -> dict[str, str]:
    return members_as(org.admin, org)


def set_role(actor: Actor, org: Org, user_id: str, role: str) -> httpx.Response:
    return actor.client.patch(f"/api/v1/orgs/{org.slug}/members/{user_id}", json={"role": role})


def accept_token(server: Server, token: str, **extra: Any) -> httpx.Response:
    with anonymous(server) as client:
        return client.post("/api/v1/invitations/accept", json={"token": token, **extra})


def invite(actor: Actor, org: Org, role: str = "viewer", email: str | None = None
           ) -> httpx.Response:
    email = email or f"inv-{secrets.token_hex(4)}@example.org"
    return actor.client.post(f"/api/v1/orgs/{org.slug}/invitations",
                             json={"email": email, "role": role})


# --- members ---------------------------------------------------------------------------------


def test_role_changes_and_removal_take_effect_on_the_next_request(
        server: Server, platform_admin: Actor) -> None:
    org = small_org(server, platform_admin, "roles")
    viewer = org.members["viewer"]
    invitations = f"/api/v1/orgs/{org.slug}/invitations"
    refused = viewer.client.get(invitations)
    assert refused.status_code == 403
    assert refused.json()["error"]["details"]["required_scope"] == "members:write"

    promoted = set_role(org.admin, org, viewer.user_id, "admin")
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["role"] == "admin" and promoted.json()["user_id"] == viewer.user_id
    assert viewer.client.get(invitations).status_code == 200
    assert set_role(org.admin, org, viewer.user_id, "viewer").status_code == 200
    assert viewer.client.get(invitations).status_code == 403
    assert members(org)[viewer.user_id] == "viewer"

    removed = org.admin.client.delete(f"/api/v1/orgs/{org.slug}/members/{viewer.user_id}")
    assert removed.status_code == 204
    for path in ("members", "invitations", "api-keys"):
        response = viewer.client.get(f"/api/v1/orgs/{org.slug}/{path}")
        assert response.status_code == 404 and response.json() == EXPECTED_404
    me = viewer.client.get("/api/v1/me")
    assert me.status_code == 200 and me.json()["organizations"] == []
    assert viewer.user_id not in members(org)
    again = org.admin.client.delete(f"/api/v1/orgs/{org.slug}/members/{viewer.user_id}")
    assert again.status_code == 404 and again.json() == EXPECTED_404
    unknown = set_role(org.admin, org, str(uuid.uuid4()), "viewer")
    assert unknown.status_code == 404 and unknown.json() == EXPECTED_404


def test_the_last_admin_cannot_be_removed_or_demoted(server: Server,
                                                     platform_admin: Actor) -> None:
    org = small_org(server, platform_admin, "last")
    admin, viewer = org.admin, org.members["viewer"]
    base = f"/api/v1/orgs/{org.slug}/members"
    for response in (admin.client.delete(f"{base}/{admin.user_id}"),
                     set_role(admin, org, admin.user_id, "viewer")):
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["code"] == "last_admin" and "admin" in error["message"]
    assert members(org)[admin.user_id] == "admin"
    # Same role again is a no-op, not a conflict.
    assert set_role(admin, org, admin.user_id, "admin").status_code == 200

    assert set_role(admin, org, viewer.user_id, "admin").status_code == 200
    assert set_role(viewer, org, admin.user_id, "builder").status_code == 200
    assert set_role(viewer, org, viewer.user_id, "operator").json()["error"]["code"] == \
        "last_admin"
    assert viewer.client.delete(f"{base}/{viewer.user_id}").status_code == 409
    # The demoted former admin can no longer manage members.
    assert set_role(admin, org, viewer.user_id, "viewer").status_code == 403
    assert members_as(viewer, org) == {admin.user_id: "builder", viewer.user_id: "admin"}


def test_two_admins_demoting_each_other_at_once_leave_one_admin(
        server: Server, platform_admin: Actor) -> None:
    org = small_org(server, platform_admin, "race")
    first, second = org.admin, org.members["viewer"]
    assert set_role(first, org, second.user_id, "admin").status_code == 200
    for _ in range(3):
        with ThreadPoolExecutor(2) as pool:
            a = pool.submit(set_role, first, org, second.user_id, "viewer")
            b = pool.submit(set_role, second, org, first.user_id, "viewer")
            ra, rb = a.result(), b.result()
        # One wins; the other is refused as the last admin (409) or as no longer admin (403).
        assert sorted([ra.status_code, rb.status_code]) in ([200, 403], [200, 409]), \
            (ra.text, rb.text)
        survivor, demoted = (first, second) if ra.status_code == 200 else (second, first)
        assert members_as(survivor, org) == {survivor.user_id: "admin",
                                             demoted.user_id: "viewer"}
        assert set_role(survivor, org, demoted.user_id, "admin").status_code == 200


# --- invitations -----------------------------------------------------------------------------


def test_invitation_token_is_shown_once_and_accepting_signs_in(
        server: Server, platform_admin: Actor) -> None:
    org = small_org(server, platform_admin, "invite")
    email = f"New.Person-{secrets.token_hex(3)}@Example.org"
    created = invite(org.admin, org, "operator", email)
    assert created.status_code == 201, created.text
    body = created.json()
    token = body["token"]
    assert token.startswith(f"inv_{uuid.UUID(org.id).hex}_")
    assert body["accept_url"].endswith(f"#{token}")  # fragment: never sent to servers/logs
    assert body["role"] == "operator" and body["accepted_at"] is None

    listed = org.admin.client.get(f"/api/v1/orgs/{org.slug}/invitations")
    assert listed.status_code == 200
    assert token not in listed.text and token[-20:] not in listed.text
    entry = next(i for i in listed.json() if i["id"] == body["id"])
    assert "token" not in entry and "accept_url" not in entry
    assert invite(org.admin, org, "viewer", org.members["viewer"].email).status_code == 409

    with anonymous(server) as newcomer:
        accepted = newcomer.post("/api/v1/invitations/accept",
                                 json={"token": token, "password": "a new pass phrase",
                                       "display_name": "New Person"})
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["new_account"] is True
        assert accepted.json()["org_slug"] == org.slug
        assert "httponly" in accepted.headers["set-cookie"].lower()
        me = newcomer.get("/api/v1/me").json()
        assert me["email"] == email and me["user_id"] == accepted.json()["user_id"]
        assert [(o["slug"], o["role"]) for o in me["organizations"]] == [(org.slug, "operator")]
        assert newcomer.get(f"/api/v1/orgs/{org.slug}/members").status_code == 200
    # Email is unique case-insensitively: the same person signs in with any casing.
    assert sign_in(server, email.lower(), "a new pass phrase").user_id == me["user_id"]

    reused = accept_token(server, token, password="another pass phrase")
    assert reused.status_code == 404 and reused.json() == INVALID_404
    entry = next(i for i in org.admin.client.get(f"/api/v1/orgs/{org.slug}/invitations").json()
                 if i["id"] == body["id"])
    assert entry["accepted_at"] is not None
    revoke = org.admin.client.delete(f"/api/v1/orgs/{org.slug}/invitations/{body['id']}")
    assert revoke.status_code == 409


def test_revoked_expired_and_forged_invitations_give_the_same_404(
        server: Server, platform_admin: Actor) -> None:
    org = small_org(server, platform_admin, "expire")
    revoked, expired, kept = (invite(org.admin, org).json() for _ in range(3))
    assert org.admin.client.delete(
        f"/api/v1/orgs/{org.slug}/invitations/{revoked['id']}").status_code == 204

    async def expire(db: Any) -> None:
        await set_tenant(db, uuid.UUID(org.id))
        await db.execute(update(Invitation).where(Invitation.id == uuid.UUID(expired["id"]))
                         .values(expires_at=utcnow() - timedelta(seconds=1)))

    run_db(server, expire)
    prefix = f"inv_{uuid.UUID(org.id).hex}_"
    forged = [prefix + "x" * 43, f"inv_{uuid.uuid4().hex}_" + "y" * 43, "inv_garbage", "nope",
              kept["token"][:-1] + ("A" if kept["token"][-1] != "A" else "B")]
    for token in [revoked["token"], expired["token"], *forged]:
        response = accept_token(server, token, password="a fine pass phrase")
        assert response.status_code == 404, (token, response.text)
        assert response.json() == INVALID_404
        assert "set-cookie" not in response.headers
    # A weak password is refused and leaves the invitation usable.
    weak = accept_token(server, kept["token"], password="short")
    assert weak.status_code == 422 and weak.json()["error"]["details"]["field"] == "password"
    missing = accept_token(server, kept["token"])
    assert missing.status_code == 422
    assert accept_token(server, kept["token"], password="a fine pass phrase").status_code == 200


def test_accepting_for_an_existing_account_never_sets_its_password(
        server: Server, platform_admin: Actor, full: Org) -> None:
    org = small_org(server, platform_admin, "exist")
    outsider = full.members["operator"]
    created = invite(org.admin, org, "viewer", outsider.email.upper())
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    # Whoever holds the link cannot add the account without the person signing in.
    hijack = accept_token(server, token, password="attacker chosen pass")
    assert hijack.status_code == 401, hijack.text
    assert hijack.json()["error"]["code"] == "sign_in_required"
    # Without a password the answer is a new address's (test_invitation_oracle.py).
    anonymous_accept = accept_token(server, token)
    assert anonymous_accept.status_code == 422, anonymous_accept.text
    assert anonymous_accept.json()["error"]["details"]["field"] == "password"
    joined = outsider.client.post("/api/v1/invitations/accept", json={"token": token})
    assert joined.status_code == 200, joined.text
    assert joined.json() == {"user_id": outsider.user_id, "org_slug": org.slug,
                             "new_account": False}
    assert "set-cookie" not in joined.headers
    # The account's password is unchanged and it now belongs to both organizations.
    again = sign_in(server, outsider.email, PASSWORD)
    orgs = {o["slug"]: o["role"] for o in again.client.get("/api/v1/me").json()["organizations"]}
    assert orgs == {org.slug: "viewer", full.slug: "operator"}
    with anonymous(server) as client:
        assert client.post("/api/v1/auth/login", json={
            "email": outsider.email, "password": "attacker chosen pass"}).status_code == 401
    again.close()


def test_only_admins_can_invite(server: Server, full: Org) -> None:
    for role in ("builder", "operator", "viewer"):
        for wanted in ("admin", role):
            response = invite(full.members[role], full, wanted)
            assert response.status_code == 403, (role, response.text)
            error = response.json()["error"]
            assert error["code"] == "forbidden"
            assert error["details"] == {"required_scope": "members:write", "role": role}
        with api_key_client(server, full.api_keys[role]) as key:
            response = key.post(f"/api/v1/orgs/{full.slug}/invitations",
                                json={"email": "k@example.org", "role": "admin"})
            assert response.status_code == 403
    with api_key_client(server, full.api_keys["admin"]) as key:
        response = key.post(f"/api/v1/orgs/{full.slug}/invitations",
                            json={"email": f"by-key-{secrets.token_hex(3)}@example.org",
                                  "role": "admin"})
        assert response.status_code == 201, response.text


def test_an_invitation_is_accepted_once_under_concurrency(server: Server, full: Org) -> None:
    token = invite(full.admin, full).json()["token"]
    with ThreadPoolExecutor(4) as pool:
        statuses = sorted(pool.map(
            lambda _: accept_token(server, token, password="a racing pass phrase").status_code,
            range(4)))
    assert statuses == [200, 404, 404, 404], statuses
