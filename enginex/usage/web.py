"""The organization's usage page (``/o/{org}/usage``, org admins): this month against the
plan's limits, the soft-threshold banner, usage per model and per agent, and a daily chart
(vendored uPlot, drawn by ``static/usage.js`` from the usage API: no inline script)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from enginex.kit.time import utcnow
from enginex.tenancy.guards import DB, make_router
from enginex.tenancy.scopes import Scope
from enginex.usage import service
from enginex.usage.api import usage_rows
from enginex.usage.limits import LIMITS
from enginex.usage.repository import day_of, month_of
from enginex.web.templating import render
from enginex.web.tenant import WebContext, WebTenant

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
