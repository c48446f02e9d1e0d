"""Queueing mail, and the texts EngineX sends.

Contracts:
* ``enqueue`` adds the message in the caller's transaction: it is sent only if that
  transaction commits, and it is never lost once committed (the outbox pattern).
* Delivery is at least once: a sender killed between the SMTP server's acceptance and the
  ``sent`` mark sends the message again after its lease (``sender.CLAIM_LEASE``).
* Without ``ENGINEX_SMTP_URL`` messages stay ``queued``: the platform admin reads them on
  ``/admin/outbox`` and ``enginex outbox list`` prints them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from enginex.kit.time import utcnow
from enginex.mail import repository as repo
from enginex.mail.models import MailKind, MailStatus, OutboxMessage

MAX_ATTEMPTS = 8
# Retry after 30 s, 1, 2, 4 ... minutes, at most an hour apart (about 2 hours in all).
FIRST_RETRY = timedelta(seconds=30)
MAX_RETRY = timedelta(hours=1)
RETENTION = timedelta(days=7)


def enqueue(db: AsyncSession, *, kind: MailKind, recipient: str, subject: str,
            body: str) -> OutboxMessage:
    """Queue one plain-text message in the caller's transaction (flushed with it)."""
    return repo.add(db, OutboxMessage(kind=str(kind), recipient=recipient.strip(),
                                      subject=subject[:200], body=body,
                                      status=MailStatus.QUEUED, next_attempt_at=utcnow()))


def retry_delay(attempts: int) -> timedelta | None:
    """How long to wait after the ``attempts``-th failed attempt; None: give up."""
    if attempts >= MAX_ATTEMPTS:
        return None
    return min(FIRST_RETRY * (2 ** (attempts - 1)), MAX_RETRY)


def next_retry(attempts: int, now: datetime) -> datetime | None:
    delay = retry_delay(attempts)
    return None if delay is None else now + delay


async def list_outbox(db: AsyncSession, *, status: MailStatus | None = None,
                      kind: MailKind | None = None) -> list[OutboxMessage]:
    return await repo.list_messages(db, status=status, kind=str(kind) if kind else None)


async def prune(db: AsyncSession, *, now: datetime) -> int:
    """Delete every message created more than ``RETENTION`` ago, whatever its status."""
    return await repo.delete_created_before(db, now - RETENTION)


# --- texts -----------------------------------------------------------------------------------


def queue_password_reset(db: AsyncSession, *, recipient: str, link: str,
                         ttl_minutes: int) -> OutboxMessage:
    body = (f"Someone (hopefully you) asked to reset the password of the EngineX account "
            f"{recipient}.\n\n"
            f"Choose a new password here (the link works once, for {ttl_minutes} minutes):\n\n"
            f"{link}\n\n"
            "Setting a new password signs this account out everywhere.\n"
            "If you did not ask for this, ignore this message: your password stays as it is.\n")
    return enqueue(db, kind=MailKind.PASSWORD_RESET, recipient=recipient,
                   subject="Reset your EngineX password", body=body)


def queue_sso_sign_in_notice(db: AsyncSession, *, recipient: str,
                             organizations: list[tuple[str, str]]) -> OutboxMessage:
    """Sent instead of a reset link when every organization of the account requires single
    sign-on: ``organizations`` are (name, SSO start URL) pairs."""
    lines = "\n".join(f"  {name}: {url}" for name, url in organizations)
    body = (f"Someone (hopefully you) asked to reset the password of the EngineX account "
            f"{recipient}.\n\n"
            "Your organizations sign you in with single sign-on, so a password would not "
            "open them and no reset link was made. Sign in through your identity provider:"
            f"\n\n{lines}\n\n"
            "Or type your email address on the EngineX sign-in page. If you cannot sign in "
            "there, ask an organization admin.\n")
    return enqueue(db, kind=MailKind.SSO_SIGN_IN_NOTICE, recipient=recipient,
                   subject="Your EngineX sign-in uses single sign-on", body=body)


def queue_invitation(db: AsyncSession, *, recipient: str, org_name: str, role: str,
                     link: str, expires: datetime) -> OutboxMessage:
    body = (f"You are invited to join the organization \"{org_name}\" on EngineX as "
            f"{role}.\n\n"
            f"Accept the invitation here (until {expires:%Y-%m-%d %H:%M} UTC):\n\n"
            f"{link}\n\n"
            "If you did not expect this invitation, ignore this message.\n")
    return enqueue(db, kind=MailKind.INVITATION, recipient=recipient,
                   subject=f"Invitation to {org_name} on EngineX"[:200], body=body)
