"""SAML single sign-on in a real Chromium: EngineX's start page sends the browser to the
test IdP (pysaml2 behind HTTP on 127.0.0.1), the person signs in there, the IdP's page posts
the signed response to the ACS by itself, and the browser lands in the organization with the
role its groups map to. The same IdP user cannot reach another organization.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Browsing
from tests.factories import Actor, Org, Server, make_org, private_network
from tests.idp.saml.http_idp import HttpIdp, IdpUser
from tests.idp.saml.idp import make_key_pair
from tests.test_saml_signin import ENG_ADMINS, SamlOrg, set_up_org, sp_metadata

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def saml_world(server: Server, platform_admin: Actor, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[HttpIdp, SamlOrg, Org]]:
    org = make_org(server, platform_admin, "saml", roles=("admin",), with_keys=False)
    other = make_org(server, platform_admin, "other", roles=("admin",), with_keys=False)
    keys = make_key_pair(Path(tmp_path_factory.mktemp("saml-browser")), "idp")
    user = f"ada-{secrets.token_hex(3)}"
    idp = HttpIdp(keys, {user: IdpUser(email=f"{user}@{org.slug}.example.com",
                                       display_name="Ada L", groups=[ENG_ADMINS])})
    idp.configure([sp_metadata(server, org.slug)])
    idp.start()
    try:
        configured = set_up_org(server, platform_admin, org, idp.metadata_url)
        yield idp, configured, other
    finally:
        idp.stop()


def _allow_idp(browsing: Browsing, idp: HttpIdp) -> None:
    """The browsing context refuses every address but EngineX's; the IdP is the exception."""
    browsing.context.route(re.compile(rf"^{re.escape(idp.base_url)}/"),
                           lambda route: route.continue_())


def test_new_user_signs_in_with_saml_in_the_browser_and_gets_the_mapped_role(
        browsing: Browsing, saml_world: tuple[HttpIdp, SamlOrg, Org]):
    idp, configured, other = saml_world
    _allow_idp(browsing, idp)
    page = browsing.page
    slug = configured.org.slug
    page.goto(browsing.url(f"/sso/{slug}/start"))
    expect(page.get_by_role("heading", name="Test IdP")).to_be_visible()
    user = next(iter(idp.users))
    page.get_by_label("Username").fill(user)
    page.get_by_role("button", name="Sign in at the IdP").click()
    page.wait_for_url(browsing.url(f"/o/{slug}"))
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()

    me = page.request.get(browsing.url("/api/v1/me")).json()
    assert me["email"] == idp.users[user].email
    roles = {o["slug"]: o["role"] for o in me["organizations"]}
    assert roles == {slug: "builder"}

    # The IdP's assertion opened a session for this organization only.
    response = page.goto(browsing.url(f"/o/{other.slug}"))
    assert response is not None and response.status == 404
    browsing.problems.assert_clean(
        allowed_console=lambda message: "404" in message and f"/o/{other.slug}" in message)


def test_org_admin_adds_a_saml_connection_on_the_page_and_tests_it(
        browsing: Browsing, server: Server, saml_world: tuple[HttpIdp, SamlOrg, Org]):
    idp, _, other = saml_world
    page = browsing.page
    page.goto(browsing.url("/login"))
    browsing.sign_in(other.admin.email)
    page.goto(browsing.url(f"/o/{other.slug}/settings/sso"))
    expect(page.locator("#saml-acs-url")).to_have_text(
        f"{server.base_url}/sso/{other.slug}/saml/acs")
    expect(page.locator("#saml-metadata-url")).to_have_text(
        f"{server.base_url}/sso/{other.slug}/saml/metadata")
    page.get_by_text("Add a SAML connection").click()
    form = page.locator("#new-saml-connection")
    form.get_by_label("Name").fill("corp-saml")
    form.get_by_label("IdP metadata URL").fill(idp.metadata_url)
    with private_network(server):
        form.get_by_role("button", name="Add SAML connection").click()
        expect(page.get_by_role("status")).to_have_text("Connection created.")
        row = page.get_by_role("row").filter(has_text="corp-saml")
        expect(row).to_contain_text(idp.metadata_url)
        row.get_by_role("button", name="Test corp-saml").click()
        report = page.locator("#test-report")
        expect(report).to_contain_text("The SAML settings look right")
        expect(report).to_contain_text("CN=idp")
    browsing.problems.assert_clean()
