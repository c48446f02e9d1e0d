"""The outbox sender every worker runs (embedded or ``enginex worker``).

Each round claims due messages in a short transaction (committed before any SMTP traffic),
sends them one by one, and records each outcome in a transaction of its own. A message whose
sender dies after the claim stays ``queued`` with ``next_attempt_at`` at the end of the claim
(``CLAIM_LEASE``, longer than the SMTP timeout), then is claimed and sent again: delivery is at
least once. Failed attempts are retried with exponential backoff (``service.retry_delay``)
and given up (``failed``) after ``service.MAX_ATTEMPTS``. Without an SMTP configuration the
sender only prunes old rows: messages wait for the platform admin (``/admin/outbox``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import smtplib
from datetime import timedelta
from email.message import EmailMessage

from enginex.db import SessionFactory
from enginex.kit.time import utcnow
from enginex.mail import repository as repo
from enginex.mail import service
from enginex.mail.models import OutboxMessage
from enginex.mail.smtp import TIMEOUT_SECONDS, SmtpConfig, build_message, send

log = logging.getLogger("enginex.mail")

CLAIM_LEASE = timedelta(seconds=4 * TIMEOUT_SECONDS)
BATCH = 20
PRUNE_EVERY = timedelta(hours=1)



class MailSender:
    def __init__(self, sessions: SessionFactory, smtp: SmtpConfig | None, *, mail_from: str,
                 poll_seconds: float = 2.0, lease: timedelta = CLAIM_LEASE) -> None:
        self.sessions = sessions
        self.smtp = smtp
        self.mail_from = mail_from
        self.poll_seconds = poll_seconds
        self.lease = lease
        self.sent = 0  # messages accepted by the SMTP server since start (for tests)

    async def run(self, stop: asyncio.Event) -> None:
        """Send and prune until ``stop`` is set; a failed round is logged and retried."""
        last_prune = None
        while not stop.is_set():
            try:
                now = utcnow()
                if last_prune is None or now - last_prune >= PRUNE_EVERY:
                    await self._prune()
                    last_prune = now
                if self.smtp is not None:
                    await self.send_due()
            except Exception:
                log.exception("outbox round failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.poll_seconds)

    async def _prune(self) -> None:
        async with self.sessions() as db:
            removed = await service.prune(db, now=utcnow())
            await db.commit()
        if removed:
            log.info("outbox: deleted %d messages older than %s", removed, service.RETENTION)

    async def send_due(self) -> int:
        """Claim the due messages and try each once; returns how many were sent."""
        assert self.smtp is not None
        now = utcnow()
        async with self.sessions() as db:
            claimed = await repo.claim_due(db, now=now, lease_until=now + self.lease,
                                           limit=BATCH)
            work = [(m.id, m.attempts, self._message(m)) for m in claimed]
            await db.commit()
        sent = 0
        for message_id, attempts, message in work:
            try:
                await send(self.smtp, message)
            except (OSError, smtplib.SMTPException) as exc:
                error = f"{type(exc).__name__}: {exc}"
                retry_at = service.next_retry(attempts, utcnow())
                log.warning("outbox: message %s attempt %d failed (%s)%s", message_id,
                            attempts, error, "" if retry_at else "; giving up")
                async with self.sessions() as db:
                    await repo.mark_attempt_failed(db, message_id, error=error,
                                                   retry_at=retry_at)
                    await db.commit()
                continue
            async with self.sessions() as db:
                await repo.mark_sent(db, message_id, at=utcnow())
                await db.commit()
            sent += 1
            self.sent += 1
        return sent

    def _message(self, row: OutboxMessage) -> EmailMessage:
        return build_message(sender=self.mail_from, recipient=row.recipient,
                             subject=row.subject, body=row.body)
