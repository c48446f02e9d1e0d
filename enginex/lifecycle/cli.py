"""``enginex tenant export`` and ``enginex tenant import`` (platform operator).

``export`` asks for an export of one organization as the worker would be asked, builds it in
this process (or waits while a worker builds it), and copies the archive to ``-o FILE``; the
request and the copy are audited in the organization's chain with actor ``cli``.
``import`` checks an archive completely, then rebuilds the organization in one transaction
(enginex/lifecycle/importer.py); a refused archive writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `enginex --help` must not load the ORM
    from enginex.config import Settings


def _cli_error(message: str) -> Exception:
    from enginex.cli import CliError

    return CliError(message)


def _migrate_embedded(settings: Settings) -> None:
    if not settings.is_postgres:
        from enginex.migrate import upgrade

        upgrade(settings)


def cmd_tenant_export(args: argparse.Namespace, settings: Settings) -> None:
    from enginex.audit.service import record
    from enginex.credentials.vault import Keyring
    from enginex.db import Database, set_tenant
    from enginex.kit.crypto import load_master_key
    from enginex.lifecycle import service
    from enginex.lifecycle.jobs import LifecycleJobs
    from enginex.lifecycle.models import ExportStatus, JobKind, LifecycleJob
    from enginex.lifecycle.repository import ExportRepository
    from enginex.orgs.repository import get_org_by_slug
    from enginex.reports.storage import ArtifactStorage
    from enginex.tenancy.context import system_context

    output = Path(args.output)
    if output.exists() and not args.force:
        raise _cli_error(f"{output} exists; choose another -o or add --force")
    _migrate_embedded(settings)
    storage = ArtifactStorage(settings.resolved_storage_dir)

    async def work() -> tuple[str, int]:
        from sqlalchemy import select

        db = Database(settings)
        try:
            async with db.sessions() as session:
                org = await get_org_by_slug(session, args.org)
                if org is None:
                    raise _cli_error(f"no organization with slug '{args.org}'")
                org_id, slug = org.id, org.slug
                ctx = system_context(org_id, slug)
                await set_tenant(session, org_id)
                export = await service.request_export(session, ctx)
                export_id = export.id
                await session.commit()
            async with db.sessions() as session:
                job_id = (await session.execute(select(LifecycleJob.id).where(
                    LifecycleJob.target_id == export_id,
                    LifecycleJob.kind == JobKind.BUILD_EXPORT))).scalar_one()
            jobs = LifecycleJobs(db.sessions, storage,
                                 name=f"cli:{socket.gethostname()}:{os.getpid()}",
                                 lease_seconds=settings.export_lease_seconds,
                                 poll_seconds=settings.lifecycle_poll_seconds,
                                 retention_days=settings.export_retention_days,
                                 rows_per_second=settings.export_rows_per_second,
                                 keyring=Keyring.for_master(load_master_key(settings)))
            while True:
                await jobs.run_once(job_id)  # builds it here unless a worker holds it
                async with db.sessions() as session:
                    await set_tenant(session, org_id)
                    export = await ExportRepository(session, ctx).access(export_id)
                if export.status == ExportStatus.SUCCEEDED:
                    break
                if export.status == ExportStatus.FAILED:
                    raise _cli_error(f"the export failed: {export.error}")
                await asyncio.sleep(settings.lifecycle_poll_seconds)
            source = service.archive_path(storage, org_id, export_id)
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with source.open("rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
            async with db.sessions() as session:
                await set_tenant(session, org_id)
                await record(session, ctx, "export.downloaded", target_kind="export",
                             target_id=export_id, actor_kind="cli")
                await session.commit()
            return str(export.sha256), int(export.size_bytes or 0)
        finally:
            await db.dispose()

    sha256, size = asyncio.run(work())
    print(f"exported organization '{args.org}' to {output} ({size} bytes, SHA-256 {sha256})")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def cmd_tenant_import(args: argparse.Namespace, settings: Settings) -> None:
    from enginex.credentials.cli import check_master_key
    from enginex.credentials.vault import Keyring
    from enginex.db import Database
    from enginex.kit.crypto import load_master_key
    from enginex.lifecycle.importer import (
        ArchiveRefused,
        check_archive,
        discard_files,
        finish_files,
        import_archive,
    )
    from enginex.lifecycle.sealed import SealError, parse_identity
    from enginex.reports.storage import ArtifactStorage

    path = Path(args.file)
    identity = None
    if args.identity:
        try:
            identity = parse_identity(Path(args.identity).read_text())
        except OSError as exc:
            raise _cli_error(f"cannot read the identity file: {exc.strerror}") from None
        except SealError as exc:
            raise _cli_error(f"{args.identity}: {exc}") from None
    try:
        manifest = check_archive(path, max_bytes=settings.import_max_bytes)
    except ArchiveRefused as exc:
        raise _cli_error(f"archive refused, nothing imported: {exc}") from None
    _migrate_embedded(settings)
    check_master_key(settings)
    storage = ArtifactStorage(settings.resolved_storage_dir)
    keyring = Keyring.for_master(load_master_key(settings))
    archive_sha256 = _sha256(path)

    async def work() -> Any:
        db = Database(settings)
        staging: Path | None = None
        try:
            async with db.sessions() as session:
                try:
                    result, staging = await import_archive(
                        session, path, manifest, storage=storage, keyring=keyring,
                        slug=args.slug, archive_sha256=archive_sha256, identity=identity)
                    await session.commit()
                except BaseException:
                    await session.rollback()
                    raise
            finish_files(storage, result.org_id, staging)
            staging = None
            return result
        finally:
            if staging is not None:
                discard_files(staging)
            await db.dispose()

    try:
        result = asyncio.run(work())
    except ArchiveRefused as exc:
        raise _cli_error(f"archive refused, nothing imported: {exc}") from None
    print(f"imported organization '{result.slug}' ({result.org_id}"
          f"{', same id' if result.kept_id else ', new id'}): "
          + ", ".join(f"{n} {k}" for k, n in result.counts.items()))
    if result.new_accounts:
        print(f"{len(result.new_accounts)} member account(s) created without a password: "
              + ", ".join(result.new_accounts))
    if result.credentials_restored:
        print("credentials imported with their values (opened with the identity): "
              + ", ".join(result.credentials_restored))
    if result.credentials_needing_values:
        print("credentials imported without values (an org admin must set them): "
              + ", ".join(result.credentials_needing_values))


def add_lifecycle_commands(tenant: Any) -> None:
    """Register ``enginex tenant export`` and ``enginex tenant import``."""
    export = tenant.add_parser("export", help="export an organization's data to a ZIP archive "
                               "(docs/DATA_LIFECYCLE.md)")
    export.add_argument("--org", required=True, help="the organization's slug")
    export.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="where to write the archive")
    export.add_argument("--force", action="store_true", help="overwrite FILE")
    export.set_defaults(func=cmd_tenant_export)
    imp = tenant.add_parser("import", help="rebuild an organization from an export archive")
    imp.add_argument("file", metavar="FILE", help="the archive")
    imp.add_argument("--slug", help="the slug in this deployment (default: the exported one)")
    imp.add_argument("--identity", metavar="KEYFILE",
                     help="the import key's identity file (`enginex tenant keygen`): opens the "
                          "credentials' values of an export made with secrets")
    imp.set_defaults(func=cmd_tenant_import)
    keygen = tenant.add_parser("keygen", help="make an import key pair: the identity goes to "
                               "KEYFILE (0600), the recipient to give to the exporting org "
                               "admin is printed")
    keygen.add_argument("-o", "--output", required=True, metavar="KEYFILE")
    keygen.set_defaults(func=cmd_tenant_keygen)


def cmd_tenant_keygen(args: argparse.Namespace, settings: Settings) -> None:
    from enginex.lifecycle.sealed import generate_identity

    identity, recipient = generate_identity()
    try:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise _cli_error(f"{args.output} exists: keep that key, or choose another file") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(f"# EngineX import key; recipient: {recipient}\n{identity}\n")
    print(recipient)
