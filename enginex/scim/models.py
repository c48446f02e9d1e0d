"""SCIM 2.0 provisioning tables of one organization: bearer tokens, the per-organization SCIM
view of members (``scim_users``), groups and group members. All tenant-owned.

A SCIM user is a membership (``memberships``) of the organization; ``scim_users`` holds what
the identity provider said about the person *for this organization* (userName, externalId and
the rest of the SCIM document), never shared with another organization. The global account
(``users``) is only read, except that SCIM creates it when no account has the email yet.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    LargeBinary,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base, TenantOwned
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow


class ScimToken(TenantOwned, Base):
    """A bearer token of one organization's SCIM endpoint (``scim_<org hex>_<secret>``); only
    its SHA-256 digest is stored, like API keys."""

    __tablename__ = "scim_tokens"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    token_digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    hint: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100))
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    __table_args__ = (
        Index("uq_scim_tokens_tenant_id_token_digest", "tenant_id", "token_digest", unique=True),
        Index("ix_scim_tokens_tenant_id_created_at", "tenant_id", "created_at"),
    )


class ScimUser(TenantOwned, Base):
    """What the identity provider manages about one member of the organization.

    ``document`` is the SCIM User as last written (without id, meta, userName, externalId,
    active, groups and password, which come from columns and tables)."""

    __tablename__ = "scim_users"

    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_name: Mapped[str] = mapped_column(String(254))
    user_name_key: Mapped[str] = mapped_column(String(254))  # lower-case: userName is caseless
    external_id: Mapped[str | None] = mapped_column(String(254))
    document: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "user_id"],
                             ["memberships.tenant_id", "memberships.user_id"],
                             ondelete="CASCADE"),
        Index("uq_scim_users_tenant_id_user_name_key", "tenant_id", "user_name_key",
              unique=True),
        Index("uq_scim_users_tenant_id_external_id", "tenant_id", "external_id", unique=True),
    )


class ScimGroup(TenantOwned, Base):
    """A group pushed by the identity provider; its display name feeds role mapping."""

    __tablename__ = "scim_groups"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    display_name: Mapped[str] = mapped_column(String(256))
    display_name_key: Mapped[str] = mapped_column(String(256))
    external_id: Mapped[str | None] = mapped_column(String(254))
    document: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("uq_scim_groups_tenant_id_display_name_key", "tenant_id", "display_name_key",
              unique=True),
        Index("uq_scim_groups_tenant_id_external_id", "tenant_id", "external_id", unique=True),
    )


class ScimGroupMember(TenantOwned, Base):
    """A member of a SCIM group (members are users of the same organization only)."""

    __tablename__ = "scim_group_members"

    group_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    display: Mapped[str | None] = mapped_column(String(256))  # as the IdP sent it

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "group_id"], ["scim_groups.tenant_id", "scim_groups.id"],
                             ondelete="CASCADE"),
        ForeignKeyConstraint(["tenant_id", "user_id"],
                             ["memberships.tenant_id", "memberships.user_id"],
                             ondelete="CASCADE"),
        Index("ix_scim_group_members_tenant_id_user_id", "tenant_id", "user_id"),
    )
