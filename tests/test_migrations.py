"""Migrations: one set that upgrades, downgrades and re-upgrades on SQLite and PostgreSQL, matches
the models, and ``enginex migrate`` refusing an application role that could bypass RLS.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from psycopg.conninfo import make_conninfo
from sqlalchemy import create_engine, inspect, pool

import enginex.models  # noqa: F401 - registers every model
from enginex.config import Settings
from enginex.db import Base, tenant_tables
from enginex.kit.crypto import generate_master_key
from enginex.migrate import UnsafeDatabaseRole, alembic_config, upgrade
from tests.conftest import (
    IN_CI,
    OWNER_ROLE,
    PG_ADMIN_DSN,
    PgDatabase,
    _pg_available,
)

ENGINEX = Path(sys.executable).with_name("enginex")


def _tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _round_trip(url: str) -> None:
    config = alembic_config(url)
    command.upgrade(config, "head")
    assert _tables(url) == set(Base.metadata.tables) | {"alembic_version"}
    command.downgrade(config, "base")
    assert _tables(url) == {"alembic_version"}
    command.upgrade(config, "head")
    assert _tables(url) == set(Base.metadata.tables) | {"alembic_version"}
    with warnings.catch_warnings():  # SQLite cannot reflect the lower(email) unique index
        warnings.filterwarnings("ignore", message=".*expression-based index")
        command.check(config)  # the models and the migrations describe the same schema


def test_migrations_round_trip_on_sqlite(tmp_path: Path) -> None:
    _round_trip(f"sqlite:///{tmp_path / 'round-trip.db'}")


def test_the_migration_history_is_linear() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1
    assert len(script.get_bases()) == 1


# --- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_admin() -> Iterator[psycopg.Connection]:
    problem = _pg_available()
    if problem:
        message = f"PostgreSQL is not reachable at {PG_ADMIN_DSN}: {problem}"
        if IN_CI:
            pytest.fail(f"{message} (mandatory in CI)")
        pytest.skip(message)
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        yield conn


@pytest.fixture
def scratch_db(pg_admin: psycopg.Connection) -> Iterator[PgDatabase]:
    db = PgDatabase()
    try:
        yield db
    finally:
        db.drop()


def test_migrations_round_trip_on_postgres(scratch_db: PgDatabase) -> None:
    url = scratch_db.url(OWNER_ROLE)
    _round_trip(url)
    with psycopg.connect(scratch_db.dsn(OWNER_ROLE)) as conn:
        forced = {r[0] for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relrowsecurity AND relforcerowsecurity "
            "AND relnamespace = 'public'::regnamespace")}
        assert forced == set(tenant_tables())
        definers = {r[0] for r in conn.execute("SELECT proname FROM pg_proc WHERE prosecdef "
                                               "AND pronamespace = 'public'::regnamespace")}
        assert {"enginex_user_memberships", "enginex_tenant_member_counts"} <= definers


class Roles:
    """Throwaway roles for one test in one scratch database; dropped with all they own."""

    def __init__(self, admin: psycopg.Connection, db: PgDatabase) -> None:
        self.admin = admin
        self.db = db
        self.tag = secrets.token_hex(3)
        self.created: list[str] = []

    def create(self, label: str, options: str = "") -> str:
        name = f"enginex_t_{self.tag}_{label}"
        self.admin.execute(f'CREATE ROLE "{name}" LOGIN {options}')
        self.created.append(name)
        return name

    def drop(self) -> None:
        if self.created:
            names = ", ".join(f'"{n}"' for n in self.created)
            _as_superuser(self.db, f"DROP OWNED BY {names}")
            self.admin.execute(f"DROP ROLE {names}")


@pytest.fixture
def roles(pg_admin: psycopg.Connection, scratch_db: PgDatabase) -> Iterator[Roles]:
    made = Roles(pg_admin, scratch_db)
    try:
        yield made
    finally:
        made.drop()


def _settings(db: PgDatabase, app_role: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, master_key=generate_master_key(),
                    database_url=db.url(app_role), migration_database_url=db.url(OWNER_ROLE))


def _as_superuser(db: PgDatabase, statement: str) -> None:
    with psycopg.connect(make_conninfo(PG_ADMIN_DSN, dbname=db.name), autocommit=True) as conn:
        conn.execute(statement)


def _privileges(db: PgDatabase, role: str) -> dict[str, bool]:
    with psycopg.connect(make_conninfo(PG_ADMIN_DSN, dbname=db.name)) as conn:
        row = conn.execute("""
            SELECT has_table_privilege(%(r)s, 'public.memberships', 'SELECT, INSERT, UPDATE,
                                       DELETE'),
                   has_table_privilege(%(r)s, 'public.memberships', 'TRUNCATE'),
                   has_table_privilege(%(r)s, 'public.alembic_version', 'SELECT, UPDATE'),
                   has_function_privilege(%(r)s, 'public.enginex_user_memberships(uuid)',
                                          'EXECUTE')""", {"r": role}).fetchone()
    return dict(zip(("read_write", "truncate", "schema_version", "platform_functions"), row,
                    strict=True))


def test_migrate_grants_a_sound_app_role_only_what_it_needs(
        scratch_db: PgDatabase, roles: Roles, tmp_path: Path) -> None:
    app = roles.create("app", "NOSUPERUSER NOBYPASSRLS")
    settings = _settings(scratch_db, app, tmp_path)
    upgrade(settings)
    upgrade(settings)  # idempotent
    assert _privileges(scratch_db, app) == {"read_write": True, "truncate": False,
                                            "schema_version": False,
                                            "platform_functions": True}


def test_migrate_refuses_an_app_role_that_could_bypass_rls(
        scratch_db: PgDatabase, roles: Roles, tmp_path: Path) -> None:
    command.upgrade(alembic_config(scratch_db.url(OWNER_ROLE)), "head")
    member = roles.create("member")
    table_owner = roles.create("tableowner")
    function_owner = roles.create("fnowner")
    cases = {
        OWNER_ROLE: "different from the migration (owner) role",
        roles.create("super", "SUPERUSER"): "is superuser or has BYPASSRLS",
        roles.create("bypass", "BYPASSRLS"): "is superuser or has BYPASSRLS",
        roles.create("createrole", "CREATEROLE"): "or CREATEROLE",
        f"enginex_t_{roles.tag}_missing": "does not exist",
        member: f"is a member of the migration role '{OWNER_ROLE}'",
        table_owner: "owns 1 object(s) in this database (relation stray)",
        function_owner: "owns 1 object(s) in this database (function stray_fn)",
    }
    _as_superuser(scratch_db, f'GRANT "{OWNER_ROLE}" TO "{member}"')
    _as_superuser(scratch_db, f'CREATE TABLE public.stray (id int); '
                              f'ALTER TABLE public.stray OWNER TO "{table_owner}"; '
                              "CREATE FUNCTION public.stray_fn() RETURNS int LANGUAGE sql "
                              "AS $$ SELECT 1 $$; "
                              f'ALTER FUNCTION public.stray_fn() OWNER TO "{function_owner}"')
    for app_role, message in cases.items():
        with pytest.raises(UnsafeDatabaseRole, match=re.escape(message)):
            upgrade(_settings(scratch_db, app_role, tmp_path))
    for refused in (table_owner, function_owner):  # the refusal granted nothing
        assert not any(_privileges(scratch_db, refused).values()), refused


def test_enginex_migrate_reports_an_unsafe_app_role_without_a_traceback(
        scratch_db: PgDatabase, roles: Roles, tmp_path: Path) -> None:
    bypass = roles.create("bypass", "BYPASSRLS")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEX_")}
    env.update(ENGINEX_DATA_DIR=str(tmp_path), ENGINEX_MASTER_KEY=generate_master_key(),
               ENGINEX_DATABASE_URL=scratch_db.url(bypass),
               ENGINEX_MIGRATION_DATABASE_URL=scratch_db.url(OWNER_ROLE))
    done = subprocess.run([str(ENGINEX), "migrate"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert f"The application role '{bypass}' is superuser or has BYPASSRLS" in done.stderr
    assert "Traceback" not in done.stderr
    assert "latest schema" not in done.stdout
