"""Sign-in, sessions, throttling, password changes, CSRF and API keys, through real HTTP.

Threat model: a stolen or old cookie must stop working at logout, password change or when the
account is disabled; a cross-site page must not be able to act with the victim's cookie; a
guesser must be slowed down per account and per address; an API key works for its own
organization only and never for platform administration.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from enginex.auth.models import ApiKey, AuthSession, User
from enginex.db import set_tenant
from enginex.kit.errors import NOT_FOUND_MESSAGE
from enginex.kit.time import utcnow
from tests.conftest import _ServerThread
from tests.factories import (
    PASSWORD,
    Actor,
    Org,
    Server,
    accept,
    accept_as,
    add_member,
    anonymous,
    api_key_client,
    client_from,
    make_org,
    run_db,
    sign_in,
)

COOKIE = "enginex_session"
EXPECTED_404 = {"error": {"code": "not_found", "message": NOT_FOUND_MESSAGE, "details": {}}}


@pytest.fixture(scope="module")
def team(server: Server, platform_admin: Actor) -> Org:
    """A small organization shared by this module's tests that do not change its membership."""
    return make_org(server, platform_admin, "auth", roles=("admin", "viewer"), with_keys=False)


@pytest.fixture(scope="module")
def strict_server(server: Server) -> Iterator[Server]:
    """A second server on the same database with low sign-in limits."""
    settings = server.settings.model_copy(update={"login_max_failures_per_account": 3,
                                                  "login_max_failures_per_address": 5,
                                                  "embedded_worker": False})
    thread = _ServerThread(settings)
    thread.start()
    try:
        yield Server(base_url=f"http://127.0.0.1:{thread.port}", settings=thread.settings,
                     backend=server.backend, app=thread.app)
    finally:
        thread.stop()


def login(client: httpx.Client, email: str, password: str = PASSWORD) -> httpx.Response:
    return client.post("/api/v1/auth/login", json={"email": email, "password": password})


def cookie_client(server: Server, token: str, csrf: str | None = None) -> httpx.Client:
    """A client that sends exactly this session cookie (and optionally a CSRF header)."""
    headers = {"X-CSRF-Token": csrf} if csrf else {}
    return httpx.Client(base_url=server.base_url, timeout=30, cookies={COOKIE: token},
                        headers=headers)


def session_cookie(response: httpx.Response) -> str:
    return response.cookies[COOKIE]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


# --- sign-in and sessions --------------------------------------------------------------------


def test_login_sets_a_new_httponly_lax_cookie_every_time(server: Server, team: Org) -> None:
    email = team.members["viewer"].email
    with anonymous(server) as first_client, anonymous(server) as second_client:
        first = login(first_client, email.upper())  # email is case-insensitive
        second = login(second_client, email)
        assert first.status_code == second.status_code == 200, first.text
        raw = first.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower() for part in raw.split(";")}
        assert raw.startswith(f"{COOKIE}=")
        assert {"httponly", "path", "samesite"} <= attributes
        assert "samesite=lax" in raw.lower()
        assert "secure" not in attributes  # served over plain http here
        token_1, token_2 = session_cookie(first), session_cookie(second)
        assert token_1 != token_2 and len(token_1) >= 32
        body = first.json()
        assert body["kind"] == "user" and body["email"].lower() == email.lower()
        assert body["csrf_token"] and token_1 not in first.text
        assert [o["slug"] for o in body["organizations"]] == [team.slug]

        with cookie_client(server, token_1, first.json()["csrf_token"]) as one, \
                cookie_client(server, token_2) as two:
            assert one.get("/api/v1/me").status_code == 200
            assert two.get("/api/v1/me").status_code == 200
            out = one.post("/api/v1/auth/logout")
            assert out.status_code == 204
            assert f'{COOKIE}=""' in out.headers["set-cookie"] or \
                "max-age=0" in out.headers["set-cookie"].lower()
        # The old cookie is dead at once, even when replayed by someone else.
        with cookie_client(server, token_1) as replay, cookie_client(server, token_2) as two:
            assert_error(replay.get("/api/v1/me"), 401, "session_expired")
            assert two.get("/api/v1/me").status_code == 200


def test_wrong_password_and_unknown_email_get_the_same_401(server: Server, team: Org) -> None:
    with client_from(server) as client:
        wrong = login(client, team.admin.email, "not-the-right-password")
        unknown = login(client, f"nobody-{secrets.token_hex(4)}@example.org",
                        "not-the-right-password")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"]["code"] == "invalid_credentials"
    assert COOKIE not in wrong.headers.get("set-cookie", "")


def test_anonymous_and_garbage_credentials_get_401(server: Server, team: Org) -> None:
    with anonymous(server) as client:
        assert_error(client.get("/api/v1/me"), 401, "unauthenticated")
        assert client.get("/api/v1/me").headers["www-authenticate"] == "Bearer"
        assert_error(client.get("/api/v1/me", headers={"Authorization": "Basic eDp5"}), 401,
                     "unauthenticated")
        assert_error(client.get("/api/v1/me", headers={"Authorization": "Bearer nope"}), 401,
                     "unauthenticated")
    with cookie_client(server, "forged") as client:
        assert_error(client.get("/api/v1/me"), 401, "session_expired")


def test_disabled_account_cannot_sign_in_and_its_sessions_end(server: Server,
                                                             team: Org) -> None:
    person = add_member(server, team, "viewer")
    assert person.client.get("/api/v1/me").status_code == 200

    async def disable(db: Any) -> None:
        await db.execute(update(User).where(User.id == uuid.UUID(person.user_id))
                         .values(disabled=True))

    run_db(server, disable)
    assert_error(person.client.get("/api/v1/me"), 401, "session_expired")
    with client_from(server) as client:
        error = assert_error(login(client, person.email), 403, "account_disabled")
        assert "disabled" in error["message"]
        assert COOKIE not in client.cookies


def test_idle_session_expires(server: Server, team: Org) -> None:
    person = sign_in(server, team.members["viewer"].email)
    token = person.client.cookies[COOKIE]
    idle = timedelta(minutes=server.settings.session_idle_minutes + 1)

    async def age(db: Any) -> None:
        from enginex.kit.ids import token_digest

        await db.execute(update(AuthSession).where(AuthSession.token_digest == token_digest(token))
                         .values(last_seen_at=utcnow() - idle))

    run_db(server, age)
    assert_error(person.client.get("/api/v1/me"), 401, "session_expired")
    person.close()


# --- throttling ------------------------------------------------------------------------------


def test_account_throttling_after_ten_failures(server: Server, team: Org) -> None:
    person = add_member(server, team, "viewer")
    limit = server.settings.login_max_failures_per_account
    assert limit == 10  # the documented default
    with client_from(server) as guesser, client_from(server) as elsewhere:
        for _ in range(limit):
            assert_error(login(guesser, person.email, "wrong-password-guess"), 401,
                         "invalid_credentials")
        # Throttled: even the right password, from any address, until the window passes.
        for client in (guesser, elsewhere):
            throttled = login(client, person.email)
            error = assert_error(throttled, 429, "too_many_requests")
            retry_after = int(throttled.headers["retry-after"])
            assert 0 < retry_after <= server.settings.login_window_minutes * 60 + 1
            assert error["details"]["retry_after_seconds"] == retry_after
            assert "Too many failed sign-in attempts" in error["message"]
            assert f"{retry_after} seconds" in error["message"]
        # Other accounts from the same address are unaffected (address limit is higher).
        assert login(guesser, team.members["viewer"].email).status_code == 200
    # The existing session of the throttled account keeps working.
    assert person.client.get("/api/v1/me").status_code == 200


def test_successful_login_clears_the_account_failures(strict_server: Server,
                                                      team: Org) -> None:
    person = add_member(strict_server, team, "viewer")
    with client_from(strict_server) as client:
        for _ in range(2):
            assert login(client, person.email, "wrong-password-guess").status_code == 401
        assert login(client, person.email).status_code == 200
        # Cleared: two more failures are allowed again before the limit of three.
        for _ in range(3):
            assert login(client, person.email, "wrong-password-guess").status_code == 401
        assert_error(login(client, person.email), 429, "too_many_requests")


def test_address_throttling_blocks_one_address_only(strict_server: Server, team: Org) -> None:
    email = team.members["viewer"].email
    sprayed = [f"user-{secrets.token_hex(4)}@example.org"
               for _ in range(strict_server.settings.login_max_failures_per_address)]
    with client_from(strict_server) as attacker, client_from(strict_server) as bystander:
        for victim in sprayed:
            spray = login(attacker, victim, "wrong-password-guess")
            assert spray.status_code == 401
        # Guessing again from this address is refused (an account that has not failed from
        # here still gets one try: test_signin_throttle.py).
        throttled = login(attacker, sprayed[0], "another-wrong-guess")
        error = assert_error(throttled, 429, "too_many_requests")
        assert int(throttled.headers["retry-after"]) > 0
        assert "try again" in error["message"]
        assert login(bystander, email).status_code == 200


# --- password change -------------------------------------------------------------------------


def test_password_change_revokes_other_sessions_and_enforces_policy(server: Server,
                                                                    team: Org) -> None:
    person = add_member(server, team, "viewer")
    other = sign_in(server, person.email)
    old_cookie = person.client.cookies[COOKIE]
    url = "/api/v1/me/password"

    def change(new: str, current: str = PASSWORD) -> httpx.Response:
        return person.client.post(url, json={"current_password": current, "new_password": new})

    for weak, why in [("short-pw-11", "at least 12"), ("passwordpassword", "too common"),
                      ("iloveyou1234", "too common")]:
        error = assert_error(change(weak), 422, "validation_failed")
        assert why in error["message"] and error["details"]["field"] == "new_password"
    error = assert_error(change("x" * 40 + "-Long-enough", "not-my-password"), 422,
                         "validation_failed")
    assert error["details"]["field"] == "current_password"
    too_long = assert_error(change("a1b2-" * 25 + "wxyz"), 422, "validation_failed")  # 129
    assert too_long["details"]["errors"][0]["field"] == "new_password"
    # Nothing changed so far: both sessions still work.
    assert other.client.get("/api/v1/me").status_code == 200

    new_password = "correct horse battery staple " * 2 + "ninety"  # 64 characters
    assert len(new_password) == 64
    changed = change(new_password)
    assert changed.status_code == 200, changed.text
    assert session_cookie(changed) != old_cookie
    assert_error(other.client.get("/api/v1/me"), 401, "session_expired")
    with cookie_client(server, old_cookie) as replay:
        assert_error(replay.get("/api/v1/me"), 401, "session_expired")
    # The session that changed the password continues on its new cookie and CSRF token.
    person.client.headers["X-CSRF-Token"] = changed.json()["csrf_token"]
    assert person.client.get("/api/v1/me").status_code == 200
    with client_from(server) as client:
        assert login(client, person.email).status_code == 401
        assert login(client, person.email, new_password).status_code == 200


def test_wrong_current_passwords_count_towards_the_account_throttle(strict_server: Server,
                                                                   team: Org) -> None:
    """A stolen session cookie is not an unthrottled way to guess the account's password."""
    person = add_member(strict_server, team, "viewer")
    new = {"new_password": "a brand new pass phrase"}
    for _ in range(strict_server.settings.login_max_failures_per_account):
        guess = person.client.post("/api/v1/me/password",
                                   json={"current_password": "a wrong guess 1", **new})
        error = assert_error(guess, 422, "validation_failed")
        assert error["details"]["field"] == "current_password"
    right = person.client.post("/api/v1/me/password", json={"current_password": PASSWORD, **new})
    assert_error(right, 429, "too_many_requests")
    assert int(right.headers["retry-after"]) > 0
    with client_from(strict_server) as client:
        assert_error(login(client, person.email), 429, "too_many_requests")
    assert person.client.get("/api/v1/me").status_code == 200  # the session itself stays


# --- CSRF ------------------------------------------------------------------------------------


def test_cookie_requests_need_the_csrf_token(server: Server, team: Org) -> None:
    admin = team.admin
    token = admin.client.cookies[COOKIE]
    csrf = admin.client.headers["X-CSRF-Token"]
    base = f"/api/v1/orgs/{team.slug}"
    admin_key = admin.client.post(f"{base}/api-keys", json={"name": "csrf", "role": "admin"})
    assert admin_key.status_code == 201
    keys = admin.client.get(f"{base}/api-keys").json()
    viewer_id = team.members["viewer"].user_id
    invite = {"email": f"csrf-{secrets.token_hex(3)}@example.org", "role": "viewer"}
    with cookie_client(server, token) as bare:
        assert bare.get(f"{base}/members").status_code == 200  # safe methods need none
        for method, url, body in [("POST", f"{base}/invitations", invite),
                                  ("PATCH", f"{base}/members/{viewer_id}", {"role": "operator"}),
                                  ("DELETE", f"{base}/api-keys/{keys[0]['id']}", None),
                                  ("POST", "/api/v1/auth/logout", None)]:
            response = bare.request(method, url, json=body)
            error = assert_error(response, 403, "csrf_failed")
            assert "X-CSRF-Token" in error["message"]
            wrong = bare.request(method, url, json=body, headers={"X-CSRF-Token": "0" * 64})
            assert_error(wrong, 403, "csrf_failed")
    with cookie_client(server, token, csrf) as signed:
        foreign = signed.post(f"{base}/invitations", json=invite,
                              headers={"Origin": "https://evil.example"})
        assert_error(foreign, 403, "csrf_failed")
        assert_error(signed.post(f"{base}/invitations", json=invite,
                                 headers={"Origin": "null"}), 403, "csrf_failed")
        same_site = signed.post(f"{base}/invitations", json=invite,
                                headers={"Origin": server.base_url})
        assert same_site.status_code == 201, same_site.text
    # Nothing was changed by the refused requests.
    roles = {m["user_id"]: m["role"] for m in admin.client.get(f"{base}/members").json()}
    assert roles[viewer_id] == "viewer"
    assert len(admin.client.get(f"{base}/api-keys").json()) == len(keys)
    # API keys are not ambient credentials: no CSRF token needed, even with an Origin.
    with api_key_client(server, admin_key.json()["token"]) as key:
        created = key.post(f"{base}/invitations",
                           json={"email": f"key-{secrets.token_hex(3)}@example.org"},
                           headers={"Origin": "https://elsewhere.example"})
        assert created.status_code == 201, created.text


# --- API keys --------------------------------------------------------------------------------


def test_api_key_is_shown_once_listed_by_hint_and_revocable(server: Server, team: Org) -> None:
    admin = team.admin.client
    base = f"/api/v1/orgs/{team.slug}/api-keys"
    created = admin.post(base, json={"name": "ci", "role": "viewer"})
    assert created.status_code == 201, created.text
    key = created.json()
    token = key["token"]
    assert token.startswith(f"enx_{uuid.UUID(team.id).hex}_") and len(token) > 60
    assert key["hint"] == token[-4:] and key["role"] == "viewer"
    assert key["created_by"] == team.admin.user_id and key["expires_at"] is not None
    listed = admin.get(base)
    assert listed.status_code == 200
    assert token not in listed.text and token[4:-4] not in listed.text
    mine = next(k for k in listed.json() if k["id"] == key["id"])
    assert "token" not in mine and mine["hint"] == token[-4:]

    with api_key_client(server, token) as client:
        used = client.get(f"/api/v1/orgs/{team.slug}/members")
        assert used.status_code == 200
        me = client.get("/api/v1/me").json()
        assert me["kind"] == "api_key" and me["api_key_id"] == key["id"]
        assert me["user_id"] is None and me["csrf_token"] is None
        assert me["organizations"] == [{"id": team.id, "slug": team.slug, "name": team.name,
                                        "status": "active", "role": "viewer"}]
        # Keys have no session and no password.
        assert_error(client.post("/api/v1/auth/logout"), 403, "forbidden")
        assert_error(client.post("/api/v1/me/password", json={
            "current_password": PASSWORD, "new_password": "another-long-pass"}), 403,
            "forbidden")

        assert admin.delete(f"{base}/{key['id']}").status_code == 204
        assert_error(client.get(f"/api/v1/orgs/{team.slug}/members"), 401, "unauthenticated")
        assert_error(client.get("/api/v1/me"), 401, "unauthenticated")
    assert admin.delete(f"{base}/{key['id']}").status_code == 204  # idempotent
    revoked = next(k for k in admin.get(base).json() if k["id"] == key["id"])
    assert revoked["revoked_at"] is not None and revoked["last_used_at"] is not None


def test_expired_api_key_is_refused(server: Server, team: Org) -> None:
    admin = team.admin.client
    created = admin.post(f"/api/v1/orgs/{team.slug}/api-keys",
                         json={"name": "short-lived", "role": "viewer", "expires_in_days": 1})
    assert created.status_code == 201, created.text
    key = created.json()
    with api_key_client(server, key["token"]) as client:
        assert client.get(f"/api/v1/orgs/{team.slug}/members").status_code == 200

        async def expire(db: Any) -> None:
            await set_tenant(db, uuid.UUID(team.id))
            await db.execute(update(ApiKey).where(ApiKey.id == uuid.UUID(key["id"]))
                             .values(expires_at=utcnow() - timedelta(seconds=1)))

        run_db(server, expire)
        error = assert_error(client.get(f"/api/v1/orgs/{team.slug}/members"), 401,
                             "key_expired")
        assert "expired" in error["message"]


def test_api_key_is_useless_on_another_org_even_for_a_member_of_both(
        server: Server, org_a: Org, org_b: Org) -> None:
    email = f"both-{secrets.token_hex(4)}@example.org"
    tokens = []
    for org in (org_a, org_b):
        invite = org.admin.client.post(f"/api/v1/orgs/{org.slug}/invitations",
                                       json={"email": email, "role": "admin"})
        assert invite.status_code == 201, invite.text
        tokens.append(invite.json()["token"])
    assert accept(server, tokens[0]).json()["new_account"] is True
    joined = accept_as(server, email, tokens[1])
    assert joined.status_code == 200 and joined.json()["new_account"] is False
    both = sign_in(server, email)
    assert {o["slug"] for o in both.client.get("/api/v1/me").json()["organizations"]} == \
        {org_a.slug, org_b.slug}
    created = both.client.post(f"/api/v1/orgs/{org_a.slug}/api-keys",
                               json={"name": "a only", "role": "admin"})
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    assert token.startswith(f"enx_{uuid.UUID(org_a.id).hex}_")
    with api_key_client(server, token) as key:
        assert key.get(f"/api/v1/orgs/{org_a.slug}/members").status_code == 200
        for path in ("members", "api-keys", "invitations"):
            response = key.get(f"/api/v1/orgs/{org_b.slug}/{path}")
            assert response.status_code == 404 and response.json() == EXPECTED_404
        refused = key.post(f"/api/v1/orgs/{org_b.slug}/invitations",
                           json={"email": f"x-{secrets.token_hex(3)}@example.org"})
        assert refused.status_code == 404 and refused.json() == EXPECTED_404
        me = key.get("/api/v1/me").json()
        assert [o["slug"] for o in me["organizations"]] == [org_a.slug]
        assert me["organizations"][0]["role"] == "admin"
    # Re-labelling the key with org B's id does not help either.
    secret = token.rsplit("_", 1)[1]
    forged = f"enx_{uuid.UUID(org_b.id).hex}_{secret}"
    with api_key_client(server, forged) as key:
        assert_error(key.get(f"/api/v1/orgs/{org_b.slug}/members"), 401, "unauthenticated")
    both.close()


def test_api_keys_cannot_use_platform_admin_routes(server: Server,
                                                   platform_admin: Actor) -> None:
    """Even a key created by a platform admin (as an org admin) is not a platform admin."""
    slug = f"root-{secrets.token_hex(4)}"
    created = platform_admin.client.post("/api/v1/admin/tenants", json={
        "slug": slug, "name": "Platform's own org", "admin_email": platform_admin.email})
    assert created.status_code == 201, created.text
    key = platform_admin.client.post(f"/api/v1/orgs/{slug}/api-keys",
                                     json={"name": "root key", "role": "admin"})
    assert key.status_code == 201, key.text
    with api_key_client(server, key.json()["token"]) as client:
        assert client.get(f"/api/v1/orgs/{slug}/members").status_code == 200
        assert client.get("/api/v1/me").json()["is_platform_admin"] is False
        assert_error(client.get("/api/v1/admin/tenants"), 403, "platform_admin_required")
        assert_error(client.post("/api/v1/admin/tenants", json={
            "slug": f"k-{secrets.token_hex(4)}", "name": "via key",
            "admin_email": "k@example.org"}), 403, "platform_admin_required")
        assert_error(client.patch(f"/api/v1/admin/tenants/{created.json()['id']}",
                                  json={"status": "suspended"}), 403, "platform_admin_required")


def test_api_key_never_outlives_its_creators_access(server: Server, platform_admin: Actor
                                                     ) -> None:
    org = make_org(server, platform_admin, "keys", roles=("admin", "viewer"), with_keys=False)
    second_admin = add_member(server, org, "admin")
    created = second_admin.client.post(f"/api/v1/orgs/{org.slug}/api-keys",
                                       json={"name": "ops", "role": "admin"})
    assert created.status_code == 201, created.text
    with api_key_client(server, created.json()["token"]) as key:
        members_url = f"/api/v1/orgs/{org.slug}/members"
        assert key.get(f"/api/v1/orgs/{org.slug}/api-keys").status_code == 200
        # Demoted creator: the key is capped at the creator's new role.
        demoted = org.admin.client.patch(f"{members_url}/{second_admin.user_id}",
                                         json={"role": "viewer"})
        assert demoted.status_code == 200, demoted.text
        assert key.get(f"/api/v1/orgs/{org.slug}/api-keys").status_code == 403
        assert key.get(members_url).status_code == 200
        # Removed creator: the key stops working at once.
        removed = org.admin.client.delete(f"{members_url}/{second_admin.user_id}")
        assert removed.status_code == 204
        gone = key.get(members_url)
        assert gone.status_code == 401
        assert gone.json()["error"]["code"] == "key_creator_gone"
