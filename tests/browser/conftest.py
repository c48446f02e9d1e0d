"""Browser fixtures: Debian's Chromium driven by Playwright's sync API.

Playwright cannot download its own browsers here, so it drives ``/usr/bin/chromium``
(``ENGINEX_TEST_CHROMIUM`` overrides the path). Without that binary the browser tests are
skipped locally and FAIL under CI=true, like the PostgreSQL half of the suite.

One Chromium runs per test module; every test gets a fresh context (no cookies, no cache).
Module scope, not session scope, on purpose: Playwright's sync API keeps an asyncio loop
running on the test thread while it lives, and later tests that call ``asyncio.run`` (the
factories do) would fail with "cannot be called from a running event loop".
Playwright normally starts Chromium with the back/forward cache disabled; we re-enable it so
that the Back button behaves as in a user's browser.

The browser tests use the shared ``server`` fixture, which exists once per database backend,
but they run on SQLite only: what they check (redirects, forms, caching, CSP, layout) does
not depend on the database, the API tests already cover both backends (the membership
listing of the landing page included), and a second pass would double the time of the
slowest tests in the suite. ``ENGINEX_TEST_BROWSER_BACKENDS=sqlite,postgres`` runs both.

Every action, navigation and ``expect`` waits up to TIMEOUT_MS (set here, once): the tests share
a busy machine, where a form post that takes 100 ms alone can take many seconds; a condition
met early ends the wait early. Tests do not pass their own timeouts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    Response,
    Route,
    expect,
    sync_playwright,
)

from tests.conftest import IN_CI
from tests.factories import (
    PASSWORD,
    WAIT_SECONDS,
    Actor,
    Org,
    Server,
    make_org,
    make_platform_admin,
    wait_for,
)

CHROMIUM = os.environ.get("ENGINEX_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 3,
         "is_mobile": True, "has_touch": True}
TIMEOUT_MS = int(WAIT_SECONDS * 1000)
expect.set_options(timeout=TIMEOUT_MS)
BACKENDS = {b.strip() for b in
            os.environ.get("ENGINEX_TEST_BROWSER_BACKENDS", "sqlite").split(",") if b.strip()}

# Runs in every document before its own scripts. CDP-injected, so the page's CSP does not
# apply to it; it forwards each violation to the test through an exposed binding.
REPORT_CSP_VIOLATIONS = """
document.addEventListener('securitypolicyviolation', (e) => {
  window.__enxCspViolation({directive: e.violatedDirective, blocked: e.blockedURI,
                            document: e.documentURI, sample: e.sample || ''});
});
"""


@dataclass
class PageProblems:
    """What went wrong inside the browser: console errors, uncaught errors, CSP violations,
    and requests that tried to leave 127.0.0.1 (they are aborted, never sent)."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[dict[str, str]] = field(default_factory=list)
    off_site_requests: list[str] = field(default_factory=list)

    def assert_clean(self, *, allowed_console: Callable[[str], bool] = lambda _: False) -> None:
        errors = [m for m in self.console_errors if not allowed_console(m)]
        assert errors == [], f"console errors: {errors}"
        assert self.page_errors == [], f"uncaught page errors: {self.page_errors}"
        assert self.csp_violations == [], f"CSP violations: {self.csp_violations}"
        assert self.off_site_requests == [], f"requests off 127.0.0.1: {self.off_site_requests}"


@dataclass
class Browsing:
    """A fresh browser context on the test server, its one page, and what went wrong."""

    server: Server
    context: BrowserContext
    page: Page
    problems: PageProblems

    def url(self, path: str) -> str:
        return self.server.base_url + path

    def sign_in(self, email: str, password: str = PASSWORD) -> Response | None:
        """Fill in the sign-in form on the current page, submit it, and return the response
        the browser ends on (after redirects)."""
        self.page.get_by_label("Email").fill(email)
        self.page.get_by_label("Password").fill(password)
        with self.page.expect_navigation() as navigation:
            self.page.get_by_role("button", name="Sign in").click()
        return navigation.value

    def wait_for(self, condition: Callable[[], Any], *, what: str) -> Any:
        """``tests.factories.wait_for`` for what the browser reports to Python (console
        messages, CSP violations): the page's events are only delivered while Playwright
        runs, so the pause between checks is the page's, not ``time.sleep``."""
        return wait_for(condition, what=what, timeout=TIMEOUT_MS / 1000,
                        sleep=lambda seconds: self.page.wait_for_timeout(seconds * 1000))

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}-{self.server.backend}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect this directory's tests for backends outside ``BACKENDS`` (see above)."""
    here = Path(__file__).resolve().parent
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        in_here = here in Path(item.path).resolve().parents
        (dropped if in_here and backend is not None and backend not in BACKENDS
         else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def _chromium_problem() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)"
    return None


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    problem = _chromium_problem()
    if problem:
        if IN_CI:
            pytest.fail(f"{problem} (mandatory in CI)")
        pytest.skip(problem)
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    chromium = playwright_driver.chromium.launch(
        executable_path=CHROMIUM, args=CHROMIUM_ARGS,
        ignore_default_args=["--disable-back-forward-cache"])
    try:
        yield chromium
    finally:
        chromium.close()


def open_browsing(browser: Browser, server: Server, **context_options: Any) -> Browsing:
    context = browser.new_context(base_url=server.base_url, **context_options)
    context.set_default_timeout(TIMEOUT_MS)
    problems = PageProblems()

    # Tests talk to 127.0.0.1 only. The pattern is matched inside the Playwright driver, so
    # requests to the test server are not slowed down by a round trip through Python.
    def refuse_off_site(route: Route) -> None:
        problems.off_site_requests.append(route.request.url)
        route.abort("blockedbyclient")

    context.route(re.compile(rf"^(?!{re.escape(server.base_url)}/)"), refuse_off_site)

    def on_csp_violation(report: dict[str, str]) -> None:
        problems.csp_violations.append(report)

    context.expose_function("__enxCspViolation", on_csp_violation)
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    page = context.new_page()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.console_errors.append(f"{message.text} ({message.location.get('url')})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.page_errors.append(str(error)))
    return Browsing(server=server, context=context, page=page, problems=problems)


@pytest.fixture
def browsing(browser: Browser, server: Server) -> Iterator[Browsing]:
    session = open_browsing(browser, server)
    try:
        yield session
    finally:
        session.context.close()


@pytest.fixture
def phone(browser: Browser, server: Server) -> Iterator[Browsing]:
    session = open_browsing(browser, server, **PHONE)
    try:
        yield session
    finally:
        session.context.close()


@pytest.fixture(scope="session")
def platform_admin(server: Server) -> Actor:
    """As in tests/conftest.py, but made on a worker thread: Playwright's sync API keeps an
    asyncio loop running on the test thread while it lives, and ``make_platform_admin`` calls
    ``asyncio.run``, which refuses to start inside a running loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(make_platform_admin, server).result()


@pytest.fixture(scope="module")
def web_org(server: Server, platform_admin: Actor) -> Org:
    """An organization with a signed-up admin and operator, shared by this module's tests
    (per backend) because every member costs argon2 work. Tests only read it and sign in to
    it; a test that needs different memberships makes its own users."""
    return make_org(server, platform_admin, "web", roles=("admin", "operator"), with_keys=False)
