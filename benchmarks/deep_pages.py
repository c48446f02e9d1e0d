"""Latency of the sessions list at depth (issue 13, item 5), on PostgreSQL under RLS.

Seeds one throwaway database (``benchmarks/pgdb.py``) with ``--tenants`` organizations: a
small one with 1,000 sessions, a big one with ``--big`` sessions, and filler tenants sharing
the rest of ``--total`` sessions. Then, connected as the app role (row-level security on),
it times ``RunRepository.list`` -- the query behind ``GET /api/v1/orgs/{org}/sessions`` --
for the first page and for a page after a cursor 90% deep, in the small and the big tenant,
and the same deep page with the former cursor condition
(``created_at < :at OR (created_at = :at AND id < :id)``) for comparison. The dashboard's
filters (issue 17) are timed too: "started by" one of ten members (each started every tenth
session) on the first and the deep page, and a search by a session's 8-character short id.

Prints p50/p95 in milliseconds per case and the ratios big/small (goal: p95 ratio <= 1.5 for
the first and the deep page). Run: ``.venv/bin/python -m benchmarks.deep_pages [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import select

from benchmarks.pgdb import PG_ADMIN_DSN, BenchError, PgDatabase, pg_problem

GOAL = 1.5
PAGE = 50


def _seed(db: PgDatabase, tenants: int, big: int, total: int) -> dict[str, uuid.UUID]:
    """Organizations, one agent each, and sessions, written as the superuser (no RLS)."""
    small, large = uuid.uuid4(), uuid.uuid4()
    fillers = max(tenants - 2, 0)
    per_filler = max((total - big - 1000) // fillers, 0) if fillers else 0
    dsn = make_conninfo(**{**conninfo_to_dict(PG_ADMIN_DSN), "dbname": db.name})
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE plan (tenant uuid, n int)")
        with conn.cursor().copy("COPY plan (tenant, n) FROM STDIN") as copy:
            copy.write_row((small, 1000))
            copy.write_row((large, big))
            for _ in range(fillers):
                copy.write_row((uuid.uuid4(), per_filler))
        conn.execute("""
            INSERT INTO organizations (id, slug, name, status, region, created_at)
            SELECT tenant, 'o' || substr(md5(tenant::text), 1, 20), 'Org', 'active',
                   'default', now() FROM plan""")
        conn.execute("""
            INSERT INTO agents (tenant_id, id, key, name, description, created_at, updated_at)
            SELECT tenant, tenant, 'bench', 'Bench', '', now(), now() FROM plan""")
        conn.execute("""
            INSERT INTO agent_versions (tenant_id, id, agent_id, version, content_hash,
                                        manifest, files, size_bytes, deployed_at)
            SELECT tenant, tenant, tenant, '1.0.0', repeat('0', 64), '{}', '{}', 0, now()
            FROM plan""")
        conn.execute("""
            INSERT INTO runs (tenant_id, id, agent_id, agent_version_id, agent_key,
                              agent_version, status, inputs, step, last_event_seq, created_at,
                              queued_at, attempts, prompt_tokens, completion_tokens, created_by)
            SELECT p.tenant, gen_random_uuid(), p.tenant, p.tenant, 'bench', '1.0.0',
                   'succeeded', '{}', 3, 9, t, t, 3, 0, 0,
                   ('00000000-0000-4000-8000-00000000000' || (g % 10))::uuid
            FROM plan p, LATERAL (
                SELECT now() - make_interval(secs => g) AS t, g
                FROM generate_series(1, p.n) AS g) AS times""")
        conn.execute("ANALYZE")
    return {"small": small, "big": large}


def _deep_cursor(db: PgDatabase, tenant: uuid.UUID, depth: int) -> tuple[datetime, uuid.UUID]:
    dsn = make_conninfo(**{**conninfo_to_dict(PG_ADMIN_DSN), "dbname": db.name})
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT created_at, id FROM runs WHERE tenant_id = %s "
                           "ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1",
                           (tenant, depth)).fetchone()
    assert row is not None
    return row[0], row[1]


Case = tuple[uuid.UUID, "tuple[datetime, uuid.UUID] | None", bool, "dict[str, object]"]
STARTER = uuid.UUID("00000000-0000-4000-8000-000000000003")


def _an_id(db: PgDatabase, tenant: uuid.UUID, depth: int) -> str:
    """The short id (8 hex digits) of the session ``depth`` rows deep."""
    return str(_deep_cursor(db, tenant, depth)[1])[:8]


async def _time(db_url: str, cases: dict[str, Case], repeats: int) -> dict[str, list[float]]:
    """Every case once per round, in a rotated order, so that load from elsewhere on the
    machine falls on all cases alike; milliseconds per query (one transaction each, as a
    request runs it: bind the tenant, read the page, commit)."""
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from enginex.db import create_engine_for, set_tenant
    from enginex.runs.models import Run
    from enginex.runs.repository import RunFilter, RunRepository
    from enginex.tenancy.context import system_context

    engine = create_engine_for(db_url, pool_size=2)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    try:
        for round_ in range(repeats + 5):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                tenant, before, legacy, filters = cases[name]
                async with sessions() as db:
                    started = time.perf_counter()
                    await set_tenant(db, tenant)
                    if legacy:
                        assert before is not None
                        at, last = before
                        stmt = (select(Run).where(Run.tenant_id == tenant)
                                .where((Run.created_at < at)
                                       | ((Run.created_at == at) & (Run.id < last)))
                                .order_by(Run.created_at.desc(), Run.id.desc()).limit(PAGE))
                        rows = list((await db.execute(stmt)).scalars())
                    else:
                        repo = RunRepository(db, system_context(tenant, "bench"))
                        rows = await repo.list(RunFilter(**filters),  # type: ignore[arg-type]
                                               limit=PAGE, before=before)
                    await db.commit()
                    if round_ >= 5:  # the first rounds warm the pool and the plan cache
                        samples[name].append((time.perf_counter() - started) * 1000)
                    expected = 1 if "id_prefix" in filters else PAGE
                    assert len(rows) == expected or (filters and 0 < len(rows) < PAGE), name
    finally:
        await engine.dispose()
    return samples


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--total", type=int, default=1_000_000)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--quick", action="store_true",
                        help="100 tenants, 200k sessions, 100 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.tenants, args.total, args.repeats = 100, 200_000, 100
    problem = pg_problem()
    if problem:
        print(f"deep_pages: PostgreSQL is not reachable: {problem}", file=sys.stderr)
        return 2
    from enginex.config import Settings
    from enginex.migrate import upgrade

    db = PgDatabase("enginex_bench_pages")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(data_dir=Path(tmp), master_key="x" * 43,
                                database_url=db.url(db.app),
                                migration_database_url=db.url(db.owner))
            upgrade(settings)
            started = time.monotonic()
            tenants = _seed(db, args.tenants, args.big, args.total)
            print(f"seeded {args.total:,} sessions over {args.tenants:,} tenants "
                  f"(big tenant {args.big:,}) in {time.monotonic() - started:.0f} s")
            cases: dict[str, Case] = {}
            for name, tenant, size in (("small", tenants["small"], 1000),
                                       ("big", tenants["big"], args.big)):
                deep = _deep_cursor(db, tenant, int(size * 0.9))
                cases[f"{name} first"] = (tenant, None, False, {})
                cases[f"{name} deep"] = (tenant, deep, False, {})
                cases[f"{name} deep, former OR cursor"] = (tenant, deep, True, {})
                by = {"created_by": STARTER}
                cases[f"{name} first, started by"] = (tenant, None, False, by)
                cases[f"{name} deep, started by"] = (tenant, deep, False, by)
                cases[f"{name} id search"] = (tenant, None, False,
                                              {"id_prefix": _an_id(db, tenant, size // 2)})
            samples = asyncio.run(_time(db.url(db.app), cases, args.repeats))
            for name, values in samples.items():
                print(f"pages/postgres {name:28} p50 {_p(values, .5):6.2f} ms "
                      f"p95 {_p(values, .95):6.2f} ms")
            for label in ("first", "deep", "deep, former OR cursor", "first, started by",
                          "deep, started by", "id search"):
                ratio = _p(samples[f"big {label}"], .95) / _p(samples[f"small {label}"], .95)
                verdict = "" if "former" in label else (
                    "  (goal <= 1.5: met)" if ratio <= GOAL else "  (goal <= 1.5: NOT met)")
                print(f"pages/postgres p95 big/small, {label}: {ratio:.2f}{verdict}")
    except BenchError as exc:
        print(f"deep_pages: {exc}", file=sys.stderr)
        return 2
    finally:
        db.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
