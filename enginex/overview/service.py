"""The organization's home page (``/o/{org}``): what happened over the last 30 days and what
needs attention now. Each part is read only when the member's role may read it (sessions:
runs:read; approvals: approvals:read; tokens, costs and top agents: usage:read)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from enginex.approvals.models import Approval
from enginex.kit.time import utcnow
from enginex.overview.repository import OUTCOMES, OverviewRepository
from enginex.runs.models import Run
from enginex.tenancy.context import TenantContext
from enginex.tenancy.scopes import Scope
from enginex.usage.repository import UsageRepository, day_of

DAYS = 30
LIST_SIZE = 5


@dataclass(frozen=True)
class PendingApproval:
    approval: Approval
    agent_key: str
    agent_name: str


@dataclass(frozen=True)
class AgentUse:
    key: str
    name: str
    sessions: int
    steps: int
    tokens: int
    cost_micro_usd: int


@dataclass
class Overview:
    """``days``: the UTC days of the window, oldest first ('YYYY-MM-DD'); every series has
    one value per day. A part the role may not read is None (lists: empty and not shown)."""

    days: list[str]
    sessions: dict[str, list[int]] | None = None
    session_totals: dict[str, int] = field(default_factory=dict)
    tokens_in: list[int] | None = None
    tokens_out: list[int] | None = None
    cost_micro_usd: list[int] | None = None
    pending: list[PendingApproval] | None = None
    pending_total: int = 0
    failures: list[Run] | None = None
    agent_names: dict[str, str] = field(default_factory=dict)
    top_agents: list[AgentUse] | None = None

    @property
    def tokens_total(self) -> int:
        return sum(self.tokens_in or []) + sum(self.tokens_out or [])

    @property
    def cost_total_micro_usd(self) -> int:
        return sum(self.cost_micro_usd or [])

    def chart_sessions(self) -> dict[str, object]:
        """The sessions chart's data for static/overview.js."""
        return {"days": self.days, "series": [
            {"label": outcome, "values": values}
            for outcome, values in (self.sessions or {}).items()]}

    def chart_usage(self) -> dict[str, object]:
        """The tokens and cost chart's data for static/overview.js (cost in USD)."""
        return {"days": self.days,
                "tokens_in": self.tokens_in or [], "tokens_out": self.tokens_out or [],
                "cost_usd": [c / 1_000_000 for c in self.cost_micro_usd or []]}


def window(now: datetime) -> tuple[datetime, list[str]]:
    """The first instant of the window and its days, ending with today (UTC)."""
    start = day_of(now) - timedelta(days=DAYS - 1)
    return start, [(start + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(DAYS)]


async def org_overview(db: AsyncSession, ctx: TenantContext, *,
                       now: datetime | None = None) -> Overview:
    """The home page's figures for ``ctx``'s organization; never another organization's."""
    now = now or utcnow()
    start, days = window(now)
    index = {day: i for i, day in enumerate(days)}
    repo = OverviewRepository(db, ctx)
    found = Overview(days=days)
    agent_keys: set[str] = set()
    if ctx.has(Scope.RUNS_READ):
        by_status = {status: outcome for outcome, group in OUTCOMES.items()
                     for status in group}
        sessions = {outcome: [0] * DAYS for outcome in OUTCOMES}
        for day, status, count in await repo.sessions_per_day(start):
            if day in index and status in by_status:
                sessions[by_status[status]][index[day]] += count
        found.sessions = sessions
        found.session_totals = {outcome: sum(v) for outcome, v in sessions.items()}
        found.failures = await repo.recent_failures(LIST_SIZE)
        agent_keys.update(run.agent_key for run in found.failures)
    if ctx.has(Scope.APPROVALS_READ):
        approvals, found.pending_total = await repo.pending_approvals(LIST_SIZE)
        runs = await repo.runs_by_id(a.run_id for a in approvals)
        keys = {a.id: runs[a.run_id].agent_key if a.run_id in runs else "" for a in approvals}
        agent_keys.update(keys.values())
        found.pending = [PendingApproval(a, keys[a.id], "") for a in approvals]
    top: list[tuple[str, int, int, int, int]] = []
    if ctx.has(Scope.USAGE_READ):
        usage = UsageRepository(db, ctx)
        tokens_in, tokens_out, cost = [0] * DAYS, [0] * DAYS, [0] * DAYS
        for day, t_in, t_out, micro in await usage.daily_model_use(start, now + timedelta(1)):
            i = index.get(day.strftime("%Y-%m-%d"))
            if i is not None:
                tokens_in[i], tokens_out[i], cost[i] = t_in, t_out, micro
        found.tokens_in, found.tokens_out, found.cost_micro_usd = tokens_in, tokens_out, cost
        top = await usage.top_agents(start, now + timedelta(1), limit=LIST_SIZE)
        agent_keys.update(key for key, *_ in top)
    names = await repo.agent_names(agent_keys - {""})
    found.agent_names = names
    if found.pending is not None:
        found.pending = [PendingApproval(p.approval, p.agent_key,
                                         names.get(p.agent_key, p.agent_key))
                         for p in found.pending]
    if ctx.has(Scope.USAGE_READ):
        found.top_agents = [AgentUse(key, names.get(key, key), n, steps, tokens, micro)
                            for key, n, steps, tokens, micro in top]
    return found


