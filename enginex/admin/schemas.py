"""Bodies of the platform admin API: tenant metadata and counts only, never content."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from enginex.kit.schemas import Email, Name, RequestBody, ResponseBody, Slug

REGION_LABEL = ("A label only (informational): all of the tenant's data lives in this "
                "deployment's database whatever it says, until regional databases exist.")


class TenantCreate(RequestBody):
    slug: Slug
    name: Name
    admin_email: Email
    region: Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,40}$")] = Field(
        "default", description=REGION_LABEL)


class SessionCounts(ResponseBody):
    """A tenant's sessions by status (counts only)."""

    queued: int = 0
    running: int = 0
    waiting_approval: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


class TenantOut(ResponseBody):
    id: uuid.UUID
    slug: str
    name: str
    status: str
    region: str = Field(description=REGION_LABEL)
    created_at: datetime
    member_count: int
    agent_count: int = Field(description="Agents in the tenant's catalog.")
    session_counts: SessionCounts
    queue_depth: int = Field(description="Sessions waiting for a worker: queued, or running "
                                         "between steps (no live lease).")
    pending_approvals: int


class TenantCreated(TenantOut):
    admin_user_id: uuid.UUID | None
    invitation_token: str | None
    invitation_url: str | None


class TenantStatusUpdate(RequestBody):
    status: Literal["active", "suspended"]


class WorkerOut(ResponseBody):
    name: str = Field(description="host:pid:random, unique per worker process.")
    started_at: datetime
    last_seen_at: datetime = Field(description="Time of the worker's last heartbeat.")
    alive: bool = Field(description="Seen within three heartbeat intervals.")
    slots: int = Field(description="Runs the worker executes at once.")
    steps_committed: int = Field(description="Steps committed since the worker started.")


class UserOut(ResponseBody):
    """An account (global): never its password hash or sessions."""

    id: uuid.UUID
    email: str
    display_name: str
    is_platform_admin: bool
    disabled: bool = Field(description="A disabled account cannot sign in; its sessions were "
                                        "ended and the API keys it created do not work.")
    created_at: datetime


class OutboxMessageOut(ResponseBody):
    """A queued, sent or failed email. ``body`` holds the text (with its link) until the
    message is sent; a sent message's body is erased."""

    id: uuid.UUID
    kind: str
    recipient: str
    subject: str
    body: str
    status: Literal["queued", "sent", "failed"]
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
