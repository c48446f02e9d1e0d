"""The limit vocabulary (names, units, what each limits) and the seeded plans.

A limit's value is a non-negative number in its unit, or None for unlimited. The effective
limits of an organization are its plan's limits with its overrides on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from enginex.kit.errors import ValidationFailed


@dataclass(frozen=True)
class LimitSpec:
    name: str
    unit: str
    description: str
    decimal: bool = False  # a money amount (USD, up to 6 decimals); otherwise an integer


LIMITS: dict[str, LimitSpec] = {spec.name: spec for spec in (
    LimitSpec("concurrent_sessions", "sessions",
              "sessions open at once (queued, running, waiting for approval or paused)"),
    LimitSpec("queued_sessions", "sessions",
              "sessions waiting in the queue for a worker (status queued)"),
    LimitSpec("sessions_per_day", "sessions", "sessions started per UTC day"),
    LimitSpec("steps_per_day", "steps", "steps executed per UTC day"),
    LimitSpec("tokens_per_month", "tokens", "model input + output tokens per calendar month"),
    LimitSpec("cost_usd_per_month", "USD",
              "estimated model cost per calendar month", decimal=True),
    LimitSpec("soft_threshold_percent", "percent",
              "share of the monthly token and cost budget at which admins are warned"),
    LimitSpec("storage_bytes", "bytes", "report storage"),
    LimitSpec("api_requests_per_minute", "requests",
              "API requests per minute per (organization, principal)"),
    LimitSpec("members", "members", "members of the organization"),
    LimitSpec("agents", "agents", "agents in the organization's catalog"),
)}

UNLIMITED: dict[str, Any] = dict.fromkeys(LIMITS)
# Bounds that keep every product with a quantity inside a 64-bit column.
MAX_COUNT = 10 ** 15
MAX_USD = Decimal(1_000_000_000)

# The plans a new deployment starts with: the one definition in the application. Migrations
# keep frozen copies of what they seeded (0020_metering, 0023_metering2), and
# tests/test_usage.py checks that a migrated database holds exactly these.
SEEDED_PLANS: dict[str, tuple[str, int, dict[str, Any]]] = {
    # key: (name, scheduler weight, limits)
    "free": ("Free", 1, {
        "concurrent_sessions": 2, "queued_sessions": 2, "sessions_per_day": 100,
        "steps_per_day": 2_000,
        "tokens_per_month": 1_000_000, "cost_usd_per_month": "10", "soft_threshold_percent": 80,
        "storage_bytes": 100 * 1024 ** 2, "api_requests_per_minute": 120, "members": 5,
        "agents": 5}),
    "team": ("Team", 2, {
        "concurrent_sessions": 100, "queued_sessions": 50, "sessions_per_day": 10_000,
        "steps_per_day": 500_000,
        "tokens_per_month": 100_000_000, "cost_usd_per_month": "1000",
        "soft_threshold_percent": 80, "storage_bytes": 10 * 1024 ** 3,
        "api_requests_per_minute": 3_000, "members": 500, "agents": 500}),
    "enterprise": ("Enterprise", 4, {
        **UNLIMITED, "soft_threshold_percent": 80, "api_requests_per_minute": 12_000}),
}


def clean_limits(raw: dict[str, Any], *, field: str = "limits") -> dict[str, Any]:
    """Validate limit values: known names, non-negative, integers (USD amounts as decimal
    strings or numbers with at most 6 decimals), None for unlimited. Every problem is
    reported at once. Returns the values normalised (money as a decimal string)."""
    problems: list[dict[str, str]] = []
    clean: dict[str, Any] = {}
    for name, value in raw.items():
        spec = LIMITS.get(name)
        where = f"{field}.{name}"
        if spec is None:
            problems.append({"field": where, "message": f"unknown limit; the limits are "
                                                        f"{sorted(LIMITS)}"})
            continue
        if value is None:
            clean[name] = None
            continue
        if spec.decimal:
            try:
                amount = Decimal(str(value)) if not isinstance(value, bool) else None
            except InvalidOperation:
                amount = None
            if amount is None or not amount.is_finite() or amount < 0 or \
                    amount > MAX_USD or amount.as_tuple().exponent < -6:  # type: ignore[operator]
                problems.append({"field": where, "message": f"must be an amount in {spec.unit} "
                                 f"(0 to {MAX_USD}, at most 6 decimals), or null for "
                                 "unlimited"})
                continue
            clean[name] = str(amount)
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
            problems.append({"field": where, "message": f"must be a whole number of "
                             f"{spec.unit} from 0 to {MAX_COUNT}, or null for unlimited"})
            continue
        if name == "soft_threshold_percent" and value > 100:
            problems.append({"field": where, "message": "must be a percent from 0 to 100"})
            continue
        clean[name] = value
    if problems:
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
        raise ValidationFailed(f"The limits are not valid: {summary}.",
                               details={"errors": problems})
    return clean


def effective_limits(plan_limits: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(UNLIMITED)
    merged.update({k: v for k, v in plan_limits.items() if k in LIMITS})
    merged.update({k: v for k, v in overrides.items() if k in LIMITS})
    return merged


def micro_usd(amount: Any) -> int | None:
    """A USD limit value as integer micro-dollars (None: unlimited)."""
    if amount is None:
        return None
    return int(Decimal(str(amount)) * 1_000_000)
