"""The Skills settings pages in a real Chromium.

The admin pastes a SKILL.md, sees a mistake in the front matter reported with its line, fixes
it, edits the skill and sees it listed; a builder sees the same skill read-only (no forms, the
SKILL.md shown as text). All under the strict CSP, without console errors, and on a phone
without horizontal scrolling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Browsing
from tests.factories import Actor, Org, Server, make_org

pytestmark = pytest.mark.browser

FIRST = """---
name: house-style
description: How we write reports.
---

# House style

Short sentences. No jargon.
"""
BROKEN = FIRST.replace("description: How we write reports.", "description How we write")


@pytest.fixture(scope="module")
def team(server: Server, platform_admin: Actor) -> Iterator[Org]:
    """An organization with an admin and a builder (made on a worker thread: see
    ``platform_admin`` in tests/browser/conftest.py)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(make_org, server, platform_admin, "skl",
                          roles=("admin", "builder"), with_keys=False).result()


def _failed_load(browsing: Browsing, status: str, path: str) -> Callable[[str], bool]:
    """Chromium logs a 4xx document as a failed resource; that one is expected."""
    def allowed(text: str) -> bool:
        return text.startswith(f"Failed to load resource: the server responded with a status "
                               f"of {status}") and browsing.url(path) in text
    return allowed


def _no_horizontal_scroll(page: Page) -> None:
    scroll_width, client_width = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert scroll_width <= client_width, f"{page.url} is {scroll_width}px wide"


def test_admin_creates_and_edits_a_skill_and_a_builder_reads_it(
        browsing: Browsing, team: Org) -> None:
    page = browsing.page
    skills = f"/o/{team.slug}/settings/skills"
    page.goto(f"/o/{team.slug}/settings")
    browsing.sign_in(team.admin.email)
    page.get_by_role("link", name="Skills", exact=True).click()
    assert page.url == browsing.url(skills)
    expect(page.get_by_text("No skills yet.")).to_be_visible()

    # A broken front matter: the form comes back with the message and the text as typed.
    editor = page.get_by_label("SKILL.md")
    editor.fill(BROKEN)
    page.get_by_role("button", name="Add skill").click()
    expect(page.get_by_role("alert")).to_contain_text("line 3: expected 'key: value'")
    expect(page.get_by_label("SKILL.md")).to_have_value(BROKEN.strip())
    expect(page.get_by_label("SKILL.md")).to_have_attribute("aria-invalid", "true")

    # Fixed and added: the browser lands on the skill's page.
    page.get_by_label("SKILL.md").fill(FIRST)
    page.get_by_role("button", name="Add skill").click()
    expect(page.get_by_role("status")).to_have_text("Skill created.")
    expect(page.get_by_role("heading", level=1)).to_have_text("house-style")
    expect(page.get_by_text("How we write reports.", exact=True)).to_be_visible()
    skill_url = page.url.split("?")[0]

    # Edited: new description and instructions.
    edited = FIRST.replace("How we write reports.", "How we write every report.") \
        .replace("No jargon.", "No jargon. Cite sources.")
    page.get_by_label("SKILL.md").fill(edited)
    page.get_by_role("button", name="Save skill").click()
    expect(page.get_by_role("status")).to_have_text("Skill saved.")
    expect(page.get_by_label("SKILL.md")).to_have_value(edited)
    browsing.screenshot("skill-edit")

    page.get_by_role("link", name="Skills", exact=True).click()
    table = page.get_by_role("table")
    expect(table.get_by_role("link", name="house-style")).to_be_visible()
    expect(table).to_contain_text("How we write every report.")
    browsing.screenshot("skills-list")
    browsing.problems.assert_clean(allowed_console=_failed_load(browsing, "422", skills))

    # The builder: the same list and skill, read-only.
    browsing.context.clear_cookies()
    page.goto(skills)
    browsing.sign_in(team.members["builder"].email)
    assert page.url == browsing.url(skills)
    expect(page.get_by_role("table").get_by_role("link", name="house-style")).to_be_visible()
    expect(page.get_by_role("button", name="Add skill")).to_have_count(0)
    expect(page.locator("textarea")).to_have_count(0)
    page.get_by_role("link", name="house-style").click()
    assert page.url == skill_url
    shown = page.get_by_label("SKILL.md of house-style")
    expect(shown).to_contain_text("Cite sources.")
    expect(page.get_by_role("button", name="Save skill")).to_have_count(0)
    expect(page.get_by_text("Delete house-style")).to_have_count(0)
    browsing.problems.assert_clean(allowed_console=_failed_load(browsing, "422", skills))


def test_skills_pages_fit_a_phone(phone: Browsing, team: Org) -> None:
    page = phone.page
    page.goto(f"/o/{team.slug}/settings/skills")
    phone.sign_in(team.admin.email)
    _no_horizontal_scroll(page)
    page.get_by_label("SKILL.md").fill(FIRST.replace("house-style", "phone-style"))
    page.get_by_role("button", name="Add skill").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("phone-style")
    _no_horizontal_scroll(page)
    phone.problems.assert_clean()
