"""Throwaway PostgreSQL databases for the benchmarks (shared by engine.py, scoped_read.py and
workspace.py): a fresh owner role, a fresh app role without RLS bypass, a database the owner
owns -- all with unique names, all dropped by ``PgDatabase.drop``."""

from __future__ import annotations

import contextlib
import os
import secrets

import psycopg
from psycopg.conninfo import conninfo_to_dict

PG_ADMIN_DSN = (os.environ.get("ENGINEX_BENCH_PG_ADMIN")
                or os.environ.get("ENGINEX_TEST_PG_ADMIN")
                or "postgresql://postgres@127.0.0.1:5432/postgres")


class BenchError(RuntimeError):
    """The benchmark could not run (setup failed, or the server answered errors) -- not: a
    figure was low."""


def pg_problem() -> str | None:
    """None when PostgreSQL answers at PG_ADMIN_DSN, else why not."""
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class PgDatabase:
    """A database ``<prefix>_<tag>`` owned by role ``enginex_bench_<tag>_owner``, plus the app
    role ``enginex_bench_<tag>_app`` (LOGIN, no superuser, no BYPASSRLS)."""

    def __init__(self, prefix: str = "enginex_bench") -> None:
        tag = secrets.token_hex(4)
        self.name = f"{prefix}_{tag}"
        self.owner = f"enginex_bench_{tag}_owner"
        self.app = f"enginex_bench_{tag}_app"
        params = conninfo_to_dict(PG_ADMIN_DSN)
        self.host = params.get("host") or "127.0.0.1"
        self.port = params.get("port") or "5432"
        try:
            with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
                for role in (self.owner, self.app):
                    admin.execute(
                        f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB')
                admin.execute(f'CREATE DATABASE "{self.name}" OWNER "{self.owner}"')
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                self.drop()
            raise BenchError(f"could not create the benchmark database: {exc}") from exc

    def url(self, role: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{role}@{self.host}:{self.port}/{self.name}"

    def analyze(self) -> None:
        """ANALYZE every table (as the owner): planner statistics after a bulk load."""
        with psycopg.connect(self.url(self.owner, driver="postgresql"),
                             autocommit=True) as owner:
            owner.execute("ANALYZE")

    def drop(self) -> None:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            for role in (self.app, self.owner):
                admin.execute(f'DROP ROLE IF EXISTS "{role}"')
