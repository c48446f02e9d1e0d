"""Tables of the data life cycle.

* ``tenant_exports`` (tenant-owned): one export of an organization -- who asked, its status
  and progress, the archive's size and SHA-256, when it expires, and the digest of its
  current single-use download link. The archive itself lives in the organization's storage
  prefix (``<storage>/<tenant hex>/exports/<export hex>.zip``).
* ``lifecycle_jobs`` (platform, no tenant content): the queue the workers take life-cycle
  work from (build an export, expire one). It holds ids only, so a worker can find work in
  every organization without reading any tenant's rows; the work itself runs bound to the
  organization (``set_tenant``).
* ``org_deletions`` (platform, no tenant content): an organization's deletion -- scheduled
  (suspended, hard delete due at ``hard_delete_at``), restored, being deleted, or deleted. A
  deleted row is the tombstone: org id, SHA-256 of the slug, the times and who asked; it has
  no foreign key, so it outlives the organization.
* ``retention_policies`` (platform, one row per organization): how long the organization
  keeps finished sessions and audit entries (docs/DATA_LIFECYCLE.md "Retention").
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from enginex.db import Base, TenantOwned
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow


class ExportStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"


class JobKind(StrEnum):
    BUILD_EXPORT = "build_export"
    EXPIRE_EXPORT = "expire_export"
    HARD_DELETE = "hard_delete"


class DeletionStatus(StrEnum):
    SCHEDULED = "scheduled"  # suspended; hard delete due at hard_delete_at
    RESTORED = "restored"  # a platform admin restored it within the grace period
    DELETING = "deleting"  # the worker is deleting its rows (resumable)
    DELETED = "deleted"  # the tombstone: nothing of the organization is left


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class TenantExport(TenantOwned, Base):
    __tablename__ = "tenant_exports"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(20), default=ExportStatus.QUEUED)
    requested_by: Mapped[uuid.UUID | None]
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    # Progress: rows and files written so far, of ``total`` (counted when the build starts).
    done: Mapped[int] = mapped_column(default=0)
    total: Mapped[int] = mapped_column(default=0)
    current_kind: Mapped[str | None] = mapped_column(String(40))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(String(2000))
    link_digest: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    link_expires_at: Mapped[datetime | None]
    downloads: Mapped[int] = mapped_column(default=0)
    # An export with secrets (docs/DATA_LIFECYCLE.md): the import key (X25519 public key) the
    # credentials' values are sealed to. None: metadata only.
    secrets_recipient: Mapped[str | None] = mapped_column(String(120))

    __table_args__ = (
        Index("ix_tenant_exports_tenant_id_requested_at", "tenant_id", "requested_at"),
        Index("uq_tenant_exports_tenant_id_link_digest", "tenant_id", "link_digest",
              unique=True),
    )


class LifecycleJob(Base):
    """A unit of life-cycle work, claimed under a lease (``lease_owner`` until
    ``lease_expires_at``); a job whose worker died is claimed again once the lease lapses."""

    __tablename__ = "lifecycle_jobs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(30))
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id",
                                                         ondelete="CASCADE"))
    target_id: Mapped[uuid.UUID]
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED)
    run_after: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(2000))

    __table_args__ = (
        Index("ix_lifecycle_jobs_status_run_after", "status", "run_after"),
        Index("ix_lifecycle_jobs_org_id", "org_id"),
    )


class OrgDeletion(Base):
    """One deletion of an organization; once ``deleted``, its tombstone (docstring above)."""

    __tablename__ = "org_deletions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID]  # no foreign key: the tombstone outlives the organization
    slug_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default=DeletionStatus.SCHEDULED)
    previous_status: Mapped[str] = mapped_column(String(20), default="active")
    requested_by: Mapped[uuid.UUID | None]
    requested_by_kind: Mapped[str] = mapped_column(String(20))
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    hard_delete_at: Mapped[datetime]
    restored_by: Mapped[uuid.UUID | None]
    restored_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]
    rows_deleted: Mapped[int] = mapped_column(BigInteger, default=0)
    data_keys_destroyed: Mapped[int] = mapped_column(default=0)

    __table_args__ = (
        Index("ix_org_deletions_org_id", "org_id"),
        Index("ix_org_deletions_status_hard_delete_at", "status", "hard_delete_at"),
    )


class RetentionPolicy(Base):
    """How long one organization keeps its data; NULL = until deleted by hand."""

    __tablename__ = "retention_policies"

    org_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True)
    session_days: Mapped[int | None]
    audit_days: Mapped[int | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[uuid.UUID | None]
    last_applied_at: Mapped[datetime | None]
