"""An org admin (or the org's SCIM client) disables a member: the member's cookie access to
that organization, the API keys they created for it and their open event streams stop; other
organizations and the account itself are untouched; enabling restores access. SQLite and
PostgreSQL, with the deployment's default stream re-check interval (15 s at most)."""

from __future__ import annotations

from pathlib import Path

from tests.factories import Actor, Org, Server, add_member, api_key_client, deploy_agent, wait_for
from tests.test_client_cli import EnginexCli
from tests.test_scim import SCIM_JSON, fixture, scim_client
from tests.test_stream_access import EventStream, cookie_headers, waiting_session

DEADLINE = 60.0


def own_key(org: Org, admin: Actor) -> str:
    created = admin.client.post(f"/api/v1/orgs/{org.slug}/api-keys",
                                json={"name": "mine", "role": "viewer"})
    assert created.status_code == 201, created.text
    return str(created.json()["token"])


def test_a_disabled_member_loses_cookie_keys_and_streams_and_gets_them_back(
        server: Server, org_a: Org, org_b: Org) -> None:
    deploy_agent(org_a)
    run_id = waiting_session(org_a)
    member = add_member(server, org_a, "admin")
    key = own_key(org_a, member)
    runs = f"/api/v1/orgs/{org_a.slug}/sessions"
    with api_key_client(server, key) as key_client:
        assert member.client.get(runs).status_code == 200
        assert key_client.get(runs).status_code == 200
        stream = EventStream(server, org_a, run_id, cookie_headers(server, member))
        key_stream = EventStream(server, org_a, run_id, {"Authorization": f"Bearer {key}"})
        try:
            stream.wait_for("approval_requested")
            key_stream.wait_for("approval_requested")
            disabled = org_a.admin.client.post(
                f"/api/v1/orgs/{org_a.slug}/members/{member.user_id}/disable")
            assert disabled.status_code == 200, disabled.text
            assert disabled.json()["disabled_at"] is not None
            assert member.client.get(runs).status_code == 404
            refused = key_client.get(runs)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "key_creator_gone"
            assert stream.assert_ends_revoked()["details"]["reason"] == "not_found"
            assert key_stream.assert_ends_revoked()["details"]["reason"] == "key_creator_gone"
        finally:
            stream.close()
            key_stream.close()
        # the account still works elsewhere, and the org is gone from their list
        me = member.client.get("/api/v1/me").json()
        assert org_a.slug not in {o["slug"] for o in me["organizations"]}
        enabled = org_a.admin.client.post(
            f"/api/v1/orgs/{org_a.slug}/members/{member.user_id}/enable")
        assert enabled.status_code == 200 and enabled.json()["disabled_at"] is None
        assert member.client.get(runs).status_code == 200
        assert key_client.get(runs).status_code == 200
    audit = org_a.admin.client.get(f"/api/v1/orgs/{org_a.slug}/audit",
                                   params={"action": "member."}).json()
    actions = [e["action"] for e in audit["items"] if e["target_id"] == member.user_id]
    assert "member.disabled" in actions and "member.enabled" in actions
    # another organization's admin cannot disable org_a's member (same 404 as no member)
    assert org_b.admin.client.post(
        f"/api/v1/orgs/{org_b.slug}/members/{member.user_id}/disable").status_code == 404


def test_the_last_admin_and_yourself_cannot_be_disabled(server: Server, org_a: Org) -> None:
    base = f"/api/v1/orgs/{org_a.slug}/members"
    self_disable = org_a.admin.client.post(f"{base}/{org_a.admin.user_id}/disable")
    assert self_disable.status_code == 403
    assert self_disable.json()["error"]["code"] == "cannot_disable_self"
    other = add_member(server, org_a, "admin")
    # with the first admin disabled, the other is the last enabled admin
    assert other.client.post(f"{base}/{org_a.admin.user_id}/disable").status_code == 200
    with scim_client(server, org_a, _token(org_a, other)) as scim:
        last = scim.patch(f"/Users/{other.user_id}", json=fixture("okta_deactivate_user.json"))
        assert last.status_code == 409 and last.headers["content-type"].startswith(SCIM_JSON)
    assert other.client.post(f"{base}/{org_a.admin.user_id}/enable").status_code == 200


def _token(org: Org, admin: Actor) -> str:
    created = admin.client.post(f"/api/v1/orgs/{org.slug}/scim/tokens", json={"name": "t"})
    assert created.status_code == 201, created.text
    return str(created.json()["token"])


def test_scim_deactivation_cuts_off_session_keys_and_streams(server: Server, org_a: Org) -> None:
    """Done-when of issue 14: a signed-in user with a cookie session, an API key and an open
    event stream; SCIM PATCH active=false (Okta's path-less form); all three stop."""
    deploy_agent(org_a)
    run_id = waiting_session(org_a)
    member = add_member(server, org_a, "admin")
    key = own_key(org_a, member)
    runs = f"/api/v1/orgs/{org_a.slug}/sessions"
    with scim_client(server, org_a) as scim, api_key_client(server, key) as key_client:
        stream = EventStream(server, org_a, run_id, cookie_headers(server, member))
        try:
            stream.wait_for("approval_requested")
            off = scim.patch(f"/Users/{member.user_id}", json=fixture("okta_deactivate_user.json"))
            assert off.status_code == 200 and off.json()["active"] is False
            wait_for(lambda: member.client.get(runs).status_code == 404,
                     what="the cookie to lose the organization", timeout=DEADLINE)
            wait_for(lambda: key_client.get(runs).status_code == 401,
                     what="the member's API key to stop", timeout=DEADLINE)
            stream.assert_ends_revoked()
        finally:
            stream.close()
        # Entra's form turns it back on
        on = scim.patch(f"/Users/{member.user_id}", json={
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "Replace", "path": "active", "value": "True"}]})
        assert on.status_code == 200 and on.json()["active"] is True
        assert member.client.get(runs).status_code == 200


def test_members_cli_lists_disables_and_enables(server: Server, org_a: Org,
                                                tmp_path: Path) -> None:
    cli = EnginexCli(tmp_path, url=server.base_url)
    key = org_a.api_keys["admin"]
    viewer = org_a.members["viewer"]
    listed = cli.ok("members", "list", "--org", org_a.slug, api_key=key)
    assert viewer.email in listed and "active" in listed
    out = cli.ok("members", "disable", viewer.user_id, "--org", org_a.slug, api_key=key)
    assert "disabled" in out
    assert viewer.client.get(f"/api/v1/orgs/{org_a.slug}/sessions").status_code == 404
    assert "disabled" in cli.ok("members", "list", "--org", org_a.slug, api_key=key)
    cli.ok("members", "enable", viewer.user_id, "--org", org_a.slug, api_key=key)
    assert viewer.client.get(f"/api/v1/orgs/{org_a.slug}/sessions").status_code == 200
    refused = cli.run("members", "disable", viewer.user_id, "--org", org_a.slug,
                      api_key=org_a.api_keys["viewer"])
    assert refused.code != 0 and "members:write" in refused.err


def test_the_members_page_disables_and_enables(server: Server, org_a: Org) -> None:
    viewer = org_a.members["viewer"]
    page = f"/o/{org_a.slug}/members"
    admin = org_a.admin.client
    csrf = {"csrf_token": admin.headers["X-CSRF-Token"]}
    shown = admin.get(page)
    assert shown.status_code == 200 and f"Disable {viewer.email}" in shown.text
    done = admin.post(f"{page}/{viewer.user_id}/disable", data=csrf, follow_redirects=False)
    assert done.status_code == 303, done.text
    after = admin.get(page).text
    assert 'data-state="disabled"' in after and f"Enable {viewer.email}" in after
    assert viewer.client.get(f"/api/v1/orgs/{org_a.slug}/sessions").status_code == 404
    refused = admin.post(f"{page}/{org_a.admin.user_id}/disable", data=csrf)
    assert refused.status_code == 403 and "cannot disable your own" in refused.text
    admin.post(f"{page}/{viewer.user_id}/enable", data=csrf, follow_redirects=False)
    assert viewer.client.get(f"/api/v1/orgs/{org_a.slug}/sessions").status_code == 200
