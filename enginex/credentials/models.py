"""The credential vault's tables.

* ``vault_master_keys`` (global): the fingerprints of the master keys (KEKs) that may wrap
  data keys in this database. It holds no key material; it lets a process refuse a wrong or
  missing master key before it writes anything (docs/CREDENTIALS.md, "Master key check").
* ``tenant_keys`` (tenant-owned): each organization's data-encryption keys (DEKs), stored only
  wrapped by a master key. Deleting the organization deletes them (crypto-shredding).
* ``credentials`` (tenant-owned): named secrets. The secret fields are one AES-256-GCM
  ciphertext under the organization's DEK; everything else is metadata.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base, TenantOwned
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow


class VaultMasterKey(Base):
    """A master key (KEK) that wraps, or may wrap, data keys: its fingerprint and status.

    ``active``: new data keys are wrapped with it. ``retiring``: a master-key rotation is
    moving its data keys to the active key; no new data key may be wrapped with it. The row is
    deleted once no data key is wrapped with it any more.
    """

    __tablename__ = "vault_master_keys"

    kek_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TenantKey(TenantOwned, Base):
    """One version of an organization's data key, wrapped by the master key ``kek_id``.

    The highest version is the primary key (new ciphertexts); older versions exist only while
    a tenant-key rotation re-encrypts what they protect.
    """

    __tablename__ = "tenant_keys"

    version: Mapped[int] = mapped_column(primary_key=True)
    kek_id: Mapped[str] = mapped_column(String(32))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Credential(TenantOwned, Base):
    """A named secret of one organization. ``ciphertext`` seals the secret fields (a JSON
    object) bound to (tenant, id, ``value_version``); ``key_version`` names the data key."""

    __tablename__ = "credentials"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(20))
    description: Mapped[str] = mapped_column(String(500), default="")
    provider: Mapped[str] = mapped_column(String(100), default="")
    # Names of the secret fields present (not secret), and non-secret settings (oauth2:
    # token_url, client_id, scope).
    fields: Mapped[list[str]] = mapped_column(JSON, default=list)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Host patterns the values may be sent to (hosts.py); empty: any host.
    allowed_hosts: Mapped[list[str]] = mapped_column(JSON, default=list,
                                                     server_default=text("'[]'"))
    hint: Mapped[str | None] = mapped_column(String(16))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    key_version: Mapped[int]
    value_version: Mapped[int] = mapped_column(default=1)
    expires_at: Mapped[datetime | None]
    refreshed_at: Mapped[datetime | None]
    created_by_kind: Mapped[str] = mapped_column(String(20), default="system")
    created_by: Mapped[uuid.UUID | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]

    __table_args__ = (
        Index("uq_credentials_tenant_id_name", "tenant_id", "name", unique=True),
        Index("ix_credentials_tenant_id_key_version", "tenant_id", "key_version"),
    )
