"""Usage metering, plans and quotas, through real HTTP (SQLite and PostgreSQL).

Threat model: an organization must not use more than its plan allows (parallel starts cannot
pass the last slot; a run over its monthly budget stops at a step boundary, nothing lost),
must not see another organization's usage, and bad limits are refused with a clear 4xx.
"""

from __future__ import annotations

import csv
import io
import json
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from enginex.agents.cli import zip_directory
from enginex.db import set_tenant
from enginex.kit.time import utcnow
from enginex.tenancy.context import system_context
from enginex.usage.limits import SEEDED_PLANS
from enginex.usage.models import UsageEvent
from enginex.usage.repository import UsageRepository, next_month
from enginex.usage.service import OrgLimits, over_budget, record_session_started
from tests.factories import (
    Actor,
    Org,
    Server,
    deploy_agent,
    make_org,
    private_network,
    run_db,
    start_session,
    wait_for,
    wait_for_status,
)
from tests.fake_llm import FakeLLM, FakeReply

AGENT_DIR = Path(__file__).parent / "fixtures" / "agents" / "hourly_tracking"


def set_plan(server: Server, admin: Actor, org: Org, **body: Any) -> httpx.Response:
    return admin.client.put(f"/api/v1/admin/tenants/{org.id}/plan", json=body)


def ledger(server: Server, org: Org) -> list[UsageEvent]:
    async def work(session: Any) -> list[UsageEvent]:
        await set_tenant(session, uuid.UUID(org.id))
        stmt = select(UsageEvent).order_by(UsageEvent.occurred_at, UsageEvent.idempotency_key)
        rows = list((await session.execute(stmt)).scalars())
        session.expunge_all()
        return rows

    return run_db(server, work)


def deploy(org: Org, tmp_path: Path, manifest: dict[str, Any]) -> None:
    directory = tmp_path / f"pkg-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    (directory / "agent.json").write_text(json.dumps(manifest))
    response = org.members["builder"].client.post(
        f"/api/v1/orgs/{org.slug}/agents",
        files={"package": ("package.zip", zip_directory(directory), "application/zip")})
    assert response.status_code in (200, 201), response.text


TWO_CALLS = {
    "agent": {"id": "metered", "name": "Metered", "version": "1.0.0"},
    "graph": {"entry_node": "first", "terminal_nodes": ["second"], "max_steps": 5, "nodes": [
        {"id": "first", "node_type": "llm", "model": "mini", "output_keys": ["a"]},
        {"id": "second", "node_type": "llm", "model": "mini", "output_keys": ["b"]}],
        "edges": [{"source": "first", "target": "second", "condition": "on_success"}]}}


@pytest.fixture
def fake() -> Any:
    with FakeLLM() as server:
        yield server


def _llm_org(server: Server, platform_admin: Actor, fake: FakeLLM, tmp_path: Path,
             label: str) -> Org:
    org = make_org(server, platform_admin, label)
    admin = org.admin.client
    with private_network(server, True):
        made = admin.post(f"/api/v1/orgs/{org.slug}/llm/providers", json={
            "name": "fake", "kind": "openai_compatible", "base_url": fake.openai_base_url,
            "allowed_models": ["gpt-4o-mini"]})
        assert made.status_code == 201, made.text
    alias = admin.put(f"/api/v1/orgs/{org.slug}/llm/aliases/mini",
                      json={"provider": "fake", "model": "gpt-4o-mini"})
    assert alias.status_code in (200, 201), alias.text
    deploy(org, tmp_path, TWO_CALLS)
    return org


def test_a_run_records_tokens_and_cost_per_model_and_the_usage_api_agrees(
        server: Server, platform_admin: Actor, org_b: Org, fake: FakeLLM,
        tmp_path: Path) -> None:
    org = _llm_org(server, platform_admin, fake, tmp_path, "meter")
    price = platform_admin.client.put("/api/v1/admin/prices/openai/gpt-4o-mini",
                                      json={"input_per_mtok": "1000", "output_per_mtok": "2000"})
    assert price.status_code == 200, price.text
    fake.queue(FakeReply(tool_calls=[("set_output", {"key": "a", "value": 1})], usage=(11, 7)))
    fake.queue(FakeReply(tool_calls=[("set_output", {"key": "b", "value": 2})], usage=(5, 3)))
    with private_network(server, True):
        run = org.members["operator"].client.post(f"/api/v1/orgs/{org.slug}/sessions",
                                                  json={"agent": "metered", "inputs": {}})
        assert run.status_code == 201, run.text
        done = wait_for_status(org, run.json()["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    rows = ledger(server, org)
    by_kind: dict[str, int] = {}
    for row in rows:
        by_kind[row.kind] = by_kind.get(row.kind, 0) + row.quantity
    assert by_kind.pop("storage_bytes") > 0  # the deployed package
    # This test's own API requests, if a minute ended meanwhile (written once per minute).
    by_kind.pop("api_requests", None)
    assert by_kind == {"session_started": 1, "step": 2, "llm_input_tokens": 16,
                       "llm_output_tokens": 10}
    tokens = [r for r in rows if r.kind.startswith("llm_")]
    assert {(r.provider, r.model) for r in tokens} == {("openai", "gpt-4o-mini")}
    assert all(not r.estimated and r.price == {"source": "override", "input_per_mtok": "1000",
                                                "output_per_mtok": "2000"} for r in tokens)
    assert sum(r.cost_micro_usd for r in tokens) == 16 * 1000 + 10 * 2000
    assert len({r.idempotency_key for r in rows}) == len(rows)

    reader = org.admin.client
    usage = reader.get(f"/api/v1/orgs/{org.slug}/usage",
                       params={"group_by": "kind,provider,model"})
    assert usage.status_code == 200, usage.text
    api = {(r["kind"], r["model"]): (r["quantity"], r["cost_usd"]) for r in usage.json()["rows"]}
    assert api[("llm_input_tokens", "gpt-4o-mini")] == (16, "0.016000")
    assert api[("llm_output_tokens", "gpt-4o-mini")] == (10, "0.020000")
    assert api[("step", "")] == (2, "0.000000")
    exported = reader.get(f"/api/v1/orgs/{org.slug}/usage/export.csv")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(exported.text)))
    assert sum(int(r["quantity"]) for r in table if r["kind"] == "llm_input_tokens") == 16
    assert sum(int(r["quantity"]) for r in table
               if r["kind"] not in ("storage_bytes", "api_requests")) == sum(by_kind.values())
    assert {r["agent"] for r in table if r["kind"] == "step"} == {"metered"}
    # The billing export: rated lines per (kind, provider, model), the same on every call.
    period = utcnow().strftime("%Y-%m")
    billing = f"/api/v1/admin/tenants/{org.id}/billing"
    first = platform_admin.client.get(billing, params={"period": period})
    assert first.status_code == 200, first.text
    lines = [json.loads(line) for line in first.text.splitlines()]
    rated = {(x["kind"], x["model"]): x for x in lines}
    assert rated[("llm_output_tokens", "gpt-4o-mini")]["cost_usd"] == "0.020000"
    assert platform_admin.client.get(billing, params={"period": period}).text == first.text
    as_csv = platform_admin.client.get(billing, params={"period": period, "format": "csv"})
    assert as_csv.status_code == 200 and lines[0]["idempotency_key"] in as_csv.text
    assert platform_admin.client.get(billing, params={"period": "2026-13"}).status_code == 422
    # Another organization sees none of it, and a viewer may not read usage.
    other = org_b.admin.client.get(f"/api/v1/orgs/{org_b.slug}/usage",
                                   params={"group_by": "model"}).json()
    assert all(r["model"] != "gpt-4o-mini" for r in other["rows"])
    assert org_b.admin.client.get(f"/api/v1/orgs/{org.slug}/usage").status_code == 404
    assert org.members["viewer"].client.get(f"/api/v1/orgs/{org.slug}/usage").status_code == 403


def test_the_month_budget_stops_a_run_at_a_step_boundary_and_raising_it_resumes(
        server: Server, platform_admin: Actor, fake: FakeLLM, tmp_path: Path) -> None:
    org = _llm_org(server, platform_admin, fake, tmp_path, "budget")
    assert set_plan(server, platform_admin, org,
                    overrides={"tokens_per_month": 10}).status_code == 200
    fake.queue(FakeReply(tool_calls=[("set_output", {"key": "a", "value": 1})], usage=(11, 7)))
    with private_network(server, True):
        run = org.members["operator"].client.post(f"/api/v1/orgs/{org.slug}/sessions",
                                                  json={"agent": "metered", "inputs": {}})
        assert run.status_code == 201, run.text
        run_id = run.json()["id"]
        paused = wait_for_status(org, run_id, {"paused_quota", "succeeded", "failed"})
        assert paused["status"] == "paused_quota", paused
        events = org.admin.client.get(f"/api/v1/orgs/{org.slug}/sessions/{run_id}/events").json()
        stop = [e for e in events if e["kind"] == "quota_paused"]
        assert len(stop) == 1 and stop[0]["data"]["limit"] == "tokens_per_month"
        assert stop[0]["data"]["usage"] == 18 and stop[0]["data"]["resets_at"]
        # A new session is refused while the budget is spent: 403 with what to do.
        refused = org.members["operator"].client.post(f"/api/v1/orgs/{org.slug}/sessions",
                                                      json={"agent": "metered", "inputs": {}})
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert error["code"] == "quota_exceeded"
        assert error["details"]["limit"] == "tokens_per_month"
        assert error["details"]["usage"] == 18 and error["details"]["resets_at"]
        assert "platform operator" in error["details"]["what_to_do"]
        limits = org.admin.client.get(f"/api/v1/orgs/{org.slug}/usage/limits").json()
        assert limits["paused_sessions"] == 1
        assert limits["soft_threshold_reached"] == "tokens_per_month"
        page = org.admin.client.get(f"/o/{org.slug}/usage")
        assert page.status_code == 200
        assert "1 session paused" in page.text and "80% or more" in page.text
        assert "gpt-4o-mini" in page.text and "<script>" not in page.text
        assert org.members["viewer"].client.get(f"/o/{org.slug}/usage").status_code == 403
        soft = [e for e in org.admin.client.get(f"/api/v1/orgs/{org.slug}/audit").json()
                ["items"] if e["action"] == "usage.soft_threshold_reached"]
        assert len(soft) == 1 and soft[0]["details"]["limit"] == "tokens_per_month"
        mail = [m for m in platform_admin.client.get("/api/v1/admin/outbox").json()
                if m["kind"] == "usage_warning" and m["recipient"] == org.admin.email]
        assert len(mail) == 1, mail  # once per month, to each admin
        assert org.slug in mail[0]["subject"] and f"/o/{org.slug}/usage" in mail[0]["body"]
        assert "18 of 10 tokens" in mail[0]["body"]
        # Raising the budget resumes the run where it stopped.
        fake.queue(FakeReply(tool_calls=[("set_output", {"key": "b", "value": 2})],
                             usage=(5, 3)))
        raised = set_plan(server, platform_admin, org, overrides={"tokens_per_month": 1000})
        assert raised.status_code == 200 and raised.json()["resumed_sessions"] == 1
        done = wait_for_status(org, run_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    checkpoints = org.admin.client.get(
        f"/api/v1/orgs/{org.slug}/sessions/{run_id}/checkpoints").json()
    assert [c["node_id"] for c in checkpoints] == ["first", "second"]
    assert done["prompt_tokens"] == 16


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_fifty_parallel_starts_never_pass_the_concurrency_limit(
        server: Server, platform_admin: Actor) -> None:
    org = make_org(server, platform_admin, "parallel")
    deploy_agent(org)
    assert set_plan(server, platform_admin, org,
                    overrides={"concurrent_sessions": 3}).status_code == 200
    token = org.api_keys["operator"]
    barrier = threading.Barrier(50)
    answers: list[httpx.Response] = []

    def start() -> None:
        with httpx.Client(base_url=server.base_url, timeout=120,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            barrier.wait(timeout=120)
            answers.append(client.post(f"/api/v1/orgs/{org.slug}/sessions", json={
                "agent": "hourly-tracking", "inputs": {"timesheet": "2026-12-01,a,b,1"}}))

    threads = [threading.Thread(target=start) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(answers) == 50
    codes = sorted(r.status_code for r in answers)
    assert codes.count(201) == 3, [r.text for r in answers if r.status_code not in (201, 429)]
    assert codes.count(429) == 47
    refused = next(r for r in answers if r.status_code == 429).json()["error"]
    assert refused["code"] == "concurrency_limited"
    assert refused["details"]["limit"] == "concurrent_sessions"
    sessions = org.admin.client.get(f"/api/v1/orgs/{org.slug}/sessions").json()
    assert len(sessions["items"] if isinstance(sessions, dict) else sessions) == 3


def test_limits_are_validated_and_plans_are_admin_only(server: Server, platform_admin: Actor,
                                                       org_a: Org) -> None:
    bad = set_plan(server, platform_admin, org_a, overrides={
        "concurrent_sessions": -1, "cost_usd_per_month": "ten", "bogus": 1,
        "tokens_per_month": 1.5})
    assert bad.status_code == 422, bad.text
    fields = {e["field"] for e in bad.json()["error"]["details"]["errors"]}
    assert fields == {"overrides.concurrent_sessions", "overrides.cost_usd_per_month",
                      "overrides.bogus", "overrides.tokens_per_month"}
    unknown = set_plan(server, platform_admin, org_a, plan="platinum")
    assert unknown.status_code == 422 and "free" in unknown.text
    plans = platform_admin.client.get("/api/v1/admin/plans").json()
    assert {p["key"] for p in plans} >= set(SEEDED_PLANS)
    assert [p["key"] for p in plans if p["is_default"]] == ["enterprise"]
    for actor in (org_a.admin, org_a.members["viewer"]):
        assert actor.client.get("/api/v1/admin/plans").status_code == 403
        assert set_plan(server, actor, org_a, plan="enterprise").status_code == 403
    assert httpx.get(f"{server.base_url}/api/v1/admin/plans").status_code == 401


def test_api_rate_limit_per_org_and_principal_with_headers(
        server: Server, platform_admin: Actor) -> None:
    org = make_org(server, platform_admin, "rate")
    assert set_plan(server, platform_admin, org,
                    overrides={"api_requests_per_minute": 5}).status_code == 200
    viewer, operator = org.members["viewer"].client, org.members["operator"].client
    url = f"/api/v1/orgs/{org.slug}/sessions"
    answers = [viewer.get(url) for _ in range(8)]
    codes = [r.status_code for r in answers]
    # The window may turn over during the loop: at most 5 per window, and at least one 429.
    assert codes.count(429) >= 1 and all(c in (200, 429) for c in codes)
    ok = answers[0]
    assert ok.headers["RateLimit-Limit"] == "5"
    assert int(ok.headers["RateLimit-Remaining"]) <= 4
    assert 1 <= int(ok.headers["RateLimit-Reset"]) <= 60
    limited = next(r for r in answers if r.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["RateLimit-Remaining"] == "0"
    assert limited.json()["error"]["code"] == "rate_limited"
    # Another principal of the same organization has a budget of its own.
    assert operator.get(url).status_code == 200


def test_month_rollover_with_an_injected_clock(server: Server, org_a: Org) -> None:
    limits = OrgLimits("x", "X", 1, {"tokens_per_month": 100, "cost_usd_per_month": None},
                       {})
    december = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    january = datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert next_month(december) == datetime(2027, 1, 1, tzinfo=UTC)

    async def work(session: Any) -> tuple[int, int, int]:
        org_id = uuid.UUID(org_a.id)
        await set_tenant(session, org_id)
        ctx = system_context(org_id, org_a.slug)
        repo = UsageRepository(session, ctx)
        key = uuid.uuid4().hex
        await repo.append([{"id": uuid.uuid4(), "kind": "llm_input_tokens", "quantity": 150,
                            "unit": "tokens", "provider": "openai", "model": f"m-{key}",
                            "agent_key": "", "run_id": None, "cost_micro_usd": 0,
                            "price": None, "estimated": True,
                            "idempotency_key": f"clock:{key}", "occurred_at": december}])
        # The same key again (a retried step) counts once.
        await repo.append([{"id": uuid.uuid4(), "kind": "llm_input_tokens", "quantity": 150,
                            "unit": "tokens", "provider": "openai", "model": f"m-{key}",
                            "agent_key": "", "run_id": None, "cost_micro_usd": 0,
                            "price": None, "estimated": True,
                            "idempotency_key": f"clock:{key}", "occurred_at": december}])
        dec = (await repo.month_totals(december)).tokens
        jan = (await repo.month_totals(january)).tokens
        await session.rollback()  # leave org_a's month as it was
        return dec, jan, 0

    dec, jan, _ = run_db(server, work)
    assert (dec >= 150 and jan == 0) or jan < dec
    assert over_budget(limits, type("T", (), {"tokens": dec, "cost_micro_usd": 0})(),
                       december) is not None
    assert over_budget(limits, type("T", (), {"tokens": 0, "cost_micro_usd": 0})(),
                       january) is None
    assert record_session_started is not None and utcnow().tzinfo is UTC
    assert wait_for is not None and start_session is not None


def test_agents_storage_and_members_limits_refuse_before_writing(
        server: Server, platform_admin: Actor) -> None:
    org = make_org(server, platform_admin, "counts")
    admin = org.admin.client
    assert set_plan(server, platform_admin, org,
                    overrides={"agents": 0}).status_code == 200
    refused = org.members["builder"].client.post(
        f"/api/v1/orgs/{org.slug}/agents",
        files={"package": ("package.zip", zip_directory(AGENT_DIR), "application/zip")})
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["details"]["limit"] == "agents"
    assert admin.get(f"/api/v1/orgs/{org.slug}/agents").json() == []
    assert set_plan(server, platform_admin, org,
                    overrides={"agents": None, "storage_bytes": 10}).status_code == 200
    too_big = org.members["builder"].client.post(
        f"/api/v1/orgs/{org.slug}/agents",
        files={"package": ("package.zip", zip_directory(AGENT_DIR), "application/zip")})
    assert too_big.status_code == 403, too_big.text
    details = too_big.json()["error"]["details"]
    assert details["limit"] == "storage_bytes" and details["unit"] == "bytes"
    assert admin.get(f"/api/v1/orgs/{org.slug}/agents").json() == []
    members = len(admin.get(f"/api/v1/orgs/{org.slug}/members").json())
    assert set_plan(server, platform_admin, org,
                    overrides={"members": members}).status_code == 200
    invite = admin.post(f"/api/v1/orgs/{org.slug}/invitations",
                        json={"email": "one-more@example.org", "role": "viewer"})
    assert invite.status_code == 403 and invite.json()["error"]["code"] == "quota_exceeded"
    # Lowering a limit below usage deletes nothing: the members are all still there.
    assert len(admin.get(f"/api/v1/orgs/{org.slug}/members").json()) == members


def test_the_plan_cli_sets_a_plan_and_overrides(server: Server, platform_admin: Actor,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from enginex import cli

    org = make_org(server, platform_admin, "cli")
    monkeypatch.setattr("enginex.config.get_settings", lambda: server.settings)
    cli.main(["plan", "set", "--org", org.slug, "--plan", "free", "--override",
              "agents=7", "--override", "tokens_per_month=null", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["plan"] == "free" and result["overrides"] == {"agents": 7,
                                                                "tokens_per_month": None}
    shown = platform_admin.client.get(f"/api/v1/admin/tenants/{org.id}/plan").json()
    assert shown["limits"]["agents"] == 7 and shown["limits"]["concurrent_sessions"] == 2
    with pytest.raises(SystemExit):
        cli.main(["plan", "set", "--org", org.slug, "--override", "agents=-1"])
    assert "agents" in capsys.readouterr().err


def test_the_seeded_plans_in_a_migrated_database_are_the_applications_definition(
        server: Server, platform_admin: Actor) -> None:
    plans = {p["key"]: p for p in platform_admin.client.get("/api/v1/admin/plans").json()}
    for key, (name, weight, limits) in SEEDED_PLANS.items():
        assert (plans[key]["name"], plans[key]["weight"]) == (name, weight)
        assert plans[key]["limits"] == limits, key


def test_the_queued_sessions_cap_refuses_a_start_with_429_and_says_what_to_do(
        server: Server, platform_admin: Actor) -> None:
    org = make_org(server, platform_admin, "queue")
    deploy_agent(org)
    assert set_plan(server, platform_admin, org,
                    overrides={"queued_sessions": 0}).status_code == 200
    refused = org.members["operator"].client.post(f"/api/v1/orgs/{org.slug}/sessions", json={
        "agent": "hourly-tracking", "inputs": {"timesheet": "2026-12-01,a,b,1"}})
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    error = refused.json()["error"]
    assert error["code"] == "queue_full"
    assert error["details"]["limit"] == "queued_sessions"
    assert error["details"]["limit_value"] == 0 and error["details"]["usage"] == 0
    assert "queued sessions" in error["details"]["what_to_do"]
    sessions = org.admin.client.get(f"/api/v1/orgs/{org.slug}/sessions").json()
    assert (sessions["items"] if isinstance(sessions, dict) else sessions) == []
    assert set_plan(server, platform_admin, org,
                    overrides={"queued_sessions": None}).status_code == 200
    start_session(org)


def test_api_requests_are_counted_per_org_in_memory_and_written_once_per_minute(
        server: Server, platform_admin: Actor) -> None:
    from enginex.db import Database
    from enginex.usage.apimeter import ApiRequestMeter

    org = make_org(server, platform_admin, "apimeter")
    import time

    counts = server.app.state.api_meter.counts  # type: ignore[union-attr]
    for _attempt in range(3):  # a minute ending mid-check lets the flush take the counts
        started = int(time.time() // 60)
        before = sum(n for (o, _), n in list(counts.items()) if str(o) == org.id)
        for _ in range(3):
            assert org.admin.client.get(f"/api/v1/orgs/{org.slug}/agents").status_code == 200
        after = sum(n for (o, _), n in list(counts.items()) if str(o) == org.id)
        written = [r for r in ledger(server, org) if r.kind == "api_requests"
                   and int(r.occurred_at.timestamp() // 60) == started]
        if int(time.time() // 60) == started:
            break
    assert after - before == 3  # counted in memory: no ledger write per request
    assert written == []

    # The flush (the API process's background task) writes one row per org and minute.
    clock = [1_800_000_030.0]  # 30 s into a minute
    minute = datetime.fromtimestamp(1_800_000_000, UTC)

    async def flush() -> tuple[int, int]:
        db = Database(server.settings)
        try:
            meter = ApiRequestMeter(db.sessions, clock=lambda: clock[0])
            for _ in range(4):
                meter.count(uuid.UUID(org.id))
            early = await meter.flush()  # the minute is not over: nothing written
            clock[0] += 60
            return early, await meter.flush()
        finally:
            await db.dispose()

    import asyncio
    assert asyncio.run(flush()) == (0, 1)
    rows = [r for r in ledger(server, org) if r.kind == "api_requests"]
    assert [(r.quantity, r.unit, r.occurred_at) for r in rows] == [(4, "requests", minute)]
    usage = org.admin.client.get(f"/api/v1/orgs/{org.slug}/usage", params={
        "from": "2027-01-15T00:00:00Z", "to": "2027-01-16T00:00:00Z", "group_by": "day,kind"})
    assert [(r["kind"], r["quantity"]) for r in usage.json()["rows"]] == [("api_requests", 4)]


def test_released_storage_is_subtracted_once(server: Server, org_a: Org) -> None:
    from enginex.usage.models import UsageKind
    from enginex.usage.service import record_storage, release_storage

    async def work(session: Any) -> int:
        org_id = uuid.UUID(org_a.id)
        await set_tenant(session, org_id)
        ctx = system_context(org_id, org_a.slug)
        usage = UsageRepository(session, ctx)
        before = await usage.total(UsageKind.STORAGE_BYTES)
        await record_storage(session, ctx, "run:x:1:storage_bytes", 1000)
        await release_storage(session, ctx, "run:x:1:storage_bytes", 1000)
        await release_storage(session, ctx, "run:x:1:storage_bytes", 1000)  # a retry
        return await usage.total(UsageKind.STORAGE_BYTES) - before

    assert run_db(server, work) == 0
