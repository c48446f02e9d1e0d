"""Tables of the skills feature.

``skills`` (tenant-owned): an organization's SKILL.md instruction bundles, referenced by name
from an agent's llm nodes (``"skills": ["timesheet-review"]``). A skill is its name (unique in
the organization), a description, the Markdown instructions, and optional reference files
(``{relative path: text}``). Nothing here is secret.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base, TenantOwned
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow


class Skill(TenantOwned, Base):
    """One skill of one organization; ``files`` maps relative paths to their text."""

    __tablename__ = "skills"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(1024), default="")
    instructions: Mapped[str] = mapped_column(Text)
    files: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("uq_skills_tenant_id_name", "tenant_id", "name", unique=True),
    )
