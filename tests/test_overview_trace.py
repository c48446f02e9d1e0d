"""The organization's home (``/o/{org}``) and the session trace, through HTTP on both
backends: the figures are this organization's only, each part is shown to the roles that may
read it, the queries read indexes and rollups, and a failed session says where and why.

The browser half (charts drawn under the CSP, screenshots) is tests/browser/test_overview.py.
"""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from enginex.kit.expressions import describe
from tests.factories import (
    Org,
    Server,
    deploy_agent,
    pending_approval,
    start_session,
    wait_for_status,
)

NOT_A_TIMESHEET = "hello, this is not a timesheet"


def _chart(page: str, element_id: str) -> dict[str, Any]:
    found = re.search(rf'id="{element_id}"[^>]*data-chart="([^"]*)"', page)
    assert found, f"no #{element_id} chart on the page"
    return dict(json.loads(html.unescape(found.group(1))))


def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


@pytest.fixture
def busy_org(server: Server, org_a: Org) -> dict[str, str]:
    """org_a with one session succeeded, one failed on its input, one waiting for approval."""
    deploy_agent(org_a)
    ok = start_session(org_a)["id"]
    bad = start_session(org_a, {"timesheet": NOT_A_TIMESHEET})["id"]
    waiting = start_session(org_a)["id"]
    wait_for_status(org_a, ok, {"waiting_approval"})
    approval = pending_approval(org_a, ok)
    decided = org_a.members["operator"].client.post(
        f"/api/v1/orgs/{org_a.slug}/approvals/{approval['id']}/decision",
        json={"decision": "approve", "comment": "looks right"})
    assert decided.status_code == 200, decided.text
    wait_for_status(org_a, ok, {"succeeded"})
    wait_for_status(org_a, bad, {"failed"})
    wait_for_status(org_a, waiting, {"waiting_approval"})
    return {"ok": ok, "bad": bad, "waiting": waiting}


def test_the_home_page_shows_outcomes_usage_approvals_failures_and_top_agents(
        server: Server, org_a: Org, busy_org: dict[str, str]) -> None:
    page = org_a.members["admin"].client.get(f"/o/{org_a.slug}")
    assert page.status_code == 200, page.text
    text = page.text
    sessions = _chart(text, "sessions-chart")
    assert sessions["days"][-1] == _today() and len(sessions["days"]) == 30
    per_outcome = {s["label"]: s["values"][-1] for s in sessions["series"]}
    assert per_outcome["succeeded"] == 1 and per_outcome["failed"] == 1
    assert per_outcome["waiting"] == 1
    usage = _chart(text, "usage-chart")
    assert usage["tokens_in"][-1] > 0 and usage["tokens_out"][-1] > 0
    # Pending approvals link to their session; the failure says why, in the engine's words.
    assert f'href="/o/{org_a.slug}/sessions/{busy_org["waiting"]}"' in text
    assert "Approve the hours for this period?" in text
    assert f'href="/o/{org_a.slug}/sessions/{busy_org["bad"]}"' in text
    failure = wait_for_status(org_a, busy_org["bad"], {"failed"})["error"]
    assert failure and html.escape(failure)[:80] in text
    # Top agents by their name, with the sessions counted in the usage rollups.
    agents = re.search(r'<table class="ov-table ov-agents">(.*?)</table>', text, re.S)
    assert agents and "Hourly tracking" in agents.group(1)
    assert re.search(r'data-label="Sessions">3<', agents.group(1)), agents.group(1)


def test_a_viewer_sees_sessions_but_not_usage_and_another_org_sees_nothing_of_it(
        server: Server, org_a: Org, org_b: Org, busy_org: dict[str, str]) -> None:
    viewer = org_a.members["viewer"].client.get(f"/o/{org_a.slug}")
    assert viewer.status_code == 200
    assert "sessions-chart" in viewer.text
    assert "usage-chart" not in viewer.text and "Top agents" not in viewer.text
    other = org_b.members["admin"].client.get(f"/o/{org_b.slug}")
    assert other.status_code == 200
    assert busy_org["bad"] not in other.text and "Hourly tracking" not in other.text
    counts = _chart(other.text, "sessions-chart")
    assert all(sum(s["values"]) == 0 for s in counts["series"])
    assert not any(_chart(other.text, "usage-chart")["tokens_in"])
    assert "No session has failed." in other.text
    # org_a's home, asked for by org_b's admin: the same not-found as a made-up slug.
    foreign = org_b.members["admin"].client.get(f"/o/{org_a.slug}")
    missing = org_b.members["admin"].client.get("/o/no-such-org-42")
    assert foreign.status_code == missing.status_code == 404


def test_a_failed_session_has_its_failure_on_top_and_a_trace_of_its_steps(
        server: Server, org_a: Org, busy_org: dict[str, str]) -> None:
    page = org_a.members["viewer"].client.get(f"/o/{org_a.slug}/sessions/{busy_org['bad']}")
    assert page.status_code == 200
    text = page.text
    assert "Why this session failed" in text
    assert text.index("Why this session failed") < text.index('id="trace-title"')
    step = re.search(r'<li class="trace-step outcome-failure" id="trace-step-1"'
                     r'.*?</li>\s*(?=</ol>)', text, re.S)
    assert step, "the first step (tabulate) is not marked failed"
    assert "tabulate_csv" in step.group(0) and '<details id="trace-1" open>' in step.group(0)


def test_the_trace_of_a_succeeded_session_has_steps_calls_tokens_and_the_decision(
        server: Server, org_a: Org, busy_org: dict[str, str]) -> None:
    page = org_a.members["admin"].client.get(f"/o/{org_a.slug}/sessions/{busy_org['ok']}")
    text = page.text
    assert "Why this session failed" not in text
    steps = re.findall(r'<li class="trace-step outcome-(\w+)" id="trace-step-(\d+)" '
                       r'data-step="\d+" data-node="(\w+)"', text)
    assert [(n, node) for _, n, node in steps] == [
        ("1", "tabulate"), ("2", "summarise"), ("3", "manager_approval"),
        ("4", "manager_approval"), ("5", "write_report")]
    assert [outcome for outcome, *_ in steps] == [
        "success", "success", "waiting", "success", "success"]
    assert 'class="trace-call call-tool"' in text and 'class="trace-call call-model"' in text
    assert "Decision: <strong>approve</strong> — “looks right”" in text
    assert re.search(r'<rect class="trace-fill" x="[\d.]+" y="1" width="[\d.]+"', text)
    # The scripted model has no price: the admin is told the cost is unknown, not "$0".
    assert "cost unknown" in text
    # The graph's conditional edges read in words; the expression is on hover.
    assert ('title="Condition: approval.decision == &#39;approve&#39;">if approved</span>'
            in text)


@pytest.mark.parametrize(("expression", "words"), [
    ("approval.decision == 'approve'", "approved"),
    ("approval.decision == 'reject'", "rejected"),
    ("'approve' == review.decision", "approved"),
    ("score >= 0.8 and not flagged", "score is at least 0.8 and not flagged"),
    ("kind in ['a', 'b']", "kind is one of “a”, “b”"),
    ("'error' in result.text", "result text contains “error”"),
    ("done == true or (tries < 3 and last_error != null)",
     "done or (tries is below 3 and last error is not empty)"),
    ("approval.decision == ", "approval.decision == "),  # invalid: shown as written
])
def test_conditions_are_described_in_words(expression: str, words: str) -> None:
    assert describe(expression) == words
