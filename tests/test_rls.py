"""Row-level security on PostgreSQL: the database layer holds even if the code above it fails.

These invariants are read from the live catalog (pg_class, pg_policies, pg_proc, pg_depend), so
a table, view or function added later without the same protection fails here. PostgreSQL only;
like every PostgreSQL test it is skipped locally when no server is reachable and fails in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from sqlalchemy import text

import enginex.models  # noqa: F401 - registers every model
from enginex.config import Settings
from enginex.db import Database, set_tenant, tenant_tables
from tests.conftest import APP_ROLE, OWNER_ROLE, PG_ADMIN_DSN, PgDatabase
from tests.factories import WAIT_SECONDS, Org

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)

# The SECURITY DEFINER functions the app role may call, each a reviewed, narrow platform-wide
# read (docs/MULTI_TENANT.md). Adding one means reviewing it and listing it here.
PLATFORM_FUNCTIONS = {
    "enginex_user_memberships": "a user's organizations and roles, at sign-in",
    "enginex_tenant_member_counts": "member counts for the platform admin's tenant list",
    "enginex_tenant_session_counts": "sessions by status per tenant, for the platform admin",
    "enginex_tenant_workload": "agents, queue depth, pending approvals per tenant (counts)",
}
# Reviewed functions a later migration may add (present only once that migration exists).
OPTIONAL_PLATFORM_FUNCTIONS = {
    "enginex_claim_run": "the fair scheduler: the next claimable run across tenants (ids)",
    "enginex_claim_runs": "the batch claimer (0013): up to N claimable runs, fairly (ids)",
    "enginex_expire_approvals": "worker housekeeping: expires overdue approvals (a count)",
    "enginex_mcp_catalog_usage": "servers using an MCP catalog entry, for its deletion (a count)",
    "enginex_verified_domain_org": "the organization of a verified email domain, for SSO "
                                   "routing at sign-in and one-domain-one-org claims (an id)",
    "enginex_usage_by_tenant": "usage totals per tenant and kind (ids, quantities, costs)",
    "enginex_audit_trim": "retention: deletes the bound tenant's oldest audit entries up to a seq "
                          "(refuses another tenant; RLS applies to the owner); returns a count",
}

TENANT_TABLES_SQL = """
    SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg_toast%'
      AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                  AND a.attname = 'tenant_id' AND NOT a.attisdropped)
    ORDER BY c.relname
"""
# enginex/migrations/rls.py's predicate, as PostgreSQL prints it back
TENANT_PREDICATE = ("(tenant_id = (NULLIF(current_setting('app.tenant_id'::text, true), "
                    "''::text))::uuid)")


@pytest.fixture
def pg(pg_database: PgDatabase | None, settings: Settings) -> PgDatabase:
    """The session's PostgreSQL test database, migrated (``settings`` runs the migrations)."""
    assert pg_database is not None
    return pg_database


@pytest.fixture
def superuser(pg: PgDatabase) -> Iterator[psycopg.Connection]:
    """A superuser connection to the test database (bypasses RLS: for seeing the truth)."""
    with psycopg.connect(make_conninfo(PG_ADMIN_DSN, dbname=pg.name), autocommit=True) as conn:
        yield conn


@pytest.fixture
def app_conn(pg: PgDatabase) -> Iterator[psycopg.Connection]:
    """A connection as the application role, outside the application."""
    with psycopg.connect(pg.dsn(APP_ROLE)) as conn:
        yield conn


def rls_violations(conn: psycopg.Connection) -> list[str]:
    """Every way a table with a tenant_id column falls short of forced, tenant-checked RLS."""
    problems = []
    policies: dict[str, list[tuple]] = {}
    for row in conn.execute("SELECT tablename, policyname, permissive, roles, cmd, qual, "
                            "with_check FROM pg_policies"):
        policies.setdefault(row[0], []).append(row[1:])
    for table, enabled, forced in conn.execute(TENANT_TABLES_SQL).fetchall():
        if not (enabled and forced):
            problems.append(f"{table}: row-level security enabled={enabled} forced={forced}")
        mine = policies.get(table, [])
        if not any(permissive == "PERMISSIVE" and cmd == "ALL" and roles == ["public"]
                   and qual == TENANT_PREDICATE and check == TENANT_PREDICATE
                   for _, permissive, roles, cmd, qual, check in mine):
            problems.append(f"{table}: no policy with USING and WITH CHECK on app.tenant_id")
        for name, permissive, roles, cmd, qual, check in mine:
            if qual == TENANT_PREDICATE and check in (TENANT_PREDICATE, None):
                continue
            # Any other policy may only serve the owner's SECURITY DEFINER functions.
            if permissive == "PERMISSIVE" and not set(roles) <= {OWNER_ROLE}:
                problems.append(f"{table}: policy {name} opens {cmd} to {roles}")
    return problems


def test_every_table_with_tenant_id_has_forced_rls_and_a_tenant_policy(
        superuser: psycopg.Connection) -> None:
    tables = [r[0] for r in superuser.execute(TENANT_TABLES_SQL)]
    assert {"api_keys", "audit_entries", "invitations", "memberships"} <= set(tables)
    assert rls_violations(superuser) == []


def test_the_invariant_check_catches_a_new_table_without_rls(
        superuser: psycopg.Connection) -> None:
    with superuser.transaction(force_rollback=True):
        superuser.execute("CREATE TABLE public.rls_canary (tenant_id uuid NOT NULL, note text)")
        assert rls_violations(superuser) == [
            "rls_canary: row-level security enabled=False forced=False",
            "rls_canary: no policy with USING and WITH CHECK on app.tenant_id",
        ]
        superuser.execute("ALTER TABLE rls_canary ENABLE ROW LEVEL SECURITY")
        superuser.execute("ALTER TABLE rls_canary FORCE ROW LEVEL SECURITY")
        superuser.execute("CREATE POLICY wide_open ON rls_canary USING (true)")
        assert rls_violations(superuser) == [
            "rls_canary: no policy with USING and WITH CHECK on app.tenant_id",
            "rls_canary: policy wide_open opens ALL to ['public']",
        ]


def test_tenant_tables_of_the_models_are_the_tables_with_tenant_id(
        superuser: psycopg.Connection) -> None:
    in_database = {r[0] for r in superuser.execute(TENANT_TABLES_SQL)}
    assert set(tenant_tables()) == in_database


def test_the_app_role_cannot_bypass_rls(superuser: psycopg.Connection, pg: PgDatabase) -> None:
    role = superuser.execute(
        "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication "
        "FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone()
    assert role == (False, False, False, False, False)
    owned = superuser.execute("""
        SELECT 'relation ' || relname FROM pg_class WHERE relowner = %(r)s::regrole
        UNION ALL SELECT 'function ' || proname FROM pg_proc WHERE proowner = %(r)s::regrole
        UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspowner = %(r)s::regrole
        UNION ALL SELECT 'database ' || datname FROM pg_database WHERE datdba = %(r)s::regrole
        """, {"r": APP_ROLE}).fetchall()
    assert owned == []
    # not a member of any role (the owner's privileges would let it disable RLS)
    member_of = superuser.execute(
        "SELECT roleid::regrole::text FROM pg_auth_members WHERE member = %s::regrole",
        (APP_ROLE,)).fetchall()
    assert member_of == []
    assert superuser.execute("SELECT has_schema_privilege(%s, 'public', 'CREATE')",
                             (APP_ROLE,)).fetchone() == (False,)
    # TRUNCATE ignores row-level security; TRIGGER and REFERENCES are not needed either.
    risky = superuser.execute("""
        SELECT table_name, privilege_type FROM information_schema.role_table_grants
        WHERE grantee = %s AND privilege_type IN ('TRUNCATE', 'TRIGGER', 'REFERENCES')
        """, (APP_ROLE,)).fetchall()
    assert risky == []


def _counts(conn: psycopg.Connection, tables: list[str],
            tenant: str | None = None) -> dict[str, int]:
    """Rows per table visible to ``conn``, in one transaction with ``tenant`` set (or none)."""
    with conn.transaction():
        if tenant is not None:
            conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant,))
        return {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t)))
                .fetchone()[0] for t in tables}


def _per_tenant(conn: psycopg.Connection, tables: list[str], tenant: str) -> dict[str, int]:
    return {t: conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s")
                            .format(sql.Identifier(t)), (tenant,)).fetchone()[0]
            for t in tables}


def test_the_app_role_sees_nothing_without_a_tenant_and_only_its_tenant_with_one(
        org_a: Org, org_b: Org, superuser: psycopg.Connection,
        app_conn: psycopg.Connection) -> None:
    tables = [r[0] for r in superuser.execute(TENANT_TABLES_SQL)]
    truth_a = _per_tenant(superuser, tables, org_a.id)
    truth_b = _per_tenant(superuser, tables, org_b.id)
    seeded = {t for t in tables if truth_a[t] and truth_b[t]}
    assert {"api_keys", "audit_entries", "invitations", "memberships"} <= seeded

    assert _counts(app_conn, tables) == dict.fromkeys(tables, 0)
    assert _counts(app_conn, tables, tenant="") == dict.fromkeys(tables, 0)
    assert _counts(app_conn, tables, tenant=org_a.id) == truth_a
    assert _counts(app_conn, tables, tenant=org_b.id) == truth_b
    # the transaction-local setting is gone once the transaction ends
    assert _counts(app_conn, tables) == dict.fromkeys(tables, 0)


def test_writes_into_another_tenant_are_rejected(
        org_a: Org, org_b: Org, superuser: psycopg.Connection,
        app_conn: psycopg.Connection) -> None:
    user_a = org_a.admin.user_id
    insert = ("INSERT INTO memberships (tenant_id, user_id, role, created_at) "
              "VALUES (%s, %s, 'admin', now())")
    for tenant in (org_a.id, None):  # tenant A set, and no tenant at all
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"), \
                app_conn.transaction():
            if tenant:
                app_conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant,))
            app_conn.execute(insert, (org_b.id, user_a))

    tables = [r[0] for r in superuser.execute(TENANT_TABLES_SQL)]
    with_rows_of_a = [t for t, n in _per_tenant(superuser, tables, org_a.id).items() if n]
    assert "memberships" in with_rows_of_a
    # Append-only tables (the audit log) refuse UPDATE and DELETE to the app role outright.
    writable = {t for t in tables if superuser.execute(
        "SELECT has_table_privilege(%s, %s, 'UPDATE') AND has_table_privilege(%s, %s, 'DELETE')",
        (APP_ROLE, t, APP_ROLE, t)).fetchone()[0]}
    for table in with_rows_of_a:  # moving A's rows to B
        refusal = "row-level security" if table in writable else "permission denied"
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=refusal), \
                app_conn.transaction():
            app_conn.execute("SELECT set_config('app.tenant_id', %s, true)", (org_a.id,))
            app_conn.execute(sql.SQL("UPDATE {} SET tenant_id = %s").format(
                sql.Identifier(table)), (org_b.id,))

    before = _per_tenant(superuser, tables, org_b.id)
    with app_conn.transaction():  # B's rows are invisible to A: nothing to update or delete
        app_conn.execute("SELECT set_config('app.tenant_id', %s, true)", (org_a.id,))
        updated = app_conn.execute("UPDATE memberships SET role = 'viewer' WHERE tenant_id = %s",
                                   (org_b.id,)).rowcount
        deleted = sum(app_conn.execute(sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(
            sql.Identifier(t)), (org_b.id,)).rowcount for t in tables if t in writable)
    assert (updated, deleted) == (0, 0)
    assert _per_tenant(superuser, tables, org_b.id) == before
    roles_b = superuser.execute("SELECT role FROM memberships WHERE tenant_id = %s",
                                (org_b.id,)).fetchall()
    assert sorted(r[0] for r in roles_b) == ["admin", "builder", "operator", "viewer"]


def test_no_function_or_view_bypasses_rls(superuser: psycopg.Connection) -> None:
    definers = superuser.execute("""
        SELECT p.proname, n.nspname, p.proconfig,
               EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner)))
                       a WHERE a.grantee = 0) AS public_execute
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')
        """).fetchall()
    names = {row[0] for row in definers}
    assert set(PLATFORM_FUNCTIONS) <= names <= set(PLATFORM_FUNCTIONS) | set(
        OPTIONAL_PLATFORM_FUNCTIONS)
    for name, schema, config, public_execute in definers:
        assert schema == "public", name
        assert any(c.startswith("search_path=") for c in config or []), name
        assert not public_execute, f"{name} is executable by PUBLIC"
    assert _views_reading_tenant_tables(superuser) == []


def _views_reading_tenant_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return conn.execute("""
        SELECT DISTINCT v.relname, t.relname
        FROM pg_depend d
        JOIN pg_rewrite r ON r.oid = d.objid
        JOIN pg_class v ON v.oid = r.ev_class
        JOIN pg_class t ON t.oid = d.refobjid
        WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
          AND v.relkind IN ('v', 'm') AND t.oid <> v.oid
          AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = t.oid
                      AND a.attname = 'tenant_id' AND NOT a.attisdropped)
        ORDER BY 1, 2""").fetchall()


def test_the_view_check_catches_a_view_over_a_tenant_table(
        superuser: psycopg.Connection) -> None:
    with superuser.transaction(force_rollback=True):
        superuser.execute("CREATE VIEW public.all_members AS SELECT user_id FROM memberships")
        assert _views_reading_tenant_tables(superuser) == [("all_members", "memberships")]


def test_the_app_role_cannot_read_or_change_the_schema_version(
        app_conn: psycopg.Connection) -> None:
    for statement in ("SELECT version_num FROM alembic_version",
                      "UPDATE alembic_version SET version_num = 'forged'",
                      "DELETE FROM alembic_version"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), app_conn.transaction():
            app_conn.execute(statement)


# --- pooled connections never carry a tenant -------------------------------------------------

CURRENT = text("SELECT pg_backend_pid(), current_setting('app.tenant_id', true)")


async def _connection_state(db: Database) -> tuple[int, str | None]:
    """(backend pid, app.tenant_id) seen by a new session's first transaction."""
    async with db.sessions() as session:
        pid, tenant = (await session.execute(CURRENT)).one()
        await session.rollback()
    return pid, tenant


def _run_on_one_connection(settings: Settings, work) -> object:
    async def main() -> object:
        db = Database(settings, pool_size=1)
        try:
            return await work(db)
        finally:
            await db.dispose()
    return asyncio.run(main())


def test_a_pooled_connection_carries_no_tenant_after_commit_or_rollback(
        settings: Settings) -> None:
    tenant = uuid.uuid4()

    async def work(db: Database) -> None:
        first_pid, nothing = await _connection_state(db)
        assert nothing in (None, "")
        for end in ("commit", "rollback"):
            async with db.sessions() as session:
                await set_tenant(session, tenant)
                pid, seen = (await session.execute(CURRENT)).one()
                assert (pid, seen) == (first_pid, str(tenant))
                await getattr(session, end)()
                # the same session re-applies its tenant in its next transaction ...
                assert (await session.execute(CURRENT)).one() == (first_pid, str(tenant))
                await session.rollback()
            # ... but the pooled connection itself carries nothing into the next session
            pid, leaked = await _connection_state(db)
            assert pid == first_pid, "the pool of one should hand out the same connection"
            assert leaked in (None, ""), f"tenant left on a pooled connection after {end}"

    _run_on_one_connection(settings, work)


@pytest.mark.parametrize("waiting_on", ["the application", "the database"])
def test_a_cancelled_transaction_leaves_no_tenant_on_the_pool(
        settings: Settings, waiting_on: str) -> None:
    """A request cancelled mid-transaction (client gone, timeout) after set_tenant."""
    tenant = uuid.uuid4()

    async def work(db: Database) -> tuple[int, list[tuple[int, str | None]]]:
        first_pid, _ = await _connection_state(db)
        inside = asyncio.Event()

        async def request() -> None:
            async with db.sessions() as session:
                await set_tenant(session, tenant)
                await session.execute(text("SELECT count(*) FROM memberships"))
                inside.set()
                if waiting_on == "the database":
                    await session.execute(text("SELECT pg_sleep(30)"))
                else:
                    await asyncio.sleep(30)

        seen = []
        for _ in range(3):
            task = asyncio.create_task(request())
            await asyncio.wait_for(inside.wait(), WAIT_SECONDS)
            await asyncio.sleep(0.05)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            inside.clear()
            seen.append(await _connection_state(db))
        return first_pid, seen

    first_pid, seen = _run_on_one_connection(settings, work)
    assert all(tenant in (None, "") for _, tenant in seen), seen
    if waiting_on == "the application":
        # rolled back and returned to the pool: the very same connection, without a tenant
        assert {pid for pid, _ in seen} == {first_pid}
