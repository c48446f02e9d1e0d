"""The operator's dashboard pages over real HTTP: sessions, start form, session page,
approvals, reports.

The threat model, page by page: another organization's ids get the same not-found page as
random ids; a role without the scope gets the forbidden page and sees no control it cannot
use; forms validate on the server and come back with per-field errors; decisions are final
(409) and only the approver role decides (403, with the service's message); a report's raw HTML
is shown escaped, never run.
"""

from __future__ import annotations

import json
import re
import uuid
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest

from enginex.agents.cli import zip_directory
from enginex.kit.errors import NOT_FOUND_MESSAGE
from tests.factories import (
    Org,
    Server,
    deploy_agent,
    pending_approval,
    start_session,
    wait_for_status,
)

INPUTS_AGENT = {
    "agent": {"id": "all-inputs", "name": "All inputs", "version": "1.0.0",
              "description": "Takes one input of every type and reports them."},
    "inputs": {
        "title": {"type": "string", "required": True, "description": "A short title"},
        "notes": {"type": "string", "multiline": True, "default": "none"},
        "hours": {"type": "number", "required": True},
        "people": {"type": "integer", "default": 1},
        "urgent": {"type": "boolean", "default": False},
        "region": {"type": "string", "enum": ["eu", "us"], "required": True},
        "tags": {"type": "array"},
        "extra": {"type": "object"},
    },
    "graph": {
        "entry_node": "report", "terminal_nodes": ["report"], "max_steps": 2,
        "nodes": [{"id": "report", "node_type": "report", "title": "Inputs",
                   "template": "# {{ title }}\n\nHours: {{ hours }}\n"}],
        "edges": [],
    },
}

ADMIN_GATE_AGENT = {
    "agent": {"id": "admin-gate", "name": "Admin gate", "version": "1.0.0"},
    "graph": {
        "entry_node": "ask", "terminal_nodes": ["done"], "max_steps": 4,
        "nodes": [
            {"id": "ask", "node_type": "approval", "question": "Spend **the budget**?",
             "options": ["approve", "reject"], "approver_role": "admin",
             "output_key": "decision"},
            {"id": "done", "node_type": "report", "title": "Done", "template": "# Done\n"},
        ],
        "edges": [{"id": "go", "source": "ask", "target": "done", "condition": "always"}],
    },
}


def deploy_manifest(org: Org, manifest: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / manifest["agent"]["id"]
    folder.mkdir()
    (folder / "agent.json").write_text(json.dumps(manifest))
    response = org.members["builder"].client.post(
        f"/api/v1/orgs/{org.slug}/agents",
        files={"package": ("package.zip", zip_directory(folder), "application/zip")})
    assert response.status_code in (200, 201), response.text


def page(client: httpx.Client, path: str, **kwargs: Any) -> httpx.Response:
    return client.get(path, follow_redirects=False, **kwargs)


def post_form(client: httpx.Client, path: str, data: dict[str, str]) -> httpx.Response:
    """A browser form post: the CSRF token travels in the form, not in a header."""
    token = client.headers.get("X-CSRF-Token", "")
    with httpx.Client(base_url=client.base_url, cookies=client.cookies, timeout=30) as browser:
        return browser.post(path, data={"csrf_token": token, **data}, follow_redirects=False)


def text_of(html: str) -> str:
    return unescape(re.sub(r"<[^>]+>", " ", html))


def session_links(html: str, org: Org) -> list[str]:
    return re.findall(rf'href="/o/{re.escape(org.slug)}/sessions/([0-9a-f-]{{36}})"', html)


# --- sessions list -----------------------------------------------------------------------------


def test_sessions_list_filters_paginates_and_refreshes(server: Server, org_a: Org,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    deploy_agent(org_a, "noop_three")
    deploy_agent(org_a, "quick_report")
    noops = [start_session(org_a, {}, agent="noop-three") for _ in range(2)]
    quick = start_session(org_a, {"note": "hello"}, agent="quick-report")
    for run in [*noops, quick]:
        wait_for_status(org_a, run["id"], {"succeeded"})
    viewer = org_a.members["viewer"].client
    base = f"/o/{org_a.slug}/sessions"

    listed = page(viewer, base)
    assert listed.status_code == 200
    assert session_links(listed.text, org_a) == [quick["id"], noops[1]["id"], noops[0]["id"]]
    assert "status-succeeded" in listed.text
    assert "Start a session" not in listed.text  # a viewer may not start sessions
    assert 'hx-trigger="every 4s"' in listed.text  # the first page refreshes itself

    by_agent = page(viewer, base, params={"agent": "quick-report"})
    assert session_links(by_agent.text, org_a) == [quick["id"]]
    by_status = page(viewer, base, params={"status": "failed"})
    assert session_links(by_status.text, org_a) == []
    assert "No sessions match these filters." in by_status.text
    future = page(viewer, base, params={"from": "2999-01-01"})
    assert session_links(future.text, org_a) == []
    today = page(viewer, base, params={"to": "2999-01-01", "from": "2000-01-01"})
    assert len(session_links(today.text, org_a)) == 3

    bad = page(viewer, base, params={"status": "exploded", "from": "yesterday"})
    assert bad.status_code == 422
    assert "must be one of queued, running" in bad.text
    assert "must be a date like 2026-11-30" in bad.text
    reversed_range = page(viewer, base, params={"from": "2026-02-01", "to": "2026-01-01"})
    assert reversed_range.status_code == 422
    assert "must not be before the start date" in reversed_range.text

    # Cursor pagination (a page of two here), keeping the filters in the links.
    monkeypatch.setattr("enginex.runs.web.PAGE_SIZE", 2)
    first = page(viewer, base, params={"status": "succeeded"})
    assert session_links(first.text, org_a) == [quick["id"], noops[1]["id"]]
    next_href = unescape(re.search(r'href="([^"]+)" rel="next"', first.text).group(1))
    assert "status=succeeded" in next_href and "cursor=" in next_href
    second = page(viewer, next_href)
    assert session_links(second.text, org_a) == [noops[0]["id"]]
    assert 'rel="next"' not in second.text and "First page" in second.text
    assert 'hx-trigger="every 4s"' not in second.text  # nothing there can change any more
    forged = page(viewer, base, params={"cursor": "not-a-cursor"})
    assert forged.status_code == 422 and "page link is not valid" in forged.text

    # The live refresh gets the table alone, under the same access rule.
    fragment = page(viewer, base, headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert fragment.text.lstrip().startswith('<div id="sessions-table"')
    assert "<html" not in fragment.text
    operator = page(org_a.members["operator"].client, base)
    assert "Start a session" in operator.text


def test_pages_of_another_org_are_not_found(server: Server, org_a: Org, org_b: Org) -> None:
    deploy_agent(org_a)
    run = start_session(org_a, {"timesheet": "date,person,project,hours\nsecret-note,1,2,3"})
    wait_for_status(org_a, run["id"], {"waiting_approval"})
    approval = pending_approval(org_a, run["id"])
    stranger = org_b.members["operator"].client
    for path in (f"/o/{org_a.slug}/sessions/{run['id']}",
                 f"/o/{org_b.slug}/sessions/{run['id']}",
                 f"/o/{org_b.slug}/sessions/{run['id']}/live"):
        foreign = page(stranger, path)
        random = page(stranger, path.replace(run["id"], str(uuid.uuid4())))
        assert foreign.status_code == random.status_code == 404
        assert foreign.text == random.text
        assert NOT_FOUND_MESSAGE in foreign.text and "secret-note" not in foreign.text
    # Not even a well-formed id: the same page again.
    garbage = page(stranger, f"/o/{org_b.slug}/sessions/not-an-id")
    assert garbage.status_code == 404 and NOT_FOUND_MESSAGE in garbage.text
    for action in ("cancel", "fork"):
        refused = post_form(stranger, f"/o/{org_b.slug}/sessions/{run['id']}/{action}",
                            {"step": "1"})
        assert refused.status_code == 404 and NOT_FOUND_MESSAGE in refused.text
    decide = post_form(stranger, f"/o/{org_b.slug}/approvals/{approval['id']}/decision",
                       {"decision": "approve"})
    random = post_form(stranger, f"/o/{org_b.slug}/approvals/{uuid.uuid4()}/decision",
                       {"decision": "approve"})
    assert decide.status_code == random.status_code == 404
    assert decide.text == random.text
    assert pending_approval(org_a, run["id"])["status"] == "pending"
    assert wait_for_status(org_a, run["id"], {"waiting_approval"})["status"] == \
        "waiting_approval"
    # org_b's badge counts org_b's approvals only; org_b's lists show none of org_a's.
    assert page(stranger, f"/o/{org_b.slug}/approvals/badge").text.strip() == ""
    for listing in ("sessions", "approvals", "reports"):
        shown = page(stranger, f"/o/{org_b.slug}/{listing}")
        assert shown.status_code == 200
        assert run["id"] not in shown.text and approval["id"] not in shown.text


# --- the start form ----------------------------------------------------------------------------


def test_start_form_is_generated_from_inputs_and_validates_each_field(
        server: Server, org_a: Org, tmp_path: Path) -> None:
    deploy_manifest(org_a, INPUTS_AGENT, tmp_path)
    operator = org_a.members["operator"].client
    base = f"/o/{org_a.slug}/sessions/new"

    chooser = page(operator, base)
    assert chooser.status_code == 200
    assert f'href="{base}?agent=all-inputs"' in chooser.text
    form = page(operator, base, params={"agent": "all-inputs"})
    assert form.status_code == 200
    html = form.text
    assert re.search(r'<input type="text" id="input-title" name="inputs.title" required', html)
    assert re.search(r'<textarea id="input-notes" name="inputs.notes"[^>]*>none</textarea>', html)
    assert 'inputmode="decimal" id="input-hours"' in html
    assert 'inputmode="numeric" id="input-people"' in html and 'value="1"' in html
    assert re.search(r'<input type="checkbox" id="input-urgent" name="inputs.urgent"', html)
    assert re.search(r'<select id="input-region" name="inputs.region"', html)
    assert '<option value="&#34;eu&#34;"' in html
    assert re.search(r'<textarea id="input-tags" name="inputs.tags"', html)
    assert "A short title" in html

    refused = post_form(operator, base, {
        "agent": "all-inputs", "version": "1.0.0", "inputs.title": "  ",
        "inputs.hours": "lots", "inputs.people": "2.5", "inputs.region": '"mars"',
        "inputs.tags": "[1, 2", "inputs.extra": "[1]"})
    assert refused.status_code == 422
    errors = dict(re.findall(r'<p class="field-error" id="input-([a-z]+)-error">([^<]*)</p>',
                             refused.text))
    assert errors["title"] == "must not be empty"
    assert errors["hours"] == "must be a number, like 3.5"
    assert errors["people"] == "must be a whole number, like 42"
    assert unescape(errors["region"]) == "must be one of ['eu', 'us']"
    assert errors["tags"].startswith("must be a JSON array, like [1, 2]; the JSON is invalid")
    assert errors["extra"] == "must be a object"
    assert set(errors) == {"title", "hours", "people", "region", "tags", "extra"}
    assert 'aria-invalid="true" aria-describedby="input-hours-hint input-hours-error"' \
        in refused.text
    assert 'value="lots"' in refused.text  # what was typed stays in the form
    missing = post_form(operator, base, {"agent": "all-inputs", "version": "1.0.0"})
    assert missing.status_code == 422
    assert "required" in text_of(missing.text)

    started = post_form(operator, base, {
        "agent": "all-inputs", "version": "1.0.0", "inputs.title": "Week 45",
        "inputs.notes": "line one\r\nline two", "inputs.hours": "37.5", "inputs.people": "",
        "inputs.urgent": "on", "inputs.region": '"eu"', "inputs.tags": '["a", "b"]',
        "inputs.extra": '{"k": 1}'})
    assert started.status_code == 303, started.text
    run_id = started.headers["location"].rsplit("/", 1)[1]
    assert started.headers["location"] == f"/o/{org_a.slug}/sessions/{run_id}"
    body = operator.get(f"/api/v1/orgs/{org_a.slug}/sessions/{run_id}").json()
    assert body["inputs"] == {"title": "Week 45", "notes": "line one\nline two", "hours": 37.5,
                              "people": 1, "urgent": True, "region": "eu",
                              "tags": ["a", "b"], "extra": {"k": 1}}

    viewer = org_a.members["viewer"].client
    assert page(viewer, base, params={"agent": "all-inputs"}).status_code == 403
    assert post_form(viewer, base, {"agent": "all-inputs"}).status_code == 403
    assert page(operator, base, params={"agent": "no-such-agent"}).status_code == 404
    assert page(operator, base, params={"agent": "all-inputs",
                                        "version": "9.9.9"}).status_code == 404


# --- the session page --------------------------------------------------------------------------


def test_session_page_shows_graph_approval_and_decides_once(server: Server,
                                                            org_a: Org) -> None:
    deploy_agent(org_a)
    run = start_session(org_a)
    wait_for_status(org_a, run["id"], {"waiting_approval"})
    operator = org_a.members["operator"].client
    path = f"/o/{org_a.slug}/sessions/{run['id']}"

    shown = page(operator, path)
    assert shown.status_code == 200
    html = shown.text
    assert "status-waiting_approval" in html
    assert f'data-events-url="/api/v1/orgs/{org_a.slug}/sessions/{run["id"]}/events"' in html
    assert 'data-live="true"' in html and '<script src="/static/sessions.js" defer>' in html
    assert re.search(r'class="node node-current" aria-current="step" '
                     r'data-node="manager_approval"', html)
    assert 'class="node node-visited" data-node="summarise"' in html
    assert 'class="node node-idle" data-node="write_report"' in html
    assert "<table>" in html and "<td>Alice</td>" in html  # the question's Markdown table
    assert 'name="decision" value="approve"' in html and "Cancel session" in html
    assert "Replay from here" not in html  # only finished sessions replay
    for kind in ("queued", "node started", "llm response", "approval requested", "checkpoint"):
        assert f'<span class="event-kind">{kind}</span>' in html

    viewer_html = page(org_a.members["viewer"].client, path).text
    assert "Waiting for approval" in viewer_html
    assert 'name="decision"' not in viewer_html and "Cancel session" not in viewer_html
    assert "You can read this approval" in viewer_html

    approval = pending_approval(org_a, run["id"])
    decision_path = f"/o/{org_a.slug}/approvals/{approval['id']}/decision"
    no_choice = post_form(operator, decision_path, {"return_to": "session", "comment": "hm"})
    assert no_choice.status_code == 422 and "Choose a decision" in no_choice.text
    assert ">hm</textarea>" in no_choice.text
    decided = post_form(operator, decision_path, {"decision": "approve", "comment": "fine",
                                                  "return_to": "session"})
    assert decided.status_code == 303 and decided.headers["location"] == path
    again = post_form(operator, decision_path, {"decision": "reject", "return_to": "session"})
    assert again.status_code == 409
    assert "already approved; decisions are final" in text_of(again.text)
    done = wait_for_status(org_a, run["id"], {"succeeded"})
    assert done["status"] == "succeeded"

    finished = page(operator, path).text
    assert 'data-live="false"' in finished and "status-succeeded" in finished
    assert "node-current" not in finished
    assert "fine" in text_of(finished)  # the decision's comment in the timeline
    assert "Hourly tracking report" in finished  # the session's report is linked
    assert finished.count("Replay from here") == 4  # every checkpoint but the last one

    live = page(operator, f"{path}/live")
    assert live.status_code == 200 and live.text.lstrip().startswith('<div id="session-live"')


def test_cancel_and_replay_from_the_session_page(server: Server, org_a: Org) -> None:
    deploy_agent(org_a)
    run = start_session(org_a)
    wait_for_status(org_a, run["id"], {"waiting_approval"})
    operator = org_a.members["operator"].client
    path = f"/o/{org_a.slug}/sessions/{run['id']}"
    viewer = org_a.members["viewer"].client
    assert post_form(viewer, f"{path}/cancel", {}).status_code == 403

    cancelled = post_form(operator, f"{path}/cancel", {})
    assert cancelled.status_code == 303 and cancelled.headers["location"] == path
    assert wait_for_status(org_a, run["id"], {"cancelled"})["status"] == "cancelled"
    again = post_form(operator, f"{path}/cancel", {})
    assert again.status_code == 409
    assert "already cancelled; there is nothing to cancel" in text_of(again.text)

    bad_step = post_form(operator, f"{path}/fork", {"step": "first"})
    assert bad_step.status_code == 422 and "Replay button" in bad_step.text
    unknown = post_form(operator, f"{path}/fork", {"step": "99"})
    assert unknown.status_code == 404 and "no checkpoint 99" in unknown.text
    assert post_form(viewer, f"{path}/fork", {"step": "1"}).status_code == 403
    replay = post_form(operator, f"{path}/fork", {"step": "1"})
    assert replay.status_code == 303
    new_id = replay.headers["location"].rsplit("/", 1)[1]
    assert new_id != run["id"]
    forked = wait_for_status(org_a, new_id, {"waiting_approval"})
    assert forked["parent_run_id"] == run["id"] and forked["forked_from_step"] == 1
    forked_page = page(operator, replay.headers["location"]).text
    assert f'href="/o/{org_a.slug}/sessions/{run["id"]}"' in forked_page
    assert "from checkpoint 1" in forked_page


# --- approvals ---------------------------------------------------------------------------------


def test_inbox_lists_pending_first_and_enforces_the_approver_role(
        server: Server, org_a: Org, tmp_path: Path) -> None:
    deploy_agent(org_a)
    deploy_manifest(org_a, ADMIN_GATE_AGENT, tmp_path)
    hours = start_session(org_a)
    gate = start_session(org_a, {}, agent="admin-gate")
    wait_for_status(org_a, hours["id"], {"waiting_approval"})
    wait_for_status(org_a, gate["id"], {"waiting_approval"})
    operator = org_a.members["operator"].client
    inbox_path = f"/o/{org_a.slug}/approvals"

    badge = page(operator, f"{inbox_path}/badge")
    assert badge.status_code == 200 and '<span class="badge"' in badge.text
    assert ">2</span>" in badge.text
    inbox = page(operator, inbox_path)
    assert inbox.status_code == 200
    html = inbox.text
    assert "2 pending" in html and "Nothing is waiting" not in html
    gate_approval = pending_approval(org_a, gate["id"])
    hours_approval = pending_approval(org_a, hours["id"])
    assert "<strong>the budget</strong>" in html  # questions are rendered Markdown
    # The operator decides the operator's approval, not the admin's.
    assert f'action="{inbox_path}/{hours_approval["id"]}/decision"' in html
    assert f'action="{inbox_path}/{gate_approval["id"]}/decision"' not in html
    assert "Decided by the 'admin' role or an admin; your role is 'operator'." in html

    forbidden = post_form(operator, f"{inbox_path}/{gate_approval['id']}/decision",
                          {"decision": "approve", "comment": "mine now"})
    assert forbidden.status_code == 403
    assert ("This approval can be decided by the &#39;admin&#39; role (or an admin); your role "
            "is &#39;operator&#39;.") in forbidden.text
    assert ">mine now</textarea>" not in forbidden.text  # no form for a role that may not decide

    decided = post_form(org_a.admin.client, f"{inbox_path}/{gate_approval['id']}/decision",
                        {"decision": "approve", "comment": "budget ok"})
    assert decided.status_code == 303 and decided.headers["location"] == inbox_path
    wait_for_status(org_a, gate["id"], {"succeeded"})
    again = post_form(org_a.admin.client, f"{inbox_path}/{gate_approval['id']}/decision",
                      {"decision": "reject"})
    assert again.status_code == 409 and "already approved" in again.text

    after = page(operator, inbox_path).text
    pending_part, recent_part = after.split('id="recent-title"')
    assert hours_approval["id"] in pending_part and gate_approval["id"] not in pending_part
    assert gate_approval["id"] in recent_part and "budget ok" in recent_part
    assert ">1</span>" in page(operator, f"{inbox_path}/badge").text
    only_approved = page(operator, inbox_path, params={"status": "approved"}).text
    assert gate_approval["id"] in only_approved and hours_approval["id"] not in only_approved
    assert page(operator, inbox_path, params={"status": "maybe"}).status_code == 422

    viewer = org_a.members["viewer"].client
    viewer_inbox = page(viewer, inbox_path).text
    assert hours_approval["id"] in viewer_inbox and 'name="decision"' not in viewer_inbox
    assert post_form(viewer, f"{inbox_path}/{hours_approval['id']}/decision",
                     {"decision": "approve"}).status_code == 403
    # The nav of every org page carries the badge, loaded from the badge route.
    assert f'hx-get="{inbox_path}/badge"' in page(viewer, f"/o/{org_a.slug}").text


# --- reports -----------------------------------------------------------------------------------


def test_reports_list_and_view_render_markdown_safely(server: Server, org_a: Org) -> None:
    deploy_agent(org_a, "quick_report")
    hostile = ("<script>alert('x')</script> <img src=x onerror=alert(1)> "
               "[click](javascript:alert(1))")
    run = start_session(org_a, {"note": hostile}, agent="quick-report")
    wait_for_status(org_a, run["id"], {"succeeded"})
    viewer = org_a.members["viewer"].client
    report = viewer.get(f"/api/v1/orgs/{org_a.slug}/reports",
                        params={"session": run["id"]}).json()[0]

    listed = page(viewer, f"/o/{org_a.slug}/reports")
    assert listed.status_code == 200
    assert f'href="/o/{org_a.slug}/reports/{report["id"]}"' in listed.text
    assert f'href="/o/{org_a.slug}/sessions/{run["id"]}"' in listed.text
    narrowed = page(viewer, f"/o/{org_a.slug}/reports", params={"session": run["id"]})
    assert narrowed.text.count(f'/reports/{report["id"]}"') == 1
    assert page(viewer, f"/o/{org_a.slug}/reports",
                params={"session": "nope"}).status_code == 422
    other = page(viewer, f"/o/{org_a.slug}/reports", params={"session": str(uuid.uuid4())})
    assert "No reports yet" in other.text

    shown = page(viewer, f"/o/{org_a.slug}/reports/{report['id']}")
    assert shown.status_code == 200
    html = shown.text
    assert "<h1>Quick report</h1>" in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html or \
        "&lt;script&gt;alert('x')&lt;/script&gt;" in html
    assert "<script>alert" not in html and "<img" not in html
    assert 'href="javascript:' not in html
    download = f"/api/v1/orgs/{org_a.slug}/reports/{report['id']}/download"
    assert f'href="{download}"' in html
    got = viewer.get(download)
    assert got.status_code == 200 and hostile in got.text

    # Signed out: every operator page sends the visitor to sign-in and back.
    with httpx.Client(base_url=server.base_url, timeout=30) as anonymous_client:
        for path in ("sessions", "sessions/new", "approvals", "reports", "approvals/badge",
                     f"reports/{report['id']}", f"sessions/{run['id']}"):
            response = page(anonymous_client, f"/o/{org_a.slug}/{path}")
            assert response.status_code == 303
            assert response.headers["location"] == f"/login?next=/o/{org_a.slug}/{path}"
    builder = org_a.members["builder"].client
    assert page(builder, f"/o/{org_a.slug}/sessions/new").status_code == 403
    assert post_form(builder, f"/o/{org_a.slug}/sessions/{run['id']}/cancel",
                     {}).status_code == 403


def test_markdown_tables_use_classes_not_inline_styles() -> None:
    from enginex.reports.web import render_markdown

    html = str(render_markdown("| a | b | c |\n|:--|--:|:-:|\n| 1 | 2 | 3 |\n\n![x](http://x/y.png)"))
    assert "style=" not in html
    assert '<th class="align-right">b</th>' in html and '<td class="align-center">3</td>' in html
    assert "<img" not in html
