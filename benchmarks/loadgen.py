"""Load generator process: fixed concurrency, fixed duration, routes alternated in rounds.

Reads a JSON spec on standard input::

    {"base_url": "http://127.0.0.1:PORT", "concurrency": 16, "warmup": 1.0, "seconds": 2.0,
     "rounds": 5, "server_pid": 1234,
     "routes": [{"name": "unscoped", "path": "/...", "headers": {...}}, ...],
     "pg": {"dsn": "postgresql://...", "database": "..."}}     # optional

and writes one JSON object per line on standard output: one per measurement
(``{"kind": "measure", "round": r, "route": name, "requests": n, ...}``), then
``{"kind": "done"}``. Round ``r`` runs the routes in an order rotated by ``r``, back to back,
so that slow drifts of the machine affect every route alike.

Each measurement: ``concurrency`` tasks share one keep-alive httpx client and loop for
``seconds``; a request counts when its response is complete. Any non-200 answer is counted as
an error (and the first one is reported). The server's CPU time comes from
``/proc/<server_pid>/stat`` when available (Linux); with ``pg``, the CPU time of the
PostgreSQL backends serving that database (found in ``pg_stat_activity`` before each
measurement) is measured the same way, so the cost of a request includes the database's.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def database_cpu(pg: dict[str, str] | None) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend connected to the benchmark database."""
    if not pg:
        return {}
    with psycopg.connect(pg["dsn"], autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s "
                            "AND pid <> pg_backend_pid()", (pg["database"],)).fetchall()
    found = {int(row[0]): process_cpu_seconds(int(row[0])) for row in rows}
    return {pid: cpu for pid, cpu in found.items() if cpu is not None}


def database_delta(before: dict[int, float], after: dict[int, float]) -> tuple[float, int]:
    """CPU the backends used in between, and how many connections opened or closed.

    A backend that appeared counts whole (it started in between); one that vanished is lost,
    so with connection churn the figure is a lower bound.
    """
    cpu = sum(after[pid] - before.get(pid, 0.0) for pid in after)
    return cpu, len(after.keys() ^ before.keys())


async def measure(client: httpx.AsyncClient, route: dict[str, Any], concurrency: int,
                  seconds: float, server_pid: int,
                  pg: dict[str, str] | None = None) -> dict[str, Any]:
    path, headers = route["path"], route.get("headers", {})
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    stop_at = 0.0  # set below, once the CPU counters are read

    async def worker() -> None:
        nonlocal errors, first_error
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                return
            response = await client.get(path, headers=headers)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors += 1
                if first_error is None:
                    first_error = f"{response.status_code} {response.text[:300]}"

    db_cpu0 = database_cpu(pg)
    server_cpu0 = process_cpu_seconds(server_pid)
    own_cpu0 = time.process_time()
    began = time.perf_counter()
    stop_at = began + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    server_cpu1 = process_cpu_seconds(server_pid)
    own_cpu = time.process_time() - own_cpu0
    db_cpu, db_churn = database_delta(db_cpu0, database_cpu(pg))
    latencies.sort()
    return {
        "route": route["name"],
        "requests": len(latencies),
        "errors": errors,
        "first_error": first_error,
        "elapsed": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
        "server_cpu": (server_cpu1 - server_cpu0)
        if server_cpu0 is not None and server_cpu1 is not None else None,
        "db_cpu": db_cpu if pg else None,
        "db_connections_churned": db_churn if pg else None,
        "loadgen_cpu": own_cpu,
    }


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def run(spec: dict[str, Any]) -> None:
    routes: list[dict[str, Any]] = spec["routes"]
    concurrency = int(spec["concurrency"])
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=spec["base_url"], limits=limits,
                                 timeout=30.0) as client:
        for route in routes:
            result = await measure(client, route, concurrency, float(spec["warmup"]),
                                   spec["server_pid"], spec.get("pg"))
            emit({"kind": "warmup", **result})
        for round_no in range(int(spec["rounds"])):
            shift = round_no % len(routes)
            for route in routes[shift:] + routes[:shift]:
                result = await measure(client, route, concurrency, float(spec["seconds"]),
                                       spec["server_pid"], spec.get("pg"))
                emit({"kind": "measure", "round": round_no, **result})
    emit({"kind": "done"})


def main() -> None:
    asyncio.run(run(json.load(sys.stdin)))


if __name__ == "__main__":
    main()
