"""API keys created with API keys, through real HTTP.

Threat model: a stolen admin key mints more admin keys so that revoking the stolen key does
not end the intrusion, or mints keys that live longer than the stolen one; an admin reading
the key list cannot tell which keys a program made. A key made by a key therefore records its
parent and its person, never expires after its parent, and is revoked with it (and so are the
keys it made); a key whose parent is gone is refused even if a write path missed it.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import event, update

from enginex.auth.models import ApiKey
from enginex.db import set_tenant
from enginex.kit.errors import NOT_FOUND_MESSAGE
from enginex.kit.time import utcnow
from tests.factories import Org, Server, api_key_client, run_db

EXPECTED_404 = {"error": {"code": "not_found", "message": NOT_FOUND_MESSAGE, "details": {}}}


def keys_url(org: Org) -> str:
    return f"/api/v1/orgs/{org.slug}/api-keys"


def create_key(client: httpx.Client, org: Org, name: str, *, role: str = "admin",
               days: int | None = 30) -> dict[str, Any]:
    created = client.post(keys_url(org), json={"name": name, "role": role,
                                              "expires_in_days": days})
    assert created.status_code == 201, created.text
    return created.json()


def when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def members_status(server: Server, org: Org, token: str) -> httpx.Response:
    with api_key_client(server, token) as client:
        return client.get(f"/api/v1/orgs/{org.slug}/members")


def test_a_key_made_by_a_key_records_its_lineage_and_is_revoked_with_its_parent(
        server: Server, org_a: Org, org_b: Org) -> None:
    admin = org_a.admin
    parent = create_key(admin.client, org_a, "ci-bot")
    assert parent["parent_key_id"] is None and parent["created_by"] == admin.user_id
    with api_key_client(server, parent["token"]) as bot:
        child = create_key(bot, org_a, "minted-by-bot", days=365)
    with api_key_client(server, child["token"]) as minted:
        grandchild = create_key(minted, org_a, "minted-by-minted", days=None)
    unrelated = create_key(admin.client, org_a, "unrelated")

    # The lineage: the parent key and the person behind it, in the list and the detail.
    assert child["parent_key_id"] == parent["id"] and child["created_by"] == admin.user_id
    assert grandchild["parent_key_id"] == child["id"]
    assert grandchild["created_by"] == admin.user_id
    listed = {k["id"]: k for k in admin.client.get(keys_url(org_a)).json()}
    assert listed[child["id"]]["parent_key_id"] == parent["id"]
    assert listed[grandchild["id"]]["parent_key_id"] == child["id"]
    detail = admin.client.get(f"{keys_url(org_a)}/{child['id']}")
    assert detail.status_code == 200, detail.text
    assert detail.json()["parent_key_id"] == parent["id"]
    assert detail.json()["created_by"] == admin.user_id and "token" not in detail.json()
    foreign = org_b.admin.client.get(f"{keys_url(org_b)}/{child['id']}")
    assert foreign.status_code == 404 and foreign.json() == EXPECTED_404

    # Revoking the parent revokes its descendants in the same request; siblings live on.
    for key in (parent, child, grandchild, unrelated):
        assert members_status(server, org_a, key["token"]).status_code == 200
    assert admin.client.delete(f"{keys_url(org_a)}/{parent['id']}").status_code == 204
    for key in (parent, child, grandchild):
        refused = members_status(server, org_a, key["token"])
        assert refused.status_code == 401, refused.text
    assert members_status(server, org_a, unrelated["token"]).status_code == 200
    listed = {k["id"]: k for k in admin.client.get(keys_url(org_a)).json()}
    assert all(listed[k["id"]]["revoked_at"] for k in (parent, child, grandchild))
    assert listed[unrelated["id"]]["revoked_at"] is None

    # One audit entry per revoked key; the descendants name the key that took them along.
    entries = admin.client.get(f"/api/v1/orgs/{org_a.slug}/audit",
                               params={"action": "api_key.revoked"}).json()["items"]
    by_target = {e["target_id"]: e for e in entries}
    assert set(by_target) == {parent["id"], child["id"], grandchild["id"]}
    assert by_target[parent["id"]]["details"] == {}
    for key in (child, grandchild):
        assert by_target[key["id"]]["details"] == {"revoked_with": parent["id"]}
    created = admin.client.get(f"/api/v1/orgs/{org_a.slug}/audit",
                               params={"action": "api_key.created",
                                       "target_id": child["id"]}).json()["items"]
    assert created[0]["details"]["parent_key_id"] == parent["id"]


def test_revoking_a_middle_key_leaves_its_parent_working(server: Server, org_a: Org) -> None:
    parent = create_key(org_a.admin.client, org_a, "top")
    with api_key_client(server, parent["token"]) as top:
        middle = create_key(top, org_a, "middle")
    with api_key_client(server, middle["token"]) as mid:
        bottom = create_key(mid, org_a, "bottom")
    with api_key_client(server, parent["token"]) as top:
        # A key may revoke the keys it made (it holds apikeys:write).
        assert top.delete(f"{keys_url(org_a)}/{middle['id']}").status_code == 204
    assert members_status(server, org_a, parent["token"]).status_code == 200
    for key in (middle, bottom):
        assert members_status(server, org_a, key["token"]).status_code == 401


def test_a_child_never_expires_after_its_parent(server: Server, org_a: Org) -> None:
    admin = org_a.admin.client
    short = create_key(admin, org_a, "seven-days", days=7)
    short_expiry = when(short["expires_at"])
    assert short_expiry is not None
    with api_key_client(server, short["token"]) as bot:
        longer = create_key(bot, org_a, "asked-for-a-year", days=365)
        forever = create_key(bot, org_a, "asked-for-never", days=None)
        sooner = create_key(bot, org_a, "asked-for-a-day", days=1)
    assert when(longer["expires_at"]) == short_expiry
    assert when(forever["expires_at"]) == short_expiry
    one_day = when(sooner["expires_at"])
    assert one_day is not None and one_day < short_expiry

    # A parent without expiry: the child gets what it asked for.
    unlimited = create_key(admin, org_a, "no-expiry", days=None)
    with api_key_client(server, unlimited["token"]) as bot:
        assert create_key(bot, org_a, "still-never", days=None)["expires_at"] is None
        month = when(create_key(bot, org_a, "a-month", days=30)["expires_at"])
    assert month is not None and month > utcnow() + timedelta(days=29)


def test_a_key_whose_parent_is_revoked_or_expired_is_refused_even_if_not_cascaded(
        server: Server, org_a: Org) -> None:
    """Defence in depth: the parent's state is read with the key at authentication, so a row
    the cascade missed (a bug, a manual edit) does not bring the key back."""
    admin = org_a.admin.client
    revoked_parent = create_key(admin, org_a, "parent-revoked-by-hand")
    expired_parent = create_key(admin, org_a, "parent-expired-by-hand")
    children = {}
    for parent in (revoked_parent, expired_parent):
        with api_key_client(server, parent["token"]) as bot:
            children[parent["id"]] = create_key(bot, org_a, f"child of {parent['name']}")

    async def break_parents(db: Any) -> None:
        await set_tenant(db, uuid.UUID(org_a.id))
        now = utcnow()
        await db.execute(update(ApiKey).where(ApiKey.id == uuid.UUID(revoked_parent["id"]))
                         .values(revoked_at=now))
        await db.execute(update(ApiKey).where(ApiKey.id == uuid.UUID(expired_parent["id"]))
                         .values(expires_at=now - timedelta(seconds=1)))

    run_db(server, break_parents)
    for child in children.values():
        refused = members_status(server, org_a, child["token"])
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "key_parent_gone"
        assert "created this key" in refused.json()["error"]["message"]


def test_the_api_keys_page_shows_who_made_a_key_and_through_which_key(
        server: Server, org_a: Org) -> None:
    admin = org_a.admin
    parent = create_key(admin.client, org_a, "ci-bot")
    with api_key_client(server, parent["token"]) as bot:
        create_key(bot, org_a, "deploy-bot")
    page = admin.client.get(f"/o/{org_a.slug}/settings/api-keys")
    assert page.status_code == 200
    row = next(line for line in page.text.split("<tr>") if "deploy-bot" in line)
    assert f"by {admin.email}" in row and "via key “ci-bot”" in row
    top = next(line for line in page.text.split("<tr>") if ">ci-bot<" in line)
    assert f"by {admin.email}" in top and "via key" not in top


def test_the_key_guard_reads_api_keys_once_per_request_even_for_a_key_made_by_a_key(
        server: Server, org_a: Org) -> None:
    """Performance contract of the guard (issue 13): the key, its parent's state, its
    creator's membership and the organization come in ONE statement after the tenant is
    bound, so an API-key request costs what a cookie request costs."""
    parent = create_key(org_a.admin.client, org_a, "ci-bot")
    with api_key_client(server, parent["token"]) as bot:
        child = create_key(bot, org_a, "minted-by-bot")
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "api_keys" in statement:
            statements.append(statement)

    engine = server.app.state.db.engine.sync_engine
    with api_key_client(server, child["token"]) as minted:
        assert minted.get(f"/api/v1/orgs/{org_a.slug}/members").status_code == 200  # touches
        event.listen(engine, "before_cursor_execute", seen)
        try:
            assert minted.get(f"/api/v1/orgs/{org_a.slug}/members").status_code == 200
        finally:
            event.remove(engine, "before_cursor_execute", seen)
    assert len(statements) == 1, statements
