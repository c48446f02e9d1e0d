"""SMTP delivery with the standard library's ``smtplib``, run in a worker thread.

Why smtplib and not aiosmtplib: transactional mail is a few messages a minute, sent one at a
time by one background task per worker, so a blocking client in ``asyncio.to_thread`` costs
nothing measurable, while adding no runtime dependency and using the client every Python
ships and tests. The event loop never waits on the SMTP server.

``ENGINEX_SMTP_URL``:

* ``smtp://host[:port]`` (port 25 by default): STARTTLS when the server offers it;
  ``?starttls=require`` refuses to send without it.
* ``smtps://host[:port]`` (port 465 by default): TLS from the first byte.
* ``user:password@`` before the host: SMTP AUTH (percent-encode special characters).
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from urllib.parse import parse_qs, unquote, urlsplit

TIMEOUT_SECONDS = 30.0


class SmtpUrlError(ValueError):
    """``ENGINEX_SMTP_URL`` cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    implicit_tls: bool
    require_starttls: bool
    username: str | None
    password: str | None

    @classmethod
    def from_url(cls, url: str) -> SmtpConfig:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps"):
            raise SmtpUrlError("ENGINEX_SMTP_URL must start with smtp:// or smtps://, e.g. "
                               "smtp://mail.example.com:587 or smtps://user:pass@host:465.")
        try:
            port = parts.port
        except ValueError as exc:
            raise SmtpUrlError("ENGINEX_SMTP_URL: the port is not a number from 1 to 65535."
                               ) from exc
        if not parts.hostname:
            raise SmtpUrlError("ENGINEX_SMTP_URL names no host, e.g. smtp://mail.example.com.")
        query = parse_qs(parts.query)
        starttls = query.get("starttls", ["auto"])[-1]
        if starttls not in ("auto", "require"):
            raise SmtpUrlError("ENGINEX_SMTP_URL: starttls must be 'auto' or 'require'.")
        implicit = parts.scheme == "smtps"
        return cls(host=parts.hostname, port=port or (465 if implicit else 25),
                   implicit_tls=implicit, require_starttls=starttls == "require",
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None)


def build_message(*, sender: str, recipient: str, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    domain = sender.rpartition("@")[2].strip(" >") or "enginex.invalid"
    message["Message-ID"] = make_msgid(domain=domain)
    message.set_content(body)
    return message


def _send_blocking(config: SmtpConfig, message: EmailMessage) -> None:
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if config.implicit_tls:
        client = smtplib.SMTP_SSL(config.host, config.port, timeout=TIMEOUT_SECONDS,
                                  context=context)
    else:
        client = smtplib.SMTP(config.host, config.port, timeout=TIMEOUT_SECONDS)
    with client:
        client.ehlo()
        if not config.implicit_tls:
            if client.has_extn("starttls"):
                client.starttls(context=context)
                client.ehlo()
            elif config.require_starttls:
                raise smtplib.SMTPException("the server does not offer STARTTLS "
                                            "(ENGINEX_SMTP_URL has starttls=require)")
        if config.username is not None:
            client.login(config.username, config.password or "")
        client.send_message(message)


async def send(config: SmtpConfig, message: EmailMessage) -> None:
    """Deliver ``message`` to the SMTP server (raises ``OSError`` / ``smtplib.SMTPException``
    when it is refused or the server is unreachable)."""
    await asyncio.to_thread(_send_blocking, config, message)
