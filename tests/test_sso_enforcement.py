"""SSO enforcement: an organization that requires SSO refuses its members' password sessions
and the API keys minted with them, ends their existing sessions when it turns on, and keeps
platform admins and the named break-glass admin in (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.factories import PASSWORD, Actor, Server, add_member, api_key_client, sign_in
from tests.idp.oidc.world import World, add_account, sso_world

ACCOUNTS: dict[str, dict[str, Any]] = {}
add_account(ACCOUNTS, "dora", "dora@{c}", ["sso-admins"])


@pytest.fixture
def world(server: Server, platform_admin: Actor) -> Iterator[World]:
    with sso_world(server, platform_admin, ACCOUNTS, labels=("c",)) as built:
        org = built.orgs["c"]
        rule = org.admin.client.post(f"/api/v1/orgs/{org.slug}/sso/role-rules",
                                     json={"group": "sso-admins", "role": "admin"})
        assert rule.status_code == 201, rule.text
        yield built


def enforce(actor: Actor, slug: str, body: dict[str, Any]) -> Any:
    return actor.client.put(f"/api/v1/orgs/{slug}/sso/enforcement", json=body)


def test_requiring_sso_locks_out_passwords_but_not_sso_break_glass_or_platform_admins(
        world: World, platform_admin: Actor) -> None:
    org = world.orgs["c"]
    admin, viewer = org.admin, org.members["viewer"]
    agents = f"/api/v1/orgs/{org.slug}/agents"
    assert viewer.client.get(agents).status_code == 200
    # A second admin mints a key after a password sign-in.
    other_admin = add_member(world.server, org, "admin")
    password_key = other_admin.client.post(f"/api/v1/orgs/{org.slug}/api-keys",
                                           json={"name": "minted", "role": "viewer"})
    assert password_key.status_code == 201, password_key.text
    # The admin signed in with a password: turning it on without a way back is refused.
    locked_out = enforce(admin, org.slug, {"require_sso": True})
    assert locked_out.status_code == 422
    assert "lock yourself out" in locked_out.json()["error"]["message"]
    turned_on = enforce(admin, org.slug, {"require_sso": True,
                                          "break_glass_user_id": admin.user_id})
    assert turned_on.status_code == 200, turned_on.text
    # The viewer's password session ended; a new password session gets 403 sso_required.
    assert viewer.client.get(agents).status_code == 401
    again = sign_in(world.server, viewer.email, PASSWORD)
    refused = again.client.get(agents)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "sso_required"
    assert f"/sso/{org.slug}/start" in refused.json()["error"]["message"]
    # ... so it cannot mint an API key either; keys minted before were revoked.
    minted = again.client.post(f"/api/v1/orgs/{org.slug}/api-keys",
                               json={"name": "password key", "role": "viewer"})
    assert minted.status_code == 403
    minted_key = api_key_client(world.server, password_key.json()["token"])
    assert minted_key.get(agents).status_code == 401
    assert other_admin.client.get(agents).status_code == 401
    # The break-glass admin keeps the password session and the keys they created.
    assert admin.client.get(agents).status_code == 200
    assert api_key_client(world.server, org.api_keys["admin"]).get(agents).status_code == 200
    # Platform admins keep the platform API.
    assert platform_admin.client.get("/api/v1/admin/tenants").status_code == 200
    # A member who signs in through the organization's SSO gets in (as the admin her groups
    # map to), and may mint keys.
    client, response = world.sign_in("c", "dora")
    assert response.status_code == 303, response.text
    assert client.get(agents).status_code == 200
    key = client.post(f"/api/v1/orgs/{org.slug}/api-keys",
                      json={"name": "sso key", "role": "viewer"},
                      headers={"X-CSRF-Token": client.get("/api/v1/me").json()["csrf_token"]})
    assert key.status_code == 201, key.text
    entries = admin.client.get(f"/api/v1/orgs/{org.slug}/audit",
                               params={"action": "sso.enforcement_changed"}).json()["items"]
    assert entries[0]["details"]["sessions_ended"] >= 1
    assert entries[0]["details"]["api_keys_revoked"] >= 1
    # Turned off, passwords work again.
    assert enforce(admin, org.slug, {"require_sso": False}).status_code == 200
    assert again.client.get(agents).status_code == 200


def test_enforcement_needs_an_enabled_connection_and_an_admin_as_break_glass(
        world: World) -> None:
    org = world.orgs["c"]
    admin, viewer = org.admin, org.members["viewer"]
    not_admin = enforce(admin, org.slug, {"require_sso": True,
                                          "break_glass_user_id": viewer.user_id})
    assert not_admin.status_code == 422
    assert not_admin.json()["error"]["details"]["field"] == "break_glass_user_id"
    disabled = admin.client.patch(
        f"/api/v1/orgs/{org.slug}/sso/connections/{world.connections['c']}",
        json={"enabled": False})
    assert disabled.status_code == 200 and disabled.json()["enabled"] is False
    no_connection = enforce(admin, org.slug, {"require_sso": True,
                                              "break_glass_user_id": admin.user_id})
    assert no_connection.status_code == 422
    assert "enable an SSO connection first" in no_connection.json()["error"]["message"]
    assert viewer.client.get(f"/api/v1/orgs/{org.slug}/agents").status_code == 200
    # A disabled connection also stops SSO sign-in.
    start = viewer.client.get(f"/sso/{org.slug}/start")
    assert start.status_code == 404 and "no single sign-on" in start.text
    state = admin.client.get(f"/api/v1/orgs/{org.slug}/sso/enforcement").json()
    assert state == {"require_sso": False, "break_glass_user_id": None}
