"""Erasure of a person (issue 15, item 4): one ``user_erasures`` row per request or erasure.

A platform table (not tenant-owned): it names the account only by its id, which after the
erasure is a pseudonym that nothing in the deployment maps back to a person. ``email`` is held
only while the erasure runs (it finds the person's pending invitations and outbox mail in every
organization) and is cleared in the transaction that deletes the account.

Statuses: ``requested`` (the person asked from their account page; a platform admin confirms
or declines), ``declined``, ``withdrawn`` (the person changed their mind), ``erasing`` (the
organizations are being worked through: ``last_org_id`` is the resume point), ``erased``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow


class ErasureStatus(StrEnum):
    REQUESTED = "requested"
    DECLINED = "declined"
    WITHDRAWN = "withdrawn"
    ERASING = "erasing"
    ERASED = "erased"


OPEN_STATUSES = (ErasureStatus.REQUESTED, ErasureStatus.ERASING)


class UserErasure(Base):
    __tablename__ = "user_erasures"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID]
    status: Mapped[str] = mapped_column(String(20))
    self_requested: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str] = mapped_column(String(500), default="")
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_by: Mapped[uuid.UUID | None]
    decided_by_kind: Mapped[str | None] = mapped_column(String(20))
    decided_at: Mapped[datetime | None]
    decline_reason: Mapped[str] = mapped_column(String(500), default="")
    email: Mapped[str | None] = mapped_column(String(254))
    last_org_id: Mapped[uuid.UUID | None]
    orgs_done: Mapped[int] = mapped_column(default=0)
    orgs_affected: Mapped[int] = mapped_column(default=0)
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_user_erasures_user_id", "user_id"),
        Index("ix_user_erasures_status_requested_at", "status", "requested_at"),
        # At most one open request or erasure per account.
        Index("uq_user_erasures_open_user_id", "user_id", unique=True,
              sqlite_where=text("status IN ('requested', 'erasing')"),
              postgresql_where=text("status IN ('requested', 'erasing')")),
    )
