"""Push rated usage to Stripe Billing Meters (``ENGINEX_STRIPE_API_KEY``). No payments.

For every organization with a Stripe customer (``org_quotas.stripe_customer_id``, set by the
platform admin), each finished UTC day after ``stripe_pushed_through`` becomes one meter event
per (kind, provider, model) with a positive quantity, from the daily rollups:

    POST {ENGINEX_STRIPE_API_BASE}/v1/billing/meter_events   (form-encoded)
    event_name=<prefix><kind>   payload[stripe_customer_id]=cus_...   payload[value]=<int>
    [payload[provider]=... payload[model]=...]   timestamp=<day start, unix s>
    identifier=<uuid5 of tenant:day:kind:provider:model>
    headers: Authorization: Bearer <key>, Idempotency-Key: <identifier>

The identifier is deterministic, so a push retried after a failure or a crash sends the same
identifiers and Stripe de-duplicates them; ``stripe_pushed_through`` moves forward only after
every event of a day was accepted (a day is pushed once, and a failed day is retried whole on
the next push). A day is pushed once it ended ``SETTLE`` ago (late API request counts);
storage bytes (a level, not a sum) are not pushed. Stripe accepts events of the last 35 days
only: older days are skipped and reported.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.db import SessionFactory, set_tenant
from enginex.kit.time import utcnow
from enginex.orgs.models import Organization
from enginex.tenancy.context import system_context
from enginex.usage.models import OrgQuota, UsageKind
from enginex.usage.repository import UsageRepository, day_of

log = logging.getLogger(__name__)
SETTLE = timedelta(hours=1)
STRIPE_WINDOW = timedelta(days=35)
IDENTIFIERS = uuid.UUID("6f1d9b7e-3c51-4a8e-9f5e-0e9a4c1b2d77")  # uuid5 namespace
PUSHED_KINDS = tuple(k for k in UsageKind if k != UsageKind.STORAGE_BYTES)


class StripePushFailed(RuntimeError):
    """Stripe refused or could not be reached; the day is pushed again next time."""


def identifier(tenant_id: uuid.UUID, day: str, kind: str, provider: str, model: str) -> str:
    return str(uuid.uuid5(IDENTIFIERS, f"{tenant_id}:{day}:{kind}:{provider}:{model}"))


@dataclass(frozen=True)
class MeterEvent:
    event_name: str
    customer: str
    value: int
    timestamp: int
    identifier: str
    provider: str = ""
    model: str = ""

    def form(self) -> dict[str, str]:
        body = {"event_name": self.event_name, "payload[stripe_customer_id]": self.customer,
                "payload[value]": str(self.value), "timestamp": str(self.timestamp),
                "identifier": self.identifier}
        if self.provider:
            body["payload[provider]"] = self.provider
        if self.model:
            body["payload[model]"] = self.model
        return body


class StripeMeterClient:
    """Sends meter events to Stripe's API (or a compatible test server at ``base``)."""

    def __init__(self, api_key: str, *, base: str = "https://api.stripe.com",
                 timeout: float = 20.0) -> None:
        self.client = httpx.AsyncClient(base_url=base.rstrip("/"), timeout=timeout, headers={
            "Authorization": f"Bearer {api_key}"})

    async def send(self, event: MeterEvent) -> None:
        try:
            response = await self.client.post("/v1/billing/meter_events", data=event.form(),
                                               headers={"Idempotency-Key": event.identifier})
        except httpx.HTTPError as exc:
            raise StripePushFailed(f"Stripe could not be reached: {exc}") from exc
        if response.status_code >= 300:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise StripePushFailed(f"Stripe answered {response.status_code}: {message}")

    async def aclose(self) -> None:
        await self.client.aclose()


@dataclass
class PushReport:
    events: int = 0
    days: int = 0
    skipped_days: int = 0
    failed: list[str] = field(default_factory=list)  # organization ids whose push stopped


async def day_events(db: AsyncSession, org_id: uuid.UUID, customer: str, day: datetime,
                     prefix: str) -> list[MeterEvent]:
    """The meter events of one organization's UTC day (``db`` bound to the organization)."""
    rollups = await UsageRepository(db, system_context(org_id, "")).rollups(
        "day", day, day + timedelta(days=1))
    totals: dict[tuple[str, str, str], int] = {}
    for r in rollups:
        if r.kind in PUSHED_KINDS:
            key = (r.kind, r.provider, r.model)
            totals[key] = totals.get(key, 0) + r.quantity
    stamp, name = int(day.timestamp()), f"{day:%Y-%m-%d}"
    return [MeterEvent(f"{prefix}{kind}", customer, value, stamp,
                       identifier(org_id, name, kind, provider, model), provider, model)
            for (kind, provider, model), value in sorted(totals.items()) if value > 0]


async def push_meter_events(sessions: SessionFactory, client: StripeMeterClient, *,
                            prefix: str = "enginex_", now: datetime | None = None
                            ) -> PushReport:
    """Push every finished, not yet pushed day of every organization with a Stripe customer.
    One transaction per organization and day; stops an organization at its first failure."""
    now = now or utcnow()
    last_day = day_of(now - SETTLE) - timedelta(days=1)
    report = PushReport()
    async with sessions() as db:
        rows = (await db.execute(select(OrgQuota.org_id, OrgQuota.stripe_customer_id,
                                        OrgQuota.stripe_pushed_through).join(
            Organization, Organization.id == OrgQuota.org_id).where(
            OrgQuota.stripe_customer_id.is_not(None)))).all()
    for org_id, customer, through in rows:
        start = (datetime.strptime(through, "%Y-%m-%d").replace(tzinfo=UTC) + timedelta(days=1)
                 if through else last_day)
        day = start
        while day <= last_day:
            try:
                async with sessions() as db:
                    await set_tenant(db, org_id)
                    if day < now - STRIPE_WINDOW:
                        report.skipped_days += 1
                        events: list[MeterEvent] = []
                    else:
                        events = await day_events(db, org_id, customer, day, prefix)
                    for event in events:
                        await client.send(event)
                    quota = await db.get(OrgQuota, org_id)
                    if quota is not None:
                        quota.stripe_pushed_through = f"{day:%Y-%m-%d}"
                    await db.commit()
                report.events += len(events)
                report.days += 1
            except StripePushFailed as exc:
                log.warning("stripe push stopped: %s", exc, extra={"tenant_id": str(org_id)})
                report.failed.append(str(org_id))
                break
            day += timedelta(days=1)
    return report


def pushed_from(now: datetime | None = None) -> str:
    """The ``stripe_pushed_through`` of an organization linked to a customer now: its usage
    from today on is pushed, earlier usage is not."""
    return f"{day_of(now or utcnow()) - timedelta(days=1):%Y-%m-%d}"


def describe(report: PushReport) -> dict[str, Any]:
    return {"events": report.events, "days": report.days,
            "skipped_days": report.skipped_days, "failed_orgs": report.failed}
