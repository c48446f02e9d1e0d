"""Usage ledger and rollups (tenant tables) and plans, org quotas, price overrides and rate
windows (platform tables).

``usage_events`` is append-only: rows are inserted, never updated; a retried step cannot count
twice because ``(tenant_id, idempotency_key)`` is unique. ``usage_rollups`` hold the totals per
hour and per day, updated in the same transaction as the ledger rows they sum, so reads never
scan the ledger.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base, TenantOwned
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow


class UsageKind(StrEnum):
    """Every metered quantity, with its unit in ``UNITS``."""

    SESSION_STARTED = "session_started"
    STEP = "step"
    LLM_INPUT_TOKENS = "llm_input_tokens"
    LLM_OUTPUT_TOKENS = "llm_output_tokens"
    LLM_CACHED_TOKENS = "llm_cached_tokens"
    TOOL_CALL = "tool_call"
    MCP_CALL = "mcp_call"
    EGRESS_BYTES = "egress_bytes"
    STORAGE_BYTES = "storage_bytes"
    API_REQUESTS = "api_requests"


UNITS: dict[UsageKind, str] = {
    UsageKind.SESSION_STARTED: "sessions", UsageKind.STEP: "steps",
    UsageKind.LLM_INPUT_TOKENS: "tokens", UsageKind.LLM_OUTPUT_TOKENS: "tokens",
    UsageKind.LLM_CACHED_TOKENS: "tokens", UsageKind.TOOL_CALL: "calls",
    UsageKind.MCP_CALL: "calls", UsageKind.EGRESS_BYTES: "bytes",
    UsageKind.STORAGE_BYTES: "bytes", UsageKind.API_REQUESTS: "requests",
}
TOKEN_KINDS = (UsageKind.LLM_INPUT_TOKENS, UsageKind.LLM_OUTPUT_TOKENS)


class UsageEvent(TenantOwned, Base):
    """One metered event. Costs are integer micro-dollars (USD x 10^6), estimated from the
    price stored with the row (``price``: where it came from and the per-million rates)."""

    __tablename__ = "usage_events"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32))
    quantity: Mapped[int] = mapped_column(BigInteger)
    unit: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str] = mapped_column(String(64), default="")
    model: Mapped[str] = mapped_column(String(128), default="")
    agent_key: Mapped[str] = mapped_column(String(64), default="")
    run_id: Mapped[uuid.UUID | None]
    cost_micro_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    price: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    estimated: Mapped[bool] = mapped_column(default=False)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_usage_events_tenant_id_occurred_at", "tenant_id", "occurred_at"),
    )


class UsageRollup(TenantOwned, Base):
    """Totals of the ledger per period (``hour`` or ``day``, starting at ``period_start``),
    kind, provider, model and agent ('' where not applicable)."""

    __tablename__ = "usage_rollups"

    period: Mapped[str] = mapped_column(String(8), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    agent_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    quantity: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_micro_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    events: Mapped[int] = mapped_column(BigInteger, default=0)


class Plan(Base):
    """A plan the platform admin defines (platform data). ``limits``: limit name -> value
    (None = unlimited); names and units in ``usage.limits.LIMITS``."""

    __tablename__ = "plans"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    weight: Mapped[int] = mapped_column(default=1)
    # The plan of every organization that was not given one.
    is_default: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class OrgQuota(Base):
    """An organization's plan and overrides (platform data, written by the platform admin).

    The row is also the organization's admission lock: every session start updates it first
    (a row lock on PostgreSQL, the write lock on SQLite), so two parallel starts are
    serialised and cannot both take the last slot. ``soft_warned_month`` remembers the month
    (YYYY-MM) whose soft-threshold warning was already given."""

    __tablename__ = "org_quotas"

    org_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True)
    plan_key: Mapped[str | None] = mapped_column(String(40))
    overrides: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    admissions: Mapped[int] = mapped_column(BigInteger, default=0)
    soft_warned_month: Mapped[str | None] = mapped_column(String(7))
    # Stripe Billing Meters (usage/stripe.py): the organization's customer, and the last UTC
    # day (YYYY-MM-DD) whose usage was pushed.
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255))
    stripe_pushed_through: Mapped[str | None] = mapped_column(String(10))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class PriceOverride(Base):
    """A platform admin's price for a provider's model (USD per million tokens), used instead
    of genai-prices. ``model`` '*' applies to every model of the provider."""

    __tablename__ = "price_overrides"

    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    input_per_mtok: Mapped[str] = mapped_column(String(32))
    output_per_mtok: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RateWindow(Base):
    """One fixed one-minute window of API requests for one rate key (embedded store).

    Keys carry ids only (``org:<uuid>:<principal>``, ``addr:<address>``), never names."""

    __tablename__ = "rate_windows"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    org_id: Mapped[uuid.UUID | None]

    __table_args__ = (Index("ix_rate_windows_window_start", "window_start"),)
