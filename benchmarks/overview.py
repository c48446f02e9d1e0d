"""Latency of the organization's home page figures (issue 17, item 3), on PostgreSQL under RLS.

Seeds one throwaway database (``benchmarks/pgdb.py``) with a small organization (1,000
sessions in the last 30 days) and a big one (``--big`` sessions in the same 30 days), mixed
outcomes, 20 pending approvals each, and 30 days of daily usage rollups for 5 agents. Then,
connected as the app role (row-level security on), it times ``overview.service.org_overview``
-- every query behind ``GET /o/{org}`` (sessions per day by outcome, recent failures, pending
approvals, tokens and cost per day, top agents, agent names) in one transaction, as the page
runs it.

Prints p50/p95 in milliseconds per organization and the p95 ratio big/small. The goal: the
page does not read the event log, and its cost grows with the sessions of the window only
through an index (the sessions-per-day count is an index-only range scan of
``ix_runs_tenant_id_status_queued_at``); a ratio well under the size ratio (100x by default)
shows it. Run: ``.venv/bin/python -m benchmarks.overview [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from benchmarks.pgdb import PG_ADMIN_DSN, BenchError, PgDatabase, pg_problem


def _seed(db: PgDatabase, sizes: dict[str, int]) -> dict[str, uuid.UUID]:
    """Organizations, 5 agents each, sessions, approvals and rollups, as the superuser."""
    tenants = {name: uuid.uuid4() for name in sizes}
    dsn = make_conninfo(**{**conninfo_to_dict(PG_ADMIN_DSN), "dbname": db.name})
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, tenant in tenants.items():
            n = sizes[name]
            conn.execute("""
                INSERT INTO organizations (id, slug, name, status, region, created_at)
                VALUES (%s, %s, 'Org', 'active', 'default', now())""", (tenant, f"o-{name}"))
            conn.execute("""
                INSERT INTO agents (tenant_id, id, key, name, description, created_at,
                                    updated_at)
                SELECT %s, CASE WHEN a = 1 THEN %s ELSE gen_random_uuid() END,
                       'agent-' || a, 'Agent ' || a, '', now(), now()
                FROM generate_series(1, 5) AS a""", (tenant, tenant))
            conn.execute("""
                INSERT INTO agent_versions (tenant_id, id, agent_id, version, content_hash,
                                            manifest, files, size_bytes, deployed_at)
                SELECT %s, %s, %s, '1.0.0', repeat('0', 64), '{}', '{}', 0, now()""",
                         (tenant, tenant, tenant))
            # Sessions spread over 30 days: 80% succeeded, 10% failed, 5% waiting, 5% running.
            conn.execute("""
                INSERT INTO runs (tenant_id, id, agent_id, agent_version_id, agent_key,
                                  agent_version, status, inputs, step, last_event_seq,
                                  created_at, queued_at, finished_at, error, attempts,
                                  prompt_tokens, completion_tokens)
                SELECT %s, gen_random_uuid(), %s, %s, 'agent-' || (1 + g %% 5), '1.0.0',
                       s, '{}', 3, 9, t, t, CASE WHEN s IN ('succeeded', 'failed') THEN t END,
                       CASE WHEN s = 'failed' THEN 'tool x: line 3 is not a number' END,
                       3, 100, 20
                FROM generate_series(1, %s) AS g,
                     LATERAL (SELECT now() - make_interval(secs => g * (2592000.0 / %s)) AS t,
                              CASE WHEN g %% 20 < 16 THEN 'succeeded'
                                   WHEN g %% 20 < 18 THEN 'failed'
                                   WHEN g %% 20 = 18 THEN 'waiting_approval'
                                   ELSE 'running' END AS s) AS x""",
                         (tenant, tenant, tenant, n, n))
            conn.execute("""
                INSERT INTO approvals (tenant_id, id, run_id, node_id, step, question, options,
                                       approver_role, status, expires_at, created_at)
                SELECT %s, gen_random_uuid(), id, 'approve', 3, 'Approve the hours?',
                       '["approve", "reject"]', 'operator', 'pending',
                       now() + interval '1 day', created_at
                FROM runs WHERE tenant_id = %s AND status = 'waiting_approval' LIMIT 20""",
                         (tenant, tenant))
            conn.execute("""
                INSERT INTO usage_rollups (tenant_id, period, period_start, kind, provider,
                                           model, agent_key, quantity, cost_micro_usd, events)
                SELECT %s, 'day', date_trunc('day', now() AT TIME ZONE 'UTC')
                                  AT TIME ZONE 'UTC' - make_interval(days => d),
                       k, '', '', 'agent-' || a, %s / 150, 0, %s / 150
                FROM generate_series(0, 29) AS d, generate_series(1, 5) AS a,
                     unnest(ARRAY['session_started', 'step']) AS k""", (tenant, n, n))
            conn.execute("""
                INSERT INTO usage_rollups (tenant_id, period, period_start, kind, provider,
                                           model, agent_key, quantity, cost_micro_usd, events)
                SELECT %s, 'day', date_trunc('day', now() AT TIME ZONE 'UTC')
                                  AT TIME ZONE 'UTC' - make_interval(days => d),
                       k, 'openai', 'gpt-4o-mini', 'agent-' || a, %s * 20, %s * 3, %s / 150
                FROM generate_series(0, 29) AS d, generate_series(1, 5) AS a,
                     unnest(ARRAY['llm_input_tokens', 'llm_output_tokens']) AS k""",
                         (tenant, n, n, n))
        conn.execute("VACUUM ANALYZE")
    return tenants


async def _time(db_url: str, tenants: dict[str, uuid.UUID],
                repeats: int) -> dict[str, list[float]]:
    """Each organization once per round, alternating; milliseconds per page's figures (one
    transaction: bind the tenant, run every query, commit)."""
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from enginex.db import create_engine_for, set_tenant
    from enginex.overview.service import org_overview
    from enginex.tenancy.context import system_context

    engine = create_engine_for(db_url, pool_size=2)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    samples: dict[str, list[float]] = {name: [] for name in tenants}
    names = list(tenants)
    try:
        for round_ in range(repeats + 5):
            for name in (names if round_ % 2 else list(reversed(names))):
                tenant = tenants[name]
                async with sessions() as db:
                    started = time.perf_counter()
                    await set_tenant(db, tenant)
                    found = await org_overview(db, system_context(tenant, f"o-{name}"))
                    await db.commit()
                    if round_ >= 5:
                        samples[name].append((time.perf_counter() - started) * 1000)
                    assert found.sessions and sum(found.session_totals.values()) > 0
                    assert found.failures and found.pending and found.top_agents
    finally:
        await engine.dispose()
    return samples


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="big = 30,000, 60 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.big, args.repeats = 30_000, 60
    problem = pg_problem()
    if problem:
        print(f"overview: PostgreSQL is not reachable: {problem}", file=sys.stderr)
        return 2
    from enginex.config import Settings
    from enginex.migrate import upgrade

    db = PgDatabase("enginex_bench_overview")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(data_dir=Path(tmp), master_key="x" * 43,
                                database_url=db.url(db.app),
                                migration_database_url=db.url(db.owner))
            upgrade(settings)
            sizes = {"small": 1000, "big": args.big}
            started = time.monotonic()
            tenants = _seed(db, sizes)
            print(f"seeded {sum(sizes.values()):,} sessions in 30 days (big organization "
                  f"{args.big:,}) in {time.monotonic() - started:.0f} s")
            samples = asyncio.run(_time(db.url(db.app), tenants, args.repeats))
            for name, values in samples.items():
                print(f"overview/postgres {name:6} ({sizes[name]:>7,} sessions) "
                      f"p50 {_p(values, .5):6.2f} ms  p95 {_p(values, .95):6.2f} ms")
            ratio = _p(samples["big"], .95) / _p(samples["small"], .95)
            print(f"overview/postgres p95 big/small: {ratio:.2f} "
                  f"(sessions {args.big / 1000:.0f}x)")
    except BenchError as exc:
        print(f"overview: {exc}", file=sys.stderr)
        return 2
    finally:
        db.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
