"""Sign-in, the landing page and sign-out, in a real Chromium.

The threat model: a signed-out visitor sees nothing private and is sent to sign-in, then back
where they were -- but never to another site, whatever ``next`` says; a wrong password is
refused with a message that does not tell which half was wrong; after signing out, neither
Back nor reload shows the signed-in page again; the pages run under the strict CSP without
errors, and the sign-in form works on a phone.
"""

from __future__ import annotations

import secrets
from urllib.parse import quote

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from tests.browser.conftest import Browsing
from tests.factories import PASSWORD, Actor, Org, Server, accept_as, anonymous, make_org

pytestmark = pytest.mark.browser

SIGN_IN_HEADING = "Sign in to EngineX"
LANDING_HEADING = "Your organizations"  # the chooser, for a member of several organizations
CHOOSER = "/?choose=1"  # the list of one's organizations, whatever their number
ORG_HEADING = "Overview"  # a member of one organization lands in it, on its overview
WRONG_CREDENTIALS = "Wrong email or password. Check both and try again."


def _operator(org: Org) -> Actor:
    return org.members["operator"]


def _landing(org: Org) -> str:
    """Where the operator of ``org`` (a member of that organization only) lands: in it."""
    return f"/o/{org.slug}"


def _assert_no_horizontal_scroll(browsing: Browsing) -> None:
    scroll_width, client_width = browsing.page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert client_width == 390
    assert scroll_width <= client_width, f"page is {scroll_width}px wide on a 390px screen"


def _assert_links_work(browsing: Browsing) -> None:
    """Every link and linked asset leads somewhere: an element on the page, or an address
    that loads."""
    hrefs = browsing.page.eval_on_selector_all(
        "a[href], link[href]", "links => links.map(a => a.getAttribute('href'))")
    assert hrefs, "the page has no links at all"
    for href in hrefs:
        if href.startswith("#"):
            assert browsing.page.locator(href).count() == 1, f"no element for {href}"
        else:
            assert browsing.page.request.get(href).ok, f"broken link {href}"


def test_signed_out_visitor_is_sent_to_sign_in_and_back(browsing: Browsing,
                                                        web_org: Org) -> None:
    page = browsing.page
    page.goto("/")
    assert page.url == browsing.url("/login?next=/")
    expect(page.get_by_role("heading", name=SIGN_IN_HEADING)).to_be_visible()
    expect(page.get_by_label("Email")).to_be_focused()
    expect(page.get_by_role("alert")).to_have_count(0)
    _assert_links_work(browsing)
    browsing.screenshot("login")

    landing = browsing.sign_in(_operator(web_org).email)

    assert page.url == browsing.url(_landing(web_org))
    assert landing is not None and landing.status == 200
    expect(page.get_by_role("heading", name=ORG_HEADING)).to_be_visible()
    _assert_links_work(browsing)
    # Signed in, the sign-in page sends the user straight on instead of asking again.
    page.goto("/login?next=/")
    assert page.url == browsing.url(_landing(web_org))
    page.goto("/login?next=/login")  # and never in a loop back to itself
    assert page.url == browsing.url(_landing(web_org))
    browsing.problems.assert_clean()


OFF_SITE_TARGETS = (
    "https://evil.example/", "//evil.example", "///evil.example", "/\\evil.example",
    "https:/evil.example", "/\t/evil.example", "javascript:alert(1)",
)


def test_sign_in_never_follows_next_off_site(browsing: Browsing, web_org: Org) -> None:
    page = browsing.page
    for target in OFF_SITE_TARGETS:
        page.goto(f"/login?next={quote(target, safe='')}")
        assert page.locator("input[name=next]").input_value() == "/", target
    # A forged form posting an off-site target directly is refused by the server as well.
    # One context for all of them, cookies cleared in between: a context per target would
    # only add time.
    for target in OFF_SITE_TARGETS[:2]:
        browsing.context.clear_cookies()
        page.goto("/login")
        page.locator("input[name=next]").evaluate("(field, value) => { field.value = value; }",
                                                  target)
        browsing.sign_in(_operator(web_org).email)
        assert page.url == browsing.url(_landing(web_org)), target
        expect(page.get_by_role("heading", name=ORG_HEADING)).to_be_visible()

    # The control: a same-site ``next``, query string included, is followed.
    browsing.context.clear_cookies()
    page.goto(f"/login?next={quote('/api/v1/me?from=login', safe='')}")
    browsing.sign_in(_operator(web_org).email)
    assert page.url == browsing.url("/api/v1/me?from=login")
    expect(page.locator("body")).to_contain_text(_operator(web_org).email)
    browsing.problems.assert_clean()


def test_wrong_password_shows_the_error_and_keeps_the_email(browsing: Browsing,
                                                            web_org: Org) -> None:
    page = browsing.page
    email = _operator(web_org).email
    page.goto("/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("not-the-right-pass-phrase")
    with page.expect_navigation() as refused:
        page.get_by_role("button", name="Sign in").click()

    response = refused.value
    assert response is not None and response.status == 401
    assert response.request.method == "POST"
    assert page.url == browsing.url("/login")
    expect(page.get_by_role("alert")).to_have_text(WRONG_CREDENTIALS)
    expect(page.get_by_label("Email")).to_have_value(email)
    expect(page.get_by_label("Password")).to_have_value("")
    expect(page.get_by_label("Password")).to_be_focused()
    expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
    assert page.locator("input[name=next]").input_value() == "/"
    browsing.screenshot("login-error")

    # The re-rendered form still works and still leads back to where the visitor started.
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_label("Password").press("Enter")
    assert page.url == browsing.url(_landing(web_org))
    expect(page.get_by_role("heading", name=ORG_HEADING)).to_be_visible()
    # Chromium reports the 401 document itself as a failed resource; nothing else may fail.
    browsing.problems.assert_clean(allowed_console=lambda text: text == (
        "Failed to load resource: the server responded with a status of 401 (Unauthorized) "
        f"({browsing.url('/login')})"))


def test_operator_sees_each_organization_with_role_and_status(
        browsing: Browsing, server: Server, platform_admin: Actor, web_org: Org) -> None:
    # A user of their own: operator of web_org, viewer of a second, suspended organization.
    email = f"multi-{secrets.token_hex(4)}@example.org"
    other = make_org(server, platform_admin, "web2", roles=("admin",), with_keys=False)
    for org, role, password in ((web_org, "operator", PASSWORD), (other, "viewer", None)):
        invite = org.admin.client.post(f"/api/v1/orgs/{org.slug}/invitations",
                                       json={"email": email, "role": role})
        assert invite.status_code == 201, invite.text
        token = invite.json()["token"]
        if password:
            with anonymous(server) as client:
                joined = client.post("/api/v1/invitations/accept",
                                     json={"token": token, "password": password})
        else:
            joined = accept_as(server, email, token)
        assert joined.status_code == 200, joined.text
    suspended = platform_admin.client.patch(f"/api/v1/admin/tenants/{other.id}",
                                            json={"status": "suspended"})
    assert suspended.status_code == 200, suspended.text
    # An organization the user does not belong to must not appear at all.
    stranger = make_org(server, platform_admin, "web3", roles=("admin",), with_keys=False)

    page = browsing.page
    page.goto("/")
    browsing.sign_in(email)

    expect(page.get_by_role("heading", name=LANDING_HEADING)).to_be_visible()
    expect(page.get_by_role("banner")).to_contain_text(email)
    orgs = page.get_by_role("list", name="Organizations you belong to").get_by_role("listitem")
    expect(orgs).to_have_count(2)
    mine = orgs.filter(has_text=web_org.name)
    expect(mine.get_by_text(web_org.slug, exact=True)).to_be_visible()
    expect(mine.get_by_text("operator", exact=True)).to_be_visible()
    expect(mine.get_by_text("active", exact=True)).to_be_visible()
    theirs = orgs.filter(has_text=other.name)
    expect(theirs.get_by_text("viewer", exact=True)).to_be_visible()
    expect(theirs.get_by_text("suspended", exact=True)).to_be_visible()
    expect(theirs).to_contain_text("This organization is suspended")
    expect(page.get_by_text(stranger.name)).to_have_count(0)
    browsing.screenshot("landing")
    browsing.problems.assert_clean()


def test_sign_out_then_back_shows_nothing_private(browsing: Browsing, server: Server,
                                                  web_org: Org) -> None:
    page = browsing.page
    operator = _operator(web_org)
    # The organization list (a one-organization member otherwise lands in the organization,
    # whose address, in the sign-in link's ``next``, would name it).
    page.goto(CHOOSER)
    landing = browsing.sign_in(operator.email)
    assert landing is not None and landing.headers.get("cache-control") == "no-store"
    expect(page.get_by_role("heading", name=LANDING_HEADING)).to_be_visible()
    expect(page.get_by_role("banner")).to_contain_text(operator.email)
    cookies = {c["name"]: c["value"] for c in browsing.context.cookies()}
    assert cookies, "signing in set no session cookie"

    with page.expect_navigation():
        page.get_by_role("button", name="Sign out").click()
    assert page.url == browsing.url("/login")
    expect(page.get_by_role("heading", name=SIGN_IN_HEADING)).to_be_visible()

    # Chromium keeps even no-store pages in its back/forward cache unless an HttpOnly cookie
    # changed (the test browser has that cache on, like a user's): deleting the session cookie
    # at sign-out is what evicts the landing page. No response means it came from that cache.
    back = page.go_back(wait_until="commit")
    assert back is not None, "Back showed the signed-in page from the back/forward cache"
    page.wait_for_load_state()
    # Back asked the server for the landing page again, which sent the browser to sign-in.
    assert back.request.redirected_from is not None
    assert back.request.redirected_from.url == browsing.url(CHOOSER)
    assert page.url == browsing.url(f"/login?next={quote(CHOOSER, safe='/')}")
    expect(page.get_by_role("heading", name=SIGN_IN_HEADING)).to_be_visible()
    for private in (operator.email, web_org.name, web_org.slug):
        assert private not in page.content()

    page.reload()
    assert page.url == browsing.url(f"/login?next={quote(CHOOSER, safe='/')}")
    assert operator.email not in page.content()

    # The old session token is dead on the server too, not merely forgotten by the browser.
    with anonymous(server) as client:
        client.cookies.update(cookies)
        replayed = client.get("/", follow_redirects=False)
    assert replayed.status_code == 303
    assert replayed.headers["location"] == "/login?next=/"
    browsing.problems.assert_clean()


def test_strict_csp_blocks_inline_code_and_the_watchers_see_it(browsing: Browsing) -> None:
    """The control for ``assert_clean``: an injected inline script and style are refused by
    the CSP and reported through both listeners, and a request off 127.0.0.1 is stopped."""
    page = browsing.page
    page.goto("/login")
    page.evaluate("""() => {
        const script = document.createElement('script');
        script.textContent = 'window.__inlineScriptRan = true;';
        document.head.appendChild(script);
        const style = document.createElement('style');
        style.textContent = 'body { display: none; }';
        document.head.appendChild(style);
    }""")
    assert page.evaluate("() => window.__inlineScriptRan === undefined")
    expect(page.get_by_role("heading", name=SIGN_IN_HEADING)).to_be_visible()
    browsing.wait_for(lambda: len(browsing.problems.csp_violations) >= 2,  # asynchronous
                      what="the two CSP violation reports")
    directives = {v["directive"] for v in browsing.problems.csp_violations}
    assert directives == {"script-src-elem", "style-src-elem"}
    assert sum("Content Security Policy" in m for m in browsing.problems.console_errors) == 2

    with pytest.raises(PlaywrightError, match="ERR_BLOCKED_BY_CLIENT"):
        page.goto("https://evil.example/")
    assert browsing.problems.off_site_requests == ["https://evil.example/"]


def test_sign_in_and_landing_fit_a_phone(phone: Browsing, web_org: Org) -> None:
    page = phone.page
    page.goto("/")
    expect(page.get_by_role("heading", name=SIGN_IN_HEADING)).to_be_visible()
    _assert_no_horizontal_scroll(phone)
    for control in (page.get_by_label("Email"), page.get_by_label("Password"),
                    page.get_by_role("button", name="Sign in")):
        box = control.bounding_box()
        assert box is not None
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, box
        assert box["height"] >= 44, f"tap target too small: {box}"
    phone.screenshot("login-phone")

    page.get_by_label("Email").tap()
    page.get_by_label("Email").fill(_operator(web_org).email)
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").tap()
    assert page.url == phone.url(_landing(web_org))
    expect(page.get_by_role("heading", name=ORG_HEADING)).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_be_in_viewport()
    _assert_no_horizontal_scroll(phone)
    phone.screenshot("landing-phone")
    phone.problems.assert_clean()
