"""Queries of the organization's home page. Each one reads an index or a rollup, never the
event log: sessions per day and recent failures through ``ix_runs_tenant_id_status_queued_at``
(an index-only range per status on PostgreSQL), pending approvals through
``ix_approvals_tenant_id_status_created_at_id``; tokens, costs and top agents come from the
usage rollups (``usage.repository``)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.agents.models import Agent
from enginex.approvals.models import Approval
from enginex.db import TenantContextMissing, session_tenant
from enginex.runs.models import Run
from enginex.tenancy.context import TenantContext

# The outcomes the sessions chart shows, and the statuses counted in each.
OUTCOMES: dict[str, tuple[str, ...]] = {
    "succeeded": ("succeeded",),
    "failed": ("failed",),
    "waiting": ("waiting_approval",),
    "in progress": ("queued", "running", "paused_quota"),
    "cancelled": ("cancelled",),
}


class OverviewRepository:
    """Read-only summaries of one organization (the session must be bound to it)."""

    def __init__(self, db: AsyncSession, ctx: TenantContext) -> None:
        if session_tenant(db) != ctx.org_id:
            raise TenantContextMissing("database session is not bound to this tenant")
        self.db, self.ctx = db, ctx

    def _day(self, column: Any) -> Any:
        """The UTC calendar day of a timestamp column, as 'YYYY-MM-DD'."""
        if self.db.get_bind().dialect.name == "postgresql":
            return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
        return func.substr(column, 1, 10)  # SQLite stores 'YYYY-MM-DD HH:MM:SS' in UTC

    async def sessions_per_day(self, start: datetime) -> list[tuple[str, str, int]]:
        """(day, status, sessions) for sessions queued since ``start`` (the day a paused
        session resumed counts for it)."""
        day = self._day(Run.queued_at)
        statuses = [s for group in OUTCOMES.values() for s in group]
        stmt = (select(day, Run.status, func.count())
                .where(Run.tenant_id == self.ctx.org_id, Run.status.in_(statuses),
                       Run.queued_at >= start)
                .group_by(day, Run.status))
        return [(str(d), str(s), int(n)) for d, s, n in (await self.db.execute(stmt)).all()]

    async def recent_failures(self, limit: int) -> list[Run]:
        stmt = (select(Run).where(Run.tenant_id == self.ctx.org_id, Run.status == "failed")
                .order_by(Run.queued_at.desc(), Run.id.desc()).limit(limit))
        return list((await self.db.execute(stmt)).scalars())

    async def pending_approvals(self, limit: int) -> tuple[list[Approval], int]:
        """The oldest pending approvals first (they expire first), and how many are pending."""
        base = (Approval.tenant_id == self.ctx.org_id, Approval.status == "pending")
        stmt = (select(Approval).where(*base)
                .order_by(Approval.created_at, Approval.id).limit(limit))
        rows = list((await self.db.execute(stmt)).scalars())
        total = (await self.db.execute(
            select(func.count()).select_from(Approval).where(*base))).scalar_one()
        return rows, int(total)

    async def runs_by_id(self, ids: Iterable[Any]) -> dict[Any, Run]:
        wanted = list(set(ids))
        if not wanted:
            return {}
        stmt = select(Run).where(Run.tenant_id == self.ctx.org_id, Run.id.in_(wanted))
        return {run.id: run for run in (await self.db.execute(stmt)).scalars()}

    async def agent_names(self, keys: Iterable[str]) -> dict[str, str]:
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        stmt = select(Agent.key, Agent.name).where(Agent.tenant_id == self.ctx.org_id,
                                                   Agent.key.in_(wanted))
        return {str(k): str(n) for k, n in (await self.db.execute(stmt)).all()}
