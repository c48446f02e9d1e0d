"""Engine: agent catalog, runs, events, checkpoints, approvals, artifacts, LLM settings.

On PostgreSQL also: RLS on every new tenant table, and ``enginex_claim_run``, the one
SECURITY DEFINER function through which workers pick the next run fairly across tenants.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 18:48:18.285588
"""

import sqlalchemy as sa
from alembic import op

import enginex.db
from enginex.migrations.rls import disable_tenant_rls, enable_tenant_rls, is_postgres

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('agents',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.String(length=20000), nullable=False),
    sa.Column('latest_version_id', sa.Uuid(), nullable=True),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_agents_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_agents'))
    )
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.create_index('uq_agents_tenant_id_key', ['tenant_id', 'key'], unique=True)

    op.create_table('llm_settings',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('provider', sa.String(length=20), nullable=False),
    sa.Column('base_url', sa.String(length=500), nullable=True),
    sa.Column('default_model', sa.String(length=200), nullable=False),
    sa.Column('api_key_ciphertext', sa.LargeBinary(), nullable=True),
    sa.Column('temperature', sa.Double(), nullable=True),
    sa.Column('max_tokens', sa.Integer(), nullable=True),
    sa.Column('updated_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_llm_settings_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_llm_settings'))
    )
    op.create_table('run_queue_state',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('last_claimed_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_run_queue_state_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_run_queue_state'))
    )
    op.create_table('agent_versions',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('agent_id', sa.Uuid(), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('files', sa.JSON(), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('deployed_by', sa.Uuid(), nullable=True),
    sa.Column('deployed_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('deprecated_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id', 'agent_id'], ['agents.tenant_id', 'agents.id'], name=op.f('fk_agent_versions_tenant_id_agent_id_agents'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_agent_versions_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_agent_versions'))
    )
    with op.batch_alter_table('agent_versions', schema=None) as batch_op:
        batch_op.create_index('uq_agent_versions_tenant_id_agent_id_version', ['tenant_id', 'agent_id', 'version'], unique=True)

    op.create_table('runs',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('agent_id', sa.Uuid(), nullable=False),
    sa.Column('agent_version_id', sa.Uuid(), nullable=False),
    sa.Column('agent_key', sa.String(length=64), nullable=False),
    sa.Column('agent_version', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('inputs', sa.JSON(), nullable=False),
    sa.Column('next_node', sa.String(length=64), nullable=True),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('last_event_seq', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.Uuid(), nullable=True),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('queued_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('error', sa.String(length=2000), nullable=True),
    sa.Column('lease_owner', sa.String(length=100), nullable=True),
    sa.Column('lease_expires_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('parent_run_id', sa.Uuid(), nullable=True),
    sa.Column('forked_from_step', sa.Integer(), nullable=True),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id', 'agent_version_id'], ['agent_versions.tenant_id', 'agent_versions.id'], name=op.f('fk_runs_tenant_id_agent_version_id_agent_versions')),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_runs_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_runs'))
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index('ix_runs_tenant_id_agent_key_created_at', ['tenant_id', 'agent_key', 'created_at'], unique=False)
        batch_op.create_index('ix_runs_tenant_id_created_at', ['tenant_id', 'created_at'], unique=False)
        batch_op.create_index('ix_runs_tenant_id_status_queued_at', ['tenant_id', 'status', 'queued_at'], unique=False)

    op.create_table('approvals',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('node_id', sa.String(length=64), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('question', sa.String(length=20000), nullable=False),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('approver_role', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('decision', sa.String(length=200), nullable=True),
    sa.Column('comment', sa.String(length=4000), nullable=True),
    sa.Column('decided_by', sa.Uuid(), nullable=True),
    sa.Column('decided_at', enginex.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('expires_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id', 'run_id'], ['runs.tenant_id', 'runs.id'], name=op.f('fk_approvals_tenant_id_run_id_runs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_approvals_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_approvals'))
    )
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.create_index('ix_approvals_tenant_id_status_created_at', ['tenant_id', 'status', 'created_at'], unique=False)
        batch_op.create_index('uq_approvals_tenant_id_run_id_step', ['tenant_id', 'run_id', 'step'], unique=True)

    op.create_table('artifacts',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('node_id', sa.String(length=64), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('filename', sa.String(length=200), nullable=False),
    sa.Column('media_type', sa.String(length=100), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id', 'run_id'], ['runs.tenant_id', 'runs.id'], name=op.f('fk_artifacts_tenant_id_run_id_runs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_artifacts_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'id', name=op.f('pk_artifacts'))
    )
    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.create_index('ix_artifacts_tenant_id_created_at', ['tenant_id', 'created_at'], unique=False)
        batch_op.create_index('ix_artifacts_tenant_id_run_id', ['tenant_id', 'run_id'], unique=False)

    op.create_table('checkpoints',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('node_id', sa.String(length=64), nullable=True),
    sa.Column('next_node', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('state', sa.JSON(), nullable=False),
    sa.Column('path', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id', 'run_id'], ['runs.tenant_id', 'runs.id'], name=op.f('fk_checkpoints_tenant_id_run_id_runs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_checkpoints_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'run_id', 'step', name=op.f('pk_checkpoints'))
    )
    op.create_table('run_events',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('at', enginex.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('node_id', sa.String(length=64), nullable=True),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id', 'run_id'], ['runs.tenant_id', 'runs.id'], name=op.f('fk_run_events_tenant_id_run_id_runs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['organizations.id'], name=op.f('fk_run_events_tenant_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'run_id', 'seq', name=op.f('pk_run_events'))
    )
    for table in TENANT_TABLES:
        enable_tenant_rls(table)
    if is_postgres():
        _create_scheduler()


TENANT_TABLES = ["agents", "agent_versions", "runs", "run_events", "checkpoints", "approvals",
                 "artifacts", "llm_settings", "run_queue_state"]


CLAIM_FUNCTION = """
CREATE FUNCTION enginex_claim_run(p_worker text, p_lease_seconds integer, p_tenant_limit integer)
RETURNS TABLE(tenant_id uuid, run_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_tenant uuid;
    v_run uuid;
    v_queued uuid;
    v_queued_at timestamptz;
    v_resumable uuid;
    v_resumable_at timestamptz;
    v_now timestamptz;
BEGIN
    -- Claims are serialised (like SQLite's single writer): without this, two claimers could
    -- both count a tenant's live leases below p_tenant_limit and together exceed it, and would
    -- both pick the same "served longest ago" tenant. Held until the caller commits (the claim
    -- is its own short transaction); each statement below then sees earlier claims.
    PERFORM pg_advisory_xact_lock(CLAIM_LOCK_KEY);
    -- The time after the lock wait (now() is the start of the transaction, before it).
    v_now := clock_timestamp();
    -- Active tenants with a claimable run and a free slot, served longest ago first. Every
    -- test is an index probe on runs (tenant_id, status, queued_at): the cost of a claim grows
    -- with the number of tenants, not with the length of any tenant's queue.
    FOR v_tenant IN
        SELECT o.id
        FROM public.organizations o
        LEFT JOIN public.run_queue_state q ON q.tenant_id = o.id
        WHERE o.status = 'active'
          AND (EXISTS (SELECT 1 FROM public.runs r
                       WHERE r.tenant_id = o.id AND r.status = 'queued')
               OR EXISTS (SELECT 1 FROM public.runs r
                          WHERE r.tenant_id = o.id AND r.status = 'running'
                            AND (r.lease_expires_at IS NULL OR r.lease_expires_at < v_now)))
          AND (SELECT count(*) FROM public.runs a
               WHERE a.tenant_id = o.id AND a.status = 'running'
                 AND a.lease_expires_at >= v_now) < p_tenant_limit
        ORDER BY q.last_claimed_at NULLS FIRST, o.id
    LOOP
        -- The tenant's oldest claimable run: the older of its oldest resumable run (running,
        -- between steps or left by a dead worker) and its oldest queued one. Ordered by the
        -- index alone (no tie-break column), so LIMIT 1 stops at the first row instead of
        -- sorting the tenant's whole queue.
        SELECT r.id, r.queued_at INTO v_resumable, v_resumable_at FROM public.runs r
        WHERE r.tenant_id = v_tenant AND r.status = 'running'
          AND (r.lease_expires_at IS NULL OR r.lease_expires_at < v_now)
        ORDER BY r.queued_at
        LIMIT 1 FOR UPDATE SKIP LOCKED;
        SELECT r.id, r.queued_at INTO v_queued, v_queued_at FROM public.runs r
        WHERE r.tenant_id = v_tenant AND r.status = 'queued'
        ORDER BY r.queued_at
        LIMIT 1 FOR UPDATE SKIP LOCKED;
        v_run := CASE WHEN v_queued IS NULL OR (v_resumable IS NOT NULL
                                                AND v_resumable_at <= v_queued_at)
                      THEN v_resumable ELSE v_queued END;
        IF v_run IS NOT NULL THEN
            UPDATE public.runs r SET lease_owner = p_worker,
                lease_expires_at = v_now + make_interval(secs => p_lease_seconds),
                attempts = r.attempts + 1, status = 'running',
                started_at = COALESCE(r.started_at, v_now)
            WHERE r.tenant_id = v_tenant AND r.id = v_run;
            INSERT INTO public.run_queue_state AS s (tenant_id, last_claimed_at)
            VALUES (v_tenant, v_now)
            ON CONFLICT (tenant_id) DO UPDATE SET last_claimed_at = EXCLUDED.last_claimed_at;
            tenant_id := v_tenant;
            run_id := v_run;
            RETURN NEXT;
            RETURN;
        END IF;
    END LOOP;
    RETURN;
END
$$
"""


# Key of the transaction-level advisory lock that serialises claims ('enginex' as an integer).
CLAIM_LOCK_KEY = 0x656E67696E6578
CLAIM_FUNCTION = CLAIM_FUNCTION.replace("CLAIM_LOCK_KEY", str(CLAIM_LOCK_KEY))


def _create_scheduler() -> None:
    # The scheduler sees every tenant's runs, only inside enginex_claim_run (SECURITY DEFINER,
    # owned by the migration role); it returns ids only.
    op.execute("CREATE POLICY platform_scheduler ON runs TO CURRENT_USER USING (true) "
               "WITH CHECK (true)")
    op.execute("CREATE POLICY platform_scheduler ON run_queue_state TO CURRENT_USER "
               "USING (true) WITH CHECK (true)")
    op.execute("CREATE POLICY platform_scheduler ON approvals TO CURRENT_USER USING (true) "
               "WITH CHECK (true)")
    op.execute(CLAIM_FUNCTION)
    op.execute(EXPIRE_FUNCTION)
    op.execute("REVOKE ALL ON FUNCTION enginex_claim_run(text, integer, integer) FROM PUBLIC")
    op.execute("REVOKE ALL ON FUNCTION enginex_expire_approvals() FROM PUBLIC")


EXPIRE_FUNCTION = """
CREATE FUNCTION enginex_expire_approvals()
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_count integer;
BEGIN
    WITH expired AS (
        UPDATE public.approvals a SET status = 'expired', decision = 'reject',
            comment = 'expired without a decision', decided_at = now()
        WHERE a.status = 'pending' AND a.expires_at < now()
        RETURNING a.tenant_id, a.run_id
    )
    UPDATE public.runs r SET status = 'running', lease_owner = NULL, lease_expires_at = NULL
    FROM expired e
    WHERE r.tenant_id = e.tenant_id AND r.id = e.run_id AND r.status = 'waiting_approval';
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$
"""


def downgrade() -> None:
    if is_postgres():
        op.execute("DROP FUNCTION IF EXISTS enginex_claim_run(text, integer, integer)")
        op.execute("DROP FUNCTION IF EXISTS enginex_expire_approvals()")
        op.execute("DROP POLICY IF EXISTS platform_scheduler ON approvals")
        op.execute("DROP POLICY IF EXISTS platform_scheduler ON runs")
        op.execute("DROP POLICY IF EXISTS platform_scheduler ON run_queue_state")
    for table in TENANT_TABLES:
        disable_tenant_rls(table)
    op.drop_table('run_events')
    op.drop_table('checkpoints')
    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.drop_index('ix_artifacts_tenant_id_run_id')
        batch_op.drop_index('ix_artifacts_tenant_id_created_at')

    op.drop_table('artifacts')
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.drop_index('uq_approvals_tenant_id_run_id_step')
        batch_op.drop_index('ix_approvals_tenant_id_status_created_at')

    op.drop_table('approvals')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_tenant_id_status_queued_at')
        batch_op.drop_index('ix_runs_tenant_id_created_at')
        batch_op.drop_index('ix_runs_tenant_id_agent_key_created_at')

    op.drop_table('runs')
    with op.batch_alter_table('agent_versions', schema=None) as batch_op:
        batch_op.drop_index('uq_agent_versions_tenant_id_agent_id_version')

    op.drop_table('agent_versions')
    op.drop_table('run_queue_state')
    op.drop_table('llm_settings')
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.drop_index('uq_agents_tenant_id_key')

    op.drop_table('agents')
