"""Idempotency keys of creating requests (``Idempotency-Key`` header), per organization."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base, TenantOwned
from enginex.kit.time import utcnow


class IdempotencyRecord(TenantOwned, Base):
    """The first answer to a creating request sent with ``Idempotency-Key: key``.

    Written in the same transaction as what the request created, so a record exists exactly
    when the creation committed. ``principal`` is who sent it (``user:<id>`` or
    ``api_key:<id>``); ``request_sha256`` fingerprints the operation and its body.
    """

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    operation: Mapped[str] = mapped_column(String(100))
    principal: Mapped[str] = mapped_column(String(80))
    request_sha256: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None]
    response: Mapped[Any] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_idempotency_keys_tenant_id_expires_at", "tenant_id", "expires_at"),
    )
