"""Batch claims (issue 13, item 6): ``enginex_claim_runs`` leases up to ``p_max`` runs in one
serialised call, and finds candidate tenants through a partial index of active runs.

A worker's single claimer fills all its free slots with one call instead of every slot
claiming (and taking the claim lock) for itself. The batch is made in rounds, one run per
eligible tenant per round (served longest ago first), so the per-tenant limit and the round
robin of ``enginex_claim_run`` (migration 0002, kept for compatibility) hold within a batch.

``ix_runs_active_tenant_id`` indexes only queued and running runs: the claim walks it by a
skip scan (one probe per tenant with active runs), so an empty claim is one index probe
however many tenants exist, and a claim costs O(active tenants). On a large PostgreSQL table,
build the index ``CONCURRENTLY`` by hand first (docs/ARCHITECTURE.md "Migrations").

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 19:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

from enginex.migrations.rls import is_postgres

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

ACTIVE = sa.text("status IN ('queued', 'running')")

CLAIM_RUNS_FUNCTION = """
CREATE FUNCTION enginex_claim_runs(p_worker text, p_lease_seconds integer,
                                   p_tenant_limit integer, p_max integer)
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
    v_claimed integer := 0;
    v_round_start integer;
BEGIN
    IF p_max < 1 THEN
        RETURN;
    END IF;
    -- Serialised like enginex_claim_run (same lock): the per-tenant limit holds across
    -- concurrent workers. Held until the caller commits.
    PERFORM pg_advisory_xact_lock(CLAIM_LOCK_KEY);
    v_now := clock_timestamp();
    LOOP  -- rounds: one run per eligible tenant each, until the batch is full or none is left
        v_round_start := v_claimed;
        FOR v_tenant IN
            -- Tenants with queued or running runs, by a skip scan of ix_runs_active_tenant_id:
            -- one index probe per such tenant, none for idle tenants.
            WITH RECURSIVE active(tenant_id) AS (
                SELECT (SELECT r.tenant_id FROM public.runs r
                        WHERE r.status IN ('queued', 'running')
                        ORDER BY r.tenant_id LIMIT 1)
                UNION ALL
                SELECT (SELECT r.tenant_id FROM public.runs r
                        WHERE r.status IN ('queued', 'running') AND r.tenant_id > a.tenant_id
                        ORDER BY r.tenant_id LIMIT 1)
                FROM active a WHERE a.tenant_id IS NOT NULL)
            SELECT o.id
            FROM active t
            JOIN public.organizations o ON o.id = t.tenant_id
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
                -- Served times one microsecond apart keep this batch's order for the next.
                INSERT INTO public.run_queue_state AS s (tenant_id, last_claimed_at)
                VALUES (v_tenant, v_now + make_interval(secs => v_claimed / 1000000.0))
                ON CONFLICT (tenant_id) DO UPDATE SET last_claimed_at = EXCLUDED.last_claimed_at;
                v_claimed := v_claimed + 1;
                tenant_id := v_tenant;
                run_id := v_run;
                RETURN NEXT;
                IF v_claimed >= p_max THEN
                    RETURN;
                END IF;
            END IF;
        END LOOP;
        EXIT WHEN v_claimed = v_round_start;
    END LOOP;
    RETURN;
END
$$
"""

# The key of enginex_claim_run's lock (migration 0002): both functions serialise together.
CLAIM_LOCK_KEY = 0x656E67696E6578


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index('ix_runs_active_tenant_id', ['tenant_id'], unique=False,
                              postgresql_where=ACTIVE, sqlite_where=ACTIVE,
                              if_not_exists=True)
    if is_postgres():
        op.execute(CLAIM_RUNS_FUNCTION.replace("CLAIM_LOCK_KEY", str(CLAIM_LOCK_KEY)))
        op.execute("REVOKE ALL ON FUNCTION enginex_claim_runs(text, integer, integer, integer) "
                   "FROM PUBLIC")


def downgrade() -> None:
    if is_postgres():
        op.execute("DROP FUNCTION IF EXISTS enginex_claim_runs(text, integer, integer, integer)")
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_active_tenant_id')
