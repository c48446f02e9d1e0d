"""``enginex user erase EMAIL --yes`` and ``enginex user personal-data EMAIL -o FILE``: a
platform operator erases an account everywhere, or writes its subject-access export.

The same service functions as the platform admin API (erasure/service.py, erasure/access.py);
the erasure is audited in each affected organization with actor ``cli``. Running ``erase``
again finishes an interrupted erasure (the account is then looked up through its erasure).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the ORM is imported by the command: `enginex --help` must not load it
    from enginex.config import Settings


def add_erasure_commands(actions: Any) -> None:
    erase = actions.add_parser("erase", help="erase a person everywhere (irreversible)")
    erase.add_argument("email")
    erase.add_argument("--yes", action="store_true",
                       help="confirm: the account and its personal data are deleted for good")
    erase.set_defaults(func=cmd_user_erase)
    access = actions.add_parser("personal-data",
                                help="write a person's subject-access export (ZIP)")
    access.add_argument("email")
    access.add_argument("-o", "--output", required=True, help="the ZIP file to write (0600)")
    access.set_defaults(func=cmd_user_personal_data)


async def _find(settings: Settings, email: str) -> Any:
    from sqlalchemy import func, select

    from enginex.auth.repository import get_user_by_email
    from enginex.cli import CliError
    from enginex.db import Database
    from enginex.erasure.models import ErasureStatus, UserErasure

    db = Database(settings)
    async with db.sessions() as session:
        user = await get_user_by_email(session, email)
        if user is not None:
            return db, user.id
        erasing = (await session.execute(select(UserErasure.user_id).where(
            UserErasure.status == ErasureStatus.ERASING,
            func.lower(UserErasure.email) == email.strip().lower()))).scalar_one_or_none()
    if erasing is not None:
        return db, erasing
    await db.dispose()
    raise CliError(f"no account with email '{email}'")


async def _erase(settings: Settings, email: str) -> Any:
    from enginex.erasure.service import Actor, erase_user
    from enginex.reports.storage import ArtifactStorage

    db, user_id = await _find(settings, email)
    try:
        return await erase_user(db.sessions, user_id, actor=Actor("cli"), confirm_email=None,
                                storage=ArtifactStorage(settings.resolved_storage_dir))
    finally:
        await db.dispose()


def cmd_user_erase(args: argparse.Namespace, settings: Settings) -> None:
    from enginex.cli import CliError

    if not args.yes:
        raise CliError("erasure deletes the account and its personal data for good: add --yes")
    result = asyncio.run(_erase(settings, args.email))
    print(f"{args.email} erased: account {result.user_id} deleted, "
          f"{result.orgs_affected} organization(s) affected")


async def _personal_data(settings: Settings, email: str, output: str) -> None:
    from enginex.erasure.access import build_subject_access

    db, user_id = await _find(settings, email)
    try:
        path = await build_subject_access(db.sessions, user_id)
    finally:
        await db.dispose()
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, path.open("rb") as source:
        shutil.copyfileobj(source, out)
    path.unlink()


def cmd_user_personal_data(args: argparse.Namespace, settings: Settings) -> None:
    asyncio.run(_personal_data(settings, args.email, args.output))
    print(f"wrote the subject-access export of {args.email} to {args.output}")
