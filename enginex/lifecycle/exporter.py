"""Build an organization's export archive: a ZIP streamed to a file, never held in memory.

Layout (docs/DATA_LIFECYCLE.md): ``org.jsonl``, one ``<kind>.jsonl`` per kind of
``kinds.KINDS`` (in that order), ``files/reports/<artifact id hex>`` for every report's
bytes, and ``manifest.json`` last (format and version, the source organization, the row count
of every kind and the size and SHA-256 of every other file).

Rows are read in one read-only transaction (a consistent snapshot: SQLite WAL read
transaction; REPEATABLE READ on PostgreSQL) through server-side cursors in batches of
``BATCH`` rows, so memory stays flat whatever the organization's size. The archive is written
to ``<final>.part`` and renamed only when complete: a half-written archive is never served.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.audit.chain import chain_tenant, origins_of
from enginex.audit.repository import AuditRepository
from enginex.credentials.vault import Keyring
from enginex.db import READ_ONLY, SessionFactory, set_tenant
from enginex.kit.time import utcnow
from enginex.lifecycle.codec import dump_line, to_json_value
from enginex.lifecycle.kinds import EXCLUDED, FORMAT, FORMAT_VERSION, KINDS, Kind
from enginex.orgs.models import Organization
from enginex.reports.storage import ArtifactStorage
from enginex.tenancy.context import system_context

BATCH = 500
CHUNK = 64 * 1024
ORG_FILE = "org.jsonl"
MANIFEST = "manifest.json"
REPORT_FILES = "files/reports/"

Progress = Callable[[int, str], Awaitable[None]]


@dataclass(frozen=True)
class SecretsPlan:
    """An export with secrets: credentials' values sealed to ``recipient`` (lifecycle/
    sealed.py), opened with this deployment's ``keyring`` while the archive is written."""

    recipient: str
    keyring: Keyring


@dataclass
class ArchiveInfo:
    size_bytes: int = 0
    sha256: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)


class _Pace:
    """Progress reports at most once a second, and the optional rows-per-second limit."""

    def __init__(self, progress: Progress, rows_per_second: int) -> None:
        self.progress = progress
        self.rate = rows_per_second
        self.done = 0
        self.started = time.monotonic()
        self.reported = 0.0

    async def tick(self, kind: str) -> None:
        self.done += 1
        now = time.monotonic()
        if self.rate:
            ahead = self.done / self.rate - (now - self.started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        if now - self.reported >= 1.0:
            self.reported = now
            await self.progress(self.done, kind)


async def count_rows(db: AsyncSession) -> int:
    """Rows plus report files the export of the bound organization will write."""
    total = 1  # the org row
    for kind in KINDS:
        total += int((await db.execute(select(func.count()).select_from(kind.model))).scalar_one())
        if kind.files:
            total += int((await db.execute(
                select(func.count()).select_from(kind.model))).scalar_one())
    return total


async def _rows(db: AsyncSession, kind: Kind, org_id: uuid.UUID) -> AsyncIterator[dict[str, Any]]:
    columns = kind.exported_columns()
    origins = origins_of(await AuditRepository(db, system_context(org_id, "")).imports()) \
        if kind.name == "audit" else []
    result = await db.stream(kind.statement().execution_options(yield_per=BATCH))
    async for row in result:
        obj = row[0]
        record = {c: to_json_value(getattr(obj, c)) for c in columns}
        for (name, _), value in zip(kind.extra, row[1:], strict=True):
            record[name] = to_json_value(value)
        if kind.name == "audit":
            record["chain_tenant_id"] = chain_tenant(origins, obj.seq) or str(org_id)
        yield record


def _org_record(org: Organization) -> dict[str, Any]:
    return {"id": str(org.id), "slug": org.slug, "name": org.name, "status": org.status,
            "region": org.region, "created_at": to_json_value(org.created_at)}


async def _sealed_credentials(db: AsyncSession, kind: Kind, plan: SecretsPlan
                              ) -> AsyncIterator[dict[str, Any]]:
    """The credential lines of an export with secrets: each with ``sealed_values``. The
    credentials are read first (an organization has few), then opened one by one."""
    from enginex.credentials.service import binding
    from enginex.lifecycle.sealed import associated_data, parse_recipient, seal

    recipient = parse_recipient(plan.recipient)
    columns = kind.exported_columns()
    credentials = (await db.execute(kind.statement())).scalars().all()
    for credential in credentials:
        record = {c: to_json_value(getattr(credential, c)) for c in columns}
        plaintext = await plan.keyring.open(db, binding(credential),  # type: ignore[arg-type]
                                            credential.ciphertext)  # type: ignore[attr-defined]
        record["sealed_values"] = seal(recipient, plaintext,
                                       associated_data(record["id"], record["name"]))
        del plaintext
        yield record


async def write_archive(sessions: SessionFactory, org_id: uuid.UUID, storage: ArtifactStorage,
                        path: Path, *, progress: Progress, rows_per_second: int = 0,
                        secrets: SecretsPlan | None = None) -> ArchiveInfo:
    """Write the export of organization ``org_id`` to ``path`` (through ``path.part``, renamed
    at the end). ``progress(done, kind)`` is awaited about once a second. ``secrets``: seal
    the credentials' values into the archive (never in plaintext)."""
    from stream_zip import ZIP_64, async_stream_zip

    info = ArchiveInfo()
    pace = _Pace(progress, rows_per_second)
    now = utcnow()
    modified = datetime(now.year, now.month, now.day, now.hour, now.minute, now.second)

    async with sessions(execution_options={READ_ONLY: True}) as db:
        if db.get_bind().dialect.name == "postgresql":
            await db.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        await set_tenant(db, org_id)
        org = await db.get(Organization, org_id)
        if org is None:
            raise LookupError(f"organization {org_id} does not exist")

        def hashed(name: str, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
            async def run() -> AsyncIterator[bytes]:
                digest, size = hashlib.sha256(), 0
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    yield chunk
                info.files[name] = {"sha256": digest.hexdigest(), "bytes": size}
            return run()

        async def org_lines() -> AsyncIterator[bytes]:
            await pace.tick("org")
            yield dump_line(_org_record(org))

        async def kind_lines(kind: Kind) -> AsyncIterator[bytes]:
            buffer = bytearray()
            count = 0
            records = _sealed_credentials(db, kind, secrets) \
                if secrets is not None and kind.name == "credentials" else _rows(db, kind, org_id)
            async for record in records:
                buffer += dump_line(record)
                count += 1
                await pace.tick(kind.name)
                if len(buffer) >= CHUNK:
                    yield bytes(buffer)
                    buffer.clear()
            info.counts[kind.name] = count
            if buffer:
                yield bytes(buffer)

        async def file_chunks(file: Path) -> AsyncIterator[bytes]:
            with file.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    yield chunk

        async def manifest() -> AsyncIterator[bytes]:
            body = {"format": FORMAT, "format_version": FORMAT_VERSION,
                    "exported_at": to_json_value(now),
                    "source": _org_record(org), "kinds": [ORG_FILE[:-6], *(k.name for k in KINDS)],
                    "counts": {"org": 1, **info.counts}, "files": info.files,
                    "excluded": EXCLUDED}
            if secrets is not None:
                from enginex.lifecycle.sealed import SCHEME
                body["secrets"] = {"scheme": SCHEME, "recipient": secrets.recipient,
                                   "field": "credentials.jsonl: sealed_values"}
            yield json.dumps(body, sort_keys=True, indent=1).encode("utf-8")

        async def members() -> AsyncIterator[Any]:
            yield ORG_FILE, modified, 0o600, ZIP_64, hashed(ORG_FILE, org_lines())
            for kind in KINDS:
                yield kind.filename, modified, 0o600, ZIP_64, hashed(kind.filename,
                                                                      kind_lines(kind))
                if kind.files:
                    ids = await db.stream_scalars(select(kind.model.id)  # type: ignore[attr-defined]
                                                  .order_by(*[getattr(kind.model, c)
                                                              for c in kind.order_by])
                                                  .execution_options(yield_per=BATCH))
                    async for row_id in ids:
                        name = f"files/{kind.name}/{row_id.hex}"
                        await pace.tick(kind.name)
                        yield name, modified, 0o600, ZIP_64, hashed(
                            name, file_chunks(storage.path_for(org_id, row_id)))
            yield MANIFEST, modified, 0o600, ZIP_64, manifest()

        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        digest = hashlib.sha256()
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            async for chunk in async_stream_zip(
                    members(), get_compressobj=lambda: zlib.compressobj(
                        wbits=-zlib.MAX_WBITS, level=6)):
                handle.write(chunk)
                digest.update(chunk)
                info.size_bytes += len(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(part, path)
        info.sha256 = digest.hexdigest()
        await progress(pace.done, "done")
        return info
