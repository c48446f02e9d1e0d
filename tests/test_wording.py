"""Error messages are for people: they say what is wrong and what to enter instead.

Over real HTTP, through the dashboard's forms and the API, as an org admin would meet them.
"""

from __future__ import annotations

import html
import re

from tests.factories import Org


def _text(body: str) -> str:
    """The page's text as a reader sees it: entities decoded, tags dropped."""
    return html.unescape(re.sub(r"<[^>]+>", "", body))


def test_an_api_key_without_a_name_asks_for_one(org_a: Org) -> None:
    for name in ("", "   "):
        page = org_a.admin.client.post(f"/o/{org_a.slug}/settings/api-keys", data={
            "name": name, "role": "viewer", "expires_in_days": "90"})
        assert page.status_code == 422
        assert "Give the key a name" in _text(page.text)
        assert "String should have at least" not in page.text
    keys = org_a.admin.client.get(f"/api/v1/orgs/{org_a.slug}/api-keys").json()
    assert all(k["name"].strip() for k in keys)


def test_a_skill_without_front_matter_shows_how_the_file_starts(org_a: Org) -> None:
    text = "# Checklist\n\nAlways check the totals."
    api = org_a.admin.client.post(f"/api/v1/orgs/{org_a.slug}/skills", json={"skill_md": text})
    assert api.status_code == 422
    message = api.json()["error"]["message"]
    assert "has no front matter" in message
    assert "---\nname: " in message and "\ndescription: " in message
    page = org_a.admin.client.post(f"/o/{org_a.slug}/settings/skills", data={"skill_md": text})
    assert page.status_code == 422
    # The expected start is shown line by line, not run together into one line.
    error = re.search(r'<div class="error[^"]*"[^>]*id="skill-md-error">(.*?)</div>', page.text,
                      re.S)
    assert error is not None, page.text
    assert "multiline" in error.group(0)
    assert "---\nname: " in html.unescape(error.group(1))


def test_a_provider_without_a_base_url_says_which_kinds_need_one_and_what_to_enter(
        org_a: Org) -> None:
    response = org_a.admin.client.post(f"/api/v1/orgs/{org_a.slug}/llm/providers", json={
        "name": "local", "kind": "openai_compatible"})
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert message.startswith("base_url: ")
    for says in ("openai_compatible", "https://api.openai.com/v1",
                 "http://localhost:11434/v1", "anthropic", "scripted"):
        assert says in message, message


def test_the_credential_form_reports_every_invalid_field_at_once(org_a: Org) -> None:
    page = org_a.admin.client.post(f"/o/{org_a.slug}/settings/credentials", data={
        "type": "basic_auth", "name": "Bad Name!", "value.password": "pw-kept-secret",
        "allowed_hosts": "not a host!"})
    assert page.status_code == 422
    text = _text(page.text)
    assert "1-64 lowercase letters" in text  # the name
    assert "missing username" in text  # the values
    assert "allowed_hosts" in text  # the hosts
    assert "pw-kept-secret" not in page.text
    # Fixed, the form is accepted (the API already lists every invalid field of a body).
    fixed = org_a.admin.client.post(f"/o/{org_a.slug}/settings/credentials", data={
        "type": "basic_auth", "name": "ldap", "value.username": "u",
        "value.password": "pw-kept-secret", "allowed_hosts": "ldap.example.com"})
    assert fixed.status_code == 303, fixed.text


DESTRUCTIVE = ("Delete", "Revoke", "Remove", "Suspend", "Disable", "Cancel", "Erase",
               "Ask for the erasure")


def test_red_marks_destructive_controls_only() -> None:
    """Every control drawn in danger red (``class="danger"``, ``details.confirm``) says that
    it deletes, revokes, removes, suspends, disables or cancels; a harmless choice is never red."""
    from pathlib import Path

    import enginex.web

    templates = Path(enginex.web.__file__).parent / "templates"
    red = re.compile(r'<details class="confirm"[^>]*>\s*<summary>(?P<summary>[^<]*)<'
                     r'|class="(?:button )?danger"[^>]*>(?P<label>[^<]*)<'
                     r"|'danger' if")
    found = []
    for path in sorted(templates.rglob("*.html")):
        for match in red.finditer(path.read_text()):
            text = (match.group("summary") or match.group("label") or match.group(0)).strip()
            found.append(text)
            assert text.startswith(DESTRUCTIVE), f"{path.name}: red control '{text}'"
    assert len(found) >= 10  # the pattern still matches the templates
