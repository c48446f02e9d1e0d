"""The org admin's MCP servers page in a real Chromium: add the test MCP server (Streamable
HTTP on 127.0.0.1), refresh its tools, see them, disable one -- under the strict CSP and
without console errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Browsing
from tests.factories import Org, Server
from tests.mcp_servers import serve_http_mcp

pytestmark = pytest.mark.browser


@pytest.fixture
def mcp_url(server: Server) -> Iterator[str]:
    """The test MCP server, with the deployment allowed to reach 127.0.0.1 meanwhile."""
    settings = server.app.state.settings
    before = settings.allow_private_network
    settings.allow_private_network = True
    try:
        with serve_http_mcp() as url:
            yield url
    finally:
        settings.allow_private_network = before


def test_admin_adds_a_server_refreshes_it_and_disables_a_tool(
        browsing: Browsing, web_org: Org, mcp_url: str) -> None:
    page = browsing.page
    page.goto(f"/o/{web_org.slug}/settings/mcp")
    browsing.sign_in(web_org.admin.email)
    expect(page.get_by_role("heading", name="MCP servers", exact=True)).to_be_visible()

    page.get_by_label("Name").first.fill("tools")
    page.get_by_label("URL of the Streamable HTTP endpoint").fill(mcp_url)
    page.get_by_role("button", name="Add remote server").click()
    expect(page.get_by_role("status")).to_contain_text("MCP server added")
    server = page.locator('[data-server="tools"]')
    expect(server).to_contain_text("No tools discovered yet")

    server.get_by_role("button", name="Refresh tools of tools").click()
    expect(page.get_by_role("status")).to_contain_text("Tools refreshed")
    tools = page.get_by_role("table", name="Tools of tools")
    for name in ("echo", "whoami", "fail"):
        expect(tools.locator(f'[data-tool="{name}"]')).to_contain_text(f"mcp.tools.{name}")
    echo = tools.locator('[data-tool="echo"]')
    expect(echo).to_contain_text("enabled")

    echo.get_by_role("button", name="Disable echo").click()
    expect(page.get_by_role("status")).to_contain_text("Tool updated")
    echo = page.get_by_role("table", name="Tools of tools").locator('[data-tool="echo"]')
    expect(echo).to_contain_text("disabled")
    expect(echo.get_by_role("button", name="Enable echo")).to_be_visible()
    listed = web_org.admin.client.get(f"/api/v1/orgs/{web_org.slug}/mcp/servers").json()
    tools_state = {t["name"]: t["enabled"] for t in listed[0]["tools"]}
    assert tools_state == {"echo": False, "whoami": True, "fail": True}
    browsing.problems.assert_clean()
