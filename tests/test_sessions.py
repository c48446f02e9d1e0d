"""Sessions end to end over real HTTP: deploy, start, approve, report, events, cancel, fork."""

from __future__ import annotations

import json

import httpx

from tests.factories import (
    Org,
    Server,
    deploy_agent,
    pending_approval,
    start_session,
    wait_for_status,
)


def test_operator_journey_to_an_approved_report(server: Server, org_a: Org) -> None:
    deploy_agent(org_a)
    run = start_session(org_a)
    assert run["status"] == "queued" and run["version"] == "1.0.0"
    waiting = wait_for_status(org_a, run["id"], {"waiting_approval", "failed"})
    assert waiting["status"] == "waiting_approval", waiting
    assert waiting["prompt_tokens"] > 0 and waiting["completion_tokens"] > 0
    approval = pending_approval(org_a, run["id"])
    assert "Alice" in approval["question"] and approval["options"] == ["approve", "reject"]
    operator = org_a.members["operator"].client
    decided = operator.post(f"/api/v1/orgs/{org_a.slug}/approvals/{approval['id']}/decision",
                            json={"decision": "approve", "comment": "looks right"})
    assert decided.status_code == 200, decided.text
    assert decided.json()["status"] == "approved"
    again = operator.post(f"/api/v1/orgs/{org_a.slug}/approvals/{approval['id']}/decision",
                          json={"decision": "reject"})
    assert again.status_code == 409
    done = wait_for_status(org_a, run["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done

    events = operator.get(f"/api/v1/orgs/{org_a.slug}/sessions/{run['id']}/events").json()
    kinds = [e["kind"] for e in events]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    for kind in ("queued", "node_started", "llm_request", "llm_response", "tool_call",
                 "tool_result", "approval_requested", "approval_decided", "checkpoint",
                 "report_created", "finished"):
        assert kind in kinds, kind
    checkpoints = operator.get(
        f"/api/v1/orgs/{org_a.slug}/sessions/{run['id']}/checkpoints").json()
    assert checkpoints[-1]["path"] == ["tabulate", "summarise", "manager_approval",
                                       "manager_approval",
                                       "write_report"]
    assert checkpoints[-1]["state"]["approval"]["decision"] == "approve"

    viewer = org_a.members["viewer"].client
    reports = viewer.get(f"/api/v1/orgs/{org_a.slug}/reports",
                         params={"session": run["id"]}).json()
    assert len(reports) == 1
    report = viewer.get(f"/api/v1/orgs/{org_a.slug}/reports/{reports[0]['id']}").json()
    assert "Alice" in report["content"] and "looks right" in report["content"]
    download = viewer.get(f"/api/v1/orgs/{org_a.slug}/reports/{reports[0]['id']}/download")
    assert download.status_code == 200
    assert download.headers["content-disposition"].startswith("attachment")
    assert download.text == report["content"]


def test_rejection_takes_the_other_branch(server: Server, org_a: Org) -> None:
    deploy_agent(org_a)
    run = start_session(org_a)
    wait_for_status(org_a, run["id"], {"waiting_approval"})
    approval = pending_approval(org_a, run["id"])
    response = org_a.admin.client.post(
        f"/api/v1/orgs/{org_a.slug}/approvals/{approval['id']}/decision",
        json={"decision": "reject", "comment": "Bob was on leave"})
    assert response.status_code == 200
    wait_for_status(org_a, run["id"], {"succeeded"})
    report = org_a.admin.client.get(f"/api/v1/orgs/{org_a.slug}/reports",
                                    params={"session": run["id"]}).json()[0]
    assert report["node_id"] == "rejected"


def test_who_may_decide(server: Server, org_a: Org, org_b: Org) -> None:
    deploy_agent(org_a)
    run = start_session(org_a)
    wait_for_status(org_a, run["id"], {"waiting_approval"})
    approval = pending_approval(org_a, run["id"])
    url = f"/api/v1/orgs/{org_a.slug}/approvals/{approval['id']}/decision"
    for role in ("viewer", "builder"):
        denied = org_a.members[role].client.post(url, json={"decision": "approve"})
        assert denied.status_code == 403, (role, denied.text)
    foreign = org_b.admin.client.post(url.replace(org_a.slug, org_b.slug),
                                      json={"decision": "approve"})
    assert foreign.status_code == 404
    bad = org_a.members["operator"].client.post(url, json={"decision": "maybe"})
    assert bad.status_code == 422 and "approve" in bad.json()["error"]["message"]
    assert pending_approval(org_a, run["id"])["status"] == "pending"


def test_inputs_are_validated(server: Server, org_a: Org) -> None:
    deploy_agent(org_a)
    client = org_a.members["operator"].client
    url = f"/api/v1/orgs/{org_a.slug}/sessions"
    missing = client.post(url, json={"agent": "hourly-tracking", "inputs": {}})
    assert missing.status_code == 422
    assert missing.json()["error"]["details"]["errors"] == [
        {"field": "inputs.timesheet", "message": "required"}]
    wrong = client.post(url, json={"agent": "hourly-tracking",
                                   "inputs": {"timesheet": 5, "extra": "x"}})
    fields = {e["field"] for e in wrong.json()["error"]["details"]["errors"]}
    assert wrong.status_code == 422 and fields == {"inputs.timesheet", "inputs.extra"}
    unknown = client.post(url, json={"agent": "no-such-agent", "inputs": {}})
    assert unknown.status_code == 404
    listing = client.get(url).json()
    assert listing["items"] == []


def test_cancel_and_fork(server: Server, org_a: Org) -> None:
    deploy_agent(org_a)
    run = start_session(org_a)
    wait_for_status(org_a, run["id"], {"waiting_approval"})
    client = org_a.members["operator"].client
    base = f"/api/v1/orgs/{org_a.slug}/sessions/{run['id']}"
    cancelled = client.post(f"{base}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert client.post(f"{base}/cancel").status_code == 409
    inbox = client.get(f"/api/v1/orgs/{org_a.slug}/approvals",
                       params={"status": "pending"}).json()
    assert all(a["run_id"] != run["id"] for a in inbox)
    fork = client.post(f"{base}/fork", json={"step": 2})  # after tabulate and summarise
    assert fork.status_code == 201, fork.text
    forked = fork.json()
    assert forked["parent_run_id"] == run["id"] and forked["forked_from_step"] == 2
    wait_for_status(org_a, forked["id"], {"waiting_approval"})
    events = client.get(f"/api/v1/orgs/{org_a.slug}/sessions/{forked['id']}/events").json()
    # The fork starts after the summarising step: no LLM call is made again.
    assert "llm_request" not in [e["kind"] for e in events]


def test_listing_filters_and_pages(server: Server, org_a: Org, org_b: Org) -> None:
    deploy_agent(org_a)
    deploy_agent(org_b)
    mine = [start_session(org_a)["id"] for _ in range(5)]
    start_session(org_b)
    client = org_a.members["viewer"].client
    url = f"/api/v1/orgs/{org_a.slug}/sessions"
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get(url, params=params).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(mine)
    assert client.get(url, params={"agent": "other"}).json()["items"] == []
    bad = client.get(url, params={"cursor": "garbage!"})
    assert bad.status_code == 422
    assert client.get(url, params={"status": "bogus"}).status_code == 422


def test_live_events_over_sse(server: Server, org_a: Org) -> None:
    deploy_agent(org_a)
    run = start_session(org_a)
    url = f"{server.base_url}/api/v1/orgs/{org_a.slug}/sessions/{run['id']}/events"
    headers = {"Accept": "text/event-stream",
               "Cookie": f"{server.settings.session_cookie_name}="
                         f"{org_a.members['viewer'].client.cookies.get(server.settings.session_cookie_name)}"}
    seen: list[tuple[int, str]] = []
    with httpx.stream("GET", url, headers=headers, timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        event_id, kind = None, None
        for line in stream.iter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and event_id is not None and kind:
                assert json.loads(line[6:])["seq"] == event_id
                seen.append((event_id, kind))
                if kind == "approval_requested":
                    break
    assert [s for s, _ in seen] == list(range(1, len(seen) + 1))
    # Resume after the third event with Last-Event-ID.
    resumed: list[int] = []
    with httpx.stream("GET", url, headers={**headers, "Last-Event-ID": "3"},
                      timeout=30) as stream:
        for line in stream.iter_lines():
            if line.startswith("id: "):
                resumed.append(int(line[4:]))
                if len(resumed) == 2:
                    break
    assert resumed == [4, 5]



def test_a_step_that_never_commits_fails_the_run(server: Server, org_a: Org) -> None:
    """A run whose next step was already attempted too often without committing (crashing
    workers, an unreadable version) fails with a clear error instead of retrying forever."""
    import asyncio
    import uuid

    from sqlalchemy import update

    from enginex.cli import _in_transaction
    from enginex.db import set_tenant
    from enginex.runs.engine import MAX_ATTEMPTS_PER_STEP
    from enginex.runs.models import Run

    deploy_agent(org_a)
    run = start_session(org_a)
    waiting = wait_for_status(org_a, run["id"], {"waiting_approval"})

    async def crashed_often(session) -> None:
        await set_tenant(session, uuid.UUID(org_a.id))
        await session.execute(update(Run).where(Run.id == uuid.UUID(run["id"])).values(
            attempts=waiting["step"] + MAX_ATTEMPTS_PER_STEP + 1))

    asyncio.run(_in_transaction(server.settings, crashed_often))
    approval = pending_approval(org_a, run["id"])
    decided = org_a.members["operator"].client.post(
        f"/api/v1/orgs/{org_a.slug}/approvals/{approval['id']}/decision",
        json={"decision": "approve"})
    assert decided.status_code == 200
    failed = wait_for_status(org_a, run["id"], {"failed", "succeeded"})
    assert failed["status"] == "failed"
    assert "could not be completed after" in failed["error"]
    events = org_a.admin.client.get(
        f"/api/v1/orgs/{org_a.slug}/sessions/{run['id']}/events").json()
    assert [e["kind"] for e in events][-2:] == ["error", "finished"]
