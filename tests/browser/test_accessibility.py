"""The look of the dashboard, checked in a real Chromium for every persona: axe-core finds no
serious or critical accessibility problem on their main pages, in light and dark mode; at
390 px the pages do not scroll sideways (tables stack or scroll inside their own box); the
sidebar lists the sections the persona may open and marks the current one.

axe-core is vendored (tests/browser_support/axe.min.js, MPL-2.0) and injected by the browser
driver before the page's own scripts, so the strict CSP of the pages stays as it is.
Screenshots of each persona's pages, light and dark, desktop and 390 px, go to
test-artifacts/screenshots/look-*.png.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import PHONE, Browsing, open_browsing
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

AXE = Path(__file__).resolve().parents[1] / "browser_support" / "axe.min.js"
AXE_VERSION = "4.14.1"
# WCAG 2.x A and AA plus axe's best practices; "serious" and "critical" fail the test.
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]
BLOCKING = {"serious", "critical"}


@dataclass
class LookOrg:
    org: Org
    waiting_run: str
    finished_run: str
    report_id: str


@pytest.fixture(scope="module")
def look(server: Server, platform_admin: Actor) -> LookOrg:
    """An organization with every role, the demo agent, a session waiting for approval and one
    that finished with a report: each main page has something to show."""
    org = make_org(server, platform_admin, "look",
                   roles=("admin", "builder", "operator", "viewer"), with_keys=False)
    deploy_agent(org)
    finished = start_session(org)["id"]
    wait_for_status(org, finished, {"waiting_approval"})
    approval = pending_approval(org, finished)
    decided = org.members["operator"].client.post(
        f"/api/v1/orgs/{org.slug}/approvals/{approval['id']}/decision",
        json={"decision": "approve", "comment": "Looks right."})
    assert decided.status_code == 200, decided.text
    wait_for_status(org, finished, {"succeeded"})
    waiting = start_session(org)["id"]
    wait_for_status(org, waiting, {"waiting_approval"})
    reports = org.members["viewer"].client.get(f"/api/v1/orgs/{org.slug}/reports")
    assert reports.status_code == 200 and reports.json(), reports.text
    return LookOrg(org=org, waiting_run=waiting, finished_run=finished,
                   report_id=reports.json()[0]["id"])


def _pages(persona: str, look: LookOrg) -> list[str]:
    """The main pages of each persona, the first being where they land."""
    base = f"/o/{look.org.slug}"
    return {
        "platform_admin": ["/admin/tenants", "/admin/workers", "/admin/mcp-catalog",
                           "/admin/users", "/admin/outbox"],
        "admin": [base, f"{base}/members", f"{base}/settings", f"{base}/settings/credentials",
                  f"{base}/settings/llm", f"{base}/settings/mcp", f"{base}/settings/skills",
                  f"{base}/settings/api-keys", f"{base}/settings/sso",
                  f"{base}/settings/exports", f"{base}/audit", f"{base}/usage"],
        "builder": [f"{base}/agents", f"{base}/agents/hourly-tracking"],
        "operator": [f"{base}/sessions", f"{base}/sessions/new?agent=hourly-tracking",
                     f"{base}/sessions/{look.waiting_run}", f"{base}/approvals",
                     f"{base}/reports", f"{base}/reports/{look.report_id}"],
        "viewer": [base, f"{base}/sessions", f"{base}/sessions/{look.finished_run}",
                   f"{base}/reports"],
    }[persona]


def _sections(persona: str) -> list[str]:
    """The sidebar's organization sections each persona sees (by scope), in order."""
    reader = ["Overview", "Sessions", "Agents", "Approvals", "Reports", "Members"]
    return {"admin": ["Overview", "Sessions", "Agents", "Approvals", "Reports", "Usage",
                      "Audit log", "Members", "Settings"],
            "builder": [*reader, "Settings"], "operator": reader, "viewer": reader}[persona]


def _email(persona: str, look: LookOrg, platform_admin: Actor) -> str:
    return platform_admin.email if persona == "platform_admin" else \
        look.org.members[persona].email


def _axe(browsing: Browsing) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the current page."""
    result: dict[str, Any] = browsing.page.evaluate(
        """async (tags) => {
            const result = await axe.run(document, {runOnly: {type: 'tag', values: tags},
                                                    resultTypes: ['violations']});
            return {version: axe.version, violations: result.violations.map(v => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map(n => n.target.join(' ') + ' :: ' + n.failureSummary)}))};
        }""", AXE_TAGS)
    assert result["version"] == AXE_VERSION
    return [v for v in result["violations"] if v["impact"] in BLOCKING]


def _assert_no_horizontal_scroll(browsing: Browsing) -> None:
    scroll_width, client_width = browsing.page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    if scroll_width > client_width:
        # What sticks out, leaving out what scrolls inside a box of its own (the sections).
        wide = browsing.page.evaluate("""(width) => [...document.querySelectorAll('body *')]
            .filter(el => el.getBoundingClientRect().right > width)
            .filter(el => !el.parentElement.closest('nav.sections ul, table'))
            .map(el => el.tagName.toLowerCase() + '.' + el.getAttribute('class') + ' ' +
                       Math.round(el.getBoundingClientRect().right))""", client_width)
        raise AssertionError(f"{browsing.page.url} is {scroll_width}px wide on "
                             f"{client_width}px: {wide[:8]}")


def _shot_name(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", re.sub(r"/o/look-[0-9a-f]+", "/org",
                                             re.sub(r"[0-9a-f-]{36}", "id", path))).strip("-")


@pytest.fixture
def open_look(browser: Browser, server: Server) -> Iterator[Any]:
    """Open browsing contexts (desktop or phone, light or dark) with axe-core injected."""
    opened: list[Browsing] = []

    def open_one(*, phone: bool, dark: bool) -> Browsing:
        options: dict[str, Any] = dict(PHONE) if phone else {
            "viewport": {"width": 1280, "height": 860}}
        options["color_scheme"] = "dark" if dark else "light"
        session = open_browsing(browser, server, **options)
        session.context.add_init_script(path=str(AXE))
        opened.append(session)
        return session

    yield open_one
    for session in opened:
        session.context.close()


PERSONAS = ["platform_admin", "admin", "builder", "operator", "viewer"]


@pytest.mark.parametrize("persona", PERSONAS)
def test_main_pages_have_no_serious_accessibility_violations_light_and_dark(
        open_look: Any, look: LookOrg, platform_admin: Actor, persona: str) -> None:
    pages = _pages(persona, look)
    found: dict[str, list[dict[str, Any]]] = {}
    for dark in (False, True):
        browsing: Browsing = open_look(phone=False, dark=dark)
        page = browsing.page
        page.goto(pages[0])
        browsing.sign_in(_email(persona, look, platform_admin))
        for path in pages:
            page.goto(path)
            expect(page.locator("main h1").first).to_be_visible()
            if dark:
                assert page.evaluate(
                    "() => getComputedStyle(document.body).backgroundColor") == "rgb(15, 17, 23)"
            violations = _axe(browsing)
            if violations:
                found[f"{path} ({'dark' if dark else 'light'})"] = violations
            browsing.screenshot(f"look-{persona}-{_shot_name(path)}-{'dark' if dark else 'light'}")
        browsing.problems.assert_clean()
    assert found == {}, "\n".join(f"{where}: {violations}" for where, violations in found.items())


@pytest.mark.parametrize("persona", PERSONAS)
def test_main_pages_fit_390_px_light_and_dark(open_look: Any, look: LookOrg,
                                              platform_admin: Actor, persona: str) -> None:
    pages = _pages(persona, look)
    for dark in (False, True):
        browsing: Browsing = open_look(phone=True, dark=dark)
        page = browsing.page
        page.goto(pages[0])
        browsing.sign_in(_email(persona, look, platform_admin))
        for path in pages:
            page.goto(path)
            expect(page.locator("main h1").first).to_be_visible()
            _assert_no_horizontal_scroll(browsing)
            expect(page.get_by_role("button", name="Sign out")).to_be_in_viewport()
            if not dark or path == pages[0]:
                browsing.screenshot(
                    f"look-{persona}-{_shot_name(path)}-phone-{'dark' if dark else 'light'}")
        browsing.problems.assert_clean()


@pytest.mark.parametrize("persona", ["admin", "builder", "operator", "viewer"])
def test_sidebar_lists_the_sections_the_persona_may_open(
        browsing: Browsing, look: LookOrg, persona: str) -> None:
    page = browsing.page
    page.goto(f"/o/{look.org.slug}/sessions")
    browsing.sign_in(look.org.members[persona].email)
    sections = page.get_by_role("navigation", name=f"Sections of {look.org.slug}")
    links = sections.get_by_role("link")
    expect(links).to_have_count(len(_sections(persona)))
    names = [re.sub(r"\s*\d+$", "", name.strip()) for name in links.all_inner_texts()]
    assert names == _sections(persona)
    current = sections.locator('[aria-current="page"]')
    expect(current).to_have_count(1)
    expect(current).to_have_text("Sessions")
    # Each section link carries an icon from the vendored sprite, hidden from screen readers.
    icons = sections.locator("svg.icon use")
    expect(icons).to_have_count(len(_sections(persona)))
    assert set(icons.evaluate_all("uses => uses.map(u => u.getAttribute('href').split('#')[0])")
               ) == {"/static/vendor/lucide-sprite.svg"}
    expect(sections.locator("svg.icon").first).to_have_attribute("aria-hidden", "true")
    sections.get_by_role("link", name="Overview").click()
    expect(page).to_have_url(browsing.url(f"/o/{look.org.slug}"))
    expect(sections.locator('[aria-current="page"]')).to_have_text("Overview")
    browsing.problems.assert_clean()


def test_axe_reports_what_it_should_the_control(open_look: Any) -> None:
    """The control for the tests above: on a page given a nameless button and an image
    without alternative text, the same axe run reports both as blocking."""
    browsing: Browsing = open_look(phone=False, dark=False)
    browsing.page.goto("/login")
    assert _axe(browsing) == []
    browsing.page.evaluate("""() => {
        document.querySelector('main').append(document.createElement('button'),
                                              document.createElement('img'));
    }""")
    assert {v["id"] for v in _axe(browsing)} >= {"button-name", "image-alt"}
