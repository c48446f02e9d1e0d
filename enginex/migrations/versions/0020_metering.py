"""Usage metering, plans and quotas (issue 18).

Tenant tables (forced row-level security): ``usage_events`` (the append-only ledger, one row
per metered event, unique idempotency key per tenant) and ``usage_rollups`` (totals per
hour/day, kind, provider, model and agent). Platform tables: ``plans`` (seeded free / team /
enterprise, enterprise the default: nothing is limited until the operator assigns plans), ``org_quotas`` (an organization's plan, overrides and admission
lock), ``price_overrides`` and ``rate_windows`` (API request counts per key and minute).

PostgreSQL: ``enginex_usage_by_tenant(from, to)``, a SECURITY DEFINER read of the daily
rollups returning tenant ids, kinds, quantities and costs only (the platform admin's usage
across tenants; docs/MULTI_TENANT.md "Platform-wide reads").

Revision ID: 0020_metering
Revises: 0019_list_cursors
Create Date: 2026-12-07 21:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

import enginex.db
from enginex.migrations.rls import disable_tenant_rls, enable_tenant_rls, is_postgres

revision = '0020_metering'
down_revision = '0019_list_cursors'
branch_labels = None
depends_on = None

TENANT_TABLES = ["usage_events", "usage_rollups"]
UTC = enginex.db.UTCDateTime(timezone=True)

USAGE_BY_TENANT_FUNCTION = """
CREATE FUNCTION enginex_usage_by_tenant(p_from timestamptz, p_to timestamptz)
RETURNS TABLE(tenant_id uuid, kind text, quantity numeric, cost_micro_usd numeric)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT u.tenant_id, u.kind::text, sum(u.quantity), sum(u.cost_micro_usd)
    FROM public.usage_rollups u
    WHERE u.period = 'day' AND u.period_start >= p_from AND u.period_start < p_to
    GROUP BY u.tenant_id, u.kind
$$
"""

# A frozen copy of the plans as seeded by this revision. Migrations never import application
# code that changes later; the application's one definition is usage/limits.SEEDED_PLANS,
# and later revisions (0023_metering2) bring seeded plans up to date with frozen copies too.
SEEDED = [
    ("free", "Free", 1, False, {
        "concurrent_sessions": 2, "sessions_per_day": 100, "steps_per_day": 2000,
        "tokens_per_month": 1000000, "cost_usd_per_month": "10", "soft_threshold_percent": 80,
        "storage_bytes": 104857600, "api_requests_per_minute": 120, "members": 5,
        "agents": 5}),
    ("team", "Team", 2, False, {
        "concurrent_sessions": 100, "sessions_per_day": 10000, "steps_per_day": 500000,
        "tokens_per_month": 100000000, "cost_usd_per_month": "1000",
        "soft_threshold_percent": 80, "storage_bytes": 10737418240,
        "api_requests_per_minute": 3000, "members": 500, "agents": 500}),
    ("enterprise", "Enterprise", 4, True, {
        "concurrent_sessions": None, "sessions_per_day": None, "steps_per_day": None,
        "tokens_per_month": None, "cost_usd_per_month": None, "soft_threshold_percent": 80,
        "storage_bytes": None, "api_requests_per_minute": 12000, "members": None,
        "agents": None}),
]


def upgrade() -> None:
    op.create_table('usage_events',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.Column('unit', sa.String(length=16), nullable=False),
    sa.Column('provider', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('agent_key', sa.String(length=64), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=True),
    sa.Column('cost_micro_usd', sa.BigInteger(), nullable=False),
    sa.Column('price', sa.JSON(), nullable=True),
    sa.Column('estimated', sa.Boolean(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=False),
    sa.Column('occurred_at', UTC, nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_usage_events_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_usage_events')),
    sa.UniqueConstraint('tenant_id', 'idempotency_key', name=op.f('uq_usage_events_tenant_id_idempotency_key'))
    )
    op.create_index('ix_usage_events_tenant_id_occurred_at', 'usage_events',
                    ['tenant_id', 'occurred_at'], unique=False)
    op.create_table('usage_rollups',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('period', sa.String(length=8), nullable=False),
    sa.Column('period_start', UTC, nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('provider', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('agent_key', sa.String(length=64), nullable=False),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.Column('cost_micro_usd', sa.BigInteger(), nullable=False),
    sa.Column('events', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_usage_rollups_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'period', 'period_start', 'kind', 'provider', 'model', 'agent_key', name=op.f('pk_usage_rollups'))
    )
    plans = op.create_table('plans',
    sa.Column('key', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('limits', sa.JSON(), nullable=False),
    sa.Column('weight', sa.Integer(), nullable=False),
    sa.Column('is_default', sa.Boolean(), nullable=False),
    sa.Column('updated_at', UTC, nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_plans'))
    )
    op.create_table('org_quotas',
    sa.Column('org_id', sa.Uuid(), nullable=False),
    sa.Column('plan_key', sa.String(length=40), nullable=True),
    sa.Column('overrides', sa.JSON(), nullable=False),
    sa.Column('admissions', sa.BigInteger(), nullable=False),
    sa.Column('soft_warned_month', sa.String(length=7), nullable=True),
    sa.Column('updated_at', UTC, nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], name=op.f('fk_org_quotas_org_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('org_id', name=op.f('pk_org_quotas'))
    )
    op.create_table('price_overrides',
    sa.Column('provider', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('input_per_mtok', sa.String(length=32), nullable=False),
    sa.Column('output_per_mtok', sa.String(length=32), nullable=False),
    sa.Column('updated_at', UTC, nullable=False),
    sa.PrimaryKeyConstraint('provider', 'model', name=op.f('pk_price_overrides'))
    )
    op.create_table('rate_windows',
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('window_start', sa.BigInteger(), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('org_id', sa.Uuid(), nullable=True),
    sa.PrimaryKeyConstraint('key', 'window_start', name=op.f('pk_rate_windows'))
    )
    op.create_index('ix_rate_windows_window_start', 'rate_windows', ['window_start'],
                    unique=False)
    from datetime import UTC as TZ
    from datetime import datetime
    now = datetime.now(TZ)
    op.bulk_insert(plans, [{"key": k, "name": n, "weight": w, "is_default": d, "limits": lim,
                            "updated_at": now} for k, n, w, d, lim in SEEDED])
    for table in TENANT_TABLES:
        enable_tenant_rls(table)
    if is_postgres():
        # The function runs as the owner; RLS is FORCEd, so the owner reads the rollups
        # through an owner-only read policy (as 0004 does for agents). The app role still
        # sees only the current tenant's rows.
        op.execute("CREATE POLICY platform_read ON usage_rollups FOR SELECT TO CURRENT_USER "
                   "USING (true)")
        op.execute(USAGE_BY_TENANT_FUNCTION)
        op.execute("REVOKE ALL ON FUNCTION enginex_usage_by_tenant(timestamptz, timestamptz) "
                   "FROM PUBLIC")


def downgrade() -> None:
    if is_postgres():
        op.execute("DROP FUNCTION IF EXISTS enginex_usage_by_tenant(timestamptz, timestamptz)")
        op.execute("DROP POLICY IF EXISTS platform_read ON usage_rollups")
    for table in TENANT_TABLES:
        disable_tenant_rls(table)
    op.drop_index('ix_rate_windows_window_start', table_name='rate_windows')
    op.drop_table('rate_windows')
    op.drop_table('price_overrides')
    op.drop_table('org_quotas')
    op.drop_table('plans')
    op.drop_table('usage_rollups')
    op.drop_index('ix_usage_events_tenant_id_occurred_at', table_name='usage_events')
    op.drop_table('usage_events')
