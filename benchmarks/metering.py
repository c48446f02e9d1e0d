"""Metering and rate-limiting overhead (issue 18), measured in one run per backend.

1. **Steps/s, metering on / off**: runs of the engine benchmark's 3-node no-op agent are
   queued for one tenant (enterprise plan: no limit in the way) and drained in-process
   (claim + ``execute_step``, one after another). "Off" replaces the engine's ``meter_step``
   (the usage rows and rollups written with each step commit) by a no-op; rounds alternate
   off/on and the medians are compared.
2. **API req/s, rate limiting on / off**: ``GET /api/v1/orgs/{org}/agents`` with an API key,
   in-process through httpx's ASGI transport, ``--requests`` sequential requests per round.
   "Off" removes the app's rate-limit hook (``app.state.rate_limit``); rounds alternate.

Goal: both ratios >= 0.9 (docs/USAGE.md). Prints figures; not a test.
Run: ``.venv/bin/python benchmarks/metering.py [--runs N] [--requests N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

import enginex.runs.engine as engine_module
from benchmarks.engine import _claim, backend_settings, load_agent, log, make_tenant, queue
from benchmarks.pgdb import pg_problem
from enginex.app import create_app
from enginex.auth.service import create_api_key
from enginex.config import Settings
from enginex.db import Database
from enginex.orgs.service import add_member, ensure_user
from enginex.runs.engine import execute_step
from enginex.runs.runtime import build_engine
from enginex.tenancy.context import TenantContext
from enginex.tenancy.principal import UserPrincipal
from enginex.tenancy.scopes import Role
from enginex.usage.service import assign_plan


async def _no_metering(*_: Any, **__: Any) -> None:
    return None


async def steps_per_second(settings: Settings, db: Database, ctx: TenantContext, runs: int,
                           metering: bool) -> float:
    deps = build_engine(settings, db, bytes(32))
    await queue(db, ctx, runs)
    original = engine_module.meter_step
    if not metering:
        engine_module.meter_step = _no_metering  # type: ignore[assignment]
    try:
        steps = 0
        started = time.perf_counter()
        while True:
            found = await _claim(db, "bench", 30, 1000)
            if found is None:
                break
            steps += await execute_step(deps, found.tenant_id, found.run_id, "bench")
        return steps / (time.perf_counter() - started)
    finally:
        engine_module.meter_step = original


async def api_requests_per_second(app: Any, slug: str, token: str, requests: int,
                                  limiting: bool) -> float:
    hook = app.state.rate_limit
    if not limiting:
        app.state.rate_limit = None
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1",
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            started = time.perf_counter()
            for _ in range(requests):
                response = await client.get(f"/api/v1/orgs/{slug}/agents")
                assert response.status_code == 200, response.text
            return requests / (time.perf_counter() - started)
    finally:
        app.state.rate_limit = hook


async def bench(backend: str, args: argparse.Namespace) -> None:
    with backend_settings(backend) as (settings, _pg), \
            tempfile.TemporaryDirectory() as tmp:
        db = Database(settings)
        try:
            package = load_agent(Path(tmp))
            ctx = await make_tenant(db, f"meter-{uuid.uuid4().hex[:6]}", package)
            async with db.sessions() as session:
                await assign_plan(session, ctx.org_id, ctx.org_slug, plan_key="enterprise",
                                  overrides={}, actor_id=None)
                await session.commit()
            on: list[float] = []
            off: list[float] = []
            for i in range(args.rounds):
                for metering in ((False, True) if i % 2 == 0 else (True, False)):
                    rate = await steps_per_second(settings, db, ctx, args.runs, metering)
                    (on if metering else off).append(rate)
            log(f"{backend}: steps/s metering off {statistics.median(off):.0f}, "
                f"on {statistics.median(on):.0f}")
            print(f"{backend}: metering on/off steps/s ratio "
                  f"{statistics.median(on) / statistics.median(off):.2f} "
                  f"(rounds {args.rounds}, {args.runs} runs x 3 steps each)")
            async with db.sessions() as session:
                from enginex.db import set_tenant
                await set_tenant(session, ctx.org_id)
                email = f"bench-{uuid.uuid4().hex[:8]}@example.org"
                user, _ = await ensure_user(session, email=email,
                                            password="bench-pass-phrase-42")
                await add_member(session, ctx, user, Role.ADMIN)
                admin = UserPrincipal(user_id=user.id, email=user.email,
                                      is_platform_admin=False, session_id=uuid.uuid4(),
                                      csrf_token="")
                token, _key = await create_api_key(session, ctx, name="bench", role=Role.ADMIN,
                                                   expires_at=None, actor=admin)
                await session.commit()
        finally:
            await db.dispose()
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            await api_requests_per_second(app, ctx.org_slug, token, 20, True)  # warm up
            limited: list[float] = []
            free: list[float] = []
            for i in range(args.rounds):
                for limiting in ((False, True) if i % 2 == 0 else (True, False)):
                    rate = await api_requests_per_second(app, ctx.org_slug, token,
                                                         args.requests, limiting)
                    (limited if limiting else free).append(rate)
        print(f"{backend}: rate limiting on/off API req/s ratio "
              f"{statistics.median(limited) / statistics.median(free):.2f} "
              f"(off {statistics.median(free):.0f} req/s, on {statistics.median(limited):.0f}"
              f" req/s, {args.requests} requests x {args.rounds} rounds)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    with open("/proc/loadavg") as f:
        print(f"load average: {f.read().strip()}")
    backends = ["sqlite"] + ([] if pg_problem() else ["postgres"])
    for backend in backends:
        asyncio.run(bench(backend, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
