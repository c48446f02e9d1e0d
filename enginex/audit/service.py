"""``record``: the one function every mutation calls to write its audit entry; and the reads of
the log (filtered pages, the export in chain order, verification).

``record`` writes in the caller's transaction, so an entry exists exactly when the change does.
Each entry extends its organization's hash chain (enginex/audit/chain.py): the append takes the
next seq from the organization's ``audit_heads`` row, which stays locked until the transaction
ends, so appends in one organization are serialised and seqs are contiguous.

What goes into an entry: secrets never; personal data by reference only (user ids, never email
addresses or names), so that erasing a person's data does not require rewriting the chain.

Logins are not tenant-scoped. ``record_login`` writes a successful sign-in into every
organization the user belongs to (each org's admins see their members' sign-ins). A failed
sign-in for an existing user is recorded the same way, but at most once per user and
organization per ``LOGIN_FAILURE_WINDOW`` (later failures in the window are only logged), so
password guessing cannot grow the log without bound; a failed sign-in for an unknown email
belongs to no organization and is not recorded here.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from enginex.audit.chain import ChainWalker, Verdict, hash_of, normalise_details, origins_of
from enginex.audit.models import AuditEntry
from enginex.audit.repository import AuditFilter, AuditRepository
from enginex.db import set_tenant
from enginex.kit.errors import ValidationFailed
from enginex.kit.ids import new_id
from enginex.kit.parsing import ascii_int_or_none
from enginex.kit.time import utcnow
from enginex.tenancy.context import TenantContext, system_context

__all__ = ["AuditFilter", "AuditPage", "AuditRepository", "Verdict", "export_chain",
           "list_entries", "record", "record_in_user_orgs", "record_login", "verify_chain"]

LOGIN_FAILURE_WINDOW = timedelta(minutes=15)
EXPORT_BATCH = 500


async def record(db: AsyncSession, ctx: TenantContext, action: str, *, target_kind: str,
                 target_id: uuid.UUID | str, details: dict[str, Any] | None = None,
                 actor_kind: str | None = None, actor_id: uuid.UUID | None = None) -> None:
    """Append one entry to ``ctx``'s audit chain in the caller's transaction.

    The session must be bound to ``ctx.org_id`` (TenantContextMissing otherwise). ``details``
    must be JSON-serialisable and must hold no secret and no personal data (ids only).
    """
    principal = ctx.principal
    repo = AuditRepository(db, ctx)
    seq, prev_hash = await repo.advance_head()
    entry = AuditEntry(
        id=new_id(), tenant_id=ctx.org_id, seq=seq, at=utcnow(),
        actor_kind=actor_kind or (principal.kind if principal else "system"),
        actor_id=actor_id or (principal.actor_id if principal else None),
        action=action, target_kind=target_kind, target_id=str(target_id),
        details=normalise_details(details), prev_hash=prev_hash,
    )
    entry.hash = hash_of(entry, prev_hash)
    repo.add(entry)
    await repo.set_head_hash(seq, entry.hash)


# --- reads -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditPage:
    items: Sequence[AuditEntry]
    next_cursor: str | None


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = raw.partition(":")
        if kind != "seq":
            raise ValueError(raw)
        seq = ascii_int_or_none(value, minimum=1)
        if seq is None:
            raise ValueError(raw)
        return seq
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed("cursor: not a cursor from a previous page; start without it.",
                               details={"field": "cursor"}) from exc


async def list_entries(db: AsyncSession, ctx: TenantContext, filters: AuditFilter, *,
                       limit: int, cursor: str | None) -> AuditPage:
    """Entries of ``ctx``'s organization, newest first, filtered; ``next_cursor`` continues.

    Raises ValidationFailed for a cursor that did not come from a previous page.
    """
    before = decode_cursor(cursor) if cursor else None
    rows = await AuditRepository(db, ctx).page(filters, limit=limit + 1, before_seq=before)
    items, more = rows[:limit], len(rows) > limit
    return AuditPage(items, encode_cursor(items[-1].seq) if more and items else None)


async def export_chain(sessions: async_sessionmaker[AsyncSession],
                       ctx: TenantContext) -> AsyncIterator[AuditEntry]:
    """Every entry of ``ctx``'s organization in chain order (ascending seq), read in batches
    in one transaction of its own (for streaming after the request's transaction ended)."""
    async with sessions() as db:
        await set_tenant(db, ctx.org_id)
        repo = AuditRepository(db, ctx)
        after = 0
        while True:
            batch = await repo.chain_batch(after, EXPORT_BATCH)
            for entry in batch:
                yield entry
            if len(batch) < EXPORT_BATCH:
                return
            after = batch[-1].seq
            db.expunge_all()


async def verify_chain(db: AsyncSession, ctx: TenantContext, *,
                       anchor_keys: Sequence[bytes] = ()) -> Verdict:
    """Recompute ``ctx``'s chain; the verdict names the first broken seq, if any. Also compares
    the last entry with the organization's head, so a removed tail is detected. A chain whose
    oldest entries retention deleted starts from its anchor, which must be signed with one of
    ``anchor_keys`` (``audit.anchor.anchor_keys``)."""
    repo = AuditRepository(db, ctx)
    walker = ChainWalker(origins_of(await repo.imports()))
    after = await start_from_anchor(db, ctx, walker, anchor_keys)
    if walker.verdict is not None:
        return walker.verdict
    while True:
        batch = await repo.chain_batch(after, EXPORT_BATCH)
        if not all(walker.feed(entry) for entry in batch) or len(batch) < EXPORT_BATCH:
            break
        after = batch[-1].seq
        db.expunge_all()
    head = await repo.head()
    return walker.finish(head.last_seq if head else 0, head.last_hash if head else None)


async def start_from_anchor(db: AsyncSession, ctx: TenantContext, walker: ChainWalker,
                            keys: Sequence[bytes]) -> int:
    """Position ``walker`` at ``ctx``'s anchor (enginex/audit/anchor.py) when retention deleted
    the chain's oldest entries; returns the seq the remaining entries follow (0: genesis). An
    anchor not signed with one of ``keys`` breaks the chain at the entry after it."""
    from enginex.audit.anchor import anchor_is_signed, get_anchor

    anchor = await get_anchor(db, ctx)
    if anchor is None:
        return 0
    if not anchor_is_signed(anchor, keys):
        walker.verdict = Verdict(0, anchor.seq + 1, "the chain's anchor (where retention "
                                 "deleted older entries) is not signed with this deployment's "
                                 "master key: it was forged or changed")
        return anchor.seq
    walker.expected_seq = anchor.seq + 1
    walker.prev_hash = anchor.hash
    return anchor.seq


# --- sign-ins ----------------------------------------------------------------------------------


async def record_login(sessions: async_sessionmaker[AsyncSession], user_id: uuid.UUID, *,
                       succeeded: bool, method: str = "password") -> int:
    """Record a sign-in of ``user_id`` in each organization the user belongs to, one
    transaction per organization (a session is bound to one tenant). Returns how many entries
    were written. A failure is written at most once per user and organization per
    ``LOGIN_FAILURE_WINDOW``. Call after the sign-in's own transaction, not inside it."""
    from enginex.tenancy.platform import list_user_orgs

    async with sessions() as db:
        orgs = await list_user_orgs(db, user_id)
    action = "auth.login_succeeded" if succeeded else "auth.login_failed"
    written = 0
    for org in orgs:
        org_id = org.org_id
        ctx = system_context(org_id, org.slug)
        async with sessions() as db, db.begin():
            await set_tenant(db, org_id)
            if not succeeded and await _recent_failure(db, ctx, user_id):
                continue
            await record(db, ctx, action, target_kind="user", target_id=user_id,
                         details={"method": method}, actor_kind="user", actor_id=user_id)
            written += 1
    return written


async def record_in_user_orgs(sessions: async_sessionmaker[AsyncSession], user_id: uuid.UUID,
                              action: str, *, actor_kind: str, actor_id: uuid.UUID | None,
                              details: dict[str, Any] | None = None) -> int:
    """Record an event of an account (global, like the account: a password reset, a platform
    admin disabling it) in each organization the user belongs to, one transaction per
    organization, as ``record_login``. Returns how many entries were written. Call after the
    event's own transaction committed; a user in no organization leaves only the log line."""
    from enginex.tenancy.platform import list_user_orgs

    async with sessions() as db:
        orgs = await list_user_orgs(db, user_id)
    for org in orgs:
        async with sessions() as db, db.begin():
            await set_tenant(db, org.org_id)
            await record(db, system_context(org.org_id, org.slug), action, target_kind="user",
                         target_id=user_id, details=details, actor_kind=actor_kind,
                         actor_id=actor_id)
    return len(orgs)


async def _recent_failure(db: AsyncSession, ctx: TenantContext, user_id: uuid.UUID) -> bool:
    since = utcnow() - LOGIN_FAILURE_WINDOW
    return await AuditRepository(db, ctx).has_entry_since(
        action="auth.login_failed", actor_id=user_id, since=since)
