"""A private PostgreSQL cluster for tests that stop or restart the database server.

Never stop or restart the shared server on 5432: a test that needs a database outage starts
its own cluster (``initdb`` into a temporary directory, trust authentication, a free port on
127.0.0.1) with this module's ``private_pg`` fixture, and stops it at the end::

    def test_x(private_pg: PrivateCluster) -> None:
        database = private_pg.create_database()       # owner and app roles as in conftest
        settings = private_pg.settings_for(database, tmp_path)
        ...
        private_pg.stop(); private_pg.start()          # or private_pg.restart()

As root, ``initdb`` and ``postgres`` refuse to run: they run as the ``postgres`` system user
(``runuser -u postgres --``) in a directory it owns. Missing binaries skip the test locally
and FAIL it under CI=true, like the shared PostgreSQL in conftest.py.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from enginex.config import Settings
from enginex.kit.crypto import generate_master_key
from tests.conftest import APP_ROLE, IN_CI, OWNER_ROLE
from tests.factories import free_port

SYSTEM_USER = "postgres"


def _bin_dir() -> Path | None:
    configured = os.environ.get("ENGINEX_TEST_PG_BIN")
    candidates = [configured] if configured else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))[::-1]
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    return None


class PrivateCluster:
    """One PostgreSQL cluster of this test process: data directory, port, owner/app roles."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="enginex-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, SYSTEM_USER)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        """Run a server tool; its output goes to a file (a pipe would be inherited by the
        server that ``pg_ctl`` starts and never reach end-of-file)."""
        command = [str(self.bin_dir / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", SYSTEM_USER, "--", *command]
        with open(self.root / "tools.log", "ab") as out:
            completed = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, timeout=180, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"{tool} failed ({completed.returncode}): "
                               + (self.root / "tools.log").read_text()[-2000:])

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "120", "start")

    def stop(self) -> None:
        """Fast shutdown: every client connection is terminated."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "120", "stop")

    def restart(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w",
                  "-t", "120", "restart")

    def create_database(self) -> str:
        """A fresh database owned by the owner role (the roles of conftest.py); its name."""
        name = f"enginex_private_{secrets.token_hex(3)}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            for role in (OWNER_ROLE, APP_ROLE):
                if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                     (role,)).fetchone():
                    admin.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOBYPASSRLS '
                                  "NOCREATEDB")
            admin.execute(f'CREATE DATABASE "{name}" OWNER "{OWNER_ROLE}"')
        return name

    def url(self, database: str, role: str) -> str:
        return f"postgresql+psycopg://{role}@127.0.0.1:{self.port}/{database}"

    def settings_for(self, database: str, data_dir: Path, **overrides: object) -> Settings:
        """Settings of a deployment on ``database`` (app role under RLS, owner migrates)."""
        return Settings(data_dir=data_dir, master_key=generate_master_key(),
                        base_url="http://127.0.0.1", log_level="WARNING",
                        database_url=self.url(database, APP_ROLE),
                        migration_database_url=self.url(database, OWNER_ROLE)
                        ).model_copy(update=overrides)

    def destroy(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except RuntimeError:
            pass  # not running
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivateCluster]:
    bin_dir = _bin_dir()
    if bin_dir is None:
        message = ("PostgreSQL server binaries (initdb, pg_ctl) not found under "
                   "/usr/lib/postgresql/*/bin; set ENGINEX_TEST_PG_BIN")
        if IN_CI:
            pytest.fail(f"{message} (mandatory in CI)")
        pytest.skip(message)
    cluster = PrivateCluster(bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
