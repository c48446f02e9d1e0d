"""``enginex user disable|enable EMAIL``: a platform operator disables an account everywhere.

The same service function as ``POST /api/v1/admin/users/{id}/disable`` (admin/service.py),
audited in each of the user's organizations with actor ``cli``.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the ORM is imported by the command: `enginex --help` must not load it
    from enginex.config import Settings


def add_user_commands(subparsers: Any) -> None:
    user = subparsers.add_parser("user", help="user accounts (platform level)")
    actions = user.add_subparsers(dest="action", required=True)
    for verb, text in (("disable", "sign the account out everywhere and refuse it"),
                       ("enable", "let a disabled account sign in again")):
        command = actions.add_parser(verb, help=text)
        command.add_argument("email")
        command.set_defaults(func=cmd_user_set_disabled, disabled=verb == "disable")
    from enginex.erasure.cli import add_erasure_commands
    add_erasure_commands(actions)


async def _set_disabled(settings: Settings, email: str, disabled: bool) -> bool:
    from enginex.admin.service import set_user_disabled
    from enginex.audit.service import record_in_user_orgs
    from enginex.auth.repository import get_user_by_email
    from enginex.cli import CliError
    from enginex.db import Database

    db = Database(settings)
    try:
        async with db.sessions() as session:
            found = await get_user_by_email(session, email)
            if found is None:
                raise CliError(f"no account with email '{email}'")
            user_id = found.id
            _, changed = await set_user_disabled(session, user_id, disabled, actor_id=None)
            await session.commit()
        if changed:
            await record_in_user_orgs(db.sessions, user_id,
                                      "user.disabled" if disabled else "user.enabled",
                                      actor_kind="cli", actor_id=None)
        return changed
    finally:
        await db.dispose()


def cmd_user_set_disabled(args: argparse.Namespace, settings: Settings) -> None:
    changed = asyncio.run(_set_disabled(settings, args.email, args.disabled))
    state = "disabled" if args.disabled else "enabled"
    print(f"{args.email} {'is now' if changed else 'was already'} {state}")
