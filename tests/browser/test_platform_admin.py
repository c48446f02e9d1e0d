"""The platform admin's pages and the invitation acceptance page, in a real Chromium.

The journey: the platform admin signs in, creates a tenant for a new admin, copies the
invitation link; a fresh browser opens it, sets a password and lands signed in on the new
organization -- the token never reaching the server in a URL; the platform admin suspends the
tenant after a confirmation and the new admin then sees the suspended message. The tenants list
shows counts and never a tenant's content; an existing account is sent to sign in first and
comes back to accept; the pages run under the strict CSP and fit a phone.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import Browsing, open_browsing
from tests.factories import (
    PASSWORD,
    Actor,
    Org,
    Server,
    deploy_agent,
    make_org,
    make_platform_admin,
    pending_approval,
    start_session,
    wait_for_status,
)

pytestmark = pytest.mark.browser

INVALID = "This invitation link is not valid"


def _document_status(*codes: int) -> Any:
    """Chromium reports a 4xx document as a failed resource on the console; those are the
    answers under test here, anything else is a problem."""
    def allowed(text: str) -> bool:
        return any(f"the server responded with a status of {code} " in text for code in codes)
    return allowed


def _tenant_row(page: Page, slug: str) -> Any:
    # 50 tenants a page in slug order: start just before this one.
    page.goto(f"/admin/tenants?after={slug[:-1]}")
    return page.locator(f"#tenant-{slug}")


def _counts(row: Any) -> dict[str, str]:
    return row.locator("[data-count]").evaluate_all(
        "els => Object.fromEntries(els.map(e => [e.dataset.count, e.textContent.trim()]))")


def _no_horizontal_scroll(page: Page) -> None:
    scroll, client = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert scroll <= client, f"page is {scroll}px wide on a {client}px screen"


def test_a_new_tenant_admin_joins_through_the_copied_link_and_is_then_suspended(
        browsing: Browsing, browser: Browser, server: Server) -> None:
    page = browsing.page
    page.goto("/")
    # A fresh platform admin, a member of no organization: lands on the tenants (the
    # session's platform admin may have joined organizations in other tests).
    browsing.sign_in(make_platform_admin(server).email)
    assert page.url == browsing.url("/admin/tenants")
    expect(page.get_by_role("heading", name="Tenants", exact=True)).to_be_visible()
    expect(page.locator(f'#workers [data-worker="{server.app.state.worker.name}"]')
           ).to_contain_text("alive")

    slug = f"brw-{secrets.token_hex(4)}"
    name = f"Browser Co {slug[-4:]}"
    email = f"boss-{slug}@example.org"
    page.get_by_label("Slug").fill(slug)
    page.get_by_label("Name").fill(name)
    page.get_by_label("First admin's email").fill(email)
    with page.expect_navigation():
        page.get_by_role("button", name="Create tenant").click()
    expect(page.get_by_role("heading", name="Tenant created")).to_be_visible()
    expect(page.locator("main")).to_contain_text(f"Send this invitation link to {email}")

    browsing.context.grant_permissions(["clipboard-read", "clipboard-write"],
                                       origin=server.base_url)
    page.get_by_role("button", name="Copy link").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    link = page.evaluate("() => navigator.clipboard.readText()")
    assert link == page.get_by_label("Invitation link").input_value()
    base = server.settings.base_url.rstrip("/")
    assert link.startswith(f"{base}/invitations/accept#inv_")
    token = link.split("#", 1)[1]
    browsing.screenshot("admin-tenant-created")

    # A fresh browser (the new admin's) opens the link.
    newcomer = open_browsing(browser, server)
    try:
        joined = newcomer.page
        seen_urls: list[str] = []
        joined.on("request", lambda request: seen_urls.append(request.url))
        joined.goto(f"/invitations/accept#{token}")
        expect(joined.get_by_role("heading", name="Accept your invitation")).to_be_visible()
        assert joined.url == newcomer.url("/invitations/accept")  # the token left the bar
        assert joined.locator("input[name=token]").input_value() == token
        joined.get_by_label("Your name").fill("Bea Boss")
        joined.get_by_label("Choose a password").fill("too-short")
        joined.get_by_label("Type it again").fill("too-short")
        with joined.expect_navigation():
            joined.get_by_role("button", name="Create account and join").click()
        expect(joined.locator("#password-error")).to_contain_text(
            "Use at least 12 characters")
        expect(joined.get_by_label("Your name")).to_have_value("Bea Boss")
        expect(joined.get_by_label("Choose a password")).to_be_focused()
        newcomer.screenshot("invitation-accept-error")
        joined.get_by_label("Choose a password").fill(PASSWORD)
        joined.get_by_label("Type it again").fill(PASSWORD)
        newcomer.screenshot("invitation-accept")
        with joined.expect_navigation():
            joined.get_by_role("button", name="Create account and join").click()
        assert joined.url == newcomer.url(f"/o/{slug}")
        expect(joined.get_by_role("heading", name="Overview")).to_be_visible()
        expect(joined.get_by_role("banner")).to_contain_text(email)
        assert not any(token in url for url in seen_urls), "the token went out in a URL"
        assert joined.evaluate("() => sessionStorage.getItem('enginex.invitation')") is None

        # The platform admin sees the new member, then suspends the tenant.
        row = _tenant_row(page, slug)
        expect(row).to_contain_text(name)
        assert _counts(row)["members"] == "1"
        with page.expect_navigation():
            row.get_by_role("link", name=f"Suspend {name}").click()
        expect(page.get_by_role("heading", name=f"Suspend {name}?")).to_be_visible()
        with page.expect_navigation():
            page.get_by_role("button", name=f"Suspend {name}").click()
        expect(page.get_by_role("status")).to_contain_text(f"{name} ({slug}) is now suspended")
        row = _tenant_row(page, slug)
        expect(row.locator("[data-field=status]")).to_have_text("suspended")
        expect(row.get_by_role("link", name=f"Reactivate {name}")).to_be_visible()

        # ... and the new admin is locked out, with the reason.
        joined.reload()
        expect(joined.get_by_role("alert")).to_have_text(
            "This organization is suspended. Contact the platform operator.")
        newcomer.problems.assert_clean(allowed_console=_document_status(422, 403))
    finally:
        newcomer.context.close()

    # The link was used: opening it again explains that it no longer works.
    page.goto(f"/invitations/accept#{token}")
    with page.expect_navigation():
        page.get_by_role("button", name="Accept invitation").click()
    expect(page.locator("#accept-message")).to_contain_text(INVALID)
    assert page.evaluate("() => sessionStorage.getItem('enginex.invitation')") is None
    browsing.problems.assert_clean(allowed_console=_document_status(404))


def test_the_tenants_list_shows_counts_and_no_tenant_content(
        browsing: Browsing, server: Server, platform_admin: Actor) -> None:
    org = make_org(server, platform_admin, "cnt", with_keys=False)
    deployed = deploy_agent(org)
    canary = f"canary-{secrets.token_hex(6)}"
    run = start_session(org, {"timesheet": f"date,person,project,hours\n2026-11-02,{canary},"
                                            "Apollo,8\n"})
    wait_for_status(org, run["id"], {"waiting_approval"})
    approval = pending_approval(org, run["id"])
    content = [canary, deployed["name"], run["id"], approval["id"], approval["question"],
               *(m.email for m in org.members.values())]

    page = browsing.page
    page.goto("/admin/tenants")
    browsing.sign_in(platform_admin.email)
    row = _tenant_row(page, org.slug)
    expect(row).to_contain_text(org.name)
    assert _counts(row) == {"members": "4", "agents": "1", "queue_depth": "0",
                            "pending_approvals": "1", "queued": "0", "running": "0",
                            "waiting_approval": "1", "succeeded": "0", "failed": "0",
                            "cancelled": "0"}
    browsing.screenshot("admin-tenants")
    visited = [page.content()]
    with page.expect_navigation():
        row.get_by_role("link", name=f"Suspend {org.name}").click()
    expect(page.get_by_role("heading", name=f"Suspend {org.name}?")).to_contain_text(org.name)
    expect(page.locator("main")).to_contain_text("All 4 members")
    visited.append(page.content())
    page.goto("/admin/workers")
    visited.append(page.content())
    for html in visited:
        for text in content:
            assert text not in html, f"an admin page shows tenant content {text!r}"
    # The suspension was only offered: the tenant is still active.
    assert _counts(_tenant_row(page, org.slug))["members"] == "4"
    expect(page.locator(f"#tenant-{org.slug} [data-field=status]")).to_have_text("active")
    browsing.problems.assert_clean()


def test_an_existing_account_signs_in_first_and_comes_back_to_accept(
        browsing: Browsing, server: Server, platform_admin: Actor, web_org: Org) -> None:
    person = web_org.members["operator"]
    inviter = make_org(server, platform_admin, "inv", roles=("admin",), with_keys=False)
    invited = inviter.admin.client.post(f"/api/v1/orgs/{inviter.slug}/invitations",
                                        json={"email": person.email, "role": "viewer"})
    assert invited.status_code == 201, invited.text
    token = invited.json()["token"]

    page = browsing.page
    page.goto(f"/invitations/accept#{token}")
    # Someone with an account fills in the new-account form anyway.
    page.get_by_label("Choose a password").fill(PASSWORD)
    page.get_by_label("Type it again").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Create account and join").click()
    expect(page.locator("#accept-message")).to_contain_text("Sign in as that account first")
    with page.expect_navigation():
        page.get_by_role("link", name="Sign in as that account first").click()
    assert page.url == browsing.url("/login?next=/invitations/accept")
    browsing.sign_in(person.email)
    assert page.url == browsing.url("/invitations/accept")
    expect(page.locator("main")).to_contain_text(f"You are signed in as {person.email}")
    assert page.locator("input[name=token]").input_value() == token  # kept in this tab
    with page.expect_navigation():
        page.get_by_role("button", name="Accept invitation").click()
    assert page.url == browsing.url(f"/o/{inviter.slug}")
    expect(page.locator("main")).to_contain_text("You are viewer in this organization.")
    browsing.problems.assert_clean(allowed_console=_document_status(401))


def test_admin_and_accept_pages_fit_a_phone(phone: Browsing, platform_admin: Actor) -> None:
    page = phone.page
    page.goto("/invitations/accept")
    expect(page.get_by_role("heading", name="Accept your invitation")).to_be_visible()
    # Opened without the token (the link was cut short): said so, and nothing to submit.
    expect(page.locator("#no-token")).to_be_visible()
    expect(page.get_by_role("button", name="Create account and join")).to_be_disabled()
    _no_horizontal_scroll(page)
    phone.screenshot("invitation-accept-phone")

    page.goto("/login?next=/admin/tenants")
    phone.sign_in(platform_admin.email)
    assert page.url == phone.url("/admin/tenants")
    expect(page.get_by_role("heading", name="Tenants", exact=True)).to_be_visible()
    _no_horizontal_scroll(page)
    create = page.get_by_role("button", name="Create tenant")
    create.scroll_into_view_if_needed()
    box = create.bounding_box()
    assert box is not None and box["height"] >= 44
    phone.screenshot("admin-tenants-phone")
    phone.problems.assert_clean()
