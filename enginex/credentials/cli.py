"""``enginex keys rotate-master | rotate-tenant | status`` and ``enginex tenant delete``.

They connect with ENGINEX_DATABASE_URL (the application role) and work one tenant per
transaction (``set_tenant``), so row-level security holds for them too; no SECURITY DEFINER
function is involved.

Testing hook: when ENGINEX_TEST_KILL_ROTATION_AT=N is set, a rotation kills its own process
with SIGKILL at its N-th checkpoint (see rotation.py), which is how the tests prove that a
rotation killed at any point loses nothing and completes when run again. Never set it in a
deployment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported by the commands: `enginex --help` must not load the ORM
    from enginex.config import Settings
    from enginex.credentials.rotation import Checkpoint, RotationReport
    from enginex.db import Database

KILL_AT_ENV = "ENGINEX_TEST_KILL_ROTATION_AT"

Command = Callable[[argparse.Namespace, "Settings"], None]


def _cli_error(message: str) -> Exception:
    """A problem the operator can fix: enginex/cli.py prints it without a traceback."""
    from enginex.cli import CliError

    return CliError(message)


def _kill_switch() -> Checkpoint:
    """The checkpoint function: counts checkpoints, SIGKILLs this process at the N-th one
    when ENGINEX_TEST_KILL_ROTATION_AT=N (tests only)."""
    limit = int(os.environ.get(KILL_AT_ENV, "0") or 0)
    seen = [0]

    def checkpoint(label: str) -> None:
        seen[0] += 1
        if limit and seen[0] >= limit:
            print(f"killed at checkpoint {seen[0]} ({label})", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    return checkpoint


def _migrate_embedded(settings: Settings) -> None:
    if not settings.is_postgres:
        from enginex.migrate import upgrade

        upgrade(settings)


async def _with_database(settings: Settings, work: Callable[[Database], Awaitable[Any]]) -> Any:
    from enginex.db import Database

    db = Database(settings)
    try:
        return await work(db)
    finally:
        await db.dispose()


def _keys(settings: Settings) -> tuple[bytes, bytes | None]:
    from enginex.credentials.vault import previous_master_key
    from enginex.kit.crypto import load_master_key

    return load_master_key(settings), previous_master_key()


def check_master_key(settings: Settings) -> None:
    """At process start (serve, worker): refuse a master key the database does not know, or
    an unfinished master-key rotation without its previous key (MasterKeyError, with how to
    fix it). A new database registers the key."""
    from enginex.credentials.vault import Keyring, verify_master_key

    master, previous = _keys(settings)
    keyring = Keyring(master, previous)

    async def work(db: Database) -> None:
        async with db.sessions() as session:
            await verify_master_key(session, keyring, strict=True)
            await session.commit()

    asyncio.run(_with_database(settings, work))


def _print_report(report: RotationReport, what: str) -> None:
    for problem in report.problems:
        print(f"problem: {problem}")
    print(f"{what}: {report.tenants} organization(s), {report.rewrapped} re-encrypted, "
          f"{report.converted} interim LLM key(s) moved into the vault"
          + (f", destroyed data key version(s) {report.destroyed}" if report.destroyed else "")
          + ("" if report.done else "; NOT complete, fix the problems above and run it again"))


def cmd_rotate_master(args: argparse.Namespace, settings: Settings) -> None:
    from enginex.credentials.rotation import rotate_master
    from enginex.credentials.vault import Keyring
    from enginex.llm.service import LLMKeyBox

    _migrate_embedded(settings)
    master, previous = _keys(settings)
    keyring = Keyring(master, previous)
    box = LLMKeyBox(master, previous=previous, keyring=keyring)

    async def work(db: Database) -> RotationReport:
        return await rotate_master(db.sessions, keyring, box, checkpoint=_kill_switch())

    report = asyncio.run(_with_database(settings, work))
    _print_report(report, f"master key {keyring.current.id}")
    if not report.done:
        raise _cli_error("the master-key rotation is not complete")
    print("done: every data key is wrapped by the current master key; remove "
          "ENGINEX_MASTER_KEY_PREVIOUS from every process and restart them, then destroy the "
          "old key (and backups that need it).")


def cmd_rotate_tenant(args: argparse.Namespace, settings: Settings) -> None:
    from enginex.credentials.rotation import RotationError, rotate_tenant
    from enginex.credentials.vault import Keyring
    from enginex.llm.service import LLMKeyBox

    _migrate_embedded(settings)
    master, previous = _keys(settings)
    keyring = Keyring(master, previous)
    box = LLMKeyBox(master, previous=previous, keyring=keyring)

    async def work(db: Database) -> RotationReport:
        return await rotate_tenant(db.sessions, keyring, box, args.org,
                                   batch_size=args.batch_size, checkpoint=_kill_switch())

    try:
        report = asyncio.run(_with_database(settings, work))
    except RotationError as exc:
        raise _cli_error(str(exc)) from None
    _print_report(report, f"organization {args.org}, data key version {report.version}")


def cmd_keys_status(args: argparse.Namespace, settings: Settings) -> None:
    from enginex.credentials.rotation import tenant_key_status
    from enginex.credentials.vault import Keyring

    _migrate_embedded(settings)
    master, previous = _keys(settings)
    keyring = Keyring(master, previous)
    masters, tenants = asyncio.run(_with_database(
        settings, lambda db: tenant_key_status(db.sessions)))
    print(f"ENGINEX_MASTER_KEY: {keyring.current.id}"
          + (f"  ENGINEX_MASTER_KEY_PREVIOUS: {keyring.previous.id}" if keyring.previous else ""))
    for kek, status in masters:
        print(f"registered master key {kek}: {status}")
    for slug, versions, keks in tenants:
        pending = sorted(k for k in keks if k != keyring.current.id)
        print(f"{slug}: data key version(s) {versions or '-'}"
              + (f"; wrapped by old master key {', '.join(pending)}" if pending else "")
              + ("; tenant-key rotation unfinished" if len(versions) > 1 else ""))


def cmd_tenant_delete(args: argparse.Namespace, settings: Settings) -> None:
    from enginex.credentials.rotation import delete_tenant, purge_deleted_content
    from enginex.orgs.repository import get_org_by_slug
    from enginex.reports.storage import ArtifactStorage

    if not args.yes:
        raise _cli_error(f"this deletes organization '{args.org}' with all its data and "
                            "destroys its data keys for good; add --yes to confirm")
    _migrate_embedded(settings)
    storage = ArtifactStorage(settings.resolved_storage_dir)

    async def work(db: Database) -> int:
        async with db.sessions() as session:
            org = await get_org_by_slug(session, args.org)
            if org is None:
                raise _cli_error(f"no organization with slug '{args.org}'")
            destroyed = await delete_tenant(session, org, storage=storage)
            await session.commit()
        await purge_deleted_content(db.engine)
        return destroyed

    destroyed = asyncio.run(_with_database(settings, work))
    print(f"deleted organization '{args.org}' and all its data; {destroyed} data key(s) "
          "destroyed. Backups taken before now still hold its data under the master key: "
          "rotate the master key and destroy the old one to shred those too.")


def add_keys_commands(keys: Any) -> None:
    """Register the vault's commands on the ``enginex keys`` sub-parsers."""
    master = keys.add_parser("rotate-master", help="re-wrap every data key under "
                             "ENGINEX_MASTER_KEY (old key in ENGINEX_MASTER_KEY_PREVIOUS)")
    master.set_defaults(func=cmd_rotate_master)
    tenant = keys.add_parser("rotate-tenant", help="give one organization a new data key and "
                             "re-encrypt its secrets")
    tenant.add_argument("--org", required=True, help="the organization's slug")
    tenant.add_argument("--batch-size", type=int, default=100)
    tenant.set_defaults(func=cmd_rotate_tenant)
    keys.add_parser("status", help="master keys and each organization's data keys").set_defaults(
        func=cmd_keys_status)


def add_tenant_commands(tenant: Any) -> None:
    """Register ``enginex tenant delete`` on the ``enginex tenant`` sub-parsers."""
    delete = tenant.add_parser("delete", help="delete an organization and all its data; its "
                               "data keys are destroyed (crypto-shredding)")
    delete.add_argument("--org", required=True, help="the organization's slug")
    delete.add_argument("--yes", action="store_true", help="confirm the deletion")
    delete.set_defaults(func=cmd_tenant_delete)
