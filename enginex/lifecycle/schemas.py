"""Bodies of the export routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints

from enginex.kit.schemas import RequestBody, ResponseBody


class ExportOut(ResponseBody):
    id: uuid.UUID
    status: str = Field(description="queued, running, succeeded, failed or expired")
    with_secrets: bool = Field(default=False, description="The credentials' values are in the "
                                                          "archive, sealed to an import key.")
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


class ExportCreate(RequestBody):
    """Optional: an export WITH the credentials' values, sealed to an import key."""

    secrets_recipient: Annotated[str | None, StringConstraints(max_length=120)] = Field(
        default=None, description="The import key (``enginex-x25519:...``, from `enginex "
                                  "tenant keygen` on the importing deployment) to seal the "
                                  "credentials' values to. Omit for metadata only.")
    password: Annotated[str | None, StringConstraints(max_length=1024)] = Field(
        default=None, description="Your current password: required with secrets_recipient "
                                  "(re-authentication).")
