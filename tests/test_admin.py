"""The platform admin API, through real HTTP.

Threat model: platform admins manage tenants (create, suspend, reactivate) and see metadata
and counts, never tenant content; nobody else can reach these routes, API keys included; a
suspended tenant's members are locked out until it is reactivated, and outsiders cannot even
tell that it is suspended.
"""

from __future__ import annotations

import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from enginex.kit.errors import NOT_FOUND_MESSAGE
from tests.factories import (
    Actor,
    Org,
    Server,
    accept,
    anonymous,
    api_key_client,
    make_org,
)

TENANTS = "/api/v1/admin/tenants"
EXPECTED_404 = {"error": {"code": "not_found", "message": NOT_FOUND_MESSAGE, "details": {}}}


@pytest.fixture(scope="module")
def tenant(server: Server, platform_admin: Actor) -> Org:
    """A tenant with one member and key per role; tests here do not change its membership."""
    return make_org(server, platform_admin, "adm")


def new_slug(label: str = "t") -> str:
    return f"{label}-{secrets.token_hex(4)}"


def create(platform_admin: Actor, slug: str, admin_email: str, **extra: str) -> httpx.Response:
    return platform_admin.client.post(TENANTS, json={"slug": slug, "name": f"Tenant {slug}",
                                                     "admin_email": admin_email, **extra})


def listed(platform_admin: Actor) -> dict[str, dict]:
    response = platform_admin.client.get(TENANTS)
    assert response.status_code == 200, response.text
    return {t["slug"]: t for t in response.json()}


def test_create_tenant_for_a_new_admin_returns_an_invitation(server: Server,
                                                             platform_admin: Actor) -> None:
    slug = new_slug("fresh")
    email = f"boss-{slug}@example.org"
    response = create(platform_admin, slug, email, region="eu-west")
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["slug"] == slug and created["status"] == "active"
    assert created["region"] == "eu-west" and created["member_count"] == 0
    assert created["admin_user_id"] is None
    token = created["invitation_token"]
    assert token.startswith(f"inv_{uuid.UUID(created['id']).hex}_")
    assert created["invitation_url"].endswith(f"#{token}")
    assert listed(platform_admin)[slug]["member_count"] == 0

    accepted = accept(server, token)
    assert accepted.status_code == 200 and accepted.json()["new_account"] is True
    entry = listed(platform_admin)[slug]
    assert entry["member_count"] == 1 and entry["id"] == created["id"]
    # The invitation made its holder the tenant's admin.
    with anonymous(server) as client:
        login = client.post("/api/v1/auth/login",
                            json={"email": email, "password": "test-pass-phrase-42"})
        assert login.status_code == 200
        assert [(o["slug"], o["role"]) for o in login.json()["organizations"]] == \
            [(slug, "admin")]


def test_create_tenant_for_an_existing_user_adds_the_membership(
        server: Server, platform_admin: Actor, tenant: Org) -> None:
    person = tenant.members["viewer"]
    slug = new_slug("second")
    response = create(platform_admin, slug, person.email.upper())
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["admin_user_id"] == person.user_id
    assert created["invitation_token"] is None and created["invitation_url"] is None
    assert created["member_count"] == 1
    orgs = {o["slug"]: o["role"] for o in person.client.get("/api/v1/me").json()["organizations"]}
    assert orgs == {tenant.slug: "viewer", slug: "admin"}
    members = person.client.get(f"/api/v1/orgs/{slug}/members")
    assert members.status_code == 200
    assert [m["user_id"] for m in members.json()] == [person.user_id]
    # Being admin of the new tenant grants nothing more in the first one.
    assert person.client.get(f"/api/v1/orgs/{tenant.slug}/invitations").status_code == 403


def test_slug_rules(server: Server, platform_admin: Actor) -> None:
    slug = new_slug("dup")
    assert create(platform_admin, slug, f"a-{slug}@example.org").status_code == 201
    duplicate = create(platform_admin, slug, f"b-{slug}@example.org")
    assert duplicate.status_code == 409
    error = duplicate.json()["error"]
    assert error["code"] == "conflict" and slug in error["message"]
    assert error["details"] == {"field": "slug"}
    for bad in ("admin", "api", "login", "Upper-Case", "under_score", "-leading", "trailing-",
                "x" * 41, "", "sp ace", "ünï"):
        response = create(platform_admin, bad, f"c-{secrets.token_hex(3)}@example.org")
        assert response.status_code == 422, (bad, response.text)
        body = response.json()["error"]
        assert body["code"] == "validation_failed"
        assert [e["field"] for e in body["details"]["errors"]] == ["slug"], bad
    reserved = create(platform_admin, "admin", "d@example.org").json()["error"]
    assert "reserved" in reserved["message"]
    assert "admin" not in listed(platform_admin)


def test_concurrent_creation_of_one_slug_gives_one_tenant(server: Server,
                                                          platform_admin: Actor) -> None:
    slug = new_slug("race")
    with ThreadPoolExecutor(3) as pool:
        statuses = sorted(pool.map(
            lambda i: create(platform_admin, slug, f"r{i}-{slug}@example.org").status_code,
            range(3)))
    assert statuses == [201, 409, 409], statuses
    assert slug in listed(platform_admin)


def test_list_shows_member_counts_not_content(server: Server, platform_admin: Actor,
                                              tenant: Org) -> None:
    response = platform_admin.client.get(TENANTS)
    assert response.status_code == 200
    entry = next(t for t in response.json() if t["slug"] == tenant.slug)
    assert entry["member_count"] == 4 and entry["id"] == tenant.id
    assert set(entry) == {"id", "slug", "name", "status", "region", "created_at",
                          "member_count", "agent_count", "session_counts", "queue_depth",
                          "pending_approvals"}
    for member in tenant.members.values():
        assert member.email not in response.text


def test_suspend_locks_members_out_and_reactivate_restores(
        server: Server, platform_admin: Actor, tenant: Org) -> None:
    org = make_org(server, platform_admin, "susp", roles=("admin", "viewer"))
    pending = org.admin.client.post(f"/api/v1/orgs/{org.slug}/invitations",
                                    json={"email": f"late-{org.slug}@example.org"})
    assert pending.status_code == 201
    members_url = f"/api/v1/orgs/{org.slug}/members"
    viewer_key = api_key_client(server, org.api_keys["viewer"])

    suspended = platform_admin.client.patch(f"{TENANTS}/{org.id}", json={"status": "suspended"})
    assert suspended.status_code == 200, suspended.text
    assert suspended.json()["status"] == "suspended" and suspended.json()["member_count"] == 2
    assert listed(platform_admin)[org.slug]["status"] == "suspended"
    for client in (org.admin.client, org.members["viewer"].client, viewer_key):
        for response in (client.get(members_url),
                         client.get(f"/api/v1/orgs/{org.slug}/api-keys")):
            assert response.status_code == 403, response.text
            error = response.json()["error"]
            assert error["code"] == "org_suspended" and "suspended" in error["message"]
    refused = org.admin.client.post(f"/api/v1/orgs/{org.slug}/invitations",
                                    json={"email": f"x-{org.slug}@example.org"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "org_suspended"
    # Joining a suspended tenant is refused too.
    late = accept(server, pending.json()["token"])
    assert late.status_code == 403 and late.json()["error"]["code"] == "org_suspended"
    # Outsiders still get the plain 404: suspension is not disclosed to them.
    outsider = tenant.admin.client.get(members_url)
    assert outsider.status_code == 404 and outsider.json() == EXPECTED_404
    # Members still see the tenant, marked suspended, in their own profile.
    me = org.admin.client.get("/api/v1/me").json()
    assert [(o["slug"], o["status"]) for o in me["organizations"]] == [(org.slug, "suspended")]

    again = platform_admin.client.patch(f"{TENANTS}/{org.id}", json={"status": "suspended"})
    assert again.status_code == 200  # idempotent
    restored = platform_admin.client.patch(f"{TENANTS}/{org.id}", json={"status": "active"})
    assert restored.status_code == 200 and restored.json()["status"] == "active"
    for client in (org.admin.client, org.members["viewer"].client, viewer_key):
        assert client.get(members_url).status_code == 200
    assert accept(server, pending.json()["token"]).status_code == 200
    viewer_key.close()


def test_status_update_validation_and_unknown_tenant(server: Server,
                                                     platform_admin: Actor) -> None:
    missing = platform_admin.client.patch(f"{TENANTS}/{uuid.uuid4()}",
                                          json={"status": "suspended"})
    assert missing.status_code == 404 and missing.json() == EXPECTED_404
    for body in ({"status": "deleted"}, {"status": None}, {}, {"status": "active", "x": 1}):
        response = platform_admin.client.patch(f"{TENANTS}/{uuid.uuid4()}", json=body)
        assert response.status_code == 422, (body, response.text)
    bad_id = platform_admin.client.patch(f"{TENANTS}/not-a-uuid", json={"status": "active"})
    assert bad_id.status_code == 422
    assert bad_id.json()["error"]["details"]["errors"][0]["field"] == "path.tenant_id"


def test_platform_admin_has_no_implicit_access_to_tenant_content(
        server: Server, platform_admin: Actor, tenant: Org) -> None:
    admin_id = platform_admin.client.get("/api/v1/me").json()["user_id"]
    viewer_id = tenant.members["viewer"].user_id
    keys = tenant.admin.client.get(f"/api/v1/orgs/{tenant.slug}/api-keys").json()
    base = f"/api/v1/orgs/{tenant.slug}"
    for method, path, body in [("GET", "members", None), ("GET", "invitations", None),
                               ("GET", "api-keys", None),
                               ("POST", "invitations", {"email": "pa@example.org"}),
                               ("POST", "api-keys", {"name": "root"}),
                               ("PATCH", f"members/{viewer_id}", {"role": "admin"}),
                               ("DELETE", f"members/{viewer_id}", None),
                               ("DELETE", f"api-keys/{keys[0]['id']}", None)]:
        response = platform_admin.client.request(method, f"{base}/{path}", json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json() == EXPECTED_404
    members = tenant.admin.client.get(f"{base}/members").json()
    assert admin_id not in {m["user_id"] for m in members} and len(members) == 4
    assert len(tenant.admin.client.get(f"{base}/api-keys").json()) == len(keys)


def test_only_platform_admins_reach_the_admin_api(server: Server, tenant: Org) -> None:
    url = f"{TENANTS}/{tenant.id}"
    with anonymous(server) as anon:
        assert anon.get(TENANTS).status_code == 401
        assert anon.get(TENANTS).json()["error"]["code"] == "unauthenticated"
    member = tenant.members["builder"]
    for client in (tenant.admin.client, member.client):
        for response in (client.get(TENANTS), client.patch(url, json={"status": "suspended"}),
                         client.post(TENANTS, json={"slug": new_slug(), "name": "x",
                                                    "admin_email": "x@example.org"})):
            assert response.status_code == 403, response.text
            error = response.json()["error"]
            assert error["code"] == "platform_admin_required"
            assert tenant.slug not in response.text
    assert tenant.admin.client.get(f"/api/v1/orgs/{tenant.slug}/members").status_code == 200
