"""Usage pages in a real Chromium, under the strict CSP and without console errors: the org
admin's usage page draws its daily chart (vendored uPlot, loaded as files), and the platform
admin defines a plan, gives a tenant that plan with an override, and reads usage across
tenants. Threat model: the pages must work without any inline script or style, refuse bad
limits with a message that says what to fix, and show tenants' numbers only."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from playwright.sync_api import expect

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


def _document_status(*codes: int) -> Any:
    """Chromium reports a 4xx document as a failed resource on the console; those are the
    answers under test here, anything else is a problem."""
    def allowed(text: str) -> bool:
        return any(f"the server responded with a status of {code} " in text for code in codes)
    return allowed


@pytest.fixture(scope="module")
def used_org(server: Server, platform_admin: Actor) -> Org:
    """An organization that ran one session (steps in the ledger), made on a worker thread
    (the factories call asyncio.run; Playwright's loop runs on the test thread)."""
    def make() -> Org:
        org = make_org(server, platform_admin, "usg", roles=("admin", "builder", "operator",
                                                            "viewer"), with_keys=False)
        deploy_agent(org)
        run = start_session(org)
        # Three steps, then the agent's approval gate: enough usage for the chart.
        done = wait_for_status(org, run["id"], {"waiting_approval", "succeeded", "failed"})
        assert done["status"] == "waiting_approval", done
        return org

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(make).result()


def test_the_org_usage_page_draws_its_chart_under_the_csp(browsing: Browsing,
                                                          used_org: Org) -> None:
    page = browsing.page
    page.goto(f"/o/{used_org.slug}/usage")
    browsing.sign_in(used_org.admin.email)
    expect(page.get_by_role("heading", name="Usage this month")).to_be_visible()
    chart = page.locator("#usage-chart")
    expect(chart.locator("canvas")).to_have_count(1)  # uPlot drew the steps
    expect(chart).to_contain_text("step")  # its legend
    expect(page.get_by_role("link", name="Export (CSV)")).to_have_attribute(
        "href", f"/api/v1/orgs/{used_org.slug}/usage/export.csv")
    browsing.problems.assert_clean()


def test_the_platform_admin_defines_a_plan_assigns_it_and_reads_usage_across_tenants(
        browsing: Browsing, platform_admin: Actor, used_org: Org) -> None:
    page = browsing.page
    page.goto("/admin/plans")
    browsing.sign_in(platform_admin.email)
    expect(page.get_by_role("heading", name="Plans", exact=True)).to_be_visible()
    expect(page.locator('[data-plan="enterprise"]')).to_contain_text("default")

    new = page.get_by_role("form", name="New plan")
    new.locator("#new-key").fill("browser-gold")
    new.locator("#new-name").fill("Gold")
    new.locator("#new-weight").fill("3")
    new.locator("#new-concurrent_sessions").fill("-1")
    new.get_by_role("button", name="Create or replace plan").click()
    expect(page.get_by_role("alert")).to_contain_text("concurrent_sessions")
    expect(page.get_by_role("alert")).to_contain_text("whole number")
    new = page.get_by_role("form", name="New plan")
    expect(new.locator("#new-key")).to_have_value("browser-gold")  # the form is kept
    new.locator("#new-concurrent_sessions").fill("7")
    new.get_by_role("button", name="Create or replace plan").click()
    expect(page.get_by_role("status")).to_contain_text("Plan saved")
    gold = page.locator('[data-plan="browser-gold"]')
    expect(gold).to_contain_text("concurrent_sessions: 7")
    expect(gold).to_contain_text("tokens_per_month: unlimited")

    page.goto(f"/admin/tenants/{used_org.id}/plan")
    form = page.get_by_role("form", name=f"Change the plan of {used_org.slug}")
    form.get_by_label("Plan").select_option("browser-gold")
    form.get_by_label("Overrides").fill("tokens_per_month=5000")
    form.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("plan was saved")
    limits = page.get_by_role("table", name="Effective limits")
    expect(limits.locator('[data-limit="tokens_per_month"]')).to_contain_text("5000")
    expect(limits.locator('[data-limit="tokens_per_month"]')).to_contain_text("override")
    expect(limits.locator('[data-limit="concurrent_sessions"]')).to_contain_text("7")
    shown = platform_admin.client.get(f"/api/v1/admin/tenants/{used_org.id}/plan").json()
    assert shown["plan"] == "browser-gold" and shown["limits"]["tokens_per_month"] == 5000

    page.goto("/admin/usage?sort=steps")
    row = page.locator(f'[data-tenant="{used_org.slug}"]')
    expect(row).to_contain_text("browser-gold")
    expect(page.get_by_role("link", name="Export (CSV)")).to_have_attribute(
        "href", "/api/v1/admin/usage/export.csv?sort=steps")
    browsing.problems.assert_clean(allowed_console=_document_status(422))


def test_the_admin_usage_pages_refuse_an_org_admin(browsing: Browsing,
                                                   used_org: Org) -> None:
    page = browsing.page
    page.goto("/admin/plans")
    browsing.sign_in(used_org.admin.email)
    for path in ("/admin/plans", "/admin/usage", f"/admin/tenants/{used_org.id}/plan"):
        answer = page.goto(path)
        assert answer is not None and answer.status == 403, path
    browsing.problems.assert_clean(allowed_console=_document_status(403))
