"""Noisy neighbour (issue 18): does tenant A flooding the API and the queue slow tenant B?

One deployment per backend (the app from ``create_app()`` with its embedded worker, served
in-process through httpx's ASGI transport). Tenant A's plan allows ``--limit`` API requests
per minute; tenant B is on the default plan. Measured for B, first with A idle, then while A
(1) has ``--backlog`` sessions queued and (2) sends requests at 10x its rate limit (almost all
answered 429):

* p95 latency of ``GET /api/v1/orgs/{B}/sessions`` (``--requests`` sequential requests);
* time to first step: from B's ``POST .../sessions`` to its session's first committed step
  (``--starts`` sessions, median).

Goal: both noisy / idle <= 1.2 (docs/USAGE.md). Prints figures and the load average; not a
test. Run: ``.venv/bin/python -m benchmarks.noisy [--backlog N] [--requests N] [--starts N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from benchmarks.engine import AGENT_KEY, backend_settings, load_agent, make_tenant, queue_bulk
from benchmarks.pgdb import pg_problem
from enginex.app import create_app
from enginex.auth.service import create_api_key
from enginex.db import Database, set_tenant
from enginex.orgs.service import add_member, ensure_user
from enginex.tenancy.context import TenantContext
from enginex.tenancy.principal import UserPrincipal
from enginex.tenancy.scopes import Role
from enginex.usage.service import assign_plan


def log(message: str) -> None:
    print(f"  .. {message}", flush=True)


async def _api_key(db: Database, ctx: TenantContext) -> str:
    async with db.sessions() as session:
        await set_tenant(session, ctx.org_id)
        email = f"noisy-{uuid.uuid4().hex[:8]}@example.org"
        user, _ = await ensure_user(session, email=email, password="bench-pass-phrase-42")
        await add_member(session, ctx, user, Role.ADMIN)
        admin = UserPrincipal(user_id=user.id, email=user.email, is_platform_admin=False,
                              session_id=uuid.uuid4(), csrf_token="")
        token, _key = await create_api_key(session, ctx, name="noisy", role=Role.ADMIN,
                                           expires_at=None, actor=admin)
        await session.commit()
    return token


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def list_p95_ms(client: httpx.AsyncClient, slug: str, requests: int) -> float:
    took: list[float] = []
    for _ in range(requests):
        started = time.perf_counter()
        response = await client.get(f"/api/v1/orgs/{slug}/sessions")
        assert response.status_code == 200, response.text
        took.append((time.perf_counter() - started) * 1000)
    return p95(took)


async def first_step_ms(client: httpx.AsyncClient, slug: str, starts: int,
                        limit_seconds: float = 600) -> float:
    took: list[float] = []
    for _ in range(starts):
        started = time.perf_counter()
        made = await client.post(f"/api/v1/orgs/{slug}/sessions",
                                 json={"agent": AGENT_KEY, "inputs": {}})
        assert made.status_code == 201, made.text
        run_id = made.json()["id"]
        while True:
            run = (await client.get(f"/api/v1/orgs/{slug}/sessions/{run_id}")).json()
            if run["step"] >= 1 or run["status"] in ("succeeded", "failed"):
                break
            if time.perf_counter() - started > limit_seconds:
                raise RuntimeError(f"B's session {run_id} did not start in {limit_seconds} s")
            await asyncio.sleep(0.01)
        took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took)


async def flood(client: httpx.AsyncClient, slug: str, per_second: float,
                stop: asyncio.Event, codes: dict[int, int]) -> None:
    """A's flood: ``per_second`` requests, each in its own task, until ``stop``."""
    tasks: set[asyncio.Task[Any]] = set()

    async def one() -> None:
        response = await client.get(f"/api/v1/orgs/{slug}/sessions")
        codes[response.status_code] = codes.get(response.status_code, 0) + 1

    while not stop.is_set():
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1 / per_second)
    await asyncio.gather(*tasks, return_exceptions=True)


async def bench(backend: str, args: argparse.Namespace) -> None:
    with backend_settings(backend) as (settings, _pg), tempfile.TemporaryDirectory() as tmp:
        settings = settings.model_copy(update={"embedded_worker": True})
        db = Database(settings)
        try:
            package = load_agent(Path(tmp))
            a = await make_tenant(db, f"noisy-a-{uuid.uuid4().hex[:4]}", package)
            b = await make_tenant(db, f"noisy-b-{uuid.uuid4().hex[:4]}", package)
            async with db.sessions() as session:
                await assign_plan(session, a.org_id, a.org_slug, plan_key="enterprise",
                                  overrides={"api_requests_per_minute": args.limit},
                                  actor_id=None)
                await session.commit()
            token_a, token_b = await _api_key(db, a), await _api_key(db, b)
        finally:
            await db.dispose()
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            client_a = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1",
                                         headers={"Authorization": f"Bearer {token_a}"},
                                         timeout=600)
            client_b = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1",
                                         headers={"Authorization": f"Bearer {token_b}"},
                                         timeout=600)
            await list_p95_ms(client_b, b.org_slug, 10)  # warm up
            idle_p95 = await list_p95_ms(client_b, b.org_slug, args.requests)
            idle_first = await first_step_ms(client_b, b.org_slug, args.starts)
            log(f"{backend}: A idle: B list p95 {idle_p95:.1f} ms, first step "
                f"{idle_first:.0f} ms")
            await queue_bulk(app.state.db, a, args.backlog)
            stop, codes = asyncio.Event(), {}
            flooding = asyncio.create_task(flood(client_a, a.org_slug,
                                                 args.limit * 10 / 60, stop, codes))
            try:
                noisy_p95 = await list_p95_ms(client_b, b.org_slug, args.requests)
                noisy_first = await first_step_ms(client_b, b.org_slug, args.starts)
            finally:
                stop.set()
                await flooding
            await client_a.aclose()
            await client_b.aclose()
        log(f"{backend}: A noisy: B list p95 {noisy_p95:.1f} ms, first step "
            f"{noisy_first:.0f} ms; A's answers {dict(sorted(codes.items()))}")
        print(f"{backend}: noisy/idle B session-list p95 ratio {noisy_p95 / idle_p95:.2f}, "
              f"time-to-first-step ratio {noisy_first / idle_first:.2f} (A: {args.backlog} "
              f"queued, {args.limit * 10}/min against a limit of {args.limit}/min)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=5000)
    parser.add_argument("--limit", type=int, default=120, help="A's API requests per minute")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args(argv)
    with open("/proc/loadavg") as f:
        print(f"load average: {f.read().strip()}")
    for backend in args.backends.split(","):
        if backend == "postgres" and pg_problem():
            print("postgres: skipped (not reachable)")
            continue
        asyncio.run(bench(backend, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
