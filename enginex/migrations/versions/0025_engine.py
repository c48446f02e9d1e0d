"""Claims (issue 13): a dead worker's runs are reclaimed early, and fair share takes a weight
per organization.

PostgreSQL: ``enginex_claim_runs`` gains a fifth argument, ``p_dead_seconds``. A run whose
lease is still running is claimable anyway when its lease owner's row in ``workers`` (the
workers' presence heartbeat, migration 0004) is older than ``p_dead_seconds``: a worker
killed by SIGKILL or a lost host stops beating, and its runs move to a live worker after a few
heartbeats instead of after the whole lease. A lease whose owner has no row (a worker that has
not beaten yet) counts as live until it expires, as before. The same rule decides which leases
count towards the per-tenant limit.

Weighted fair share: the round robin orders tenants by ``run_queue_state.last_claimed_at``
(served longest ago first). Serving a tenant of weight ``w`` now moves that time forward by
only ``1/w`` of the way from where it stood to now (from no further behind the other
candidates' oldest served time than ``w`` times that time is behind now, so an idle tenant
saves no credit): with every tenant backlogged, a
tenant of weight 2 is served about twice as often as one of weight 1. Weights are taken
relative to the lightest candidate, so equal weights set it to now: exactly the previous round
robin. The weight comes from ``enginex_claim_weight(org)``: the scheduler weight of the
organization's plan (``plans.weight``, migration 0020; the default plan when none is
assigned), 1 without plans. Another source replaces that function (``CREATE OR REPLACE``) and
nothing else changes (docs/ARCHITECTURE.md "Fair scheduling"). Weights are clamped to
[0.1, 100].

Revision ID: 0025_engine
Revises: 0020_metering
Create Date: 2026-12-08 01:10:00.000000
"""

from alembic import op

from enginex.migrations.rls import is_postgres

revision = '0025_engine'
down_revision = '0023_metering2'
branch_labels = None
depends_on = None

# The key of enginex_claim_run's lock (migrations 0002 and 0013): every claim serialises on it.
CLAIM_LOCK_KEY = 0x656E67696E6578

CLAIM_WEIGHT_FUNCTION = """
CREATE OR REPLACE FUNCTION enginex_claim_weight(p_tenant uuid)
RETURNS double precision
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT COALESCE(
        (SELECT p.weight FROM public.org_quotas q JOIN public.plans p ON p.key = q.plan_key
         WHERE q.org_id = p_tenant),
        (SELECT p.weight FROM public.plans p WHERE p.is_default ORDER BY p.key LIMIT 1),
        1)::double precision
$$
"""

# A lease is dead when it expired, or when its owner's presence row is older than the
# dead-worker horizon (v_dead).
CLAIM_RUNS_FUNCTION = """
CREATE FUNCTION enginex_claim_runs(p_worker text, p_lease_seconds integer,
                                   p_tenant_limit integer, p_max integer,
                                   p_dead_seconds double precision)
RETURNS TABLE(tenant_id uuid, run_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_tenant uuid;
    v_served timestamptz;
    v_floor timestamptz;
    v_weight double precision;
    v_lightest double precision;
    v_run uuid;
    v_queued uuid;
    v_queued_at timestamptz;
    v_resumable uuid;
    v_resumable_at timestamptz;
    v_now timestamptz;
    v_dead timestamptz;
    v_from timestamptz;
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
    v_dead := v_now - make_interval(secs => p_dead_seconds);
    LOOP  -- rounds: one run per eligible tenant each, until the batch is full or none is left
        v_round_start := v_claimed;
        FOR v_tenant, v_served, v_floor, v_weight, v_lightest IN
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
            SELECT o.id, q.last_claimed_at,
                   min(q.last_claimed_at) OVER (ROWS BETWEEN UNBOUNDED PRECEDING
                                                AND UNBOUNDED FOLLOWING EXCLUDE CURRENT ROW),
                   w.weight, min(w.weight) OVER ()
            FROM active t
            JOIN public.organizations o ON o.id = t.tenant_id
            LEFT JOIN public.run_queue_state q ON q.tenant_id = o.id
            CROSS JOIN LATERAL (SELECT LEAST(GREATEST(COALESCE(
                public.enginex_claim_weight(o.id), 1.0), 0.1), 100.0) AS weight) w
            WHERE o.status = 'active'
              AND (EXISTS (SELECT 1 FROM public.runs r
                           WHERE r.tenant_id = o.id AND r.status = 'queued')
                   OR EXISTS (SELECT 1 FROM public.runs r
                              WHERE r.tenant_id = o.id AND r.status = 'running'
                                AND (r.lease_expires_at IS NULL OR r.lease_expires_at < v_now
                                     OR EXISTS (SELECT 1 FROM public.workers w
                                                WHERE w.name = r.lease_owner
                                                  AND w.last_seen_at < v_dead))))
              AND (SELECT count(*) FROM public.runs a
                   WHERE a.tenant_id = o.id AND a.status = 'running'
                     AND a.lease_expires_at >= v_now
                     AND NOT EXISTS (SELECT 1 FROM public.workers w
                                     WHERE w.name = a.lease_owner
                                       AND w.last_seen_at < v_dead)) < p_tenant_limit
            ORDER BY q.last_claimed_at NULLS FIRST, o.id
        LOOP
            SELECT r.id, r.queued_at INTO v_resumable, v_resumable_at FROM public.runs r
            WHERE r.tenant_id = v_tenant AND r.status = 'running'
              AND (r.lease_expires_at IS NULL OR r.lease_expires_at < v_now
                   OR EXISTS (SELECT 1 FROM public.workers w
                              WHERE w.name = r.lease_owner AND w.last_seen_at < v_dead))
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
                -- Weighted served time: 1/weight of the way to now, from no further behind the
                -- other candidates' oldest served time than weight times that is behind now
                -- (no credit saved while idle). Same arithmetic as scheduler.served_time.
                -- Served times one microsecond apart keep this batch's order for the next.
                -- Relative to the lightest candidate: equal weights are a plain round robin.
                v_weight := v_weight / v_lightest;
                IF v_floor IS NULL THEN
                    v_from := COALESCE(v_served, v_now);
                ELSE
                    v_from := GREATEST(COALESCE(v_served, '-infinity'::timestamptz),
                                       v_floor - (v_now - v_floor) * v_weight);
                END IF;
                IF v_from > v_now THEN
                    v_from := v_now;
                END IF;
                INSERT INTO public.run_queue_state AS s (tenant_id, last_claimed_at)
                VALUES (v_tenant, v_from + (v_now - v_from) / v_weight
                                  + make_interval(secs => v_claimed / 1000000.0))
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


def upgrade() -> None:
    if is_postgres():
        op.execute(CLAIM_WEIGHT_FUNCTION)
        op.execute("REVOKE ALL ON FUNCTION enginex_claim_weight(uuid) FROM PUBLIC")
        op.execute("DROP FUNCTION IF EXISTS enginex_claim_runs(text, integer, integer, integer)")
        op.execute(CLAIM_RUNS_FUNCTION.replace("CLAIM_LOCK_KEY", str(CLAIM_LOCK_KEY)))
        op.execute("REVOKE ALL ON FUNCTION "
                   "enginex_claim_runs(text, integer, integer, integer, double precision) "
                   "FROM PUBLIC")


def downgrade() -> None:
    if is_postgres():
        op.execute("DROP FUNCTION IF EXISTS "
                   "enginex_claim_runs(text, integer, integer, integer, double precision)")
        op.execute("DROP FUNCTION IF EXISTS enginex_claim_weight(uuid)")
        op.execute(_previous_claim_runs())
        op.execute("REVOKE ALL ON FUNCTION enginex_claim_runs(text, integer, integer, integer) "
                   "FROM PUBLIC")


def _previous_claim_runs() -> str:
    """Migration 0013's function, from that migration's own file."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "enginex_migration_0013", Path(__file__).with_name("0013_claim_batch.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.CLAIM_RUNS_FUNCTION).replace("CLAIM_LOCK_KEY", str(CLAIM_LOCK_KEY))
