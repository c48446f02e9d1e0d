"""Request and response bodies of the usage and plan APIs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from enginex.kit.schemas import RequestBody, ResponseBody


class UsageRow(ResponseBody):
    period_start: datetime | None = None
    kind: str
    unit: str
    provider: str | None = None
    model: str | None = None
    agent_key: str | None = None
    quantity: int
    cost_usd: str
    events: int


class UsageOut(ResponseBody):
    from_: datetime = Field(serialization_alias="from")
    to: datetime
    group_by: list[str]
    rows: list[UsageRow]


class LimitUse(ResponseBody):
    limit: str
    unit: str
    limit_value: Any
    usage: Any
    resets_at: datetime | None


class LimitsOut(ResponseBody):
    plan: str | None
    plan_name: str
    limits: list[LimitUse]
    soft_threshold_reached: str | None
    paused_sessions: int


class PlanBody(RequestBody):
    name: str = Field(min_length=1, max_length=100)
    limits: dict[str, Any]
    weight: int = 1
    is_default: bool = False


class PlanOut(ResponseBody):
    key: str
    name: str
    limits: dict[str, Any]
    weight: int
    is_default: bool


class TenantPlanBody(RequestBody):
    plan: str | None = None
    overrides: dict[str, Any] | None = None
    # The organization's Stripe customer for the meter events push ('' unlinks it).
    stripe_customer_id: str | None = Field(default=None, max_length=255)


class TenantPlanOut(ResponseBody):
    plan: str | None
    overrides: dict[str, Any]
    limits: dict[str, Any]
    resumed_sessions: int = 0
    stripe_customer_id: str | None = None


class PriceBody(RequestBody):
    input_per_mtok: str = Field(max_length=32)
    output_per_mtok: str = Field(max_length=32)


class PriceOut(ResponseBody):
    provider: str
    model: str
    input_per_mtok: str
    output_per_mtok: str


class TenantUsageOut(ResponseBody):
    tenant_id: str
    slug: str
    plan: str | None
    sessions: int
    steps: int
    tokens: int
    cost_usd: str
