"""What a SAML sign-in must remember between requests, per organization (tenant-owned):

* ``saml_requests``: the AuthnRequest ids EngineX sent, each for one connection, until it
  expires (10 minutes) or a response consumes it. A response is accepted only when its signed
  ``InResponseTo`` is one of them, so IdP-initiated and cross-organization responses fail.
* ``saml_seen_assertions``: the replay cache. Every accepted assertion id is stored until the
  assertion's own expiry (plus the clock skew); the same id again is refused.

Expired rows of an organization are deleted at each of its SAML sign-ins (``purge_expired``):
both tables stay as small as the sign-ins of the last few minutes.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Index, String, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base, TenantOwned
from enginex.kit.time import utcnow
from enginex.tenancy.context import TenantContext


class SamlRequest(TenantOwned, Base):
    """An AuthnRequest sent for ``connection_id``; ``next_path`` is where to land after."""

    __tablename__ = "saml_requests"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    connection_id: Mapped[uuid.UUID]
    next_path: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_saml_requests_tenant_id_expires_at", "tenant_id", "expires_at"),
    )


class SamlSeenAssertion(TenantOwned, Base):
    """An assertion id accepted once for ``connection_id``, remembered until ``expires_at``."""

    __tablename__ = "saml_seen_assertions"

    connection_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    assertion_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    expires_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_saml_seen_assertions_tenant_id_expires_at", "tenant_id", "expires_at"),
    )


async def remember_request(db: AsyncSession, ctx: TenantContext, *, request_id: str,
                           connection_id: uuid.UUID, next_path: str,
                           expires_at: datetime) -> None:
    db.add(SamlRequest(tenant_id=ctx.org_id, request_id=request_id,
                       connection_id=connection_id, next_path=next_path[:500],
                       expires_at=expires_at))
    await db.flush()


async def pending_request(db: AsyncSession, ctx: TenantContext, request_id: str,
                          now: datetime) -> SamlRequest | None:
    """The unexpired request ``request_id`` of this organization, or None (another
    organization's id is None too)."""
    if not request_id or len(request_id) > 64:
        return None
    return (await db.execute(
        select(SamlRequest).where(SamlRequest.tenant_id == ctx.org_id,
                                  SamlRequest.request_id == request_id,
                                  SamlRequest.expires_at > now))).scalar_one_or_none()


async def consume_request(db: AsyncSession, ctx: TenantContext, request: SamlRequest) -> bool:
    """Delete ``request`` (single use). False when another sign-in consumed it first."""
    result = await db.execute(
        delete(SamlRequest).where(SamlRequest.tenant_id == ctx.org_id,
                                  SamlRequest.request_id == request.request_id))
    return bool(getattr(result, "rowcount", 0))


async def record_assertion(db: AsyncSession, ctx: TenantContext, *, connection_id: uuid.UUID,
                           assertion_id: str, expires_at: datetime) -> bool:
    """Remember an accepted assertion id; False when it was already seen (a replay). Runs in
    a savepoint so that the caller's transaction survives the refusal."""
    try:
        async with db.begin_nested():
            db.add(SamlSeenAssertion(tenant_id=ctx.org_id, connection_id=connection_id,
                                     assertion_id=assertion_id, expires_at=expires_at))
            await db.flush()
    except IntegrityError:
        return False
    return True


async def purge_expired(db: AsyncSession, ctx: TenantContext, now: datetime) -> None:
    """Forget this organization's expired request ids and replay-cache entries."""
    await db.execute(delete(SamlRequest).where(SamlRequest.tenant_id == ctx.org_id,
                                               SamlRequest.expires_at <= now))
    await db.execute(delete(SamlSeenAssertion).where(SamlSeenAssertion.tenant_id == ctx.org_id,
                                                     SamlSeenAssertion.expires_at <= now))
