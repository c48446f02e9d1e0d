"""The sessions list over real HTTP (SQLite and PostgreSQL), issue 17 item 5: filters by who
started a session and by its id (whole or its first characters), agents by name, "Start a
session" from the agents list, and the pending-approvals count that refreshed parts carry for
the navigation badge.

The threat model: searching another organization's session id finds nothing (the same empty
list as a random id); a member filter is a filter, never a way to read another org's rows;
bad filter values come back as 422 with the field's message, never a 500.
"""

from __future__ import annotations

import re
import uuid
from html import unescape

from tests.factories import Org, Server, deploy_agent, start_session, wait_for_status
from tests.test_operator_pages import page, session_links, text_of


def _start_as(org: Org, role: str, agent: str) -> dict[str, str]:
    response = org.members[role].client.post(f"/api/v1/orgs/{org.slug}/sessions",
                                             json={"agent": agent, "inputs": {}})
    assert response.status_code == 201, response.text
    return response.json()


def test_sessions_list_filters_by_starter_and_id_and_names_agents(
        server: Server, org_a: Org, org_b: Org) -> None:
    deploy_agent(org_a, "noop_three")
    by_operator = start_session(org_a, {}, agent="noop-three")
    by_admin = _start_as(org_a, "admin", "noop-three")
    for run in (by_operator, by_admin):
        wait_for_status(org_a, run["id"], {"succeeded"})
    viewer = org_a.members["viewer"].client
    base = f"/o/{org_a.slug}/sessions"
    operator_id = org_a.members["operator"].user_id
    admin_id = org_a.admin.user_id

    listed = page(viewer, base)
    assert listed.status_code == 200
    assert session_links(listed.text, org_a) == [by_admin["id"], by_operator["id"]]
    rows = text_of(listed.text)
    # The agent by its name, its key only on hover; who started each session, by email.
    assert "Three no-op steps" in rows
    assert re.search(r'<span title="noop-three">Three no-op steps</span>', listed.text)
    assert org_a.members["operator"].email in rows and org_a.admin.email in rows
    assert f'<option value="{operator_id}">' in listed.text  # the "Started by" choices

    mine = page(viewer, base, params={"started_by": operator_id})
    assert session_links(mine.text, org_a) == [by_operator["id"]]
    theirs = page(viewer, base, params={"started_by": admin_id})
    assert session_links(theirs.text, org_a) == [by_admin["id"]]
    nobody = page(viewer, base, params={"started_by": str(uuid.uuid4())})
    assert nobody.status_code == 200 and session_links(nobody.text, org_a) == []
    bad_member = page(viewer, base, params={"started_by": "alice"})
    assert bad_member.status_code == 422 and "choose a member from the list" in bad_member.text

    # By id: the whole id, the short id the pages show, any case, with or without dashes.
    target = by_operator["id"]
    for text in (target, target[:8], target[:8].upper(), target.replace("-", "")[:12],
                 f"  {target[:13]} "):
        found = page(viewer, base, params={"id": text})
        assert found.status_code == 200, text
        assert session_links(found.text, org_a) == [target], text
    for text in ("xyz12345", "abc", "12345678-zz"):
        refused = page(viewer, base, params={"id": text})
        assert refused.status_code == 422, text
        assert "use a session id or its first characters" in unescape(refused.text)
        assert 'aria-describedby="filter-id-error"' in refused.text
    combined = page(viewer, base, params={"id": target[:8], "started_by": admin_id})
    assert session_links(combined.text, org_a) == []
    assert "No sessions match these filters." in combined.text
    # The filters survive in the live refresh and the page links.
    assert f"started_by={operator_id}" in unescape(mine.text)

    # The REST API has the same filters.
    api = f"/api/v1/orgs/{org_a.slug}/sessions"
    by_api = viewer.get(api, params={"started_by": operator_id}).json()["items"]
    assert [r["id"] for r in by_api] == [target]
    assert [r["id"] for r in viewer.get(api, params={"id": target[:8]}).json()["items"]] == \
        [target]
    for text in ("xyz", "abc", "0123456789abcdef0123456789abcdef00"):
        refused_api = viewer.get(api, params={"id": text})
        assert refused_api.status_code == 422, text
        assert refused_api.json()["error"]["message"]

    # Another organization's member searching this id finds what a random id finds: nothing.
    stranger = org_b.members["viewer"].client
    foreign = page(stranger, f"/o/{org_b.slug}/sessions", params={"id": target})
    random_id = str(uuid.uuid4())
    random = page(stranger, f"/o/{org_b.slug}/sessions", params={"id": random_id})
    assert foreign.status_code == random.status_code == 200
    assert session_links(foreign.text, org_b) == session_links(random.text, org_b) == []
    assert foreign.text.replace(target, "ID") == random.text.replace(random_id, "ID")
    foreign_filter = page(stranger, f"/o/{org_b.slug}/sessions",
                          params={"started_by": operator_id})
    assert foreign_filter.status_code == 200 and target not in foreign_filter.text


def test_agents_list_starts_sessions_and_parts_carry_the_pending_count(
        server: Server, org_a: Org) -> None:
    deploy_agent(org_a)
    run = start_session(org_a)
    wait_for_status(org_a, run["id"], {"waiting_approval"})
    slug = org_a.slug

    operator = org_a.members["operator"].client
    agents = page(operator, f"/o/{slug}/agents")
    assert agents.status_code == 200
    assert f'href="/o/{slug}/sessions/new?agent=hourly-tracking"' in agents.text
    assert 'aria-label="Start a session of Hourly tracking"' in agents.text
    assert f'href="/o/{slug}/sessions?agent=hourly-tracking"' in agents.text
    viewer = org_a.members["viewer"].client
    assert "/sessions/new?agent=" not in page(viewer, f"/o/{slug}/agents").text

    # The table the list refreshes and the session header both say how many approvals wait.
    table = page(viewer, f"/o/{slug}/sessions", headers={"HX-Request": "true"})
    assert 'data-pending-approvals="1"' in table.text
    live = page(viewer, f"/o/{slug}/sessions/{run['id']}/live")
    assert live.status_code == 200 and 'data-pending-approvals="1"' in live.text
    detail = page(viewer, f"/o/{slug}/sessions/{run['id']}")
    assert re.search(r'<h1 id="session-title">Hourly tracking <span', detail.text)
    assert '<script src="/static/runs.js" defer>' in detail.text
