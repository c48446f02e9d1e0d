"""The mail outbox (enginex/mail/) on SQLite and PostgreSQL, with a real SMTP server.

Threat model and contracts: a committed message is never lost -- a sender killed after
claiming it sends it again once the claim's lease ends (at least once); a failing SMTP
server means retries with backoff, then ``failed``; a sent message's text (it may hold a
link) is erased. Without ENGINEX_SMTP_URL mail waits for the platform admin: the outbox
API and page, and ``enginex outbox list``, show the links.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import select, update

from enginex.db import Database
from enginex.kit.time import utcnow
from enginex.mail import repository as mail_repo
from enginex.mail.models import MailKind, MailStatus, OutboxMessage
from enginex.mail.sender import MailSender
from enginex.mail.service import MAX_ATTEMPTS, enqueue, retry_delay
from enginex.mail.smtp import SmtpConfig, SmtpUrlError
from tests.accounts_support import INVITE_LINK, SmtpServer, body_of, enginex
from tests.conftest import separate_deployment
from tests.factories import (
    Actor,
    Server,
    add_member,
    free_port,
    make_org,
    make_platform_admin,
    run_db,
    wait_for,
)

T = TypeVar("T")


@pytest.fixture(scope="module")
def sending(backend: str, smtp: SmtpServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A deployment whose embedded worker sends over ``smtp``."""
    with separate_deployment(backend, tmp_path_factory.mktemp(f"smtp-{backend}"),
                             smtp_url=smtp.url) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def holding(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A deployment without SMTP: its mail waits in the outbox."""
    with separate_deployment(backend, tmp_path_factory.mktemp(f"nosmtp-{backend}")
                             ) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def holding_admin(holding: Server) -> Actor:
    return make_platform_admin(holding)


def with_database(server: Server, work: Callable[[Database], Awaitable[T]]) -> T:
    """``await work(db)`` on the server's database, in a thread with its own event loop."""
    async def run() -> T:
        db = Database(server.settings)
        try:
            return await work(db)
        finally:
            await db.dispose()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(run())).result()


def queue(server: Server, recipient: str, subject: str) -> uuid.UUID:
    async def work(session: Any) -> uuid.UUID:
        message = enqueue(session, kind=MailKind.INVITATION, recipient=recipient,
                          subject=subject, body=f"Hello {recipient}\nhttp://example.test/x\n")
        await session.flush()
        return message.id

    return run_db(server, work)


def row(server: Server, message_id: uuid.UUID) -> OutboxMessage:
    async def work(session: Any) -> OutboxMessage:
        found = (await session.execute(select(OutboxMessage)
                                       .where(OutboxMessage.id == message_id))).scalar_one()
        session.expunge(found)
        return found

    return run_db(server, work)


def test_a_message_claimed_by_a_killed_sender_is_sent_after_its_lease(
        sending: Server, smtp: SmtpServer) -> None:
    recipient = f"crash-{uuid.uuid4().hex[:8]}@example.org"
    subject = "claimed then abandoned"

    async def claim_and_die(session: Any) -> list[uuid.UUID]:
        # What a sender does before it talks to SMTP; then the process is killed.
        message = enqueue(session, kind=MailKind.INVITATION, recipient=recipient,
                          subject=subject, body="text with a link\n")
        await session.flush()
        await session.execute(update(OutboxMessage).where(OutboxMessage.id != message.id)
                              .where(OutboxMessage.status == MailStatus.QUEUED)
                              .values(next_attempt_at=utcnow() + timedelta(minutes=5)))
        now = utcnow()
        claimed = await mail_repo.claim_due(session, now=now,
                                            lease_until=now + timedelta(seconds=3), limit=50)
        return [m.id for m in claimed]

    claimed = run_db(sending, claim_and_die)
    assert len(claimed) == 1
    assert row(sending, claimed[0]).attempts == 1
    received = smtp.inbox.wait_for(recipient, subject)
    assert len(received) == 1 and body_of(received[0]) == "text with a link\n"
    sent = wait_for(lambda: (r := row(sending, claimed[0])).status == MailStatus.SENT and r,
                    what="the sent mark")
    assert sent.attempts == 2 and sent.body == "" and sent.sent_at is not None


def test_an_unreachable_smtp_server_is_retried_with_backoff_then_given_up(
        holding: Server, smtp: SmtpServer) -> None:
    recipient = f"retry-{uuid.uuid4().hex[:8]}@example.org"
    message_id = queue(holding, recipient, "retried")

    async def only_mine(session: Any) -> None:  # other tests' mail waits in this outbox too
        await session.execute(update(OutboxMessage).where(OutboxMessage.id != message_id)
                              .values(next_attempt_at=utcnow() + timedelta(days=1)))

    run_db(holding, only_mine)
    down = SmtpConfig.from_url(f"smtp://127.0.0.1:{free_port()}")

    def send_with(config: SmtpConfig) -> int:
        async def work(db: Database) -> int:
            return await MailSender(db.sessions, config, mail_from="EngineX <x@test>"
                                    ).send_due()
        return with_database(holding, work)

    assert send_with(down) == 0
    failed = row(holding, message_id)
    assert failed.status == MailStatus.QUEUED and failed.attempts == 1
    assert failed.last_error and "ConnectionRefusedError" in failed.last_error
    assert failed.next_attempt_at > utcnow() + retry_delay(1) - timedelta(seconds=10)
    assert send_with(down) == 0  # not due yet: no second attempt
    assert row(holding, message_id).attempts == 1

    def make_due(attempts: int | None = None) -> None:
        async def work(session: Any) -> None:
            values: dict[str, Any] = {"next_attempt_at": utcnow()}
            if attempts is not None:
                values["attempts"] = attempts
            await session.execute(update(OutboxMessage)
                                  .where(OutboxMessage.id == message_id).values(**values))
        run_db(holding, work)

    make_due()
    assert send_with(SmtpConfig.from_url(smtp.url)) == 1
    assert smtp.inbox.wait_for(recipient, "retried")
    sent = row(holding, message_id)
    assert sent.status == MailStatus.SENT and sent.attempts == 2 and sent.body == ""

    given_up = queue(holding, recipient, "given up")
    message_id = given_up
    run_db(holding, only_mine)
    make_due(MAX_ATTEMPTS - 1)
    assert send_with(down) == 0
    assert row(holding, given_up).status == MailStatus.FAILED


def test_backoff_doubles_and_is_capped() -> None:
    delays = [retry_delay(n) for n in range(1, MAX_ATTEMPTS + 1)]
    assert delays[0] == timedelta(seconds=30) and delays[1] == timedelta(minutes=1)
    assert all(d is not None and d <= timedelta(hours=1) for d in delays[:-1])
    assert delays[-1] is None


@pytest.mark.parametrize("url", ["http://mail.example.com", "smtp://", "smtp://h:99999",
                                 "smtp://h?starttls=maybe"])
def test_a_bad_smtp_url_is_refused_with_how_to_fix_it(url: str) -> None:
    with pytest.raises(SmtpUrlError, match="ENGINEX_SMTP_URL"):
        SmtpConfig.from_url(url)


def test_smtp_url_parts() -> None:
    config = SmtpConfig.from_url("smtps://mailer%40example.com:p%3Ass@mx.example.com")
    assert (config.host, config.port, config.implicit_tls) == ("mx.example.com", 465, True)
    assert (config.username, config.password) == ("mailer@example.com", "p:ss")
    plain = SmtpConfig.from_url("smtp://mx.example.com:587?starttls=require")
    assert plain.port == 587 and plain.require_starttls and plain.username is None


def test_an_invitation_is_mailed_with_its_link(sending: Server, smtp: SmtpServer) -> None:
    org = make_org(sending, make_platform_admin(sending), "inv", roles=("admin",),
                   with_keys=False)
    invitee = f"invitee-{uuid.uuid4().hex[:8]}@example.org"
    created = org.admin.client.post(f"/api/v1/orgs/{org.slug}/invitations",
                                    json={"email": invitee, "role": "viewer"})
    assert created.status_code == 201, created.text
    mail = smtp.inbox.wait_for(invitee, f"Invitation to {org.name} on EngineX")[0]
    found = INVITE_LINK.search(body_of(mail))
    assert found and found.group(0) == created.json()["accept_url"]


def test_without_smtp_the_platform_admin_reads_the_links(holding: Server,
                                                         holding_admin: Actor) -> None:
    org = make_org(holding, holding_admin, "hold", roles=("admin",), with_keys=False)
    member = add_member(holding, org, "viewer")
    asked = member.client.post("/api/v1/auth/password-reset", json={"email": member.email})
    assert asked.status_code == 202

    def reset_mail() -> dict[str, Any] | None:
        listed = holding_admin.client.get("/api/v1/admin/outbox", params={"status": "queued"})
        assert listed.status_code == 200, listed.text
        return next((m for m in listed.json() if m["recipient"] == member.email
                     and m["kind"] == "password_reset"), None)

    mail = wait_for(reset_mail, what="the reset mail in the outbox")
    assert "/password-reset/confirm#pwr_" in mail["body"] and mail["attempts"] == 0
    page = holding_admin.client.get("/admin/outbox")
    assert page.status_code == 200 and 'id="no-smtp"' in page.text
    assert member.email in page.text and "/password-reset/confirm#pwr_" in page.text

    printed = enginex(holding, "outbox", "list", "--kind", "password_reset")
    assert printed.returncode == 0, printed.stderr
    assert member.email in printed.stdout
    link = mail["body"].split("\n\n")[2].strip()
    assert link in printed.stdout
