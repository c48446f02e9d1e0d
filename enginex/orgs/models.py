"""Organizations (the tenants), memberships and invitations."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, String, false
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base, TenantOwned
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow


class Organization(Base):
    """A tenant. The registry of tenants is global; everything a tenant owns is not."""

    __tablename__ = "organizations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    status: Mapped[str] = mapped_column(String(20), default="active")
    region: Mapped[str] = mapped_column(String(40), default="default")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # SSO enforcement (enginex/sso, docs/SSO.md): members must sign in through the
    # organization's SSO; the break-glass user (and platform admins) keep password access.
    require_sso: Mapped[bool] = mapped_column(default=False, server_default=false())
    sso_break_glass_user_id: Mapped[uuid.UUID | None]


class Membership(TenantOwned, Base):
    """A user's role in one organization."""

    __tablename__ = "memberships"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set while an org admin (or the org's SCIM client, ``active: false``) has disabled the
    # membership: the tenant guard then treats the person as no member (cookie, their API keys,
    # open event streams). NULL = active.
    disabled_at: Mapped[datetime | None]

    # The one index not led by tenant_id: it serves the platform function that lists a
    # user's organizations at sign-in (see tenancy/platform.py).
    __table_args__ = (Index("ix_memberships_user_id", "user_id"),
                      Index("ix_memberships_tenant_id_created_at_user_id", "tenant_id",
                            "created_at", "user_id"))


class Invitation(TenantOwned, Base):
    """An invitation to join an organization; only the token's digest is stored."""

    __tablename__ = "invitations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(254))
    role: Mapped[str] = mapped_column(String(20))
    token_digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    invited_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    accepted_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    __table_args__ = (
        Index("uq_invitations_tenant_id_token_digest", "tenant_id", "token_digest", unique=True),
        Index("ix_invitations_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
    )
