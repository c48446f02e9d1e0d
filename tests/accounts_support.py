"""Shared pieces of the account-lifecycle tests: a real SMTP server (aiosmtpd) on 127.0.0.1
and the ``enginex`` command run against a test deployment's database."""

from __future__ import annotations

import email
import email.policy
import os
import re
import subprocess
import sys
import threading
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from tests.factories import Server, free_port, wait_for

ENGINEX = Path(sys.executable).with_name("enginex")
RESET_LINK = re.compile(r"(http://\S+/password-reset/confirm)#(pwr_\S+)")
INVITE_LINK = re.compile(r"(http://\S+/invitations/accept)#(inv_\S+)")


class Inbox:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.lock:
            self.messages.append(parsed)
        return "250 Message accepted for delivery"

    def to(self, recipient: str, subject: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages
                    if m["To"] == recipient and m["Subject"] == subject]

    def wait_for(self, recipient: str, subject: str, count: int = 1) -> list[EmailMessage]:
        return wait_for(lambda: (found := self.to(recipient, subject)) and len(found) >= count
                        and found, what=f"{count} mail(s) '{subject}' to {recipient}")


class SmtpServer:
    """aiosmtpd on a free port of 127.0.0.1, started and stopped by the tests."""

    def __init__(self) -> None:
        self.inbox = Inbox()
        self.port = free_port()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


def body_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def enginex(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``enginex`` command on ``server``'s database (the app's role on PostgreSQL)."""
    settings = server.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEX_")}
    env.update(ENGINEX_DATA_DIR=str(settings.data_dir), ENGINEX_MASTER_KEY=settings.master_key,
               ENGINEX_ARGON2_TEST_PROFILE="true")
    if settings.database_url:
        env["ENGINEX_DATABASE_URL"] = settings.database_url
    return subprocess.run([str(ENGINEX), *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
