"""The demo agent computes from its input (issue 17, item 1): its totals are the timesheet's,
a malformed timesheet fails the first step with the reason, and its agent page says the model
is scripted while the organization has no LLM configured."""

from __future__ import annotations

from tests.factories import (
    Org,
    Server,
    deploy_agent,
    pending_approval,
    private_network,
    start_session,
    wait_for_status,
)

OTHER_SHEET = ("date,person,project,hours\n2026-12-01,Zoe,Kepler,3.25\n"
               "2026-12-02,Zoe,Kepler,4\n2026-12-02,Yan,Vega,1.5\n")


def test_the_totals_come_from_the_timesheet(server: Server, org_a: Org) -> None:
    deploy_agent(org_a)
    run = start_session(org_a, {"timesheet": OTHER_SHEET})
    waiting = wait_for_status(org_a, run["id"], {"waiting_approval", "failed"})
    assert waiting["status"] == "waiting_approval", waiting
    question = pending_approval(org_a, run["id"])["question"]
    assert "| Yan | Vega | 1.50 |" in question and "| Zoe | Kepler | 7.25 |" in question
    assert "| **Total** | | **8.75** |" in question
    assert "Alice" not in question and "37.5" not in question


def test_a_malformed_timesheet_fails_with_the_reason(server: Server, org_a: Org) -> None:
    deploy_agent(org_a)
    cases = {
        "hello, this is not a timesheet":
            "line 1: expected the columns date, person, project, hours",
        "date,person,project,hours\n2026-12-01,Zoe,Kepler,three\n":
            "line 2: 'three' in column 'hours' is not a number",
        "date,person,hours\n2026-12-01,Zoe,3\n": "the header line has no column 'project'",
    }
    runs = {start_session(org_a, {"timesheet": text})["id"]: reason
            for text, reason in cases.items()}
    for run_id, reason in runs.items():
        failed = wait_for_status(org_a, run_id, {"failed", "waiting_approval"})
        assert failed["status"] == "failed", failed
        assert reason in failed["error"], failed["error"]
        events = org_a.admin.client.get(
            f"/api/v1/orgs/{org_a.slug}/sessions/{run_id}/events").json()
        # The model never ran: the step that reads the data failed first.
        assert not [e for e in events if e["kind"] == "llm_request"]


def test_the_agent_page_says_the_model_is_scripted(server: Server, org_a: Org) -> None:
    deploy_agent(org_a)
    page = org_a.admin.client.get(f"/o/{org_a.slug}/agents/hourly-tracking")
    assert page.status_code == 200
    assert 'id="scripted-model"' in page.text
    assert f'href="/o/{org_a.slug}/settings/llm"' in page.text
    with private_network(server, True):  # a loopback base URL; never called here
        saved = org_a.admin.client.put(f"/api/v1/orgs/{org_a.slug}/settings/llm", json={
            "provider": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
            "default_model": "gpt-x"})
    assert saved.status_code == 200, saved.text
    page = org_a.admin.client.get(f"/o/{org_a.slug}/agents/hourly-tracking")
    assert 'id="scripted-model"' not in page.text
