"""``enginex migrate``: Alembic upgrade, then (PostgreSQL) grants and the app-role check.

The app role must not be able to bypass row-level security: not superuser, no BYPASSRLS,
owning no table. Migrations run as the owner role (ENGINEX_MIGRATION_DATABASE_URL).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, make_url, pool, text

from enginex.config import Settings
from enginex.db import tenant_tables


class UnsafeDatabaseRole(RuntimeError):
    pass


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _sync(url: str) -> str:
    return url.replace("sqlite+aiosqlite", "sqlite")


def upgrade(settings: Settings) -> None:
    if not settings.is_postgres:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(_sync(settings.resolved_migration_url)), "head")
    if settings.is_postgres:
        grant_and_check_app_role(settings)


def grant_and_check_app_role(settings: Settings) -> None:
    """Grant the app role what it needs and refuse one that could bypass RLS."""
    app_role = make_url(settings.resolved_database_url).username
    engine = create_engine(settings.resolved_migration_url, poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            owner = conn.execute(text("SELECT current_user")).scalar_one()
            if not app_role or app_role == owner:
                raise UnsafeDatabaseRole(
                    "ENGINEX_DATABASE_URL must connect as an application role different from "
                    "the migration (owner) role, so that row-level security applies to it. "
                    "See docs/MULTI_TENANT.md, 'Database roles'.")
            row = conn.execute(text("SELECT rolsuper, rolbypassrls FROM pg_roles "
                                    "WHERE rolname = :r"), {"r": app_role}).first()
            if row is None:
                raise UnsafeDatabaseRole(f"The application role '{app_role}' does not exist; "
                                         "create it as in docs/MULTI_TENANT.md.")
            if row[0] or row[1]:
                raise UnsafeDatabaseRole(
                    f"The application role '{app_role}' is superuser or has BYPASSRLS, so "
                    f"row-level security would not apply. Run: ALTER ROLE {app_role} "
                    "NOSUPERUSER NOBYPASSRLS;")
            owned = conn.execute(text(
                "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
                "WHERE r.rolname = :r AND c.relnamespace = 'public'::regnamespace"),
                {"r": app_role}).scalar_one()
            if owned:
                raise UnsafeDatabaseRole(
                    f"The application role '{app_role}' owns {owned} relation(s) in schema "
                    "public; owners can disable row-level security. Transfer ownership to "
                    "the migration role.")
            role = conn.dialect.identifier_preparer.quote(app_role)
            conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
            conn.execute(text("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "
                              f"public TO {role}"))
            conn.execute(text(f"REVOKE ALL ON alembic_version FROM {role}"))
            conn.execute(text(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role}"))
            missing = conn.execute(text(
                "SELECT relname FROM pg_class WHERE relname = ANY(:t) "
                "AND NOT (relrowsecurity AND relforcerowsecurity)"),
                {"t": tenant_tables()}).scalars().all()
            if missing:
                raise UnsafeDatabaseRole(f"Row-level security is not forced on {missing}; "
                                         "the migrations are incomplete.")
    finally:
        engine.dispose()
