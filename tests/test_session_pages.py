"""Cursor pages of the sessions list: stable while sessions are being started, and the
cursor condition is a row-value comparison the (tenant_id, created_at, id) index serves."""

from __future__ import annotations

from typing import Any

from tests.factories import Org, Server, deploy_agent, run_db, start_session


def _page(org: Org, cursor: str | None, limit: int = 3) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    if cursor:
        params["cursor"] = cursor
    response = org.members["viewer"].client.get(f"/api/v1/orgs/{org.slug}/sessions",
                                                params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_pages_are_stable_while_new_sessions_start(server: Server, org_a: Org) -> None:
    deploy_agent(org_a)
    before = [start_session(org_a)["id"] for _ in range(8)]
    seen: list[str] = []
    cursor: str | None = None
    started_meanwhile: list[str] = []
    while True:
        page = _page(org_a, cursor)
        seen.extend(item["id"] for item in page["items"])
        started_meanwhile.append(start_session(org_a)["id"])  # newer than every cursor
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)), "a session appeared on two pages"
    assert seen == list(reversed(before)), "pages skipped or reordered sessions"
    assert not set(started_meanwhile) & set(seen)


def test_the_deep_page_query_uses_the_cursor_index(server: Server, org_a: Org) -> None:
    """On PostgreSQL the planner is asked how it reads a page after a cursor: an index scan
    on ix_runs_tenant_id_created_at_id bounded by the row value, not a filter."""
    if server.backend != "postgres":
        return  # SQLite's planner output names no bound; the query text is the same
    deploy_agent(org_a)
    for _ in range(3):
        start_session(org_a)
    cursor = _page(org_a, None, limit=1)["next_cursor"]
    assert cursor

    async def explain(session: Any) -> str:
        from sqlalchemy import text

        await session.execute(text("SET LOCAL enable_seqscan = off"))
        rows = await session.execute(text(
            "EXPLAIN SELECT id FROM runs WHERE tenant_id = :t "
            "AND (created_at, id) < (now(), gen_random_uuid()) "
            "ORDER BY created_at DESC, id DESC LIMIT 50"), {"t": org_a.id})
        return "\n".join(r[0] for r in rows)

    plan = run_db(server, explain)
    assert "ix_runs_tenant_id_created_at_id" in plan, plan
    assert "Index Cond" in plan and "ROW(" in plan.upper(), plan


def _follow(org: Org, path: str, limit: int = 2) -> list[dict[str, Any]]:
    """Every item of a list answered as a JSON array, following ``Link: rel="next"``."""
    client = org.members["viewer"].client
    url: str | None = f"/api/v1/orgs/{org.slug}/{path}?limit={limit}"
    items: list[dict[str, Any]] = []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page) <= limit
        items.extend(page)
        link = response.headers.get("link")
        url = link[1:link.index(">")] if link else None
        assert url is None or url.startswith(f"/api/v1/orgs/{org.slug}/{path}?")
    return items


def test_approvals_and_reports_page_with_a_next_link(server: Server, org_a: Org) -> None:
    from tests.factories import pending_approval, wait_for_status

    deploy_agent(org_a)
    runs = [start_session(org_a)["id"] for _ in range(5)]
    for run_id in runs:
        assert wait_for_status(org_a, run_id, {"waiting_approval", "failed"})[
            "status"] == "waiting_approval"
    approvals = _follow(org_a, "approvals")
    assert len({a["id"] for a in approvals}) == len(approvals) == 5
    assert {a["run_id"] for a in approvals} == set(runs)
    created = [a["created_at"] for a in approvals]
    assert created == sorted(created, reverse=True), "not newest first"
    operator = org_a.members["operator"].client
    for run_id in runs:
        approval = pending_approval(org_a, run_id)
        decided = operator.post(f"/api/v1/orgs/{org_a.slug}/approvals/{approval['id']}/decision",
                                json={"decision": "approve"})
        assert decided.status_code == 200, decided.text
    for run_id in runs:
        assert wait_for_status(org_a, run_id, {"succeeded", "failed"})["status"] == "succeeded"
    reports = _follow(org_a, "reports")
    assert len({r["id"] for r in reports}) == len(reports) == 5
    assert {r["run_id"] for r in reports} == set(runs)


def test_a_cursor_that_no_page_gave_is_refused_for_people(server: Server, org_a: Org) -> None:
    viewer = org_a.members["viewer"].client
    for path in ("sessions", "approvals", "reports"):
        response = viewer.get(f"/api/v1/orgs/{org_a.slug}/{path}", params={"cursor": "nope"})
        assert response.status_code == 422, (path, response.text)
        assert "start without it" in response.json()["error"]["message"]
