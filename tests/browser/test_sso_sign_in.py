"""A person of a verified domain signs in through the organization's identity provider in a
real browser (Chromium) and a real OpenID Provider (oidc-provider on 127.0.0.1): the sign-in
page routes the email to the IdP, the IdP's own login and consent pages are used, and the
person lands in the right organization with the role their groups map to."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

import pytest
from playwright.sync_api import Browser, Route, expect

from tests.browser.conftest import TIMEOUT_MS
from tests.factories import Actor, Server
from tests.idp.oidc.world import World, add_account, sso_world

ACCOUNTS: dict[str, dict[str, Any]] = {}
add_account(ACCOUNTS, "nora", "nora@{a}", ["Builders"])


@pytest.fixture(scope="module")
def world(server: Server, platform_admin: Actor) -> Iterator[World]:
    """Built on a worker thread: Playwright's loop runs on the test thread, and the setup
    calls ``asyncio.run``."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        manager: AbstractContextManager[World] = sso_world(server, platform_admin, ACCOUNTS,
                                                           labels=("a",))
        built = pool.submit(manager.__enter__).result()
        try:
            org = built.orgs["a"]
            rule = pool.submit(org.admin.client.post,
                               f"/api/v1/orgs/{org.slug}/sso/role-rules",
                               json={"group": "builders", "role": "builder"}).result()
            assert rule.status_code == 201, rule.text
            yield built
        finally:
            pool.submit(manager.__exit__, None, None, None).result()


def test_a_verified_domain_user_signs_in_through_the_idp_with_the_mapped_role(
        browser: Browser, world: World) -> None:
    org = world.orgs["a"]
    context = browser.new_context(base_url=world.server.base_url)
    context.set_default_timeout(TIMEOUT_MS)
    allowed = re.compile(rf"^({re.escape(world.server.base_url)}|{re.escape(world.idp.issuer)})/")
    blocked: list[str] = []

    def refuse_off_site(route: Route) -> None:
        blocked.append(route.request.url)
        route.abort("blockedbyclient")

    context.route(lambda url: not allowed.match(url), refuse_off_site)
    try:
        page = context.new_page()
        page.goto("/login")
        page.get_by_label("Email").fill(world.email("a", "nora"))
        page.get_by_role("button", name="Continue with single sign-on").click()
        # The IdP's own sign-in page (the provider's development login form).
        page.wait_for_url(re.compile(rf"^{re.escape(world.idp.issuer)}/interaction/"))
        page.locator("input[name=login]").fill("nora")
        page.locator("input[name=password]").fill("any-password")
        page.get_by_role("button", name="Sign-in").click()
        page.get_by_role("button", name="Continue").click()  # the IdP's consent page
        page.wait_for_url(f"{world.server.base_url}/o/{org.slug}")
        expect(page.get_by_role("banner")).to_contain_text(world.email("a", "nora"))
        me = context.request.get(f"{world.server.base_url}/api/v1/me").json()
        assert {o["slug"]: o["role"] for o in me["organizations"]} == {org.slug: "builder"}
        # Nothing left 127.0.0.1 except the provider's development pages' web font (refused).
        assert all(u.startswith("https://fonts.") for u in blocked), blocked
    finally:
        context.close()
