"""Database engine, sessions, the model base, and the tenant context of a transaction.

Two guards live here because every query passes through them:

* ORM guard: a statement on a tenant-owned model raises ``TenantContextMissing`` unless the
  session carries a tenant (``set_tenant``); when it does, a tenant filter is added to the SQL
  of every such statement, and every inserted row gets (and must keep) that tenant_id.
* PostgreSQL GUC: ``set_tenant`` runs ``set_config('app.tenant_id', ..., true)`` (transaction
  local), and it is re-applied at the start of every later transaction of the same session, so
  row-level security sees the tenant and a pooled connection never carries one.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    ForeignKey,
    MetaData,
    Uuid,
    event,
    text,
)
from sqlalchemy.engine import Dialect
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
from sqlalchemy.orm.session import ORMExecuteState
from sqlalchemy.types import TypeDecorator

from enginex.config import Settings

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
    session.info[TENANT_KEY] = tenant_id
    await session.run_sync(_apply_guc, tenant_id)


@event.listens_for(Session, "after_begin")
def _reapply_tenant(session: Session, transaction: SessionTransaction, connection: Any) -> None:
    tenant_id = session.info.get(TENANT_KEY)
    if tenant_id is not None and connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT set_config('app.tenant_id', :tenant, true)"), {"tenant": str(tenant_id)}
        )


@event.listens_for(Session, "do_orm_execute")
def _scope_tenant_queries(state: ORMExecuteState) -> None:
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if not any(is_tenant_owned(m.class_) for m in state.all_mappers):
        return
    tenant_id = state.session.info.get(TENANT_KEY)
    if tenant_id is None:
        raise TenantContextMissing(
            "query on a tenant-owned model without a tenant context; use a scoped repository"
        )
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
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    # One writer at a time, taken at BEGIN: avoids SQLITE_BUSY on read->write upgrades.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine_for(url: str, *, pool_size: int = 10) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


class Database:
    """The process's engine and session factory."""

    def __init__(self, settings: Settings) -> None:
        if not settings.is_postgres:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine_for(settings.resolved_database_url)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()
