"""SCIM read latency at 10,000 users in one organization (issue 14): ``GET /Users?filter=userName
eq "..."`` and a 100-per-page ``GET /Users`` list, p50/p95, on SQLite and PostgreSQL, with the
ratio to the organization's members API page of the same size (``GET
/api/v1/orgs/{org}/members``, 100 members by default) measured in the same run. Printed,
never asserted; goal >= 0.8.

Ratio = members-API p50 / SCIM p50 (above 1: the SCIM request is faster).

    .venv/bin/python benchmarks/scim.py [--backend sqlite|postgres|both] [--users 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.engine import backend_settings, machine_line
from benchmarks.pgdb import BenchError, pg_problem
from enginex.app import create_app
from enginex.config import Settings


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _seed(settings: Settings, users: int) -> dict[str, str]:
    """One organization with ``users`` SCIM-provisioned members (rows written through the
    ORM in one transaction: the bulk load is not what is measured), an admin API key and a
    SCIM token."""
    from enginex.admin.service import create_tenant
    from enginex.auth.models import User
    from enginex.auth.service import create_api_key
    from enginex.cli import _in_transaction
    from enginex.orgs.models import Membership
    from enginex.orgs.service import accept_invitation
    from enginex.scim.models import ScimUser
    from enginex.scim.service import create_token
    from enginex.tenancy.context import TenantContext
    from enginex.tenancy.principal import UserPrincipal
    from enginex.tenancy.scopes import ROLE_SCOPES, Role

    out: dict[str, str] = {}

    async def work(session: Any) -> None:
        slug = f"bench-{uuid.uuid4().hex[:6]}"
        tenant = await create_tenant(session, slug=slug, name="SCIM bench",
                                     admin_email=f"admin@{slug}.example", region="default",
                                     actor_id=uuid.uuid4(), base_url=settings.base_url)
        assert tenant.invitation_token is not None
        admin, org, _ = await accept_invitation(session, token=tenant.invitation_token,
                                                password="bench-pass-phrase-42")
        principal = UserPrincipal(user_id=admin.id, email=admin.email, is_platform_admin=False,
                                  session_id=uuid.uuid4(), csrf_token="")
        ctx = TenantContext(org_id=org.id, org_slug=org.slug, principal=principal,
                            role=Role.ADMIN, scopes=ROLE_SCOPES[Role.ADMIN])
        for i in range(users):
            email = f"user{i:05d}@{slug}.example"
            user = User(email=email, password_hash=None, display_name=f"User {i}")
            session.add(user)
            if i % 500 == 0:
                await session.flush()
        await session.flush()
        from sqlalchemy import select

        ids = (await session.execute(select(User.id).where(
            User.email.like(f"user%@{slug}.example")))).scalars().all()
        for n, user_id in enumerate(ids):
            session.add(Membership(tenant_id=org.id, user_id=user_id, role="viewer"))
            if n % 500 == 0:
                await session.flush()
        await session.flush()
        for n, user_id in enumerate(ids):
            name = f"user{n:05d}@{slug}.example"
            session.add(ScimUser(tenant_id=org.id, user_id=user_id, user_name=name,
                                 user_name_key=name, external_id=f"ext-{n}",
                                 document={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:"
                                                       "User"],
                                           "emails": [{"value": name, "primary": True}],
                                           "name": {"givenName": "User", "familyName": str(n)}}))
            if n % 500 == 0:
                await session.flush()
        key, _ = await create_api_key(session, ctx, name="bench", role=Role.ADMIN,
                                      expires_at=None, actor=principal)
        token, _ = await create_token(session, ctx, name="bench")
        out.update(slug=slug, key=key, token=token)

    await _in_transaction(settings, work)
    return out


def _serve(settings: Settings) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = _free_port()
    settings = settings.model_copy(update={"base_url": f"http://127.0.0.1:{port}"})
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise BenchError("the server did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def _time(client: httpx.Client, requests: list[tuple[str, dict[str, Any]]],
          headers: dict[str, str]) -> list[float]:
    samples = []
    for url, params in requests:
        started = time.perf_counter()
        response = client.get(url, params=params, headers=headers)
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise BenchError(f"{url} answered {response.status_code}: {response.text[:200]}")
    return samples


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench(backend: str, users: int, repeats: int) -> None:
    with backend_settings(backend) as (settings, pg):
        started = time.perf_counter()
        seeded = asyncio.run(_seed(settings, users))
        if pg is not None:
            # A bulk load leaves no planner statistics until autovacuum analyzes the tables;
            # without them PostgreSQL estimates ~30 members and joins by nested loops (seconds
            # per page). A deployment gets them from autovacuum within minutes.
            pg.analyze()
        print(f"[{backend}] seeded {users} users in {time.perf_counter() - started:.1f} s")
        server, thread, base = _serve(settings)
        try:
            scim = {"Authorization": f"Bearer {seeded['token']}"}
            key = {"Authorization": f"Bearer {seeded['key']}"}
            scim_base = f"/scim/v2/{seeded['slug']}"
            with httpx.Client(base_url=base, timeout=120) as client:
                names = [f"user{random.randrange(users):05d}@{seeded['slug']}.example"
                         for _ in range(repeats)]
                pages = [random.randrange(0, users - 100) + 1 for _ in range(repeats)]
                members = f"/api/v1/orgs/{seeded['slug']}/members"
                _time(client, [(f"{scim_base}/Users", {"count": 100})] * 5, scim)  # warm-up
                _time(client, [(members, {})] * 2, key)
                rounds: dict[str, list[float]] = {"filter": [], "page": [], "members": []}
                for _ in range(3):  # interleaved, so drifts of the machine hit all alike
                    rounds["filter"] += _time(client, [
                        (f"{scim_base}/Users", {"filter": f'userName eq "{n}"'})
                        for n in names[:repeats // 3]], scim)
                    rounds["page"] += _time(client, [
                        (f"{scim_base}/Users", {"startIndex": s, "count": 100})
                        for s in pages[:repeats // 3]], scim)
                    rounds["members"] += _time(client, [(members, {})] * max(2, repeats // 30),
                                               key)
            reference = statistics.median(rounds["members"])
            print(f"[{backend}] {'request':<46} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} "
                  f"{'ratio':>7}")
            for label, name in (("SCIM GET /Users?filter=userName eq \"...\"", "filter"),
                                ("SCIM GET /Users?startIndex=..&count=100", "page"),
                                (f"members API page (100 of {users + 1} members)", "members")):
                samples = rounds[name]
                ratio = reference / statistics.median(samples)
                print(f"[{backend}] {label:<46} {len(samples):>5} {_p(samples, 0.5):>8.1f} "
                      f"{_p(samples, 0.95):>8.1f} {ratio:>7.2f}")
            print(f"[{backend}] ratio = members-API p50 / this request's p50; goal >= 0.8")
        finally:
            server.should_exit = True
            thread.join(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=300,
                        help="SCIM requests per kind (members API: a tenth)")
    args = parser.parse_args(argv)
    print("EngineX SCIM benchmark")
    print(machine_line())
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        if backend == "postgres" and (problem := pg_problem()) is not None:
            print(f"[postgres] skipped: {problem}")
            continue
        try:
            bench(backend, args.users, args.repeats)
        except BenchError as exc:
            print(f"[{backend}] could not run: {exc}")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
