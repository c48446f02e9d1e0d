"""Fault benchmark: sessions survive killed processes and a database restart (issue 13).

A production-shaped deployment, every part a real process on 127.0.0.1:

* PostgreSQL: a private cluster (``tests/pg_private.py``: ``initdb`` into a temporary
  directory, a free port), so it can be restarted without touching the shared server;
* 2 API processes (``enginex serve --no-worker``) and 2 worker processes (``enginex worker``)
  on one database, master key and storage directory;
* a fake OpenAI-compatible LLM (``tests/fake_llm.py``) answering every call after
  ``--llm-delay`` seconds; the organization's agent is ``--steps`` LLM steps in a row.

Clients start ``--sessions`` sessions through the API, each with its own ``Idempotency-Key``,
round-robin over the API processes, ``--clients`` at a time; a start that gets no answer (the
connection broke) or a 5xx is retried with the same key on the next API process, with
back-off, for up to ``--give-up`` seconds. While the sessions run, in this order:

1. ``kill -9`` of API process 1 (restarted at once, as a supervisor would);
2. ``kill -9`` of worker 1 (a replacement is started, as a supervisor would);
3. a PostgreSQL restart (``pg_ctl restart -m fast``: every connection is cut).

Printed at the end (goal 0, 0, 0):

* **lost**: starts whose client never got a session (gave up) or got an id that does not
  exist, plus sessions still not finished ``--settle`` seconds after the last fault;
* **duplicated**: sessions in the database that no client was answered with (a retry
  created a second one) -- every start carries a unique key, so each should create one;
* **failed (infrastructure)**: sessions that ended ``failed`` (the fake LLM never fails, so
  every failure here is the platform's), with their error messages;

and the recovery time of each fault: API killed -> the restarted process answers /healthz,
and the longest a client's start waited across the fault; worker killed -> every session it
held has committed a step again; database restarted -> the first step committed after the
restart and the first session read answered 200.

Not a test: it prints figures and exits non-zero only when it could not run.
Run: ``.venv/bin/python benchmarks/faults.py [--help]``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from enginex.agents.cli import zip_directory
from enginex.kit.crypto import generate_master_key
from tests.fake_llm import FakeLLM, FakeReply
from tests.pg_private import PrivateCluster, _bin_dir

PASSWORD = "faults-Bench-Passw0rd!"
ADMIN_EMAIL = "admin@faults.example.org"
TERMINAL = ("succeeded", "failed", "cancelled")


class SlowLLM(FakeLLM):
    """The fake LLM with every reply delayed, so that steps are in flight during faults."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def _next(self) -> FakeReply:
        return FakeReply(delay=self.delay)


# --- processes ---------------------------------------------------------------------------------


def _enginex() -> list[str]:
    script = shutil.which("enginex", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-c", "from enginex.cli import main; main()"]


@dataclass
class Deployment:
    cluster: PrivateCluster
    database: str
    env: dict[str, str]
    logs: Path
    apis: list[tuple[subprocess.Popen[bytes], str]] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    token: str = ""  # the operator API key the clients use

    def run(self, *args: str, stdin: str = "") -> str:
        done = subprocess.run([*_enginex(), *args], env=self.env, input=stdin.encode(),
                              capture_output=True, timeout=300, check=False)
        if done.returncode != 0:
            raise SystemExit(f"enginex {' '.join(args)} failed: "
                             f"{(done.stdout + done.stderr).decode()[-2000:]}")
        return done.stdout.decode()

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as log:
            return subprocess.Popen([*_enginex(), *args], env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def start_api(self, index: int, port: int | None = None) -> float:
        """Start API process ``index`` (on its old port when restarting); the seconds until
        it answered /healthz."""
        from tests.factories import free_port

        port = port or free_port()
        began = time.monotonic()
        process = self._spawn(f"api{index}", "serve", "--no-worker", "--port", str(port))
        url = f"http://127.0.0.1:{port}"
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() - began > 120:
                raise SystemExit(f"API process {index} did not start; see {self.logs}")
            time.sleep(0.05)
        if index < len(self.apis):
            self.apis[index] = (process, url)
        else:
            self.apis.append((process, url))
        return time.monotonic() - began

    def start_worker(self, slots: int) -> subprocess.Popen[bytes]:
        process = self._spawn(f"worker{len(self.workers)}", "worker", "--slots", str(slots))
        self.workers.append(process)
        return process

    def admin_sql(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A query as the cluster's superuser (not under row-level security): the
        benchmark's own bookkeeping, never the application's path."""
        dsn = f"postgresql://postgres@127.0.0.1:{self.cluster.port}/{self.database}"
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            return list(conn.execute(sql, params).fetchall())  # type: ignore[arg-type]

    def stop(self) -> None:
        for process in [p for p, _ in self.apis] + self.workers:
            kill(process)


def kill(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)


@contextlib.contextmanager
def deployment(logs: Path, lease_seconds: int) -> Iterator[Deployment]:
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL server binaries (initdb, pg_ctl) not found under "
                         "/usr/lib/postgresql/*/bin; set ENGINEX_TEST_PG_BIN")
    cluster = PrivateCluster(bin_dir)
    data_dir = Path(tempfile.mkdtemp(prefix="enginex-faults-"))
    try:
        cluster.start()
        database = cluster.create_database()
        settings = cluster.settings_for(database, data_dir)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("ENGINEX_")},
               "ENGINEX_DATABASE_URL": settings.resolved_database_url,
               "ENGINEX_MIGRATION_DATABASE_URL": settings.resolved_migration_url,
               "ENGINEX_MASTER_KEY": generate_master_key(),
               "ENGINEX_DATA_DIR": str(data_dir),
               "ENGINEX_BASE_URL": "http://127.0.0.1",
               "ENGINEX_ALLOW_PRIVATE_NETWORK": "true",
               "ENGINEX_LEASE_SECONDS": str(lease_seconds),
               "ENGINEX_LOG_LEVEL": "WARNING"}
        found = Deployment(cluster, database, env, logs)
        try:
            yield found
        finally:
            found.stop()
    finally:
        cluster.destroy()
        shutil.rmtree(data_dir, ignore_errors=True)


# --- the organization --------------------------------------------------------------------------


def talker(steps: int) -> dict[str, Any]:
    ids = [f"talk{i}" for i in range(1, steps + 1)]
    return {"agent": {"id": "talker", "name": "Talker", "version": "1.0.0"},
            "inputs": {"n": {"type": "string", "description": "which start this is"}},
            "graph": {"entry_node": ids[0], "terminal_nodes": [ids[-1]],
                      "max_steps": steps + 1,
                      "nodes": [{"id": i, "node_type": "llm", "model": "default",
                                 "output_keys": [f"{i}_answer"]} for i in ids],
                      "edges": [{"source": a, "target": b, "condition": "on_success"}
                                for a, b in itertools.pairwise(ids)]}}


def seed(dep: Deployment, llm: FakeLLM, steps: int) -> str:
    """One organization with the fake LLM as its provider and the talker agent; returns an
    operator API key."""
    dep.run("tenant", "create", "--slug", "faults", "--name", "Faults",
            "--admin-email", ADMIN_EMAIL, "--admin-password-stdin", stdin=PASSWORD + "\n")
    with httpx.Client(base_url=dep.apis[0][1], timeout=60) as admin:
        login = admin.post("/api/v1/auth/login",
                           json={"email": ADMIN_EMAIL, "password": PASSWORD})
        login.raise_for_status()
        admin.headers["X-CSRF-Token"] = login.json()["csrf_token"]
        base = "/api/v1/orgs/faults"
        admin.put(f"{base}/settings/llm", json={
            "provider": "openai_compatible", "base_url": llm.openai_base_url,
            "default_model": "gpt-fake", "api_key": "sk-faults-0123456789"}).raise_for_status()
        package = Path(tempfile.mkdtemp(prefix="enginex-faults-pkg-"))
        (package / "agent.json").write_text(json.dumps(talker(steps)))
        admin.post(f"{base}/agents", files={
            "package": ("package.zip", zip_directory(package), "application/zip")}
        ).raise_for_status()
        shutil.rmtree(package)
        key = admin.post(f"{base}/api-keys", json={"name": "faults", "role": "operator"})
        key.raise_for_status()
        return str(key.json()["token"])


# --- the clients -------------------------------------------------------------------------------


@dataclass
class Start:
    index: int
    key: str
    session_id: str | None = None
    attempts: int = 0
    began: float = 0.0
    answered: float = 0.0
    errors: list[str] = field(default_factory=list)
    refused: bool = False


def start_sessions(dep: Deployment, token: str, starts: list[Start], clients: int,
                   give_up: float) -> list[threading.Thread]:
    """Start every session from ``clients`` threads; returns the threads (running)."""
    pending = iter(starts)
    lock = threading.Lock()
    next_api = itertools.count()

    def client() -> None:
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
            while True:
                with lock:
                    start = next(pending, None)
                if start is None:
                    return
                start.began = time.monotonic()
                delay = 0.2
                while time.monotonic() - start.began < give_up:
                    start.attempts += 1
                    url = dep.apis[next(next_api) % len(dep.apis)][1]
                    try:
                        response = http.post(
                            f"{url}/api/v1/orgs/faults/sessions",
                            headers={"Idempotency-Key": start.key},
                            json={"agent": "talker", "inputs": {"n": str(start.index)}})
                    except httpx.TransportError as exc:
                        start.errors.append(type(exc).__name__)
                    else:
                        if response.status_code == 201:
                            start.session_id = response.json()["id"]
                            start.answered = time.monotonic()
                            break
                        start.errors.append(f"{response.status_code} "
                                            f"{response.text[:200]}")
                        if response.status_code < 500 and response.status_code != 429:
                            start.refused = True
                            break  # a refusal a retry cannot change
                    time.sleep(delay)
                    delay = min(delay * 2, 3.0)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads


# --- measurements ------------------------------------------------------------------------------


def counts(dep: Deployment) -> dict[str, int]:
    rows = dep.admin_sql("SELECT status, count(*) FROM runs GROUP BY status")
    return {str(status): int(n) for status, n in rows}


def wait_until(what: str, check: Any, timeout: float, every: float = 0.1) -> float | None:
    """Seconds until ``check()`` is true (exceptions count as false), or None at timeout."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - began
        time.sleep(every)
    print(f"  ! {what}: not within {timeout:.0f} s")
    return None


def wait_for_progress(dep: Deployment, fraction: float, starts: list[Start],
                      timeout: float) -> None:
    """Until ``fraction`` of the sessions exist. Stops the benchmark when the API refused a
    start (a 4xx other than 429: the benchmark's request is wrong, not the platform)."""

    def started() -> bool:
        refused = [s for s in starts if s.refused]
        if refused:
            raise SystemExit(f"the API refused a start: {refused[0].errors[-1]}")
        return sum(counts(dep).values()) >= fraction * len(starts)

    began = time.monotonic()
    while not started():
        if time.monotonic() - began > timeout:
            print(f"  ! {fraction:.0%} of the sessions not started within {timeout:.0f} s")
            return
        time.sleep(0.2)


def kill_api(dep: Deployment) -> dict[str, float | None]:
    process, url = dep.apis[1]
    port = int(url.rsplit(":", 1)[1])
    killed_at = time.monotonic()
    kill(process)
    restarted = dep.start_api(1, port)
    return {"api back (healthz)": time.monotonic() - killed_at, "process start": restarted}


def kill_worker(dep: Deployment, slots: int) -> dict[str, float | None]:
    victim = dep.workers[0]
    held = [str(r) for (r,) in dep.admin_sql(
        "SELECT id FROM runs WHERE status = 'running' AND lease_owner LIKE %s",
        (f"%:{victim.pid}:%",))]
    steps = {str(r): int(s) for r, s in dep.admin_sql(
        "SELECT id, step FROM runs WHERE id = ANY(%s::uuid[])", (held,))}
    killed_at = time.monotonic()
    kill(victim)
    dep.workers.remove(victim)
    dep.start_worker(slots)

    def resumed() -> bool:
        rows = dep.admin_sql("SELECT id, step, status FROM runs WHERE id = ANY(%s::uuid[])",
                             (held,))
        return all(int(step) > steps[str(r)] or status in TERMINAL for r, step, status in rows)

    took = wait_until("the killed worker's sessions resumed", resumed, 300)
    print(f"  worker killed while holding {len(held)} running session(s)")
    return {"its sessions stepped again": took,
            "since kill": time.monotonic() - killed_at if took is not None else None}


def restart_database(dep: Deployment) -> dict[str, float | None]:
    began = time.monotonic()
    dep.cluster.restart()
    back = time.monotonic()
    restarted_at = dep.admin_sql("SELECT pg_postmaster_start_time()")[0][0]

    def stepped() -> bool:
        return bool(dep.admin_sql("SELECT 1 FROM checkpoints WHERE at > %s LIMIT 1",
                                  (restarted_at,)))

    def reads() -> bool:
        with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {dep.token}"}) as http:
            return all(http.get(f"{url}/api/v1/orgs/faults/sessions?limit=1").status_code
                       == 200 for _, url in dep.apis)

    read_took = wait_until("every API process reads again", reads, 300)
    step_took = wait_until("a step committed after the restart", stepped, 300)
    return {"restart (pg_ctl)": back - began, "API reads again": read_took,
            "first step committed": step_took}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8, help="concurrent starting clients")
    parser.add_argument("--steps", type=int, default=3, help="LLM steps per session")
    parser.add_argument("--llm-delay", type=float, default=0.5, help="seconds per LLM call")
    parser.add_argument("--slots", type=int, default=20, help="slots per worker")
    parser.add_argument("--give-up", type=float, default=120.0,
                        help="seconds a client keeps retrying one start")
    parser.add_argument("--settle", type=float, default=600.0,
                        help="seconds after the last fault for every session to finish")
    parser.add_argument("--lease-seconds", type=int, default=30,
                        help="ENGINEX_LEASE_SECONDS of the deployment: how long a killed "
                             "worker's runs wait before another worker takes them")
    parser.add_argument("--logs", type=Path, default=None,
                        help="keep the processes' logs in this directory")
    args = parser.parse_args()
    # A timeout's SIGTERM unwinds like an exception: the processes and the cluster go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logs = args.logs or Path(tempfile.mkdtemp(prefix="enginex-faults-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"cores {os.cpu_count()}, load average {open('/proc/loadavg').read().split()[:3]}, "
          f"{args.sessions} sessions x {args.steps} LLM steps ({args.llm_delay} s each), "
          f"2 API + 2 workers x {args.slots} slots, lease {args.lease_seconds} s, "
          f"logs in {logs}", flush=True)

    with SlowLLM(args.llm_delay) as llm, deployment(logs, args.lease_seconds) as dep:
        dep.run("migrate")
        dep.start_api(0)
        dep.start_api(1)
        token = dep.token = seed(dep, llm, args.steps)
        for _ in range(2):
            dep.start_worker(args.slots)
        starts = [Start(i, str(uuid.uuid4())) for i in range(args.sessions)]
        began = time.monotonic()
        threads = start_sessions(dep, token, starts, args.clients, args.give_up)
        recovery: dict[str, dict[str, float | None]] = {}

        wait_for_progress(dep, 0.25, starts, 300)
        print(f"  {time.monotonic() - began:6.1f} s  kill -9 API process 1", flush=True)
        recovery["API process killed"] = kill_api(dep)
        wait_for_progress(dep, 0.5, starts, 300)
        print(f"  {time.monotonic() - began:6.1f} s  kill -9 worker 1", flush=True)
        recovery["worker killed"] = kill_worker(dep, args.slots)
        wait_for_progress(dep, 0.75, starts, 300)
        print(f"  {time.monotonic() - began:6.1f} s  PostgreSQL restart", flush=True)
        recovery["database restarted"] = restart_database(dep)
        last_fault = time.monotonic()

        for thread in threads:
            thread.join(timeout=args.give_up + 30)
        wait_until("every session finished",
                   lambda: sum(counts(dep).get(s, 0) for s in TERMINAL)
                   >= sum(counts(dep).values()),
                   max(0.0, args.settle - (time.monotonic() - last_fault)), every=0.5)
        elapsed = time.monotonic() - began

        rows = dep.admin_sql("SELECT id, status, error FROM runs")
        in_db = {str(r): (str(s), e) for r, s, e in rows}
        answered = {s.session_id for s in starts if s.session_id}
        gave_up = [s for s in starts if not s.session_id]
        unknown = [i for i in answered if i not in in_db]
        unfinished = [i for i, (status, _) in in_db.items() if status not in TERMINAL]
        duplicated = [i for i in in_db if i not in answered]
        failed = [(i, e) for i, (status, e) in in_db.items() if status == "failed"]
        retried = [s for s in starts if s.attempts > 1]
        longest = max((s.answered - s.began for s in starts if s.session_id), default=0.0)

    load = open("/proc/loadavg").read().split()[:3]
    print(f"\nfinished in {elapsed:.0f} s; load average {' '.join(load)}")
    print(f"starts: {len(starts)}, answered {len(answered)}, retried {len(retried)} "
          f"(errors seen: {sorted({e.split(' ')[0] for s in starts for e in s.errors})}), "
          f"longest start {longest:.1f} s")
    for fault, figures in recovery.items():
        shown = ", ".join(f"{k} {'not recovered' if v is None else f'{v:.1f} s'}"
                          for k, v in figures.items())
        print(f"recovery, {fault}: {shown}")
    for _, error in failed[:5]:
        print(f"  failed: {error}")
    for start in gave_up[:5]:
        print(f"  gave up on start {start.index}: {start.errors[-3:]}")
    print(f"sessions lost: {len(gave_up) + len(unknown) + len(unfinished)} "
          f"(client gave up {len(gave_up)}, answered id missing {len(unknown)}, "
          f"unfinished {len(unfinished)})")
    print(f"sessions duplicated: {len(duplicated)}")
    print(f"sessions failed (infrastructure): {len(failed)}")


if __name__ == "__main__":
    main()
