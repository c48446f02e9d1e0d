"""Audit entries: who did what to which object, in one organization, as a hash chain.

Each organization's entries form one chain: ``seq`` counts 1, 2, 3 ... without gaps, and
``hash`` = SHA-256(``prev_hash`` || canonical JSON of the entry) (enginex/audit/chain.py).
``audit_heads`` holds each organization's last (seq, hash); appending locks that row, so
appends in one organization are serialised and the chain stays contiguous.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base, TenantOwned
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow


class AuditEntry(TenantOwned, Base):
    __tablename__ = "audit_entries"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    seq: Mapped[int]
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_kind: Mapped[str] = mapped_column(String(20))
    actor_id: Mapped[uuid.UUID | None]
    action: Mapped[str] = mapped_column(String(60))
    target_kind: Mapped[str] = mapped_column(String(40))
    target_id: Mapped[str] = mapped_column(String(80))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_entries_tenant_id_at", "tenant_id", "at"),
        Index("ix_audit_entries_tenant_id_seq", "tenant_id", "seq", unique=True),
    )


class AuditHead(TenantOwned, Base):
    """The end of one organization's chain: the row an append locks."""

    __tablename__ = "audit_heads"

    last_seq: Mapped[int]
    last_hash: Mapped[str] = mapped_column(String(64))


class AuditAnchor(TenantOwned, Base):
    """Where an organization's chain starts after retention deleted its oldest entries: the
    last deleted entry's seq and hash, signed (HMAC of a key derived from the master key), so
    verification starts from it (enginex/audit/anchor.py)."""

    __tablename__ = "audit_anchors"

    seq: Mapped[int]
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]
    signature: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
