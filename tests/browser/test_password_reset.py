"""Password reset in a real Chromium, through a real SMTP server (aiosmtpd).

The path a person who forgot their password takes: "Forgot your password?" on the sign-in
page, their email, the link from the mail (its token in the fragment, never sent to the
server), a new password; their old session is dead, and the new password signs them in. The
pages run under the strict CSP without errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import Browser, expect

from tests.accounts_support import RESET_LINK, SmtpServer, body_of
from tests.browser.conftest import Browsing, open_browsing
from tests.conftest import separate_deployment
from tests.factories import Org, Server, make_org, make_platform_admin

pytestmark = pytest.mark.browser

NEW_PASSWORD = "harbour-lantern-quiet-57"


@pytest.fixture(scope="module")
def mail_server(backend: str, smtp: SmtpServer,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with separate_deployment(backend, tmp_path_factory.mktemp(f"reset-web-{backend}"),
                             smtp_url=smtp.url) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def tenant(mail_server: Server) -> Org:
    def make() -> Org:
        return make_org(mail_server, make_platform_admin(mail_server), "rw",
                        roles=("admin", "operator"), with_keys=False)

    with ThreadPoolExecutor(max_workers=1) as pool:  # Playwright's loop runs on this thread
        return pool.submit(make).result()


@pytest.fixture
def web(browser: Browser, mail_server: Server) -> Iterator[Browsing]:
    session = open_browsing(browser, mail_server)
    try:
        yield session
    finally:
        session.context.close()


def test_forgot_password_mail_link_new_password_sign_in(web: Browsing, smtp: SmtpServer,
                                                        tenant: Org) -> None:
    operator = tenant.members["operator"]
    page = web.page
    page.goto("/login")
    page.get_by_role("link", name="Forgot your password?").click()
    expect(page.get_by_role("heading", name="Reset your password")).to_be_visible()
    page.get_by_label("Email").fill(operator.email)
    page.get_by_role("button", name="Send the link").click()
    expect(page.locator("#reset-sent")).to_contain_text(
        "If an EngineX account uses this email address")

    mail = web.wait_for(lambda: smtp.inbox.to(operator.email, "Reset your EngineX password"),
                        what="the reset mail")[0]
    link = RESET_LINK.search(body_of(mail))
    assert link, body_of(mail)
    page.goto(link.group(0))
    expect(page.get_by_role("heading", name="Choose a new password")).to_be_visible()
    assert "#" not in page.url  # the token left the address bar
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("Type it again").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Set the new password").click()
    expect(page.locator("#reset-done")).to_contain_text("Your password is changed")

    assert operator.client.get("/api/v1/me").status_code == 401  # the old session is dead
    page.locator("#sign-in").click()
    web.sign_in(operator.email, NEW_PASSWORD)
    expect(page).to_have_url(f"{web.server.base_url}/o/{tenant.slug}")
    web.problems.assert_clean()
