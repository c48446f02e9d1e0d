"""The mail outbox: one row per message, written in the transaction that decides to send it.

Platform-level (not tenant data): a message belongs to a person, not to an organization, and
holds only what the mail needs -- the recipient's address, a subject and a plain-text body.
The body is erased when the message is sent, and every row is deleted
``mail.service.RETENTION`` after it was created (docs/ACCOUNTS.md, "Outbox").
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow


class MailStatus(StrEnum):
    QUEUED = "queued"  # waiting, or being sent (claimed until next_attempt_at)
    SENT = "sent"
    FAILED = "failed"  # gave up after MAX_ATTEMPTS


class MailKind(StrEnum):
    PASSWORD_RESET = "password_reset"  # noqa: S105 - a kind of mail, no secret
    INVITATION = "invitation"
    SSO_SIGN_IN_NOTICE = "sso_sign_in_notice"
    USAGE_WARNING = "usage_warning"  # an organization reached its soft threshold (usage/)


class OutboxMessage(Base):
    """One email. ``next_attempt_at`` is both the retry time and the claim's lease: a sender
    that claims the message moves it into the future, so a sender killed mid-send leaves a
    message that becomes due again (sent at least once, never lost)."""

    __tablename__ = "outbox"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(40))
    recipient: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default=MailStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_outbox_created_at", "created_at"),
    )
