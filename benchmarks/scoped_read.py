"""Throughput of a tenant-scoped read against the same query served without auth or guard.

For each backend (SQLite, and PostgreSQL when reachable) this script:

1. creates a throwaway database (SQLite: a temporary data directory; PostgreSQL: a database
   owned by a fresh owner role, the app connecting as a fresh role under row-level security,
   as ``tests/conftest.py`` does), runs the migrations, and seeds one organization with
   ``--members`` members through the service layer;
2. starts uvicorn (one worker) in a separate process serving ``benchmarks/bench_app.py``:
   ``create_app()`` plus the public baseline route ``GET /bench/unscoped/members``;
3. signs a viewer in and creates a viewer API key through the HTTP API, and checks that the
   three routes below return the same body;
4. runs ``loadgen.py`` in another process: warm-up, then ``--rounds`` rounds, each running
   the three routes back to back (order rotated per round) for ``--seconds`` each at
   ``--concurrency`` concurrent keep-alive requests:

   * ``unscoped`` -- ``GET /bench/unscoped/members`` (no credentials);
   * ``cookie``   -- ``GET /api/v1/orgs/{org}/members`` with a session cookie;
   * ``api key``  -- the same with ``Authorization: Bearer enx_...``;

5. prints req/s and p50/p95 latency (medians over rounds), CPU time per request of the
   server process and (PostgreSQL) of the database backends, and the ratio scoped/unscoped
   (median of the per-round ratios; goal >= 0.8); then drops the database and the roles.

The server runs without the embedded run worker (ENGINEX_EMBEDDED_WORKER=false): only the
read path is measured. See benchmarks/README.md for how to read the figures.

Run it with ``make bench`` or ``.venv/bin/python benchmarks/run.py [--help]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks.pgdb import PG_ADMIN_DSN, BenchError, PgDatabase, pg_problem

ROOT = Path(__file__).resolve().parent.parent
GOAL = 0.8
ORG_SLUG = "bench"
PASSWORD = "bench-pass-phrase-42"
UNSCOPED_PATH = "/bench/unscoped/members"
ROUTE_LABELS = {"unscoped": "unscoped (public route)", "cookie": "scoped, session cookie",
                "api_key": "scoped, API key"}


def log(message: str) -> None:
    print(message, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- databases -------------------------------------------------------------------------------


def enginex_env(backend: str, data_dir: Path, pg: PgDatabase | None) -> dict[str, str]:
    """The ENGINEX_* settings of both the seeding code and the server process."""
    from enginex.kit.crypto import generate_master_key

    env = {"ENGINEX_DATA_DIR": str(data_dir), "ENGINEX_MASTER_KEY": generate_master_key(),
           "ENGINEX_BASE_URL": "http://127.0.0.1", "ENGINEX_LOG_LEVEL": "WARNING",
           "ENGINEX_EMBEDDED_WORKER": "false"}
    if backend == "postgres":
        assert pg is not None
        env["ENGINEX_DATABASE_URL"] = pg.url(pg.app)
        env["ENGINEX_MIGRATION_DATABASE_URL"] = pg.url(pg.owner)
    return env


def apply_env(env: dict[str, str]) -> None:
    """Make ``env`` the only ENGINEX_* settings of this process (ignore the caller's shell)."""
    for key in [k for k in os.environ if k.startswith("ENGINEX_")]:
        del os.environ[key]
    os.environ.update(env)


async def seed(members: int) -> tuple[uuid.UUID, str, str]:
    """One organization with ``members`` members (an admin first, then mixed roles).

    Returns (org id, admin email, viewer email). Goes through the service layer, so the
    rows are exactly what the API would have written.
    """
    from enginex.config import Settings
    from enginex.db import Database
    from enginex.orgs import service as org_service
    from enginex.tenancy.scopes import Role

    roles = [Role.VIEWER, Role.OPERATOR, Role.BUILDER, Role.ADMIN]
    emails: dict[Role, str] = {}
    db = Database(Settings())
    try:
        async with db.sessions() as session, session.begin():
            org, ctx = await org_service.create_organization(session, slug=ORG_SLUG,
                                                             name="Benchmark Org")
            for index in range(members):
                role = Role.ADMIN if index == 0 else roles[(index - 1) % len(roles)]
                email = f"member{index:02d}-{role}@bench.test"
                user, _ = await org_service.ensure_user(session, email=email,
                                                        password=PASSWORD)
                await org_service.add_member(session, ctx, user, role)
                emails.setdefault(role, email)
            return org.id, emails[Role.ADMIN], emails[Role.VIEWER]
    finally:
        await db.dispose()


# --- the server process ----------------------------------------------------------------------


class ServerProcess:
    """uvicorn, one worker, serving benchmarks.bench_app:build in its own process."""

    def __init__(self, env: dict[str, str], app: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_file = tempfile.TemporaryFile()
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEX_")}
        child_env.update(env)
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), child_env.get("PYTHONPATH", "")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app, "--factory",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--log-level", "warning", "--no-access-log"],
            cwd=ROOT, env=child_env, stdout=self.log_file, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.log_file.seek(0)
        return self.log_file.read().decode(errors="replace")[-3000:]

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"the server exited ({self.process.returncode}):\n"
                                 f"{self.output()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=10).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise BenchError(f"the server did not start within {timeout:.0f}s:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()


def prepare_routes(base_url: str, cookie_name: str, admin_email: str,
                   viewer_email: str, members: int) -> list[dict[str, Any]]:
    """Sign in, create an API key, check the three routes answer the same; return the routes."""
    with httpx.Client(base_url=base_url, timeout=30) as admin:
        response = admin.post("/api/v1/auth/login",
                              json={"email": admin_email, "password": PASSWORD})
        if response.status_code != 200:
            raise BenchError(f"admin sign-in failed: {response.status_code} {response.text}")
        admin.headers["X-CSRF-Token"] = response.json()["csrf_token"]
        response = admin.post(f"/api/v1/orgs/{ORG_SLUG}/api-keys",
                              json={"name": "benchmark", "role": "viewer"})
        if response.status_code != 201:
            raise BenchError(f"API key creation failed: {response.status_code} {response.text}")
        api_key = response.json()["token"]
    with httpx.Client(base_url=base_url, timeout=30) as viewer:
        response = viewer.post("/api/v1/auth/login",
                               json={"email": viewer_email, "password": PASSWORD})
        if response.status_code != 200:
            raise BenchError(f"viewer sign-in failed: {response.status_code} {response.text}")
        cookie = viewer.cookies[cookie_name]
    scoped = f"/api/v1/orgs/{ORG_SLUG}/members"
    routes = [
        {"name": "unscoped", "path": UNSCOPED_PATH, "headers": {}},
        {"name": "cookie", "path": scoped, "headers": {"Cookie": f"{cookie_name}={cookie}"}},
        {"name": "api_key", "path": scoped, "headers": {"Authorization": f"Bearer {api_key}"}},
    ]
    bodies = {}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for route in routes:
            response = client.get(route["path"], headers=route["headers"])
            if response.status_code != 200:
                raise BenchError(f"{route['name']}: {response.status_code} {response.text}")
            bodies[route["name"]] = response.content
        anonymous = client.get(scoped)
    if len(set(bodies.values())) != 1:
        raise BenchError("the routes answer different bodies; the comparison would be unfair")
    if len(json.loads(bodies["unscoped"])) != members:
        raise BenchError(f"expected {members} members in the response")
    if anonymous.status_code != 401:
        raise BenchError(f"the scoped route without credentials answered "
                         f"{anonymous.status_code}, not 401")
    return routes


def run_loadgen(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Run loadgen.py in its own process; print one line per round as results arrive."""
    process = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "loadgen.py")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps(spec))
    process.stdin.close()
    records: list[dict[str, Any]] = []
    line_parts: list[str] = []
    for line in process.stdout:
        record = json.loads(line)
        if record["kind"] == "done":
            break
        if record["errors"]:
            process.kill()
            raise BenchError(f"{record['route']}: {record['errors']} error answers, first: "
                             f"{record['first_error']}")
        if record["kind"] == "warmup":
            continue
        records.append(record)
        line_parts.append(f"{record['route']} {record['rps']:6.0f}")
        if len(line_parts) == len(spec["routes"]):
            log(f"    round {record['round'] + 1}: " + "  ".join(line_parts) + "  req/s")
            line_parts = []
    if process.wait() != 0:
        raise BenchError(f"the load generator failed (exit {process.returncode})")
    return records


# --- results ---------------------------------------------------------------------------------


@dataclass
class RouteFigures:
    rps: float
    p50_ms: float
    p95_ms: float
    server_ms_per_req: float | None
    db_ms_per_req: float | None
    server_busy: float | None
    loadgen_busy: float
    db_connections_churned: int | None

    @property
    def cost_ms_per_req(self) -> float | None:
        """CPU per request of the server plus (PostgreSQL) the database backends."""
        if self.server_ms_per_req is None:
            return None
        return self.server_ms_per_req + (self.db_ms_per_req or 0.0)


@dataclass
class BackendResult:
    backend: str
    routes: dict[str, RouteFigures] = field(default_factory=dict)
    ratios: dict[str, list[float]] = field(default_factory=dict)

    def ratio(self, name: str) -> float:
        return statistics.median(self.ratios[name])

    def cost_ratio(self, name: str) -> float | None:
        base, scoped = self.routes["unscoped"].cost_ms_per_req, self.routes[name].cost_ms_per_req
        return base / scoped if base and scoped else None


def _cpu_ms_per_request(records: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in records]
    if any(v is None for v in values):
        return None
    return sum(values) * 1000 / sum(r["requests"] for r in records)


def summarize(backend: str, records: list[dict[str, Any]]) -> BackendResult:
    result = BackendResult(backend)
    names = list(dict.fromkeys(r["route"] for r in records))
    for name in names:
        mine = [r for r in records if r["route"] == name]
        elapsed = sum(r["elapsed"] for r in mine)
        server_ms = _cpu_ms_per_request(mine, "server_cpu")
        result.routes[name] = RouteFigures(
            rps=statistics.median(r["rps"] for r in mine),
            p50_ms=statistics.median(r["p50_ms"] for r in mine),
            p95_ms=statistics.median(r["p95_ms"] for r in mine),
            server_ms_per_req=server_ms,
            db_ms_per_req=_cpu_ms_per_request(mine, "db_cpu"),
            server_busy=(sum(r["server_cpu"] for r in mine) / elapsed
                         if server_ms is not None else None),
            loadgen_busy=sum(r["loadgen_cpu"] for r in mine) / elapsed,
            db_connections_churned=(None if mine[0]["db_connections_churned"] is None else
                                    sum(r["db_connections_churned"] for r in mine)),
        )
    by_round: dict[int, dict[str, float]] = {}
    for r in records:
        by_round.setdefault(r["round"], {})[r["route"]] = r["rps"]
    for name in names:
        if name != "unscoped":
            result.ratios[name] = [rnd[name] / rnd["unscoped"] for rnd in by_round.values()]
    return result


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_result(result: BackendResult) -> None:
    log(f"  {'route':<26}{'req/s':>7}{'p50 ms':>8}{'p95 ms':>8}   CPU ms/request: "
        f"{'server':>6}{'db':>6}   busy: {'server':>6}{'loadgen':>8}   db conns churned")
    for name, fig in result.routes.items():
        log(f"  {ROUTE_LABELS[name]:<26}{fig.rps:>7.0f}{fig.p50_ms:>8.1f}{fig.p95_ms:>8.1f}"
            f"{'':>18}{_fmt(fig.server_ms_per_req, '.2f'):>6}{_fmt(fig.db_ms_per_req, '.2f'):>6}"
            f"{'':>9}{_fmt(fig.server_busy, '.0%'):>6}{fig.loadgen_busy:>8.0%}"
            f"{_fmt(fig.db_connections_churned, 'd'):>19}")
    for name, ratios in result.ratios.items():
        verdict = "meets" if round(result.ratio(name), 2) >= GOAL else "BELOW"
        cost = result.cost_ratio(name)
        by_cost = f"; by CPU per request {cost:.2f}" if cost is not None else ""
        log(f"  ratio {ROUTE_LABELS[name]} / unscoped: {result.ratio(name):.2f} "
            f"(rounds {min(ratios):.2f}-{max(ratios):.2f}{by_cost}) -> {verdict} the goal "
            f">= {GOAL}")


# --- driver ----------------------------------------------------------------------------------


def bench_backend(backend: str, args: argparse.Namespace) -> BackendResult:
    from enginex.config import Settings
    from enginex.migrate import upgrade

    data_dir = Path(tempfile.mkdtemp(prefix=f"enginex-bench-{backend}-"))
    pg: PgDatabase | None = None
    server: ServerProcess | None = None
    try:
        pg = PgDatabase() if backend == "postgres" else None
        env = enginex_env(backend, data_dir, pg)
        apply_env(env)
        settings = Settings()
        started = time.perf_counter()
        upgrade(settings)
        org_id, admin_email, viewer_email = asyncio.run(seed(args.members))
        env["ENGINEX_BENCH_ORG_ID"] = str(org_id)
        env["ENGINEX_BENCH_ORG_SLUG"] = ORG_SLUG
        server = ServerProcess(env, args.app)
        server.wait_ready()
        routes = prepare_routes(server.base_url, settings.session_cookie_name, admin_email,
                                viewer_email, args.members)
        log(f"  setup {time.perf_counter() - started:.1f}s (migrations, {args.members} members, "
            f"server on {server.base_url}, pid {server.process.pid})")
        records = run_loadgen({
            "base_url": server.base_url, "concurrency": args.concurrency,
            "warmup": args.warmup, "seconds": args.seconds, "rounds": args.rounds,
            "server_pid": server.process.pid, "routes": routes,
            "pg": {"dsn": PG_ADMIN_DSN, "database": pg.name} if pg else None,
        })
        return summarize(backend, records)
    finally:
        if server is not None:
            server.stop()
        if pg is not None:
            try:
                pg.drop()
            except psycopg.Error as exc:
                log(f"  WARNING: could not drop database {pg.name} or roles {pg.owner}, "
                    f"{pg.app}: {exc}")
        shutil.rmtree(data_dir, ignore_errors=True)


def machine_line() -> str:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    versions = ", ".join(f"{name} {metadata.version(name)}"
                         for name in ("fastapi", "sqlalchemy", "uvicorn", "httpx"))
    loops = [name for name in ("uvloop", "httptools") if _importable(name)]
    server = "uvicorn " + ("+".join(loops) if loops else "asyncio+h11")
    return (f"machine: {os.cpu_count()} cores ({usable} usable), {platform.machine()}, "
            f"Python {platform.python_version()}; {server}; {versions}")


def load_line() -> str:
    """The 1-minute load average, with a warning when other work competes for the cores."""
    if not hasattr(os, "getloadavg"):
        return "load average: n/a"
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    note = ""
    if load > cores / 2:
        note = (" -- other processes compete for the cores: absolute figures are low and "
                "per-round ratios spread; read the medians and the ratio by CPU per request")
    return f"load average (1 min): {load:.1f} on {cores} cores{note}"


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["all", "sqlite", "postgres"], default="all",
                        help="'all': SQLite, and PostgreSQL when reachable (default)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1.25,
                        help="duration of one route in one round")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up per route")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--members", type=int, default=20,
                        help="members of the seeded organization (at least 2)")
    parser.add_argument("--app", default="benchmarks.bench_app:build",
                        help="uvicorn factory to serve, e.g. a patched variant to compare; it "
                             f"must also serve {UNSCOPED_PATH} (see bench_app.py)")
    args = parser.parse_args(argv)
    if args.members < 2 or args.rounds < 1 or args.concurrency < 1 or args.seconds <= 0:
        parser.error("need --members >= 2, --rounds >= 1, --concurrency >= 1, --seconds > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log("EngineX benchmark: tenant-scoped read (GET /api/v1/orgs/{org}/members) vs the same "
        "query on an unauthenticated route")
    log(machine_line())
    log(load_line())
    log(f"server: 1 uvicorn worker; load: httpx in a separate process, {args.concurrency} "
        f"concurrent keep-alive requests; {args.rounds} rounds x {args.seconds:g}s per route "
        f"(order rotated), {args.warmup:g}s warm-up; figures are medians over rounds")
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    results: list[BackendResult] = []
    skipped: dict[str, str] = {}
    failed = False
    for backend in backends:
        if backend == "postgres":
            problem = pg_problem()
            if problem:
                skipped[backend] = f"PostgreSQL not reachable at {PG_ADMIN_DSN}: {problem}"
                log(f"\n== postgres: skipped ({skipped[backend]})")
                if args.backend == "postgres":
                    failed = True
                continue
        title = "SQLite (WAL)" if backend == "sqlite" else "PostgreSQL (RLS, app role)"
        log(f"\n== {backend}: {title}")
        try:
            result = bench_backend(backend, args)
        except BenchError as exc:
            log(f"  FAILED: {exc}")
            failed = True
            continue
        print_result(result)
        log(f"  {load_line()}")
        results.append(result)
    if results:
        log(f"\nsummary: throughput ratio scoped / unscoped (goal >= {GOAL})")
        for result in results:
            parts = [f"{ROUTE_LABELS[name].split(', ')[1]} {result.ratio(name):.2f} "
                     f"(by CPU {_fmt(result.cost_ratio(name), '.2f')})"
                     for name in result.ratios]
            log(f"  {result.backend:<9} " + "   ".join(parts))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
