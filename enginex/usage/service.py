"""Metering, plans and quotas.

* ``meter_step`` writes a step's usage rows (and their rollups) in the step's own commit
  transaction, and says whether the run must stop at this step boundary because its
  organization's monthly token or cost budget is spent.
* ``admit_session`` is called where a session starts, in the starting transaction, after
  taking the organization's admission lock: two parallel starts cannot both take the last slot.
* Plans, overrides and price overrides are platform data changed by the platform admin; a
  change that lifts an organization under its budget resumes its paused runs (nothing lost).

Every function acting in a tenant takes ``ctx``; usage of another organization is never read.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from enginex.audit.service import record
from enginex.db import set_tenant
from enginex.kit.errors import AppError, NotFound, ValidationFailed
from enginex.kit.time import utcnow
from enginex.runs.models import Run
from enginex.runs.repository import RunRepository
from enginex.tenancy.context import TenantContext, system_context
from enginex.usage import repository as repo
from enginex.usage.limits import LIMITS, clean_limits, effective_limits, micro_usd
from enginex.usage.meter import StepMeter
from enginex.usage.models import UNITS, OrgQuota, Plan, PriceOverride, UsageKind
from enginex.usage.pricing import price_tokens
from enginex.usage.repository import Totals, UsageRepository, day_of, month_of, next_month

PAUSED = "paused_quota"
CACHE_SECONDS = 5.0


class QueueFull(AppError):
    """429: the organization has as many sessions waiting for a worker as its plan allows."""

    status_code = 429
    code = "queue_full"


class QuotaExceeded(AppError):
    """403: a budget (per day or per month) is spent."""

    status_code = 403
    code = "quota_exceeded"


class ConcurrencyLimited(AppError):
    """429: the organization has as many sessions open as its plan allows."""

    status_code = 429
    code = "concurrency_limited"


# --- effective limits (cached briefly per process; changes here clear the cache) -------------


@dataclass(frozen=True)
class OrgLimits:
    plan_key: str | None
    plan_name: str
    weight: int
    limits: dict[str, Any]
    overrides: dict[str, Any]

    def get(self, name: str) -> Any:
        return self.limits.get(name)


_limits_cache: dict[uuid.UUID, tuple[float, OrgLimits]] = {}
_prices_cache: list[Any] = [0.0, {}]


def forget_cached(org_id: uuid.UUID | None = None) -> None:
    if org_id is None:
        _limits_cache.clear()
        _totals_cache.clear()
    else:
        _limits_cache.pop(org_id, None)
        _totals_cache.pop(org_id, None)
    _prices_cache[0] = 0.0


async def org_limits(db: AsyncSession, org_id: uuid.UUID, *,
                     quota: OrgQuota | None = None, fresh: bool = False) -> OrgLimits:
    """The organization's plan (its own, else the default plan) with its overrides."""
    cached = _limits_cache.get(org_id)
    if cached is not None and not fresh and quota is None and cached[0] > time.monotonic():
        return cached[1]
    if quota is None:
        quota = await repo.get_quota(db, org_id)
    plan = await repo.get_plan(db, quota.plan_key) if quota and quota.plan_key else None
    if plan is None:
        plan = await repo.default_plan(db)
    overrides = dict(quota.overrides) if quota else {}
    found = OrgLimits(plan.key if plan else None, plan.name if plan else "No plan",
                      plan.weight if plan else 1,
                      effective_limits(plan.limits if plan else {}, overrides), overrides)
    _limits_cache[org_id] = (time.monotonic() + CACHE_SECONDS, found)
    return found


async def _price_overrides(db: AsyncSession) -> dict[tuple[str, str], tuple[str, str]]:
    if _prices_cache[0] > time.monotonic():
        return _prices_cache[1]  # type: ignore[no-any-return]
    found = {(p.provider, p.model): (p.input_per_mtok, p.output_per_mtok)
             for p in await repo.price_overrides(db)}
    _prices_cache[:] = [time.monotonic() + CACHE_SECONDS * 6, found]
    return found


# --- metering ----------------------------------------------------------------------------------


class MeteredRun(Protocol):
    """What metering reads of a run: the ORM row or the engine's StepRun."""

    @property
    def id(self) -> uuid.UUID: ...

    @property
    def agent_key(self) -> str: ...


def _row(kind: UsageKind, quantity: int, key: str, at: datetime, *,
         run: MeteredRun | None = None,
         provider: str = "", model: str = "", cost: int = 0,
         price: dict[str, Any] | None = None, estimated: bool = False) -> dict[str, Any]:
    return {"id": uuid.uuid4(), "kind": str(kind), "quantity": quantity, "unit": UNITS[kind],
            "provider": provider[:64], "model": model[:128],
            "agent_key": run.agent_key if run is not None else "",
            "run_id": run.id if run is not None else None, "cost_micro_usd": cost,
            "price": price, "estimated": estimated, "idempotency_key": key[:200],
            "occurred_at": at}


@dataclass(frozen=True)
class Pause:
    """Why a run stops at a step boundary: the limit, the month's usage and when it resets."""

    limit: str
    limit_value: Any
    usage: Any
    resets_at: datetime

    def event(self) -> dict[str, Any]:
        return {"limit": self.limit, "unit": LIMITS[self.limit].unit,
                "limit_value": self.limit_value, "usage": self.usage,
                "resets_at": self.resets_at.isoformat(),
                "message": f"Paused: the organization's {LIMITS[self.limit].description} "
                           f"budget is spent. An organization admin can ask the platform "
                           "operator to raise it; the session then resumes where it stopped."}


async def meter_step(db: AsyncSession, ctx: TenantContext, run: MeteredRun, step: int,
                     meter: StepMeter, *, now: datetime | None = None) -> Pause | None:
    """Write what step ``step`` of ``run`` used, in the caller's (the step commit's)
    transaction, keyed ``run:<id>:<step>:...`` so a retried step never counts twice. Returns
    a Pause when the organization's monthly budget is now spent (the caller stops the run at
    this step boundary), else None. Gives the soft-threshold warning once per month."""
    now = now or utcnow()
    base = f"run:{run.id}:{step}"
    rows = [_row(UsageKind.STEP, 1, f"{base}:step", now, run=run)]
    if meter.models:
        overrides = await _price_overrides(db)
    for (provider, model), use in sorted(meter.models.items()):
        priced = price_tokens(provider, model, input_tokens=use.input_tokens,
                              output_tokens=use.output_tokens, cached_tokens=use.cached_tokens,
                              overrides=overrides)
        estimated = use.estimated or priced.price is None
        common = {"run": run, "provider": provider, "model": model, "price": priced.price,
                  "estimated": estimated}
        at = f"{base}:{provider}:{model}"
        rows.append(_row(UsageKind.LLM_INPUT_TOKENS, use.input_tokens, f"{at}:in", now,
                         cost=priced.input_micro_usd, **common))
        rows.append(_row(UsageKind.LLM_OUTPUT_TOKENS, use.output_tokens, f"{at}:out", now,
                         cost=priced.output_micro_usd, **common))
        if use.cached_tokens:
            rows.append(_row(UsageKind.LLM_CACHED_TOKENS, use.cached_tokens, f"{at}:cached",
                             now, **common))
    for kind, quantity in ((UsageKind.TOOL_CALL, meter.tool_calls),
                           (UsageKind.MCP_CALL, meter.mcp_calls),
                           (UsageKind.EGRESS_BYTES, meter.egress_bytes),
                           (UsageKind.STORAGE_BYTES, meter.storage_bytes)):
        if quantity:
            rows.append(_row(kind, quantity, f"{base}:{kind}", now, run=run))
    usage = UsageRepository(db, ctx)
    await usage.append_at(rows, now)
    if not meter.models:
        return None  # only model calls spend the monthly budget
    limits = await org_limits(db, ctx.org_id)
    if limits.get("tokens_per_month") is None and limits.get("cost_usd_per_month") is None:
        return None
    added = Totals(sum(u.input_tokens + u.output_tokens for u in meter.models.values()),
                   sum(r["cost_micro_usd"] for r in rows))
    totals = await _month_totals(usage, ctx.org_id, limits, added, now)
    await _maybe_warn(db, ctx, limits, totals, now)
    return over_budget(limits, totals, now)


# Month totals per organization, per process: (expires, month start, totals). A step far from
# its organization's budget adds its own usage to the cached totals instead of reading the
# rollups again; near the budget (from the soft threshold, at most 80 %) or after
# TOTALS_SECONDS the totals are read in the step's transaction. Other processes' usage is
# therefore seen within TOTALS_SECONDS while an organization is below 80 % of its budget, and
# at once above it: the pause still happens at the step boundary where the budget is spent.
TOTALS_SECONDS = 2.0
NEAR = 80
_totals_cache: dict[uuid.UUID, tuple[float, datetime, Totals]] = {}


def _near(limits: OrgLimits, totals: Totals) -> bool:
    percent = min(NEAR, limits.get("soft_threshold_percent") or NEAR)
    tokens, cost = limits.get("tokens_per_month"), micro_usd(limits.get("cost_usd_per_month"))
    return (tokens is not None and totals.tokens * 100 >= tokens * percent) or \
        (cost is not None and totals.cost_micro_usd * 100 >= cost * percent)


async def _month_totals(usage: UsageRepository, org_id: uuid.UUID, limits: OrgLimits,
                        added: Totals, now: datetime) -> Totals:
    cached = _totals_cache.get(org_id)
    month = month_of(now)
    if cached is not None and cached[0] > time.monotonic() and cached[1] == month:
        estimate = Totals(cached[2].tokens + added.tokens,
                          cached[2].cost_micro_usd + added.cost_micro_usd)
        if not _near(limits, estimate):
            _totals_cache[org_id] = (cached[0], month, estimate)
            return estimate
    totals = await usage.month_totals(now)
    _totals_cache[org_id] = (time.monotonic() + TOTALS_SECONDS, month, totals)
    return totals


def over_budget(limits: OrgLimits, totals: Totals, now: datetime) -> Pause | None:
    tokens, cost = limits.get("tokens_per_month"), micro_usd(limits.get("cost_usd_per_month"))
    if tokens is not None and totals.tokens >= tokens:
        return Pause("tokens_per_month", tokens, totals.tokens, next_month(now))
    if cost is not None and totals.cost_micro_usd >= cost:
        return Pause("cost_usd_per_month", limits.get("cost_usd_per_month"),
                     f"{totals.cost_micro_usd / 1_000_000:.6f}", next_month(now))
    return None


def soft_reached(limits: OrgLimits, totals: Totals) -> str | None:
    """The first monthly limit whose soft threshold is reached, or None."""
    percent = limits.get("soft_threshold_percent")
    if percent is None:
        return None
    tokens, cost = limits.get("tokens_per_month"), micro_usd(limits.get("cost_usd_per_month"))
    if tokens is not None and totals.tokens * 100 >= tokens * percent:
        return "tokens_per_month"
    if cost is not None and totals.cost_micro_usd * 100 >= cost * percent:
        return "cost_usd_per_month"
    return None


async def _maybe_warn(db: AsyncSession, ctx: TenantContext, limits: OrgLimits, totals: Totals,
                      now: datetime) -> None:
    limit = soft_reached(limits, totals)
    if limit is None:
        return
    month = now.strftime("%Y-%m")
    quota = await repo.get_quota(db, ctx.org_id)
    if quota is not None and quota.soft_warned_month == month:
        return
    if quota is None:
        await repo.admit_lock(db, ctx.org_id)
    if await repo.set_soft_warned(db, ctx.org_id, month):
        percent = limits.get("soft_threshold_percent")
        await record(db, ctx, "usage.soft_threshold_reached", target_kind="organization",
                     target_id=ctx.org_id,
                     details={"limit": limit, "month": month, "percent": percent})
        await _mail_warning(db, ctx, limit, percent, limits.get(limit), totals, now)


async def _mail_warning(db: AsyncSession, ctx: TenantContext, limit: str, percent: Any,
                        value: Any, totals: Totals, now: datetime) -> None:
    """Queue the soft-threshold email to each admin of the organization, in the caller's
    transaction (the outbox sends it after commit; nothing is sent if the step rolls back)."""
    from enginex.config import get_settings
    from enginex.mail.models import MailKind
    from enginex.mail.service import enqueue

    used = (f"{totals.tokens} of {value} tokens" if limit == "tokens_per_month" else
            f"{totals.cost_micro_usd / 1_000_000:.2f} of {value} USD (estimated)")
    link = f"{get_settings().base_url.rstrip('/')}/o/{ctx.org_slug}/usage"
    body = (f"The organization \"{ctx.org_slug}\" on EngineX has used {percent}% or more of "
            f"its {LIMITS[limit].description} budget for {now:%B %Y}: {used}.\n\n"
            "When the budget is spent, new sessions are refused and running sessions pause at "
            "their next step (nothing is lost; they resume when the budget is raised). The "
            f"budget resets on {next_month(now):%Y-%m-%d} (UTC).\n\n"
            f"Usage against the limits: {link}\n\n"
            "To raise the budget, ask the platform operator for a larger plan.\n"
            "You receive this once per month, as an admin of the organization.\n")
    for email in await repo.admin_emails(db, ctx):
        enqueue(db, kind=MailKind.USAGE_WARNING, recipient=email,
                subject=f"EngineX: {ctx.org_slug} reached {percent}% of its monthly budget",
                body=body)


async def record_session_started(db: AsyncSession, ctx: TenantContext, run: Run, *,
                                 now: datetime | None = None) -> None:
    """Meter a started (or forked) session in the starting transaction."""
    now = now or utcnow()
    await UsageRepository(db, ctx).append(
        [_row(UsageKind.SESSION_STARTED, 1, f"session:{run.id}", now, run=run)])


async def record_storage(db: AsyncSession, ctx: TenantContext, key: str, size_bytes: int, *,
                         now: datetime | None = None) -> None:
    """Meter report storage added (positive) or removed (negative) under ``key``."""
    await UsageRepository(db, ctx).append(
        [_row(UsageKind.STORAGE_BYTES, size_bytes, key, now or utcnow())])


async def release_storage(db: AsyncSession, ctx: TenantContext, key: str, size_bytes: int, *,
                          now: datetime | None = None) -> None:
    """Meter storage freed when what was stored under ``key`` (``run:<id>:<step>:...``,
    ``agent_version:<id>``) is deleted: a negative ``storage_bytes`` row keyed
    ``released:<key>``, written in the deleting transaction, so one deletion counts once
    however often it is retried. The storage limit and the page read the net total."""
    await record_storage(db, ctx, f"released:{key}", -abs(size_bytes), now=now)


# --- admission ---------------------------------------------------------------------------------


def _details(limit: str, value: Any, usage: Any, resets_at: datetime | None,
             todo: str) -> dict[str, Any]:
    return {"limit": limit, "unit": LIMITS[limit].unit, "limit_value": value, "usage": usage,
            "resets_at": resets_at.isoformat() if resets_at else None, "what_to_do": todo}


RAISE = "Ask the platform operator to raise the limit or move the organization to a larger plan."


async def admit_session(db: AsyncSession, ctx: TenantContext, *,
                        now: datetime | None = None) -> None:
    """Check the organization's limits before a session starts, holding its admission lock
    (until the caller's transaction ends) so that parallel starts are serialised.

    Raises ConcurrencyLimited (429) when as many sessions are open as allowed, QueueFull (429
    ``queue_full``) when as many wait in the queue as allowed, QuotaExceeded
    (403 ``quota_exceeded``) when the day's sessions or steps, or the month's tokens or cost,
    are spent. ``details`` name the limit, the usage, the reset time and what to do."""
    now = now or utcnow()
    quota = await repo.admit_lock(db, ctx.org_id)
    limits = await org_limits(db, ctx.org_id, quota=quota)
    usage = UsageRepository(db, ctx)
    concurrent = limits.get("concurrent_sessions")
    if concurrent is not None:
        open_now = await usage.open_sessions()
        if open_now >= concurrent:
            raise ConcurrencyLimited(
                f"This organization already has {open_now} open sessions, its limit "
                f"({concurrent}). Wait for one to finish or cancel one, then start again.",
                details=_details("concurrent_sessions", concurrent, open_now, None,
                                 "Wait for a session to finish, or cancel one. " + RAISE),
                headers={"Retry-After": "30"})
    queued = limits.get("queued_sessions")
    if queued is not None:
        waiting = await usage.queued_sessions()
        if waiting >= queued:
            raise QueueFull(
                f"This organization already has {waiting} sessions waiting for a worker, its "
                f"limit ({queued}). Start more when some of them are running.",
                details=_details("queued_sessions", queued, waiting, None,
                                 "Wait until queued sessions start running, or cancel some. "
                                 + RAISE),
                headers={"Retry-After": "30"})
    tomorrow = day_of(now) + timedelta(days=1)
    for limit, kind in (("sessions_per_day", UsageKind.SESSION_STARTED),
                        ("steps_per_day", UsageKind.STEP)):
        value = limits.get(limit)
        if value is None:
            continue
        used = await usage.day_total(kind, now)
        if used >= value:
            raise QuotaExceeded(
                f"This organization has used its {LIMITS[limit].description} ({used} of "
                f"{value}). It resets at {tomorrow:%Y-%m-%d %H:%M} UTC.",
                details=_details(limit, value, used, tomorrow,
                                 "Wait for the reset, or " + RAISE[0].lower() + RAISE[1:]))
    if limits.get("tokens_per_month") is not None or \
            limits.get("cost_usd_per_month") is not None:
        pause = over_budget(limits, await usage.month_totals(now), now)
        if pause is not None:
            raise QuotaExceeded(
                f"This organization has spent its {LIMITS[pause.limit].description} budget "
                f"({pause.usage} of {pause.limit_value} {LIMITS[pause.limit].unit}). It "
                f"resets at {pause.resets_at:%Y-%m-%d} 00:00 UTC.",
                details=_details(pause.limit, pause.limit_value, pause.usage, pause.resets_at,
                                 "Wait for the new month, or " + RAISE[0].lower() + RAISE[1:]))


async def check_new_member(db: AsyncSession, ctx: TenantContext) -> None:
    """Refuse inviting one more member when the plan's ``members`` limit is reached."""
    await _check_count(db, ctx, "members", repo.count_members)


async def check_new_agent(db: AsyncSession, ctx: TenantContext) -> None:
    """Refuse deploying one more agent when the plan's ``agents`` limit is reached."""
    await _check_count(db, ctx, "agents", repo.count_agents)


async def _check_count(db: AsyncSession, ctx: TenantContext, limit: str, count: Any) -> None:
    value = (await org_limits(db, ctx.org_id)).get(limit)
    if value is None:
        return
    current = await count(db, ctx)
    if current >= value:
        raise QuotaExceeded(
            f"This organization has {current} {LIMITS[limit].unit}, its plan's limit "
            f"({value}). Remove one first, or ask the platform operator for a larger plan.",
            details=_details(limit, value, current, None, "Remove one, or " +
                             RAISE[0].lower() + RAISE[1:]))


async def check_storage(db: AsyncSession, ctx: TenantContext, adding: int) -> None:
    """Refuse storing ``adding`` more bytes when that would pass the storage limit; called
    before anything is written."""
    value = (await org_limits(db, ctx.org_id)).get("storage_bytes")
    if value is None:
        return
    used = await UsageRepository(db, ctx).total(UsageKind.STORAGE_BYTES)
    if used + adding > value:
        raise QuotaExceeded(
            f"Storing {adding} more bytes would pass this organization's storage limit "
            f"({used} of {value} bytes used). Delete reports or ask for a larger plan.",
            details=_details("storage_bytes", value, used, None,
                             "Delete old sessions' reports, or " + RAISE[0].lower() +
                             RAISE[1:]))


# --- platform admin: plans, assignments, prices ------------------------------------------------


async def save_plan(db: AsyncSession, key: str, *, name: str, limits: dict[str, Any],
                    weight: int, is_default: bool | None = None) -> Plan:
    """Create or replace plan ``key``. Limits are validated (ValidationFailed lists every
    problem). Lowering a limit below current usage blocks new work only; nothing is deleted."""
    clean = clean_limits(limits)
    if weight < 1 or weight > 100:
        raise ValidationFailed("The weight must be a whole number from 1 to 100.",
                               details={"errors": [{"field": "weight",
                                                    "message": "from 1 to 100"}]})
    plan = await repo.get_plan(db, key)
    if plan is None:
        plan = Plan(key=key, name=name, limits=clean, weight=weight, is_default=False)
        db.add(plan)
    else:
        plan.name, plan.limits, plan.weight, plan.updated_at = name, clean, weight, utcnow()
    if is_default:
        for other in await repo.list_plans(db):
            other.is_default = other.key == key
        plan.is_default = True
    await db.flush()
    forget_cached()
    return plan


async def assign_plan(db: AsyncSession, org_id: uuid.UUID, org_slug: str, *,
                      plan_key: str | None, overrides: dict[str, Any] | None,
                      actor_id: uuid.UUID | None,
                      stripe_customer_id: str | None = None) -> tuple[OrgLimits, int]:
    """Give an organization a plan and/or overrides (None leaves that part as it is; an
    empty dict clears the overrides) and/or its Stripe customer (``cus_...``; '' unlinks it;
    usage from the day it is linked on is pushed, usage/stripe.py). Audited in the
    organization's log. Resumes its paused sessions when it is no longer over budget;
    returns the limits and how many resumed.

    Binds ``db`` to the organization (the audit entry and the resume are tenant writes)."""
    if plan_key is not None and await repo.get_plan(db, plan_key) is None:
        raise ValidationFailed(f"There is no plan '{plan_key}'. The plans are: " + ", ".join(
            p.key for p in await repo.list_plans(db)) + ".",
            details={"errors": [{"field": "plan", "message": "unknown plan"}]})
    clean = clean_limits(overrides, field="overrides") if overrides is not None else None
    if stripe_customer_id and not re.fullmatch(r"cus_[A-Za-z0-9_]{1,250}",
                                               stripe_customer_id):
        raise ValidationFailed(
            "A Stripe customer id looks like cus_NffrFeUfNV2Hib ('' unlinks the customer).",
            details={"errors": [{"field": "stripe_customer_id",
                                 "message": "cus_ followed by letters and digits"}]})
    quota = await repo.admit_lock(db, org_id)
    if plan_key is not None:
        quota.plan_key = plan_key
    if clean is not None:
        quota.overrides = clean
    if stripe_customer_id is not None and stripe_customer_id != (quota.stripe_customer_id or ""):
        from enginex.usage.stripe import pushed_from

        quota.stripe_customer_id = stripe_customer_id or None
        quota.stripe_pushed_through = pushed_from() if stripe_customer_id else None
    quota.updated_at = utcnow()
    await db.flush()
    forget_cached(org_id)
    limits = await org_limits(db, org_id, fresh=True)
    await set_tenant(db, org_id)
    ctx = system_context(org_id, org_slug)
    await record(db, ctx, "usage.plan_changed", target_kind="organization", target_id=org_id,
                 details={"plan": limits.plan_key, "overrides": limits.overrides,
                          "stripe_customer_id": quota.stripe_customer_id},
                 actor_kind="platform_admin", actor_id=actor_id)
    resumed = await resume_paused(db, ctx, limits)
    return limits, resumed


async def resume_paused(db: AsyncSession, ctx: TenantContext, limits: OrgLimits, *,
                        now: datetime | None = None) -> int:
    """Queue again the organization's runs paused for quota, if it is under budget now."""
    now = now or utcnow()
    usage = UsageRepository(db, ctx)
    if over_budget(limits, await usage.month_totals(now), now) is not None:
        return 0
    runs = RunRepository(db, ctx)
    paused = await usage.paused_runs()
    for run in paused:
        run.status = "queued"
        run.queued_at = now
        await db.flush()
        await runs.append_events(run.id, [("quota_resumed", run.next_node,
                                           {"message": "The budget was raised; resuming."})])
    if paused:
        from enginex.runs.service import notify_workers
        await notify_workers(db)
    return len(paused)


async def set_price(db: AsyncSession, provider: str, model: str, *, input_per_mtok: str,
                    output_per_mtok: str) -> PriceOverride:
    """Set the platform's price for a provider's model (or '*' for all its models), in USD
    per million tokens. Used for costs estimated from now on; past rows keep their price."""
    clean = clean_limits({"cost_usd_per_month": input_per_mtok}, field="input_per_mtok")
    clean_out = clean_limits({"cost_usd_per_month": output_per_mtok}, field="output_per_mtok")
    found = await db.get(PriceOverride, (provider, model))
    if found is None:
        found = PriceOverride(provider=provider, model=model,
                              input_per_mtok=clean["cost_usd_per_month"],
                              output_per_mtok=clean_out["cost_usd_per_month"])
        db.add(found)
    else:
        found.input_per_mtok = clean["cost_usd_per_month"]
        found.output_per_mtok = clean_out["cost_usd_per_month"]
        found.updated_at = utcnow()
    await db.flush()
    forget_cached()
    return found


async def delete_price(db: AsyncSession, provider: str, model: str) -> None:
    found = await db.get(PriceOverride, (provider, model))
    if found is None:
        raise NotFound()
    await db.delete(found)
    await db.flush()
    forget_cached()


# --- reads -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonthStatus:
    """This month's usage against the organization's limits (for the page and the API)."""

    limits: OrgLimits
    month_start: datetime
    resets_at: datetime
    tokens: int
    cost_micro_usd: int
    sessions_today: int
    steps_today: int
    open_sessions: int
    storage_bytes: int
    soft_limit: str | None
    paused_sessions: int


async def month_status(db: AsyncSession, ctx: TenantContext, *,
                       now: datetime | None = None) -> MonthStatus:
    now = now or utcnow()
    usage = UsageRepository(db, ctx)
    limits = await org_limits(db, ctx.org_id)
    totals = await usage.month_totals(now)
    return MonthStatus(
        limits=limits, month_start=month_of(now), resets_at=next_month(now),
        tokens=totals.tokens, cost_micro_usd=totals.cost_micro_usd,
        sessions_today=await usage.day_total(UsageKind.SESSION_STARTED, now),
        steps_today=await usage.day_total(UsageKind.STEP, now),
        open_sessions=await usage.open_sessions(),
        storage_bytes=await usage.total(UsageKind.STORAGE_BYTES),
        soft_limit=soft_reached(limits, totals),
        paused_sessions=len(await usage.paused_runs()))
