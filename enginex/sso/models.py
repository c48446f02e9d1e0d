"""SSO tables. All four are tenant-owned (forced row-level security, tenant policy):

* ``sso_connections``: an organization's identity providers, kind ``oidc`` or ``saml``.
  ``settings`` holds non-secret settings only (OIDC: issuer, client id, scopes, the NAME of
  the org credential holding the client secret; SAML: IdP metadata); secrets live in the
  credential vault.
* ``sso_identities``: who a person is at an IdP, keyed by (connection, issuer, subject) --
  never by email. One user may have several identities (one per connection).
* ``email_domains``: domains an organization claims. A domain may be claimed (pending) by
  several organizations, but VERIFIED by only one in the whole deployment: the partial unique
  index ``uq_email_domains_verified_domain`` enforces it in the database. Claims pending
  elsewhere cannot block a verification (no squatting). The sign-in page finds the owner of a
  verified domain through the platform function ``enginex_verified_domain_org`` (PostgreSQL).
* ``role_mapping_rules``: IdP group name -> EngineX role (see role_mapping.py for the order).

Enforcement settings live on ``organizations`` (``require_sso``, ``sso_break_glass_user_id``)
so that the tenant guard reads them in the statement it already runs; ``auth_sessions.
sso_org_id`` names the organization whose SSO opened a browser session.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, ForeignKeyConstraint, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base, TenantOwned
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow


class ConnectionKind(StrEnum):
    OIDC = "oidc"
    SAML = "saml"


class SsoAuditAction(StrEnum):
    """Every audit action the SSO module writes (one vocabulary)."""

    CONNECTION_CREATED = "sso.connection_created"
    CONNECTION_UPDATED = "sso.connection_updated"
    CONNECTION_DELETED = "sso.connection_deleted"
    CONNECTION_TESTED = "sso.connection_tested"
    DOMAIN_CLAIMED = "sso.domain_claimed"
    DOMAIN_VERIFIED = "sso.domain_verified"
    DOMAIN_DELETED = "sso.domain_deleted"
    RULE_CREATED = "sso.role_rule_created"
    RULE_DELETED = "sso.role_rule_deleted"
    ENFORCEMENT_CHANGED = "sso.enforcement_changed"
    LOGIN_SUCCEEDED = "sso.login_succeeded"
    LOGIN_FAILED = "sso.login_failed"
    USER_PROVISIONED = "sso.user_provisioned"
    IDENTITY_LINKED = "sso.identity_linked"
    ROLE_CHANGED = "sso.role_changed"


class SsoConnection(TenantOwned, Base):
    """One identity provider of an organization."""

    __tablename__ = "sso_connections"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(10))
    name: Mapped[str] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(default=False)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    default_role: Mapped[str] = mapped_column(String(20), default="viewer")
    # Name of the id_token claim (OIDC) or assertion attribute (SAML) carrying group names.
    groups_claim: Mapped[str] = mapped_column(String(200), default="groups")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("uq_sso_connections_tenant_id_name", "tenant_id", "name", unique=True),
    )


class SsoIdentity(TenantOwned, Base):
    """A user's identity at one connection: (connection, issuer, subject) is unique."""

    __tablename__ = "sso_identities"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    connection_id: Mapped[uuid.UUID]
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    issuer: Mapped[str] = mapped_column(String(500))
    subject: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "connection_id"],
                             ["sso_connections.tenant_id", "sso_connections.id"],
                             ondelete="CASCADE"),
        Index("uq_sso_identities_tenant_id_connection_id_issuer_subject",
              "tenant_id", "connection_id", "issuer", "subject", unique=True),
        Index("ix_sso_identities_tenant_id_user_id", "tenant_id", "user_id"),
    )


class EmailDomain(TenantOwned, Base):
    """A domain claimed by an organization; verified by DNS TXT or by a platform admin."""

    __tablename__ = "email_domains"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    domain: Mapped[str] = mapped_column(String(253))
    verification_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    verified_at: Mapped[datetime | None]
    # The user who verified it (an org admin by DNS, or a platform admin); None: unverified.
    verified_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"))

    __table_args__ = (
        Index("uq_email_domains_tenant_id_domain", "tenant_id", "domain", unique=True),
        # One domain, one organization: across the whole deployment, among verified claims.
        Index("uq_email_domains_verified_domain", "domain", unique=True,
              sqlite_where=text("verified_at IS NOT NULL"),
              postgresql_where=text("verified_at IS NOT NULL")),
    )


class RoleMappingRule(TenantOwned, Base):
    """IdP group ``group_name`` (compared case-insensitively) grants ``role``."""

    __tablename__ = "role_mapping_rules"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    group_name: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(20))
    priority: Mapped[int] = mapped_column(default=100)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("uq_role_mapping_rules_tenant_id_group_name", "tenant_id", "group_name",
              unique=True),
    )
