"""Bodies of the export routes."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from enginex.kit.schemas import ResponseBody


class ExportOut(ResponseBody):
    id: uuid.UUID
    status: str = Field(description="queued, running, succeeded, failed or expired")
    requested_by: uuid.UUID | None
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    done: int = Field(description="rows and files written so far")
    total: int = Field(description="rows and files to write (known once the build starts)")
    current_kind: str | None
    size_bytes: int | None
    sha256: str | None = Field(description="SHA-256 of the whole archive")
    expires_at: datetime | None = Field(description="when the archive is deleted")
    error: str | None
    downloads: int


class ExportLinkOut(ResponseBody):
    url: str = Field(description="single-use download address (path); GET it with your "
                                 "session or API key before expires_at")
    expires_at: datetime
