"""The audit log (SQLite and PostgreSQL): a per-organization hash chain that detects any
single changed, deleted or reordered row; append-only for the app role; contiguous under
concurrent appends; the API (filters, cursor pages, JSON Lines export), the CLI verifier and
the dashboard page.

Tampering is done as the database's owner would do it: on SQLite by writing the file, on
PostgreSQL as the superuser with triggers disabled (``session_replication_role = replica``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from enginex.audit import service as audit_service
from enginex.audit.chain import GENESIS, verify
from enginex.audit.cli import _verify
from enginex.db import Database, set_tenant
from enginex.orgs import repository as org_repo
from enginex.tenancy.context import system_context
from tests.conftest import APP_ROLE, OWNER_ROLE, PG_ADMIN_DSN
from tests.factories import Org, Server, anonymous, make_org, run_db
from tests.test_cli import run_main

EXPECTED_404 = {"error": {"code": "not_found"}}


def small_org(server: Server, platform_admin: Any, label: str = "audit") -> Org:
    """An organization with an admin and a viewer (about five audit entries)."""
    return make_org(server, platform_admin, label, roles=("admin", "viewer"), with_keys=False)


def verdict(server: Server, org: Org) -> tuple[bool, str]:
    return asyncio.run(_verify(server.settings, org.slug))


def api_entries(org: Org, **params: Any) -> dict[str, Any]:
    response = org.admin.client.get(f"/api/v1/orgs/{org.slug}/audit", params=params)
    assert response.status_code == 200, response.text
    return response.json()


# --- writing the database as its owner ----------------------------------------------------------


@contextmanager
def owner_sql(server: Server) -> Iterator[Callable[[str, tuple], None]]:
    """Run SQL straight on the database, past the application and its triggers."""
    if server.backend == "sqlite":
        path = server.settings.resolved_database_url.split("///", 1)[1]
        conn = sqlite3.connect(path, timeout=15)
        try:
            yield lambda sql, params: conn.execute(sql, params)
            conn.commit()
        finally:
            conn.close()
        return
    dbname = server.settings.database_url.rsplit("/", 1)[1]
    with psycopg.connect(make_conninfo(PG_ADMIN_DSN, dbname=dbname)) as conn:
        conn.execute("SET session_replication_role = replica")  # triggers off
        yield lambda sql, params: conn.execute(sql.replace("?", "%s"), params)


def tenant_param(server: Server, org: Org) -> str:
    return uuid.UUID(org.id).hex if server.backend == "sqlite" else org.id


def tamper_change(run: Callable[[str, tuple], None], tenant: str, seq: int, last: int) -> None:
    run("UPDATE audit_entries SET action = 'member.removed' WHERE tenant_id = ? AND seq = ?",
        (tenant, seq))


def tamper_change_details(run: Callable[[str, tuple], None], tenant: str, seq: int,
                          last: int) -> None:
    run("UPDATE audit_entries SET details = '{\"role\": \"admin\", \"x\": 1}' "
        "WHERE tenant_id = ? AND seq = ?", (tenant, seq))


def tamper_rehash(run: Callable[[str, tuple], None], tenant: str, seq: int, last: int) -> None:
    run("UPDATE audit_entries SET hash = ? WHERE tenant_id = ? AND seq = ?",
        ("f" * 64, tenant, seq))


def tamper_delete(run: Callable[[str, tuple], None], tenant: str, seq: int, last: int) -> None:
    run("DELETE FROM audit_entries WHERE tenant_id = ? AND seq = ?", (tenant, seq))


def tamper_swap(run: Callable[[str, tuple], None], tenant: str, seq: int, last: int) -> None:
    """Reorder: rows ``seq`` and ``seq + 1`` trade places."""
    update = "UPDATE audit_entries SET seq = ? WHERE tenant_id = ? AND seq = ?"
    run(update, (-1, tenant, seq))
    run(update, (seq, tenant, seq + 1))
    run(update, (seq + 1, tenant, -1))


def tamper_delete_last(run: Callable[[str, tuple], None], tenant: str, seq: int,
                       last: int) -> None:
    run("DELETE FROM audit_entries WHERE tenant_id = ? AND seq = ?", (tenant, last))


@pytest.mark.parametrize(("tamper", "broken"), [
    (tamper_change, 2), (tamper_change_details, 3), (tamper_rehash, 2), (tamper_delete, 3),
    (tamper_swap, 2), (tamper_delete_last, "last"),
])
def test_any_single_changed_deleted_or_reordered_row_is_found(
        server: Server, platform_admin: Any, tamper: Callable[..., None],
        broken: int | str) -> None:
    org = small_org(server, platform_admin)
    other = small_org(server, platform_admin, "bystander")
    intact, message = verdict(server, org)
    last = api_entries(org, limit=1)["items"][0]["seq"]
    assert intact and message == f"chain intact: {last} entries" and last >= 4

    with owner_sql(server) as run:
        tamper(run, tenant_param(server, org), 2 if broken == 2 else 3, last)

    expected = last if broken == "last" else broken
    intact, message = verdict(server, org)
    assert not intact
    assert message.startswith(f"chain broken at seq {expected}:"), message
    assert verdict(server, other)[0]  # the other organization's chain is its own
    check = org.admin.client.get(f"/api/v1/orgs/{org.slug}/audit/verify").json()
    assert check["intact"] is False and check["broken_seq"] == expected


def test_the_cli_exits_0_when_intact_and_1_at_the_first_broken_link(
        server: Server, platform_admin: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    org = small_org(server, platform_admin)
    env = {"ENGINEX_MASTER_KEY": server.settings.master_key}
    if server.backend == "postgres":
        env["ENGINEX_DATABASE_URL"] = server.settings.database_url
    data_dir = server.settings.data_dir
    status, out, _ = run_main(monkeypatch, capsys, data_dir, "audit", "verify", "--org",
                              org.slug, **env)
    count = api_entries(org, limit=1)["items"][0]["seq"]
    assert (status, out.strip()) == (0, f"chain intact: {count} entries")

    with owner_sql(server) as run:
        tamper_delete(run, tenant_param(server, org), 2, count)
    status, out, _ = run_main(monkeypatch, capsys, data_dir, "audit", "verify", "--org",
                              org.slug, **env)
    assert status == 1 and out.startswith("chain broken at seq 2: entry is missing"), out

    status, _, err = run_main(monkeypatch, capsys, data_dir, "audit", "verify", "--org",
                              "no-such-org", **env)
    assert status == 2 and "no organization with slug 'no-such-org'" in err


# --- the chain is appended correctly -----------------------------------------------------------


def test_concurrent_appends_in_one_org_form_one_contiguous_chain(
        server: Server, platform_admin: Any) -> None:
    org = small_org(server, platform_admin)
    before = api_entries(org, limit=1)["items"][0]["seq"]
    org_id = uuid.UUID(org.id)
    appends = 24

    async def append_all() -> None:
        db = Database(server.settings, pool_size=8)

        async def append(n: int) -> None:
            async with db.sessions() as session, session.begin():
                await set_tenant(session, org_id)
                await audit_service.record(session, system_context(org_id, org.slug),
                                           "test.concurrent", target_kind="test",
                                           target_id=str(n), details={"n": n})
        try:
            await asyncio.gather(*(append(n) for n in range(appends)))
        finally:
            await db.dispose()

    asyncio.run(append_all())
    exported = export(org)
    assert [e["seq"] for e in exported] == list(range(1, before + appends + 1))
    assert sorted(e["details"]["n"] for e in exported if e["action"] == "test.concurrent") \
        == list(range(appends))
    assert verdict(server, org) == (True, f"chain intact: {before + appends} entries")


def export(org: Org) -> list[dict[str, Any]]:
    response = org.admin.client.get(f"/api/v1/orgs/{org.slug}/audit/export")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def test_the_export_is_the_whole_chain_and_verifies_on_its_own(
        server: Server, platform_admin: Any) -> None:
    org = small_org(server, platform_admin)
    lines = export(org)
    assert lines[0]["seq"] == 1 and lines[0]["prev_hash"] == GENESIS
    assert lines[0]["action"] == "org.created" and lines[0]["actor_kind"] == "platform_admin"
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(lines))
    entries = [SimpleNamespace(**{**e, "tenant_id": org.id,
                                  "at": datetime.fromisoformat(e["at"])}) for e in lines]
    assert verify(entries).intact
    entries[1].details = {**entries[1].details, "tampered": True}
    assert verify(entries).broken_seq == 2
    # personal data is referenced, not copied: no email address anywhere in the chain
    assert "@" not in json.dumps(lines)


# --- the API ------------------------------------------------------------------------------------


def test_admins_filter_and_page_newest_first(server: Server, platform_admin: Any) -> None:
    org = small_org(server, platform_admin)
    everything = api_entries(org, limit=200)["items"]
    seqs = [e["seq"] for e in everything]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) >= 4

    first = api_entries(org, limit=2)
    second = api_entries(org, limit=2, cursor=first["next_cursor"])
    assert [e["seq"] for e in first["items"] + second["items"]] == seqs[:4]

    added = api_entries(org, action="member.added")["items"]
    assert added and {e["action"] for e in added} == {"member.added"}
    assert {e["action"] for e in api_entries(org, action="member.")["items"]} <= {
        "member.added", "member.role_changed", "member.removed"}
    viewer_id = org.members["viewer"].user_id
    by_target = api_entries(org, target_kind="user", target_id=viewer_id)["items"]
    # The viewer's own sign-ins are audited against the viewer too.
    assert [e["action"] for e in by_target if not e["action"].startswith("auth.")] == [
        "member.added"]
    assert "auth.login_succeeded" in {e["action"] for e in by_target}
    by_actor = api_entries(org, actor=viewer_id)["items"]
    assert by_actor and all(e["actor_id"] == viewer_id for e in by_actor)
    assert api_entries(org, **{"from": "2999-01-01T00:00:00Z"})["items"] == []
    assert len(api_entries(org, to="2999-01-01T00:00:00Z", limit=200)["items"]) == len(seqs)

    bad = org.admin.client.get(f"/api/v1/orgs/{org.slug}/audit", params={"cursor": "nope"})
    assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "cursor"


def test_only_admins_of_the_org_read_its_audit_log(server: Server, platform_admin: Any) -> None:
    org = small_org(server, platform_admin)
    other = small_org(server, platform_admin, "other")
    for path in ("", "/export", "/verify"):
        url = f"/api/v1/orgs/{org.slug}/audit{path}"
        with anonymous(server) as client:
            assert client.get(url).status_code == 401
        assert org.members["viewer"].client.get(url).status_code == 403
        foreign = other.admin.client.get(url)
        assert foreign.status_code == 404
        assert foreign.json()["error"]["code"] == EXPECTED_404["error"]["code"]
        assert org.admin.client.get(url).status_code == 200


# --- PostgreSQL: append-only for the app, and tenant deletion still works ---------------------


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_the_app_role_cannot_update_delete_or_truncate_audit_rows(
        server: Server, platform_admin: Any) -> None:
    org = small_org(server, platform_admin)
    dbname = server.settings.database_url.rsplit("/", 1)[1]
    statements = ["UPDATE audit_entries SET action = 'x'", "DELETE FROM audit_entries",
                  "TRUNCATE audit_entries"]
    with psycopg.connect(make_conninfo(PG_ADMIN_DSN, dbname=dbname, user=APP_ROLE)) as app:
        for statement in statements:
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="permission denied"), app.transaction():
                app.execute("SELECT set_config('app.tenant_id', %s, true)", (org.id,))
                app.execute(statement)
        with app.transaction():  # appending is allowed (the app does it)
            app.execute("SELECT set_config('app.tenant_id', %s, true)", (org.id,))
            assert app.execute("SELECT count(*) FROM audit_entries").fetchone()[0] >= 4
    # the owner role (and anyone with the privilege) is stopped by the trigger
    with psycopg.connect(make_conninfo(PG_ADMIN_DSN, dbname=dbname, user=OWNER_ROLE)) as owner:
        for statement in statements:
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="append-only"), owner.transaction():
                owner.execute("SELECT set_config('app.tenant_id', %s, true)", (org.id,))
                owner.execute(statement)
    assert verdict(server, org)[0]


def test_deleting_a_tenant_removes_its_chain_and_nothing_else(
        server: Server, platform_admin: Any) -> None:
    from enginex.credentials.rotation import delete_tenant

    doomed = small_org(server, platform_admin, "doomed")
    kept = small_org(server, platform_admin, "kept")

    async def work(session: Any) -> None:
        org = await org_repo.get_org_by_slug(session, doomed.slug)
        await delete_tenant(session, org, storage=None)

    run_db(server, work)

    async def gone(session: Any) -> bool:
        return await org_repo.get_org_by_slug(session, doomed.slug) is None

    assert run_db(server, gone)
    assert verdict(server, kept)[0]
    assert api_entries(kept, limit=1)["items"]
    if server.backend == "postgres":
        dbname = server.settings.database_url.rsplit("/", 1)[1]
        with psycopg.connect(make_conninfo(PG_ADMIN_DSN, dbname=dbname)) as su:
            left = su.execute("SELECT count(*) FROM audit_entries WHERE tenant_id = %s",
                              (doomed.id,)).fetchone()[0]
            assert left == 0


# --- the dashboard page ---------------------------------------------------------------------


def test_the_audit_page_lists_filters_and_verifies(server: Server, platform_admin: Any) -> None:
    org = small_org(server, platform_admin)
    admin = org.admin.client
    page = admin.get(f"/o/{org.slug}/audit")
    assert page.status_code == 200
    assert 'title="member.added">Member added<' in page.text
    assert 'title="org.created">Organization created<' in page.text
    assert f'href="/o/{org.slug}/audit"' in page.text  # in the org nav

    filtered = admin.get(f"/o/{org.slug}/audit", params={"action": "org.created"})
    assert 'title="org.created"' in filtered.text and 'title="member.added"' not in filtered.text
    refused = admin.get(f"/o/{org.slug}/audit", params={"actor": "x", "from": "soon"})
    assert refused.status_code == 422
    assert "must be a user or API key id" in refused.text and "must be a date" in refused.text

    ok = admin.get(f"/o/{org.slug}/audit/verify")
    assert ok.status_code == 200 and "Chain verified" in ok.text
    partial = admin.get(f"/o/{org.slug}/audit/verify", headers={"HX-Request": "true"})
    assert partial.text.startswith('<p id="audit-verdict" class="verdict ok"')

    with owner_sql(server) as run:
        tamper_change(run, tenant_param(server, org), 2, 0)
    broken = admin.get(f"/o/{org.slug}/audit/verify")
    assert "Chain broken at seq 2" in broken.text

    viewer = org.members["viewer"].client.get(f"/o/{org.slug}/audit")
    assert viewer.status_code == 403
    assert f'href="/o/{org.slug}/audit"' not in \
        org.members["viewer"].client.get(f"/o/{org.slug}").text


def test_pages_of_the_audit_log_follow_the_cursor(server: Server, platform_admin: Any) -> None:
    from enginex.audit import web

    org = small_org(server, platform_admin)
    org_id = uuid.UUID(org.id)

    async def many(session: Any) -> None:
        await set_tenant(session, org_id)
        for n in range(web.PAGE_SIZE):
            await audit_service.record(session, system_context(org_id, org.slug), "test.bulk",
                                       target_kind="test", target_id=str(n))

    run_db(server, many)
    first = org.admin.client.get(f"/o/{org.slug}/audit")
    assert 'rel="next"' in first.text
    next_href = first.text.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0]
    second = org.admin.client.get(next_href.replace("&amp;", "&"))
    # The codes are also the action filter's choices: look for the entry's row (its title).
    assert second.status_code == 200 and 'title="org.created"' in second.text
    assert 'title="org.created"' not in first.text


def test_sign_ins_are_recorded_in_each_org_and_failures_are_throttled(
        server: Server, platform_admin: Any) -> None:
    org = small_org(server, platform_admin)
    user_id = uuid.UUID(org.admin.user_id)

    async def sign_ins() -> list[int]:
        db = Database(server.settings, pool_size=2)
        try:
            return [await audit_service.record_login(db.sessions, user_id, succeeded=ok)
                    for ok in (True, False, False, False)]
        finally:
            await db.dispose()

    assert asyncio.run(sign_ins()) == [1, 1, 0, 0]  # one org; failures once per window
    actions = [e["action"] for e in api_entries(org, action="auth.")["items"]]
    # Newest first; the fixture's own sign-ins through the API are recorded too.
    assert actions[0] == "auth.login_failed" and actions.count("auth.login_failed") == 1
    assert actions[1] == "auth.login_succeeded"
    assert verdict(server, org)[0]


def test_sign_ins_are_audited_in_the_users_organizations(server: Server,
                                                         platform_admin: Any) -> None:
    from tests.factories import client_from, sign_in

    org = small_org(server, platform_admin, "login")
    email = org.admin.email
    with client_from(server) as client:
        wrong = client.post("/api/v1/auth/login", json={"email": email,
                                                        "password": "not the password!"})
        assert wrong.status_code == 401
        unknown = client.post("/api/v1/auth/login", json={"email": "nobody-x@example.org",
                                                          "password": "not the password!"})
        assert unknown.status_code == 401
    again = sign_in(server, email)
    actions = [e["action"] for e in api_entries(org, action="auth.")["items"]]
    assert actions.count("auth.login_failed") == 1
    assert actions.count("auth.login_succeeded") >= 2  # the fixture's sign-in and this one
    again.close()
