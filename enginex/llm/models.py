"""Per-organization LLM configuration.

* ``llm_settings``: the organization's *quick setup*, one row per org (provider, base URL,
  default model, sealed API key). It is what the model name ``default`` means when the org has
  no alias named ``default``.
* ``llm_providers``: named providers (kind, base URL, the name of the org credential holding
  the key, the allowed models). The key is never stored here: it is read from the credential
  at the moment of use.
* ``model_aliases``: names agents use as ``model`` (``default``, ``fast``, ``smart``) mapped to
  a provider, a model and optional temperature / max_tokens.

Resolution order and rules: docs/LLM.md and ``enginex.llm.service.provider_for``.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, ForeignKeyConstraint, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base, TenantOwned
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow


class LLMSettings(TenantOwned, Base):
    __tablename__ = "llm_settings"

    provider: Mapped[str] = mapped_column(String(20), default="scripted")
    base_url: Mapped[str | None] = mapped_column(String(500))
    default_model: Mapped[str] = mapped_column(String(200), default="scripted")
    api_key_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    temperature: Mapped[float | None]
    max_tokens: Mapped[int | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class LLMProviderConfig(TenantOwned, Base):
    """A named LLM provider of one organization. ``credential_name`` names the org credential
    that holds its key (None: scripted, or a server that needs no key); ``allowed_models``
    empty means any model."""

    __tablename__ = "llm_providers"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(20))
    base_url: Mapped[str | None] = mapped_column(String(500))
    credential_name: Mapped[str | None] = mapped_column(String(64))
    allowed_models: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("uq_llm_providers_tenant_id_name", "tenant_id", "name", unique=True),)


class ModelAlias(TenantOwned, Base):
    """A model name agents may use (``model`` of an llm node) and what it resolves to."""

    __tablename__ = "model_aliases"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    provider_id: Mapped[uuid.UUID]
    model: Mapped[str] = mapped_column(String(200))
    temperature: Mapped[float | None]
    max_tokens: Mapped[int | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        # The service refuses to delete a provider an alias uses (409); the cascade only
        # matters when the whole organization is deleted.
        ForeignKeyConstraint(["tenant_id", "provider_id"],
                             ["llm_providers.tenant_id", "llm_providers.id"],
                             ondelete="CASCADE"),
        Index("ix_model_aliases_tenant_id_provider_id", "tenant_id", "provider_id"),
    )
