"""Usage metering, part 2 (issue 18): the ``queued_sessions`` limit in the seeded plans, and
each organization's Stripe customer and how far its usage was pushed to Stripe Billing Meters
(``org_quotas.stripe_customer_id``, ``org_quotas.stripe_pushed_through``: a UTC day).

Adds ``queued_sessions`` (sessions waiting for a worker) to the seeded plans that the operator
has not changed since 0020_metering seeded them: free 2, team 50, enterprise unlimited. A plan
the operator edited is left as it is (a missing limit is unlimited). The values are a frozen
copy (migrations never import application code that changes later); the application's one
definition is ``usage/limits.SEEDED_PLANS``.

Revision ID: 0023_metering2
Revises: 0020_metering
Create Date: 2026-12-08 01:00:00.000000
"""

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0023_metering2'
down_revision = '0022_erasure'
branch_labels = None
depends_on = None

# The limits 0020_metering seeded (frozen), and the queued_sessions value each plan gets.
SEEDED_0020: dict[str, dict[str, Any]] = {
    "free": {"concurrent_sessions": 2, "sessions_per_day": 100, "steps_per_day": 2000,
             "tokens_per_month": 1000000, "cost_usd_per_month": "10",
             "soft_threshold_percent": 80, "storage_bytes": 104857600,
             "api_requests_per_minute": 120, "members": 5, "agents": 5},
    "team": {"concurrent_sessions": 100, "sessions_per_day": 10000, "steps_per_day": 500000,
             "tokens_per_month": 100000000, "cost_usd_per_month": "1000",
             "soft_threshold_percent": 80, "storage_bytes": 10737418240,
             "api_requests_per_minute": 3000, "members": 500, "agents": 500},
    "enterprise": {"concurrent_sessions": None, "sessions_per_day": None,
                   "steps_per_day": None, "tokens_per_month": None,
                   "cost_usd_per_month": None, "soft_threshold_percent": 80,
                   "storage_bytes": None, "api_requests_per_minute": 12000, "members": None,
                   "agents": None},
}
QUEUED = {"free": 2, "team": 50, "enterprise": None}

plans = sa.table("plans", sa.column("key", sa.String), sa.column("limits", sa.JSON))


def _limits(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value or {})


def upgrade() -> None:
    with op.batch_alter_table("org_quotas") as batch:
        batch.add_column(sa.Column("stripe_customer_id", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("stripe_pushed_through", sa.String(length=10),
                                   nullable=True))
    bind = op.get_bind()
    for key, limits in bind.execute(sa.select(plans.c.key, plans.c.limits)).all():
        current = _limits(limits)
        if key in SEEDED_0020 and current == SEEDED_0020[key]:
            bind.execute(plans.update().where(plans.c.key == key).values(
                limits={**current, "queued_sessions": QUEUED[key]}))


def downgrade() -> None:
    with op.batch_alter_table("org_quotas") as batch:
        batch.drop_column("stripe_pushed_through")
        batch.drop_column("stripe_customer_id")
    bind = op.get_bind()
    for key, limits in bind.execute(sa.select(plans.c.key, plans.c.limits)).all():
        current = _limits(limits)
        if key in SEEDED_0020 and current == {**SEEDED_0020[key],
                                              "queued_sessions": QUEUED[key]}:
            bind.execute(plans.update().where(plans.c.key == key).values(
                limits=SEEDED_0020[key]))
