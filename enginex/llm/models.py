"""Per-organization LLM settings (one record per org until the workspaces issue adds more)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base, TenantOwned
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
