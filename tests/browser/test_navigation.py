"""Finding one's way in the dashboard, in a real Chromium.

- Red is for destructive actions only: choosing a credential type, replacing a credential's
  values or choosing the kind of MCP server are drawn like any control; delete is red.
- A member of one organization lands in it (no chooser page); the organization switcher is a
  labelled control; the platform admin lands on the platform pages, which link to each other.

Screenshots go to test-artifacts/screenshots/ (ignored by git).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import Locator, expect

from tests.browser.conftest import Browsing
from tests.factories import Actor, Org, Server, accept, accept_as, make_org, make_platform_admin

pytestmark = pytest.mark.browser

DANGER_RED = "rgb(180, 35, 24)"  # --bad in app.css
DANGER_BACKGROUND = "rgb(254, 243, 242)"  # --bad-bg


def _colors(element: Locator) -> tuple[str, str]:
    """The computed text color of a disclosure's summary and the background of its box."""
    return (element.locator("summary").evaluate("e => getComputedStyle(e).color"),
            element.evaluate("e => getComputedStyle(e).backgroundColor"))


def _open(details: Locator) -> Locator:
    if details.get_attribute("open") is None:
        details.locator("summary").click()
    expect(details).to_have_attribute("open", "")
    return details


def test_harmless_choices_are_not_drawn_as_destructive(browsing: Browsing, web_org: Org) -> None:
    admin = web_org.admin
    name = f"token-{web_org.slug}"[:60]
    created = admin.client.post(f"/api/v1/orgs/{web_org.slug}/credentials", json={
        "name": name, "type": "bearer_token", "values": {"token": "s3cret-value"}})
    assert created.status_code == 201, created.text
    page = browsing.page
    page.goto(f"/o/{web_org.slug}/settings/credentials")
    browsing.sign_in(admin.email)
    expect(page.get_by_role("heading", name="Credentials", exact=True)).to_be_visible()

    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=name))
    replace = _open(row.locator("details").filter(has_text="Replace values…"))
    delete = _open(row.locator("details").filter(has_text="Delete…"))
    api_key_type = _open(page.locator("details").filter(
        has=page.locator("summary", has_text=re.compile(r"^api_key$"))))
    browsing.screenshot("credentials-choices")
    for harmless in (replace, api_key_type):
        color, background = _colors(harmless)
        assert color != DANGER_RED, harmless.locator("summary").inner_text()
        assert background != DANGER_BACKGROUND, harmless.locator("summary").inner_text()
    assert _colors(delete) == (DANGER_RED, DANGER_BACKGROUND)

    page.goto(f"/o/{web_org.slug}/settings/mcp")
    kinds = [page.locator("details").filter(has=page.locator("summary", has_text=text))
             for text in ("Remote server (HTTP)", "Server from the platform catalog")]
    for kind in kinds:
        _open(kind)
    browsing.screenshot("mcp-server-kinds")
    for kind in kinds:
        color, background = _colors(kind)
        assert color != DANGER_RED and background != DANGER_BACKGROUND, kind.inner_text()
    browsing.problems.assert_clean()


def test_member_of_one_organization_lands_in_it_and_sees_a_labelled_switcher(
        browsing: Browsing, web_org: Org) -> None:
    page = browsing.page
    page.goto("/")
    browsing.sign_in(web_org.members["operator"].email)
    expect(page).to_have_url(re.compile(rf"/o/{re.escape(web_org.slug)}(/[a-z]*)?$"))
    switcher = page.get_by_role("navigation", name="Organization")
    expect(switcher.get_by_text("Organization", exact=True)).to_be_visible()
    summary = switcher.locator("summary")
    expect(summary).to_have_accessible_name(re.compile(rf"^Organization\b.*{web_org.slug}"))
    browsing.screenshot("one-organization-landing")
    summary.click()
    expect(switcher.get_by_role("link", name=re.compile(re.escape(web_org.name)))).to_be_visible()
    browsing.problems.assert_clean()


def test_platform_admin_lands_on_the_platform_pages_which_link_to_each_other(
        browsing: Browsing, server: Server) -> None:
    # A platform admin of their own, member of no organization (the shared one created orgs).
    with ThreadPoolExecutor(max_workers=1) as pool:
        root: Actor = pool.submit(make_platform_admin, server).result()
    page = browsing.page
    page.goto("/")
    browsing.sign_in(root.email)
    expect(page).to_have_url(re.compile(r"/admin/tenants$"))
    expect(page.get_by_text("not a member of any organization")).to_have_count(0)
    nav = page.get_by_role("navigation", name="Platform administration")
    browsing.screenshot("platform-admin-landing")
    for here, label in (("/admin/workers", "Workers"), ("/admin/mcp-catalog", "MCP catalog"),
                        ("/admin/tenants", "Tenants")):
        nav.get_by_role("link", name=label, exact=True).click()
        expect(page).to_have_url(re.compile(rf"{re.escape(here)}$"))
        expect(nav.get_by_role("link", name=label, exact=True)).to_have_attribute(
            "aria-current", "page")
    browsing.screenshot("platform-admin-nav")
    browsing.problems.assert_clean()


def test_member_of_two_organizations_still_chooses(browsing: Browsing, server: Server,
                                                   web_org: Org, platform_admin: Actor) -> None:
    """The chooser stays for whoever has a choice to make."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        other = pool.submit(make_org, server, platform_admin, "nav2", roles=("admin",),
                            with_keys=False).result()
    email = f"two-{other.slug}@example.org"
    for org, role in ((web_org, "viewer"), (other, "operator")):
        invite = org.admin.client.post(f"/api/v1/orgs/{org.slug}/invitations",
                                       json={"email": email, "role": role})
        assert invite.status_code == 201, invite.text
        joined = (accept(server, invite.json()["token"]) if org is web_org
                  else accept_as(server, email, invite.json()["token"]))
        assert joined.status_code == 200, joined.text
    page = browsing.page
    page.goto("/")
    browsing.sign_in(email)
    expect(page.get_by_role("heading", name="Your organizations")).to_be_visible()
    assert page.url == browsing.url("/")
    browsing.problems.assert_clean()
