"""Identity tables: users, browser sessions, org-scoped API keys, login failures."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, ForeignKeyConstraint, Index, LargeBinary, String, func
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base, TenantOwned
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow


class User(Base):
    """A person. Global (not tenant-owned): one user may belong to several organizations."""

    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(254))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_platform_admin: Mapped[bool] = mapped_column(default=False)
    disabled: Mapped[bool] = mapped_column(default=False)
    password_changed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("uq_users_email_lower", func.lower(email), unique=True),)


class AuthSession(Base):
    """A browser session. Only the SHA-256 digest of the cookie token is stored."""

    __tablename__ = "auth_sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    token_digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                               index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    user_agent: Mapped[str] = mapped_column(String(300), default="")
    # The organization whose SSO opened this session (None: a password sign-in). An
    # organization that requires SSO accepts only sessions its own SSO opened (enginex/sso).
    sso_org_id: Mapped[uuid.UUID | None]


class ApiKey(TenantOwned, Base):
    """An org-scoped API key (``enx_...``). Useless on any other organization.

    ``created_by`` is always a person; ``parent_key_id`` names the key (same organization)
    that created this one, None when a person created it in the dashboard or with a cookie.
    A child never outlives its parent: revocation cascades to descendants at write time and
    the child's ``expires_at`` is capped at the parent's when it is created.
    """

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    token_digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    hint: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    parent_key_id: Mapped[uuid.UUID | None]

    __table_args__ = (
        Index("uq_api_keys_tenant_id_token_digest", "tenant_id", "token_digest", unique=True),
        Index("ix_api_keys_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
        # Keys are revoked, never deleted one by one; the cascade only matters when the whole
        # organization is deleted.
        ForeignKeyConstraint(["tenant_id", "parent_key_id"], ["api_keys.tenant_id", "api_keys.id"],
                             ondelete="CASCADE"),
        Index("ix_api_keys_tenant_id_parent_key_id", "tenant_id", "parent_key_id"),
    )


class LoginFailure(Base):
    """One failed sign-in, keyed by a digest of the account or the client address."""

    __tablename__ = "login_failures"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    key: Mapped[str] = mapped_column(String(80))
    at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_login_failures_key_at", "key", "at"),)


class PasswordReset(Base):
    """A password-reset link. Only the SHA-256 digest of its token is stored; it works once
    (``used_at``) and until ``expires_at``. Global, like the user it belongs to."""

    __tablename__ = "password_resets"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    token_digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                               index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
