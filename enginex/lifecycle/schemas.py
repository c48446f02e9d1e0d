"""Bodies of the life-cycle routes: exports, deletion, retention, records of processing."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints

from enginex.kit.schemas import Password, RequestBody, ResponseBody


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


class DeletionRequest(RequestBody):
    password: Password = Field(description="your password (re-authentication)")
    confirm: str = Field(max_length=40, description="the organization's slug, to confirm")


class AdminDeletionRequest(RequestBody):
    confirm: str = Field(max_length=40, description="the tenant's slug, to confirm")


class DeletionOut(ResponseBody):
    id: uuid.UUID
    org_id: uuid.UUID
    status: str = Field(description="scheduled, restored, deleting or deleted (tombstone)")
    slug_sha256: str = Field(description="SHA-256 of the organization's slug")
    requested_by: uuid.UUID | None
    requested_by_kind: str = Field(description="org_admin, platform_admin or cli")
    requested_at: datetime
    hard_delete_at: datetime = Field(description="when the worker deletes it for good")
    restored_at: datetime | None
    restored_by: uuid.UUID | None
    started_at: datetime | None
    deleted_at: datetime | None
    rows_deleted: int
    data_keys_destroyed: int


class RetentionIn(RequestBody):
    session_days: int | None = Field(default=None, description="days a finished session "
                                     "(events, checkpoints, approvals, reports) is kept; null: "
                                     "until deleted by hand")
    audit_days: int | None = Field(default=None, description="days an audit entry is kept (at "
                                   "least the platform minimum); null: all kept")


class RetentionOut(ResponseBody):
    session_days: int | None
    audit_days: int | None
    audit_min_days: int = Field(description="the platform's minimum audit retention")
    export_days: int = Field(description="days an export archive is kept")
    updated_at: datetime | None
    last_applied_at: datetime | None


class ProcessingRecordOut(ResponseBody):
    category: str
    data: str
    purpose: str
    kept: str


class OrgRecordsOut(ResponseBody):
    org_id: uuid.UUID
    slug: str
    status: str
    records: list[ProcessingRecordOut]
