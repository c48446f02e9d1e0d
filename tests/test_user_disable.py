"""A platform admin disables an account everywhere (API, CLI, page), on SQLite and
PostgreSQL.

Threat model: a disabled person must lose every way in at once -- their browser sessions,
the API keys they created (in every organization), and the live event streams they hold open
(closed at the stream's next access re-check) -- and nobody but a platform admin may do it.
Re-enabling restores sign-in and the keys. Both changes are audited in the user's
organizations.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.accounts_support import enginex
from tests.conftest import separate_deployment
from tests.factories import (
    PASSWORD,
    Actor,
    Org,
    Server,
    add_member,
    api_key_client,
    client_from,
    deploy_agent,
    make_org,
    make_platform_admin,
    sign_in,
)
from tests.test_stream_access import RECHECK_SECONDS, EventStream, cookie_headers, waiting_session


@pytest.fixture(scope="module")
def stream_server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A deployment of its own whose streams re-check access every RECHECK_SECONDS."""
    with separate_deployment(backend, tmp_path_factory.mktemp(f"disable-{backend}"),
                             stream_recheck_seconds=RECHECK_SECONDS) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def tenant(stream_server: Server) -> Org:
    org = make_org(stream_server, make_platform_admin(stream_server), "ds", with_keys=False)
    deploy_agent(org)
    return org


def disable(admin: Actor, user_id: str, verb: str = "disable"):
    return admin.client.post(f"/api/v1/admin/users/{user_id}/{verb}")


def test_disabling_ends_sessions_keys_and_streams_everywhere(stream_server: Server,
                                                             tenant: Org) -> None:
    platform = make_platform_admin(stream_server)
    run_id = waiting_session(tenant)
    person = add_member(stream_server, tenant, "admin")
    created = person.client.post(f"/api/v1/orgs/{tenant.slug}/api-keys",
                                 json={"name": "laptop", "role": "viewer"})
    assert created.status_code == 201, created.text
    key = api_key_client(stream_server, created.json()["token"])
    by_cookie = EventStream(stream_server, tenant, run_id, cookie_headers(stream_server, person))
    by_key = EventStream(stream_server, tenant, run_id,
                         {"Authorization": f"Bearer {created.json()['token']}"})
    try:
        by_cookie.wait_for("approval_requested")
        by_key.wait_for("approval_requested")
        done = disable(platform, person.user_id)
        assert done.status_code == 200, done.text
        assert done.json()["disabled"] is True and done.json()["email"] == person.email
        assert by_cookie.assert_ends_revoked()["details"]["reason"] == "session_expired"
        assert by_key.assert_ends_revoked()["details"]["reason"] == "key_creator_gone"
    finally:
        by_cookie.close()
        by_key.close()
    assert person.client.get("/api/v1/me").status_code == 401
    assert key.get(f"/api/v1/orgs/{tenant.slug}/members").status_code == 401
    with client_from(stream_server) as client:
        refused = client.post("/api/v1/auth/login",
                              json={"email": person.email, "password": PASSWORD})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "account_disabled"
        # A disabled account gets no reset link either (and the answer does not say so).
        assert client.post("/api/v1/auth/password-reset",
                           json={"email": person.email}).status_code == 202
    assert disable(platform, person.user_id).status_code == 200  # idempotent

    enabled = disable(platform, person.user_id, "enable")
    assert enabled.status_code == 200 and enabled.json()["disabled"] is False
    again = sign_in(stream_server, person.email)
    assert again.client.get("/api/v1/me").status_code == 200
    assert key.get(f"/api/v1/orgs/{tenant.slug}/members").status_code == 200
    audit = tenant.admin.client.get(f"/api/v1/orgs/{tenant.slug}/audit")
    actions = [(e["action"], e["actor_kind"]) for e in audit.json()["items"]
               if e["target_id"] == person.user_id and e["action"].startswith("user.")]
    assert ("user.disabled", "platform_admin") in actions
    assert ("user.enabled", "platform_admin") in actions
    key.close()
    again.close()


def test_only_platform_admins_disable_and_not_themselves(stream_server: Server,
                                                         tenant: Org) -> None:
    platform = make_platform_admin(stream_server)
    victim = tenant.members["viewer"]
    refused = tenant.admin.client.post(f"/api/v1/admin/users/{victim.user_id}/disable")
    assert refused.status_code == 403
    assert victim.client.get("/api/v1/me").status_code == 200
    own = disable(platform, platform.user_id)
    assert own.status_code == 409 and own.json()["error"]["code"] == "own_account"
    missing = disable(platform, str(uuid.uuid4()))
    assert missing.status_code == 404


def test_the_cli_disables_and_enables_by_email(stream_server: Server, tenant: Org) -> None:
    person = add_member(stream_server, tenant, "operator")
    done = enginex(stream_server, "user", "disable", person.email.upper())
    assert done.returncode == 0, done.stderr
    assert f"{person.email.upper()} is now disabled" in done.stdout
    assert person.client.get("/api/v1/me").status_code == 401
    again = enginex(stream_server, "user", "disable", person.email)
    assert "was already disabled" in again.stdout
    unknown = enginex(stream_server, "user", "disable", "nobody@nowhere.test")
    assert unknown.returncode == 2
    assert "no account with email 'nobody@nowhere.test'" in unknown.stderr
    assert enginex(stream_server, "user", "enable", person.email).returncode == 0
    sign_in(stream_server, person.email).close()
    audit = tenant.admin.client.get(f"/api/v1/orgs/{tenant.slug}/audit")
    kinds = {(e["action"], e["actor_kind"]) for e in audit.json()["items"]
             if e["target_id"] == person.user_id}
    assert {("user.disabled", "cli"), ("user.enabled", "cli")} <= kinds


def test_the_platform_admin_disables_on_the_user_page(stream_server: Server,
                                                      tenant: Org) -> None:
    platform = make_platform_admin(stream_server)
    person = add_member(stream_server, tenant, "viewer")
    listed = platform.client.get("/admin/users", params={"q": person.email})
    assert listed.status_code == 200 and f"/admin/users/{person.user_id}" in listed.text
    page = platform.client.get(f"/admin/users/{person.user_id}")
    assert page.status_code == 200 and 'id="disable-user"' in page.text
    form = {"csrf_token": platform.client.headers["X-CSRF-Token"]}
    posted = platform.client.post(f"/admin/users/{person.user_id}/disable", data=form,
                                  headers={"Origin": stream_server.base_url})
    assert posted.status_code == 303, posted.text
    shown = platform.client.get(posted.headers["location"])
    assert 'id="enable-user"' in shown.text and "is now disabled" in shown.text
    assert person.client.get("/api/v1/me").status_code == 401
    listed_api = platform.client.get("/api/v1/admin/users", params={"q": person.email})
    assert [u["disabled"] for u in listed_api.json()] == [True]
