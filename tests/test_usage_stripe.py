"""Stripe Billing Meters push (usage/stripe.py): a contract test against a loopback HTTP server.

localstripe (1.15.10, checked) has no Billing Meters (no ``/v1/billing/meter_events``), so the
request shapes are checked here against Stripe's documented API: form-encoded meter events with
``event_name``, ``payload[stripe_customer_id]``, ``payload[value]``, ``timestamp`` and a
deterministic ``identifier`` (also the ``Idempotency-Key``). Threat model: a retried push must
never bill twice, a failed push must lose nothing, and another organization's usage is never
sent under this organization's customer.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import pytest

from enginex.db import Database, set_tenant
from enginex.kit.time import utcnow
from enginex.tenancy.context import system_context
from enginex.usage.models import OrgQuota
from enginex.usage.repository import UsageRepository, day_of
from enginex.usage.stripe import StripeMeterClient, identifier, push_meter_events
from tests.factories import Actor, Org, Server, make_org, run_db


class FakeStripe:
    """Records every request; answers 200, or ``fail_from``-th request on: 500."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_from: int | None = None
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                owner.requests.append({"path": self.path, "headers": dict(self.headers),
                                       "form": dict(parse_qsl(body))})
                failing = owner.fail_from is not None and len(owner.requests) >= owner.fail_from
                payload = (b'{"error": {"message": "down for a test"}}' if failing
                           else b'{"object": "billing.meter_event"}')
                self.send_response(500 if failing else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_: Any) -> None:
                return

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture
def stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe()
    try:
        yield fake
    finally:
        fake.http.shutdown()


def _seed(server: Server, org: Org, day_offsets: list[int], pushed_through_offset: int) -> None:
    today = day_of(utcnow())

    async def work(session: Any) -> None:
        org_id = uuid.UUID(org.id)
        await set_tenant(session, org_id)
        usage = UsageRepository(session, system_context(org_id, org.slug))
        for offset in day_offsets:
            at = today - timedelta(days=offset) + timedelta(hours=10)
            common = {"unit": "", "agent_key": "a", "run_id": None, "cost_micro_usd": 0,
                      "price": None, "estimated": False, "occurred_at": at}
            await usage.append([
                {**common, "id": uuid.uuid4(), "kind": "step", "quantity": 3, "provider": "",
                 "model": "", "idempotency_key": f"t:{offset}:step"},
                {**common, "id": uuid.uuid4(), "kind": "llm_input_tokens", "quantity": 100,
                 "provider": "openai", "model": "gpt-4o-mini",
                 "idempotency_key": f"t:{offset}:in"},
                {**common, "id": uuid.uuid4(), "kind": "storage_bytes", "quantity": 500,
                 "provider": "", "model": "", "idempotency_key": f"t:{offset}:storage"}])
        quota = await session.get(OrgQuota, org_id)
        if quota is not None:  # an organization never given a plan has no row
            quota.stripe_pushed_through = \
                f"{today - timedelta(days=pushed_through_offset):%Y-%m-%d}"

    run_db(server, work)


def _push(server: Server, stripe: FakeStripe) -> Any:
    async def work() -> Any:
        db = Database(server.settings)
        client = StripeMeterClient("sk_test_123", base=stripe.base)
        try:
            return await push_meter_events(db.sessions, client,
                                           now=day_of(utcnow()) + timedelta(hours=12))
        finally:
            await client.aclose()
            await db.dispose()

    return asyncio.run(work())


def test_meter_events_have_stripes_shape_and_a_retried_push_bills_nothing_twice(
        server: Server, platform_admin: Actor, org_b: Org, stripe: FakeStripe) -> None:
    org = make_org(server, platform_admin, "stripe")
    url = f"/api/v1/admin/tenants/{org.id}/plan"
    bad = platform_admin.client.put(url, json={"stripe_customer_id": "not-a-customer"})
    assert bad.status_code == 422 and "cus_" in bad.json()["error"]["message"]
    linked = platform_admin.client.put(url, json={"stripe_customer_id": "cus_Test123"})
    assert linked.status_code == 200 and linked.json()["stripe_customer_id"] == "cus_Test123"
    assert org.admin.client.put(url, json={"stripe_customer_id": "cus_X"}).status_code == 403
    _seed(server, org, [2, 1], pushed_through_offset=3)
    _seed(server, org_b, [1], pushed_through_offset=3)  # no customer: never pushed

    stripe.fail_from = 3  # day -2 (2 events) goes through, day -1 fails
    first = _push(server, stripe)
    assert org.id in first.failed
    sent = [r for r in stripe.requests if r["form"].get("payload[stripe_customer_id]")
            == "cus_Test123"]
    assert len(sent) == 3
    stripe.fail_from = None
    second = _push(server, stripe)
    assert org.id not in second.failed
    sent = [r for r in stripe.requests if r["form"].get("payload[stripe_customer_id]")
            == "cus_Test123"]
    assert len(sent) == 5  # day -2 once; day -1 retried whole (the same identifiers)
    today = day_of(utcnow())
    for request in sent:
        assert request["path"] == "/v1/billing/meter_events"
        assert request["headers"]["Authorization"] == "Bearer sk_test_123"
        assert request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
        form = request["form"]
        assert request["headers"]["Idempotency-Key"] == form["identifier"]
        assert form["event_name"] in ("enginex_step", "enginex_llm_input_tokens")
        assert form["payload[value]"] in ("3", "100")
        assert int(form["timestamp"]) in (int((today - timedelta(days=d)).timestamp())
                                          for d in (1, 2))
    tokens = [r["form"] for r in sent if r["form"]["event_name"] == "enginex_llm_input_tokens"]
    assert tokens[0]["payload[provider]"] == "openai"
    assert tokens[0]["payload[model]"] == "gpt-4o-mini"
    day1 = f"{today - timedelta(days=1):%Y-%m-%d}"
    # Events go out sorted by kind: the failed request was day -1's tokens.
    expected = identifier(uuid.UUID(org.id), day1, "llm_input_tokens", "openai", "gpt-4o-mini")
    assert [r["form"]["identifier"] for r in sent].count(expected) == 2  # the retry
    assert len({r["form"]["identifier"] for r in sent}) == 4
    assert not [r for r in sent if "storage" in r["form"]["event_name"]]
    # The organization without a customer sent nothing (no other customer in this database).
    assert {r["form"]["payload[stripe_customer_id]"] for r in stripe.requests} == {
        "cus_Test123"}
    # Everything finished is pushed: a third push sends nothing for this organization.
    before = len(stripe.requests)
    _push(server, stripe)
    assert not [r for r in stripe.requests[before:]
                if r["form"]["payload[stripe_customer_id]"] == "cus_Test123"]
