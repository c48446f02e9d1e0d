"""Usage API: an organization's usage and limits (``/api/v1/orgs/{org}/usage``), and the
platform admin's plans, plan assignments and price overrides (``/api/v1/admin/...``)."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Query, Response
from sqlalchemy import select

from enginex.admin.service import access_tenant
from enginex.db import set_tenant
from enginex.kit.errors import ValidationFailed
from enginex.kit.time import utcnow
from enginex.orgs.models import Organization
from enginex.tenancy.context import TenantContext, system_context
from enginex.tenancy.guards import DB, PlatformAdmin, Require, make_router
from enginex.tenancy.principal import UserPrincipal
from enginex.tenancy.scopes import Scope
from enginex.usage import repository as repo
from enginex.usage import service
from enginex.usage.limits import LIMITS
from enginex.usage.models import UNITS, UsageKind
from enginex.usage.repository import UsageRepository, day_of, month_of, next_month
from enginex.usage.schemas import (
    LimitsOut,
    LimitUse,
    PlanBody,
    PlanOut,
    PriceBody,
    PriceOut,
    TenantPlanBody,
    TenantPlanOut,
    TenantUsageOut,
    UsageOut,
    UsageRow,
)

router = make_router(prefix="/api/v1", tags=["usage"])
Admin = Annotated[UserPrincipal, PlatformAdmin()]
Reader = Annotated[TenantContext, Require(Scope.USAGE_READ)]
GROUPS = ("day", "hour", "kind", "provider", "model", "agent")
MAX_RANGE = timedelta(days=400)


def _range(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    now = utcnow()
    start = start or month_of(now)
    end = end or day_of(now) + timedelta(days=1)
    if start.tzinfo is None or end.tzinfo is None:
        raise ValidationFailed("'from' and 'to' need a time zone, e.g. 2026-12-01T00:00:00Z.")
    if end <= start or end - start > MAX_RANGE:
        raise ValidationFailed("'to' must be after 'from', and the range at most 400 days.",
                               details={"errors": [{"field": "to",
                                                    "message": "after 'from', <= 400 days"}]})
    return start, end


def _groups(group_by: str) -> list[str]:
    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise ValidationFailed(f"group_by takes a comma-separated list of {', '.join(GROUPS)};"
                               f" got {group_by!r}.",
                               details={"errors": [{"field": "group_by",
                                                    "message": f"one or more of {GROUPS}"}]})
    return groups


async def usage_rows(db: DB, ctx: TenantContext, start: datetime, end: datetime,
                     groups: list[str]) -> list[UsageRow]:
    """The rollups of ``ctx``'s organization in [start, end), summed by ``groups`` (kind is
    always kept: quantities of different units are never added)."""
    period = "hour" if "hour" in groups else "day"
    totals: dict[tuple[object, ...], list[int]] = {}
    for r in await UsageRepository(db, ctx).rollups(period, start, end):
        key = (r.period_start if {"day", "hour"} & set(groups) else None, r.kind,
               r.provider if "provider" in groups else None,
               r.model if "model" in groups else None,
               r.agent_key if "agent" in groups else None)
        acc = totals.setdefault(key, [0, 0, 0])
        acc[0] += r.quantity
        acc[1] += r.cost_micro_usd
        acc[2] += r.events
    return [UsageRow(period_start=k[0], kind=str(k[1]),  # type: ignore[arg-type]
                     unit=UNITS[UsageKind(str(k[1]))], provider=k[2],  # type: ignore[arg-type]
                     model=k[3], agent_key=k[4], quantity=q,  # type: ignore[arg-type]
                     cost_usd=f"{c / 1_000_000:.6f}", events=n)
            for k, (q, c, n) in sorted(totals.items(), key=lambda i: tuple(
                "" if v is None else str(v) for v in i[0]))]


FromQ = Annotated[datetime | None, Query(alias="from")]
ToQ = Annotated[datetime | None, Query(alias="to")]


@router.get("/orgs/{org}/usage", response_model=UsageOut, response_model_by_alias=True)
async def get_usage(db: DB, ctx: Reader, start: FromQ = None, end: ToQ = None,
                    group_by: str = "day,kind") -> UsageOut:
    """The organization's metered usage from the rollups in [from, to) (default: this
    month), summed by ``group_by`` (day|hour, kind, provider, model, agent). Costs are
    estimates in USD."""
    start, end = _range(start, end)
    groups = _groups(group_by)
    return UsageOut(from_=start, to=end, group_by=groups,
                    rows=await usage_rows(db, ctx, start, end, groups))


@router.get("/orgs/{org}/usage/export.csv", response_class=Response,
            responses={200: {"content": {"text/csv": {}}, "description": "The rows as CSV."}})
async def export_usage_csv(db: DB, ctx: Reader, start: FromQ = None, end: ToQ = None,
                           group_by: str = "day,kind,provider,model,agent") -> Response:
    """The same rows as ``GET .../usage`` as CSV (one header line)."""
    start, end = _range(start, end)
    rows = await usage_rows(db, ctx, start, end, _groups(group_by))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["period_start", "kind", "unit", "provider", "model", "agent", "quantity",
                     "cost_usd", "events"])
    for r in rows:
        writer.writerow([r.period_start.isoformat() if r.period_start else "", r.kind, r.unit,
                         r.provider or "", r.model or "", r.agent_key or "", r.quantity,
                         r.cost_usd, r.events])
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="usage-{ctx.org_slug}.csv"'})


@router.get("/orgs/{org}/usage/limits", response_model=LimitsOut)
async def get_limits(db: DB, ctx: Reader) -> LimitsOut:
    """This month's usage against each limit of the organization's plan (None: unlimited)."""
    s = await service.month_status(db, ctx)
    tomorrow = day_of(utcnow()) + timedelta(days=1)
    used = {"concurrent_sessions": (s.open_sessions, None),
            "sessions_per_day": (s.sessions_today, tomorrow),
            "steps_per_day": (s.steps_today, tomorrow),
            "tokens_per_month": (s.tokens, s.resets_at),
            "cost_usd_per_month": (f"{s.cost_micro_usd / 1_000_000:.6f}", s.resets_at),
            "storage_bytes": (s.storage_bytes, None)}
    return LimitsOut(plan=s.limits.plan_key, plan_name=s.limits.plan_name,
                     soft_threshold_reached=s.soft_limit, paused_sessions=s.paused_sessions,
                     limits=[LimitUse(limit=name, unit=spec.unit,
                                      limit_value=s.limits.get(name),
                                      usage=used.get(name, (None, None))[0],
                                      resets_at=used.get(name, (None, None))[1])
                             for name, spec in LIMITS.items()])


# --- platform admin ----------------------------------------------------------------------------


@router.get("/admin/plans", response_model=list[PlanOut])
async def list_plans(db: DB, _: Admin) -> list[PlanOut]:
    """Every plan with its limits (None: unlimited) and scheduler weight."""
    return [PlanOut.model_validate(p) for p in await repo.list_plans(db)]


@router.put("/admin/plans/{plan_key}", response_model=PlanOut)
async def put_plan(plan_key: str, body: PlanBody, db: DB, _: Admin) -> PlanOut:
    """Create or replace a plan. Limits are validated (names, units, no negatives); lowering
    one below an organization's usage blocks new work there and deletes nothing."""
    if not re.fullmatch(r"[a-z0-9-]{1,40}", plan_key):
        raise ValidationFailed("A plan key is 1-40 lowercase letters, digits or '-'.")
    plan = await service.save_plan(db, plan_key, name=body.name, limits=body.limits,
                                   weight=body.weight, is_default=body.is_default)
    return PlanOut.model_validate(plan)


async def _tenant_plan(db: DB, org_id: uuid.UUID, resumed: int = 0) -> TenantPlanOut:
    limits = await service.org_limits(db, org_id, fresh=True)
    quota = await repo.get_quota(db, org_id)
    return TenantPlanOut(plan=limits.plan_key, overrides=limits.overrides,
                         limits=limits.limits, resumed_sessions=resumed,
                         stripe_customer_id=quota.stripe_customer_id if quota else None)


@router.get("/admin/tenants/{tenant_id}/plan", response_model=TenantPlanOut)
async def get_tenant_plan(tenant_id: uuid.UUID, db: DB, _: Admin) -> TenantPlanOut:
    """A tenant's plan, overrides and effective limits."""
    await access_tenant(db, tenant_id)
    return await _tenant_plan(db, tenant_id)


@router.put("/admin/tenants/{tenant_id}/plan", response_model=TenantPlanOut)
async def put_tenant_plan(tenant_id: uuid.UUID, body: TenantPlanBody, db: DB,
                          admin: Admin) -> TenantPlanOut:
    """Assign a plan and/or overrides (``{}`` clears them) and/or the Stripe customer of the
    meter events push (``""`` unlinks it). Audited in the tenant's log;
    sessions paused for quota resume if the tenant is under budget now."""
    org = await access_tenant(db, tenant_id)
    _, resumed = await service.assign_plan(db, org.id, org.slug, plan_key=body.plan,
                                           overrides=body.overrides, actor_id=admin.user_id,
                                           stripe_customer_id=body.stripe_customer_id)
    return await _tenant_plan(db, org.id, resumed)


@router.get("/admin/prices", response_model=list[PriceOut])
async def list_prices(db: DB, _: Admin) -> list[PriceOut]:
    """The platform's price overrides (USD per million tokens); others come from
    genai-prices."""
    return [PriceOut.model_validate(p) for p in await repo.price_overrides(db)]


@router.put("/admin/prices/{provider}/{model}", response_model=PriceOut)
async def put_price(provider: str, model: str, body: PriceBody, db: DB,
                    _: Admin) -> PriceOut:
    """Set the price of a provider's model ('*': all its models) for costs estimated from
    now on."""
    found = await service.set_price(db, provider[:64], model[:128],
                                    input_per_mtok=body.input_per_mtok,
                                    output_per_mtok=body.output_per_mtok)
    return PriceOut.model_validate(found)


async def tenant_usage(db: DB, start: datetime, end: datetime,
                        sort: str) -> list[TenantUsageOut]:
    """Per tenant: sessions, steps, tokens and cost in [start, end), sorted by ``sort``."""
    if sort not in SORTS:
        raise ValidationFailed(f"sort is one of {', '.join(SORTS)}; got {sort!r}.",
                               details={"errors": [{"field": "sort", "message": str(SORTS)}]})
    totals: dict[uuid.UUID, dict[str, int]] = {}
    for row in await repo.usage_by_tenant(db, start, end):
        acc = totals.setdefault(row.tenant_id, {"sessions": 0, "steps": 0, "tokens": 0,
                                                "cost": 0})
        acc["cost"] += row.cost_micro_usd
        if row.kind == UsageKind.SESSION_STARTED:
            acc["sessions"] += row.quantity
        elif row.kind == UsageKind.STEP:
            acc["steps"] += row.quantity
        elif row.kind in (UsageKind.LLM_INPUT_TOKENS, UsageKind.LLM_OUTPUT_TOKENS):
            acc["tokens"] += row.quantity
    orgs = {o.id: o for o in (await db.execute(select(Organization))).scalars()}
    plans = {q.org_id: q.plan_key for q in await repo.list_quotas(db)}
    rows = [TenantUsageOut(tenant_id=str(t), slug=orgs[t].slug if t in orgs else "",
                           plan=plans.get(t), sessions=a["sessions"], steps=a["steps"],
                           tokens=a["tokens"], cost_usd=f"{a['cost'] / 1_000_000:.6f}")
            for t, a in totals.items()]
    key = {"cost": lambda r: float(r.cost_usd), "tokens": lambda r: r.tokens,
           "steps": lambda r: r.steps, "sessions": lambda r: r.sessions}[sort]
    return sorted(rows, key=key, reverse=True)


SORTS = ("cost", "tokens", "steps", "sessions")


@router.get("/admin/usage", response_model=list[TenantUsageOut])
async def admin_usage(db: DB, _: Admin, start: FromQ = None, end: ToQ = None,
                      sort: str = "cost") -> list[TenantUsageOut]:
    """Usage across tenants in [from, to) (default: this month), top tenants first by
    ``sort`` (cost, tokens, steps, sessions). Counts and amounts only, never content."""
    start, end = _range(start, end)
    return await tenant_usage(db, start, end, sort)


@router.get("/admin/usage/export.csv", response_class=Response,
            responses={200: {"content": {"text/csv": {}}, "description": "The rows as CSV."}})
async def admin_usage_csv(db: DB, _: Admin, start: FromQ = None, end: ToQ = None,
                          sort: str = "cost") -> Response:
    """The same rows as ``GET /api/v1/admin/usage`` as CSV."""
    start, end = _range(start, end)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["tenant_id", "slug", "plan", "sessions", "steps", "tokens", "cost_usd"])
    for r in await tenant_usage(db, start, end, sort):
        writer.writerow([r.tenant_id, r.slug, r.plan or "", r.sessions, r.steps, r.tokens,
                         r.cost_usd])
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": 'attachment; filename="usage-tenants.csv"'})


# --- billing export ----------------------------------------------------------------------------

BILLING_GROUPS = ["kind", "provider", "model"]


@router.get("/admin/tenants/{tenant_id}/billing")
async def billing_export(tenant_id: uuid.UUID, db: DB, _: Admin,
                         period: Annotated[str, Query(pattern=r"^\d{4}-\d{2}$")],
                         format_: Annotated[str, Query(alias="format",
                                                       pattern=r"^(jsonl|csv)$")] = "jsonl"
                         ) -> Response:
    """Rated usage of one tenant for one calendar month (``period`` YYYY-MM, UTC), one line
    per (kind, provider, model), as JSON Lines or CSV. Idempotent: the same period gives the
    same lines with the same ``idempotency_key`` (``<tenant>:<period>:<kind>:<provider>:
    <model>``) until more usage of that period is recorded. Numbers only, never content."""
    org = await access_tenant(db, tenant_id)
    try:
        start = datetime.strptime(period + "-01", "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValidationFailed("period is a month as YYYY-MM, e.g. 2026-12.") from None
    await set_tenant(db, org.id)
    rows = await usage_rows(db, system_context(org.id, org.slug), start, next_month(start),
                            BILLING_GROUPS)
    lines = [{"idempotency_key": f"{org.id}:{period}:{r.kind}:{r.provider}:{r.model}",
              "tenant_id": str(org.id), "period": period, "kind": r.kind, "unit": r.unit,
              "provider": r.provider, "model": r.model, "quantity": r.quantity,
              "cost_usd": r.cost_usd} for r in rows]
    name = f"billing-{org.id}-{period}.{format_}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    if format_ == "jsonl":
        body = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
        return Response(body, media_type="application/x-ndjson", headers=headers)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["idempotency_key", "tenant_id", "period", "kind",
                                             "unit", "provider", "model", "quantity",
                                             "cost_usd"])
    writer.writeheader()
    writer.writerows(lines)
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)
