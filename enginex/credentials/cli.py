"""``enginex keys rotate-master | rotate-tenant | status``, ``enginex tenant delete`` (with the
grace period; ``--now`` at once) and ``enginex tenant restore``.

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
    """Schedule the deletion (grace period), or with ``--now`` delete at once, in this
    process, through the same resumable hard delete the worker runs (a tombstone is kept)."""
    from datetime import timedelta

    from enginex.kit.time import utcnow
    from enginex.lifecycle import deletion
    from enginex.orgs.repository import get_org_by_slug
    from enginex.reports.storage import ArtifactStorage

    if not args.yes:
        what = ("deletes organization '{}' with all its data and destroys its data keys for "
                "good" if args.now else "suspends organization '{}' now and deletes it with all "
                "its data after the grace period").format(args.org)
        raise _cli_error(f"this {what}; add --yes to confirm")
    _migrate_embedded(settings)
    storage = ArtifactStorage(settings.resolved_storage_dir)
    grace = timedelta(days=0 if args.now else settings.deletion_grace_days)

    async def work(db: Database) -> tuple[str, int, object]:
        async with db.sessions() as session:
            org = await get_org_by_slug(session, args.org)
            if org is None:
                raise _cli_error(f"no organization with slug '{args.org}'")
            pending = await deletion.pending_deletion(session, org.id)
            if pending is None:
                pending = await deletion.schedule_deletion(
                    session, org, requester=deletion.Requester("cli", None), grace=grace)
            elif args.now and pending.status == "scheduled":
                pending.hard_delete_at = utcnow()
            elif not args.now:
                raise _cli_error(f"organization '{args.org}' is already scheduled for "
                                 f"deletion on {pending.hard_delete_at:%Y-%m-%d %H:%M} UTC; "
                                 "`enginex tenant restore` cancels it, --now deletes it now")
            deletion_id, due = pending.id, pending.hard_delete_at
            await session.commit()
        if not args.now:
            return "scheduled", 0, due

        async def no_heartbeat() -> None:
            return None

        await deletion.hard_delete(db.sessions, storage, deletion_id,
                                   batch_rows=settings.deletion_batch_rows,
                                   rows_per_second=settings.deletion_rows_per_second,
                                   heartbeat=no_heartbeat)
        async with db.sessions() as session:
            done = await session.get(deletion.OrgDeletion, deletion_id)
            destroyed = done.data_keys_destroyed if done is not None else 0
        return "deleted", destroyed, due

    outcome, destroyed, due = asyncio.run(_with_database(settings, work))
    if outcome == "scheduled":
        print(f"organization '{args.org}' is suspended and will be deleted with all its data "
              f"on {due:%Y-%m-%d %H:%M} UTC (ENGINEX_DELETION_GRACE_DAYS="
              f"{settings.deletion_grace_days}) by a worker; `enginex tenant restore --org "
              f"{args.org}` cancels it until then.")
        return
    print(f"deleted organization '{args.org}' and all its data; {destroyed} data key(s) "
          "destroyed; a tombstone (id, slug hash, times) is kept. Backups taken before now "
          "still hold its data under the master key: rotate the master key and destroy the "
          "old one to shred those too.")


def cmd_tenant_restore(args: argparse.Namespace, settings: Settings) -> None:
    from enginex.kit.errors import AppError
    from enginex.lifecycle import deletion
    from enginex.orgs.repository import get_org_by_slug

    _migrate_embedded(settings)

    async def work(db: Database) -> str:
        async with db.sessions() as session:
            org = await get_org_by_slug(session, args.org)
            if org is None:
                raise _cli_error(f"no organization with slug '{args.org}'")
            try:
                restored, _ = await deletion.restore_deletion(session, org.id, actor_id=None)
            except AppError as exc:
                raise _cli_error(exc.message) from exc
            status = restored.status
            await session.commit()
            return status

    status = asyncio.run(_with_database(settings, work))
    print(f"organization '{args.org}' restored; its status is {status} again.")


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
    delete = tenant.add_parser("delete", help="suspend an organization now and delete it with "
                               "all its data after the grace period (--now: at once); its data "
                               "keys are destroyed (crypto-shredding)")
    delete.add_argument("--org", required=True, help="the organization's slug")
    delete.add_argument("--yes", action="store_true", help="confirm the deletion")
    delete.add_argument("--now", action="store_true", help="delete for good at once instead "
                        "of after ENGINEX_DELETION_GRACE_DAYS")
    delete.set_defaults(func=cmd_tenant_delete)
    restore = tenant.add_parser("restore", help="cancel an organization's scheduled deletion "
                                "(within the grace period)")
    restore.add_argument("--org", required=True, help="the organization's slug")
    restore.set_defaults(func=cmd_tenant_restore)
