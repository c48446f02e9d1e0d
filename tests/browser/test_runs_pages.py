"""Issue 17, items 5 to 8, in a real Chromium: the sessions list (filters, id search, agents by
name, "Start a session" from the agents list), the start form (human labels, a file picker
that reads a CSV into the field, messages next to the field), the audit log in words, and one
source of truth for a session's status and the Approvals badge: the event stream.

The navigation badge's own 30-second poll is answered "204 No Content" in the live tests, so
the badge can only change through what the page's refreshed parts carry: a test that passes
here does not lean on the poll. Screenshots go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser.conftest import Browsing
from tests.factories import TIMESHEET, Actor, Org, Server, deploy_agent, make_org

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def runs_org(server: Server, platform_admin: Actor) -> Org:
    org = make_org(server, platform_admin, "runs", roles=("admin", "builder", "operator"),
                   with_keys=False)
    deploy_agent(org)
    return org


def _start(org: Org, role: str = "operator") -> str:
    started = org.members[role].client.post(f"/api/v1/orgs/{org.slug}/sessions",
                                            json={"agent": "hourly-tracking",
                                                  "inputs": {"timesheet": TIMESHEET}})
    assert started.status_code == 201, started.text
    return str(started.json()["id"])


def _pending(org: Org) -> int:
    inbox = org.admin.client.get(f"/api/v1/orgs/{org.slug}/approvals",
                                 params={"status": "pending"})
    return len(inbox.json())


def _no_badge_poll(browsing: Browsing) -> None:
    def answer_nothing(route: Route) -> None:
        route.fulfill(status=204, body="")

    browsing.context.route(re.compile(r".*/approvals/badge$"), answer_nothing)


def _sign_in(browsing: Browsing, path: str, email: str) -> Page:
    browsing.page.goto(path)
    browsing.sign_in(email)
    assert browsing.page.url == browsing.url(path)
    return browsing.page


def _badge(page: Page):  # type: ignore[no-untyped-def]
    return page.locator(".nav-count .badge")


def test_start_from_the_agents_list_with_a_csv_file(browsing: Browsing, runs_org: Org,
                                                    tmp_path: Path) -> None:
    page = _sign_in(browsing, f"/o/{runs_org.slug}/agents", runs_org.members["operator"].email)
    expect(page.get_by_role("link", name="Sessions of Hourly tracking")).to_be_visible()
    browsing.screenshot("agents-list-start")
    page.get_by_role("link", name="Start a session of Hourly tracking").click()
    expect(page.get_by_role("heading", name="Start Hourly tracking")).to_be_visible()

    # A label in words, no type jargon; the field's help; the file picker (shown by runs.js).
    label = page.locator('label[for="input-timesheet"]')
    expect(label).to_have_text(re.compile(r"^Timesheet\s+required$"))
    field = page.get_by_role("textbox", name=re.compile(r"^Timesheet"))
    expect(field).to_have_attribute("aria-required", "true")
    picker = page.get_by_label("Read Timesheet from a file…")
    expect(page.locator(".file-fill")).to_be_visible()
    assert "string" not in label.inner_text()

    # Submitting it empty: the message is next to the field.
    page.get_by_role("button", name="Start session").click()
    expect(page.locator("#input-timesheet-error")).to_have_text("required: fill it in")
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#input-timesheet + .file-fill ~ #input-timesheet-error")).to_have_count(1)

    # A file that is not text is refused where the field is; a CSV file fills the field.
    binary = tmp_path / "photo.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    picker.set_input_files(str(binary))
    status = page.locator("#input-timesheet-file-status")
    expect(status).to_contain_text("photo.csv is not a text file in UTF-8")
    expect(field).to_have_value("")
    csv = tmp_path / "timesheet.csv"
    csv.write_text(TIMESHEET.replace("\n", "\r\n"), encoding="utf-8")
    picker.set_input_files(str(csv))
    expect(status).to_have_text("Read timesheet.csv (6 lines) into the field.")
    expect(field).to_have_value(TIMESHEET)
    browsing.screenshot("start-form-file-read")

    page.get_by_role("button", name="Start session").click()
    expect(page).to_have_url(re.compile(r"/sessions/[0-9a-f-]{36}$"))
    expect(page.get_by_role("heading", name=re.compile(r"^Hourly tracking [0-9a-f]{8}$"))
           ).to_be_visible()
    expect(page.locator(".approval .markdown table")).to_contain_text("Borealis")
    # Chromium logs the refused form's 422 document as a failed resource; nothing else fails.
    browsing.problems.assert_clean(allowed_console=lambda text: text.startswith(
        "Failed to load resource: the server responded with a status of 422"))


def test_sessions_list_filters_search_and_names(browsing: Browsing, runs_org: Org) -> None:
    mine = _start(runs_org, "operator")
    theirs = _start(runs_org, "admin")
    operator = runs_org.members["operator"]
    page = _sign_in(browsing, f"/o/{runs_org.slug}/sessions", operator.email)
    rows = page.locator("#sessions-table tbody tr")
    row = rows.filter(has=page.locator(f'a[href$="/sessions/{theirs}"]'))
    expect(row.get_by_role("cell").nth(1)).to_contain_text("Hourly tracking")
    expect(row).not_to_contain_text("hourly-tracking")
    expect(row.get_by_role("cell", name=runs_org.admin.email)).to_be_visible()
    browsing.screenshot("sessions-list-named")

    page.get_by_label("Started by").select_option(label=operator.email)
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_label("Started by")).to_have_value(operator.user_id)
    expect(rows.filter(has=page.locator(f'a[href$="/sessions/{theirs}"]'))).to_have_count(0)
    expect(rows.filter(has=page.locator(f'a[href$="/sessions/{mine}"]'))).to_have_count(1)

    page.get_by_role("link", name="Clear filters").click()
    page.get_by_label("Session id").fill(theirs[:8].upper())
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows.first.locator(f'a[href$="/sessions/{theirs}"]')).to_be_visible()
    browsing.screenshot("sessions-list-search")

    page.get_by_label("Session id").fill("not-an-id")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#filter-id-error")).to_contain_text(
        "use a session id or its first characters")
    expect(page.get_by_label("Session id")).to_have_attribute("aria-invalid", "true")
    browsing.problems.assert_clean(allowed_console=lambda text: text.startswith(
        "Failed to load resource: the server responded with a status of 422"))


def test_status_and_badge_follow_the_event_stream(browsing: Browsing, runs_org: Org) -> None:
    _no_badge_poll(browsing)
    page = _sign_in(browsing, f"/o/{runs_org.slug}/sessions",
                    runs_org.members["operator"].email)
    before = _pending(runs_org)
    page.evaluate("() => { window.__sameDocument = true; }")

    # A session that starts waiting elsewhere is counted by the list's live refresh.
    run_id = _start(runs_org)
    row = page.locator("#sessions-table tbody tr").filter(
        has=page.locator(f'a[href$="/sessions/{run_id}"]'))
    expect(row.locator(".badge")).to_have_text("waiting approval")
    expect(_badge(page)).to_have_text(str(before + 1))
    assert page.evaluate("() => window.__sameDocument === true"), "the list was reloaded"

    # Approve on the session page: status, timeline and badge agree, from the stream.
    page.goto(f"/o/{runs_org.slug}/sessions/{run_id}")
    expect(page.locator("#session-status")).to_have_text("waiting approval")
    page.get_by_role("button", name="Approve").click()
    page.wait_for_function(
        "() => document.getElementById('timeline-status').textContent === 'Complete'")
    status_when_complete = page.evaluate(
        "() => document.getElementById('session-status').textContent.trim()")
    assert status_when_complete == "succeeded", status_when_complete
    expect(page.locator("#session-status")).to_have_text("succeeded")
    if before:
        expect(_badge(page)).to_have_text(str(before))
    else:
        expect(_badge(page)).to_have_count(0)
    browsing.screenshot("session-live-consistent")
    browsing.problems.assert_clean()


def _words_unbroken(page: Page, selector: str) -> list[str]:
    """The words of ``selector``'s elements that the browser split across two lines."""
    return page.evaluate("""(selector) => {
        const broken = [];
        for (const el of document.querySelectorAll(selector)) {
            const node = el.firstChild;
            if (!node || node.nodeType !== Node.TEXT_NODE) continue;
            const text = node.textContent;
            const re = /\\S+/g;
            let m;
            while ((m = re.exec(text))) {
                const range = document.createRange();
                range.setStart(node, m.index);
                range.setEnd(node, m.index + m[0].length);
                const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
                if (tops.size > 1) broken.push(m[0]);
            }
        }
        return broken;
    }""", selector)


def test_audit_log_reads_in_words(browsing: Browsing, runs_org: Org) -> None:
    page = _sign_in(browsing, f"/o/{runs_org.slug}/audit", runs_org.admin.email)
    rows = page.locator("table.entries tbody tr")
    added = rows.filter(has=page.get_by_role("link", name="Member added")).first
    expect(added).to_be_visible()
    expect(added.get_by_role("link", name="Member added")).to_have_attribute(
        "title", "member.added")
    expect(added.locator("dl.kv dt").first).to_be_visible()
    # The admin's own sign-in: by email, the id on hover.
    signed_in = rows.filter(has=page.get_by_role("link", name="Signed in")).filter(
        has_text=runs_org.admin.email).first
    expect(signed_in).to_be_visible()
    expect(signed_in.locator("td.actor a")).to_have_attribute(
        "title", f"Member {runs_org.admin.user_id}")
    assert _words_unbroken(page, "a.action-label") == []
    browsing.screenshot("audit-log-words")

    page.get_by_label("Action").select_option(label="Organization created")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Organization created")
    page.get_by_label("Actor").select_option(label=runs_org.admin.email)
    page.get_by_label("Action").select_option(label="All: Sign-in and passwords")
    page.get_by_role("button", name="Filter").click()
    expect(rows.first).to_contain_text("Signed in")
    expect(rows.filter(has_not_text="Signed in").filter(has_not_text="Sign-in failed")
           ).to_have_count(0)
    browsing.problems.assert_clean()


def test_audit_log_reads_in_words_on_a_phone(phone: Browsing, runs_org: Org) -> None:
    page = _sign_in(phone, f"/o/{runs_org.slug}/audit", runs_org.admin.email)
    expect(page.locator("table.entries tbody tr").first).to_be_visible()
    assert _words_unbroken(page, "a.action-label") == []
    scroll_width, client_width = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    wide = page.evaluate("""(width) => [...document.querySelectorAll('main *')]
        .filter(el => el.getBoundingClientRect().right > width)
        .map(el => el.tagName.toLowerCase() + '.' + el.className)""", client_width)
    assert scroll_width <= client_width, f"page is {scroll_width}px wide on a phone: {wide[:6]}"
    phone.screenshot("audit-log-words-phone")
    phone.problems.assert_clean()
