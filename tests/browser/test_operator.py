"""The operator's whole job in a real Chromium: start a session from the generated form, watch
it reach the approval live (Server-Sent Events, no reload), approve it on the session page,
see it succeed, read the rendered report and download it.

The threat model: a member of another organization pasting the session's address gets exactly
the not-found page a random id gets; every page runs under the strict CSP without errors; the
pages fit a phone.
"""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Browsing
from tests.factories import TIMESHEET, Actor, Org, Server, deploy_agent, make_org

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def acme(server: Server, platform_admin: Actor) -> Org:
    """A demo-like organization: hourly-tracking deployed by its builder, and an operator."""
    org = make_org(server, platform_admin, "acme", roles=("admin", "builder", "operator"),
                   with_keys=False)
    deploy_agent(org)
    return org


@pytest.fixture(scope="module")
def beta(server: Server, platform_admin: Actor) -> Org:
    return make_org(server, platform_admin, "beta", roles=("admin",), with_keys=False)


def _assert_no_horizontal_scroll(browsing: Browsing) -> None:
    scroll_width, client_width = browsing.page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    if scroll_width > client_width:
        wide = browsing.page.evaluate("""(width) => [...document.querySelectorAll('body *')]
            .filter(el => el.getBoundingClientRect().right > width)
            .map(el => el.tagName.toLowerCase() + '.' + el.className + ' ' +
                       Math.round(el.getBoundingClientRect().right))""", client_width)
        raise AssertionError(f"page is {scroll_width}px wide on {client_width}px: {wide[:8]}")


def test_operator_starts_watches_approves_and_reads_the_report(
        browsing: Browsing, acme: Org) -> None:
    page = browsing.page
    operator = acme.members["operator"]
    page.goto(f"/o/{acme.slug}/sessions")
    assert page.url.startswith(browsing.url("/login?next="))
    browsing.sign_in(operator.email)
    assert page.url == browsing.url(f"/o/{acme.slug}/sessions")
    expect(page.get_by_role("heading", name="Sessions", exact=True)).to_be_visible()

    # Start hourly-tracking from the form generated from its declared inputs.
    page.get_by_role("link", name="Start a session").click()
    page.get_by_role("link", name="Hourly tracking").click()
    expect(page.get_by_role("heading", name="Start Hourly tracking")).to_be_visible()
    timesheet = page.get_by_role("textbox", name=re.compile(r"^Timesheet"))
    expect(timesheet).to_have_attribute("aria-required", "true")
    # Submitting it empty comes back with the field's error, from the server.
    page.get_by_role("button", name="Start session").click()
    expect(page.locator("#input-timesheet-error")).to_have_text("required: fill it in")
    expect(timesheet).to_have_attribute("aria-invalid", "true")
    timesheet.fill(TIMESHEET)
    page.get_by_role("button", name="Start session").click()
    expect(page).to_have_url(re.compile(rf"/o/{re.escape(acme.slug)}/sessions/[0-9a-f-]{{36}}$"))
    session_path = page.url.removeprefix(browsing.server.base_url)
    page.evaluate("() => { window.__sameDocument = true; }")

    # The timeline follows the event stream and the page updates itself up to the approval.
    timeline = page.locator("#timeline")
    expect(timeline.locator(".event-kind", has_text="approval requested")).to_have_count(1)
    expect(page.get_by_role("heading", name="Waiting for approval")).to_be_visible()
    expect(page.locator("#session-status")).to_have_text("waiting approval")
    current = page.locator('.graph [aria-current="step"]')
    expect(current).to_have_attribute("data-node", "manager_approval")
    expect(page.locator('.graph [data-node="summarise"]')).to_have_class(
        re.compile(r"node-visited"))
    assert page.evaluate("() => window.__sameDocument === true"), "the page was reloaded"
    seqs = timeline.locator("li").evaluate_all(
        "items => items.map(li => Number(li.dataset.seq))")
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # each event once, in order
    expect(page.locator(".approval .markdown table")).to_contain_text("Alice")
    browsing.screenshot("session-waiting-approval")

    # The nav badge counts the pending approval; the inbox shows it with its form.
    badge = page.get_by_role("navigation", name=f"Sections of {acme.slug}").locator(".badge")
    expect(badge).to_have_text("1")
    page.get_by_role("link", name=re.compile(r"^Approvals")).click()
    expect(page.get_by_role("heading", name="Approvals", exact=True)).to_be_visible()
    pending = page.get_by_role("list", name="Pending approvals").get_by_role("listitem")
    expect(pending).to_have_count(1)
    expect(pending.get_by_role("button", name="Approve")).to_be_visible()
    browsing.screenshot("approvals-inbox")

    # Approve on the session page, with a comment; the session then succeeds live.
    page.goto(session_path)
    page.get_by_label("Comment").fill("Hours look right.")
    page.get_by_role("button", name="Approve").click()
    expect(page).to_have_url(browsing.url(session_path))
    expect(page.locator("#session-status")).to_have_text("succeeded")
    expect(timeline.locator(".event-kind", has_text=re.compile(r"^finished$"))).to_have_count(1)
    expect(timeline).to_contain_text("approve — “Hours look right.”")
    expect(page.locator("#timeline-status")).to_have_text("Complete")
    expect(page.get_by_role("button", name="Replay from the start")).to_be_visible()
    expect(page.locator('.graph [aria-current="step"]')).to_have_count(0)
    expect(page.get_by_role("button", name="Cancel session")).to_have_count(0)
    browsing.screenshot("session-succeeded")

    page.goto(f"/o/{acme.slug}/sessions")
    row = page.locator("tbody tr").filter(has=page.locator(f'a[href="{session_path}"]'))
    expect(row.locator(".badge")).to_have_text("succeeded")
    browsing.screenshot("sessions-list")

    # The report, rendered (its Markdown table is a table), and downloadable.
    page.goto(session_path)
    page.get_by_role("link", name="Hourly tracking report").click()
    expect(page.get_by_role("heading", name="Hourly tracking report").first).to_be_visible()
    table = page.locator(".report-body table")
    expect(table.get_by_role("columnheader", name="Person")).to_be_visible()
    expect(table.get_by_role("row").filter(has_text="Borealis")).to_contain_text("6.5")
    expect(page.locator(".report-body")).to_contain_text("Hours look right.")
    browsing.screenshot("report-view")
    with page.expect_download() as downloading:
        page.get_by_role("link", name="Download").click()
    download = downloading.value
    assert download.suggested_filename == "write_report.md"
    content = download.path().read_text(encoding="utf-8")
    assert "| Alice | Borealis | 6.5 |" in content and "Hours look right." in content
    # Chromium logs the refused form's 422 document as a failed resource; nothing else fails.
    browsing.problems.assert_clean(allowed_console=lambda text: text == (
        "Failed to load resource: the server responded with a status of 422 (Unprocessable "
        f"Entity) ({browsing.url(f'/o/{acme.slug}/sessions/new')})"))


def _a_session(org: Org) -> str:
    """The id of one of the organization's sessions (started through the API if none)."""
    client = org.members["operator"].client
    runs = client.get(f"/api/v1/orgs/{org.slug}/sessions", params={"limit": 1}).json()["items"]
    if runs:
        return str(runs[0]["id"])
    started = client.post(f"/api/v1/orgs/{org.slug}/sessions",
                          json={"agent": "hourly-tracking", "inputs": {"timesheet": TIMESHEET}})
    assert started.status_code == 201, started.text
    return str(started.json()["id"])


def test_another_orgs_member_gets_the_same_not_found_page(
        browsing: Browsing, acme: Org, beta: Org) -> None:
    run_id = _a_session(acme)
    page = browsing.page
    page.goto("/login")
    browsing.sign_in(beta.admin.email)

    seen = {}
    for label, path in (("acme url", f"/o/{acme.slug}/sessions/{run_id}"),
                        ("random id", f"/o/{acme.slug}/sessions/{uuid.uuid4()}"),
                        ("own org, acme id", f"/o/{beta.slug}/sessions/{run_id}"),
                        ("own org, random id", f"/o/{beta.slug}/sessions/{uuid.uuid4()}")):
        response = page.goto(path)
        assert response is not None and response.status == 404, label
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()
        seen[label] = page.locator("main").inner_html()
        assert acme.slug not in page.content().replace(path, "")
    assert len(set(seen.values())) == 1, seen
    browsing.screenshot("session-not-found")
    # Chromium logs each 404 document as a failed resource; nothing else may fail.
    browsing.problems.assert_clean(allowed_console=lambda text: text.startswith(
        "Failed to load resource: the server responded with a status of 404"))


def test_operator_pages_fit_a_phone(phone: Browsing, acme: Org) -> None:
    run_id = _a_session(acme)
    page = phone.page
    page.goto("/login")
    phone.sign_in(acme.members["operator"].email)
    page.goto(f"/o/{acme.slug}/sessions")
    expect(page.get_by_role("heading", name="Sessions", exact=True)).to_be_visible()
    _assert_no_horizontal_scroll(phone)
    with page.expect_navigation():  # until "load": the stylesheets are in
        page.locator(f'tbody a[href="/o/{acme.slug}/sessions/{run_id}"]').click()
    expect(page.get_by_role("heading", name="Checkpoints")).to_be_visible()
    _assert_no_horizontal_scroll(phone)
    phone.screenshot("session-phone")
    page.goto(f"/o/{acme.slug}/sessions/new?agent=hourly-tracking")
    _assert_no_horizontal_scroll(phone)
    page.goto(f"/o/{acme.slug}/approvals")
    _assert_no_horizontal_scroll(phone)
    page.goto(f"/o/{acme.slug}/reports")
    _assert_no_horizontal_scroll(phone)
    phone.screenshot("reports-phone")
    phone.problems.assert_clean()
