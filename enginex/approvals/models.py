"""Approval requests raised by ``approval`` nodes."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, ForeignKeyConstraint, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base, TenantOwned
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow


class Approval(TenantOwned, Base):
    __tablename__ = "approvals"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    run_id: Mapped[uuid.UUID]
    node_id: Mapped[str] = mapped_column(String(64))
    step: Mapped[int]
    question: Mapped[str] = mapped_column(String(20_000))
    options: Mapped[list[str]] = mapped_column(JSON)
    approver_role: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    decision: Mapped[str | None] = mapped_column(String(200))
    comment: Mapped[str | None] = mapped_column(String(4000))
    decided_by: Mapped[uuid.UUID | None]
    decided_at: Mapped[datetime | None]
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "run_id"], ["runs.tenant_id", "runs.id"],
                             ondelete="CASCADE"),
        Index("ix_approvals_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
        Index("ix_approvals_tenant_id_status_created_at_id", "tenant_id", "status", "created_at",
              "id"),
        Index("uq_approvals_tenant_id_run_id_step", "tenant_id", "run_id", "step", unique=True),
    )
