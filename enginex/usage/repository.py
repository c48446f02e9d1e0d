"""Queries of the usage ledger, its rollups and the quota tables. Only this module builds
them; the ledger is insert-only."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.agents.models import Agent
from enginex.auth.models import User
from enginex.db import TenantContextMissing, UTCDateTime, session_tenant
from enginex.orgs.models import Membership
from enginex.runs.models import Run
from enginex.tenancy.context import TenantContext
from enginex.usage.models import (
    TOKEN_KINDS,
    OrgQuota,
    Plan,
    PriceOverride,
    UsageEvent,
    UsageKind,
    UsageRollup,
)

ROLLUP_KEY = ("tenant_id", "period", "period_start", "kind", "provider", "model", "agent_key")
OPEN_STATUSES = ("queued", "running", "waiting_approval", "paused_quota")


EVENT_COLUMNS = ("tenant_id", "id", "kind", "quantity", "unit", "provider", "model",
                 "agent_key", "run_id", "cost_micro_usd", "price", "estimated",
                 "idempotency_key", "occurred_at")
_pg_append_cache: dict[int, Any] = {}


def _pg_append_at(n: int) -> Any:
    """The one-statement ledger insert + rollup upsert of ``n`` rows (PostgreSQL)."""
    statement = _pg_append_cache.get(n)
    if statement is None:
        table = UsageEvent.__table__
        values = ", ".join("(" + ", ".join(f":{c}_{i}" for c in EVENT_COLUMNS) + ")"
                           for i in range(n))
        # Only names from EVENT_COLUMNS and bind placeholders are formatted in.
        sql = (f"WITH ins AS (INSERT INTO usage_events ({', '.join(EVENT_COLUMNS)}) "  # noqa: S608
               f"VALUES {values} ON CONFLICT (tenant_id, idempotency_key) DO NOTHING "
               "RETURNING kind, provider, model, agent_key, quantity, cost_micro_usd) "
               "INSERT INTO usage_rollups (tenant_id, period, period_start, kind, provider, "
               "model, agent_key, quantity, cost_micro_usd, events) "
               "SELECT :tenant, p.period, p.start, ins.kind, ins.provider, ins.model, "
               "ins.agent_key, sum(ins.quantity), sum(ins.cost_micro_usd), count(*) "
               "FROM ins CROSS JOIN (VALUES ('hour', CAST(:hour AS timestamptz)), "
               "('day', CAST(:day AS timestamptz))) AS p(period, start) "
               "GROUP BY p.period, p.start, ins.kind, ins.provider, ins.model, "
               "ins.agent_key "
               "ON CONFLICT (tenant_id, period, period_start, kind, provider, model, "
               "agent_key) DO UPDATE SET quantity = usage_rollups.quantity + "
               "excluded.quantity, cost_micro_usd = usage_rollups.cost_micro_usd + "
               "excluded.cost_micro_usd, events = usage_rollups.events + excluded.events")
        binds = [bindparam(f"{c}_{i}", type_=table.c[c].type)  # type: ignore[attr-defined]
                 for i in range(n) for c in EVENT_COLUMNS]
        binds += [bindparam("tenant", type_=table.c["tenant_id"].type),  # type: ignore[attr-defined]
                  bindparam("hour", type_=UTCDateTime()), bindparam("day", type_=UTCDateTime())]
        statement = text(sql).bindparams(*binds)
        _pg_append_cache[n] = statement
    return statement


def _insert(db: AsyncSession) -> Any:
    return pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert


def hour_of(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def day_of(at: datetime) -> datetime:
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def month_of(at: datetime) -> datetime:
    return day_of(at).replace(day=1)


def next_month(at: datetime) -> datetime:
    start = month_of(at)
    return (start + timedelta(days=32)).replace(day=1)


@dataclass(frozen=True)
class Totals:
    tokens: int
    cost_micro_usd: int


class UsageRepository:
    """The ledger and rollups of one organization (the session must be bound to it)."""

    def __init__(self, db: AsyncSession, ctx: TenantContext) -> None:
        if session_tenant(db) != ctx.org_id:
            raise TenantContextMissing("database session is not bound to this tenant")
        self.db, self.ctx = db, ctx

    async def append(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Insert ledger rows; a row whose idempotency key is already in the ledger is
        skipped. Returns the rows inserted. Rollups are then updated for exactly those, in
        the caller's transaction."""
        if not rows:
            return []
        for row in rows:
            row["tenant_id"] = self.ctx.org_id
        stmt = _insert(self.db)(UsageEvent).values(rows).on_conflict_do_nothing(
            index_elements=["tenant_id", "idempotency_key"]).returning(
            UsageEvent.idempotency_key)
        inserted = set((await self.db.execute(stmt)).scalars().all())
        written = [r for r in rows if r["idempotency_key"] in inserted]
        await self._roll_up(written)
        return written

    async def append_at(self, rows: list[dict[str, Any]], at: datetime) -> None:
        """``append`` for rows that all occurred at ``at`` (a step's usage), in as few round
        trips as the database allows: on PostgreSQL one statement (the ledger insert and the
        rollup upsert of exactly the inserted rows, in one data-modifying CTE); elsewhere
        ``append``. The statement text is built once per row count."""
        if not rows:
            return
        if self.db.get_bind().dialect.name != "postgresql":
            await self.append(rows)
            return
        params: dict[str, Any] = {"tenant": self.ctx.org_id, "hour": hour_of(at),
                                  "day": day_of(at)}
        for i, row in enumerate(rows):
            row["tenant_id"] = self.ctx.org_id
            params.update({f"{c}_{i}": row.get(c) for c in EVENT_COLUMNS})
        await self.db.execute(_pg_append_at(len(rows)), params)

    async def _roll_up(self, rows: list[dict[str, Any]]) -> None:
        totals: dict[tuple[Any, ...], list[int]] = {}
        for row in rows:
            for period, start in (("hour", hour_of(row["occurred_at"])),
                                  ("day", day_of(row["occurred_at"]))):
                key = (self.ctx.org_id, period, start, row["kind"], row.get("provider", ""),
                       row.get("model", ""), row.get("agent_key", ""))
                acc = totals.setdefault(key, [0, 0, 0])
                acc[0] += row["quantity"]
                acc[1] += row.get("cost_micro_usd", 0)
                acc[2] += 1
        if not totals:
            return
        values = [dict(zip(ROLLUP_KEY, key, strict=True), quantity=q, cost_micro_usd=c,
                       events=n) for key, (q, c, n) in totals.items()]
        insert = _insert(self.db)(UsageRollup).values(values)
        stmt = insert.on_conflict_do_update(index_elements=list(ROLLUP_KEY), set_={
            "quantity": UsageRollup.quantity + insert.excluded.quantity,
            "cost_micro_usd": UsageRollup.cost_micro_usd + insert.excluded.cost_micro_usd,
            "events": UsageRollup.events + insert.excluded.events})
        await self.db.execute(stmt)

    async def month_totals(self, now: datetime) -> Totals:
        """Model tokens (input + output) and estimated cost of the calendar month of ``now``."""
        start = month_of(now)
        stmt = select(
            func.coalesce(func.sum(UsageRollup.quantity).filter(
                UsageRollup.kind.in_([str(k) for k in TOKEN_KINDS])), 0),
            func.coalesce(func.sum(UsageRollup.cost_micro_usd), 0),
        ).where(UsageRollup.tenant_id == self.ctx.org_id, UsageRollup.period == "day",
                UsageRollup.period_start >= start, UsageRollup.period_start < next_month(now))
        tokens, cost = (await self.db.execute(stmt)).one()
        return Totals(int(tokens), int(cost))

    async def day_total(self, kind: UsageKind, now: datetime) -> int:
        stmt = select(func.coalesce(func.sum(UsageRollup.quantity), 0)).where(
            UsageRollup.tenant_id == self.ctx.org_id, UsageRollup.period == "day",
            UsageRollup.period_start == day_of(now), UsageRollup.kind == str(kind))
        return int((await self.db.execute(stmt)).scalar_one())

    async def total(self, kind: UsageKind) -> int:
        """All-time total of ``kind`` (storage bytes: what is stored now)."""
        stmt = select(func.coalesce(func.sum(UsageRollup.quantity), 0)).where(
            UsageRollup.tenant_id == self.ctx.org_id, UsageRollup.period == "day",
            UsageRollup.kind == str(kind))
        return int((await self.db.execute(stmt)).scalar_one())

    async def open_sessions(self) -> int:
        stmt = select(func.count()).select_from(Run).where(
            Run.tenant_id == self.ctx.org_id, Run.status.in_(OPEN_STATUSES))
        return int((await self.db.execute(stmt)).scalar_one())

    async def queued_sessions(self) -> int:
        stmt = select(func.count()).select_from(Run).where(
            Run.tenant_id == self.ctx.org_id, Run.status == "queued")
        return int((await self.db.execute(stmt)).scalar_one())

    async def rollups(self, period: str, start: datetime, end: datetime) -> list[UsageRollup]:
        stmt = select(UsageRollup).where(
            UsageRollup.tenant_id == self.ctx.org_id, UsageRollup.period == period,
            UsageRollup.period_start >= start, UsageRollup.period_start < end,
        ).order_by(UsageRollup.period_start, UsageRollup.kind, UsageRollup.provider,
                   UsageRollup.model, UsageRollup.agent_key)
        return list((await self.db.execute(stmt)).scalars().all())

    async def events(self, start: datetime, end: datetime, *,
                     limit: int = 100_000) -> list[UsageEvent]:
        stmt = select(UsageEvent).where(
            UsageEvent.tenant_id == self.ctx.org_id, UsageEvent.occurred_at >= start,
            UsageEvent.occurred_at < end).order_by(UsageEvent.occurred_at,
                                                   UsageEvent.idempotency_key).limit(limit)
        return list((await self.db.execute(stmt)).scalars().all())

    async def run_usage(self, run_id: uuid.UUID, start: datetime,
                        end: datetime) -> list[UsageEvent]:
        """The ledger rows of one run. Rows are written with their step's commit, so they all
        fall between the run's creation and its end: the (tenant_id, occurred_at) index
        bounds the read to that window instead of the whole ledger."""
        stmt = select(UsageEvent).where(
            UsageEvent.tenant_id == self.ctx.org_id, UsageEvent.occurred_at >= start,
            UsageEvent.occurred_at <= end, UsageEvent.run_id == run_id,
        ).order_by(UsageEvent.occurred_at, UsageEvent.idempotency_key).limit(20_000)
        return list((await self.db.execute(stmt)).scalars().all())

    async def daily_model_use(self, start: datetime, end: datetime
                              ) -> list[tuple[datetime, int, int, int]]:
        """Per day in [start, end): (day, input tokens, output tokens, estimated cost in
        micro-dollars of every kind), from the daily rollups."""
        tokens_in = func.coalesce(func.sum(UsageRollup.quantity).filter(
            UsageRollup.kind == str(UsageKind.LLM_INPUT_TOKENS)), 0)
        tokens_out = func.coalesce(func.sum(UsageRollup.quantity).filter(
            UsageRollup.kind == str(UsageKind.LLM_OUTPUT_TOKENS)), 0)
        stmt = select(UsageRollup.period_start, tokens_in, tokens_out,
                      func.coalesce(func.sum(UsageRollup.cost_micro_usd), 0)).where(
            UsageRollup.tenant_id == self.ctx.org_id, UsageRollup.period == "day",
            UsageRollup.period_start >= start, UsageRollup.period_start < end,
        ).group_by(UsageRollup.period_start).order_by(UsageRollup.period_start)
        return [(day, int(i), int(o), int(c))
                for day, i, o, c in (await self.db.execute(stmt)).all()]

    async def top_agents(self, start: datetime, end: datetime, *,
                         limit: int = 5) -> list[tuple[str, int, int, int, int]]:
        """The agents with the most sessions started in [start, end), from the daily rollups:
        (agent key, sessions, steps, model tokens, estimated cost in micro-dollars)."""
        def total(kinds: tuple[UsageKind, ...]) -> Any:
            return func.coalesce(func.sum(UsageRollup.quantity).filter(
                UsageRollup.kind.in_([str(k) for k in kinds])), 0)

        sessions = total((UsageKind.SESSION_STARTED,))
        stmt = select(UsageRollup.agent_key, sessions, total((UsageKind.STEP,)),
                      total(TOKEN_KINDS),
                      func.coalesce(func.sum(UsageRollup.cost_micro_usd), 0)).where(
            UsageRollup.tenant_id == self.ctx.org_id, UsageRollup.period == "day",
            UsageRollup.period_start >= start, UsageRollup.period_start < end,
            UsageRollup.agent_key != "",
        ).group_by(UsageRollup.agent_key).order_by(
            sessions.desc(), UsageRollup.agent_key).limit(limit)
        return [(key, int(n), int(steps), int(tokens), int(cost))
                for key, n, steps, tokens, cost in (await self.db.execute(stmt)).all()]

    async def paused_runs(self) -> list[Run]:
        stmt = select(Run).where(Run.tenant_id == self.ctx.org_id,
                                 Run.status == "paused_quota").order_by(Run.queued_at)
        return list((await self.db.execute(stmt)).scalars().all())


# --- platform tables (plans, org quotas, prices) -----------------------------------------------


async def admit_lock(db: AsyncSession, org_id: uuid.UUID) -> OrgQuota:
    """Take the organization's admission lock (see ``OrgQuota``) and return its row, created
    on first use. Held until the caller's transaction ends."""
    insert = _insert(db)(OrgQuota).values(org_id=org_id, overrides={}, admissions=1)
    stmt = insert.on_conflict_do_update(
        index_elements=["org_id"], set_={"admissions": OrgQuota.admissions + 1}).returning(
        OrgQuota)
    quota = (await db.execute(stmt.execution_options(populate_existing=True))).scalar_one()
    return quota


async def get_quota(db: AsyncSession, org_id: uuid.UUID) -> OrgQuota | None:
    return await db.get(OrgQuota, org_id)


async def list_quotas(db: AsyncSession) -> list[OrgQuota]:
    return list((await db.execute(select(OrgQuota))).scalars().all())


async def set_soft_warned(db: AsyncSession, org_id: uuid.UUID, month: str) -> bool:
    """Mark ``month``'s soft warning as given; False if it already was (by anyone)."""
    stmt = update(OrgQuota).where(
        OrgQuota.org_id == org_id,
        (OrgQuota.soft_warned_month.is_(None)) | (OrgQuota.soft_warned_month != month),
    ).values(soft_warned_month=month)
    return bool((await db.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def list_plans(db: AsyncSession) -> list[Plan]:
    return list((await db.execute(select(Plan).order_by(Plan.weight, Plan.key))).scalars().all())


async def get_plan(db: AsyncSession, key: str) -> Plan | None:
    return await db.get(Plan, key)


async def default_plan(db: AsyncSession) -> Plan | None:
    stmt = select(Plan).where(Plan.is_default.is_(True)).limit(1)
    return (await db.execute(stmt)).scalar_one_or_none()


async def price_overrides(db: AsyncSession) -> list[PriceOverride]:
    stmt = select(PriceOverride).order_by(PriceOverride.provider, PriceOverride.model)
    return list((await db.execute(stmt)).scalars().all())


@dataclass(frozen=True)
class TenantUsage:
    tenant_id: uuid.UUID
    kind: str
    quantity: int
    cost_micro_usd: int


async def usage_by_tenant(db: AsyncSession, start: datetime, end: datetime) -> list[TenantUsage]:
    """Every tenant's usage totals per kind from the daily rollups in [start, end): ids and
    numbers only (the platform admin's view; on PostgreSQL through the reviewed SECURITY
    DEFINER function ``enginex_usage_by_tenant``, since the rollups are under RLS)."""
    if db.get_bind().dialect.name == "postgresql":
        sql = text("SELECT tenant_id, kind, quantity, cost_micro_usd "
                   "FROM enginex_usage_by_tenant(:start, :end)")
        params: dict[str, Any] = {"start": start, "end": end}
    else:
        sql = text("SELECT tenant_id, kind, sum(quantity), sum(cost_micro_usd) "
                   "FROM usage_rollups WHERE period = 'day' AND period_start >= :start "
                   "AND period_start < :end GROUP BY tenant_id, kind").bindparams(
            bindparam("start", type_=UTCDateTime()), bindparam("end", type_=UTCDateTime()))
        params = {"start": start, "end": end}
    rows = (await db.execute(sql, params)).all()
    return [TenantUsage(r[0] if isinstance(r[0], uuid.UUID) else uuid.UUID(str(r[0])),
                        str(r[1]), int(r[2] or 0), int(r[3] or 0)) for r in rows]


async def admin_emails(db: AsyncSession, ctx: TenantContext) -> list[str]:
    """The addresses of the organization's active admins (enabled accounts)."""
    stmt = select(User.email).join(Membership, Membership.user_id == User.id).where(
        Membership.tenant_id == ctx.org_id, Membership.role == "admin",
        Membership.disabled_at.is_(None), User.disabled.is_(False)).order_by(User.email)
    return list((await db.execute(stmt)).scalars().all())


async def count_members(db: AsyncSession, ctx: TenantContext) -> int:
    stmt = select(func.count()).select_from(Membership).where(
        Membership.tenant_id == ctx.org_id)
    return int((await db.execute(stmt)).scalar_one())


async def count_agents(db: AsyncSession, ctx: TenantContext) -> int:
    stmt = select(func.count()).select_from(Agent).where(Agent.tenant_id == ctx.org_id)
    return int((await db.execute(stmt)).scalar_one())
