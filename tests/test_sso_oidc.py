"""OIDC single sign-on against a real OpenID Provider (oidc-provider, started by the test on
127.0.0.1), at the HTTP level, on SQLite and PostgreSQL: the threat model of issue 14.

Org A and org B are two clients of the SAME provider. A person is who the IdP says at one
connection (issuer, subject); an email only ever links an account through a domain the
organization verified; nothing signed in through A reaches B.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from enginex.sso.oidc import OidcConfig, OidcError, exchange_code, validate_id_token
from tests.factories import (
    PASSWORD,
    Actor,
    Server,
    accept,
    anonymous,
    api_key_client,
    sign_in,
)
from tests.idp.oidc.flow import query_of
from tests.idp.oidc.world import World, add_account, sso_world

ACCOUNTS: dict[str, dict[str, Any]] = {}
add_account(ACCOUNTS, "ann", "ann@{a}", ["Engineers"])
add_account(ACCOUNTS, "ben", "ben@{a}", ["ops"])
add_account(ACCOUNTS, "carl", "carl@{a}")
add_account(ACCOUNTS, "dan", "dan@{a}")
add_account(ACCOUNTS, "eve", "eve@{b}")
add_account(ACCOUNTS, "mallory", "mallory@{b}")
add_account(ACCOUNTS, "outsider", "out@unverified-domain.example")
add_account(ACCOUNTS, "unverified", "unverified@{a}", verified=False)
add_account(ACCOUNTS, "fay", "fay@{a}")
add_account(ACCOUNTS, "gus", "gus@{a}")
add_account(ACCOUNTS, "hal", "hal@{a}")


@pytest.fixture(scope="module")
def world(server: Server, platform_admin: Actor) -> Iterator[World]:
    with sso_world(server, platform_admin, ACCOUNTS) as built:
        rule = built.orgs["a"].admin.client.post(
            f"/api/v1/orgs/{built.orgs['a'].slug}/sso/role-rules",
            json={"group": "engineers", "role": "builder", "priority": 10})
        assert rule.status_code == 201, rule.text
        yield built


def me(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/api/v1/me")
    assert response.status_code == 200, response.text
    return response.json()


def roles_of(client: httpx.Client) -> dict[str, str]:
    return {o["slug"]: o["role"] for o in me(client)["organizations"]}


def audit_actions(world: World, org: str, action: str) -> list[dict[str, Any]]:
    response = world.orgs[org].admin.client.get(
        f"/api/v1/orgs/{world.orgs[org].slug}/audit", params={"action": action, "limit": 200})
    assert response.status_code == 200, response.text
    return response.json()["items"]


def sso_error(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("text/html")
    marker = 'data-code="'
    start = response.text.index(marker) + len(marker)
    return response.text[start:response.text.index('"', start)]


def test_a_new_user_of_a_verified_domain_lands_in_the_org_with_the_mapped_role(
        world: World) -> None:
    a = world.orgs["a"]
    client, response = world.sign_in("a", "ann")
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"/o/{a.slug}"
    assert roles_of(client) == {a.slug: "builder"}  # group Engineers -> builder, only org A
    assert me(client)["email"] == world.email("a", "ann")
    assert client.get(f"/o/{a.slug}").status_code == 200
    provisioned = audit_actions(world, "a", "sso.user_provisioned")
    assert any(e["target_id"] == me(client)["user_id"] for e in provisioned)
    assert "password" not in response.headers.get("set-cookie", "")


def test_the_same_identity_signs_in_as_the_same_user(world: World) -> None:
    first, _ = world.sign_in("a", "dan")
    second, response = world.sign_in("a", "dan")
    assert response.status_code == 303
    assert me(first)["user_id"] == me(second)["user_id"]


def test_role_changes_apply_at_each_sign_in_and_are_audited(world: World) -> None:
    a = world.orgs["a"]
    client, _ = world.sign_in("a", "ben")
    assert roles_of(client)[a.slug] == "viewer"  # no rule for 'ops': the default role
    rule = a.admin.client.post(f"/api/v1/orgs/{a.slug}/sso/role-rules",
                               json={"group": "ops", "role": "operator"})
    assert rule.status_code == 201, rule.text
    client, _ = world.sign_in("a", "ben")
    assert roles_of(client)[a.slug] == "operator"
    user_id = me(client)["user_id"]
    changes = [e for e in audit_actions(world, "a", "sso.role_changed")
               if e["target_id"] == user_id]
    assert changes and changes[0]["details"]["from"] == "viewer"
    assert changes[0]["details"]["to"] == "operator"
    assert a.admin.client.delete(
        f"/api/v1/orgs/{a.slug}/sso/role-rules/{rule.json()['id']}").status_code == 204
    client, _ = world.sign_in("a", "ben")
    assert roles_of(client)[a.slug] == "viewer"


def test_an_existing_account_of_a_verified_domain_is_linked(world: World) -> None:
    a, b = world.orgs["a"], world.orgs["b"]
    invite = b.admin.client.post(f"/api/v1/orgs/{b.slug}/invitations",
                                 json={"email": world.email("a", "carl"), "role": "viewer"})
    assert invite.status_code == 201, invite.text
    assert accept(world.server, invite.json()["token"]).status_code == 200
    password_user = sign_in(world.server, world.email("a", "carl"))
    client, response = world.sign_in("a", "carl")
    assert response.status_code == 303, response.text
    assert me(client)["user_id"] == password_user.user_id
    assert roles_of(client) == {a.slug: "viewer", b.slug: "viewer"}
    linked = audit_actions(world, "a", "sso.identity_linked")
    assert any(e["target_id"] == password_user.user_id and not e["details"]["new_account"]
               for e in linked)


def test_an_email_of_a_domain_the_org_has_not_verified_is_refused(world: World) -> None:
    for login in ("outsider", "mallory"):  # unverified anywhere / verified by org B
        client, response = world.sign_in("a", login)
        assert response.status_code == 403
        assert sso_error(response) == "sso_domain_not_verified"
        assert "has not verified the email domain" in response.text
        assert client.get("/api/v1/me").status_code == 401


def test_an_email_the_idp_marks_unverified_is_refused(world: World) -> None:
    _, response = world.sign_in("a", "unverified")
    assert response.status_code == 403
    assert sso_error(response) == "sso_email_unverified"


def test_the_same_idp_cannot_sign_anyone_into_another_org(world: World) -> None:
    a, b = world.orgs["a"], world.orgs["b"]
    client, response = world.sign_in("b", "eve")
    assert response.status_code == 303
    assert roles_of(client) == {b.slug: "viewer"}
    denied = client.get(f"/api/v1/orgs/{a.slug}/sso/connections")
    assert denied.status_code == 404
    assert client.get(f"/o/{a.slug}").status_code == 404
    # B's people signing in through A's connection (same IdP, A's client) get nothing.
    other, refused = world.sign_in("a", "eve")
    assert refused.status_code == 403 and sso_error(refused) == "sso_domain_not_verified"
    assert other.get("/api/v1/me").status_code == 401


def test_a_code_issued_to_org_a_is_refused_at_org_b(world: World) -> None:
    a, b = world.orgs["a"], world.orgs["b"]
    alice_browser = anonymous(world.server)
    callback_a = world.reach_callback(alice_browser, "a", "fay")
    code_a = query_of(callback_a)["code"]
    # 1. A's whole response delivered to B's callback, in the browser that began at A.
    wrong_org = alice_browser.get(
        f"/sso/{b.slug}/oidc/callback?" + urlencode(query_of(callback_a)))
    assert wrong_org.status_code == 400 and sso_error(wrong_org) == "sso_wrong_org"
    # 2. A's code injected into a sign-in that began at B (B's state and cookie): B's client
    # cannot redeem a code issued to A's client.
    attacker = anonymous(world.server)
    state_b = query_of(world.start(attacker, "b"))["state"]
    injected = attacker.get(f"/sso/{b.slug}/oidc/callback?"
                            + urlencode({"code": code_a, "state": state_b,
                                         "iss": world.idp.issuer}))
    assert injected.status_code == 400 and sso_error(injected) == "sso_code_refused"
    assert attacker.get("/api/v1/me").status_code == 401
    assert a.slug not in injected.text


def test_an_id_token_issued_to_org_a_client_is_refused_for_org_b(world: World) -> None:
    browser = anonymous(world.server)
    callback = world.reach_callback(browser, "a", "gus")
    flow = world.server.app.state.sso_flow_sealer.open(browser.cookies.get("enginex_sso_flow"))
    assert flow is not None
    config_a = OidcConfig(issuer=world.idp.issuer, client_id="client-a")
    config_b = OidcConfig(issuer=world.idp.issuer, client_id="client-b")
    cache = world.server.app.state.oidc_cache

    async def run() -> None:
        metadata = await cache.metadata(world.idp.issuer, allow_private=True)
        id_token = await exchange_code(
            metadata, config_a, client_secret=world.secrets["client-a"],
            redirect_uri=f"{world.server.base_url}/sso/{world.orgs['a'].slug}/oidc/callback",
            code=query_of(callback)["code"], code_verifier=flow.code_verifier,
            allow_private=True)

        async def keys(kid: str | None) -> Any:
            return await cache.keyset(metadata["jwks_uri"], kid=kid, allow_private=True)

        claims = await validate_id_token(id_token, config=config_a, nonce=flow.nonce,
                                         load_keys=keys)
        assert claims["aud"] == "client-a" and claims["groups"] == []
        with pytest.raises(OidcError, match="issued to another client"):
            await validate_id_token(id_token, config=config_b, nonce=flow.nonce,
                                    load_keys=keys)
        with pytest.raises(OidcError, match="nonce does not match"):
            await validate_id_token(id_token, config=config_a, nonce="another",
                                    load_keys=keys)

    asyncio.run(run())


def test_a_forged_or_stale_response_is_refused_with_a_clear_error(world: World) -> None:
    a = world.orgs["a"]
    callback_path = f"/sso/{a.slug}/oidc/callback?"

    def deliver(change: dict[str, str]) -> httpx.Response:
        """A fresh sign-in whose response is changed by ``change`` on the way back."""
        browser = anonymous(world.server)
        params = query_of(world.reach_callback(browser, "a", "hal"))
        response = browser.get(callback_path + urlencode({**params, **change}))
        assert browser.get("/api/v1/me").status_code == 401
        return response

    forged = deliver({"state": "forged"})
    assert forged.status_code == 400 and sso_error(forged) == "sso_state_mismatch"
    assert "state parameter does not match" in forged.text
    mixed_up = deliver({"iss": "https://evil.test"})
    assert mixed_up.status_code == 400 and sso_error(mixed_up) == "sso_issuer_mismatch"
    bad_code = deliver({"code": "not-a-code"})
    assert bad_code.status_code == 400 and sso_error(bad_code) == "sso_code_refused"
    denied = deliver({"error": "access_denied", "error_description": "User said no"})
    assert denied.status_code == 400 and "User said no" in denied.text
    # Without this browser's flow cookie, a genuine response signs no one in.
    browser = anonymous(world.server)
    callback = world.reach_callback(browser, "a", "hal")
    no_cookie = anonymous(world.server).get(callback)
    assert no_cookie.status_code == 400 and sso_error(no_cookie) == "sso_no_flow"
    # A refusal clears the flow cookie; a used response cannot be replayed either.
    assert browser.get(callback).status_code == 303
    replayed = browser.get(callback)
    assert replayed.status_code == 400 and sso_error(replayed) == "sso_no_flow"
    # Each refusal is in the organization's audit log: what failed, never who.
    failed = audit_actions(world, "a", "sso.login_failed")
    errors = {e["details"]["error"] for e in failed}
    assert {"sso_state_mismatch", "sso_issuer_mismatch", "sso_code_refused", "sso_idp_refused",
            "sso_no_flow"} <= errors, errors
    connection = world.connections["a"]
    assert any(e["details"].get("connection_id") == connection for e in failed
               if e["details"]["error"] == "sso_state_mismatch")
    for entry in failed:
        assert entry["actor_kind"] == "anonymous" and entry["actor_id"] is None
        assert set(entry["details"]) <= {"protocol", "error", "status", "connection_id"}
        assert "hal" not in str(entry["details"]) and "@" not in str(entry["details"])


def test_sign_in_page_sends_a_verified_domain_to_its_idp(world: World) -> None:
    a = world.orgs["a"]
    origin = {"Origin": world.server.base_url}
    with anonymous(world.server) as browser:
        routed = browser.post("/login", data={"email": world.email("a", "someone")},
                              headers=origin)
        assert routed.status_code == 200
        start = f"/sso/{a.slug}/start?next=%2F&amp;login_hint=someone%40"
        assert start in routed.text and 'http-equiv="refresh"' in routed.text
        assert browser.get(start.replace("&amp;", "&") + world.domains["a"]).status_code == 303
        other = browser.post("/login", data={"email": "x@unverified-domain.example",
                                             "sso": "1"}, headers=origin)
        assert other.status_code == 422
        assert "Single sign-on is not set up" in other.text
        plain = browser.post("/login", data={"email": "x@unverified-domain.example"},
                             headers=origin)
        assert plain.status_code == 422 and "Enter your email and password" in plain.text


def test_the_test_button_reports_what_the_idp_publishes(world: World) -> None:
    a = world.orgs["a"]
    base = f"/api/v1/orgs/{a.slug}/sso/connections"
    report = a.admin.client.post(f"{base}/{world.connections['a']}/test")
    assert report.status_code == 200, report.text
    body = report.json()
    assert body["ok"] is True and body["problems"] == []
    assert body["discovery"]["issuer"] == world.idp.issuer
    assert "S256" in body["discovery"]["code_challenge_methods_supported"]
    assert [k["kid"] for k in body["keys"]] == [k["kid"] for k in world.idp.keys]
    broken = a.admin.client.post(base, json={
        "name": "broken", "kind": "oidc",
        "oidc": {"issuer": world.idp.issuer + "/nowhere", "client_id": "x"},
        "client_secret": "s" * 32})
    assert broken.status_code == 201, broken.text
    failed = a.admin.client.post(f"{base}/{broken.json()['id']}/test").json()
    assert failed["ok"] is False and "HTTP 404" in failed["problems"][0]
    page = a.admin.client.post(
        f"/o/{a.slug}/settings/sso/connections/{world.connections['a']}/test",
        data={"csrf_token": a.admin.client.headers["X-CSRF-Token"]})
    assert page.status_code == 200 and "discovery and keys found" in page.text
    tested = audit_actions(world, "a", "sso.connection_tested")
    assert {e["details"]["ok"] for e in tested} == {True, False}
    assert a.admin.client.delete(f"{base}/{broken.json()['id']}").status_code == 204


def test_connections_never_return_the_client_secret(world: World) -> None:
    a = world.orgs["a"]
    listed = a.admin.client.get(f"/api/v1/orgs/{a.slug}/sso/connections")
    assert listed.status_code == 200
    assert world.secrets["client-a"] not in listed.text
    (connection,) = listed.json()
    assert connection["settings"]["client_secret_credential"] == "sso-idp"
    assert connection["redirect_uri"] == (f"{world.server.base_url}/sso/{a.slug}/oidc/callback")
    credential = [c for c in a.admin.client.get(f"/api/v1/orgs/{a.slug}/credentials").json()
                  if c["name"] == "sso-idp"]
    assert credential and world.secrets["client-a"] not in str(credential)
    page = a.admin.client.get(f"/o/{a.slug}/settings/sso")
    assert page.status_code == 200 and world.secrets["client-a"] not in page.text
    assert f"/sso/{a.slug}/oidc/callback" in page.text


def test_a_domain_verified_by_one_org_cannot_be_claimed_by_another(world: World) -> None:
    a, b = world.orgs["a"], world.orgs["b"]
    taken = b.admin.client.post(f"/api/v1/orgs/{b.slug}/sso/domains",
                                json={"domain": world.domains["a"].upper()})
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "domain_taken"
    # Pending claims do not block anyone; the first verification wins, the second is refused.
    shared = f"shared-{uuid.uuid4().hex[:8]}.example.com"
    claims = {}
    for org in (a, b):
        response = org.admin.client.post(f"/api/v1/orgs/{org.slug}/sso/domains",
                                         json={"domain": shared})
        assert response.status_code == 201, response.text
        claims[org.slug] = response.json()
        world.dns.records.setdefault(response.json()["txt_record_name"], []).append(
            response.json()["txt_record_value"])
    first = a.admin.client.post(
        f"/api/v1/orgs/{a.slug}/sso/domains/{claims[a.slug]['id']}/verify")
    assert first.status_code == 200 and first.json()["verified"] is True
    second = b.admin.client.post(
        f"/api/v1/orgs/{b.slug}/sso/domains/{claims[b.slug]['id']}/verify")
    assert second.status_code == 409 and second.json()["error"]["code"] == "domain_taken"
    listed = b.admin.client.get(f"/api/v1/orgs/{b.slug}/sso/domains").json()
    assert [d["verified"] for d in listed if d["domain"] == shared] == [False]


def test_a_domain_without_its_txt_record_stays_unverified(world: World,
                                                          platform_admin: Actor) -> None:
    a = world.orgs["a"]
    claim = a.admin.client.post(f"/api/v1/orgs/{a.slug}/sso/domains",
                                json={"domain": f"nodns-{uuid.uuid4().hex[:8]}.example.org"})
    assert claim.status_code == 201
    domain_id = claim.json()["id"]
    refused = a.admin.client.post(f"/api/v1/orgs/{a.slug}/sso/domains/{domain_id}/verify")
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "domain_not_verified"
    assert claim.json()["txt_record_value"] in refused.json()["error"]["message"]
    # A platform admin can vouch for it instead.
    vouched = platform_admin.client.post(
        f"/api/v1/admin/tenants/{a.id}/domains/{domain_id}/verify")
    assert vouched.status_code == 200 and vouched.json()["verified"] is True
    entries = audit_actions(world, "a", "sso.domain_verified")
    assert any(e["details"]["method"] == "platform_admin" for e in entries)
    bad = a.admin.client.post(f"/api/v1/orgs/{a.slug}/sso/domains",
                              json={"domain": "https://not a domain/"})
    assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "domain"


def test_a_rotated_signing_key_is_fetched_once_and_unknown_kids_are_rate_limited(
        world: World) -> None:
    cache = world.server.app.state.oidc_cache
    jwks_uri = f"{world.idp.issuer}/jwks"
    before_limit = cache.min_refetch_seconds

    async def fetch_unknown() -> int:
        start = cache.jwks_fetches
        for _ in range(3):
            await cache.keyset(jwks_uri, kid="made-up", allow_private=True)
        return cache.jwks_fetches - start

    try:
        cache.min_refetch_seconds = 3600
        asyncio.run(cache.keyset(jwks_uri, kid=None, allow_private=True, refresh=True))
        assert asyncio.run(fetch_unknown()) == 0  # rate-limited: no refetch
        cache.min_refetch_seconds = 0
        world.idp.rotate_keys()
        before = cache.jwks_fetches
        client, response = world.sign_in("a", "dan")
        assert response.status_code == 303, response.text
        assert cache.jwks_fetches == before + 1  # the new kid: one refetch
        assert me(client)["email"] == world.email("a", "dan")
    finally:
        cache.min_refetch_seconds = before_limit


def test_password_sign_in_still_works_for_everyone_when_sso_is_optional(world: World) -> None:
    viewer = world.orgs["a"].members["viewer"]
    again = sign_in(world.server, viewer.email, PASSWORD)
    assert roles_of(again.client)[world.orgs["a"].slug] == "viewer"
    key = api_key_client(world.server, world.orgs["a"].api_keys["viewer"])
    assert key.get(f"/api/v1/orgs/{world.orgs['a'].slug}/agents").status_code == 200
