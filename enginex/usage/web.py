"""Usage pages.

* ``/o/{org}/usage`` (org admins): this month against the plan's limits, the soft-threshold
  banner, usage per model and per agent, and a daily chart (vendored uPlot, drawn by
  ``static/usage.js`` from the usage API: no inline script).
* Platform admin (``WebPlatformAdmin``): ``/admin/plans`` (define and edit plans),
  ``/admin/tenants/{id}/plan`` (a tenant's plan, overrides and Stripe customer) and
  ``/admin/usage`` (top tenants by cost, tokens, steps or sessions; CSV). They call the same
  service functions as the admin API and show ids, slugs and numbers only.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from enginex.admin.service import access_tenant
from enginex.kit.errors import AppError, ValidationFailed
from enginex.kit.time import utcnow
from enginex.tenancy.guards import DB, make_router
from enginex.tenancy.principal import UserPrincipal
from enginex.tenancy.scopes import Scope
from enginex.usage import repository as repo
from enginex.usage import service
from enginex.usage.api import SORTS, tenant_usage, usage_rows
from enginex.usage.limits import LIMITS
from enginex.usage.repository import day_of, month_of
from enginex.web.errors import rollback_for_page
from enginex.web.templating import render
from enginex.web.tenant import WebContext, WebPlatformAdmin, WebTenant

router = make_router(tags=["dashboard"])


@router.get("/o/{org}/usage", response_class=HTMLResponse)
async def usage_page(request: Request, db: DB,
                     web: Annotated[WebContext, WebTenant(Scope.USAGE_READ)]) -> Response:
    """This month's usage against the limits, per model and per agent."""
    ctx = web.ctx
    now = utcnow()
    status = await service.month_status(db, ctx, now=now)
    start, end = month_of(now), day_of(now) + timedelta(days=1)
    used = {"concurrent_sessions": status.open_sessions,
            "sessions_per_day": status.sessions_today, "steps_per_day": status.steps_today,
            "tokens_per_month": status.tokens,
            "cost_usd_per_month": f"{status.cost_micro_usd / 1_000_000:.2f}",
            "storage_bytes": status.storage_bytes}
    limits = [(name, spec, status.limits.get(name), used.get(name)) for name, spec in
              LIMITS.items() if name != "soft_threshold_percent"]
    return render(request, "usage/page.html", principal=web.principal, ctx=ctx,
                  status=status, limits=limits,
                  per_model=await usage_rows(db, ctx, start, end, ["provider", "model"]),
                  per_agent=await usage_rows(db, ctx, start, end, ["agent"]))


# --- platform admin: plans, a tenant's plan, usage across tenants ------------------------------

Admin = Annotated[UserPrincipal, WebPlatformAdmin()]
NOTICES = {"plan_saved": "Plan saved.", "tenant_saved": "The tenant's plan was saved."}
KEY_PATTERN = re.compile(r"[a-z0-9-]{1,40}")


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v[:2000] for k, v in form.items() if isinstance(v, str)}


def _limit_value(name: str, text: str) -> Any:
    """A limit typed in a form: blank is unlimited, money stays a string (clean_limits
    validates it), anything else must be a whole number."""
    text = text.strip().replace("_", "").replace(",", "")
    if not text:
        return None
    if LIMITS[name].decimal:
        return text
    try:
        return int(text)
    except ValueError:
        return text  # clean_limits names the field and what it must be


async def _plans_page(request: Request, db: DB, principal: UserPrincipal, *,
                      status_code: int = 200, error: str | None = None,
                      form: dict[str, str] | None = None) -> HTMLResponse:
    notice = NOTICES.get(request.query_params.get("notice", "")) if status_code == 200 else None
    return render(request, "usage/admin_plans.html", principal=principal,
                  status_code=status_code, plans=await repo.list_plans(db), limits=LIMITS,
                  error=error, notice=notice, form=form or {})


@router.get("/admin/plans", response_class=HTMLResponse)
async def plans_page(request: Request, db: DB, principal: Admin) -> HTMLResponse:
    """Every plan with its limits and scheduler weight, an edit form per plan and one for a
    new plan."""
    return await _plans_page(request, db, principal)


@router.post("/admin/plans", response_class=HTMLResponse)
async def save_plan_form(request: Request, db: DB, principal: Admin) -> Response:
    """Create or replace a plan (the same checks as ``PUT /api/v1/admin/plans/{key}``);
    blank limits are unlimited."""
    form = await _form(request)
    key = form.get("key", "").strip()
    try:
        if not KEY_PATTERN.fullmatch(key):
            raise ValidationFailed("A plan key is 1-40 lowercase letters, digits or '-'.")
        name = form.get("name", "").strip()
        if not name or len(name) > 100:
            raise ValidationFailed("A plan needs a name of 1-100 characters.")
        try:
            weight = int(form.get("weight", "1") or 1)
        except ValueError:
            raise ValidationFailed("The weight must be a whole number from 1 to 100.") from None
        limits = {n: _limit_value(n, form.get(f"limit_{n}", "")) for n in LIMITS}
        await service.save_plan(db, key, name=name, limits=limits, weight=weight,
                                is_default=form.get("is_default") == "1")
    except AppError as exc:
        await rollback_for_page(db, exc)
        return await _plans_page(request, db, principal, status_code=exc.status_code,
                                 error=exc.message, form=form)
    return RedirectResponse("/admin/plans?notice=plan_saved", status_code=303)


def _override_lines(overrides: dict[str, Any]) -> str:
    return "\n".join(f"{k}={'null' if v is None else v}" for k, v in sorted(overrides.items()))


def _parse_overrides(text: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise ValidationFailed(f"Override line {number}: write NAME=VALUE, e.g. "
                                   "tokens_per_month=5000000 (null for unlimited).")
        if value == "null":
            found[name] = None
        elif name in LIMITS:
            found[name] = _limit_value(name, value)
        else:
            found[name] = value  # clean_limits reports the unknown name
    return found


async def _tenant_plan_page(request: Request, db: DB, principal: UserPrincipal,
                            tenant_id: uuid.UUID, *, status_code: int = 200,
                            error: str | None = None,
                            form: dict[str, str] | None = None) -> HTMLResponse:
    org = await access_tenant(db, tenant_id)
    limits = await service.org_limits(db, org.id, fresh=True)
    quota = await repo.get_quota(db, org.id)
    notice = NOTICES.get(request.query_params.get("notice", "")) if status_code == 200 else None
    values = form or {"plan": limits.plan_key or "",
                      "overrides": _override_lines(limits.overrides),
                      "stripe_customer_id": (quota.stripe_customer_id or "") if quota else ""}
    return render(request, "usage/admin_tenant_plan.html", principal=principal,
                  status_code=status_code, org=org, limits=limits, spec=LIMITS,
                  plans=await repo.list_plans(db), form=values, error=error, notice=notice)


@router.get("/admin/tenants/{tenant_id}/plan", response_class=HTMLResponse)
async def tenant_plan_page(request: Request, tenant_id: uuid.UUID, db: DB,
                           principal: Admin) -> HTMLResponse:
    """A tenant's plan, overrides, effective limits and Stripe customer, with the form that
    changes them (404 for an unknown tenant)."""
    return await _tenant_plan_page(request, db, principal, tenant_id)


@router.post("/admin/tenants/{tenant_id}/plan", response_class=HTMLResponse)
async def save_tenant_plan(request: Request, tenant_id: uuid.UUID, db: DB,
                           principal: Admin) -> Response:
    """Assign the plan, overrides (NAME=VALUE lines) and Stripe customer; audited in the
    tenant's log; paused sessions resume when it is under budget again."""
    form = await _form(request)
    org = await access_tenant(db, tenant_id)
    try:
        await service.assign_plan(
            db, org.id, org.slug, plan_key=form.get("plan") or None,
            overrides=_parse_overrides(form.get("overrides", "")),
            actor_id=principal.user_id,
            stripe_customer_id=form.get("stripe_customer_id", "").strip())
    except AppError as exc:
        await rollback_for_page(db, exc)
        return await _tenant_plan_page(request, db, principal, tenant_id,
                                       status_code=exc.status_code, error=exc.message,
                                       form=form)
    return RedirectResponse(f"/admin/tenants/{org.id}/plan?notice=tenant_saved",
                            status_code=303)


@router.get("/admin/usage", response_class=HTMLResponse)
async def admin_usage_page(request: Request, db: DB, principal: Admin,
                           sort: Annotated[str, Query(pattern="^(cost|tokens|steps|sessions)$")]
                           = "cost") -> HTMLResponse:
    """Usage across tenants this month, top tenants first by ``sort``: ids, slugs, plans and
    numbers only, never content. The CSV is ``/api/v1/admin/usage/export.csv``."""
    now = utcnow()
    start, end = month_of(now), day_of(now) + timedelta(days=1)
    rows = await tenant_usage(db, start, end, sort)
    return render(request, "usage/admin_usage.html", principal=principal, rows=rows,
                  sort=sort, sorts=SORTS, month=start)
