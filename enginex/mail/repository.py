"""Queries on the outbox (a global table: no tenant filter applies)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.mail.models import MailStatus, OutboxMessage


def add(db: AsyncSession, message: OutboxMessage) -> OutboxMessage:
    db.add(message)
    return message


async def claim_due(db: AsyncSession, *, now: datetime, lease_until: datetime,
                    limit: int) -> list[OutboxMessage]:
    """Up to ``limit`` queued messages due at ``now``, oldest first, each moved to
    ``lease_until`` and its attempt counted. Row-locked with SKIP LOCKED on PostgreSQL, so
    concurrent senders never claim the same message; SQLite's write transaction serialises
    them. The caller commits at once, before sending."""
    stmt = (select(OutboxMessage)
            .where(OutboxMessage.status == MailStatus.QUEUED,
                   OutboxMessage.next_attempt_at <= now)
            .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id).limit(limit)
            .with_for_update(skip_locked=True))
    claimed = list((await db.execute(stmt)).scalars())
    for message in claimed:
        message.attempts += 1
        message.next_attempt_at = lease_until
    await db.flush()
    return claimed


async def mark_sent(db: AsyncSession, message_id: uuid.UUID, *, at: datetime) -> None:
    """Sent: the body (which may hold a link) is erased."""
    await db.execute(update(OutboxMessage).where(OutboxMessage.id == message_id)
                     .values(status=MailStatus.SENT, sent_at=at, body="", last_error=None))


async def mark_attempt_failed(db: AsyncSession, message_id: uuid.UUID, *, error: str,
                              retry_at: datetime | None) -> None:
    """A failed attempt: retried at ``retry_at``, or given up (``failed``) when it is None."""
    values: dict[str, object] = {"last_error": error[:500]}
    if retry_at is None:
        values["status"] = MailStatus.FAILED
    else:
        values["next_attempt_at"] = retry_at
    await db.execute(update(OutboxMessage).where(OutboxMessage.id == message_id).values(**values))


async def list_messages(db: AsyncSession, *, status: MailStatus | None = None,
                        kind: str | None = None, limit: int = 200) -> list[OutboxMessage]:
    """The newest messages first, optionally of one status and kind."""
    stmt = select(OutboxMessage).order_by(OutboxMessage.created_at.desc(),
                                          OutboxMessage.id).limit(limit)
    if status is not None:
        stmt = stmt.where(OutboxMessage.status == status)
    if kind is not None:
        stmt = stmt.where(OutboxMessage.kind == kind)
    return list((await db.execute(stmt)).scalars())


async def delete_created_before(db: AsyncSession, before: datetime) -> int:
    result = await db.execute(delete(OutboxMessage).where(OutboxMessage.created_at < before))
    return int(getattr(result, "rowcount", 0) or 0)
