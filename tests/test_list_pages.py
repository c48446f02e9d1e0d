"""Cursor pages of the members, agents, API keys and invitations lists (issue 13, item 5):
each list stays a JSON array (the shape clients already read) and, when more follow, names
the next page in ``Link: <…>; rel="next"``. Pages are complete and stable while rows are
added, a cursor from nowhere is refused with a message, and the client CLI follows the links.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import pytest

from tests.factories import Org, Server, add_member
from tests.test_packages import hourly_manifest, with_manifest


def _follow(org: Org, path: str, limit: int, between_pages: Callable[[], None]
            ) -> list[dict[str, Any]]:
    """Every item of ``path`` as the org admin reads it, page by page through the Link
    header, calling ``between_pages`` after each page (to add rows while paging)."""
    client = org.admin.client
    url: str | None = f"/api/v1/orgs/{org.slug}/{path}?limit={limit}"
    items: list[dict[str, Any]] = []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.text
        page = response.json()
        assert isinstance(page, list) and len(page) <= limit
        items.extend(page)
        link = response.headers.get("link")
        url = link[1:link.index(">")] if link else None
        assert url is None or (url.startswith(f"/api/v1/orgs/{org.slug}/{path}?")
                               and link.endswith('>; rel="next"'))
        between_pages()
    return items


def _invite(org: Org) -> str:
    response = org.admin.client.post(
        f"/api/v1/orgs/{org.slug}/invitations",
        json={"email": f"p-{secrets.token_hex(4)}@example.org", "role": "viewer"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _new_key(org: Org) -> str:
    response = org.admin.client.post(f"/api/v1/orgs/{org.slug}/api-keys",
                                     json={"name": f"k-{secrets.token_hex(3)}",
                                           "role": "viewer"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _deploy(org: Org) -> str:
    manifest = hourly_manifest()
    key = f"agent-{secrets.token_hex(4)}"
    manifest["agent"]["id"] = key
    response = org.members["builder"].client.post(
        f"/api/v1/orgs/{org.slug}/agents",
        files={"package": ("package.zip", with_manifest(manifest), "application/zip")})
    assert response.status_code == 201, response.text
    return key


def _add_member(server: Server, org: Org) -> str:
    return str(add_member(server, org, "viewer").user_id)


LISTS: dict[str, tuple[str, Callable[[Server, Org], str]]] = {
    "invitations": ("id", lambda server, org: _invite(org)),
    "api-keys": ("id", lambda server, org: _new_key(org)),
    "agents": ("key", lambda server, org: _deploy(org)),
    "members": ("user_id", _add_member),
}


@pytest.mark.parametrize("path", list(LISTS))
def test_pages_are_complete_and_stable_while_rows_are_added(server: Server, org_a: Org,
                                                            path: str) -> None:
    key, add = LISTS[path]
    for _ in range(5):
        add(server, org_a)
    before = [item[key] for item in _follow(org_a, path, 100, lambda: None)]
    assert len(before) >= 5
    added_meanwhile: list[str] = []
    paged = _follow(org_a, path, 2, lambda: added_meanwhile.append(add(server, org_a)))
    seen = [item[key] for item in paged]
    assert len(seen) == len(set(seen)), "an item appeared on two pages"
    assert seen == before, "pages skipped, repeated or reordered rows that existed"
    assert not set(added_meanwhile) & set(seen), "rows added while paging moved the pages"
    stamp = "joined_at" if path == "members" else "created_at"
    if path != "agents":  # AgentOut has no timestamp; its order is checked through `before`
        stamps = [item[stamp] for item in paged]
        assert stamps == sorted(stamps, reverse=True), "not newest first"
    everything = [item[key] for item in _follow(org_a, path, 500, lambda: None)]
    assert everything[:len(added_meanwhile)] == list(reversed(added_meanwhile))
    assert everything[len(added_meanwhile):] == before


def test_another_orgs_rows_never_appear_on_a_page(server: Server, org_a: Org,
                                                  org_b: Org) -> None:
    _invite(org_b)
    _new_key(org_b)
    for path, (key, _add) in LISTS.items():
        theirs = {item[key] for item in _follow(org_b, path, 500, lambda: None)}
        ours = {item[key] for item in _follow(org_a, path, 1, lambda: None)}
        assert not theirs & ours - {"hourly-tracking"}, path  # agent keys are per org


def _forged(payload: Any) -> str:
    import base64

    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "nope", "!!!", _forged([1, 2]), _forged(["2026-01-01T00:00:00", "not-a-uuid"]),
    _forged({"a": 1}), _forged("ab"), "x" * 150])
def test_a_cursor_that_no_page_gave_is_refused_for_people(server: Server, org_a: Org,
                                                          cursor: str) -> None:
    for path in LISTS:
        response = org_a.admin.client.get(f"/api/v1/orgs/{org_a.slug}/{path}",
                                          params={"cursor": cursor})
        assert response.status_code == 422, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == "validation_failed", error
        assert "not a cursor from a previous page; start without it" in error["message"]


def test_a_limit_out_of_range_is_refused(server: Server, org_a: Org) -> None:
    for path in LISTS:
        for limit in ("0", "501", "many"):
            response = org_a.admin.client.get(f"/api/v1/orgs/{org_a.slug}/{path}",
                                              params={"limit": limit})
            assert response.status_code == 422, (path, limit, response.text)
