"""Password reset by email, end to end through a real SMTP server (aiosmtpd), on SQLite and
PostgreSQL.

Threat model: whoever asks for a reset must not learn whether an address has an account
(same status and body); the link is the credential, so it works once and briefly; a reset
ends every session of the account (a stolen cookie dies), while the account's API keys are
not touched; requests are throttled per email and per client address.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update

from tests.accounts_support import RESET_LINK, SmtpServer, body_of
from tests.conftest import separate_deployment
from tests.factories import (
    PASSWORD,
    Org,
    Server,
    api_key_client,
    client_from,
    make_org,
    make_platform_admin,
    run_db,
    sign_in,
)

SUBJECT = "Reset your EngineX password"
NEW_PASSWORD = "copper-meadow-violin-88"


@pytest.fixture(scope="module")
def mail_server(backend: str, smtp: SmtpServer,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with separate_deployment(backend, tmp_path_factory.mktemp(f"mail-{backend}"),
                             smtp_url=smtp.url) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def tenant(mail_server: Server) -> Org:
    return make_org(mail_server, make_platform_admin(mail_server), "pr",
                    roles=("admin", "viewer"))


def request_reset(server: Server, email: str, address: str | None = None):
    with client_from(server, address) as client:
        return client.post("/api/v1/auth/password-reset", json={"email": email})


def mailed_token(smtp: SmtpServer, email: str, count: int = 1) -> tuple[str, str]:
    """The (page URL, token) of the ``count``-th reset mail to ``email``."""
    message = smtp.inbox.wait_for(email, SUBJECT, count)[count - 1]
    found = RESET_LINK.search(body_of(message))
    assert found, body_of(message)
    return found.group(1), found.group(2)


def test_reset_by_email_ends_every_session_and_keeps_api_keys(
        mail_server: Server, smtp: SmtpServer, tenant: Org) -> None:
    admin = tenant.admin
    old_cookie = admin.client
    key = api_key_client(mail_server, tenant.api_keys["admin"])
    address = "127.0.9.1"
    asked = request_reset(mail_server, admin.email, address)
    unknown = request_reset(mail_server, f"nobody-{secrets.token_hex(4)}@example.org", address)
    # The same answer whether or not the address has an account.
    assert asked.status_code == unknown.status_code == 202, asked.text
    assert asked.json() == unknown.json()
    assert "If an EngineX account uses this email address" in asked.json()["message"]

    page_url, token = mailed_token(smtp, admin.email)
    assert page_url == f"{mail_server.base_url}/password-reset/confirm"
    with client_from(mail_server) as browser:
        page = browser.get(page_url)
        assert page.status_code == 200 and 'id="reset-form"' in page.text
        weak = browser.post("/api/v1/auth/password-reset/confirm",
                            json={"token": token, "new_password": "password"})
        assert weak.status_code == 422, weak.text
        assert weak.json()["error"]["details"]["field"] == "new_password"
        # A refused password does not use up the link.
        done = browser.post("/api/v1/auth/password-reset/confirm",
                            json={"token": token, "new_password": NEW_PASSWORD})
        assert done.status_code == 204, done.text
        again = browser.post("/api/v1/auth/password-reset/confirm",
                             json={"token": token, "new_password": NEW_PASSWORD + "x"})
        assert again.status_code == 404
        assert "not valid" in again.json()["error"]["message"]

    assert old_cookie.get("/api/v1/me").status_code == 401  # the old session is dead
    assert key.get(f"/api/v1/orgs/{tenant.slug}/members").status_code == 200  # keys stay
    with client_from(mail_server) as client:
        old = client.post("/api/v1/auth/login", json={"email": admin.email, "password": PASSWORD})
        assert old.status_code == 401
    fresh = sign_in(mail_server, admin.email, NEW_PASSWORD)
    audit = fresh.client.get(f"/api/v1/orgs/{tenant.slug}/audit",
                             params={"action": "auth.password_reset"})
    assert audit.status_code == 200, audit.text
    entries = [e for e in audit.json()["items"] if e["action"] == "auth.password_reset"]
    assert [e["target_id"] for e in entries] == [admin.user_id]
    tenant.members["admin"] = fresh
    key.close()


def test_an_expired_link_is_refused_and_an_unknown_address_gets_no_mail(
        mail_server: Server, smtp: SmtpServer, tenant: Org) -> None:
    viewer = tenant.members["viewer"]
    assert request_reset(mail_server, viewer.email).status_code == 202
    _, token = mailed_token(smtp, viewer.email)

    async def expire(session) -> None:
        from enginex.auth.models import PasswordReset
        from enginex.kit.ids import token_digest
        from enginex.kit.time import utcnow

        await session.execute(update(PasswordReset)
                              .where(PasswordReset.token_digest == token_digest(token))
                              .values(expires_at=utcnow() - timedelta(seconds=1)))

    run_db(mail_server, expire)
    with client_from(mail_server) as client:
        refused = client.post("/api/v1/auth/password-reset/confirm",
                              json={"token": token, "new_password": NEW_PASSWORD})
        assert refused.status_code == 404
        forged = client.post("/api/v1/auth/password-reset/confirm",
                             json={"token": "pwr_" + secrets.token_urlsafe(32),
                                   "new_password": NEW_PASSWORD})
        assert forged.status_code == 404 and forged.json() == refused.json()
    assert viewer.client.get("/api/v1/me").status_code == 200  # nothing changed

    stranger = f"stranger-{uuid.uuid4().hex[:8]}@example.org"
    assert request_reset(mail_server, stranger).status_code == 202
    outbox = tenant.admin.client  # not a platform admin: the outbox API is refused
    assert outbox.get("/api/v1/admin/outbox").status_code == 403


def test_reset_requests_are_throttled_per_email(mail_server: Server) -> None:
    email = f"flood-{uuid.uuid4().hex[:8]}@example.org"
    limit = mail_server.settings.password_reset_max_per_email
    answers = [request_reset(mail_server, email) for _ in range(limit + 1)]
    assert [a.status_code for a in answers[:limit]] == [202] * limit
    refused = answers[-1]
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert "Too many password-reset requests" in refused.json()["error"]["message"]


def test_reset_requests_are_throttled_per_client_address(mail_server: Server) -> None:
    address = "127.0.9.77"
    limit = mail_server.settings.password_reset_max_per_address
    answers = [request_reset(mail_server, f"spray-{i}-{uuid.uuid4().hex[:6]}@example.org",
                             address).status_code for i in range(limit + 1)]
    assert answers[:limit] == [202] * limit and answers[-1] == 429


SSO_SUBJECT = "Your EngineX sign-in uses single sign-on"


def test_reset_does_not_bypass_sso_enforcement_but_the_break_glass_admin_keeps_it(
        mail_server: Server, smtp: SmtpServer) -> None:
    org = make_org(mail_server, make_platform_admin(mail_server), "ps",
                   roles=("admin", "viewer"))
    admin, viewer = org.admin, org.members["viewer"]
    # A link issued before the organization turns enforcement on ...
    assert request_reset(mail_server, viewer.email).status_code == 202
    _, early_token = mailed_token(smtp, viewer.email)
    connection = admin.client.post(f"/api/v1/orgs/{org.slug}/sso/connections", json={
        "name": "idp", "kind": "oidc", "enabled": True, "default_role": "viewer",
        "oidc": {"issuer": "https://idp.example.org", "client_id": "enginex"},
        "client_secret": secrets.token_urlsafe(24)})
    assert connection.status_code == 201, connection.text
    enforced = admin.client.put(f"/api/v1/orgs/{org.slug}/sso/enforcement",
                                json={"require_sso": True, "break_glass_user_id": admin.user_id})
    assert enforced.status_code == 200, enforced.text
    with client_from(mail_server) as browser:
        # ... no longer sets a password: it would open nothing.
        refused = browser.post("/api/v1/auth/password-reset/confirm",
                               json={"token": early_token, "new_password": NEW_PASSWORD})
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "sso_required"
        assert "single sign-on" in refused.json()["error"]["message"]
    # A new request answers the same, but the mail points to SSO and carries no link.
    asked = request_reset(mail_server, viewer.email)
    assert asked.status_code == 202
    [notice] = smtp.inbox.wait_for(viewer.email, SSO_SUBJECT)
    text = body_of(notice)
    assert f"{mail_server.base_url}/sso/{org.slug}/start" in text
    assert RESET_LINK.search(text) is None and "pwr_" not in text
    assert len(smtp.inbox.to(viewer.email, SUBJECT)) == 1  # only the early link
    # The break-glass admin can still reset, and the new password still opens the org.
    assert request_reset(mail_server, admin.email).status_code == 202
    _, token = mailed_token(smtp, admin.email)
    with client_from(mail_server) as browser:
        done = browser.post("/api/v1/auth/password-reset/confirm",
                            json={"token": token, "new_password": NEW_PASSWORD})
        assert done.status_code == 204, done.text
    fresh = sign_in(mail_server, admin.email, NEW_PASSWORD)
    assert fresh.client.get(f"/api/v1/orgs/{org.slug}/members").status_code == 200
    # The viewer's old password signs in, but the organization stays closed to it.
    viewer_again = sign_in(mail_server, viewer.email, PASSWORD)
    closed = viewer_again.client.get(f"/api/v1/orgs/{org.slug}/members")
    assert closed.status_code == 403 and closed.json()["error"]["code"] == "sso_required"
