"""How the export worker's memory grows with the organization's size (issue 15, item 1:
"an org with 100k sessions exports with the worker's RSS growing less than 100 MB").

On an embedded SQLite database in a temporary directory, seeds one organization with N
sessions (each with 4 events and 2 checkpoints, inserted in bulk through the ORM under the
tenant), then builds its export in this process (``lifecycle.exporter.write_archive``, what a
worker runs) while sampling the resident set size at every progress report. Prints, per N,
the rows written, the archive size, the time, and the RSS before and its peak growth; run
with two sizes the ratio of the growths shows whether memory depends on N.

    .venv/bin/python benchmarks/export_memory.py --sessions 2000 20000
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import insert

from enginex.config import Settings
from enginex.db import Database, set_tenant
from enginex.kit.crypto import generate_master_key
from enginex.kit.time import utcnow
from enginex.migrate import upgrade


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def seed(db: Database, sessions: int) -> uuid.UUID:
    from enginex.agents.models import Agent, AgentVersion
    from enginex.orgs.models import Organization
    from enginex.runs.models import Checkpoint, Run, RunEvent

    org_id = uuid.uuid4()
    async with db.sessions() as session:
        session.add(Organization(id=org_id, slug=f"bench-{org_id.hex[:8]}", name="Bench"))
        await session.flush()
        await set_tenant(session, org_id)
        agent, version = uuid.uuid4(), uuid.uuid4()
        session.add(Agent(id=agent, tenant_id=org_id, key="bench", name="Bench"))
        await session.flush()
        session.add(AgentVersion(id=version, tenant_id=org_id, agent_id=agent, version="1",
                                 content_hash="0" * 64, manifest={}, files={}))
        await session.flush()
        now = utcnow()
        for start in range(0, sessions, 1000):
            runs, events, checkpoints = [], [], []
            for _ in range(start, min(start + 1000, sessions)):
                run_id = uuid.uuid4()
                runs.append({"tenant_id": org_id, "id": run_id, "agent_id": agent,
                             "agent_version_id": version, "agent_key": "bench",
                             "agent_version": "1", "status": "succeeded",
                             "inputs": {"timesheet": "date,person,hours\n" * 5},
                             "created_at": now, "queued_at": now})
                events += [{"tenant_id": org_id, "run_id": run_id, "seq": s, "at": now,
                            "kind": "step", "data": {"n": s, "text": "x" * 200}}
                           for s in range(1, 5)]
                checkpoints += [{"tenant_id": org_id, "run_id": run_id, "step": s, "at": now,
                                 "status": "running", "state": {"k": "v" * 300}, "path": []}
                                for s in range(1, 3)]
            await session.execute(insert(Run), runs)
            await session.execute(insert(RunEvent), events)
            await session.execute(insert(Checkpoint), checkpoints)
        await session.commit()
    return org_id


GOAL_MB = 100.0  # issue 15: RSS growth under 100 MB for an organization with 100k sessions


async def measure(sessions: int) -> float:
    """Seed, export, print one line; returns the peak RSS growth in MB."""
    from enginex.lifecycle.exporter import write_archive
    from enginex.reports.storage import ArtifactStorage

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), master_key=generate_master_key(),
                            log_level="WARNING")
        upgrade(settings)
        db = Database(settings)
        try:
            org_id = await seed(db, sessions)
            storage = ArtifactStorage(settings.resolved_storage_dir)
            before = rss_mb()
            peak = [before]

            async def progress(done: int, kind: str) -> None:
                peak[0] = max(peak[0], rss_mb())

            started = time.perf_counter()
            info = await write_archive(db.sessions, org_id, storage, Path(tmp) / "out.zip",
                                       progress=progress)
            seconds = time.perf_counter() - started
            peak[0] = max(peak[0], rss_mb())
            rows = sum(info.counts.values())
            print(f"sessions {sessions:>7}: {rows:>8} rows, archive {info.size_bytes / 1e6:7.1f} "
                  f"MB in {seconds:6.1f} s ({rows / seconds:7.0f} rows/s); RSS before "
                  f"{before:6.1f} MB, peak growth {peak[0] - before:6.1f} MB", flush=True)
            return peak[0] - before
        finally:
            await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[2000, 20000])
    args = parser.parse_args()
    import enginex.models  # noqa: F401

    growth = {n: asyncio.run(measure(n)) for n in args.sessions}
    if len(growth) > 1:
        small, large = min(growth), max(growth)
        print(f"sessions x{large / small:.0f} -> RSS growth x"
              f"{growth[large] / max(growth[small], 0.1):.2f} "
              f"({growth[small]:.1f} MB -> {growth[large]:.1f} MB)")
    worst = max(growth.values())
    print(f"goal: growth < {GOAL_MB:.0f} MB -> {'met' if worst < GOAL_MB else 'NOT met'} "
          f"(largest growth {worst:.1f} MB)")


if __name__ == "__main__":
    main()
