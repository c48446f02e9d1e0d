"""The orphaned-report sweeper (reports/sweeper.py): files a discarded step wrote before its
commit are removed once old enough; committed reports, young files, other tenants' rows, junk
names and symbolic links are never a reason to delete.

Files are aged with ``os.utime`` to OLD (past the THRESHOLD these tests sweep with) or YOUNG
(within it). Both stay below the one hour the server's embedded worker sweeps with, so that
worker never removes a file a test here is counting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from enginex.db import Database
from enginex.kit.crypto import load_master_key
from enginex.reports.storage import ArtifactStorage
from enginex.reports.sweeper import sweep_orphans
from enginex.runs.runtime import build_engine
from enginex.runs.worker import Worker
from tests.factories import (
    Org,
    Server,
    deploy_agent,
    start_session,
    wait_for_async,
    wait_for_status,
)

THRESHOLD = timedelta(minutes=20)
OLD = timedelta(minutes=30)
YOUNG = timedelta(minutes=10)
ENGINEX = Path(sys.executable).with_name("enginex")


def storage_of(server: Server) -> ArtifactStorage:
    return ArtifactStorage(server.settings.resolved_storage_dir)


def age(path: Path, by: timedelta) -> None:
    """Set the modification time of ``path`` itself (a link, not its target) ``by`` ago."""
    when = time.time() - by.total_seconds()
    os.utime(path, (when, when), follow_symlinks=False)


def sweep(server: Server, older_than: timedelta = THRESHOLD) -> int:
    async def work() -> int:
        db = Database(server.settings)
        try:
            return await sweep_orphans(db.sessions, storage_of(server), older_than=older_than)
        finally:
            await db.dispose()

    return asyncio.run(work())


def committed_report(org: Org, note: str = "kept") -> uuid.UUID:
    """Run the one-step quick_report agent to success; the id of its report."""
    deploy_agent(org, "quick_report")
    run = start_session(org, {"note": note}, agent="quick-report")
    wait_for_status(org, run["id"], {"succeeded"})
    reports = org.members["viewer"].client.get(f"/api/v1/orgs/{org.slug}/reports",
                                               params={"session": run["id"]})
    assert reports.status_code == 200, reports.text
    [report] = reports.json()
    return uuid.UUID(report["id"])


def orphan(server: Server, tenant: str | uuid.UUID, by: timedelta,
           artifact_id: uuid.UUID | None = None) -> Path:
    """A file written the way a step writes its report, whose row was never committed."""
    path = storage_of(server).write(uuid.UUID(str(tenant)), artifact_id or uuid.uuid4(),
                                    b"# discarded\n")
    age(path, by)
    return path


def downloads(org: Org, report_id: uuid.UUID) -> bool:
    response = org.members["viewer"].client.get(
        f"/api/v1/orgs/{org.slug}/reports/{report_id}/download")
    return response.status_code == 200


def test_old_orphans_go_committed_and_young_files_stay(server: Server, org_a: Org) -> None:
    storage = storage_of(server)
    tenant = uuid.UUID(org_a.id)
    kept = committed_report(org_a)
    kept_path = storage.path_for(tenant, kept)
    age(kept_path, OLD)  # an old committed report is still referenced
    old = orphan(server, tenant, OLD)
    young = orphan(server, tenant, YOUNG)  # a step in progress: written, not committed yet
    interrupted = old.with_name(uuid.uuid4().hex + ".tmp")  # a crash inside storage.write
    interrupted.write_bytes(b"half")
    age(interrupted, OLD)

    assert sweep(server) == 2
    assert not old.exists() and not interrupted.exists()
    assert young.exists()
    assert kept_path.exists() and downloads(org_a, kept)
    assert sweep(server) == 0  # idempotent


def test_each_tenant_is_judged_against_its_own_rows(server: Server, org_a: Org,
                                                    org_b: Org) -> None:
    storage = storage_of(server)
    a_id, b_id = uuid.UUID(org_a.id), uuid.UUID(org_b.id)
    in_a, in_b = committed_report(org_a, "a"), committed_report(org_b, "b")
    for tenant, report in ((a_id, in_a), (b_id, in_b)):
        age(storage.path_for(tenant, report), OLD)
    # B holds a file named after A's row, and A one named after B's row. A row's file is
    # always under its own tenant's prefix, so neither is referenced by anything.
    b_copy_of_a = orphan(server, b_id, OLD, artifact_id=in_a)
    a_copy_of_b = orphan(server, a_id, OLD, artifact_id=in_b)

    assert sweep(server) == 2
    assert not b_copy_of_a.exists() and not a_copy_of_b.exists()
    assert storage.path_for(a_id, in_a).exists() and downloads(org_a, in_a)
    assert storage.path_for(b_id, in_b).exists() and downloads(org_b, in_b)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the storage root, holding a file that must never be removed."""
    (tmp_path / "victim").write_bytes(b"not storage")
    age(tmp_path / "victim", OLD)
    return tmp_path


def test_junk_names_and_symbolic_links_are_left_alone(server: Server, org_a: Org, org_b: Org,
                                                      outside: Path) -> None:
    storage = storage_of(server)
    a_id, b_id = uuid.UUID(org_a.id), uuid.UUID(org_b.id)
    artifacts = orphan(server, a_id, OLD).parent
    some = uuid.uuid4()
    junk = [artifacts / name for name in (
        "notes.txt", some.hex.upper(), str(some), some.hex[:31], some.hex + "0",
        some.hex + ".md", some.hex + ".tmp.bak", ".tmp", some.hex + "\n")]
    for path in junk:
        path.write_bytes(b"junk")
        age(path, OLD)
    folder = artifacts / uuid.uuid4().hex  # a well-formed name, but a directory
    folder.mkdir()
    age(folder, OLD)
    links = [artifacts / uuid.uuid4().hex, artifacts / (uuid.uuid4().hex + ".tmp")]
    for link in links:
        link.symlink_to(outside / "victim")
        age(link, OLD)
    stray = storage.tenant_prefix(a_id) / uuid.uuid4().hex  # outside the artifacts folder
    stray.write_bytes(b"stray")
    age(stray, OLD)

    sweep(server)
    for path in [*junk, folder, *links, stray]:
        assert os.path.lexists(path), path
    assert (outside / "victim").read_bytes() == b"not storage"

    # B's tenant directory, then B's artifacts directory, is a link to a folder elsewhere
    # holding an old, unreferenced, well-formed file: it is never reached.
    elsewhere = outside / "tenant"
    (elsewhere / "artifacts").mkdir(parents=True)
    target = elsewhere / "artifacts" / uuid.uuid4().hex
    target.write_bytes(b"elsewhere")
    age(target, OLD)
    b_prefix = storage.tenant_prefix(b_id)
    assert not os.path.lexists(b_prefix)
    b_prefix.symlink_to(elsewhere, target_is_directory=True)
    try:
        sweep(server)
        assert target.exists()
    finally:
        b_prefix.unlink()
    b_prefix.mkdir()
    (b_prefix / "artifacts").symlink_to(elsewhere / "artifacts", target_is_directory=True)
    sweep(server)
    assert target.exists()


def test_a_directory_without_an_organization_is_left_alone(
        server: Server, caplog: pytest.LogCaptureFixture) -> None:
    gone = uuid.uuid4()  # no organization has this id (deleted, or another database's)
    old = orphan(server, gone, OLD)
    with caplog.at_level(logging.WARNING, logger="enginex.reports.sweeper"):
        sweep(server)
    assert old.exists()
    assert gone.hex in caplog.text and "left untouched" in caplog.text


def test_a_worker_sweeps_periodically(server: Server, org_a: Org) -> None:
    old = orphan(server, org_a.id, OLD)
    young = orphan(server, org_a.id, YOUNG)

    async def work() -> None:
        db = Database(server.settings)
        deps = build_engine(server.settings, db, load_master_key(server.settings))
        worker = Worker(db, deps, slots=0, report_sweep_seconds=0.2,
                        report_orphan_age=THRESHOLD)
        running = asyncio.create_task(worker.run())
        try:
            async def swept() -> bool:
                return not old.exists()

            await wait_for_async(swept, what="the worker's sweep", interval=0.1)
        finally:
            worker.stop()
            await running
            await db.dispose()

    asyncio.run(work())
    assert not old.exists()
    assert young.exists()


@pytest.fixture
def cli_env(server: Server) -> Iterator[dict[str, str]]:
    settings = server.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEX_")}
    env.update(ENGINEX_DATA_DIR=str(settings.data_dir), ENGINEX_MASTER_KEY=settings.master_key,
               ENGINEX_DATABASE_URL=settings.database_url)
    yield env


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ENGINEX), "reports", "sweep", *args], capture_output=True,
                          text=True, env=env, timeout=120, check=False)


def test_cli_sweeps_once_and_prints_the_count(server: Server, org_a: Org,
                                              cli_env: dict[str, str]) -> None:
    old = orphan(server, org_a.id, OLD)
    young = orphan(server, org_a.id, YOUNG)

    done = run_cli(cli_env, "--older-than-minutes", "20")
    assert done.returncode == 0, done.stderr
    assert "removed 1 orphaned report file(s) older than 20 minute(s)" in done.stdout
    assert not old.exists() and young.exists()

    refused = run_cli(cli_env, "--older-than-minutes", "0")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--older-than-minutes must be at least 1" in refused.stderr
    assert young.exists()
