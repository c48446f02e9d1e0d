"""Database engine, sessions, the model base, and the tenant context of a transaction.

Two guards live here because every query passes through them:

* ORM guard: a statement that touches a tenant-owned table anywhere (FROM, joins, subqueries,
  EXISTS, INSERT, UPDATE, DELETE) raises ``TenantContextMissing`` unless the session carries a
  tenant (``set_tenant``); when it does, a tenant filter is added to the SQL for every
  occurrence of a tenant-owned model, every row written must carry that tenant_id, and a
  tenant-owned table named as a bare Table (which the filter cannot reach) is refused.
  Raw ``text()`` SQL is not inspected: it is for the few platform reads (tenancy/platform.py).
* PostgreSQL GUC: ``set_tenant`` runs ``set_config('app.tenant_id', ..., true)`` (transaction
  local), and it is re-applied at the start of every later transaction of the same session, so
  row-level security sees the tenant and a pooled connection never carries one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg
from sqlalchemy import (
    DateTime,
    ForeignKey,
    MetaData,
    Table,
    Uuid,
    event,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    SessionTransaction,
    mapped_column,
    with_loader_criteria,
)
from sqlalchemy.orm.context import FromStatement
from sqlalchemy.orm.session import ORMExecuteState
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement, ColumnClause
from sqlalchemy.sql.selectable import (
    CTE,
    AliasedReturnsRows,
    CompoundSelect,
    FromClause,
    Select,
    TableClause,
    TextualSelect,
)
from sqlalchemy.types import TypeDecorator

from enginex.config import Settings, UnsafeConfigurationError

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class TenantContextMissing(RuntimeError):
    """A tenant-owned model was queried or written without a tenant on the session."""


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, uuid.UUID: Uuid}


class TenantOwned:
    """Mixin for every tenant-owned table: ``tenant_id`` leads the primary key.

    Tables using it get row-level security on PostgreSQL (see the migrations) and the ORM
    guard in this module.
    """

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True, sort_order=-10
    )


def is_tenant_owned(cls: type) -> bool:
    return isinstance(cls, type) and issubclass(cls, TenantOwned)


def tenant_tables() -> list[str]:
    """Names of every tenant-owned table (the RLS migration and its tests use this)."""
    return sorted(
        mapper.local_table.name  # type: ignore[union-attr]
        for mapper in Base.registry.mappers
        if is_tenant_owned(mapper.class_)
    )


# --- tenant on a session -------------------------------------------------------------------

TENANT_KEY = "enginex_tenant_id"


def session_tenant(session: Session | AsyncSession) -> uuid.UUID | None:
    return session.info.get(TENANT_KEY)


def _apply_guc(session: Session, tenant_id: uuid.UUID | None) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT set_config('app.tenant_id', :tenant, true)"),
            {"tenant": str(tenant_id) if tenant_id else ""},
        )


async def set_tenant(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    """Bind ``session`` to one tenant for the rest of its life (all later transactions too).

    A session bound to one tenant cannot be rebound to another: that raises, so a job or
    request can never mix two tenants' data in one unit of work.
    """
    current = session_tenant(session)
    if current is not None and current != tenant_id:
        raise TenantContextMissing("this database session is already bound to another tenant")
    if current == tenant_id and session.in_transaction():
        return  # already applied to this transaction
    session.info[TENANT_KEY] = tenant_id
    if session.in_transaction():
        await session.run_sync(_apply_guc, tenant_id)
    else:
        await session.connection()  # begins the transaction: _reapply_tenant sets the GUC


@event.listens_for(Session, "after_begin")
def _reapply_tenant(session: Session, transaction: SessionTransaction, connection: Any) -> None:
    tenant_id = session.info.get(TENANT_KEY)
    if tenant_id is not None and connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT set_config('app.tenant_id', :tenant, true)"), {"tenant": str(tenant_id)}
        )


def _is_tenant_table(table: object) -> bool:
    return isinstance(table, Table) and "tenant_id" in table.c


# Constructs the ORM tenant filter does not reach (their SQL is compiled without the ORM's
# loader criteria); a tenant-owned table inside one is refused rather than left unfiltered.
_UNFILTERED = (CTE, CompoundSelect, FromStatement, TextualSelect)


def _tenant_tables_used(statement: Executable) -> tuple[bool, bool]:
    """Whether ``statement`` touches a tenant-owned table anywhere (FROM, joins, subqueries,
    EXISTS, DML target), and whether it does so where the ORM tenant filter cannot be attached.

    The filter reaches mapped classes (and aliases of them), in the FROM, joins and WHERE
    subqueries of a statement. It does not reach a bare Table, a bare Column in a columns
    clause, CTEs, UNIONs, ``from_statement``, or a derived table (subquery) read by a SELECT
    that selects no mapped class or attribute. (Bare columns in WHERE clauses are how
    SQLAlchemy itself builds ``session.get`` and refresh queries, so they are allowed.)
    """
    used = False
    seen: set[tuple[int, bool, bool, bool]] = set()
    # element, in a columns clause?, out of the filter's reach?, inside an entity-less SELECT?
    pending: list[tuple[Any, bool, bool, bool]] = [(statement, False, False, False)]
    while pending:
        element, selected, unreachable, entityless = pending.pop()
        key = (id(element), selected, unreachable, entityless)
        if key in seen:
            continue
        seen.add(key)
        mapped = "parententity" in getattr(element, "_annotations", {})
        if isinstance(element, TableClause | ColumnClause):
            is_table = isinstance(element, TableClause)
            table = element if is_table else element.table
            if _is_tenant_table(table):
                if unreachable or (not mapped and (is_table or selected)):
                    return True, True
                used = True
            elif not is_table and table is not None:  # a column of a subquery: read it too
                pending.append((table, False, unreachable, entityless))
            continue  # a table's children are its own columns; a column's, its table
        if mapped and isinstance(element, FromClause):  # aliased(Model[, subquery])
            if is_tenant_owned(element._annotations["parententity"].class_):
                if unreachable:
                    return True, True
                used = True
            continue
        unreachable = (unreachable or isinstance(element, _UNFILTERED) or
                       (entityless and isinstance(element, AliasedReturnsRows)))
        if isinstance(element, Select):
            # A Select's children include FROMs derived from its columns (bare tables even for
            # mapped columns); only its explicit FROMs count.
            entityless = not any("parententity" in c._annotations for c in element._raw_columns)
            children = [(c, True) for c in element._raw_columns]
            children += [(c, False) for c in element._from_obj]
            children += [(c, False) for c in super(Select, element).get_children(
                omit_attrs=("_raw_columns", "_from_obj", "_correlate", "_correlate_except"))]
            pending.extend((c, sel, unreachable, entityless) for c, sel in children)
        else:
            pending.extend((c, selected, unreachable, entityless)
                           for c in element.get_children())
    return used, False


# ``_tenant_tables_used`` per statement shape: its answer depends only on the statement's
# structure (tables, mapped entities and their annotations, constructs), which is exactly what
# SQLAlchemy's cache key captures (bound values are not part of it). A statement without a
# cache key is walked every time. Bounded: oldest shapes first out.
GUARD_CACHE_SIZE = 2000
_guard_cache: dict[Any, tuple[bool, bool]] = {}


def _tenant_tables_used_cached(statement: Executable) -> tuple[bool, bool]:
    try:
        cache_key = statement._generate_cache_key()  # type: ignore[attr-defined]
    except (AttributeError, NotImplementedError):
        cache_key = None
    if cache_key is None:
        return _tenant_tables_used(statement)
    found = _guard_cache.get(cache_key.key)
    if found is None:
        found = _tenant_tables_used(statement)
        if len(_guard_cache) >= GUARD_CACHE_SIZE:
            del _guard_cache[next(iter(_guard_cache))]
        _guard_cache[cache_key.key] = found
    return found


def _same_tenant(value: object, tenant_id: uuid.UUID) -> bool:
    value = getattr(value, "value", value)  # a BindParameter from .values(...)
    if isinstance(value, ClauseElement):
        return False  # an SQL expression: cannot be verified before it runs
    try:
        return uuid.UUID(str(value)) == tenant_id
    except ValueError:
        return False


def _written_tenant_ids(state: ORMExecuteState) -> list[object]:
    """Every tenant_id value an INSERT or UPDATE statement would write."""
    statement: Any = state.statement
    rows: list[dict[Any, Any]] = [dict(statement._values or {})]
    for values in getattr(statement, "_multi_values", ()):
        rows.extend(values)
    params = state.parameters
    rows.extend(params if isinstance(params, list) else [params] if params else [])
    return [value for row in rows for key, value in row.items()
            if getattr(key, "key", key) == "tenant_id"]


@event.listens_for(Session, "do_orm_execute")
def _scope_tenant_queries(state: ORMExecuteState) -> None:
    used, bare = _tenant_tables_used_cached(state.statement)
    if not used:
        return
    tenant_id = state.session.info.get(TENANT_KEY)
    if tenant_id is None:
        raise TenantContextMissing(
            "query on a tenant-owned model without a tenant context; use a scoped repository"
        )
    if bare:
        raise TenantContextMissing(
            "a tenant-owned table is used where the tenant filter cannot be added (a bare "
            "Table or Column, a CTE, a UNION, from_statement, or a subquery read by a SELECT "
            "of no mapped class); query the mapped model directly"
        )
    if state.is_insert or state.is_update:
        if getattr(state.statement, "select", None) is not None:
            raise TenantContextMissing("INSERT ... FROM SELECT into a tenant-owned table refused")
        if not all(_same_tenant(v, tenant_id) for v in _written_tenant_ids(state)):
            raise TenantContextMissing("write to a row of another tenant refused")
    if state.is_insert:
        return
    state.statement = state.statement.options(
        with_loader_criteria(
            TenantOwned,
            lambda cls: cls.tenant_id == tenant_id,
            include_aliases=True,
        )
    )


@event.listens_for(Session, "before_flush")
def _check_tenant_writes(session: Session, flush_context: Any, instances: Any) -> None:
    touched = [o for o in (*session.new, *session.dirty, *session.deleted)
               if is_tenant_owned(type(o))]
    if not touched:
        return
    tenant_id = session.info.get(TENANT_KEY)
    if tenant_id is None:
        raise TenantContextMissing("write to a tenant-owned model without a tenant context")
    for obj in touched:
        if obj.tenant_id is None and obj in session.new:
            obj.tenant_id = tenant_id
        if obj.tenant_id != tenant_id:
            raise TenantContextMissing("write to a row of another tenant refused")


# --- engines ---------------------------------------------------------------------------------


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Autocommit at the driver level so that the "begin" hook below decides how to BEGIN.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # Deleted rows are overwritten, so shredded tenant keys do not linger in free pages.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


# A session opened with ``execution_options={READ_ONLY: True}`` only reads. On SQLite its
# transactions begin DEFERRED: a WAL reader never holds the write lock, so code that opens
# another (writing) session while it is open does not wait on itself.
READ_ONLY = "enginex_read_only"


def _sqlite_begin_immediate(conn: Any) -> None:
    if conn.get_execution_options().get(READ_ONLY):
        conn.exec_driver_sql("BEGIN DEFERRED")
        return
    # One writer at a time, taken at BEGIN: avoids SQLITE_BUSY on read->write upgrades.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


# SQLite's pool when none is given (SQLAlchemy's own defaults, spelled out so the worker can
# size its connection gate): one writer at a time, so more connections would only queue.
SQLITE_POOL = (5, 10)
POOL_TIMEOUT_SECONDS = 30.0


def create_engine_for(url: str, *, pool_size: int = 10, max_overflow: int | None = None,
                      pool_timeout: float = POOL_TIMEOUT_SECONDS,
                      pgbouncer: bool = False) -> AsyncEngine:
    """The engine for ``url``: a pool of ``pool_size`` connections plus ``max_overflow``
    (default: as many again) that waits up to ``pool_timeout`` seconds for a free one.
    ``pgbouncer``: the URL is a PgBouncer in transaction mode, so psycopg prepares no
    statements (a prepared statement lives on one server connection, and PgBouncer hands the
    next transaction to any of them)."""
    overflow = pool_size if max_overflow is None else max_overflow
    if url.startswith("sqlite"):
        engine = create_async_engine(url, pool_size=pool_size, max_overflow=overflow,
                                     pool_timeout=pool_timeout)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
        return engine
    # No pre-ping round trip per checkout: connections are recycled after 30 minutes, and a
    # connection that died with the server is invalidated on its first error.
    connect_args: dict[str, Any] = {"prepare_threshold": None} if pgbouncer else {}
    return create_async_engine(url, pool_size=pool_size, max_overflow=overflow,
                               pool_timeout=pool_timeout, pool_recycle=1800,
                               connect_args=connect_args)


_SQLITE_TRANSIENT = ("locked", "busy", "disk I/O error", "unable to open database")


def is_transient_db_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from or while handling) says the database
    was unavailable rather than that the work was wrong: no pooled connection free within the
    pool timeout, a connection refused or lost (server restart), an operational error
    (SQLite busy, PostgreSQL admin shutdown, serialization failure, deadlock). Work that
    fails this way should be retried, never recorded as failed."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, sa_exc.OperationalError) and \
                isinstance(current.orig, sqlite3.Error):
            # SQLite reports missing tables and syntax errors as OperationalError too.
            return any(m in str(current.orig) for m in _SQLITE_TRANSIENT)
        if isinstance(current, sa_exc.TimeoutError | sa_exc.OperationalError
                      | sa_exc.InterfaceError | psycopg.OperationalError
                      | psycopg.InterfaceError):
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        pending.extend((current.__cause__, current.__context__))
    return False


class ConnectionGate:
    """At most ``size`` tasks at a time hold or wait for a pooled connection through this
    gate; the others wait here, in order and without a timeout (the pool's own wait gives up
    after its timeout). Sized to the pool, it keeps any number of concurrent tasks from
    timing out on the pool. Re-entrant per task: a task that already has its turn (a session
    opened inside another of its sessions) is not made to wait for itself."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._turns = asyncio.Semaphore(self.size)
        self._holders: dict[asyncio.Task[Any], int] = {}

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        task = asyncio.current_task()
        assert task is not None
        if task in self._holders:
            self._holders[task] += 1
            try:
                yield
            finally:
                self._holders[task] -= 1
            return
        async with self._turns:
            self._holders[task] = 1
            try:
                yield
            finally:
                del self._holders[task]

    def sessions(self, factory: SessionFactory) -> GatedSessions:
        return GatedSessions(factory, self)


class SessionFactory(Protocol):
    """``async_sessionmaker`` or ``GatedSessions``: ``async with factory(**kw) as session``."""

    def __call__(self, **kw: Any) -> AbstractAsyncContextManager[AsyncSession]: ...


class GatedSessions:
    """A session factory whose sessions each take a turn at ``gate`` for their lifetime."""

    def __init__(self, factory: SessionFactory, gate: ConnectionGate) -> None:
        self.factory = factory
        self.gate = gate

    @asynccontextmanager
    async def __call__(self, **kw: Any) -> AsyncIterator[AsyncSession]:
        async with self.gate.turn(), self.factory(**kw) as session:
            yield session


class Notifier:
    """Wakes this process's workers when a run becomes claimable (other processes are woken
    by PostgreSQL NOTIFY, see runs/worker.py)."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Event] = set()

    def waiter(self) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.add(event)
        return event

    def discard(self, event: asyncio.Event) -> None:
        self._waiters.discard(event)

    def wake(self) -> None:
        for waiter in list(self._waiters):
            waiter.set()


def on_commit(session: Session | AsyncSession, callback: Callable[[], None]) -> None:
    """Run ``callback`` after the session's current transaction commits (never on rollback)."""
    session.info.setdefault("on_commit", []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_on_commit(session: Session) -> None:
    for callback in session.info.pop("on_commit", []):
        callback()


@event.listens_for(Session, "after_rollback")
def _drop_on_commit(session: Session) -> None:
    session.info.pop("on_commit", None)


def prepare_embedded_files(settings: Settings) -> None:
    """On SQLite, create the data directory (0700) and the database file (0600) before
    anything opens them, whatever the process umask: SQLite gives the ``-wal`` and ``-shm``
    files the mode of the database file. Existing directories and files keep their mode.
    Nothing to do on PostgreSQL (``reports/storage.py`` creates its folders 0700)."""
    if settings.is_postgres:
        return
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    url = make_url(settings.resolved_database_url)
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        return
    path = Path(url.database)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


class Database:
    """The process's engine and session factory."""

    def __init__(self, settings: Settings, *, pool_size: int | None = None,
                 max_overflow: int | None = None,
                 pool_timeout: float = POOL_TIMEOUT_SECONDS) -> None:
        prepare_embedded_files(settings)
        default_size, default_overflow = (
            (settings.db_pool_size, settings.db_pool_size if settings.db_max_overflow is None
             else settings.db_max_overflow) if settings.is_postgres else SQLITE_POOL)
        size = pool_size or default_size
        if max_overflow is None:
            max_overflow = default_overflow if pool_size is None else size
        # How many connections this process may hold at once (worker.py sizes its gate so).
        self.pool_capacity = size + max_overflow
        self.engine = create_engine_for(settings.resolved_database_url, pool_size=size,
                                        max_overflow=max_overflow, pool_timeout=pool_timeout,
                                        pgbouncer=settings.db_pgbouncer)
        self.notifier = Notifier()
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False,
                                           info={"notifier": self.notifier})

    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()


# --- connection budget (docs/SCALING.md) ------------------------------------------------------

log = logging.getLogger("enginex.db")
# aiosqlite logs every statement with its parameters at DEBUG; parameters can hold secrets
# (an invitation or reset link in an outbox row). Its debug lines never reach the handlers,
# whatever level an operator gives the root logger (tests/test_leaks.py).
logging.getLogger("aiosqlite").setLevel(logging.INFO)


class ConnectionBudgetExceeded(UnsafeConfigurationError):
    """This process (or ``enginex serve --workers N`` with its run worker) alone could open
    more PostgreSQL connections than the server accepts."""


async def check_connection_budget(db: Database, settings: Settings, *, processes: int = 1,
                                  what: str = "this process") -> int | None:
    """Compare what ``processes`` processes with ``db``'s pool may open with the server's
    ``max_connections`` less ``superuser_reserved_connections``. Returns that limit (None on
    SQLite, where there is nothing to check, and through PgBouncer, whose own limits apply).

    Raises ConnectionBudgetExceeded, with the numbers and how to fix it, when these processes
    alone exceed the limit: they would fail with "too many clients" under load. Logs a warning
    when ``ENGINEX_DB_MAX_CLIENT_CONNECTIONS`` (every EngineX process together) exceeds it.
    """
    if not settings.is_postgres:
        return None
    if settings.db_pgbouncer:
        log.info("database through PgBouncer: the connection budget is PgBouncer's "
                 "(default_pool_size, max_db_connections), not checked here")
        return None
    async with db.engine.connect() as conn:
        max_connections = int((await conn.exec_driver_sql("SHOW max_connections")).scalar_one())
        reserved = int((await conn.exec_driver_sql(
            "SHOW superuser_reserved_connections")).scalar_one())
    limit = max_connections - reserved
    needed = processes * db.pool_capacity
    if needed > limit:
        raise ConnectionBudgetExceeded(
            f"{what} may open {needed} PostgreSQL connections ({processes} x "
            f"{db.pool_capacity}, pool size + max overflow) but the server accepts {limit} "
            f"(max_connections {max_connections} less "
            f"{reserved} reserved for superusers). Lower ENGINEX_DB_POOL_SIZE / "
            "ENGINEX_DB_MAX_OVERFLOW, run fewer processes, raise max_connections, or put "
            "PgBouncer in front (docs/SCALING.md).")
    expected = settings.db_max_client_connections
    if expected > limit:
        log.warning("ENGINEX_DB_MAX_CLIENT_CONNECTIONS is %d but PostgreSQL accepts %d "
                    "(max_connections %d less %d reserved): under load some processes will "
                    "be refused connections. See docs/SCALING.md.", expected, limit,
                    max_connections, reserved)
    elif expected and needed > expected:
        log.warning("%s may open %d connections, more than ENGINEX_DB_MAX_CLIENT_CONNECTIONS "
                    "(%d) allows for all processes together. See docs/SCALING.md.", what,
                    needed, expected)
    return limit
