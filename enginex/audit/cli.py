"""``enginex audit verify --org SLUG``: recompute an organization's audit chain.

Prints "chain intact: N entries" (exit 0) or the first broken link (exit 1). Connects with
ENGINEX_DATABASE_URL (the app role) and reads one tenant in one transaction, so row-level
security holds for it too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the ORM is imported by the command: `enginex --help` must not load it
    from enginex.config import Settings


def add_audit_commands(subparsers: Any) -> None:
    audit = subparsers.add_parser("audit", help="the tamper-evident audit log")
    actions = audit.add_subparsers(dest="action", required=True)
    verify = actions.add_parser("verify", help="check an organization's audit hash chain")
    verify.add_argument("--org", required=True, metavar="SLUG")
    verify.set_defaults(func=cmd_audit_verify)


async def _verify(settings: Settings, slug: str) -> tuple[bool, str]:
    from enginex.audit.anchor import anchor_keys
    from enginex.audit.service import verify_chain
    from enginex.db import Database, set_tenant
    from enginex.kit.crypto import load_master_key
    from enginex.orgs import repository as org_repo
    from enginex.tenancy.context import system_context

    db = Database(settings)
    try:
        async with db.sessions() as session, session.begin():
            org = await org_repo.get_org_by_slug(session, slug)
            if org is None:
                from enginex.cli import CliError

                raise CliError(f"no organization with slug '{slug}'")
            await set_tenant(session, org.id)
            verdict = await verify_chain(session, system_context(org.id, org.slug),
                                         anchor_keys=anchor_keys(load_master_key(settings)))
            return verdict.intact, verdict.describe()
    finally:
        await db.dispose()


def cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> None:
    intact, message = asyncio.run(_verify(settings, args.org))
    print(message)
    if not intact:
        sys.exit(1)
