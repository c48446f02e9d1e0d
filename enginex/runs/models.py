"""Sessions (runs), their append-only events and their checkpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKeyConstraint, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base, TenantOwned
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow

ACTIVE = ("queued", "running", "waiting_approval")
FINISHED = ("succeeded", "failed", "cancelled")


class Run(TenantOwned, Base):
    """A session. ``step`` counts committed steps; a worker may only commit step ``step + 1``
    while it holds the lease, so a step's result is applied at most once."""

    __tablename__ = "runs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    agent_id: Mapped[uuid.UUID]
    agent_version_id: Mapped[uuid.UUID]
    agent_key: Mapped[str] = mapped_column(String(64))
    agent_version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    next_node: Mapped[str | None] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(default=0)
    last_event_seq: Mapped[int] = mapped_column(default=0)
    created_by: Mapped[uuid.UUID | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(String(2000))
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    parent_run_id: Mapped[uuid.UUID | None]
    forked_from_step: Mapped[int | None]
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "agent_version_id"],
                             ["agent_versions.tenant_id", "agent_versions.id"]),
        Index("ix_runs_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
        Index("ix_runs_tenant_id_status_queued_at", "tenant_id", "status", "queued_at"),
        Index("ix_runs_tenant_id_agent_key_created_at_id", "tenant_id", "agent_key", "created_at",
              "id"),
        # Queued and running runs only: the claim's skip scan over active tenants (0013).
        Index("ix_runs_active_tenant_id", "tenant_id",
              postgresql_where=text("status IN ('queued', 'running')"),
              sqlite_where=text("status IN ('queued', 'running')")),
    )


class RunEvent(TenantOwned, Base):
    """Append-only: rows are inserted, never updated or deleted (except with the tenant)."""

    __tablename__ = "run_events"

    run_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(40))
    node_id: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "run_id"], ["runs.tenant_id", "runs.id"],
                             ondelete="CASCADE"),
    )


class Checkpoint(TenantOwned, Base):
    """The state after committed step ``step`` and the node to run next."""

    __tablename__ = "checkpoints"

    run_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    step: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    node_id: Mapped[str | None] = mapped_column(String(64))
    next_node: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20))
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    path: Mapped[list[str]] = mapped_column(JSON, default=list)

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "run_id"], ["runs.tenant_id", "runs.id"],
                             ondelete="CASCADE"),
    )


class QueueState(TenantOwned, Base):
    """Per-tenant scheduler bookkeeping for fair claiming across tenants."""

    __tablename__ = "run_queue_state"

    last_claimed_at: Mapped[datetime | None]


# How often a worker refreshes its row in ``workers`` (default of the setting
# ``worker_heartbeat_seconds``); it counts as alive while its last beat is younger than three of
# these, and a run leased by a worker that is not alive is claimed again at once.
WORKER_HEARTBEAT_SECONDS = 2.0


class WorkerPresence(Base):
    """A worker process's heartbeat: global platform data (no tenant, no tenant content).

    Written only by the worker itself (``runs/worker.py``); read by the platform admin's worker
    health panel. A worker that stops cleanly deletes its row; a crashed one stays, no longer
    alive, until pruned a day later.
    """

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    started_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    slots: Mapped[int]
    steps_committed: Mapped[int] = mapped_column(default=0)

    __table_args__ = (Index("ix_workers_last_seen_at", "last_seen_at"),)
