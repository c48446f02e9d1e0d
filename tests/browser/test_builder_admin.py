"""The builder's and the org admin's jobs in a real Chromium.

The builder deploys a new version of an agent through the file picker and sees it in the
versions list, then drops a broken package on the drop zone and sees every problem with its
path. The admin invites someone and copies the link, creates an API key that is shown once
and gone after a reload, and tests the LLM connection. All of it under the strict CSP,
without console errors, and on a phone without horizontal scrolling.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from enginex.agents.cli import zip_directory
from tests.browser.conftest import Browsing
from tests.factories import AGENT_FIXTURES, Actor, Org, Server, deploy_agent, make_org

pytestmark = pytest.mark.browser

BROKEN_PATHS = ("agent.version", "required_tools[0]", "graph.nodes[0].output_keys",
                "graph.nodes[0].tools[1]", "graph.nodes[1].id", "graph.nodes[2].colour",
                "graph.nodes[2].template_file", "graph.entry_node", "graph.edges[0].target",
                "graph.edges[1].expr", "graph.edges[2].expr")


@pytest.fixture(scope="module")
def team(server: Server, platform_admin: Actor) -> Iterator[Org]:
    """An organization with an admin and a builder, and hourly-tracking 1.0.0 deployed
    (made on a worker thread: see ``platform_admin`` in tests/browser/conftest.py)."""
    def build() -> Org:
        org = make_org(server, platform_admin, "bld", roles=("admin", "builder"),
                       with_keys=False)
        deploy_agent(org)
        return org

    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(build).result()


def _failed_load(browsing: Browsing, status: str, path: str) -> Callable[[str], bool]:
    """Chromium logs a 4xx document or XHR as a failed resource; that one is expected."""
    def allowed(text: str) -> bool:
        return text.startswith(f"Failed to load resource: the server responded with a status "
                               f"of {status}") and browsing.url(path) in text
    return allowed


def _bumped_package(tmp_path: Path, version: str) -> Path:
    source = tmp_path / "hourly_tracking"
    shutil.copytree(AGENT_FIXTURES / "hourly_tracking", source)
    manifest = json.loads((source / "agent.json").read_text())
    manifest["agent"]["version"] = version
    (source / "agent.json").write_text(json.dumps(manifest, indent=2))
    archive = tmp_path / f"hourly_tracking-{version}.zip"
    archive.write_bytes(zip_directory(source))
    return archive


def _drop_file(page: Page, selector: str, name: str, data: bytes) -> None:
    """Drag a file from the desktop onto ``selector`` (a real DataTransfer drop event)."""
    transfer = page.evaluate_handle(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: 'application/zip'}));
            return transfer;
        }""", [name, base64.b64encode(data).decode()])
    for event in ("dragenter", "dragover", "drop"):
        page.dispatch_event(selector, event, {"dataTransfer": transfer})


def _no_horizontal_scroll(page: Page) -> None:
    scroll_width, client_width = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert scroll_width <= client_width, f"{page.url} is {scroll_width}px wide"


def test_builder_uploads_a_version_and_sees_a_broken_packages_errors(
        browsing: Browsing, team: Org, tmp_path: Path) -> None:
    page = browsing.page
    catalog = f"/o/{team.slug}/agents"
    page.goto(catalog)
    browsing.sign_in(team.members["builder"].email)
    assert page.url == browsing.url(catalog)
    agents = page.get_by_role("list", name="Agents")
    expect(agents.get_by_role("link", name="Hourly tracking", exact=True)).to_be_visible()
    expect(agents).to_contain_text("1.0.0")
    browsing.screenshot("agents-catalog")

    # A new version through the file picker (the drop zone is the picker's label).
    package = _bumped_package(tmp_path, "1.1.0")
    with page.expect_file_chooser() as chooser:
        page.locator("[data-dropzone]").click()
    chooser.value.set_files(package)
    expect(page.locator("[data-dropzone-file]")).to_have_text(f"Selected: {package.name}")
    with page.expect_navigation():
        page.get_by_role("button", name="Upload and deploy").click()
    agent_page = f"/o/{team.slug}/agents/hourly-tracking"
    assert page.url == browsing.url(f"{agent_page}?deployed=1.1.0#versions")
    expect(page.get_by_role("status")).to_have_text("Version 1.1.0 deployed.")
    versions = page.locator("#versions tbody tr")
    expect(versions).to_have_count(2)
    expect(versions.nth(0)).to_contain_text("1.1.0")
    expect(versions.nth(0)).to_contain_text("latest")
    expect(versions.nth(0)).to_contain_text(team.members["builder"].email)
    expect(versions.nth(1)).to_contain_text("1.0.0")

    # The diff between the two, preselected as "previous -> newest".
    expect(page.get_by_label("From")).to_have_value("1.0.0")
    expect(page.get_by_label("To")).to_have_value("1.1.0")
    with page.expect_navigation():
        page.get_by_role("button", name="Compare").click()
    changes = page.get_by_role("region", name="Changes from 1.0.0 to 1.1.0")
    expect(changes).to_contain_text("agent.version")
    expect(changes).to_contain_text("content_hash")
    browsing.screenshot("agent-page")

    # The broken package, dropped on the zone: every problem, each with its path.
    page.goto(catalog)
    broken = zip_directory(AGENT_FIXTURES / "broken")
    _drop_file(page, "[data-dropzone]", "broken.zip", broken)
    expect(page.locator("[data-dropzone-file]")).to_have_text("Selected: broken.zip")
    with page.expect_navigation() as refused:
        page.get_by_role("button", name="Upload and deploy").click()
    assert refused.value is not None and refused.value.status == 422
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("broken.zip is not a valid agent package (11 problems)")
    problems = page.get_by_role("list", name="Problems in broken.zip").get_by_role("listitem")
    expect(problems).to_have_count(len(BROKEN_PATHS))
    for path in BROKEN_PATHS:
        expect(problems.filter(has=page.locator("code.path", has_text=path))).not_to_have_count(0)
    expect(problems.filter(has_text="graph.nodes[0].tools[1]")).to_contain_text(
        "unknown tool 'x'")
    expect(page.get_by_role("list", name="Agents")).not_to_contain_text("Broken")
    browsing.screenshot("agents-upload-errors")
    browsing.problems.assert_clean(allowed_console=_failed_load(browsing, "422", catalog))


def test_admin_invites_and_creates_an_api_key_shown_once(browsing: Browsing,
                                                         team: Org) -> None:
    page = browsing.page
    browsing.context.grant_permissions(["clipboard-read", "clipboard-write"],
                                       origin=browsing.server.base_url)
    members = f"/o/{team.slug}/members"
    page.goto(members)
    browsing.sign_in(team.admin.email)
    table = page.locator("#members table")
    expect(table).to_contain_text(team.members["builder"].email)
    expect(table).to_contain_text(team.admin.email)

    # An error from the server replaces the form's section (htmx swaps the 409 too).
    page.get_by_label("Email").fill(team.members["builder"].email)
    page.get_by_role("button", name="Invite").click()
    expect(page.locator("#email-error")).to_have_text(
        f"{team.members['builder'].email} is already a member of this organization.")
    expect(page.get_by_label("Email")).to_have_attribute("aria-invalid", "true")

    invitee = f"new-operator-{team.slug}@example.org"
    page.get_by_label("Email").fill(invitee)
    page.get_by_label("Role", exact=True).select_option("operator")
    page.get_by_role("button", name="Invite").click()
    link = page.get_by_label("Invitation link")
    expect(link).to_be_visible()
    expect(page.locator("#email-error")).to_have_count(0)
    value = link.input_value()
    assert value.startswith(f"{browsing.server.settings.base_url}/invitations/accept#inv_")
    assert page.url == browsing.url(members)  # htmx: the address stays the GET page
    page.locator('[data-copy="#invitation-link"]').click()
    expect(page.locator('[data-copy="#invitation-link"]')).to_have_text("Copied")
    assert page.evaluate("() => navigator.clipboard.readText()") == value
    invitations = page.locator("#invitations table")
    expect(invitations.get_by_role("row", name=invitee)).to_contain_text("pending")
    # Screenshots leave style="" on inputs, which a later htmx swap would copy (and the CSP
    # refuse): take them after the page's last swap.
    browsing.screenshot("members")

    keys = f"/o/{team.slug}/settings/api-keys"
    page.goto(keys)
    page.get_by_label("Name").fill("deploy bot")
    page.get_by_label("Role", exact=True).select_option("builder")
    page.get_by_label("Expires after").select_option("30")
    page.get_by_role("button", name="Create key").click()
    token_field = page.get_by_label("API key", exact=True)
    expect(token_field).to_be_visible()
    token = token_field.input_value()
    assert token.startswith("enx_") and len(token) > 40
    expect(page.get_by_role("row", name="deploy bot")).to_contain_text(f"enx_…{token[-4:]}")
    browsing.screenshot("api-keys")
    page.reload()
    expect(page.get_by_role("row", name="deploy bot")).to_contain_text(f"enx_…{token[-4:]}")
    expect(page.get_by_label("API key", exact=True)).to_have_count(0)
    assert token not in page.content()

    page.goto(f"/o/{team.slug}/settings/llm")
    expect(page.get_by_text("No key is set.")).to_be_visible()
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator("#llm-test-result")).to_contain_text("Connected.")
    browsing.screenshot("llm-settings")
    browsing.problems.assert_clean(allowed_console=_failed_load(browsing, "409",
                                                                f"/o/{team.slug}/invitations"))


def test_builder_and_admin_pages_fit_a_phone(phone: Browsing, team: Org) -> None:
    page = phone.page
    page.goto(f"/o/{team.slug}/agents")
    phone.sign_in(team.admin.email)
    for path in ("/agents", "/agents/hourly-tracking", "/members", "/settings",
                 "/settings/api-keys", "/settings/llm"):
        page.goto(f"/o/{team.slug}{path}")
        expect(page.locator("h1")).to_be_visible()
        _no_horizontal_scroll(page)
        if path == "/members":
            phone.screenshot("members-phone")
    phone.problems.assert_clean()
