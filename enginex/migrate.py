"""``enginex migrate``: Alembic upgrade, then (PostgreSQL) grants and the app-role check.

The app role must not be able to bypass row-level security: not superuser, no BYPASSRLS or
CREATEROLE, not a member of the owner role, owning nothing in the database. Migrations run as
the owner role (ENGINEX_MIGRATION_DATABASE_URL).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, make_url, pool, text

from enginex.config import Settings
from enginex.db import prepare_embedded_files, tenant_tables


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
    if settings.is_postgres and not settings.migration_database_url:
        raise UnsafeDatabaseRole(
            "On PostgreSQL, migrations run as the owner role: set "
            "ENGINEX_MIGRATION_DATABASE_URL (see docs/MULTI_TENANT.md, 'Database roles'); "
            "ENGINEX_DATABASE_URL is the application role, which cannot change the schema.")
    prepare_embedded_files(settings)
    command.upgrade(alembic_config(_sync(settings.resolved_migration_url)), "head")
    if settings.is_postgres:
        grant_and_check_app_role(settings)


# Tables with a tenant_id column, in any non-system schema: row-level security must cover each.
_TENANT_TABLES_SQL = text("""
    SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                  AND a.attname = 'tenant_id' AND NOT a.attisdropped)""")

_WITHOUT_RLS_SQL = text("""
    SELECT c.relname FROM pg_class c
    WHERE c.relname = ANY(:tables) AND c.relnamespace = 'public'::regnamespace
      AND NOT (c.relrowsecurity AND c.relforcerowsecurity
               AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid
                           AND p.polname = 'tenant_isolation'))
    ORDER BY c.relname""")

# Everything in this database the app role owns: an owner can disable row-level security on
# its tables, and a function it owned could be made SECURITY DEFINER.
_OWNED_SQL = text("""
    SELECT 'relation ' || c.relname FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relowner = CAST(:r AS regrole) AND n.nspname NOT LIKE 'pg\\_%'
        AND n.nspname <> 'information_schema'
    UNION ALL SELECT 'function ' || proname FROM pg_proc WHERE proowner = CAST(:r AS regrole)
    UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspowner = CAST(:r AS regrole)
    UNION ALL SELECT 'database ' || datname FROM pg_database
      WHERE datdba = CAST(:r AS regrole) AND datname = current_database()""")


def grant_and_check_app_role(settings: Settings) -> None:
    """Grant the app role what it needs and refuse one that could bypass RLS.

    Raises UnsafeDatabaseRole (nothing is granted then) when the app role is the migration
    role, is superuser or has BYPASSRLS or CREATEROLE, is a member of the migration role, owns
    anything in this database, or when a table with a tenant_id column lacks forced RLS with
    the tenant policy.
    """
    app_role = make_url(settings.resolved_database_url).username
    engine = create_engine(settings.resolved_migration_url, poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            _check_app_role(conn, app_role)
            role = conn.dialect.identifier_preparer.quote(app_role)
            conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
            conn.execute(text("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "
                              f"public TO {role}"))
            # TRUNCATE ignores row-level security; TRIGGER and REFERENCES are never needed.
            conn.execute(text("REVOKE TRUNCATE, TRIGGER, REFERENCES ON ALL TABLES IN SCHEMA "
                              f"public FROM {role}"))
            conn.execute(text(f"REVOKE ALL ON alembic_version FROM {role}"))
            # The audit log is append-only for the app (a trigger refuses the owner too).
            conn.execute(text(f"REVOKE UPDATE, DELETE ON audit_entries FROM {role}"))
            conn.execute(text(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role}"))
            tables = sorted(set(conn.execute(_TENANT_TABLES_SQL).scalars()) |
                            set(tenant_tables()))
            missing = conn.execute(_WITHOUT_RLS_SQL, {"tables": tables}).scalars().all()
            if missing:
                raise UnsafeDatabaseRole(
                    f"Row-level security with the tenant policy is not forced on {missing}; "
                    "the migrations are incomplete.")
    finally:
        engine.dispose()


def _check_app_role(conn: Connection, app_role: str | None) -> None:
    owner = conn.execute(text("SELECT current_user")).scalar_one()
    if not app_role or app_role == owner:
        raise UnsafeDatabaseRole(
            "ENGINEX_DATABASE_URL must connect as an application role different from "
            "the migration (owner) role, so that row-level security applies to it. "
            "See docs/MULTI_TENANT.md, 'Database roles'.")
    row = conn.execute(text("SELECT rolsuper, rolbypassrls, rolcreaterole, "
                            "pg_has_role(rolname, current_user, 'MEMBER') "
                            "FROM pg_roles WHERE rolname = :r"), {"r": app_role}).first()
    if row is None:
        raise UnsafeDatabaseRole(f"The application role '{app_role}' does not exist; "
                                 "create it as in docs/MULTI_TENANT.md.")
    superuser, bypassrls, createrole, member_of_owner = row
    if superuser or bypassrls or createrole:
        raise UnsafeDatabaseRole(
            f"The application role '{app_role}' is superuser or has BYPASSRLS or CREATEROLE, "
            "so row-level security would not hold against it. Run: "
            f"ALTER ROLE {app_role} NOSUPERUSER NOBYPASSRLS NOCREATEROLE;")
    if member_of_owner:
        raise UnsafeDatabaseRole(
            f"The application role '{app_role}' is a member of the migration role "
            f"'{owner}' and could act as the owner of every table. Run: "
            f"REVOKE {owner} FROM {app_role};")
    owned = conn.execute(_OWNED_SQL, {"r": app_role}).scalars().all()
    if owned:
        raise UnsafeDatabaseRole(
            f"The application role '{app_role}' owns {len(owned)} object(s) in this database "
            f"({', '.join(sorted(owned)[:5])}); an owner can disable row-level security. "
            "Transfer ownership to the migration role (ALTER ... OWNER TO).")
