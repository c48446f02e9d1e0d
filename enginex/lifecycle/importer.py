"""Rebuild an organization from an export archive (``enginex tenant import``).

Checked before anything is written: the file's size, that it is a complete ZIP, the manifest's
format and version, that the archive holds exactly the files the manifest lists, each with
its size and SHA-256, and that the audit chain in it verifies. Any problem raises
``ArchiveRefused`` with what was wrong, and nothing is written.

Then one transaction writes every row: the organization keeps its id when it is free in this
database (a move to another deployment) and gets a new one otherwise (a copy); every other
row keeps its id (their keys lead with tenant_id). Members are matched to this deployment's
accounts by e-mail address, or get a new account without a password. Report files are
written to a staging directory beside the storage root and moved into the organization's
prefix only after the commit; a failed import removes them. The audit entries are inserted
verbatim and the import is recorded as the chain's next entry (``org.imported``, naming the
id the earlier entries were hashed under), so the chain verifies (enginex/audit/chain.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.audit.chain import IMPORTED_ACTION, ChainWalker
from enginex.audit.models import AuditHead
from enginex.audit.service import record
from enginex.auth import repository as auth_repo
from enginex.auth.models import User
from enginex.credentials.crypto import Binding
from enginex.credentials.service import PURPOSE
from enginex.credentials.vault import Keyring
from enginex.db import set_tenant
from enginex.kit.ids import new_id
from enginex.kit.schemas import RESERVED_SLUGS, SLUG_PATTERN
from enginex.lifecycle.codec import RowError, from_json_value
from enginex.lifecycle.exporter import MANIFEST, ORG_FILE
from enginex.lifecycle.kinds import FORMAT, FORMAT_VERSION, KINDS, Kind
from enginex.lifecycle.sealed import SealError, associated_data, open_sealed
from enginex.mcp.models import McpCatalogEntry
from enginex.orgs import repository as org_repo
from enginex.orgs.models import Organization
from enginex.reports.storage import ArtifactStorage
from enginex.tenancy.context import system_context

BATCH = 500
MAX_LINE = 64 * 1024 * 1024  # one row: far above any column's limit
CHUNK = 64 * 1024


class ArchiveRefused(ValueError):
    """The archive cannot be imported; the message says why. Nothing was written."""


@dataclass
class ImportResult:
    org_id: uuid.UUID
    slug: str
    kept_id: bool
    counts: dict[str, int] = field(default_factory=dict)
    new_accounts: list[str] = field(default_factory=list)
    credentials_needing_values: list[str] = field(default_factory=list)
    credentials_restored: list[str] = field(default_factory=list)


@dataclass
class Manifest:
    body: dict[str, Any]

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return dict(self.body["files"])

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.body["counts"])


def check_archive(path: Path, *, max_bytes: int) -> Manifest:
    """Everything that can be checked without a database (see the module docstring)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ArchiveRefused(f"cannot read {path}: {exc.strerror}") from None
    if size > max_bytes:
        raise ArchiveRefused(f"the archive is {size} bytes, more than the {max_bytes} "
                             "ENGINEX_IMPORT_MAX_BYTES allows")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveRefused(f"not a complete ZIP archive (truncated or not an export): "
                             f"{exc}") from None
    with archive:
        names = [i.filename for i in archive.infolist()]
        if len(set(names)) != len(names):
            raise ArchiveRefused("the archive holds a file name twice (tampered)")
        if MANIFEST not in names:
            raise ArchiveRefused("no manifest.json: this is not an EngineX tenant export")
        if sum(i.file_size for i in archive.infolist()) > max_bytes:
            raise ArchiveRefused("the archive's files are larger, uncompressed, than "
                                 f"ENGINEX_IMPORT_MAX_BYTES ({max_bytes} bytes)")
        try:
            body = json.loads(_read_limited(archive, MANIFEST, 16 * 1024 * 1024))
        except (ValueError, zipfile.BadZipFile) as exc:
            raise ArchiveRefused(f"manifest.json is not valid JSON: {exc}") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise ArchiveRefused("manifest.json does not describe an EngineX tenant export")
        if body.get("format_version") != FORMAT_VERSION:
            raise ArchiveRefused(f"export format version {body.get('format_version')!r} is not "
                                 f"supported by this EngineX (it reads version "
                                 f"{FORMAT_VERSION}); import it with the EngineX that made it")
        files, counts = body.get("files"), body.get("counts")
        if not isinstance(files, dict) or not isinstance(counts, dict) or \
                not isinstance(body.get("source"), dict):
            raise ArchiveRefused("manifest.json lacks its files, counts or source")
        listed = set(files)
        present = set(names) - {MANIFEST}
        if listed != present:
            missing, extra = sorted(listed - present), sorted(present - listed)
            raise ArchiveRefused(f"the archive's files differ from its manifest (tampered or "
                                 f"truncated): missing {missing[:5]}, not listed {extra[:5]}")
        required = {ORG_FILE, *(k.filename for k in KINDS)}
        if not required <= present:
            raise ArchiveRefused(f"the archive lacks {sorted(required - present)}")
        for name in sorted(present):
            expected = files[name]
            digest, size = hashlib.sha256(), 0
            try:
                with archive.open(name) as member:
                    while chunk := member.read(CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise ArchiveRefused(f"{name}: cannot be read ({exc}); the archive is "
                                     "damaged") from None
            if not isinstance(expected, dict) or digest.hexdigest() != expected.get("sha256") \
                    or size != expected.get("bytes"):
                raise ArchiveRefused(f"{name}: its SHA-256 or size does not match the manifest "
                                     "(the archive was changed after export)")
    return Manifest(body)


def _read_limited(archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    with archive.open(name) as member:
        data = member.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{name} is larger than {limit} bytes")
    return data


def _lines(member: IO[bytes], name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(member, start=1):
        if len(line) > MAX_LINE:
            raise ArchiveRefused(f"{name} line {number}: longer than {MAX_LINE} bytes")
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise ArchiveRefused(f"{name} line {number}: not JSON ({exc})") from None
        if not isinstance(value, dict):
            raise ArchiveRefused(f"{name} line {number}: not a JSON object")
        yield number, value


class _Rows:
    """Turns the lines of one kind into rows of the target organization."""

    def __init__(self, db: AsyncSession, org_id: uuid.UUID, keyring: Keyring,
                 result: ImportResult, identity: X25519PrivateKey | None = None) -> None:
        self.db = db
        self.identity = identity
        self.org_id = org_id
        self.keyring = keyring
        self.result = result
        self.users: dict[uuid.UUID, uuid.UUID] = {}
        self.catalog: dict[str, uuid.UUID] = {}
        self.walker = ChainWalker()
        self.audit_tail: tuple[int, str] | None = None

    async def row(self, kind: Kind, data: dict[str, Any]) -> dict[str, Any]:
        data = dict(data)
        special = {name: data.pop(name, None) for name, _ in kind.extra}
        chain_tenant_id = data.pop("chain_tenant_id", None) if kind.name == "audit" else None
        sealed = data.pop("sealed_values", None) if kind.name == "credentials" else None
        table = kind.model.__table__  # type: ignore[attr-defined]
        allowed = set(kind.exported_columns())
        unknown = set(data) - allowed
        if unknown:
            raise RowError(f"unknown fields {sorted(unknown)}")
        row: dict[str, Any] = {"tenant_id": self.org_id}
        for key in allowed:
            row[key] = from_json_value(table.c[key], data.get(key))
        if kind.name == "members":
            row["user_id"] = await self._member(row["user_id"], special)
        for column in kind.user_columns:
            if row.get(column) in self.users:
                row[column] = self.users[row[column]]
        if kind.name == "mcp_servers" and special.get("catalog_name") is not None:
            row["catalog_id"] = await self._catalog(str(special["catalog_name"]))
        if kind.name == "credentials":
            binding = Binding(PURPOSE, self.org_id, row["id"], row["value_version"])
            values = self._open_sealed(sealed, row) if sealed is not None else b"{}"
            row["ciphertext"], row["key_version"] = await self.keyring.seal(self.db, binding,
                                                                            values)
            row["hint"] = None
            (self.result.credentials_restored if sealed is not None
             else self.result.credentials_needing_values).append(row["name"])
        if kind.name == "audit":
            self._check_chain(row, chain_tenant_id)
        return row

    def _open_sealed(self, sealed: Any, row: dict[str, Any]) -> bytes:
        """A credential's values sealed to the import key, opened with the identity."""
        if self.identity is None:
            raise RowError("this archive holds credential values sealed to an import key: "
                           "pass --identity KEYFILE (the key pair made with `enginex tenant "
                           "keygen`)")
        if not isinstance(sealed, str):
            raise RowError("sealed_values: expected a string")
        try:
            plaintext = open_sealed(self.identity, sealed,
                                    associated_data(str(row["id"]), str(row["name"])))
            values = json.loads(plaintext)
        except SealError as exc:
            raise RowError(f"sealed_values: {exc}") from None
        except ValueError:
            raise RowError("sealed_values: the opened value is not JSON") from None
        if not isinstance(values, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
            raise RowError("sealed_values: the opened value is not an object of strings")
        return plaintext

    async def _member(self, old_id: uuid.UUID, special: dict[str, Any]) -> uuid.UUID:
        email = special.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise RowError("email: a member's e-mail address is required")
        user = await auth_repo.get_user_by_email(self.db, email)
        if user is None:
            # The exported id when it is free here, so that ids inside session data and
            # events (an approval's decider) still name this person.
            free = await auth_repo.get_user(self.db, old_id) is None
            name = special.get("display_name")
            user = User(id=old_id if free else new_id(), email=email.strip(),
                        display_name=name if isinstance(name, str) else "",
                        password_hash=None)
            self.db.add(user)
            await self.db.flush()
            self.result.new_accounts.append(email)
        self.users[old_id] = user.id
        return user.id

    async def _catalog(self, name: str) -> uuid.UUID:
        if name not in self.catalog:
            found = (await self.db.execute(select(McpCatalogEntry.id).where(
                McpCatalogEntry.name == name))).scalar_one_or_none()
            if found is None:
                raise ArchiveRefused(f"an MCP server uses the platform catalog entry '{name}', "
                                     "which this deployment's catalog lacks: add it (platform "
                                     "admin, MCP catalog) and import again")
            self.catalog[name] = found
        return self.catalog[name]

    def _check_chain(self, row: dict[str, Any], chain_tenant_id: Any) -> None:
        try:
            origin = uuid.UUID(str(chain_tenant_id))
        except ValueError:
            raise RowError("chain_tenant_id: required on every audit entry") from None
        entry = _Entry(**{**row, "tenant_id": origin})
        if not self.walker.feed(entry):
            verdict = self.walker.finish()
            raise ArchiveRefused(f"the audit chain in the archive does not verify: "
                                 f"{verdict.describe()}")
        self.audit_tail = (row["seq"], row["hash"])


class _Entry:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def _valid_slug(slug: str) -> str:
    import re

    if not re.match(SLUG_PATTERN, slug) or slug in RESERVED_SLUGS:
        raise ArchiveRefused(f"'{slug}' is not a valid slug: 1-40 lowercase letters, digits "
                             "or dashes, not a reserved word; choose one with --slug")
    return slug


async def import_archive(db: AsyncSession, path: Path, manifest: Manifest, *,
                         storage: ArtifactStorage, keyring: Keyring, slug: str | None,
                         archive_sha256: str, identity: X25519PrivateKey | None = None
                         ) -> tuple[ImportResult, Path]:
    """Write the organization in ``db``'s transaction (the caller commits, then calls
    ``finish_files``; on any failure, ``discard_files``). Returns the result and the staging
    directory of its report files."""
    source = manifest.body["source"]
    target_slug = _valid_slug((slug or str(source.get("slug", ""))).lower())
    if await org_repo.get_org_by_slug(db, target_slug) is not None:
        raise ArchiveRefused(f"an organization with slug '{target_slug}' already exists here; "
                             "choose another with --slug")
    try:
        source_id = uuid.UUID(str(source["id"]))
    except (KeyError, ValueError):
        raise ArchiveRefused("manifest.json: source.id is not an organization id") from None
    kept = await org_repo.get_org(db, source_id) is None
    org_id = source_id if kept else new_id()
    if storage.tenant_prefix(org_id).exists():
        raise ArchiveRefused(f"the storage directory {storage.tenant_prefix(org_id)} already "
                             "exists; it belongs to no organization of this database. Check "
                             "and remove it, then import again")
    staging = storage.root.parent / f".import-{org_id.hex}-{new_id().hex[:8]}"
    result = ImportResult(org_id=org_id, slug=target_slug, kept_id=kept)
    staging.mkdir(mode=0o700, parents=True)
    try:
        await _write(db, path, manifest, result, keyring=keyring, staging=staging,
                     source=source, source_id=source_id, archive_sha256=archive_sha256,
                     identity=identity)
    except BaseException:
        discard_files(staging)
        raise
    return result, staging


async def _write(db: AsyncSession, path: Path, manifest: Manifest, result: ImportResult, *,
                 keyring: Keyring, staging: Path, source: dict[str, Any],
                 source_id: uuid.UUID, archive_sha256: str,
                 identity: X25519PrivateKey | None = None) -> None:
    org_id, target_slug = result.org_id, result.slug
    with zipfile.ZipFile(path) as archive:
        with archive.open(ORG_FILE) as member:
            org_lines = [line for _, line in _lines(member, ORG_FILE)]
        if len(org_lines) != 1:
            raise ArchiveRefused(f"{ORG_FILE} must hold exactly one line")
        org_data = org_lines[0]
        name = org_data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ArchiveRefused(f"{ORG_FILE}: the organization's name is missing")
        region = org_data.get("region") if isinstance(org_data.get("region"), str) else "default"
        db.add(Organization(id=org_id, slug=target_slug, name=name[:120], region=region))
        await db.flush()
        await set_tenant(db, org_id)
        rows = _Rows(db, org_id, keyring, result, identity)
        for kind in KINDS:
            batch: list[dict[str, Any]] = []
            count = 0
            with archive.open(kind.filename) as member:
                for number, data in _lines(member, kind.filename):
                    try:
                        row = await rows.row(kind, data)
                    except RowError as exc:
                        raise ArchiveRefused(f"{kind.filename} line {number}: {exc}") from None
                    if kind.files:
                        _stage_file(archive, kind, row, staging)
                    batch.append(row)
                    count += 1
                    if len(batch) >= BATCH:
                        await db.execute(insert(kind.model), batch)
                        batch = []
            if batch:
                await db.execute(insert(kind.model), batch)
            if count != manifest.counts.get(kind.name):
                raise ArchiveRefused(f"{kind.filename}: {count} rows, the manifest says "
                                     f"{manifest.counts.get(kind.name)}")
            result.counts[kind.name] = count
    verdict = rows.walker.finish()
    if not verdict.intact:
        raise ArchiveRefused(f"the audit chain in the archive does not verify: "
                             f"{verdict.describe()}")
    if rows.audit_tail is not None:
        db.add(AuditHead(tenant_id=org_id, last_seq=rows.audit_tail[0],
                         last_hash=rows.audit_tail[1]))
        await db.flush()
    ctx = system_context(org_id, target_slug)
    await record(db, ctx, IMPORTED_ACTION, target_kind="organization", target_id=org_id,
                 actor_kind="cli",
                 details={"origin_tenant_id": str(source_id),
                          "origin_slug": str(source.get("slug", "")),
                          "archive_sha256": archive_sha256,
                          "exported_at": str(manifest.body.get("exported_at", "")),
                          "entries": result.counts.get("audit", 0)})


def _stage_file(archive: zipfile.ZipFile, kind: Kind, row: dict[str, Any],
                staging: Path) -> None:
    name = f"files/{kind.name}/{row['id'].hex}"
    try:
        member = archive.open(name)
    except KeyError:
        raise ArchiveRefused(f"{name}: the file of {kind.name} row {row['id']} is missing") \
            from None
    digest = hashlib.sha256()
    target = staging / row["id"].hex
    with member, target.open("xb") as out:
        while chunk := member.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
    target.chmod(0o600)
    if "sha256" in row and digest.hexdigest() != row["sha256"]:
        raise ArchiveRefused(f"{name}: its SHA-256 differs from the report's recorded hash")


def finish_files(storage: ArtifactStorage, org_id: uuid.UUID, staging: Path) -> None:
    """After the commit: move the staged report files under the organization's prefix."""
    files = sorted(staging.iterdir())
    if files:
        artifacts = storage.path_for(org_id, uuid.UUID(files[0].name)).parent
        for folder in (storage.root, storage.tenant_prefix(org_id)):
            folder.mkdir(mode=0o700, exist_ok=True)
        staging.rename(artifacts)
    else:
        staging.rmdir()


def discard_files(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
