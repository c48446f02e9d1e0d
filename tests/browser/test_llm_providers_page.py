"""The LLM providers and model aliases on the LLM settings page, in a real Chromium.

The admin adds a provider (a refused name first: the message appears next to the field and
the other values stay), tests it against the fake OpenAI-compatible server, then sets a model
alias (a model outside the allowed list first). A builder sees both lists read-only. All of it
under the strict CSP, without console errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Browsing
from tests.factories import Actor, Org, Server, make_org
from tests.fake_llm import FakeLLM, FakeReply

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture(scope="module")
def llm_org(server: Server, platform_admin: Actor) -> Org:
    """An organization with an admin and a builder, and a bearer-token credential (made on a
    worker thread: see ``platform_admin`` in tests/browser/conftest.py)."""
    def build() -> Org:
        org = make_org(server, platform_admin, "llmp", roles=("admin", "builder"),
                       with_keys=False)
        made = org.admin.client.post(f"/api/v1/orgs/{org.slug}/credentials", json={
            "name": "openai-key", "type": "bearer_token",
            "values": {"token": "sk-browser-test-0123456789"}})
        assert made.status_code == 201, made.text
        return org

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(build).result()


@pytest.fixture
def private_network(server: Server) -> Iterator[None]:
    """Let tenants reach 127.0.0.1 (the fake LLM) for the test."""
    settings = server.app.state.settings
    before = settings.allow_private_network
    settings.allow_private_network = True
    try:
        yield
    finally:
        settings.allow_private_network = before


def _refused(browsing: Browsing, path: str) -> Callable[[str], bool]:
    """Chromium logs a 4xx document as a failed resource; those are expected here."""
    def allowed(text: str) -> bool:
        return text.startswith("Failed to load resource: the server responded with a status "
                               "of 422") and browsing.url(path) in text
    return allowed


def test_admin_adds_a_provider_and_an_alias(browsing: Browsing, llm_org: Org, fake: FakeLLM,
                                            private_network: None) -> None:
    page = browsing.page
    settings = f"/o/{llm_org.slug}/settings/llm"
    page.goto(settings)
    browsing.sign_in(llm_org.admin.email)
    assert page.url == browsing.url(settings)
    providers = page.locator("#llm-providers")
    expect(providers).to_contain_text("No providers yet")

    # A refused name: the message next to the field, the other values kept.
    providers.locator("summary", has_text="Add a provider").click()
    page.get_by_label("Provider name").fill("Open AI")
    page.get_by_label("Kind", exact=True).select_option("openai_compatible")
    page.get_by_label("Provider base URL").fill(fake.openai_base_url)
    page.get_by_label("Credential holding the key").select_option("openai-key")
    page.get_by_label("Allowed models").fill("gpt-fast\ngpt-smart\n")
    with page.expect_navigation() as refused:
        page.get_by_role("button", name="Add provider").click()
    assert refused.value is not None and refused.value.status == 422
    expect(page.locator("#provider_name-error")).to_contain_text("lowercase letters")
    expect(page.get_by_label("Provider name")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Provider base URL")).to_have_value(fake.openai_base_url)
    expect(page.get_by_label("Credential holding the key")).to_have_value("openai-key")

    page.get_by_label("Provider name").fill("openai")
    with page.expect_navigation():
        page.get_by_role("button", name="Add provider").click()
    expect(providers.get_by_role("status")).to_have_text("Provider added.")
    row = providers.get_by_role("row", name="openai")
    expect(row).to_contain_text("gpt-fast, gpt-smart")
    expect(row).to_contain_text("openai-key")

    # Test it: one tiny request to the fake server, with the credential's token.
    fake.queue(FakeReply(text="ok"))
    before = len(fake.requests)
    with page.expect_navigation():
        page.get_by_role("button", name="Test openai").click()
    expect(page.locator("#provider-test-result")).to_contain_text("Connected.")
    expect(page.locator("#provider-test-result")).to_contain_text("gpt-fast")
    assert fake.requests[before].headers["authorization"] == "Bearer sk-browser-test-0123456789"
    assert "sk-browser-test-0123456789" not in page.content()

    # An alias: a model outside the allowed list is refused next to the field.
    page.goto(settings)
    aliases = page.locator("#llm-aliases")
    aliases.locator("summary", has_text="Set an alias").click()
    page.get_by_label("Alias", exact=True).fill("fast")
    page.get_by_label("Provider", exact=True).select_option("openai")
    page.get_by_label("Model", exact=True).fill("gpt-huge")
    with page.expect_navigation() as refused:
        page.get_by_role("button", name="Save alias").click()
    assert refused.value is not None and refused.value.status == 422
    expect(page.locator("#alias_model-error")).to_contain_text("gpt-fast, gpt-smart")
    expect(page.get_by_label("Alias", exact=True)).to_have_value("fast")
    page.get_by_label("Model", exact=True).fill("gpt-fast")
    page.get_by_label("Alias temperature").fill("0.2")
    with page.expect_navigation():
        page.get_by_role("button", name="Save alias").click()
    expect(aliases.get_by_role("status")).to_have_text("Model alias saved.")
    alias_row = aliases.get_by_role("row", name="fast")
    expect(alias_row).to_contain_text("openai")
    expect(alias_row).to_contain_text("gpt-fast")
    expect(alias_row).to_contain_text("0.2")
    expect(providers.get_by_role("row", name="openai")).to_contain_text("fast")
    browsing.screenshot("llm-providers")
    browsing.problems.assert_clean(allowed_console=lambda text: any(
        check(text) for check in (_refused(browsing, f"{settings}/providers"),
                                  _refused(browsing, f"{settings}/aliases"))))


def test_builder_sees_providers_and_aliases_read_only(browsing: Browsing, llm_org: Org) -> None:
    admin = llm_org.admin.client
    base = f"/api/v1/orgs/{llm_org.slug}/llm"
    if not any(p["name"] == "offline" for p in admin.get(f"{base}/providers").json()):
        assert admin.post(f"{base}/providers",
                          json={"name": "offline", "kind": "scripted"}).status_code == 201
    assert admin.put(f"{base}/aliases/smart", json={"provider": "offline",
                                                    "model": "scripted-smart"}).status_code \
        in (200, 201)
    page = browsing.page
    settings = f"/o/{llm_org.slug}/settings/llm"
    page.goto(settings)
    browsing.sign_in(llm_org.members["builder"].email)
    expect(page.locator("#llm-providers").get_by_role("row", name="offline")).to_contain_text(
        "scripted")
    expect(page.locator("#llm-aliases").get_by_role("row", name="smart")).to_contain_text(
        "scripted-smart")
    expect(page.locator("main form")).to_have_count(0)
    expect(page.get_by_role("button", name="Add provider")).to_have_count(0)
    expect(page.get_by_role("button", name="Save alias")).to_have_count(0)
    browsing.problems.assert_clean()
