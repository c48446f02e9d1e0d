"""Platform health: the global ``workers`` heartbeat table, and (PostgreSQL) the two narrowly
defined SECURITY DEFINER functions behind the platform admin's per-tenant counts.

``enginex_tenant_session_counts`` returns (tenant id, status, count) rows;
``enginex_tenant_workload`` returns (tenant id, agents, queue depth, pending approvals). Both
take the tenant ids to count (one page of the tenant list) and return ids and counts only,
never tenant content (docs/MULTI_TENANT.md, "Platform-wide reads").

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 20:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

import enginex.db
from enginex.migrations.rls import is_postgres

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('workers',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('started_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('slots', sa.Integer(), nullable=False),
    sa.Column('steps_committed', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_workers'))
    )
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.create_index('ix_workers_last_seen_at', ['last_seen_at'], unique=False)
    if is_postgres():
        _create_platform_counts()


# Sessions by status, per tenant. Uses ix_runs_tenant_id_status_queued_at.
SESSION_COUNTS_FUNCTION = """
CREATE FUNCTION enginex_tenant_session_counts(p_tenants uuid[])
RETURNS TABLE(tenant_id uuid, status text, sessions bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.tenant_id, r.status::text, count(*)
    FROM public.runs r
    WHERE r.tenant_id = ANY(p_tenants)
    GROUP BY r.tenant_id, r.status
$$
"""

# Agents, queue depth (what the scheduler could claim: queued, or running without a live
# lease -- enginex_claim_run's definition) and pending approvals, per tenant.
WORKLOAD_FUNCTION = """
CREATE FUNCTION enginex_tenant_workload(p_tenants uuid[])
RETURNS TABLE(tenant_id uuid, agents bigint, queue_depth bigint, pending_approvals bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT t.id,
        (SELECT count(*) FROM public.agents a WHERE a.tenant_id = t.id),
        (SELECT count(*) FROM public.runs r
         WHERE r.tenant_id = t.id AND r.status IN ('queued', 'running')
           AND (r.status = 'queued' OR r.lease_expires_at IS NULL
                OR r.lease_expires_at < now())),
        (SELECT count(*) FROM public.approvals p
         WHERE p.tenant_id = t.id AND p.status = 'pending')
    FROM public.organizations t
    WHERE t.id = ANY(p_tenants)
$$
"""

FUNCTIONS = ("enginex_tenant_session_counts(uuid[])", "enginex_tenant_workload(uuid[])")


def _create_platform_counts() -> None:
    # The functions run as the owner (SECURITY DEFINER). Row-level security is FORCEd, so the
    # owner needs a policy to see rows: 0002's owner-only platform_scheduler policies cover
    # runs and approvals; agents gets an owner-only read policy here. The app role still sees
    # only the current tenant's rows of all three tables.
    op.execute("CREATE POLICY platform_read ON agents FOR SELECT TO CURRENT_USER USING (true)")
    op.execute(SESSION_COUNTS_FUNCTION)
    op.execute(WORKLOAD_FUNCTION)
    for fn in FUNCTIONS:
        op.execute(f"REVOKE ALL ON FUNCTION {fn} FROM PUBLIC")


def downgrade() -> None:
    if is_postgres():
        for fn in FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {fn}")
        op.execute("DROP POLICY IF EXISTS platform_read ON agents")
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_index('ix_workers_last_seen_at')

    op.drop_table('workers')
