"""``enginex outbox list``: the mail waiting in the outbox (and what was sent or failed).

Without ENGINEX_SMTP_URL this is how an operator reads password-reset and invitation links
to pass them on. Reads the database directly (ENGINEX_DATABASE_URL), like ``enginex worker``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the ORM is imported by the command: `enginex --help` must not load it
    from enginex.config import Settings

STATUSES = ("queued", "sent", "failed", "all")
KINDS = ("password_reset", "sso_sign_in_notice", "invitation")  # mail/models.py MailKind


def add_outbox_commands(subparsers: Any) -> None:
    outbox = subparsers.add_parser("outbox", help="mail waiting to be sent (reset links ...)")
    actions = outbox.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="print the outbox, newest first")
    listing.add_argument("--status", choices=STATUSES, default="queued",
                         help="which messages (default: queued, i.e. not sent yet)")
    listing.add_argument("--kind", choices=KINDS, help="only this kind of mail")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=cmd_outbox_list)


async def _list(settings: Settings, status: str, kind: str | None) -> list[dict[str, str]]:
    from enginex.db import Database
    from enginex.mail.models import MailKind, MailStatus
    from enginex.mail.service import list_outbox

    db = Database(settings)
    try:
        async with db.sessions() as session:
            rows = await list_outbox(session,
                                     status=None if status == "all" else MailStatus(status),
                                     kind=MailKind(kind) if kind else None)
            return [{"id": str(m.id), "kind": m.kind, "status": m.status, "to": m.recipient,
                     "subject": m.subject, "created_at": m.created_at.isoformat(),
                     "attempts": str(m.attempts), "last_error": m.last_error or "",
                     "body": m.body} for m in rows]
    finally:
        await db.dispose()


def cmd_outbox_list(args: argparse.Namespace, settings: Settings) -> None:
    rows = asyncio.run(_list(settings, args.status, args.kind))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    if not rows:
        print(f"no {'' if args.status == 'all' else args.status + ' '}messages in the outbox")
        return
    for row in rows:
        print(f"--- {row['created_at']}  {row['status']}  {row['kind']}  to {row['to']}")
        print(f"Subject: {row['subject']}")
        if row["last_error"]:
            print(f"Last error ({row['attempts']} attempts): {row['last_error']}")
        if row["body"]:
            print(row["body"].rstrip())
        print()
