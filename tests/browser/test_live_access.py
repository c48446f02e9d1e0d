"""The session page's live timeline stops, and says why, when the browser's access ends.

Threat model: a session page left open on a session waiting for an approval follows its event
stream for days. Signing out elsewhere (here: the same browser session, through the API) must
end the stream within the re-check interval; the page then says the access ended and does not
reconnect (tenancy/streams.py, ``access_revoked``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Locator, expect

from tests.browser.conftest import Browsing
from tests.factories import (
    Actor,
    Org,
    Server,
    deploy_agent,
    make_org,
    start_session,
    wait_for_status,
)

pytestmark = pytest.mark.browser

DEADLINE_MS = 45_000


@pytest.fixture(scope="module")
def tenant(server: Server, platform_admin: Actor) -> Org:
    org = make_org(server, platform_admin, "live", roles=("admin", "builder", "operator",
                                                          "viewer"), with_keys=False)
    deploy_agent(org)
    return org


@pytest.fixture
def short_recheck(server: Server) -> Iterator[None]:
    """Streams opened while this runs re-check access every second (the running
    deployment's ENGINEX_STREAM_RECHECK_SECONDS; read when a stream opens)."""
    settings = server.app.state.settings
    before = settings.stream_recheck_seconds
    settings.stream_recheck_seconds = 1.0
    try:
        yield
    finally:
        settings.stream_recheck_seconds = before


def _follow_then_sign_out(browsing: Browsing, tenant: Org, email: str) -> Locator:
    """Open the page of a session waiting for approval as ``email``, wait until it follows
    live, then sign that browser out through the API; the page's status line."""
    run = start_session(tenant)
    assert wait_for_status(tenant, run["id"], {"waiting_approval", "failed"},
                           timeout=60)["status"] == "waiting_approval"
    page = browsing.page
    page.goto(f"/o/{tenant.slug}/sessions/{run['id']}")
    browsing.sign_in(email)
    status = page.locator("#timeline-status")
    expect(status).to_have_text("Following live", timeout=DEADLINE_MS)
    csrf = page.request.get(browsing.url("/api/v1/me")).json()["csrf_token"]
    signed_out = page.request.post(browsing.url("/api/v1/auth/logout"),
                                   headers={"X-CSRF-Token": csrf})
    assert signed_out.status == 204
    return status


def test_signing_out_stops_the_live_timeline(browsing: Browsing, tenant: Org,
                                             short_recheck: None) -> None:
    page = browsing.page
    status = _follow_then_sign_out(browsing, tenant, tenant.members["viewer"].email)

    expect(status).to_have_text("Your session has ended. Sign in again.", timeout=DEADLINE_MS)
    expect(status).to_have_attribute("data-live", "false")
    expect(page.locator("#timeline")).to_have_attribute("data-live", "false")


def test_a_stream_cut_before_its_last_event_still_says_why(
        browsing: Browsing, tenant: Org, short_recheck: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy or a busy server can end the stream before ``access_revoked`` arrives; the
    browser's reconnect is then refused without a reason. The page asks the server whether
    it is still signed in and says so, rather than only "reload"."""
    from enginex.tenancy import streams

    monkeypatch.setattr(streams, "access_revoked_event", lambda error: b"")
    page = browsing.page
    status = _follow_then_sign_out(browsing, tenant, tenant.members["operator"].email)

    expect(status).to_have_text("Your session has ended. Sign in again.", timeout=DEADLINE_MS)
    expect(page.locator("#timeline")).to_have_attribute("data-live", "false")
