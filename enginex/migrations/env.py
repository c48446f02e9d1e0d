"""Alembic environment: runs with a synchronous engine on the migration (owner) URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

import enginex.models  # noqa: F401 - registers every model on Base.metadata
from enginex.db import Base


def sync_url(url: str) -> str:
    return url.replace("sqlite+aiosqlite", "sqlite")


def run_migrations_online() -> None:
    config = context.config
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    engine = create_engine(sync_url(config.get_main_option("sqlalchemy.url") or ""),
                           poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection: object) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
