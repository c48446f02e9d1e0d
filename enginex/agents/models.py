"""The per-organization agent catalog: agents and their immutable deployed versions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKeyConstraint, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base, TenantOwned
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow


class Agent(TenantOwned, Base):
    __tablename__ = "agents"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    key: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(20_000), default="")
    latest_version_id: Mapped[uuid.UUID | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("uq_agents_tenant_id_key", "tenant_id", "key", unique=True),
                      Index("ix_agents_tenant_id_created_at_id", "tenant_id", "created_at", "id"))


class AgentVersion(TenantOwned, Base):
    """One deploy. Never updated except ``deprecated_at``."""

    __tablename__ = "agent_versions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    agent_id: Mapped[uuid.UUID]
    version: Mapped[str] = mapped_column(String(64))
    content_hash: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    files: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    size_bytes: Mapped[int] = mapped_column(default=0)
    deployed_by: Mapped[uuid.UUID | None]
    deployed_at: Mapped[datetime] = mapped_column(default=utcnow)
    deprecated_at: Mapped[datetime | None]

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "agent_id"], ["agents.tenant_id", "agents.id"],
                             ondelete="CASCADE"),
        Index("uq_agent_versions_tenant_id_agent_id_version", "tenant_id", "agent_id", "version",
              unique=True),
    )
