"""The organization's home and the session trace in a real Chromium (issue 17, items 3 and 4):
the charts are drawn by uPlot under the strict CSP, the lists lead to the sessions, a failed
session says why on top, a trace step opens to its calls with their inputs and outputs, the
graph's conditions read in words with the expression on hover, and both pages fit a phone.
Screenshots: test-artifacts/screenshots/org-overview*, session-trace*.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Browsing
from tests.browser.test_operator import _assert_no_horizontal_scroll
from tests.factories import (
    Actor,
    Org,
    Server,
    deploy_agent,
    make_org,
    pending_approval,
    start_session,
    wait_for_status,
)

pytestmark = pytest.mark.browser


def _busy(server: Server, platform_admin: Actor) -> tuple[Org, dict[str, str]]:
    org = make_org(server, platform_admin, "home",
                   roles=("admin", "builder", "operator", "viewer"), with_keys=False)
    deploy_agent(org)
    ok = start_session(org)["id"]
    bad = start_session(org, {"timesheet": "hello, this is not a timesheet"})["id"]
    waiting = start_session(org)["id"]
    wait_for_status(org, ok, {"waiting_approval"})
    approval = pending_approval(org, ok)
    decided = org.members["operator"].client.post(
        f"/api/v1/orgs/{org.slug}/approvals/{approval['id']}/decision",
        json={"decision": "approve", "comment": "Hours look right."})
    assert decided.status_code == 200, decided.text
    for run_id, status in ((ok, "succeeded"), (bad, "failed"), (waiting, "waiting_approval")):
        wait_for_status(org, run_id, {status})
    return org, {"ok": ok, "bad": bad, "waiting": waiting}


@pytest.fixture(scope="module")
def home(server: Server, platform_admin: Actor) -> tuple[Org, dict[str, str]]:
    """An organization with a succeeded, a failed and a waiting session (made on a worker
    thread: the factories call asyncio.run, which Playwright's running loop forbids)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_busy, server, platform_admin).result()


def test_the_org_home_draws_its_charts_and_lists_what_needs_attention(
        browsing: Browsing, home: tuple[Org, dict[str, str]]) -> None:
    org, runs = home
    page = browsing.page
    page.goto("/login")
    browsing.sign_in(org.admin.email)
    page.goto(f"/o/{org.slug}")
    expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
    for chart in ("#sessions-chart", "#usage-chart"):
        expect(page.locator(chart)).to_have_attribute("data-drawn", "true")
        expect(page.locator(f"{chart} canvas")).to_have_count(1)
    expect(page.locator("#sessions-chart .u-legend")).to_contain_text("failed")
    pending = page.get_by_role("list", name="Pending approvals, oldest first")
    expect(pending.get_by_role("listitem")).to_have_count(1)
    expect(pending).to_contain_text("Approve the hours for this period?")
    failures = page.get_by_role("list", name="Recent failures, newest first")
    expect(failures.get_by_role("listitem")).to_have_count(1)
    expect(failures.locator(".ov-reason")).not_to_be_empty()
    expect(page.locator(".ov-agents tbody tr")).to_have_count(1)
    expect(page.locator(".ov-agents tbody")).to_contain_text("Hourly tracking")
    # The figures behind the chart, as a table, for anyone who cannot see the canvas.
    page.locator("#sessions-chart-title ~ details summary").click()
    expect(page.locator("#sessions-chart-title ~ details table tbody tr")).to_have_count(1)
    browsing.screenshot("org-overview")

    # The failure leads to the session: why it failed is on top, its step opened in the trace.
    failures.get_by_role("link").click()
    expect(page).to_have_url(browsing.url(f"/o/{org.slug}/sessions/{runs['bad']}"))
    summary = page.get_by_role("region", name="Why this session failed")
    expect(summary).to_be_visible()
    expect(summary).to_contain_text("Add up the hours")
    failed_step = page.locator("#trace-step-1")
    expect(failed_step).to_have_class("trace-step outcome-failure")
    expect(failed_step.locator("details").first).to_have_attribute("open", "")
    expect(failed_step.locator(".trace-call-head")).to_contain_text("tabulate_csv")
    browsing.screenshot("session-trace-failed")
    browsing.problems.assert_clean()


def test_a_trace_step_opens_to_its_calls_and_the_graph_reads_in_words(
        browsing: Browsing, home: tuple[Org, dict[str, str]]) -> None:
    org, runs = home
    page = browsing.page
    page.goto("/login")
    browsing.sign_in(org.members["operator"].email)
    page.goto(f"/o/{org.slug}/sessions/{runs['ok']}")
    steps = page.get_by_role("list", name="Steps of this session, in order")
    expect(steps.locator(":scope > li")).to_have_count(5)
    expect(page.get_by_role("region", name="Why this session failed")).to_have_count(0)
    summarise = page.locator("#trace-step-2")
    expect(summarise.locator(".trace-tokens")).to_contain_text("tok")
    summarise.locator("summary").first.click()
    expect(summarise.locator(".trace-call.call-model").first).to_be_visible()
    # The model's set_output call, nested under the step, opens to what it was given.
    output = summarise.locator(".trace-call.call-output").first
    output.get_by_text("Input").click()
    expect(output.locator("pre").first).to_be_visible()
    expect(output.locator("pre").first).to_contain_text('"key": "summary"')
    expect(page.locator("#trace-step-4")).to_contain_text("Hours look right.")
    # A live refresh of the page's changing part keeps what the reader opened open.
    page.evaluate("""() => {
        document.getElementById('session-live').dataset.before = 'refresh';
        document.body.dispatchEvent(new CustomEvent('enx-session-changed'));
    }""")
    expect(page.locator("#session-live[data-before]")).to_have_count(0)
    expect(page.locator("#trace-2")).to_have_attribute("open", "")
    expect(page.locator("#trace-2 .trace-call.call-output pre").first).to_be_visible()
    # The operator may not read usage: no cost figures, tokens and durations only.
    expect(page.locator(".trace-cost")).to_have_count(0)

    approved = page.locator('.graph [data-node="manager_approval"] .edge-label').first
    expect(approved).to_have_text("if approved")
    expect(approved).to_have_attribute("title", "Condition: approval.decision == 'approve'")
    approved.hover()
    browsing.screenshot("session-trace")
    browsing.problems.assert_clean()


def test_the_home_and_the_trace_fit_a_phone(
        phone: Browsing, home: tuple[Org, dict[str, str]]) -> None:
    org, runs = home
    page = phone.page
    page.goto("/login")
    phone.sign_in(org.admin.email)
    page.goto(f"/o/{org.slug}")
    expect(page.locator("#usage-chart")).to_have_attribute("data-drawn", "true")
    _assert_no_horizontal_scroll(phone)
    phone.screenshot("org-overview-phone")
    page.goto(f"/o/{org.slug}/sessions/{runs['ok']}")
    page.locator("#trace-step-2 summary").first.click()
    expect(page.locator("#trace-step-2 .trace-call").first).to_be_visible()
    _assert_no_horizontal_scroll(phone)
    phone.screenshot("session-trace-phone")
    phone.problems.assert_clean()
