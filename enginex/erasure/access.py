"""The subject-access export: one person's own personal data across every organization, as a
ZIP of JSON Lines files with a hashed manifest (the export format's shape, docs/
DATA_LIFECYCLE.md "Subject access").

What is "their own personal data": the account (never the password hash), their browser
sessions (times and user agent; never token digests), and in every organization that holds
anything of theirs: their membership and role, the API keys they created (name, hint, dates;
never digests), SSO links (issuer and subject), the identity provider's SCIM record of them,
invitations sent to their address, the sessions they started and the approvals they decided
(ids, status, times, their decision and comment: not the session's inputs or reports, which
are the organization's data), and the audit entries in which they are the actor or the
target. Plus mail queued to their address (kind, subject, times: never the body, which holds
links) and their erasure requests.

Organizations are read one at a time, each in its own read transaction bound to it (row-level
security on PostgreSQL), so the export never mixes tenants in one unit of work. Rows are
written to temporary files, then zipped to a temporary file: memory stays flat.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from enginex.approvals.models import Approval
from enginex.audit.models import AuditEntry
from enginex.auth.models import ApiKey, AuthSession, User
from enginex.db import READ_ONLY, set_tenant
from enginex.erasure import repository as repo
from enginex.erasure.models import UserErasure
from enginex.kit.errors import NotFound
from enginex.kit.time import utcnow
from enginex.lifecycle.codec import dump_line, to_json_value
from enginex.mail.models import OutboxMessage
from enginex.orgs.models import Invitation, Membership, Organization
from enginex.runs.models import Run
from enginex.scim.models import ScimUser
from enginex.sso.models import SsoIdentity

FORMAT = "enginex-subject-access"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHUNK = 64 * 1024
BATCH = 500

# file -> (model, columns written). Only these columns leave the deployment.
FILES: dict[str, tuple[type[Any], tuple[str, ...]]] = {
    "account": (User, ("id", "email", "display_name", "is_platform_admin", "disabled",
                       "password_changed_at", "created_at")),
    "browser_sessions": (AuthSession, ("id", "created_at", "last_seen_at", "expires_at",
                                       "user_agent", "sso_org_id")),
    "memberships": (Membership, ("user_id", "role", "created_at", "disabled_at")),
    "api_keys": (ApiKey, ("id", "name", "hint", "role", "created_at", "expires_at",
                          "last_used_at", "revoked_at")),
    "sso_identities": (SsoIdentity, ("id", "connection_id", "issuer", "subject", "created_at",
                                     "last_login_at")),
    "scim": (ScimUser, ("user_name", "external_id", "document", "created_at", "updated_at")),
    "invitations": (Invitation, ("id", "email", "role", "created_at", "expires_at",
                                 "accepted_at", "revoked_at")),
    "sessions": (Run, ("id", "agent_key", "agent_version", "status", "created_at",
                       "started_at", "finished_at")),
    "approvals": (Approval, ("id", "run_id", "node_id", "status", "decision", "comment",
                             "decided_at")),
    "audit": (AuditEntry, ("seq", "at", "actor_kind", "actor_id", "action", "target_kind",
                           "target_id", "details", "hash")),
    "mail": (OutboxMessage, ("kind", "subject", "status", "created_at", "sent_at")),
    "erasure_requests": (UserErasure, ("id", "status", "self_requested", "reason",
                                       "requested_at", "decided_at", "decline_reason",
                                       "finished_at")),
}


def _columns(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: to_json_value(getattr(obj, name, None)) for name in names}


class _Files:
    """One temporary file per kind, lines appended as rows are found."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.handles: dict[str, IO[bytes]] = {}
        self.counts: dict[str, int] = dict.fromkeys(FILES, 0)

    def write(self, kind: str, record: dict[str, Any]) -> None:
        if kind not in self.handles:
            self.handles[kind] = (self.directory / f"{kind}.jsonl").open("wb")
        self.handles[kind].write(dump_line(record))
        self.counts[kind] += 1

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()

    def path(self, kind: str) -> Path:
        return self.directory / f"{kind}.jsonl"


def _tenant_queries(user_id: uuid.UUID, email: str) -> dict[str, Any]:
    lowered = email.strip().lower()
    return {
        "memberships": select(Membership).where(Membership.user_id == user_id),
        "api_keys": select(ApiKey).where(ApiKey.created_by == user_id).order_by(ApiKey.id),
        "sso_identities": select(SsoIdentity).where(SsoIdentity.user_id == user_id),
        "scim": select(ScimUser).where(ScimUser.user_id == user_id),
        "invitations": select(Invitation).where(func.lower(Invitation.email) == lowered)
        .order_by(Invitation.created_at),
        "sessions": select(Run).where(Run.created_by == user_id).order_by(Run.created_at,
                                                                          Run.id),
        "approvals": select(Approval).where(Approval.decided_by == user_id)
        .order_by(Approval.created_at, Approval.id),
        "audit": select(AuditEntry).where(or_(
            AuditEntry.actor_id == user_id,
            (AuditEntry.target_kind == "user") & (AuditEntry.target_id == str(user_id))))
        .order_by(AuditEntry.seq),
    }


async def _org_rows(sessions: async_sessionmaker[AsyncSession], org: Organization,
                    user_id: uuid.UUID, email: str, files: _Files) -> None:
    async with sessions(execution_options={READ_ONLY: True}) as db:
        await set_tenant(db, org.id)
        where = {"org_id": str(org.id), "org_slug": org.slug, "org_name": org.name}
        for kind, stmt in _tenant_queries(user_id, email).items():
            names = FILES[kind][1]
            result = await db.stream_scalars(stmt.execution_options(yield_per=BATCH))
            async for row in result:
                files.write(kind, {**where, **_columns(row, names)})
            db.expunge_all()


async def build_subject_access(sessions: async_sessionmaker[AsyncSession],
                               user_id: uuid.UUID) -> Path:
    """Write the subject-access ZIP of account ``user_id`` to a temporary file and return its
    path (the caller deletes it after sending). NotFound for an unknown account."""
    from stream_zip import ZIP_64, stream_zip

    async with sessions(execution_options={READ_ONLY: True}) as db:
        user = await db.get(User, user_id)
        if user is None:
            raise NotFound()
        email = user.email
        workdir = Path(tempfile.mkdtemp(prefix="enginex-sar-"))
        files = _Files(workdir)
        try:
            files.write("account", _columns(user, FILES["account"][1]))
            for browser in (await db.execute(select(AuthSession).where(
                    AuthSession.user_id == user_id).order_by(AuthSession.created_at))).scalars():
                files.write("browser_sessions", _columns(browser, FILES["browser_sessions"][1]))
            for mail in (await db.execute(select(OutboxMessage).where(
                    func.lower(OutboxMessage.recipient) == email.strip().lower())
                    .order_by(OutboxMessage.created_at))).scalars():
                files.write("mail", _columns(mail, FILES["mail"][1]))
            for erasure in (await db.execute(select(UserErasure).where(
                    UserErasure.user_id == user_id)
                    .order_by(UserErasure.requested_at))).scalars():
                files.write("erasure_requests", _columns(erasure, FILES["erasure_requests"][1]))
        except BaseException:
            files.close()
            _remove_tree(workdir)
            raise
    try:
        after: uuid.UUID | None = None
        while True:
            async with sessions() as db:
                org_ids = await repo.org_ids_after(db, after, 100)
                orgs = {o.id: o for o in (await db.execute(select(Organization).where(
                    Organization.id.in_(org_ids)))).scalars()}
            for org_id in org_ids:
                if org_id in orgs:
                    await _org_rows(sessions, orgs[org_id], user_id, email, files)
            if len(org_ids) < 100:
                break
            after = org_ids[-1]
        files.close()
        now = utcnow()
        manifest_files: dict[str, dict[str, Any]] = {}

        def chunks(kind: str) -> Iterator[bytes]:
            digest, size = hashlib.sha256(), 0
            path = files.path(kind)
            if path.exists():
                with path.open("rb") as handle:
                    while chunk := handle.read(CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        yield chunk
            manifest_files[f"{kind}.jsonl"] = {"sha256": digest.hexdigest(), "bytes": size}

        def manifest() -> Iterator[bytes]:
            yield json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                              "exported_at": to_json_value(now), "subject": str(user_id),
                              "kinds": list(FILES), "counts": files.counts,
                              "files": manifest_files}, sort_keys=True, indent=1).encode()

        modified = now.replace(tzinfo=None, microsecond=0)

        def members() -> Iterator[Any]:
            for kind in FILES:
                yield f"{kind}.jsonl", modified, 0o600, ZIP_64, chunks(kind)
            yield MANIFEST, modified, 0o600, ZIP_64, manifest()

        fd, name = tempfile.mkstemp(prefix="enginex-sar-", suffix=".zip")
        with os.fdopen(fd, "wb") as out:
            for chunk in stream_zip(members(), get_compressobj=lambda: zlib.compressobj(
                    wbits=-zlib.MAX_WBITS, level=6)):
                out.write(chunk)
        return Path(name)
    finally:
        files.close()
        _remove_tree(workdir)


def _remove_tree(directory: Path) -> None:
    for child in directory.iterdir():
        child.unlink(missing_ok=True)
    directory.rmdir()


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    """The file's bytes in chunks, then the file is deleted (a response body)."""
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
