"""Audit anchors: an organization's chain after retention deleted its oldest entries.

Retention (enginex/lifecycle/retention.py) deletes the oldest entries of a chain in batches;
in the same transaction as each batch it keeps the last deleted entry's ``seq`` and ``hash``
as the organization's anchor (``audit_anchors``), signed with an HMAC key derived from the
master key. Verification (``audit.service.verify_chain``) then starts from the anchor instead
of the genesis hash: the first remaining entry must carry seq ``anchor.seq + 1`` and
``prev_hash == anchor.hash``, and every later link is checked as before. Nothing in the
remaining entries changes, so their hashes (and any copy of them kept elsewhere) still hold.

The signature binds (tenant id, seq, hash, at): someone who can write to the database but does
not hold the master key cannot delete more entries and move the anchor forward without the
verification saying so. After a master-key rotation the anchor verifies with
``ENGINEX_MASTER_KEY_PREVIOUS`` until retention re-signs it (``resign_anchor``).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.audit.chain import format_at
from enginex.audit.models import AuditAnchor, AuditEntry
from enginex.kit.crypto import derive_key, hmac_hex
from enginex.kit.time import utcnow
from enginex.tenancy.context import TenantContext

PURPOSE = "audit-anchor"


def anchor_key(master: bytes) -> bytes:
    """The HMAC key anchors are signed with, derived from a master key."""
    return derive_key(master, PURPOSE)


def sign_anchor(key: bytes, tenant_id: str, seq: int, entry_hash: str, at: datetime) -> str:
    return hmac_hex(key, f"{tenant_id}|{seq}|{entry_hash}|{format_at(at)}".encode())


def anchor_is_signed(anchor: AuditAnchor, keys: Sequence[bytes]) -> bool:
    """True when one of ``keys`` made the anchor's signature."""
    return any(hmac.compare_digest(
        sign_anchor(k, str(anchor.tenant_id), anchor.seq, anchor.hash, anchor.at),
        anchor.signature) for k in keys)


async def get_anchor(db: AsyncSession, ctx: TenantContext) -> AuditAnchor | None:
    """The organization's anchor, None while its chain starts at the genesis hash."""
    return (await db.execute(select(AuditAnchor).where(
        AuditAnchor.tenant_id == ctx.org_id))).scalar_one_or_none()


async def delete_oldest_entries(db: AsyncSession, ctx: TenantContext, *, before: datetime,
                                limit: int, key: bytes) -> int:
    """Delete up to ``limit`` of the oldest entries of ``ctx``'s chain written before
    ``before`` (a contiguous prefix: it stops at the first newer entry) and move the anchor to
    the last one deleted, in the caller's transaction. Returns how many were deleted."""
    rows = (await db.execute(
        select(AuditEntry.seq, AuditEntry.hash, AuditEntry.at)
        .where(AuditEntry.tenant_id == ctx.org_id).order_by(AuditEntry.seq).limit(limit)
    )).all()
    prefix = []
    for row in rows:
        if row.at >= before:
            break
        prefix.append(row)
    if not prefix:
        return 0
    last = prefix[-1]
    if db.get_bind().dialect.name == "postgresql":
        # Append-only for the app role: the owner's function deletes (migration 0021).
        await db.execute(text("SELECT enginex_audit_trim(:tenant, :upto)"),
                         {"tenant": ctx.org_id, "upto": last.seq})
    else:
        await db.execute(delete(AuditEntry).where(AuditEntry.tenant_id == ctx.org_id,
                                                  AuditEntry.seq <= last.seq)
                         .execution_options(synchronize_session=False))
    anchor = await get_anchor(db, ctx)
    if anchor is None:
        anchor = AuditAnchor(tenant_id=ctx.org_id)
        db.add(anchor)
    anchor.seq, anchor.hash, anchor.at = last.seq, last.hash, last.at
    anchor.signature = sign_anchor(key, str(ctx.org_id), last.seq, last.hash, last.at)
    anchor.updated_at = utcnow()
    return len(prefix)


async def resign_anchor(db: AsyncSession, ctx: TenantContext, *, key: bytes,
                        previous: Sequence[bytes]) -> bool:
    """Re-sign the anchor with ``key`` when it was signed with one of ``previous`` (a master
    key rotation); True when it changed."""
    anchor = await get_anchor(db, ctx)
    if anchor is None or anchor_is_signed(anchor, [key]) or not anchor_is_signed(anchor,
                                                                                  previous):
        return False
    anchor.signature = sign_anchor(key, str(ctx.org_id), anchor.seq, anchor.hash, anchor.at)
    anchor.updated_at = utcnow()
    return True


def anchor_keys(master: bytes) -> list[bytes]:
    """The keys an anchor may be signed with: the master key's, then the previous master
    key's while a rotation is under way (ENGINEX_MASTER_KEY_PREVIOUS)."""
    from enginex.credentials.vault import previous_master_key

    previous = previous_master_key()
    return [anchor_key(master)] + ([anchor_key(previous)] if previous else [])
