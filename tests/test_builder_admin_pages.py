"""The builder and org-admin pages over real HTTP: the agent catalog (upload, versions, diff,
deprecate), members and invitations, API keys, organization and LLM settings.

The threat model: each page does what the role's scopes allow and nothing more (the server
refuses the rest with the forbidden page, whatever the page showed); secrets -- invitation
links, API keys, the LLM key -- appear once or never; every form re-renders with the
server's message instead of failing silently. Anonymous visitors and other organizations are
covered for every page by tests/test_route_isolation.py.
"""

from __future__ import annotations

import html
import re
import secrets
from typing import Any

import httpx
import pytest

from enginex.agents.cli import zip_directory
from tests.factories import (
    Actor,
    Org,
    Server,
    accept,
    add_member,
    anonymous,
    api_key_client,
    make_org,
)
from tests.test_packages import FIXTURES, HOURLY, hourly_manifest, with_manifest

BROKEN_PATHS = ("agent.version", "required_tools[0]", "graph.nodes[0].output_keys",
                "graph.nodes[0].tools[1]", "graph.nodes[1].id", "graph.nodes[2].colour",
                "graph.nodes[2].template_file", "graph.entry_node", "graph.edges[0].target",
                "graph.edges[1].expr", "graph.edges[2].expr")


@pytest.fixture(scope="module")
def org(server: Server, platform_admin: Actor) -> Org:
    """One organization per backend for this module (members cost argon2 work). Tests that
    change memberships add their own members."""
    return make_org(server, platform_admin, "pages", with_keys=False)


def text_of(response: httpx.Response) -> str:
    """The page as text with entities decoded, for assertions on messages."""
    return html.unescape(response.text)


def upload_page(actor: Actor, org: Org, data: bytes, name: str = "package.zip"
                ) -> httpx.Response:
    return actor.client.post(f"/o/{org.slug}/agents",
                             files={"package": (name, data, "application/zip")})


def bumped_hourly(version: str, **changes: Any) -> bytes:
    manifest = hourly_manifest()
    manifest["agent"]["version"] = version
    manifest.update(changes)
    return with_manifest(manifest)


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, "the page has no form with a CSRF field"
    return match.group(1)


# --- agents -------------------------------------------------------------------------------


def test_builder_uploads_and_reads_versions_diff_and_deprecates(server: Server,
                                                                org: Org) -> None:
    builder, viewer = org.members["builder"], org.members["viewer"]
    empty = viewer.client.get(f"/o/{org.slug}/agents")
    assert empty.status_code == 200
    assert "No agents yet." in empty.text and 'name="package"' not in empty.text

    first = upload_page(builder, org, zip_directory(HOURLY))
    assert first.status_code == 303, first.text
    agent_url = f"/o/{org.slug}/agents/hourly-tracking"
    assert first.headers["location"] == f"{agent_url}?deployed=1.0.0#versions"
    page = builder.client.get(first.headers["location"])
    assert page.status_code == 200
    assert "Version 1.0.0 deployed." in page.text
    assert builder.email in page.text  # deployed by
    again = upload_page(builder, org, zip_directory(HOURLY))
    assert again.headers["location"] == f"{agent_url}?unchanged=1.0.0#versions"
    assert "already deployed with identical content" in builder.client.get(
        again.headers["location"]).text
    # A notice is only shown for a version that exists.
    assert "deployed." not in builder.client.get(f"{agent_url}?deployed=9.9.9").text

    second = upload_page(builder, org, bumped_hourly("1.1.0", required_tools=["set_output",
                                                                             "http_request"]))
    assert second.headers["location"] == f"{agent_url}?deployed=1.1.0#versions"

    catalog = viewer.client.get(f"/o/{org.slug}/agents")
    assert f'href="{agent_url}"' in catalog.text
    assert "Hourly tracking" in catalog.text and "1.1.0" in catalog.text
    # The default diff compares the two newest versions; both are listed with their hash.
    detail = viewer.client.get(agent_url)
    assert detail.status_code == 200
    assert detail.text.index(">1.1.0") < detail.text.index(">1.0.0")  # newest first
    assert "Deprecate" not in detail.text  # viewers cannot deprecate
    assert "Start a session" not in detail.text  # nor start sessions
    diff = viewer.client.get(agent_url, params={"from": "1.0.0", "to": "1.1.0"})
    assert diff.status_code == 200
    diff_text = text_of(diff)
    assert "1.0.0 → 1.1.0" in diff_text
    assert "agent.version" in diff_text and "content_hash" in diff_text
    assert re.search(r"added</span> <code>http_request</code>", diff.text)
    unknown = viewer.client.get(agent_url, params={"from": "1.0.0", "to": "7.0.0"})
    assert unknown.status_code == 422
    assert "'7.0.0' is not a version of hourly-tracking" in text_of(unknown)

    operator = org.members["operator"]
    start = operator.client.get(agent_url)
    assert f'href="/o/{org.slug}/sessions/new?agent=hourly-tracking"' in start.text
    refused = operator.client.post(f"{agent_url}/versions/1.0.0/deprecate")
    assert refused.status_code == 403
    assert "lacks the &#39;agents:write&#39; permission" in refused.text

    deprecated = builder.client.post(f"{agent_url}/versions/1.1.0/deprecate")
    assert deprecated.status_code == 303
    after = builder.client.get(deprecated.headers["location"])
    assert "Version 1.1.0 is deprecated" in after.text
    assert "Deprecate version 1.0.0" in after.text
    assert "Deprecate version 1.1.0" not in after.text
    # The latest live version is 1.0.0 again, for the API as well.
    api = viewer.client.get(f"/api/v1/orgs/{org.slug}/agents/hourly-tracking").json()
    assert api["latest_version"] == "1.0.0"
    assert "Latest version: <strong>1.0.0</strong>" in after.text
    missing = builder.client.post(f"{agent_url}/versions/4.0.0/deprecate")
    assert missing.status_code == 404


def test_invalid_uploads_list_every_problem_with_its_path(org: Org) -> None:
    builder = org.members["builder"]
    broken = upload_page(builder, org, zip_directory(FIXTURES / "broken"), "broken.zip")
    assert broken.status_code == 422
    text = text_of(broken)
    assert "broken.zip is not a valid agent package (11 problems)" in text
    for path in BROKEN_PATHS:
        assert f'<code class="path">{path}</code>' in broken.text, path
    assert ("graph.nodes[0].tools[1]</code>: unknown tool 'x'; known tools: http_request, "
            "render_report, set_output, tabulate_csv (or mcp.<server>.<tool>)") in text

    not_a_zip = upload_page(builder, org, b"just text", "notes.zip")
    assert not_a_zip.status_code == 422
    assert '<code class="path">package</code>' in not_a_zip.text
    no_file = builder.client.post(f"/o/{org.slug}/agents", data={"package": ""})
    assert no_file.status_code == 422
    assert "Choose a package file" in no_file.text
    empty = upload_page(builder, org, b"", "empty.zip")
    assert empty.status_code == 422 and "empty.zip is empty." in empty.text

    # The same version with other content is a conflict, explained on the page.
    upload_page(builder, org, bumped_hourly("2.0.0"))
    conflict = upload_page(builder, org, bumped_hourly("2.0.0", goal={"description": "x"}))
    assert conflict.status_code == 409
    assert "Versions are immutable: bump agent.version" in conflict.text
    catalog = builder.client.get(f"/o/{org.slug}/agents").text
    assert "broken-agent" not in catalog


def test_operators_cannot_upload(org: Org) -> None:
    operator = org.members["operator"]
    page = operator.client.get(f"/o/{org.slug}/agents")
    assert page.status_code == 200 and 'name="package"' not in page.text
    refused = upload_page(operator, org, zip_directory(HOURLY))
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("text/html")


# --- members and invitations -----------------------------------------------------------------


def test_every_member_sees_members_only_admins_manage(org: Org) -> None:
    viewer = org.members["viewer"]
    page = viewer.client.get(f"/o/{org.slug}/members")
    assert page.status_code == 200
    for actor in org.members.values():
        assert actor.email in page.text
    assert "Invitations" not in page.text and "/role" not in page.text
    admin_page = org.admin.client.get(f"/o/{org.slug}/members")
    assert 'id="invitations"' in admin_page.text
    assert f"/o/{org.slug}/members/{viewer.user_id}/role" in admin_page.text
    refused = viewer.client.post(f"/o/{org.slug}/members/{viewer.user_id}/role",
                                 data={"role": "admin"})
    assert refused.status_code == 403


def test_admin_changes_roles_removes_and_keeps_the_last_admin(server: Server, org: Org) -> None:
    admin = org.admin
    member = add_member(server, org, "viewer")
    changed = admin.client.post(f"/o/{org.slug}/members/{member.user_id}/role",
                                data={"role": "builder"})
    assert changed.status_code == 303
    assert member.client.get("/api/v1/me").json()["organizations"][0]["role"] == "builder"
    bad = admin.client.post(f"/o/{org.slug}/members/{member.user_id}/role",
                            data={"role": "owner"})
    assert bad.status_code == 422
    assert "Choose one of the roles" in bad.text

    # The only admin cannot step down or leave: the page says why and what to do.
    for action, data in (("role", {"role": "viewer"}), ("remove", {})):
        last = admin.client.post(f"/o/{org.slug}/members/{admin.user_id}/{action}", data=data)
        assert last.status_code == 409, action
        assert "This is the organization&#39;s last admin. Make another member admin first." \
            in last.text
        assert 'role="alert"' in last.text
    assert admin.client.get(f"/o/{org.slug}/members").status_code == 200

    removed = admin.client.post(f"/o/{org.slug}/members/{member.user_id}/remove")
    assert removed.status_code == 303
    members_section = admin.client.get(f"/o/{org.slug}/members").text.split(
        'id="invitations"')[0]
    assert member.email not in members_section and admin.email in members_section
    assert member.client.get(f"/o/{org.slug}/members").status_code == 404
    member.close()


def test_invitation_link_is_shown_once_and_works(server: Server, org: Org) -> None:
    admin = org.admin
    email = f"invitee-{secrets.token_hex(4)}@example.org"
    created = admin.client.post(f"/o/{org.slug}/invitations",
                                data={"email": email, "role": "operator"})
    assert created.status_code == 201, created.text
    match = re.search(r'id="invitation-link" type="text" readonly value="([^"]+)"',
                      created.text)
    assert match, created.text
    link = match.group(1)
    assert link.startswith(f"{server.settings.base_url}/invitations/accept#inv_")
    assert 'data-copy="#invitation-link"' in created.text
    token = link.split("#", 1)[1]

    listing = admin.client.get(f"/o/{org.slug}/members")
    assert token not in listing.text and email in listing.text
    assert "pending" in listing.text
    assert accept(server, token).status_code == 200
    accepted = admin.client.get(f"/o/{org.slug}/members").text
    assert 'status-accepted">accepted' in accepted

    invalid = admin.client.post(f"/o/{org.slug}/invitations",
                                data={"email": "not-an-email", "role": "viewer"})
    assert invalid.status_code == 422
    assert "not a valid email address" in invalid.text
    assert 'value="not-an-email"' in invalid.text  # the form keeps what was typed
    member = admin.client.post(f"/o/{org.slug}/invitations",
                               data={"email": email, "role": "viewer"})
    assert member.status_code == 409
    assert f"{email} is already a member of this organization." in member.text

    other = f"revoked-{secrets.token_hex(4)}@example.org"
    pending = admin.client.post(f"/o/{org.slug}/invitations",
                                data={"email": other, "role": "viewer"})
    other_token = re.search(r"accept#(inv_[A-Za-z0-9_-]+)", pending.text).group(1)
    invitation_id = admin.client.get(f"/api/v1/orgs/{org.slug}/invitations").json()[0]["id"]
    revoked = admin.client.post(f"/o/{org.slug}/invitations/{invitation_id}/revoke")
    assert revoked.status_code == 303
    assert accept(server, other_token).status_code == 404
    assert 'status-revoked">revoked' in admin.client.get(f"/o/{org.slug}/members").text


# --- API keys and settings -----------------------------------------------------------------


def test_api_key_token_is_shown_once_and_revocable(server: Server, org: Org) -> None:
    admin = org.admin
    name = f"ci-{secrets.token_hex(3)}"
    created = admin.client.post(f"/o/{org.slug}/settings/api-keys",
                                data={"name": name, "role": "viewer", "expires_in_days": "30"})
    assert created.status_code == 201, created.text
    token = re.search(r'id="api-key-token" type="text" readonly value="(enx_[^"]+)"',
                      created.text).group(1)
    with api_key_client(server, token) as client:
        assert client.get(f"/api/v1/orgs/{org.slug}/agents").status_code == 200
    listing = admin.client.get(f"/o/{org.slug}/settings/api-keys")
    assert token not in listing.text
    assert name in listing.text and f"enx_…{token[-4:]}" in html.unescape(listing.text)
    assert admin.email in listing.text  # created by

    key = next(k for k in admin.client.get(f"/api/v1/orgs/{org.slug}/api-keys").json()
               if k["name"] == name)
    assert key["expires_at"] is not None
    revoked = admin.client.post(f"/o/{org.slug}/settings/api-keys/{key['id']}/revoke")
    assert revoked.status_code == 303
    with api_key_client(server, token) as client:
        assert client.get(f"/api/v1/orgs/{org.slug}/agents").status_code == 401
    assert 'status-revoked">revoked' in admin.client.get(
        f"/o/{org.slug}/settings/api-keys").text

    for data, field, message in (
            ({"name": "", "role": "viewer", "expires_in_days": "30"}, "name",
             "Give the key a name"),
            ({"name": "x", "role": "root", "expires_in_days": "30"}, "role", "Input should be"),
            ({"name": "x", "role": "viewer", "expires_in_days": "9999"}, "expires_in_days",
             "less than or equal to 3650")):
        refused = admin.client.post(f"/o/{org.slug}/settings/api-keys", data=data)
        assert refused.status_code == 422, data
        assert f'id="{field}-error"' in refused.text and message in refused.text, data
    never = admin.client.post(f"/o/{org.slug}/settings/api-keys",
                              data={"name": "forever", "role": "builder",
                                    "expires_in_days": "never"})
    assert never.status_code == 201
    assert "does not expire" in never.text

    builder = org.members["builder"]
    assert builder.client.get(f"/o/{org.slug}/settings/api-keys").status_code == 403


def test_api_keys_are_paginated(server: Server, platform_admin: Actor) -> None:
    small = make_org(server, platform_admin, "keys", roles=("admin",), with_keys=False)
    for n in range(51):
        made = small.admin.client.post(f"/api/v1/orgs/{small.slug}/api-keys",
                                       json={"name": f"key-{n:02d}", "role": "viewer"})
        assert made.status_code == 201
    first = small.admin.client.get(f"/o/{small.slug}/settings/api-keys")
    assert first.text.count('data-label="Name"') == 50
    assert "Page 1 of 2" in first.text
    assert f'href="/o/{small.slug}/settings/api-keys?page=2"' in first.text
    second = small.admin.client.get(f"/o/{small.slug}/settings/api-keys", params={"page": "2"})
    assert second.text.count('data-label="Name"') == 1
    assert ">key-00<" in second.text  # newest first: the first key made is last
    beyond = small.admin.client.get(f"/o/{small.slug}/settings/api-keys",
                                    params={"page": "99"})
    assert "Page 2 of 2" in beyond.text


def test_settings_overview_shows_the_organization(org: Org) -> None:
    page = org.admin.client.get(f"/o/{org.slug}/settings")
    assert page.status_code == 200
    for fact in (org.name, org.slug, "default", "active"):
        assert fact in page.text
    assert f'href="/o/{org.slug}/settings/api-keys"' in page.text
    assert f'href="/o/{org.slug}/settings/llm"' in page.text
    builder_view = org.members["builder"].client.get(f"/o/{org.slug}/settings")
    assert builder_view.status_code == 200
    assert "/settings/api-keys" not in builder_view.text
    assert org.members["operator"].client.get(f"/o/{org.slug}/settings").status_code == 403


def test_llm_settings_save_validate_test_and_never_show_the_key(org: Org) -> None:
    admin, builder = org.admin, org.members["builder"]
    url = f"/o/{org.slug}/settings/llm"
    page = admin.client.get(url)
    assert page.status_code == 200 and "No key is set." in page.text

    refused = admin.client.post(url, data={"provider": "openai_compatible",
                                           "base_url": "http://127.0.0.1:9/v1",
                                           "default_model": "m", "api_key": "sk-typed-secret"})
    assert refused.status_code == 422
    assert 'id="base_url-error"' in refused.text
    assert "sk-typed-secret" not in refused.text
    assert 'value="http://127.0.0.1:9/v1"' in refused.text
    missing = admin.client.post(url, data={"provider": "anthropic", "default_model": ""})
    assert missing.status_code == 422 and 'id="default_model-error"' in missing.text
    not_number = admin.client.post(url, data={"provider": "scripted", "temperature": "warm"})
    assert not_number.status_code == 422 and 'id="temperature-error"' in not_number.text
    too_hot = admin.client.post(url, data={"provider": "scripted", "temperature": "3"})
    assert too_hot.status_code == 422 and "less than or equal to 2" in too_hot.text

    secret = f"sk-ant-{secrets.token_hex(8)}"
    saved = admin.client.post(url, data={"provider": "anthropic", "default_model": "claude-x",
                                         "api_key": secret, "temperature": "0.2",
                                         "max_tokens": "512"})
    assert saved.status_code == 303 and saved.headers["location"] == f"{url}?saved=1"
    after = admin.client.get(saved.headers["location"])
    assert "Settings saved." in after.text and "A key is set." in after.text
    assert secret not in after.text
    assert 'value="claude-x"' in after.text and 'value="0.2"' in after.text
    api = admin.client.get(f"/api/v1/orgs/{org.slug}/settings/llm").json()
    assert api["has_api_key"] is True and api["max_tokens"] == 512

    # Saving again with the key field empty keeps the key; the checkbox clears it.
    kept = admin.client.post(url, data={"provider": "anthropic", "default_model": "claude-y"})
    assert kept.status_code == 303
    assert admin.client.get(f"/api/v1/orgs/{org.slug}/settings/llm").json()["has_api_key"]
    read_only = builder.client.get(url)
    assert read_only.status_code == 200
    assert "a key is set" in read_only.text and "claude-y" in read_only.text
    assert "<form" not in read_only.text.split('id="main"', 1)[1]
    assert builder.client.post(url, data={"provider": "scripted"}).status_code == 403
    cleared = admin.client.post(url, data={"provider": "scripted", "clear_api_key": "1"})
    assert cleared.status_code == 303
    assert "No key is set." in admin.client.get(url).text

    tested = admin.client.post(f"{url}/test")
    assert tested.status_code == 200
    assert "Connected." in tested.text and "The model answered: &#39;ok&#39;" in tested.text
    assert org.members["viewer"].client.get(url).status_code == 403


def test_forms_need_the_csrf_field_or_header(server: Server, org: Org) -> None:
    admin = org.admin
    with anonymous(server) as browser_like:
        browser_like.cookies.update(admin.client.cookies)
        page = browser_like.get(f"/o/{org.slug}/settings/api-keys")
        token = csrf_of(page)
        missing = browser_like.post(f"/o/{org.slug}/settings/api-keys",
                                    data={"name": "no-csrf", "role": "viewer",
                                          "expires_in_days": "7"})
        assert missing.status_code == 403 and "CSRF" in missing.text
        made = browser_like.post(f"/o/{org.slug}/settings/api-keys",
                                 data={"name": "with-csrf", "role": "viewer",
                                       "expires_in_days": "7", "csrf_token": token})
        assert made.status_code == 201
        forged = browser_like.post(f"/o/{org.slug}/agents",
                                   data={"csrf_token": "x" * len(token)},
                                   files={"package": ("p.zip", b"x", "application/zip")})
        assert forged.status_code == 403
    names = [k["name"] for k in admin.client.get(f"/api/v1/orgs/{org.slug}/api-keys").json()]
    assert "with-csrf" in names and "no-csrf" not in names
