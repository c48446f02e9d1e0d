"""The audit log page in a real Chromium: an org admin reads the log, filters it, verifies
the chain in place (htmx), on a laptop and on a phone, under the strict CSP."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Browsing
from tests.factories import Org

pytestmark = pytest.mark.browser


def _open_audit(browsing: Browsing, org: Org) -> None:
    browsing.page.goto(f"/o/{org.slug}/audit")
    browsing.sign_in(org.admin.email)
    assert browsing.page.url == browsing.url(f"/o/{org.slug}/audit")


def test_an_admin_reads_filters_and_verifies_the_audit_log(browsing: Browsing,
                                                           web_org: Org) -> None:
    page = browsing.page
    _open_audit(browsing, web_org)
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    expect(page.get_by_role("link", name="Audit log")).to_have_attribute("aria-current", "page")
    rows = page.locator("table.entries tbody tr")
    expect(rows.filter(has_text="Member added").first).to_be_visible()
    expect(rows.last).to_contain_text("Organization created")

    page.get_by_role("link", name="Verify chain").click()
    verdict = page.locator("#audit-verdict")
    expect(verdict).to_contain_text("Chain verified")
    assert page.url == browsing.url(f"/o/{web_org.slug}/audit")  # in place
    browsing.screenshot("audit-log")

    page.get_by_label("Action").select_option("org.created")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Organization created")
    page.get_by_role("link", name="Clear filters").click()
    expect(rows.filter(has_text="Member added").first).to_be_visible()
    browsing.problems.assert_clean()


def test_the_audit_log_fits_a_phone(phone: Browsing, web_org: Org) -> None:
    _open_audit(phone, web_org)
    expect(phone.page.locator("table.entries tbody tr").first).to_be_visible()
    scroll_width, client_width = phone.page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert scroll_width <= client_width, f"page is {scroll_width}px wide on a phone"
    phone.screenshot("audit-log-phone")
    phone.problems.assert_clean()
